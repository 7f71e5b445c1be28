"""Call any StreamingService RPC generically, whatever its kind."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb

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
    if method.server_streaming:
        return [response async for response in call]
    return [await call]
