-- Block a counter, or cool down / quarantine a model, for every worker. Never shortens an existing block.
--
-- KEYS[1]  a counter hash or a model cooldown hash (fields: until, why, strikes)
-- ARGV[1]  until_ms  absolute end (from the provider's reset), or 0 to use ARGV[2]
-- ARGV[2]  base_ms   relative duration from Redis TIME
-- ARGV[3]  "1" = escalate: each strike within the cooldown's life doubles base_ms, up to ARGV[4]
-- ARGV[4]  max_ms
-- ARGV[5]  why       human-readable reason (never a secret)
-- Reply: {until_ms, strikes}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'until', 'strikes')
local old_until, strikes = tonumber(h[1]) or 0, tonumber(h[2]) or 0
local until_ms = tonumber(ARGV[1])
if until_ms == nil or until_ms <= 0 then
  local dur = tonumber(ARGV[2])
  if ARGV[3] == '1' then
    dur = dur * (2 ^ strikes)
    if dur > tonumber(ARGV[4]) then dur = tonumber(ARGV[4]) end
  end
  until_ms = now + dur
end
strikes = strikes + 1
if old_until > until_ms then
  until_ms = old_until
else
  redis.call('HSET', KEYS[1], 'until', string.format('%.17g', until_ms), 'why', ARGV[5])
end
redis.call('HSET', KEYS[1], 'strikes', strikes)
-- Keep the strike memory a while after the block ends, so a model that fails again escalates.
local keep_until = until_ms + math.max(tonumber(ARGV[4]), 60000)
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or now + ttl < keep_until then redis.call('PEXPIREAT', KEYS[1], keep_until) end
return {until_ms, strikes}
