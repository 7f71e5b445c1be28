"""``streamcli health``: ask a server whether it is serving."""

from __future__ import annotations

from typing import Annotated

import typer

from streamcli.cli.environment import get_env
from streamcli.errors import UnavailableError


def health(
    ctx: typer.Context,
    service: Annotated[
        str,
        typer.Argument(help="Service to check; empty means the whole server.", show_default=False),
    ] = "",
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the answer.")] = 5.0,
) -> None:
    """Check a server's health (grpc.health.v1); exit 0 only when SERVING.

    Prints the status (SERVING, NOT_SERVING, SERVICE_UNKNOWN). Exits 3 when the
    server is unreachable or not serving. [cyan]--json[/cyan] prints the status in every
    case: UNREACHABLE (with an "error" saying why) when the server did not answer.

    Examples:

      streamcli health

      streamcli --address db1:50051 --tls health streaming.v1.StreamingService

      streamcli --json health
    """
    from streamcli.client.health import check_health

    env = get_env(ctx)
    report = env.run(lambda conn: check_health(conn, service, timeout))
    if env.json:
        line = {"address": report.address, "service": service, "status": report.status}
        env.emit_json(line if report.error is None else {**line, "error": str(report.error)})
    elif report.error is None:
        env.stdout.write(report.status + "\n")
    if report.error is not None:
        raise report.error
    if report.status != "SERVING":
        raise UnavailableError(f"{service or 'the server'} at {report.address} is {report.status}")


def register(app: typer.Typer) -> None:
    """Add ``health`` to the tree."""
    app.command()(health)
