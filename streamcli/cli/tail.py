"""``streamcli tail events``, ``tail notifications`` and ``tail chat``: history, then live, gap-free across
reconnects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from streamcli.cli.environment import Environment, get_env
from streamcli.cli.parsing import parse_since, parse_until
from streamcli.errors import UsageError

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp
    from rich.text import Text

    from streamcli.client.connection import Connection
    from streamcli.client.tail import TailOptions

R = TypeVar("R")

tail_app = typer.Typer(
    help="Follow a log live: events, notifications or a chat room (history first with --since or --tail).",
    epilog=(
        "Examples:\n\n  streamcli tail events --user alice --since 1h\n\n"
        "  streamcli tail notifications --user alice --topic files\n\n"
        "  streamcli tail chat dev --tail 20"
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
        "--follow/--no-follow",
        help="Keep following live; --no-follow prints history and exits (the whole retained log, "
        "unless --since or --tail says where to start).",
    ),
]
TailOption = Annotated[
    int | None,
    typer.Option(
        "--tail",
        min=0,
        show_default=False,
        help="Start with the last N records (those matching the filters; after --since too, if given), "
        "then follow live or, with --no-follow, exit. The server finds them: the history before them is not sent.",
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option(
        "--until",
        show_default=False,
        help="Stop (exit 0) at the first record appended after this time: a duration back (10m) or a time "
        "(2026-11-24T11:00:00Z; UTC if no zone; it may be in the future, which ends a live tail then).",
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
    env: Environment,
    follow: bool,
    max_records: int | None,
    idle_timeout: float | None,
    tail: int | None,
    until: str | None,
) -> TailOptions:
    from streamcli.client.tail import TailOptions

    return TailOptions(
        follow=follow,
        tail=tail,
        until=parse_until(until),
        max_records=max_records,
        idle_timeout=idle_timeout,
        notice=env.notice,
    )


def _start(since: str | None, follow: bool, tail: int | None) -> Timestamp | None:
    """Where the history starts: ``--since``; without it and without ``--tail``, ``--no-follow`` reads the whole
    retained log (as ``kubectl logs`` and ``journalctl`` do) and a follow starts live."""
    start = parse_since(since)
    if start is None and not follow and tail is None:
        from google.protobuf.timestamp_pb2 import Timestamp

        return Timestamp()  # the epoch: from the oldest record kept
    return start


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
    tail: TailOption = None,
    until: UntilOption = None,
    follow: FollowOption = True,
    max_records: MaxOption = None,
    idle_timeout: IdleOption = None,
) -> None:
    """Show user events: history from --since or --tail, then live as they are published.

    Reconnects by itself after the server or network goes away and resumes after
    the last event shown: no gap, no duplicate. [cyan]--json[/cyan] prints one object per
    event with id, user_id, type, timestamp and data.

    Examples:

      streamcli tail events --user alice

      streamcli tail events --all-users --type login --since 1h --no-follow

      streamcli tail events --user alice --tail 10 --no-follow

      streamcli --json tail events --user alice --max 10 | jq .data
    """
    from streamcli.client.events import EVENT_TYPES, Event
    from streamcli.client.events import tail_events as stream
    from streamcli.ui.records import event_line

    env = get_env(ctx)
    if all_users == bool(user):
        raise UsageError("give --user USER or --all-users (one of them)")
    values = [EVENT_TYPES.parse(t) for t in types or []]
    options = _options(env, follow, max_records, idle_timeout, tail, until)
    start = _start(since, follow, tail)
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
    tail: TailOption = None,
    until: UntilOption = None,
    follow: FollowOption = True,
    max_records: MaxOption = None,
    idle_timeout: IdleOption = None,
) -> None:
    """Show notifications for a user: history from --since or --tail, then live.

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
    options = _options(env, follow, max_records, idle_timeout, tail, until)
    start = _start(since, follow, tail)
    _print_all(
        env,
        lambda conn: stream(conn, recipient=user, topics=topics or [], since=start, options=options),
        lambda notification: ENCODER.encode(notification.to_json()),
        notification_line,
    )


@tail_app.command("chat")
def tail_chat(
    ctx: typer.Context,
    room: Annotated[str, typer.Argument(metavar="ROOM", show_default=False, help="The room to read.")],
    since: SinceOption = None,
    tail: TailOption = None,
    until: UntilOption = None,
    follow: FollowOption = True,
    max_records: MaxOption = None,
    idle_timeout: IdleOption = None,
) -> None:
    """Follow a chat room read-only: history from --since or --tail, then live.

    It does not join: the room sees no join or leave message and [bold]/who[/bold] does not
    list it, and it sends nothing. Typing indicators are not shown (they are never stored).
    Reconnects and resumes like [bold]tail events[/bold]. [cyan]--json[/cyan] prints one object per
    message with id, room_id, user_id, type, content, file_id and timestamp.

    Examples:

      streamcli tail chat dev --tail 20

      streamcli --json tail chat ops --since 1d --no-follow
    """
    from streamcli.client.chat import tail_room as stream
    from streamcli.client.jsontext import ENCODER
    from streamcli.ui.records import chat_line

    env = get_env(ctx)
    options = _options(env, follow, max_records, idle_timeout, tail, until)
    start = _start(since, follow, tail)
    _print_all(
        env,
        lambda conn: stream(conn, room_id=room, since=start, options=options),
        lambda message: ENCODER.encode(message.to_json()),
        chat_line,
    )


def register(app: typer.Typer) -> None:
    """Add the ``tail`` group to the tree."""
    app.add_typer(tail_app, name="tail")
