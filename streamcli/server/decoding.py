"""The server's one decoding boundary: a request that does not decode is the client's mistake.

grpc.aio decodes each request with the handler's deserializer and, when that
raises, ends the call ``UNKNOWN: Unexpected <class DecodeError>`` (a unary
call), or raises out of the request iterator of a stream, where a handler that
reads in another task may take it for the end of the stream and answer OK.

``DecodingBoundary`` wraps every handler the server serves (StreamingService,
health, reflection): its deserializer never raises but returns an
``Undecodable`` marker, and

- a unary request that is ``Undecodable`` ends the call INVALID_ARGUMENT
  naming the request type, before the handler runs;
- the request iterator of a stream raises ``MalformedRequest`` (an
  ``Exception`` carrying the zero-based index of the bad message) at the bad
  message. A handler that stores what it receives catches it, stores or
  discards what came before, and aborts saying exactly what was stored; one
  that does not is aborted INVALID_ARGUMENT with the exception's detail.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from streamcli.services.checks import MalformedRequest
from streamcli.services.rpc import Context, abort

Deserializer = Callable[[bytes], Any]


class Undecodable:
    """What a request deserializer returns for bytes that are not a valid message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def request_type_name(deserializer: Deserializer | None, method: str) -> str:
    """The full protobuf name of a handler's request type (``FromString`` of a message class), else the method."""
    owner = getattr(deserializer, "__self__", None) or getattr(deserializer, "message_class", None)  # (Picking)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else f"request of {method}"


def safe_deserializer(deserializer: Deserializer) -> Deserializer:
    """``deserializer`` returning an ``Undecodable`` instead of raising."""

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError; any failure to parse is the client's bytes
            return Undecodable(_reason(exc))

    return decode


def _reason(exc: Exception) -> str:
    # upb says "Error parsing message with type 'X'" for every failure: the type is named by the caller.
    text = str(exc)
    if "Error parsing message" in text or not text:
        return "the bytes are not protobuf wire format of that type (or a string field is not UTF-8)"
    return text


async def checked(requests: AsyncIterator[Any], type_name: str) -> AsyncIterator[Any]:
    """The messages of a request stream; raises ``MalformedRequest`` at the first that did not decode."""
    index = 0
    async for request in requests:
        if isinstance(request, Undecodable):
            raise MalformedRequest(index, type_name, request.reason)
        yield request
        index += 1


def _unary_detail(type_name: str, reason: str) -> str:
    return f"the request is not a valid {type_name}: {reason}"


class DecodingBoundary(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Wraps every handler so that undecodable requests end INVALID_ARGUMENT (see the module's docstring)."""

    def __init__(self) -> None:
        # The wrapped form of each handler the server has: the generic handlers return the same
        # object for every call of a method, so each is wrapped once.
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        known = self._wrapped.get(id(handler))
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = wrap_handler(handler, handler_call_details.method)
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped


#: The handler constructor of each kind of RPC, by (request streaming, response streaming).
HANDLER_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def behavior_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The application function of ``handler``, whatever its kind."""
    behavior: Callable[..., Any] = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )  # exactly one is set
    return behavior


def wrap_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` behind the decoding boundary."""
    type_name = request_type_name(handler.request_deserializer, method)
    wrap = _stream_behavior if handler.request_streaming else _unary_behavior
    factory = HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(
        wrap(behavior_of(handler), type_name),
        safe_deserializer(handler.request_deserializer),
        handler.response_serializer,
    )


def _unary_behavior(behavior: Callable[..., Any], type_name: str) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):
        # Responses are written by this coroutine exactly as grpc.aio would send the generator's:
        # no extra generator between the handler and the wire.
        async def stream_out(request: Any, context: Context) -> None:
            if isinstance(request, Undecodable):
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, _unary_detail(type_name, request.reason))
            async for response in behavior(request, context):
                await context.write(response)

        return stream_out

    async def respond(request: Any, context: Context) -> Any:
        if isinstance(request, Undecodable):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, _unary_detail(type_name, request.reason))
        return await behavior(request, context)

    return respond


def _stream_behavior(behavior: Callable[..., Any], type_name: str) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream_out(requests: AsyncIterator[Any], context: Context) -> None:
            try:
                async for response in behavior(checked(requests, type_name), context):
                    await context.write(response)
            except MalformedRequest as exc:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc.detail)

        return stream_out

    async def respond(requests: AsyncIterator[Any], context: Context) -> Any:
        try:
            return await behavior(checked(requests, type_name), context)
        except MalformedRequest as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc.detail)

    return respond
