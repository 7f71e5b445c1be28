"""Events from NDJSON on a pipe or a file (``streamcli events publish < events.ndjson``), read as they come.

A pipe's read blocks, so a daemon thread reads the descriptor and hands what it read to the event loop;
lines are parsed into events on the loop, a batch per read (with whatever follows it within a linger).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.events import NonFiniteNumber, event_from_json, parse_json
from streamcli.errors import UsageError

#: Bytes read from stdin at a time at most (a read returns what the pipe has; from a file, this much).
READ_SIZE = 1 << 20


async def ndjson_events(stdin: IO[str], linger: float = 0.0) -> AsyncIterator[list[pb.UserEvent]]:
    """Events from NDJSON lines, a batch per read from the pipe, with what more arrives within ``linger``
    seconds of it: a line that arrives alone goes out after ``linger``
    (``tail -f app.log | ... | streamcli events publish``), a flood in full batches at once.

    Raises:
        UsageError: at the first malformed line (``stdin line N: ...``), once the events before it are yielded.
    """
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
    async for chunk in read_chunks(fd, linger):
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


async def read_chunks(fd: int, linger: float = 0.0) -> AsyncIterator[bytes]:
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
