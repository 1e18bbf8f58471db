"""The housekeeping script: what a Redis group member does besides reading and settling.

One script at most every quarter lease, riding on a member's fetches: it
keeps alive what the member holds, moves due retries to the group's retry
stream, takes over what members that stopped calling held past the lease
(and what the member's own name held before it), and forgets members long
gone. :func:`took_over` puts whom a takeover came from into words.
"""

from __future__ import annotations

from typing import Any

from millstream.brokers.redis.scripts import PRELUDE, Script

__all__ = ["HOUSEKEEP", "took_over"]

HOUSEKEEP = Script(
    PRELUDE
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


def took_over(owners: list[list[Any]]) -> tuple[int, str]:
    """How many messages a takeover took, and from whom (the script's ``owners``)."""
    held = [(name.decode(errors="backslashreplace"), n, idle / 1000) for name, n, idle in owners]
    count = sum(n for _, n, _ in held)
    if len(held) == 1:
        name, _, idle = held[0]
        return count, f"{name}, which stopped calling {_seconds(idle)} ago"
    whom = ", ".join(
        f"{name} ({n}, stopped calling {_seconds(idle)} ago)" for name, n, idle in held
    )
    return count, whom


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 100 else f"{seconds:.0f}s"
