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

import asyncio
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
    """An open channel, its stub and the metadata every call carries.

    Given several addresses (``--address A,B``), the channel is to one of them at a time: ``fail_over``
    moves it to the next (``Replicas``), and every call made after reads the new ``channel`` and
    ``stub``. ``settings`` are those of the address in use (its gRPC target, its TLS).
    """

    settings: ConnectionSettings
    channel: grpc.aio.Channel
    stub: pb_grpc.StreamingServiceStub
    metadata: tuple[tuple[str, str], ...]
    replicas: Replicas | None = None  # the addresses to move on to: None with one address

    @property
    def requested(self) -> ConnectionSettings:
        """The settings this connection was opened with (every address), to open another like it."""
        return self.replicas.requested if self.replicas is not None else self.settings

    @property
    def address(self) -> str:
        """The address in use, as the user wrote it."""
        return self.replicas.written(self.channel) if self.replicas is not None else self.settings.address

    def fail_over(self, channel: grpc.aio.Channel) -> None:
        """An attempt on ``channel`` lost its server: move on to the next address, if there is another
        and no other attempt has moved on already (parallel transfers share a connection)."""
        if self.replicas is None or channel is not self.channel:
            return
        self.settings, self.channel = self.replicas.after(channel)
        self.stub = pb_grpc.StreamingServiceStub(self.channel)


#: The longest ``connect`` waits for one of several addresses to answer before it tries the next (seconds).
ANSWER_TIMEOUT = 5.0


class Replicas:
    """The addresses of a client given several, each with its settings and (once used) its channel.

    Channels are kept open until the connection closes: another attempt may still be reading one, and a
    replica tried again later reconnects on its own channel as a lone server's clients do.
    """

    def __init__(self, requested: ConnectionSettings, addresses: list[tuple[str, ConnectionSettings]]) -> None:
        self.requested = requested
        self._addresses = addresses  # (as written, settings of its gRPC target)
        self._channels: dict[int, grpc.aio.Channel] = {}

    def __len__(self) -> int:
        return len(self._addresses)

    def channel(self, index: int) -> tuple[ConnectionSettings, grpc.aio.Channel]:
        """Address ``index``'s settings and channel (opened the first time)."""
        settings = self._addresses[index][1]
        if index not in self._channels:
            self._channels[index] = _open_channel(settings)
        return settings, self._channels[index]

    def after(self, channel: grpc.aio.Channel) -> tuple[ConnectionSettings, grpc.aio.Channel]:
        """The address after that of ``channel``, in the order given, the first after the last."""
        return self.channel((self._index(channel) + 1) % len(self._addresses))

    def written(self, channel: grpc.aio.Channel) -> str:
        """The address of ``channel`` as the user wrote it."""
        return self._addresses[self._index(channel)][0]

    def _index(self, channel: grpc.aio.Channel) -> int:
        return next(index for index, open_ in self._channels.items() if open_ is channel)

    async def first_answering(self) -> tuple[ConnectionSettings, grpc.aio.Channel]:
        """The first address, in the order given, whose server answers (its channel becomes ready), or the
        first of all when none does: calls on it then fail as calls to a lone server do, saying why."""
        for index in range(len(self._addresses)):
            settings, channel = self.channel(index)
            if await _answers(channel, ANSWER_TIMEOUT):
                return settings, channel
        return self.channel(0)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


async def _answers(channel: grpc.aio.Channel, timeout: float) -> bool:
    """Whether ``channel`` connects within ``timeout`` seconds; False as soon as a connection attempt fails
    (refused, a failed handshake), without waiting for gRPC's next attempt."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    state = channel.get_state(try_to_connect=True)
    while state != grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            return False
        try:
            await asyncio.wait_for(channel.wait_for_state_change(state), deadline - loop.time())
        except TimeoutError:
            return False
        state = channel.get_state(try_to_connect=True)
    return True


def _credentials(settings: ConnectionSettings) -> grpc.ChannelCredentials:
    check_pair(settings.client_cert, settings.client_key, "--client-cert", "--client-key")
    return grpc.ssl_channel_credentials(
        root_certificates=read_certificates(settings.ca_cert, "CA certificate") if settings.ca_cert else None,
        private_key=read_pem(settings.client_key, "client key") if settings.client_key else None,
        certificate_chain=read_pem(settings.client_cert, "client certificate") if settings.client_cert else None,
    )


def _target_settings(settings: ConnectionSettings, address: str) -> ConnectionSettings:
    """``settings`` for one address: its gRPC target (``HOST`` gets the default port, ``https://`` TLS:
    ``transport.client_target``)."""
    target, scheme_tls = transport.client_target(address)
    if scheme_tls is False and settings.uses_tls:
        raise UsageError(
            f"--address {address.strip()} says plaintext (http://) but --tls, --ca-cert or "
            "--client-cert asks for TLS: write https:// or drop the TLS options"
        )
    return dataclasses.replace(settings, address=target, tls=settings.uses_tls or bool(scheme_tls))


def _open_channel(settings: ConnectionSettings) -> grpc.aio.Channel:
    options = transport.client_options()
    if settings.uses_tls:
        return grpc.aio.secure_channel(settings.address, _credentials(settings), options=options)
    return grpc.aio.insecure_channel(settings.address, options=options)


@contextlib.asynccontextmanager
async def connect(settings: ConnectionSettings) -> AsyncIterator[Connection]:
    """Open a channel for the duration of the ``async with`` block.

    The connection's settings name the gRPC target ``--address`` stands for (``HOST`` gets the
    default port, ``https://`` TLS: ``transport.client_target``). Given several addresses, it is to the
    first whose server answers, and it can move on to the others (``Connection.fail_over``).
    """
    addresses = transport.client_addresses(settings.address)
    metadata = (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
    replicas: Replicas | None = None
    if len(addresses) == 1:
        target_settings = _target_settings(settings, addresses[0])
        channel = _open_channel(target_settings)
        close = channel.close
    else:
        replicas = Replicas(settings, [(address, _target_settings(settings, address)) for address in addresses])
        close = replicas.close
        target_settings, channel = await replicas.first_answering()
    connection = Connection(target_settings, channel, pb_grpc.StreamingServiceStub(channel), metadata, replicas)
    try:
        # The last of the translations: a failure no client function translated itself leaves as a StreamcliError.
        with rpc_errors(connection):
            yield connection
    finally:
        await close()


@contextlib.contextmanager
def rpc_errors(connection: Connection | ConnectionSettings) -> Iterator[None]:
    """Translate ``grpc.aio.AioRpcError`` raised inside the block into ``StreamcliError``.

    ``connection`` is the connection (its address in use when the failure leaves the block: one given
    several may have moved on), or its settings (``Connection.settings``): a connection that failed while
    being set up because of its TLS settings is a configuration error saying what to change (``handshake``).
    """
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        settings = connection.settings if isinstance(connection, Connection) else connection
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
