"""Health checks against a server (the standard grpc.health.v1 service)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from streamcli.client.connection import Connection


async def check_health(conn: Connection, service: str = "", timeout: float = 5.0) -> str:
    """Return the serving status name of ``service`` ("" = the whole server).

    Returns:
        "SERVING", "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN".
    """
    stub = health_pb2_grpc.HealthStub(conn.channel)
    try:
        reply = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), metadata=conn.metadata, timeout=timeout
        )
    except grpc.aio.AioRpcError as exc:
        # The health protocol answers NOT_FOUND for a service it does not know.
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return "SERVICE_UNKNOWN"
        raise  # translated where the connection closes
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
