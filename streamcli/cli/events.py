"""``streamcli events publish``: append user events, from flags or NDJSON on stdin."""

from __future__ import annotations

import asyncio
import json
import os
import select
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Annotated

import typer

from streamcli.cli.environment import get_env
from streamcli.errors import Interrupted, UnavailableError, UsageError

if TYPE_CHECKING:
    from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
    from streamcli.client.publish import PublishProgress

#: Bytes read from stdin at a time at most (a read returns what the pipe has; from a file, this much).
READ_SIZE = 1 << 20
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
        try:
            reply = env.run(lambda conn: publish_batches(conn, _ndjson_batches(env.stdin, linger), options, progress))
        except (Interrupted, UnavailableError) as exc:
            if not progress.sent:
                raise
            raise type(exc)(f"{exc.message} after {_unacknowledged(progress)}") from exc
    if env.json:
        env.emit_json({"count": reply.count, "first_id": reply.first_id, "last_id": reply.last_id})
    elif reply.count:
        ids = f"id {reply.first_id}" if reply.count == 1 else f"ids {reply.first_id}-{reply.last_id}"
        env.stdout.write(f"published {reply.count} event{'s' if reply.count != 1 else ''}, {ids}\n")
    else:
        env.stdout.write("published 0 events\n")


def _unacknowledged(progress: PublishProgress) -> str:
    """What is known to be stored of the events sent when publishing stopped early."""
    sent, acknowledged = progress.sent, progress.acknowledged
    if acknowledged == sent:
        return f"{sent} event(s) had been sent, all acknowledged as stored"
    if not acknowledged:
        return (
            f"{sent} event(s) had been sent; none was acknowledged, so some of them may have been stored "
            "(see streamcli tail events --since)"
        )
    return (
        f"{sent} event(s) had been sent; the first {acknowledged} were acknowledged as stored, and some of the "
        f"{sent - acknowledged} after them may have been stored too (see streamcli tail events --since)"
    )


async def _ndjson_batches(stdin: IO[str], linger: float = 0.0) -> AsyncIterator[list[pb.UserEvent]]:
    """Events from NDJSON lines, a batch per read from the pipe, with what more arrives within ``linger``
    seconds of it: a line that arrives alone goes out after ``linger``
    (``tail -f app.log | ... | streamcli events publish``), a flood in full batches at once."""
    from streamcli.client.events import NonFiniteNumber, event_from_json, parse_json

    number = 0

    def parse(lines: Iterable[bytes | str]) -> Iterator[list[pb.UserEvent]]:
        """The events of ``lines`` as one batch; a bad line ends it (the good ones before it are yielded)."""
        nonlocal number
        batch = []
        problem = None
        for line in lines:
            number += 1
            if not line.strip():
                continue
            try:
                batch.append(event_from_json(parse_json(line)))
            except json.JSONDecodeError as exc:
                problem = f"not JSON: {exc.msg}"
            except NonFiniteNumber as exc:
                problem = exc.msg
            except UnicodeDecodeError:
                problem = "not UTF-8"
            except UsageError as exc:
                problem = exc.message
            if problem:
                break
        if batch:
            yield batch
        if problem:
            raise UsageError(f"stdin line {number}: {problem}")

    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO)
        for batch in parse(stdin):
            yield batch
        return
    pending = b""
    async for chunk in _chunks(fd, linger):
        data = pending + chunk
        cut = data.rfind(b"\n") + 1  # complete lines only: a character may straddle two reads
        pending = data[cut:]
        for batch in parse(_lines(data[:cut])):
            yield batch
    for batch in parse(_lines(pending)):
        yield batch  # a last line without a newline


def _lines(data: bytes) -> list[str] | list[bytes]:
    """The lines of ``data`` (split at newlines only: JSON text may hold U+2028), decoded at once, or as
    bytes if they are not all UTF-8 (``parse`` then says which line is not)."""
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        return []
    try:
        return data.decode().split("\n")
    except UnicodeDecodeError:
        return data.split(b"\n")


async def _chunks(fd: int, linger: float = 0.0) -> AsyncIterator[bytes]:
    """What ``fd`` has, as it comes: each read together with what follows within ``linger`` seconds (up to
    READ_SIZE bytes), read on a thread (a pipe's read blocks) so that the event loop runs on.

    The thread only reads and waits (without the GIL), and wakes the loop once per chunk; the caller
    parses. A daemon: it may be blocked in a read when the command ends (Ctrl-C, a lost server). At most
    a few chunks wait in memory.
    """
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[bytes | Exception] = asyncio.Queue()
    room = threading.Semaphore(4)

    def hand_over(item: bytes | Exception) -> bool:
        try:
            loop.call_soon_threadsafe(ready.put_nowait, item)
        except RuntimeError:  # the loop has closed: the command has ended, nobody is reading
            return False
        return True

    def read() -> None:
        parts: list[bytes] = []
        try:
            waiter = select.poll()  # (select.select refuses descriptors from 1024 on)
            waiter.register(fd, select.POLLIN)
            ended = False
            while not ended:
                room.acquire()
                parts = [os.read(fd, READ_SIZE)]
                size = len(parts[0])
                ended = not size
                deadline = time.monotonic() + linger
                while not ended and size < READ_SIZE and (remaining := deadline - time.monotonic()) > 0:
                    if not waiter.poll(remaining * 1000):
                        break  # nothing more within the linger
                    more = os.read(fd, READ_SIZE - size)
                    parts.append(more)
                    size += len(more)
                    ended = not more
                chunk, parts = b"".join(parts), []
                if chunk and not hand_over(chunk):
                    return
            hand_over(b"")
        except Exception as exc:  # an unreadable stdin: what came before it is used, then it is raised
            if any(parts):
                hand_over(b"".join(parts))
            hand_over(exc)

    threading.Thread(target=read, name="streamcli-stdin", daemon=True).start()
    while chunk := await ready.get():
        if isinstance(chunk, Exception):
            raise chunk
        room.release()
        yield chunk


def register(app: typer.Typer) -> None:
    """Add the ``events`` group to the tree."""
    app.add_typer(events_app, name="events")
