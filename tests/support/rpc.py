"""Call any RPC generically, whatever its kind, with messages or with raw request bytes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import FirstStatus

METHODS: list[MethodDescriptor] = list(pb.DESCRIPTOR.services_by_name["StreamingService"].methods)


def kind(method: MethodDescriptor) -> str:
    """'unary_unary', 'unary_stream', 'stream_unary' or 'stream_stream'."""
    return f"{'stream' if method.client_streaming else 'unary'}_{'stream' if method.server_streaming else 'unary'}"


async def invoke(stub: Any, method: MethodDescriptor, metadata: tuple[tuple[str, str], ...] = ()) -> list[Any]:
    """Call ``method`` with one empty request and return every response."""
    request = GetMessageClass(method.input_type)()
    callable_ = getattr(stub, method.name)
    argument: Any = iter([request]) if method.client_streaming else request
    call = callable_(argument, metadata=metadata, timeout=10)
    # A server that refuses before reading races the client's write; grpc.aio may then report INTERNAL
    # instead of the server's status (grpc/grpc#36066). The client library keeps the first status.
    first_status = FirstStatus(call)
    try:
        if method.server_streaming:
            return [response async for response in call]
        return [await call]
    except grpc.aio.AioRpcError as exc:
        raise first_status.unmask(exc) from exc


@dataclasses.dataclass
class Outcome:
    """How a call ended: its status, what it received, and whether the test cancelled it itself."""

    code: grpc.StatusCode
    details: str
    responses: list[Any]
    cancelled_by_us: bool = False


def call_frames(
    channel: grpc.Channel,
    path: str,
    frames: Sequence[bytes],
    response_type: type[Message],
    *,
    client_streaming: bool,
    server_streaming: bool,
    max_responses: int | None = None,
    timeout: float = 20.0,
) -> Outcome:
    """Call the method at ``path`` with ``frames`` as the request bytes, exactly as given.

    The frames are sent without serialization, so a stream may mix valid messages
    with bytes that are not one. A unary request is ``frames[0]``. The responses
    are parsed as ``response_type`` (a response that does not parse ends the call
    INTERNAL on the client). After ``max_responses`` responses the call is
    cancelled: a stream that follows live never ends by itself.

    A blocking channel, not grpc.aio: when the server ends a request stream early (as it does
    at a bad message), a grpc.aio client's next write replaces the server's status with
    ``INTERNAL: Internal error from Core`` (grpc/grpc#36066); the blocking client reports the
    server's status.
    """
    factories = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    multicallable = factories[(client_streaming, server_streaming)](
        path, request_serializer=_as_is, response_deserializer=response_type.FromString
    )
    argument: Any = iter(list(frames)) if client_streaming else frames[0]
    responses: list[Any] = []
    if not server_streaming:
        try:
            response, call = multicallable.with_call(argument, timeout=timeout)
        except grpc.RpcError as error:
            return Outcome(error.code(), error.details() or "", responses)
        return Outcome(call.code(), call.details() or "", [response])
    call = multicallable(argument, timeout=timeout)
    cancelled = False
    try:
        for response in call:
            responses.append(response)
            if max_responses is not None and len(responses) >= max_responses:
                cancelled = call.cancel()  # False when the call had already ended
                break
    except grpc.RpcError:
        pass  # the status is the call's
    return Outcome(call.code(), call.details() or "", responses, cancelled)


def _as_is(frame: bytes) -> bytes:
    return frame
