"""``streamcli events publish``: append user events, from flags or NDJSON on stdin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from streamcli.cli.environment import get_env
from streamcli.errors import UsageError

if TYPE_CHECKING:
    from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb

events_app = typer.Typer(
    help="Publish user events.",
    epilog=(
        "Examples:\n\n  streamcli events publish --user alice --type login\n\n"
        "  streamcli events publish < events.ndjson"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@events_app.command("publish")
def publish(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", "-u", show_default=False, help="The event's user.")] = None,
    event_type: Annotated[
        str | None,
        typer.Option("--type", "-t", show_default=False, help="login, logout, profile_update or password_change."),
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", "-d", show_default=False, help='JSON payload, e.g. \'{"ip": "10.0.0.1"}\'.')
    ] = None,
    timestamp: Annotated[
        str | None,
        typer.Option(show_default=False, help="When it happened (RFC 3339). [default: the server's append time]"),
    ] = None,
) -> None:
    """Publish one event from the options, or many from NDJSON on stdin.

    Without --user, every stdin line is one event:
    [dim]{"user_id": "alice", "type": "login", "timestamp": "…" (optional), "data": {…} (optional)}[/dim].
    Events travel in batches over one client stream and are acknowledged once
    appended; prints how many, with their ids ([cyan]--json[/cyan]: count, first_id, last_id).

    Examples:

      streamcli events publish --user alice --type login --data '{"ip": "10.0.0.1"}'

      streamcli events publish < events.ndjson
    """
    from streamcli.client.events import event_from_json, publish_events

    env = get_env(ctx)
    if user is not None:
        if event_type is None:
            raise UsageError("--type is required with --user")
        try:
            payload = json.loads(data) if data is not None else None
        except json.JSONDecodeError as exc:
            raise UsageError(f"--data is not JSON: {exc}") from None
        record = {"user_id": user, "type": event_type, "timestamp": timestamp, "data": payload}
        events: Iterator[pb.UserEvent] = iter([event_from_json(record)])
    else:
        if event_type is not None or data is not None or timestamp is not None:
            raise UsageError("--type, --data and --timestamp go with --user; without it events come from stdin")
        if env.stdin.isatty():
            raise UsageError("give --user and --type, or pipe NDJSON events to stdin")
        events = _read_ndjson(env.stdin)
    reply = env.run(lambda conn: publish_events(conn, events))
    if env.json:
        env.emit_json({"count": reply.count, "first_id": reply.first_id, "last_id": reply.last_id})
    elif reply.count:
        env.stdout.write(f"published {reply.count} event(s), ids {reply.first_id}-{reply.last_id}\n")
    else:
        env.stdout.write("published 0 events\n")


def _read_ndjson(lines: Iterator[str]) -> Iterator[pb.UserEvent]:
    from streamcli.client.events import event_from_json

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield event_from_json(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UsageError(f"stdin line {number}: not JSON: {exc.msg}") from None
        except UsageError as exc:
            raise UsageError(f"stdin line {number}: {exc.message}") from None


def register(app: typer.Typer) -> None:
    """Add the ``events`` group to the tree."""
    app.add_typer(events_app, name="events")
