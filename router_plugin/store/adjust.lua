-- Adjust counters after a call: settle real tokens, refund, or calibrate from provider headers.
--
-- KEYS[i]   counter hashes (see reserve.lua)
-- ARGV[1]   n
-- ARGV[2..] per counter: kind ("f" | "r"), capacity, window_ms, op, value, window_index
--             op "+" : add value (may be negative: a refund or an over-estimate settled); for a fixed window only
--                      when the counter is still in window_index (the window the reservation was made in)
--             op ">" : raise used to at least value (calibration: the provider saw more use than we counted)
-- A fixed window entered here carries the previous window's spill into used (see reserve.lua); a refill bucket's
-- spill (its credit start for the arrival margin, see reserve.lua) is kept as it is.
-- Reply: {now_ms}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
for i = 1, n do
  local base = 2 + (i - 1) * 6
  local kind, cap, win = ARGV[base], tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local op, value, wanted = ARGV[base + 3], tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5])
  local key = KEYS[i]
  local h = redis.call('HMGET', key, 'at', 'used', 'spill')
  local at, used, spill = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
  local new_at, new_used, keep_until = nil, nil, nil
  if kind == 'f' then
    local w = math.floor(now / win)
    -- entering a new window: carry the previous window's spill, as reserve.lua does
    if at == w - 1 then used, spill = spill, 0 elseif at ~= w then used, spill = 0, 0 end
    if op == '+' then
      if wanted == w then new_used = used + value end
    elseif value > used then
      new_used = value
    end
    new_at, keep_until = w, (w + 1) * win + 1000
  else
    if at then
      used = used - (now - at) * cap / win
      if used < 0 then used = 0 end
    end
    if op == '+' then new_used = used + value elseif value > used then new_used = value end
    new_at, keep_until = now, now + win + 1000
  end
  if new_used ~= nil then
    if new_used < 0 then new_used = 0 end
    redis.call('HSET', key, 'at', string.format('%.17g', new_at), 'used', string.format('%.17g', new_used),
               'spill', string.format('%.17g', spill))
    local ttl = redis.call('PTTL', key)
    if ttl < 0 or now + ttl < keep_until then redis.call('PEXPIREAT', key, keep_until) end
  end
end
return {now}
