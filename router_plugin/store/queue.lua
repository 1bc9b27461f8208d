-- The waiting line of one model group: who may try to reserve next. Time is Redis TIME.
--
-- KEYS[1]  the line: a sorted set of tickets scored  priority * 2^40 + arrival number  (lowest first: priority
--          order, then first come first served across every worker)
-- KEYS[2]  the heartbeats: a sorted set of the same tickets scored by when each one dies (ms) unless renewed
-- KEYS[3]  the arrival counter (INCR)
-- A ticket's wake key is  ARGV[7] .. ticket  (same hash tag, so one slot): a list the script pushes one token to
-- when that ticket becomes one of the first `heads` of the line; its waiter BLPOPs it (no polling).
--
-- ARGV[1]  op: "join" | "beat" | "leave" | "ahead"
-- ARGV[2]  ticket id
-- ARGV[3]  priority (0 .. 4095)
-- ARGV[4]  ticket ttl, ms: a ticket not renewed within it is dropped (a dead worker cannot block the line)
-- ARGV[5]  most waiters in this line (join refuses past it)
-- ARGV[6]  heads: how many of the first tickets may try to reserve at once
-- ARGV[7]  wake key prefix
--
-- Reply: join / beat: {rank (0 = head; -1 = line full, -2 = ticket unknown: it died), waiting, heads}
--        ahead      : {tickets ahead of a newcomer of this priority, waiting}
--        leave      : {0, waiting}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, ticket, prio = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ttl, most, heads, wake = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local SPAN = 1099511627776  -- 2^40 arrivals per priority

local function wake_heads()
  local first = redis.call('ZRANGE', KEYS[1], 0, heads - 1)
  for _, id in ipairs(first) do
    local key = wake .. id
    redis.call('DEL', key)
    redis.call('RPUSH', key, '1')
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Drop dead tickets first; if one of them was a head, the tickets behind it move up: wake them.
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #dead > 0 then
  local head_died = false
  for _, id in ipairs(dead) do
    local rank = redis.call('ZRANK', KEYS[1], id)
    if rank and rank < heads then head_died = true end
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('DEL', wake .. id)
  end
  if head_died then wake_heads() end
end

local function keep()
  local keep_ms = ttl * 2 + 60000
  redis.call('PEXPIRE', KEYS[1], keep_ms)
  redis.call('PEXPIRE', KEYS[2], keep_ms)
  redis.call('PEXPIRE', KEYS[3], 86400000)
end

if op == 'ahead' then
  return {redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ((prio + 1) * SPAN)), redis.call('ZCARD', KEYS[1])}
end

if op == 'leave' then
  local rank = redis.call('ZRANK', KEYS[1], ticket)
  redis.call('ZREM', KEYS[1], ticket)
  redis.call('ZREM', KEYS[2], ticket)
  redis.call('DEL', wake .. ticket)
  if rank and rank < heads then wake_heads() end
  return {0, redis.call('ZCARD', KEYS[1])}
end

if op == 'join' then
  local waiting = redis.call('ZCARD', KEYS[1])
  if waiting >= most then return {-1, waiting, heads} end
  local n = redis.call('INCR', KEYS[3])
  redis.call('ZADD', KEYS[1], prio * SPAN + (n % SPAN), ticket)
  redis.call('ZADD', KEYS[2], now + ttl, ticket)
  keep()
  local rank = redis.call('ZRANK', KEYS[1], ticket)
  -- A newcomer ahead of heads that are already trying pushes the last of them out of the head set: it will
  -- notice at its next beat or try (its reservation walk is not undone; at most `heads` + 1 try at once).
  return {rank, waiting + 1, heads}
end

-- beat
local rank = redis.call('ZRANK', KEYS[1], ticket)
if not rank then return {-2, redis.call('ZCARD', KEYS[1]), heads} end
redis.call('ZADD', KEYS[2], now + ttl, ticket)
keep()
return {rank, redis.call('ZCARD', KEYS[1]), heads}
