"""Assembles ``streaming.v1.StreamingService`` from per-domain services.

Each domain (files, events, notifications, chat, ...) is a class in its own
module whose coroutine methods are named after the RPCs they implement.
``build_servicer`` binds every RPC of the contract to the first domain that
implements it; RPCs no domain implements yet answer UNIMPLEMENTED with a
detail naming the method, instead of gRPC's generic "Method not implemented!".
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from typing import Any, cast

import grpc

from streamcli import __version__
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc as pb_grpc

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["StreamingService"]
SERVICE_NAME = SERVICE_DESCRIPTOR.full_name


def build_servicer(domains: Iterable[object]) -> pb_grpc.StreamingServiceServicer:
    """Return a servicer whose RPCs are the domains' methods of the same name."""
    domains = list(domains)
    methods = {}
    for method in SERVICE_DESCRIPTOR.methods:
        implementation = next(
            (getattr(domain, method.name) for domain in domains if hasattr(domain, method.name)),
            None,
        )
        methods[method.name] = implementation or _unimplemented(method.name)
    # The generated registration only looks the RPCs up by name.
    return cast(pb_grpc.StreamingServiceServicer, types.SimpleNamespace(**methods))


def _unimplemented(name: str) -> Callable[..., Any]:
    detail = f"{SERVICE_NAME}/{name} is not implemented by this server (streamcli {__version__})"

    async def unimplemented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, detail)

    return unimplemented
