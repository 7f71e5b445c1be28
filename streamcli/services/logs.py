"""Serving a log to a stream: start positions, cursors, heartbeats, trimming, shutdown.

Events, notifications and chat rooms are all logs (DESIGN.md). A reader is a
``LogCursor``: it replays from its start position in batches, then waits for
new records and reads on. There is no per-subscriber queue: a slow reader just
falls behind in the log and catches up at its own pace, holding one batch in
memory. A position that retention has trimmed gives OUT_OF_RANGE, never a gap.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli.backends.base import LogRecord, LogStore, NewRecord, TrimmedError
from streamcli.credentials import REVOKED, Credentials, TokenWatch
from streamcli.services.rpc import Context, abort

Tag = TypeVar("Tag")

#: Records read from the store per step; also the most sent in one response.
BATCH_RECORDS = 500
#: Payload bytes per response at most (well under the 4 MiB message limit).
BATCH_BYTES = 1 << 20


#: Seconds a producer may stay idle before its log forgets it, when retention has no age limit.
PRODUCER_IDLE_LIMIT = 30 * 86400.0


@dataclasses.dataclass(frozen=True)
class Retention:
    """How much of a log to keep; None = no limit on that axis."""

    max_age: float | None = 30 * 86400.0  # seconds
    max_count: int | None = None  # records

    @property
    def producer_idle_limit(self) -> float:
        """Seconds after its last append that a producer is forgotten (it then starts again at sequence 1):
        the age limit, or PRODUCER_IDLE_LIMIT without one. A producer whose records retention has
        removed has nothing left to deduplicate against."""
        return self.max_age if self.max_age is not None else PRODUCER_IDLE_LIMIT


@dataclasses.dataclass(frozen=True)
class LogSettings:
    """Server-wide settings of log streams."""

    heartbeat: float = 15.0  # seconds between responses on an idle stream
    retention: Retention = dataclasses.field(default_factory=Retention)
    # A live reader sends at most one response per tick of this many seconds (ticks shared by all
    # readers), so that what is appended meanwhile rides in one: a hundred tails of a log appended a
    # thousand times a second would otherwise send a hundred thousand responses a second. A record
    # after a quiet spell still goes out at once.
    live_interval: float = 0.01


def timestamp(seconds: float) -> Timestamp:
    """A protobuf Timestamp from seconds since the epoch, to the microsecond.

    A float of today's seconds holds about a quarter of a microsecond, no finer: its nanoseconds
    are float noise (``.014860288``), so it is rounded to microseconds, the precision events get
    from ``Timestamp.GetCurrentTime``.
    """
    micros = round(seconds * 1e6)
    return Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


async def start_position(
    log: LogStore,
    stream: str,
    resume_after_id: int,
    start_time: Timestamp | None,
    context: Context,
    *,
    tail: int = 0,
    match: Callable[[LogRecord], bool] | None = None,
) -> int:
    """Where a reader starts: after ``resume_after_id``, else at the last ``tail`` records ``match`` lets
    through that are at or after ``start_time``, else at ``start_time``, else live (the end).

    Aborts with OUT_OF_RANGE for a resume id that is trimmed or beyond the end,
    INVALID_ARGUMENT for a start time in the future or outside protobuf's Timestamp range.
    """
    bounds = await log.bounds(stream)
    if resume_after_id:
        if resume_after_id > bounds.last_id:
            await abort(
                context,
                grpc.StatusCode.OUT_OF_RANGE,
                f"resume id {resume_after_id} is beyond the end of the log (last id {bounds.last_id})",
            )
        if resume_after_id < bounds.trimmed_through:
            await abort(
                context,
                grpc.StatusCode.OUT_OF_RANGE,
                f"records after {resume_after_id} have been trimmed by retention "
                f"(the oldest kept is {bounds.trimmed_through + 1})",
            )
        return resume_after_id
    if start_time is not None:
        try:
            seconds = start_time.ToNanoseconds() / 1e9
        except ValueError as exc:  # protobuf's range: years 1-9999, nanos 0-999999999
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"start_time is not a valid time: {exc}")
        if seconds > time.time() + 1.0:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "start_time is in the future")
        floor = await log.position_before(stream, seconds)
        if not tail:
            return floor
    else:
        floor = bounds.trimmed_through
    if tail:
        return await _before_last(log, stream, bounds.last_id, tail, match or _every, floor)
    return bounds.last_id


def _every(record: LogRecord) -> bool:
    return True


async def _before_last(
    log: LogStore, stream: str, last_id: int, count: int, match: Callable[[LogRecord], bool], floor: int
) -> int:
    """The position just before the last ``count`` records up to ``last_id`` that ``match`` lets through,
    reading the log backwards (the history before them is never read); ``floor`` if fewer are kept after it."""
    before = last_id + 1
    found = 0
    while True:
        records = await log.read_before(stream, before, BATCH_RECORDS)
        for record in records:
            if record.id <= floor:
                return floor
            if match(record):
                found += 1
                if found == count:
                    return record.id - 1
        if len(records) < BATCH_RECORDS:
            return floor
        before = records[-1].id


async def end_time(request: Any, context: Context) -> float | None:
    """A request's ``end_time`` in seconds since the epoch (None when unset); INVALID_ARGUMENT outside
    protobuf's Timestamp range."""
    if not request.HasField("end_time"):
        return None
    try:
        return float(request.end_time.ToNanoseconds() / 1e9)
    except ValueError as exc:  # protobuf's range: years 1-9999, nanos 0-999999999
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"end_time is not a valid time: {exc}")


class LogCursor:
    """Reads one stream after ``position``, yielding batches of matching records.

    ``position`` is the newest id examined, matched or not: resuming after it
    skips nothing the filter would have let through.
    """

    def __init__(self, log: LogStore, stream: str, position: int, match: Callable[[LogRecord], bool]) -> None:
        self.log = log
        self.stream = stream
        self.position = position
        self.match = match

    async def batches(
        self,
        *,
        follow: bool,
        heartbeat: float,
        stopping: asyncio.Event,
        live_interval: float = 0.0,
        until: float | None = None,
    ) -> AsyncIterator[list[LogRecord]]:
        """Matching records in order; ``[]`` is a heartbeat (nothing new for ``heartbeat`` seconds).

        With ``until`` (seconds since the epoch), it ends at the first record appended after that time
        (not yielded), or, following live, once the clock passes it.

        Once caught up, a reader that sent a batch less than ``live_interval`` seconds ago waits for
        the next tick of a ``live_interval`` clock shared by all readers (replay runs at full speed).

        Raises:
            TrimmedError: the cursor's position was trimmed while it was behind.
            ServerStopping: the server is shutting down (``stopping`` is set).
        """
        last_sent = time.monotonic()  # any response, heartbeats included
        last_batch = -live_interval  # the last one with records
        while True:
            records = await self.log.read(self.stream, self.position, BATCH_RECORDS)
            if records:
                records = _within_budget(records)
                if until is not None and records[-1].timestamp > until:  # append times never decrease along ids
                    records = [r for r in records if r.timestamp <= until]
                    if records:
                        self.position = records[-1].id
                        matched = [r for r in records if self.match(r)]
                        if matched:
                            yield matched
                    return
                self.position = records[-1].id
                matched = [r for r in records if self.match(r)]
                if matched:
                    yield matched
                    last_sent = last_batch = time.monotonic()
                elif time.monotonic() - last_sent >= heartbeat:
                    yield []
                    last_sent = time.monotonic()
                continue
            if not follow:
                return
            if stopping.is_set():
                raise ServerStopping(self.position)
            wait = heartbeat
            if until is not None:
                if time.time() > until:
                    return
                wait = min(heartbeat, until - time.time() + 0.001)
            now = time.monotonic()
            if now - last_batch < live_interval:
                # Sent a moment ago: sleep instead of being woken by every append, until the next tick
                # of a clock shared by every reader (monotonic, as the event loop's), so that their
                # responses go out together and the loop is free between ticks for what publishers send.
                await asyncio.sleep(live_interval - now % live_interval)
                continue
            if not await self.log.wait_for(self.stream, self.position, wait):
                if stopping.is_set():
                    raise ServerStopping(self.position)
                if until is not None and time.time() > until:
                    continue  # one more read, then the end
                yield []
                last_sent = time.monotonic()


class ServerStopping(Exception):
    """The server is shutting down; the reader should resume after ``position`` elsewhere or later."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


def _within_budget(records: list[LogRecord]) -> list[LogRecord]:
    total = 0
    for index, record in enumerate(records):
        total += len(record.payload)
        if total > BATCH_BYTES and index:
            return records[:index]
    return records


async def serve_cursor(
    cursor: LogCursor,
    *,
    follow: bool,
    settings: LogSettings,
    stopping: asyncio.Event,
    context: Context,
    until: float | None = None,
) -> AsyncIterator[list[LogRecord]]:
    """``cursor.batches`` after an empty first batch, with its two ends mapped to statuses for the client.

    Trimmed while behind → OUT_OF_RANGE; shutdown → UNAVAILABLE naming the id to
    resume after (clients reconnect and resume by themselves).
    """
    try:
        yield []  # at once: tells the client its start position, so it can resume even before any record
        batches = cursor.batches(
            follow=follow,
            heartbeat=settings.heartbeat,
            stopping=stopping,
            live_interval=settings.live_interval,
            until=until,
        )
        async for records in batches:
            yield records
    except TrimmedError as exc:
        await abort(
            context,
            grpc.StatusCode.OUT_OF_RANGE,
            f"this reader fell behind retention: records up to {exc.trimmed_through} were trimmed "
            f"before it read past {cursor.position}",
        )
    except ServerStopping as exc:
        await abort(
            context, grpc.StatusCode.UNAVAILABLE, f"the server is shutting down; resume after id {exc.position}"
        )


class LogService:
    """Base of the services that serve a log to streams (events, notifications)."""

    def __init__(
        self, log: LogStore, settings: LogSettings, stopping: asyncio.Event, credentials: Credentials | None = None
    ) -> None:
        self._log = log
        self._settings = settings
        self._stopping = stopping
        self._credentials = credentials or Credentials()

    async def check_acting_as(self, user: str, context: Context, what: str) -> None:
        """PERMISSION_DENIED unless the caller's token may act for ``user`` (``what``: the action, for the detail)."""
        caller = self._credentials.caller(context.invocation_metadata())
        if not caller.may_act_as(user):
            await abort(
                context, grpc.StatusCode.PERMISSION_DENIED, f"{what}: this token is {caller.user}'s, not {user}'s"
            )

    async def follow(
        self, stream: str, request: Any, match: Callable[[LogRecord], bool], context: Context
    ) -> AsyncIterator[tuple[list[LogRecord], int]]:
        """Batches of matching records with the position read up to, for a request with the common
        ``resume_after_id`` / ``start_time`` / ``tail`` / ``end_time`` / ``no_follow`` fields."""
        until = await end_time(request, context)
        start = await start_position(
            self._log,
            stream,
            request.resume_after_id,
            request.start_time if request.HasField("start_time") else None,
            context,
            tail=request.tail,
            match=match,
        )
        cursor = LogCursor(self._log, stream, start, match)
        batches = serve_cursor(
            cursor,
            follow=not request.no_follow,
            settings=self._settings,
            stopping=self._stopping,
            context=context,
            until=until,
        )
        token = TokenWatch(self._credentials, context.invocation_metadata())
        async for records in batches:
            if token.revoked():  # nothing more for a token taken away, heartbeats included
                await abort(context, grpc.StatusCode.UNAUTHENTICATED, REVOKED)
            yield records, cursor.position


class Appender(Generic[Tag]):
    """Appends the records many tasks post to one stream, in batches: posting does not wait for the store.

    Records posted while an append is in flight go into the next one, in posting
    order and in one ``append`` call (one transaction, one wake-up of the
    readers). A burst of posts therefore costs a few appends instead of one
    each, and a poster is never held up by the disk. At most ``limit`` records
    wait; ``post`` waits beyond that. ``stored()`` waits until everything posted
    so far is stored.

    Each record carries a tag of the caller's choosing, handed back to
    ``on_stored`` (after each append, with the stored records) or
    ``on_failed`` (when an append raises; those records are not stored).
    """

    def __init__(
        self,
        log: LogStore,
        stream: str,
        on_stored: Callable[[list[LogRecord], list[Tag]], Awaitable[None]],
        on_failed: Callable[[BaseException, list[Tag]], None],
        *,
        limit: int = 1000,
    ) -> None:
        self._log = log
        self._stream = stream
        self._on_stored = on_stored
        self._on_failed = on_failed
        self._limit = limit
        self._pending: collections.deque[tuple[NewRecord, Tag]] = collections.deque()
        self._posted = 0  # records ever posted
        self._done = 0  # records ever appended or failed
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def post(self, record: NewRecord, tag: Tag) -> None:
        """Queue ``record`` for the next append; returns at once unless ``limit`` records are waiting."""
        while len(self._pending) >= self._limit:
            await self._reached(self._done + 1)
        self._pending.append((record, tag))
        self._posted += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"append {self._stream}")

    async def stored(self) -> None:
        """Wait until every record posted so far has been appended (or has failed)."""
        await self._reached(self._posted)

    async def _reached(self, count: int) -> None:
        if self._done < count:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((count, future))
            await future

    async def _run(self) -> None:
        try:
            while self._pending:
                records: list[NewRecord] = []
                tags: list[Tag] = []
                size = 0
                while self._pending and len(records) < BATCH_RECORDS and (size < BATCH_BYTES or not records):
                    record, tag = self._pending.popleft()
                    records.append(record)
                    tags.append(tag)
                    size += len(record.payload)
                try:
                    stored = await self._log.append(self._stream, records)
                except Exception as exc:  # handed to on_failed; the next batch may succeed
                    self._on_failed(exc, tags)
                else:
                    await self._on_stored(stored, tags)
                self._done += len(records)
                waiting, self._waiters = self._waiters, []
                for count, future in waiting:
                    if count <= self._done:
                        if not future.done():
                            future.set_result(None)
                    else:
                        self._waiters.append((count, future))
        finally:
            self._task = None
            if self._pending:  # cancelled (the loop is closing): nothing more will be stored
                for _, future in self._waiters:
                    future.cancel()
                self._waiters.clear()
