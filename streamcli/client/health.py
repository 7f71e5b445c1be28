"""Health checks against a server (the standard grpc.health.v1 service)."""

from __future__ import annotations

import dataclasses

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamcli.client.connection import Connection, rpc_errors
from streamcli.errors import StreamcliError

#: The status of a server that did not answer (unreachable, or no answer within the timeout).
UNREACHABLE = "UNREACHABLE"


@dataclasses.dataclass(frozen=True)
class HealthReport:
    """What a health check found: ``status`` is SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN or UNREACHABLE;
    ``error`` says why the server did not answer (UNREACHABLE only); ``address`` is the server's, as
    written (of several, the one checked: the first that answered)."""

    status: str
    address: str
    error: StreamcliError | None = None


async def check_health(conn: Connection, service: str = "", timeout: float = 5.0) -> HealthReport:
    """The serving status of ``service`` ("" = the whole server); a server that does not answer is
    UNREACHABLE, with the error saying why (a status to print, as well as a failure)."""
    stub = health_pb2_grpc.HealthStub(conn.channel)
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), metadata=conn.metadata, timeout=timeout
        )
    except grpc.aio.AioRpcError as exc:
        # The health protocol answers NOT_FOUND for a service it does not know.
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return HealthReport("SERVICE_UNKNOWN", conn.address)
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return HealthReport(UNREACHABLE, conn.address, _translated(exc, conn))
        raise  # translated where the connection closes
    return HealthReport(str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)), conn.address)


def _translated(exc: grpc.aio.AioRpcError, conn: Connection) -> StreamcliError:
    """``exc`` as the one translation of gRPC failures (``rpc_errors``) makes it."""
    try:
        with rpc_errors(conn):
            raise exc
    except StreamcliError as error:
        return error
    raise AssertionError("rpc_errors translates every AioRpcError")  # pragma: no cover
