"""The one place that builds a channel to a streamcli server.

``ConnectionSettings`` gathers address, TLS and token (from flags or
``STREAMCLI_*`` variables); ``connect`` turns them into a ``Connection``
holding the ``grpc.aio`` channel, the stub and the call metadata (the bearer
token rides as per-call metadata, so it works over plain loopback too);
``rpc_errors`` maps gRPC failures onto the ``StreamcliError`` tree: the one place
that translates them (client functions use it where they handle a failure per
item; ``connect`` applies it to whatever leaves the connection untranslated).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import grpc

from streamcli import transport
from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc as pb_grpc
from streamcli.client.settings import ConnectionSettings
from streamcli.errors import UsageError, error_for_status
from streamcli.tls import check_pair, read_certificates, read_pem


@dataclasses.dataclass
class Connection:
    """An open channel, its stub and the metadata every call carries."""

    settings: ConnectionSettings
    channel: grpc.aio.Channel
    stub: pb_grpc.StreamingServiceStub
    metadata: tuple[tuple[str, str], ...]


def _credentials(settings: ConnectionSettings) -> grpc.ChannelCredentials:
    check_pair(settings.client_cert, settings.client_key, "--client-cert", "--client-key")
    return grpc.ssl_channel_credentials(
        root_certificates=read_certificates(settings.ca_cert, "CA certificate") if settings.ca_cert else None,
        private_key=read_pem(settings.client_key, "client key") if settings.client_key else None,
        certificate_chain=read_pem(settings.client_cert, "client certificate") if settings.client_cert else None,
    )


@contextlib.asynccontextmanager
async def connect(settings: ConnectionSettings) -> AsyncIterator[Connection]:
    """Open a channel for the duration of the ``async with`` block.

    The connection's settings name the gRPC target ``--address`` stands for (``HOST`` gets the
    default port, ``https://`` TLS: ``transport.client_target``).
    """
    target, scheme_tls = transport.client_target(settings.address)
    if scheme_tls is False and settings.uses_tls:
        raise UsageError(
            f"--address {settings.address.strip()} says plaintext (http://) but --tls, --ca-cert or "
            "--client-cert asks for TLS: write https:// or drop the TLS options"
        )
    settings = dataclasses.replace(settings, address=target, tls=settings.uses_tls or bool(scheme_tls))
    options = transport.client_options()
    if settings.uses_tls:
        channel = grpc.aio.secure_channel(settings.address, _credentials(settings), options=options)
    else:
        channel = grpc.aio.insecure_channel(settings.address, options=options)
    metadata = (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
    try:
        # The last of the translations: a failure no client function translated itself leaves as a StreamcliError.
        with rpc_errors(settings):
            yield Connection(settings, channel, pb_grpc.StreamingServiceStub(channel), metadata)
    finally:
        await channel.close()


@contextlib.contextmanager
def rpc_errors(settings: ConnectionSettings) -> Iterator[None]:
    """Translate ``grpc.aio.AioRpcError`` raised inside the block into ``StreamcliError``.

    ``settings`` are the connection's (``Connection.settings``): a connection that failed while being
    set up because of its TLS settings is a configuration error saying what to change (``handshake``).
    """
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        details = exc.details() or ""
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN):
            from streamcli.client.handshake import diagnose

            mismatch = diagnose(settings, settings.address, details)
            if mismatch is not None:
                raise mismatch from exc
        raise error_for_status(exc.code(), details, address=settings.address) from exc


T = TypeVar("T")

#: What grpc.aio reports when a client write fails because the call had already ended.
_CORE_WRITE_FAILURE = "Internal error from Core"


class FirstStatus:
    """The status a call ended with, kept before grpc.aio can overwrite it.

    When a server ends a client stream early (an upload refused for the quota
    or a full disk, a publish refused at an invalid event) while a write of the
    client is under way, grpc.aio replaces the server's status with INTERNAL "Internal error from Core" if it handles
    the failed write after the status (grpc/grpc#36066). That INTERNAL would be
    retried, and the retry refused again. The done callback runs when the first
    status is set, so reading it there keeps the server's.
    """

    def __init__(self, call: grpc.aio.Call) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing_metadata: Any = None  # the server's trailers (a failed publish says there what it stored)
        call.add_done_callback(self._record)

    def _record(self, call: grpc.aio.Call) -> None:
        try:
            self.code, self.details = _settled(call.code()), _settled(call.details())
            self.trailing_metadata = _settled(call.trailing_metadata())
        except RuntimeError:  # not expected; this runs inside grpc, which must not see it: keep exc as is
            self.code = None

    def unmask(self, exc: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """``exc``, or the server's own status when ``exc`` is grpc.aio's stand-in for it."""
        masked = exc.code() == grpc.StatusCode.INTERNAL and exc.details() == _CORE_WRITE_FAILURE
        if not masked or self.code in (None, grpc.StatusCode.OK, grpc.StatusCode.INTERNAL):
            return exc
        assert self.code is not None
        trailers = self.trailing_metadata if self.trailing_metadata is not None else exc.trailing_metadata()
        return grpc.aio.AioRpcError(self.code, exc.initial_metadata(), trailers, self.details)


def _settled(pending: Coroutine[Any, Any, T]) -> T:
    """The value of a finished call's ``code()`` or ``details()``, read without awaiting.

    They only await the call's status, which is already set in a done callback,
    so the coroutine completes at its first step.
    """
    try:
        pending.send(None)
    except StopIteration as stop:
        value: T = stop.value
        return value
    pending.close()
    raise RuntimeError("the call's status is not set yet")


__all__ = ["Connection", "ConnectionSettings", "FirstStatus", "connect", "rpc_errors"]
