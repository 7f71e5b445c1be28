"""``RedisLog``: the ``LogStore`` on Redis, shared by every replica that uses the same Redis database.

Every log is a Redis Stream whose entry ids are the log's ids (``N-0``). What must not race is one Lua
script (``redis_scripts.APPEND``): the id counter, the conditional check (``if_last_id``), the
producers' sequences and the ``XADD`` run as one step in Redis, so ids are strictly increasing per log
across replicas and a (producer, sequence) is stored once whichever replica receives it. Appends take
Redis's clock (``TIME``), never earlier than the log's last append, so times never decrease along ids
whatever the replicas' clocks say.

Readers replay with ``XRANGE`` and wait with ``XREAD BLOCK`` from their own position, each wait on a
connection of its own taken from a pool kept for waits: a blocked connection is never shared, its
socket has no read timeout shorter than the block, and a wait that is cancelled (a client gone, a
shutdown) disconnects its connection rather than hand it back with a reply still due.

Every command goes through ``shielded`` (``Commands``, pipelines, the waits), which also says a Redis
that cannot be reached as the seam's ``StoreUnavailableError``, whatever redis-py raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from streamcli.backends import redis_scripts
from streamcli.backends.base import (
    ConditionFailedError,
    KindCount,
    LogBounds,
    LogRecord,
    NewRecord,
    ProducerState,
    SequenceGapError,
    StoreUnavailableError,
    StreamHead,
    TrimmedError,
)

T = TypeVar("T")

#: Prefix of every key the Redis backend writes.
PREFIX = b"streamcli:"
#: Entries read per XRANGE when scanning a whole log.
SCAN_STEP = 1000
#: Seconds a wait's socket may stay silent beyond its block before the wait counts as lost.
BLOCK_MARGIN = 5.0


def _key(kind: bytes, stream: str) -> bytes:
    return PREFIX + kind + b":" + stream.encode()


def _id(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


def _record(entry: tuple[bytes, dict[bytes, bytes]]) -> LogRecord:
    entry_id, fields = entry
    return LogRecord(
        _id(entry_id), float(fields[b"t"]), fields[b"k"].decode(), fields[b"c"].decode(), bytes(fields[b"p"])
    )


def _abandoned(work: asyncio.Future[Any]) -> None:
    """Take the outcome of work nobody awaits any more (so that asyncio does not log it as lost)."""
    if not work.cancelled():
        work.exception()


#: What redis-py raises when Redis cannot be reached or stops answering: refused or lost connections,
#: timeouts, a Redis still loading its data (``BusyLoadingError`` is a ``ConnectionError``), and the
#: socket errors it does not wrap.
LOST = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def unreachable(exc: BaseException) -> StoreUnavailableError:
    """The seam's error for a Redis that cannot be reached (``exc``: what redis-py raised)."""
    return StoreUnavailableError(f"the server cannot reach its Redis: {exc or type(exc).__name__}")


async def shielded(work: Awaitable[T]) -> T:
    """Await ``work`` (Redis commands) in a task of its own, so that cancelling the caller always cancels
    the caller; a Redis that cannot be reached raises ``StoreUnavailableError``.

    redis-py (8.1) sometimes swallows a cancellation that reaches it in the middle of a command: the
    cancelled caller then carries on as if nothing happened (a housekeeping loop sleeps on instead of
    ending, a shutdown waits for ever). Shielded, the caller gets its CancelledError at once and the
    command finishes in its task, its connection going back to the pool with no reply due.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_abandoned)
        raise
    except LOST as exc:
        raise unreachable(exc) from exc


class Commands(aioredis.Redis):
    """The client for ordinary commands: each one ``shielded``."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        return await shielded(super().execute_command(*args, **options))  # type: ignore[no-untyped-call]


class RedisLog:
    """A ``LogStore`` on one Redis database (``commands`` for ordinary commands, ``waits`` for blocking reads)."""

    def __init__(self, commands: aioredis.Redis, waits: aioredis.ConnectionPool) -> None:
        # Any: redis-py types its replies as the union of every reply type of both its clients.
        self._redis: Any = commands
        self._waits = waits
        self._append = commands.register_script(redis_scripts.APPEND)
        self._position_before = commands.register_script(redis_scripts.POSITION_BEFORE)
        self._trim = commands.register_script(redis_scripts.TRIM)
        self._forget = commands.register_script(redis_scripts.FORGET_PRODUCERS)
        self._released = False
        self._release: asyncio.Future[None] | None = None  # done when released: ends every wait

    def _keys(self, stream: str) -> list[bytes]:
        return [_key(b"log", stream), _key(b"head", stream)]

    async def append(
        self, stream: str, records: Sequence[NewRecord], *, if_last_id: int | None = None
    ) -> list[LogRecord]:
        if not records:
            return []
        args: list[Any] = [stream, "" if if_last_id is None else str(if_last_id), len(records)]
        for record in records:
            args += [record.key, record.kind, record.payload, record.producer, record.sequence]
        keys = [*self._keys(stream), _key(b"producers", stream), PREFIX + b"streams"]
        reply = await self._append(keys=keys, args=args)
        outcome = reply[0]
        if outcome == b"condition":
            assert if_last_id is not None
            raise ConditionFailedError(stream, if_last_id, int(reply[1]))
        if outcome == b"gap":
            raise SequenceGapError(stream, reply[2].decode(), int(reply[3]), int(reply[4]), int(reply[1]))
        ts = float(reply[1])
        last_id = int(reply[2])
        return [
            LogRecord(last_id + n, ts, records[int(i)].key, records[int(i)].kind, records[int(i)].payload)
            for n, i in enumerate(reply[3:], start=1)
        ]

    async def producer(self, stream: str, producer: str) -> ProducerState:
        saved = await self._redis.hget(_key(b"producers", stream), producer)
        if saved is None:
            return ProducerState(0, 0, 0, 0.0)
        last_sequence, first_id, last_id, updated_at = saved.split()
        return ProducerState(int(last_sequence), int(first_id), int(last_id), float(updated_at))

    async def forget_producers(self, stream: str, idle_since: float) -> int:
        return int(await self._forget(keys=[_key(b"producers", stream)], args=[repr(idle_since)]))

    async def read(self, stream: str, after_id: int, limit: int) -> list[LogRecord]:
        log, head = self._keys(stream)
        async with self._redis.pipeline(transaction=True) as pipe:  # one step: the trim check and the entries agree
            pipe.hget(head, "trimmed_through")
            if limit > 0:
                pipe.xrange(log, min=f"{after_id + 1}-0", max="+", count=limit)
            trimmed, *entries = await shielded(pipe.execute())
        trimmed_through = int(trimmed or 0)
        if after_id < trimmed_through:
            raise TrimmedError(stream, after_id, trimmed_through)
        return [_record(entry) for entry in entries[0]] if entries else []

    async def read_before(self, stream: str, before_id: int, limit: int) -> list[LogRecord]:
        if limit <= 0 or before_id <= 1:
            return []
        log = _key(b"log", stream)
        entries = await self._redis.xrevrange(log, max=f"{before_id - 1}-0", min="-", count=limit)
        return [_record(entry) for entry in entries]

    async def bounds(self, stream: str) -> LogBounds:
        trimmed, last = await self._redis.hmget(_key(b"head", stream), ["trimmed_through", "last_id"])
        return LogBounds(int(trimmed or 0), int(last or 0))

    async def heads(self, prefix: str, after: str, limit: int) -> list[StreamHead]:
        if limit <= 0:
            return []
        # Names sort by their UTF-8 bytes in Redis, as by code point in Python; no UTF-8 byte is 0xff.
        start = b"(" + max(after, prefix).encode()
        names = await self._redis.zrange(
            PREFIX + b"streams", start, b"[" + prefix.encode() + b"\xff", bylex=True, offset=0, num=limit
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(PREFIX + b"head:" + name, ["trimmed_through", "last_id", "last_ts"])
            rows = await shielded(pipe.execute())
        return [
            StreamHead(name.decode(), LogBounds(int(trimmed or 0), int(last or 0)), float(ts or 0))
            for name, (trimmed, last, ts) in zip(names, rows, strict=True)
        ]

    async def position_before(self, stream: str, timestamp: float) -> int:
        return int(await self._position_before(keys=self._keys(stream), args=[repr(timestamp)]))

    async def wait_for(self, stream: str, after_id: int, timeout: float) -> bool:
        if self._released:
            return False
        if (await self.bounds(stream)).last_id > after_id:
            return True
        if timeout <= 0 or self._released:  # (released while the bounds were read)
            return False
        if self._release is None:
            self._release = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(self._block(_key(b"log", stream), after_id, timeout))
        try:
            # Released: return at once, whatever the blocked read does with its cancellation.
            ends: list[asyncio.Future[Any]] = [waiting, self._release]
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiting.done():
                waiting.cancel()  # its connection is disconnected, never handed back with a reply due
                waiting.add_done_callback(_abandoned)
        return waiting.done() and not waiting.cancelled() and waiting.result()

    async def _block(self, log: bytes, after_id: int, timeout: float) -> bool:
        """``XREAD BLOCK`` on a connection of its own: whether an entry after ``after_id`` came in time."""
        try:
            connection = await self._waits.get_connection()  # type: ignore[no-untyped-call]
        except LOST as exc:
            raise unreachable(exc) from exc
        try:
            block = max(1, round(timeout * 1000))
            await connection.send_command("XREAD", "COUNT", 1, "BLOCK", block, "STREAMS", log, f"{after_id}-0")
            reply = await connection.read_response(timeout=timeout + BLOCK_MARGIN)
        except BaseException as exc:
            await connection.disconnect(nowait=True)  # a reply may still be due: this connection is spent
            if isinstance(exc, LOST):
                raise unreachable(exc) from exc
            raise
        finally:
            await self._waits.release(connection)
        return bool(reply)

    def release_readers(self) -> None:
        self._released = True
        if self._release is not None and not self._release.done():
            self._release.set_result(None)

    async def trim(self, stream: str, *, older_than: float | None = None, keep_last: int | None = None) -> int:
        args = ["" if older_than is None else repr(older_than), "" if keep_last is None else str(keep_last)]
        return int(await self._trim(keys=self._keys(stream), args=args))

    async def drop(self, stream: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*self._keys(stream), _key(b"producers", stream))
            pipe.zrem(PREFIX + b"streams", stream)
            await shielded(pipe.execute())

    async def kind_counts(self, stream: str) -> dict[str, KindCount]:
        log = _key(b"log", stream)
        records: dict[str, int] = {}
        keys: dict[str, set[str]] = {}
        start = "-"
        while entries := await self._redis.xrange(log, min=start, max="+", count=SCAN_STEP):
            for _, fields in entries:
                kind = fields[b"c"].decode()
                records[kind] = records.get(kind, 0) + 1
                keys.setdefault(kind, set()).add(fields[b"k"].decode())
            start = f"{_id(entries[-1][0]) + 1}-0"
        return {kind: KindCount(count, len(keys[kind])) for kind, count in records.items()}
