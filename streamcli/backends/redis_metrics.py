"""``RedisMetrics``: the ``MetricStore`` on Redis, shared by every replica that uses the same database.

Keys (after ``streamcli:``): ``metric:ids`` a hash identity -> series id (the identity is the JSON of
``[owner, name, labels]``), ``metric:series`` a hash series id -> the JSON of ``[owner, name, labels,
overflow]``, ``metric:last_id`` the last id given and ``metric:ordinary`` how many ordinary series there
are: ``ADD_SERIES`` reads and writes them in one step, so two replicas adding the same series get the
same id and the server-wide limit holds across replicas. ``metric:s:ID`` holds a series' aggregates
(field ``total`` all time, ``at`` when it changed, ``m:MINUTE`` one per minute), ``metric:minutes`` a
sorted set of every ``ID:MINUTE`` by minute (what retention removes), ``metric:push:JSON`` a push's next
index (the JSON of ``[owner, push_id]``) and ``metric:pushes`` a sorted set of those pushes by when they
were last sent to.

A flush merges sketches, which only Python can (``services/sketches.py``), so it cannot be one script:
it is an optimistic transaction. ``WATCH`` the series' hashes (and the push), read them, merge in this
process, then ``MULTI``/``EXEC`` the writes; if another replica (or stream) wrote any of those keys in
between, ``EXEC`` does nothing and the flush starts over from a fresh read. So flushes of the same
series at once each count once, and a push's position moves in the same step as what it added. The
retention scripts delete keys they compute (a series' hash, a push's key): the backend needs one Redis,
not a cluster.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from streamcli.backends.base import MetricDelta, MetricSeries, PushMark, StoredMetric, StoreUnavailableError
from streamcli.backends.redis_log import PREFIX, shielded

#: Series ids read per HMGET.
READ_STEP = 1000
#: Times a flush starts over because other writers changed its series, before it gives up (UNAVAILABLE).
MERGE_ATTEMPTS = 100
#: Retention entries removed per script run (Redis runs nothing else while a script runs).
FORGET_STEP = 1000

_IDS = PREFIX + b"metric:ids"
_SERIES = PREFIX + b"metric:series"
_LAST_ID = PREFIX + b"metric:last_id"
_ORDINARY = PREFIX + b"metric:ordinary"
_MINUTES = PREFIX + b"metric:minutes"
_PUSHES = PREFIX + b"metric:pushes"

#: KEYS: ids, series, last_id, ordinary. ARGV: identity, record, overflow ('1'/'0'), max ordinary.
#: Returns the series' id, or 0 when it is new and ordinary and the limit is reached.
ADD_SERIES = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if id then
  return tonumber(id)
end
if ARGV[3] == '0' then
  if tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[4]) then
    return 0
  end
  redis.call('INCR', KEYS[4])
end
id = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], id)
redis.call('HSET', KEYS[2], id, ARGV[2])
return id
"""

#: KEYS: minutes. ARGV: key prefix, minute (entries before it go), most entries to remove.
#: Removes per-minute aggregates older than the minute; returns how many.
FORGET_MINUTES = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, entry in ipairs(gone) do
  local id, minute = string.match(entry, '^(%d+):(%d+)$')
  redis.call('HDEL', ARGV[1] .. 'metric:s:' .. id, 'm:' .. minute)
  redis.call('ZREM', KEYS[1], entry)
end
return #gone
"""

#: KEYS: pushes. ARGV: key prefix, time (pushes last sent to before it go), most pushes to remove.
#: Forgets those pushes' positions; returns how many.
FORGET_PUSHES = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, push in ipairs(gone) do
  redis.call('DEL', ARGV[1] .. 'metric:push:' .. push)
  redis.call('ZREM', KEYS[1], push)
end
return #gone
"""


def _series_key(series_id: int) -> bytes:
    return PREFIX + b"metric:s:%d" % series_id


def _push_name(owner: str, push_id: str) -> str:
    return json.dumps([owner, push_id], separators=(",", ":"))


def _push_key(owner: str, push_id: str) -> bytes:
    return PREFIX + b"metric:push:" + _push_name(owner, push_id).encode()


def _minute_field(minute: int) -> bytes:
    return b"m:%d" % minute


class RedisMetrics:
    """A ``MetricStore`` on one Redis database (``commands``: the client every command goes through)."""

    def __init__(self, commands: aioredis.Redis) -> None:
        self._redis: Any = commands  # (redis-py types replies as the union of its clients' reply types)
        self._add = commands.register_script(ADD_SERIES)
        self._forget_minutes = commands.register_script(FORGET_MINUTES)
        self._forget_pushes = commands.register_script(FORGET_PUSHES)

    async def metric_series(self, after_id: int = 0) -> list[MetricSeries]:
        last_id = int(await self._redis.get(_LAST_ID) or 0)
        found: list[MetricSeries] = []
        for start in range(after_id + 1, last_id + 1, READ_STEP):
            ids = list(range(start, min(start + READ_STEP, last_id + 1)))
            for series_id, saved in zip(ids, await self._redis.hmget(_SERIES, ids), strict=True):
                if saved is not None:  # (every id up to last_id is there: ADD_SERIES writes both at once)
                    owner, name, labels, overflow = json.loads(saved)
                    found.append(MetricSeries(series_id, owner, name, labels, overflow))
        return found

    async def add_metric_series(
        self, owner: str, name: str, labels: str, overflow: bool, max_ordinary: int
    ) -> MetricSeries | None:
        identity = json.dumps([owner, name, labels], separators=(",", ":"), ensure_ascii=False)
        record = json.dumps([owner, name, labels, overflow], separators=(",", ":"), ensure_ascii=False)
        args = [identity, record, "1" if overflow else "0", str(max_ordinary)]
        series_id = int(await self._add(keys=[_IDS, _SERIES, _LAST_ID, _ORDINARY], args=args))
        return MetricSeries(series_id, owner, name, labels, overflow) if series_id else None

    async def merge_metrics(
        self,
        deltas: Sequence[MetricDelta],
        merge: Callable[[bytes, bytes], bytes],
        push: PushMark | None = None,
    ) -> None:
        watched = [_series_key(delta.series_id) for delta in deltas]
        if push is not None:
            watched.append(_push_key(push.owner, push.push_id))
        if not watched:
            return
        for attempt in range(MERGE_ATTEMPTS):
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await shielded(pipe.watch(*watched))
                    stored = await self._stored_for(deltas)
                    now = time.time()
                    pipe.multi()
                    for delta, (total, minutes) in zip(deltas, stored, strict=True):
                        fields: dict[bytes, Any] = {
                            b"total": merge(total, delta.total) if total is not None else delta.total,
                            b"at": repr(now),
                        }
                        for (minute, aggregate), held in zip(delta.minutes, minutes, strict=True):
                            fields[_minute_field(minute)] = merge(held, aggregate) if held is not None else aggregate
                        pipe.hset(_series_key(delta.series_id), mapping=fields)
                        if delta.minutes:
                            pipe.zadd(_MINUTES, {f"{delta.series_id}:{minute}": minute for minute, _ in delta.minutes})
                    if push is not None:
                        name = _push_name(push.owner, push.push_id)
                        pipe.set(_push_key(push.owner, push.push_id), push.next_index)
                        pipe.zadd(_PUSHES, {name: now})
                    await shielded(pipe.execute())
                    return
                except redis.exceptions.WatchError:
                    # Another writer changed a series (or the push) since the read: read again. (A short,
                    # random pause so that two replicas flushing the same series do not keep colliding.)
                    await asyncio.sleep(random.uniform(0, 0.002 * min(attempt + 1, 50)))
        raise StoreUnavailableError(
            f"the metric series kept changing under other flushes: {MERGE_ATTEMPTS} attempts to merge failed"
        )

    async def _stored_for(self, deltas: Sequence[MetricDelta]) -> list[tuple[bytes | None, list[bytes | None]]]:
        """Each delta's series' stored all-time aggregate and those of the delta's minutes (None: none yet)."""
        async with self._redis.pipeline(transaction=False) as reads:
            for delta in deltas:
                reads.hmget(_series_key(delta.series_id), [b"total", *(_minute_field(m) for m, _ in delta.minutes)])
            rows = await shielded(reads.execute())
        return [(row[0], row[1:]) for row in rows]

    async def stored_metrics(self, series_ids: Sequence[int], since_minute: int | None) -> dict[int, StoredMetric]:
        found: dict[int, StoredMetric] = {}
        for start in range(0, len(series_ids), READ_STEP):
            step = series_ids[start : start + READ_STEP]
            async with self._redis.pipeline(transaction=False) as reads:
                for series_id in step:
                    if since_minute is None:
                        reads.hmget(_series_key(series_id), [b"total", b"at"])
                    else:
                        reads.hgetall(_series_key(series_id))
                rows = await shielded(reads.execute())
            for series_id, row in zip(step, rows, strict=True):
                if since_minute is None:
                    total, at = row
                    if total is not None:
                        found[series_id] = StoredMetric(float(at), (bytes(total),))
                    continue
                minutes = sorted(
                    (int(field[2:]), bytes(value))
                    for field, value in row.items()
                    if field.startswith(b"m:") and int(field[2:]) >= since_minute
                )
                if minutes:
                    found[series_id] = StoredMetric(
                        float(row[b"at"]), tuple(a for _, a in minutes), tuple(m for m, _ in minutes)
                    )
        return found

    async def push_position(self, owner: str, push_id: str) -> int:
        return int(await self._redis.get(_push_key(owner, push_id)) or 0)

    async def forget_pushes(self, before: float) -> int:
        return await self._forget_all(self._forget_pushes, _PUSHES, repr(before))

    async def forget_metric_minutes(self, before_minute: int) -> int:
        return await self._forget_all(self._forget_minutes, _MINUTES, str(before_minute))

    async def _forget_all(self, script: Any, index: bytes, before: str) -> int:
        """Run a retention script until it finds nothing more; returns how much it removed."""
        removed = 0
        while True:
            step = int(await script(keys=[index], args=[PREFIX, before, FORGET_STEP]))
            removed += step
            if step < FORGET_STEP:
                return removed
