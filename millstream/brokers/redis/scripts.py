"""The Lua scripts of the Redis broker: every change that touches several keys at once.

Each runs atomically on the server in one round trip, so a retry is never
both acknowledged and lost, a release never both re-added and still
pending, and a claim never races another member's. Keys are passed as
``KEYS`` (see :mod:`millstream.brokers.redis.wire` for the layout), so the
scripts also name every key they touch. The longest, what a member runs with
its fetches, is in :mod:`millstream.brokers.redis.housekeeping`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from millstream.brokers.redis.connection import Arg, RedisConnection, execute
from millstream.brokers.redis.wire import Keys

__all__ = [
    "ENSURE",
    "LAG",
    "PRELUDE",
    "PURGE_ALL",
    "RELEASE",
    "REPLAY",
    "SETTLE",
    "TRIM",
    "Script",
    "ensure_group",
]


class Script:
    """A Lua script run by its SHA1, loaded on the server the first time it is missing.

    Scripts are how several keys change together atomically in one round
    trip; the server forgets them on restart, which the NOSCRIPT retry covers.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Redis, keys: Sequence[bytes], args: Sequence[Arg]) -> Any:
        try:
            return await execute(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            await execute(client, "SCRIPT", "LOAD", self.source)
            return await execute(client, "EVALSHA", self.sha, len(keys), *keys, *args)


async def ensure_group(connection: RedisConnection, keys: Keys) -> None:
    """Create the group on the topic and its retry stream, from id 0, unless it exists."""
    await connection.call(lambda c: ENSURE(c, [keys.stream, keys.retry], [keys.group]))


PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t
end

-- An entry's message fields: without the bookkeeping that describes one delivery.
-- An entry another tool wrote has no id: the message's id is then the entry's
-- (entry_id), and it goes along as 'id' so the copy keeps it.
local function message_fields(f, entry_id)
  local out = {}
  local has_id = false
  for j = 1, #f, 2 do
    local name = f[j]
    if name ~= 'attempts' and name ~= 'error' and name ~= 'failed_at' then
      out[#out + 1] = name
      out[#out + 1] = f[j + 1]
      if name == 'id' then has_id = true end
    end
  end
  if not has_id and entry_id then
    table.insert(out, 1, entry_id)
    table.insert(out, 1, 'id')
  end
  return out
end

-- Deliveries before this entry; 0 when another tool wrote something else there.
local function attempts_of(f)
  for j = 1, #f, 2 do
    if f[j] == 'attempts' then
      local n = tonumber(f[j + 1])
      if n and n == math.floor(n) then return n end
      return 0
    end
  end
  return 0
end

local function entry(stream, id)
  local found = redis.call('XRANGE', stream, id, id)
  if #found == 0 then return nil end
  return found[1][2]
end

local function xadd(stream, fields, extra)
  local args = {'XADD', stream, '*'}
  for j = 1, #fields do args[#args + 1] = fields[j] end
  for j = 1, #extra do args[#args + 1] = extra[j] end
  return redis.call(unpack(args))
end

local function field(pairs_list, name)
  for j = 1, #pairs_list, 2 do
    if pairs_list[j] == name then return pairs_list[j + 1] end
  end
  return nil
end
"""

ENSURE = Script(
    """
-- KEYS: topic, retry. ARGV: group.
-- From id 0: a backlog published before the first consumer started is delivered.
for i = 1, 2 do
  local reply = redis.pcall('XGROUP', 'CREATE', KEYS[i], ARGV[1], '0', 'MKSTREAM')
  if type(reply) == 'table' and reply.err and not string.find(reply.err, 'BUSYGROUP', 1, true) then
    return redis.error_reply(reply.err)
  end
end
return 1
"""
)

TRIM = Script(
    PRELUDE
    + """
-- KEYS: topic. Trim it below what every group still needs: its oldest pending
-- entry, and everything after its last delivered one, so no group loses an
-- entry it has not acked. Approximate (~): only whole nodes go, which is cheap.
-- A topic without groups keeps everything: the first group will want it.
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return tonumber(am) < tonumber(bm) end
  return tonumber(as) < tonumber(bs)
end
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) ~= 'table' or groups.err then return 0 end
local floor = nil
for _, g in ipairs(groups) do
  local keep = field(g, 'last-delivered-id')
  if field(g, 'pending') > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], field(g, 'name'))[2]
    if id_less(oldest, keep) then keep = oldest end
  end
  if floor == nil or id_less(keep, floor) then floor = keep end
end
if floor == nil then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', floor)
"""
)

SETTLE = Script(
    PRELUDE
    + """
-- KEYS: topic, retry, delayed, dlq.
-- ARGV: group, then per outcome: kind (a ack, r retry, d dead), source (0 topic,
--       1 retry), entry id, attempt of the delivery, delay ms (r) or reason (d).
-- An outcome applies only if this acknowledges the entry: a member whose
-- message was claimed by another after the lease cannot retry it twice.
local group = ARGV[1]
local now, t = now_ms()
local failed_at = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local applied = 0
for i = 2, #ARGV, 5 do
  local kind, source, id, attempt = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local stream = KEYS[1]
  if source == '1' then stream = KEYS[2] end
  local f = nil
  if kind ~= 'a' then f = entry(stream, id) end
  if redis.call('XACK', stream, group, id) == 1 then
    applied = applied + 1
    if f ~= nil and kind == 'r' then
      local item = message_fields(f, id)
      table.insert(item, 1, source .. ':' .. id)
      item[#item + 1] = 'attempts'
      item[#item + 1] = attempt
      redis.call('ZADD', KEYS[3], now + tonumber(ARGV[i + 4]), cmsgpack.pack(item))
    elseif f ~= nil and kind == 'd' then
      xadd(KEYS[4], message_fields(f, id),
        {'attempts', attempt, 'error', ARGV[i + 4], 'failed_at', failed_at})
    end
    if source == '1' then redis.call('XDEL', KEYS[2], id) end
  end
end
return applied
"""
)

RELEASE = Script(
    PRELUDE
    + """
-- KEYS: topic, retry. ARGV: group, consumer.
-- Everything the member holds (fetched or not yet handed out, even a reply it
-- never got) goes back to the group's retry stream, ready at once, with the
-- attempt not counted; then the member is removed.
local group, me = ARGV[1], ARGV[2]
local released = 0
for i = 1, 2 do
  while true do
    local held = redis.pcall('XPENDING', KEYS[i], group, '-', '+', 1000, me)
    if type(held) ~= 'table' or held.err or #held == 0 then break end
    for _, p in ipairs(held) do
      local id, deliveries = p[1], p[4]
      local f = entry(KEYS[i], id)
      if f ~= nil then
        xadd(KEYS[2], message_fields(f, id), {'attempts', attempts_of(f) + deliveries - 1})
      end
      redis.call('XACK', KEYS[i], group, id)
      if i == 2 then redis.call('XDEL', KEYS[2], id) end
      released = released + 1
    end
  end
  redis.pcall('XGROUP', 'DELCONSUMER', KEYS[i], group, me)
end
return released
"""
)

LAG = Script(
    PRELUDE
    + """
-- KEYS: topic, retry, delayed. ARGV: group.
-- Not yet acked: undelivered and pending in the topic, everything in the retry
-- stream (settled entries are deleted from it) and every delayed retry.
-- -1 when Redis cannot tell (no such group, or no lag before Redis 7).
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) ~= 'table' or groups.err then return -1 end
for _, g in ipairs(groups) do
  if field(g, 'name') == ARGV[1] then
    local lag = field(g, 'lag')
    if not lag then return -1 end
    return lag + field(g, 'pending') + redis.call('XLEN', KEYS[2]) + redis.call('ZCARD', KEYS[3])
  end
end
return -1
"""
)

REPLAY = Script(
    PRELUDE
    + """
-- KEYS: dlq, retry. ARGV: limit (oldest LIMIT letters) or 0 and then letter ids.
-- A replayed message is a fresh delivery: attempts start again.
local letters = {}
local limit = tonumber(ARGV[1])
if limit > 0 then
  letters = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', limit)
else
  for i = 2, #ARGV do
    local f = entry(KEYS[1], ARGV[i])
    if f ~= nil then letters[#letters + 1] = {ARGV[i], f} end
  end
end
for _, letter in ipairs(letters) do
  xadd(KEYS[2], message_fields(letter[2]), {'attempts', 0})
  redis.call('XDEL', KEYS[1], letter[1])
end
return #letters
"""
)

PURGE_ALL = Script(
    """
-- KEYS: dlq. How many letters there were, and none after.
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
"""
)
