"""``streamcli events publish``: append user events, from flags or NDJSON on stdin."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from streamcli.cli.environment import get_env
from streamcli.errors import UsageError

#: Default of --linger, seconds.
LINGER = 0.005
#: Default of --retries: as many as a tail's (about 3 minutes; not imported, to keep ``--help`` fast).
RETRIES = 25

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
    linger: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=60.0,
            metavar="SECONDS",
            help="From stdin: after a line arrives, wait this long for more before sending them together "
            "(0: send what each read brings at once).",
        ),
    ] = LINGER,
    retries: Annotated[
        int,
        typer.Option(
            min=0,
            help="Retries with backoff after the server or network goes away; each re-sends what the server "
            "has not acknowledged, and the server stores no event twice.",
        ),
    ] = RETRIES,
) -> None:
    """Publish one event from the options, or many from NDJSON on stdin.

    Without --user, every stdin line is one event:
    [dim]{"user_id": "alice", "type": "login", "timestamp": "…" (optional), "data": {…} (optional)}[/dim].
    Events travel in batches over client streams and are acknowledged once
    appended; prints how many, with their ids ([cyan]--json[/cyan]: count, first_id,
    last_id). The lines of a live pipe go out as they arrive, those that come within
    [cyan]--linger[/cyan] of each other in one message: one message per line costs the server
    far more at a thousand lines a second.

    Publishing is idempotent: the command numbers its events under a producer id of
    its own, so when the server restarts or the network drops it reconnects (saying so on
    stderr), re-sends what was not acknowledged, and the server stores each event once.

    Examples:

      streamcli events publish --user alice --type login --data '{"ip": "10.0.0.1"}'

      streamcli events publish < events.ndjson

      my-app --events | streamcli events publish
    """
    from streamcli.client.events import NonFiniteNumber, event_from_json, parse_json, publish_batches, publish_events
    from streamcli.client.ndjson import ndjson_events
    from streamcli.client.publish import PublishOptions, PublishProgress
    from streamcli.client.retry import RetryPolicy

    env = get_env(ctx)
    options = PublishOptions(retry=RetryPolicy(retries=retries), notice=env.notice)
    if user is not None:
        if event_type is None:
            raise UsageError("--type is required with --user")
        try:
            payload = parse_json(data) if data is not None else None
        except json.JSONDecodeError as exc:
            raise UsageError(f"--data is not JSON: {exc}") from None
        except NonFiniteNumber as exc:
            raise UsageError(f"--data: {exc.msg}") from None
        record = {"user_id": user, "type": event_type, "timestamp": timestamp, "data": payload}
        event = event_from_json(record)
        reply = env.run(lambda conn: publish_events(conn, [event], options))
    else:
        if event_type is not None or data is not None or timestamp is not None:
            raise UsageError("--type, --data and --timestamp go with --user; without it events come from stdin")
        if env.stdin_isatty:
            raise UsageError("give --user and --type, or pipe NDJSON events to stdin")
        progress = PublishProgress()
        reply = env.run(
            lambda conn: publish_batches(conn, ndjson_events(env.stdin, linger), options, progress),
            cut_short=lambda exc: progress.stopped(exc) if progress.sent else None,
        )
    if env.json:
        env.emit_json(reply.to_json())
    elif reply.count:
        ids = f"id {reply.first_id}" if reply.count == 1 else f"ids {reply.first_id}-{reply.last_id}"
        env.stdout.write(f"published {reply.count} event{'s' if reply.count != 1 else ''}, {ids}\n")
    else:
        env.stdout.write("published 0 events\n")


def register(app: typer.Typer) -> None:
    """Add the ``events`` group to the tree."""
    app.add_typer(events_app, name="events")
