"""The Lua scripts of the Redis broker: every change that touches several keys at once.

Each runs atomically on the server in one round trip, so a retry is never
both acknowledged and lost, a release never both re-added and still
pending, and a claim never races another member's. Keys are passed as
``KEYS`` (see :mod:`millstream.brokers.redis.wire` for the layout), so the
scripts also name every key they touch.
"""

from __future__ import annotations

from millstream.brokers.redis.connection import Script

__all__ = ["ENSURE", "HOUSEKEEP", "LAG", "PURGE_ALL", "RELEASE", "REPLAY", "SETTLE", "TRIM"]

_PRELUDE = """
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

HOUSEKEEP = Script(
    _PRELUDE
    + """
-- KEYS: topic, retry, delayed.
-- ARGV: group, consumer, lease ms, refresh-idle ms, claim count, topic cursor,
--       retry cursor, move limit, prune-idle ms (0: none), take back (1: what
--       the consumer's name holds that this member does not know), then how
--       many ids of each list follow: held topic, held retry, unseen topic; then
--       the ids: what the member holds (topic, retry), then what its name was
--       delivered but never handed out (topic, retry; the rest of ARGV).
local group, me = ARGV[1], ARGV[2]
local lease, want = tonumber(ARGV[3]), tonumber(ARGV[5])
local now = now_ms()
local spans, at = {}, 14
for i = 1, 3 do
  spans[i] = {at, at + tonumber(ARGV[10 + i]) - 1}
  at = at + tonumber(ARGV[10 + i])
end
spans[4] = {at, #ARGV}

local function set_of(span)
  local found = {}
  for j = span[1], span[2] do found[ARGV[j]] = true end
  return found
end

-- name -> {pending, idle ms} of the group's consumers on one stream.
local function consumers(stream)
  local found = {}
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
    found[field(c, 'name')] = {field(c, 'pending'), field(c, 'idle')}
  end
  return found
end

local claimed = {}
local owners, owner_at = {}, {}  -- name, how many, idle ms: whom claimed entries came from
local function took(name, count, idle)
  local k = owner_at[name]
  if k == nil then
    owners[#owners + 1] = {name, 0, idle}
    k = #owners
    owner_at[name] = k
  end
  owners[k][2] = owners[k][2] + count
  owners[k][3] = math.max(owners[k][3], idle)
end

-- 0. A member back under the name of one that stopped (crashed, or lost its
-- connection without releasing) takes back at once what that one held. A
-- delivery it handed out counts as an attempt; one it only buffered does not.
local more = 0
if ARGV[10] == '1' then
  for i = 1, 2 do
    local room = want - #claimed
    if room <= 0 then
      more = 1
    else
      local known, unseen = set_of(spans[i]), set_of(spans[i + 2])
      local idle = (consumers(KEYS[i])[me] or {0, 0})[2]
      local limit = spans[i][2] - spans[i][1] + 1 + room
      local again, kept, deliveries = {}, {}, {}
      for _, p in ipairs(redis.call('XPENDING', KEYS[i], group, '-', '+', limit, me)) do
        if not known[p[1]] and #again + #kept < room then
          deliveries[p[1]] = p[4]
          if unseen[p[1]] then kept[#kept + 1] = p[1] else again[#again + 1] = p[1] end
        end
      end
      if #again + #kept >= room then more = 1 end
      local entries = {}
      for s = 1, #again, 1000 do
        local args = {'XCLAIM', KEYS[i], group, me, 0}
        for j = s, math.min(s + 999, #again) do
          args[#args + 1] = again[j]
          deliveries[again[j]] = deliveries[again[j]] + 1
        end
        for _, e in ipairs(redis.call(unpack(args))) do entries[#entries + 1] = e end
      end
      for _, id in ipairs(kept) do
        local reply = redis.call(
          'XCLAIM', KEYS[i], group, me, 0, id, 'RETRYCOUNT', deliveries[id])
        for _, e in ipairs(reply) do entries[#entries + 1] = e end
      end
      for _, e in ipairs(entries) do
        if type(e[2]) == 'table' then
          claimed[#claimed + 1] = {i - 1, e[1], e[2], deliveries[e[1]]}
        end
      end
      if #entries > 0 then took(me, #entries, idle) end
    end
  end
end

-- 1. Still alive: reset the idle time of what this member holds, so no one
-- takes it over. Only what it knows it holds and Redis still says is its own:
-- an entry another member took over stays taken, and one whose delivery this
-- member never saw (a reply lost on the way) runs out and is taken over.
for i = 1, 2 do
  local first, last = spans[i][1], spans[i][2]
  if first <= last then
    local known = set_of(spans[i])
    local limit = last - first + 10001  -- room for what it holds unknowingly, too
    local own = redis.call('XPENDING', KEYS[i], group, 'IDLE', ARGV[4], '-', '+', limit, me)
    local ids = {}
    for _, p in ipairs(own) do
      if known[p[1]] then ids[#ids + 1] = p[1] end
    end
    for s = 1, #ids, 1000 do
      local args = {'XCLAIM', KEYS[i], group, me, 0}
      for j = s, math.min(s + 999, #ids) do args[#args + 1] = ids[j] end
      args[#args + 1] = 'JUSTID'
      redis.call(unpack(args))
    end
  end
end

-- 2. Retries whose time has come go to the group's retry stream, ready to read.
local moved = 0
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[8]))
for _, packed in ipairs(due) do
  local item = cmsgpack.unpack(packed)
  table.remove(item, 1)  -- the token that kept the member unique
  xadd(KEYS[2], item, {})
  redis.call('ZREM', KEYS[3], packed)
  moved = moved + 1
end

-- 3. Take over what members that stopped calling have held longer than the
-- lease, and tell whom it came from: members whose pending entries dropped and
-- that have not called for half a lease (a live one calls every quarter lease
-- at most; an idle entry of a live member is a delivery it never saw, not a
-- takeover).
local cursors = {ARGV[6], ARGV[7]}
for i = 1, 2 do
  if #claimed < want then
    local before = consumers(KEYS[i])
    local reply = redis.call(
      'XAUTOCLAIM', KEYS[i], group, me, lease, cursors[i], 'COUNT', want - #claimed)
    cursors[i] = reply[1]
    local got = 0
    for _, e in ipairs(reply[2]) do
      if type(e[2]) == 'table' then
        local p = redis.call('XPENDING', KEYS[i], group, e[1], e[1], 1)
        claimed[#claimed + 1] = {i - 1, e[1], e[2], p[1][4]}
        got = got + 1
      end
    end
    if got > 0 then
      local after = consumers(KEYS[i])
      for name, was in pairs(before) do
        local left = (after[name] or {0})[1]
        if name ~= me and was[2] >= lease / 2 and was[1] > left then
          took(name, was[1] - left, was[2])
        end
      end
    end
  end
end

-- 4. Forget members long gone that hold nothing (crashed processes leave them).
local prune = tonumber(ARGV[9])
if prune > 0 then
  for i = 1, 2 do
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[i], group)) do
      local name = field(c, 'name')
      if name ~= me and field(c, 'pending') == 0 and field(c, 'idle') > prune then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[i], group, name)
      end
    end
  end
end

local head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local next_due = -1
if #head > 0 then next_due = math.max(0, tonumber(head[2]) - now) end
return {cursors[1], cursors[2], claimed, next_due, moved, owners, more}
"""
)

TRIM = Script(
    _PRELUDE
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
    _PRELUDE
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
    _PRELUDE
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
    _PRELUDE
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
    _PRELUDE
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
