"""``RedisSpace``: the quota's counts (``serve --quota``) shared by every replica on one Redis database.

Keys (prefix ``streamcli:``): ``space:used``, the bytes of stored and partial files in the shared data
dir (absent until a replica measured the directory, and again after Redis lost it); ``space:reserved``,
a hash of replica -> bytes its uploads in flight may still write; ``space:leases``, a sorted set of
replica -> the time (ms, Redis's clock) its reservations stop counting. Each script runs as one step,
so two replicas can never both take the last free bytes.
"""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis

from streamcli.backends.base import SpaceUnknownError
from streamcli.backends.redis_log import PREFIX

#: Milliseconds a replica's reservations count after its last call: it renews them more often than this
#: while it has any (services/quota.py), so only a replica that died or lost Redis that long loses them.
LEASE_MS = 30_000

_EXPIRE_DEAD = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('HDEL', KEYS[2], dead)
  redis.call('ZREM', KEYS[3], dead)
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
"""

#: KEYS: used, reserved, leases. ARGV: replica, lease ms, size, quota (0 = none), measured used ('' = none).
#: Returns {'ok'|'full', used, reserved by all} | {'unknown'}.
RESERVE = (
    _EXPIRE_DEAD
    + """
local used = redis.call('GET', KEYS[1])
if not used then
  if ARGV[5] == '' then
    return {'unknown'}
  end
  used = ARGV[5]
  redis.call('SET', KEYS[1], used)
end
used = tonumber(used)
local reserved = 0
for _, bytes in ipairs(redis.call('HVALS', KEYS[2])) do
  reserved = reserved + tonumber(bytes)
end
local size, quota = tonumber(ARGV[3]), tonumber(ARGV[4])
if quota > 0 and used + reserved + size > quota then
  return {'full', string.format('%d', used), string.format('%d', reserved)}
end
redis.call('HINCRBY', KEYS[2], ARGV[1], size)
return {'ok', string.format('%d', used), string.format('%d', reserved + size)}
"""
)

#: KEYS: used, reserved, leases. ARGV: replica, lease ms, used delta, reserved delta.
ADJUST = (
    _EXPIRE_DEAD
    + """
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(ARGV[3]) ~= 0 then
  if redis.call('INCRBY', KEYS[1], ARGV[3]) < 0 then
    redis.call('SET', KEYS[1], 0)
  end
end
if tonumber(ARGV[4]) ~= 0 and redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[4]) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
"""
)


class RedisSpace:
    """A ``SharedSpace`` on one Redis database, for the replica that creates it (a name of its own)."""

    def __init__(self, commands: aioredis.Redis, lease_ms: int = LEASE_MS) -> None:
        self.replica = uuid.uuid4().hex
        self._lease_ms = lease_ms
        self._keys = [PREFIX + b"space:used", PREFIX + b"space:reserved", PREFIX + b"space:leases"]
        self._reserve: Any = commands.register_script(RESERVE)
        self._adjust: Any = commands.register_script(ADJUST)

    async def reserve(self, size: int, quota: int, measured_used: int | None) -> tuple[bool, int, int]:
        measured = "" if measured_used is None else str(measured_used)
        reply = await self._reserve(self._keys, [self.replica, self._lease_ms, size, quota, measured])
        if reply[0] == b"unknown":
            raise SpaceUnknownError("the shared count of used bytes is not known")
        return reply[0] == b"ok", int(reply[1]), int(reply[2])

    async def adjust(self, used: int, reserved: int) -> None:
        await self._adjust(self._keys, [self.replica, self._lease_ms, used, reserved])
