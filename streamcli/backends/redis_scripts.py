"""The Lua scripts of the Redis log (``backends/redis_log.py``): what must be atomic across replicas.

Redis runs a script as one step: no other client's command runs in between. So the id counter, the
conditional check, the producers' sequences and the ``XADD`` of an append are one step, and two
replicas appending to the same log can never interleave. Ids are kept as Lua numbers (doubles): exact
below 2**53, which no log reaches (a million appends a second for 285 years).

Keys of a log S (the prefix is ``streamcli:``): ``log:S`` the Redis Stream (entry id ``N-0`` for record
N; fields ``t`` time, ``k`` key, ``c`` kind, ``p`` payload), ``head:S`` a hash (``last_id``, ``last_ts``,
``trimmed_through``), ``producers:S`` a hash (producer -> "last_sequence first_id last_id updated_at"),
and ``streams``, a sorted set of every log's name (for ``heads``).
"""

from __future__ import annotations

#: Helpers every script that needs them starts with.
_COMMON = """
local function fmt(n) return string.format('%d', n) end
local function entry_id(n) return fmt(n) .. '-0' end
-- The time of record ``id`` of the log (it exists: ids between the trim point and the last are all there).
local function time_of(log, id)
  local found = redis.call('XRANGE', log, entry_id(id), entry_id(id))
  return tonumber(found[1][2][2])
end
-- The newest id in (lo, hi] whose time is before ``t`` (times never decrease along ids), else ``lo``.
local function newest_before(log, lo, hi, t)
  local answer = lo
  local low, high = lo + 1, hi
  while low <= high do
    local mid = math.floor((low + high) / 2)
    if time_of(log, mid) < t then
      answer = mid
      low = mid + 1
    else
      high = mid - 1
    end
  end
  return answer
end
"""

#: KEYS: log, head, producers, streams. ARGV: stream name, if_last_id ('' = none), record count, then
#: per record: key, kind, payload, producer ('' = none), sequence.
#: Returns {'ok', time, last id before, index of each record kept...} | {'condition', last id} |
#: {'gap', index, producer, sequence, expected}.
APPEND = (
    _COMMON
    + """
local head = redis.call('HMGET', KEYS[2], 'last_id', 'last_ts')
local last_id = tonumber(head[1] or '0')
local last_ts = tonumber(head[2] or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= last_id then
  return {'condition', fmt(last_id)}
end
local count = tonumber(ARGV[3])
local states = {}
local kept = {}
for i = 0, count - 1 do
  local base = 4 + i * 5
  local producer = ARGV[base + 3]
  local keep = true
  if producer ~= '' then
    local sequence = tonumber(ARGV[base + 4])
    local state = states[producer]
    if state == nil then
      local saved = redis.call('HGET', KEYS[3], producer)
      if saved then
        local a, b, c = string.match(saved, '^(%d+) (%d+) (%d+)')
        state = {tonumber(a), tonumber(b), tonumber(c)}
      else
        state = {0, 0, 0}
      end
      states[producer] = state
    end
    if sequence <= state[1] then
      keep = false
    elseif sequence ~= state[1] + 1 then
      return {'gap', fmt(i), producer, ARGV[base + 4], fmt(state[1] + 1)}
    else
      state[1] = sequence
    end
  end
  if keep then
    kept[#kept + 1] = i
  end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local ts = string.format('%.6f', math.max(now, last_ts))
local reply = {'ok', ts, fmt(last_id)}
local id = last_id
for _, i in ipairs(kept) do
  local base = 4 + i * 5
  id = id + 1
  redis.call('XADD', KEYS[1], entry_id(id), 't', ts, 'k', ARGV[base], 'c', ARGV[base + 1], 'p', ARGV[base + 2])
  local producer = ARGV[base + 3]
  if producer ~= '' then
    local state = states[producer]
    if state[2] == 0 then state[2] = id end
    state[3] = id
  end
  reply[#reply + 1] = fmt(i)
end
if #kept > 0 then
  redis.call('HSET', KEYS[2], 'last_id', fmt(id), 'last_ts', ts)
  redis.call('ZADD', KEYS[4], 0, ARGV[1])
end
local updated = string.format('%.6f', now)
for producer, state in pairs(states) do
  redis.call('HSET', KEYS[3], producer, fmt(state[1]) .. ' ' .. fmt(state[2]) .. ' ' .. fmt(state[3]) .. ' ' .. updated)
end
return reply
"""
)

#: KEYS: log, head. ARGV: a time (seconds since the epoch). Returns the id after which records appended
#: at or after the time start.
POSITION_BEFORE = (
    _COMMON
    + """
local head = redis.call('HMGET', KEYS[2], 'last_id', 'trimmed_through')
local last_id = tonumber(head[1] or '0')
local trimmed = tonumber(head[2] or '0')
return fmt(newest_before(KEYS[1], trimmed, last_id, tonumber(ARGV[1])))
"""
)

#: KEYS: log, head. ARGV: older_than ('' = no age rule), keep_last ('' = no count rule).
#: Returns the number of records removed.
TRIM = (
    _COMMON
    + """
local head = redis.call('HMGET', KEYS[2], 'last_id', 'trimmed_through')
if not head[1] then
  return 0
end
local last_id = tonumber(head[1])
local trimmed = tonumber(head[2] or '0')
local cut = trimmed
if ARGV[2] ~= '' then
  cut = math.max(cut, last_id - tonumber(ARGV[2]))
end
if ARGV[1] ~= '' then
  cut = math.max(cut, newest_before(KEYS[1], trimmed, last_id, tonumber(ARGV[1])))
end
if cut == trimmed then
  return 0
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', entry_id(cut + 1))
redis.call('HSET', KEYS[2], 'trimmed_through', fmt(cut))
return removed
"""
)

#: KEYS: producers. ARGV: idle_since. Forgets the producers last updated before it; returns how many.
FORGET_PRODUCERS = """
local saved = redis.call('HGETALL', KEYS[1])
local forgotten = 0
for i = 1, #saved, 2 do
  local updated = tonumber(string.match(saved[i + 1], ' ([^ ]+)$'))
  if updated < tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], saved[i])
    forgotten = forgotten + 1
  end
end
return forgotten
"""

# --- presence (backends/redis_ephemeral.py) ---------------------------------------------------------------
#
# A scope S is the sorted set ``presence:S`` (member -> when its latest lease expires, ms of Redis's clock);
# each member M of it the sorted set ``lease:S\0M`` (holder -> when that lease expires). Both keys expire
# with their latest lease, so what a replica that died held is gone by itself. Redis's clock (``TIME``)
# is the only clock: replicas' clocks may disagree.

_PRESENCE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- The member's entry in its scope follows its latest lease; it goes with its last.
local function settle(members, holders, member)
  local latest = redis.call('ZRANGE', holders, -1, -1, 'WITHSCORES')
  if latest[1] == nil then
    redis.call('ZREM', members, member)
    return
  end
  local expiry = tonumber(latest[2])
  redis.call('ZADD', members, expiry, member)
  redis.call('PEXPIREAT', holders, expiry)
  if redis.call('PEXPIRETIME', members) < expiry then
    redis.call('PEXPIREAT', members, expiry)
  end
end
"""

#: KEYS: presence:S, lease:S\0M. ARGV: member, holder, lease (ms), exclusive ('1' or '').
#: Returns 1 when the lease is held, 0 when refused (exclusive, and the member has a live lease).
JOIN = (
    _PRESENCE
    + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if ARGV[4] == '1' and redis.call('ZCARD', KEYS[2]) > 0 then
  return 0
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
settle(KEYS[1], KEYS[2], ARGV[1])
return 1
"""
)

#: KEYS: per lease presence:S, lease:S\0M. ARGV: lease (ms), then per lease: member, holder, exclusive.
#: Extends each lease; one that expired is taken again unless exclusive and held by another meanwhile:
#: returns the (1-based) numbers of those, lost.
RENEW = (
    _PRESENCE
    + """
local now = now_ms()
local lease = tonumber(ARGV[1])
local lost = {}
for i = 0, #KEYS / 2 - 1 do
  local members, holders = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local member, holder, exclusive = ARGV[3 * i + 2], ARGV[3 * i + 3], ARGV[3 * i + 4]
  redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
  if exclusive == '1' and not redis.call('ZSCORE', holders, holder) and redis.call('ZCARD', holders) > 0 then
    lost[#lost + 1] = i + 1
  else
    redis.call('ZADD', holders, now + lease, holder)
    settle(members, holders, member)
  end
end
return lost
"""
)

#: KEYS: presence:S, lease:S\0M. ARGV: member, holder. Gives the lease up.
LEAVE = (
    _PRESENCE
    + """
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms())
settle(KEYS[1], KEYS[2], ARGV[1])
return 1
"""
)

#: KEYS: presence:S. Returns the members with a live lease (those whose leases all expired are removed).
MEMBERS = (
    _PRESENCE
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)
