"""``streamcli tail events`` and ``tail notifications``: history, then live, gap-free across reconnects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from streamcli.cli.environment import Environment, get_env
from streamcli.cli.parsing import parse_since
from streamcli.errors import UsageError

if TYPE_CHECKING:
    from rich.text import Text

    from streamcli.client.connection import Connection
    from streamcli.client.tail import TailOptions

R = TypeVar("R")

tail_app = typer.Typer(
    help="Follow a log live: events or notifications (history first with --since).",
    epilog=(
        "Examples:\n\n  streamcli tail events --user alice --since 1h\n\n"
        "  streamcli tail notifications --user alice --topic files"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
)

SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        "-s",
        show_default=False,
        help="Replay history from this time first: a duration back (10m, 2h, 7d) or a time (2026-11-24T10:00:00Z; "
        "UTC if no zone). Compared with when the server appended each record.",
    ),
]
FollowOption = Annotated[
    bool,
    typer.Option(
        "--follow/--no-follow", help="Keep following live; --no-follow prints history (from --since) and exits."
    ),
]
MaxOption = Annotated[
    int | None, typer.Option("--max", "-n", min=1, show_default=False, help="Exit (0) after this many records.")
]
IdleOption = Annotated[
    float | None,
    typer.Option(min=0.0, show_default=False, help="Exit (0) after this many seconds without a record."),
]


def _options(
    env: Environment, follow: bool, max_records: int | None, idle_timeout: float | None, since: str | None
) -> TailOptions:
    from streamcli.client.tail import TailOptions

    if not follow and since is None:  # it would start at the end and print nothing
        raise UsageError("--no-follow prints history and exits: give --since too, e.g. --since 1h")
    return TailOptions(follow=follow, max_records=max_records, idle_timeout=idle_timeout, notice=env.notice)


def _print_all(
    env: Environment,
    open_batches: Callable[[Connection], AsyncIterator[Sequence[R]]],
    to_json_line: Callable[[R], str],
    to_line: Callable[[R], Text],
) -> None:
    """Print every record of the stream ``open_batches`` opens, as it arrives (one write per batch)."""
    from rich.text import Text

    async def consume(conn: Connection) -> None:
        async for batch in open_batches(conn):
            if env.json:
                env.stdout.write("\n".join([to_json_line(record) for record in batch]) + "\n")
                env.stdout.flush()
            else:  # one print per batch: rich's per-call work would cost more than the lines
                env.console.print(Text("\n").join([to_line(record) for record in batch]), soft_wrap=True)

    try:
        env.run(consume)
    finally:
        env.stdout.flush()


@tail_app.command("events")
def tail_events(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", "-u", show_default=False, help="Whose events to show.")] = None,
    all_users: Annotated[bool, typer.Option("--all-users", help="Show every user's events.")] = False,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", show_default=False, help="Only this event type (repeatable): login, logout, ..."),
    ] = None,
    since: SinceOption = None,
    follow: FollowOption = True,
    max_records: MaxOption = None,
    idle_timeout: IdleOption = None,
) -> None:
    """Show user events: history from --since, then live as they are published.

    Reconnects by itself after the server or network goes away and resumes after
    the last event shown: no gap, no duplicate. [cyan]--json[/cyan] prints one object per
    event with id, user_id, type, timestamp and data.

    Examples:

      streamcli tail events --user alice

      streamcli tail events --all-users --type login --since 1h --no-follow

      streamcli --json tail events --user alice --max 10 | jq .data
    """
    from streamcli.client.events import EVENT_TYPES, Event
    from streamcli.client.events import tail_events as stream
    from streamcli.ui.records import event_line

    env = get_env(ctx)
    if all_users == bool(user):
        raise UsageError("give --user USER or --all-users (one of them)")
    values = [EVENT_TYPES.parse(t) for t in types or []]
    options = _options(env, follow, max_records, idle_timeout, since)
    start = parse_since(since)
    _print_all(
        env,
        lambda conn: stream(
            conn,
            user_id=user or "",
            all_users=all_users,
            types=values,  # type: ignore[arg-type]
            since=start,
            options=options,
        ),
        Event.json_line,
        event_line,
    )


@tail_app.command("notifications")
def tail_notifications(
    ctx: typer.Context,
    user: Annotated[str, typer.Option("--user", "-u", help="Whose notifications (those for everyone too).")],
    topics: Annotated[
        list[str] | None, typer.Option("--topic", show_default=False, help="Only this topic (repeatable).")
    ] = None,
    since: SinceOption = None,
    follow: FollowOption = True,
    max_records: MaxOption = None,
    idle_timeout: IdleOption = None,
) -> None:
    """Show notifications for a user: history from --since, then live.

    The server raises notifications itself (e.g. topic [bold]files[/bold]: an upload
    completed); [bold]streamcli notify send[/bold] raises others. Reconnects and resumes
    like [bold]tail events[/bold].

    Examples:

      streamcli tail notifications --user alice

      streamcli --json tail notifications --user alice --topic files --since 1d --no-follow
    """
    from streamcli.client.jsontext import ENCODER
    from streamcli.client.notifications import tail_notifications as stream
    from streamcli.ui.records import notification_line

    env = get_env(ctx)
    options = _options(env, follow, max_records, idle_timeout, since)
    start = parse_since(since)
    _print_all(
        env,
        lambda conn: stream(conn, recipient=user, topics=topics or [], since=start, options=options),
        lambda notification: ENCODER.encode(notification.to_json()),
        notification_line,
    )


def register(app: typer.Typer) -> None:
    """Add the ``tail`` group to the tree."""
    app.add_typer(tail_app, name="tail")
