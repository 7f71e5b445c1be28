"""Assembles ``streaming.v1.StreamingService`` from per-domain services.

Each domain (files, events, notifications, chat, ...) is a class in its own
module whose coroutine methods are named after the RPCs they implement and
listed in its ``RPCS``. ``bind`` checks the lot against the contract at
start-up: every RPC served by exactly one domain or listed in
``NOT_YET_IMPLEMENTED`` (which answer UNIMPLEMENTED naming the method, instead
of gRPC's generic "Method not implemented!"), every name a domain lists an RPC
of the contract and a method it has. A misspelt method stops the server from
starting instead of quietly answering UNIMPLEMENTED.

``add_service`` also puts every RPC behind the store boundary: a backend that cannot reach its store
(``StoreUnavailableError``, e.g. Redis away) ends the call UNAVAILABLE with the backend's detail, in
this one place rather than in each service; and, on a server that paces transfers, counts every open call
for the pacer (``counted``: transfers are the RPCs a domain lists in its ``BULK_RPCS``, every other call is
interactive; ``streamcli.services.pacing``).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.message_factory import GetMessageClass

from streamcli import __version__
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import StoreUnavailableError
from streamcli.server.decoding import HANDLER_FACTORIES
from streamcli.services.pacing import TransferPacer
from streamcli.services.rpc import Context, abort
from streamcli.services.wire import serialize

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["StreamingService"]
SERVICE_NAME = SERVICE_DESCRIPTOR.full_name


#: The RPCs of the contract that no domain implements yet (their issues bring them).
NOT_YET_IMPLEMENTED: frozenset[str] = frozenset()


class BindingError(Exception):
    """The domains and the contract disagree: a programming error, found at start-up."""


def bind(domains: Iterable[object], unavailable: Iterable[str] = ()) -> dict[str, Callable[..., Any]]:
    """RPC name -> the domain method serving it, for every RPC some domain lists in its ``RPCS``.

    Raises:
        BindingError: a listed name is not an RPC of the contract or not a method of its domain, an RPC
            is listed twice, or an RPC is neither served nor in ``NOT_YET_IMPLEMENTED`` (or is both).
            RPCs in ``unavailable`` (those this server's backend cannot serve) count as served.
    """
    contract = {method.name for method in SERVICE_DESCRIPTOR.methods}
    bound: dict[str, Callable[..., Any]] = {}
    for domain in domains:
        owner = type(domain).__name__
        for name in getattr(domain, "RPCS", ()):
            if name not in contract:
                raise BindingError(f"{owner}.RPCS lists {name!r}, which is not an RPC of {SERVICE_NAME}")
            if name in bound:
                raise BindingError(f"{name} is listed by two domains")
            implementation = getattr(domain, name, None)
            if not callable(implementation):
                raise BindingError(f"{owner}.RPCS lists {name}, but {owner} has no method {name}")
            bound[name] = implementation
    if missing := contract - bound.keys() - NOT_YET_IMPLEMENTED - set(unavailable):
        raise BindingError(f"no domain serves {', '.join(sorted(missing))} (nor are they NOT_YET_IMPLEMENTED)")
    if both := bound.keys() & NOT_YET_IMPLEMENTED:
        raise BindingError(f"{', '.join(sorted(both))} served, and still listed in NOT_YET_IMPLEMENTED")
    return bound


def add_service(
    server: grpc.aio.Server,
    domains: Iterable[object],
    unavailable: Mapping[str, str] | None = None,
    pacer: TransferPacer | None = None,
) -> None:
    """Register StreamingService on ``server``, each RPC bound to the domain method ``bind`` found for it.

    Like the generated ``add_StreamingServiceServicer_to_server``, except that
    responses may also be pre-assembled bytes (``streamcli.services.wire``), and
    that a domain may give an RPC a request deserializer of its own
    (``REQUEST_DESERIALIZERS``, by RPC name). The RPCs of ``unavailable`` (name ->
    why, e.g. not on this backend yet) answer UNIMPLEMENTED with their reason. With a ``pacer``, every
    call it serves is counted for it (``counted``).

    Raises:
        BindingError: see ``bind``.
    """
    unavailable = unavailable or {}
    domains = list(domains)
    bound = bind(domains, unavailable)
    # A domain may decode an RPC's requests itself (``REQUEST_DESERIALIZERS``: UploadFile's chunks, picked
    # out of the wire bytes without a copy); protobuf decodes the rest.
    deserializers: dict[str, Callable[[bytes], Any]] = {}
    bulk: set[str] = set()  # the transfers, which yield to every other call (``counted``)
    for domain in domains:
        deserializers.update(getattr(domain, "REQUEST_DESERIALIZERS", {}))
        bulk.update(getattr(domain, "BULK_RPCS", ()))
    handlers = {}
    for method in SERVICE_DESCRIPTOR.methods:
        factory = HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        implementation = bound.get(method.name)
        if implementation is None:
            behavior = _unimplemented(method.name, unavailable.get(method.name))
        else:
            behavior = store_boundary(implementation)
            if pacer is not None:
                behavior = counted(behavior, pacer, bulk=method.name in bulk)
        handlers[method.name] = factory(
            behavior,
            request_deserializer=deserializers.get(method.name) or GetMessageClass(method.input_type).FromString,
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _unimplemented(name: str, reason: str | None = None) -> Callable[..., Any]:
    detail = f"{SERVICE_NAME}/{name} is not implemented by this server (streamcli {__version__})"
    if reason:
        detail = f"{SERVICE_NAME}/{name} is not available on this server: {reason}"

    async def unimplemented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await abort(context, grpc.StatusCode.UNIMPLEMENTED, detail)

    return unimplemented


def store_boundary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """``behavior`` (a handler, a coroutine or an async generator) ending its call UNAVAILABLE when the
    backend cannot reach its store; a streaming one writes its responses itself, as grpc.aio would.

    A store failure ends the call UNAVAILABLE however it reaches the boundary: raised as it is, raised as
    the cause of another error, or met by a handler that ends the call itself from the ``except`` block
    that caught it (``except Exception: abort(INTERNAL, "could not append ...")``: the handler's words and
    trailer are kept, its status becomes UNAVAILABLE; see ``_StoreAwareContext``).
    """
    if inspect.isasyncgenfunction(behavior):

        async def stream_out(request: Any, context: Context) -> None:
            try:
                async for response in behavior(request, _StoreAwareContext(context)):
                    await context.write(response)
            except Exception as exc:
                await _unavailable_or_raise(context, exc)

        return stream_out

    async def respond(request: Any, context: Context) -> Any:
        try:
            return await behavior(request, _StoreAwareContext(context))
        except Exception as exc:
            await _unavailable_or_raise(context, exc)

    return respond


def counted(handler: Callable[..., Any], pacer: TransferPacer, *, bulk: bool) -> Callable[..., Any]:
    """``handler`` (a coroutine function, as ``store_boundary`` makes every handler) telling ``pacer`` while
    its call is open: a transfer (``bulk``) or an interactive call."""

    async def call(request: Any, context: Context) -> Any:
        pacer.call_opened(bulk)
        try:
            return await handler(request, context)
        finally:
            pacer.call_closed(bulk)

    return call


def store_failure(exc: BaseException | None) -> StoreUnavailableError | None:
    """The ``StoreUnavailableError`` that ``exc`` is, or that caused it (its ``__cause__``/``__context__``
    chain), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StoreUnavailableError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


async def _unavailable_or_raise(context: Context, exc: Exception) -> None:
    """End the call UNAVAILABLE if ``exc`` comes of a store failure; else raise it again."""
    failure = store_failure(exc)
    if failure is None or isinstance(exc, grpc.aio.AbortError):  # (an abort has set its status already)
        raise exc
    await abort(context, grpc.StatusCode.UNAVAILABLE, str(failure))


class _StoreAwareContext:
    """A handler's context whose ``abort``, called while a store failure is being handled, ends the call
    UNAVAILABLE (with the handler's detail and trailer): whatever status the handler chose for a failure of
    its own, a store that cannot be reached is one the client may retry (the store's own error says what
    the failed operation did is unknown, and the writers that retry are idempotent)."""

    __slots__ = ("_context",)

    def __init__(self, context: Context) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        if code != grpc.StatusCode.UNAVAILABLE and store_failure(sys.exc_info()[1]) is not None:
            code = grpc.StatusCode.UNAVAILABLE
        await self._context.abort(code, details, trailing_metadata)
