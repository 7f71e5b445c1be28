"""The one place that builds a channel to a streamcli server.

``ConnectionSettings`` gathers address, TLS and token (from flags or
``STREAMCLI_*`` variables); ``connect`` turns them into a ``Connection``
holding the ``grpc.aio`` channel, the stub and the call metadata (the bearer
token rides as per-call metadata, so it works over plain loopback too);
``rpc_errors`` maps gRPC failures onto the ``StreamcliError`` tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator

import grpc

from streamcli import transport
from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc as pb_grpc
from streamcli.client.settings import ConnectionSettings
from streamcli.errors import UsageError, error_for_status
from streamcli.tls import check_pair, read_pem


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
        root_certificates=read_pem(settings.ca_cert, "CA certificate") if settings.ca_cert else None,
        private_key=read_pem(settings.client_key, "client key") if settings.client_key else None,
        certificate_chain=read_pem(settings.client_cert, "client certificate") if settings.client_cert else None,
    )


@contextlib.asynccontextmanager
async def connect(settings: ConnectionSettings) -> AsyncIterator[Connection]:
    """Open a channel for the duration of the ``async with`` block."""
    if not settings.address.strip():
        raise UsageError("the server address is empty")
    options = transport.client_options()
    if settings.uses_tls:
        channel = grpc.aio.secure_channel(settings.address, _credentials(settings), options=options)
    else:
        channel = grpc.aio.insecure_channel(settings.address, options=options)
    metadata = (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
    try:
        yield Connection(settings, channel, pb_grpc.StreamingServiceStub(channel), metadata)
    finally:
        await channel.close()


@contextlib.contextmanager
def rpc_errors(address: str) -> Iterator[None]:
    """Translate ``grpc.aio.AioRpcError`` raised inside the block into ``StreamcliError``."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise error_for_status(exc.code(), exc.details(), address=address) from exc


__all__ = ["Connection", "ConnectionSettings", "connect", "rpc_errors"]
