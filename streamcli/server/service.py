"""Assembles ``streaming.v1.StreamingService`` from per-domain services.

Each domain (files, events, notifications, chat, ...) is a class in its own
module whose coroutine methods are named after the RPCs they implement.
``add_service`` binds every RPC of the contract to the first domain that
implements it; RPCs no domain implements yet answer UNIMPLEMENTED with a
detail naming the method, instead of gRPC's generic "Method not implemented!".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message_factory import GetMessageClass

from streamcli import __version__
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.server.decoding import HANDLER_FACTORIES
from streamcli.services.wire import serialize

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["StreamingService"]
SERVICE_NAME = SERVICE_DESCRIPTOR.full_name


def add_service(server: grpc.aio.Server, domains: Iterable[object]) -> None:
    """Register StreamingService on ``server``, each RPC bound to the domain method of the same name.

    Like the generated ``add_StreamingServiceServicer_to_server``, except that
    responses may also be pre-assembled bytes (``streamcli.services.wire``).
    """
    domains = list(domains)
    handlers = {}
    for method in SERVICE_DESCRIPTOR.methods:
        implementation = next(
            (getattr(domain, method.name) for domain in domains if hasattr(domain, method.name)),
            None,
        )
        factory = HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            implementation or _unimplemented(method.name),
            request_deserializer=GetMessageClass(method.input_type).FromString,
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _unimplemented(name: str) -> Callable[..., Any]:
    detail = f"{SERVICE_NAME}/{name} is not implemented by this server (streamcli {__version__})"

    async def unimplemented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, detail)

    return unimplemented
