-- Reserve every counter a deployment needs, all or none, in one round trip. Time is Redis TIME.
--
-- KEYS[1]       the model's cooldown hash (fields: until, why)
-- KEYS[2..n+1]  one hash per counter (fields: at, used, spill, until, why)
--                 fixed window : at = window index (now_ms // window_ms), used = units in that window,
--                                spill = units reserved so close to the window's end that they may reach the
--                                provider in the next window: they are counted in both
--                 refill bucket: at = ms of last update, used = level (drains capacity/window per ms)
--                 until/why    = the counter is blocked (the provider said so) until that ms
-- ARGV[1]       n counters
-- ARGV[2]       "0" = reserve; "1" = dry run (report, write nothing); "2" = dry run that ignores the model's
--               cooldown (report the pool's counters even while the model is set aside)
-- ARGV[3]       arrival margin, ms: how much later than its reservation a request may reach the provider.
--               A refill bucket only credits drain that is older than the margin; see README "Zero 429s".
-- ARGV[4..]     per counter: kind ("f" | "r"), capacity, window_ms, cost
--
-- Reply, reserved: {1, now_ms, remaining_1, reset_ms_1, remaining_2, reset_ms_2, ..., strikes}
--                  strikes = the model's recent failures (its cooldown hash outlives the cooldown): a success
--                  then clears them (circuit.py); 0 = nothing to clear, no extra round trip
--        blocked : {0, now_ms, index (0 = model cooldown, i = counter i), until_ms (-1 = can never fit), why}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dry = ARGV[2] ~= '0'
local margin = tonumber(ARGV[3])

local strikes = 0
if ARGV[2] ~= '2' then
  local cool = redis.call('HMGET', KEYS[1], 'until', 'why', 'strikes')
  local cool_until = tonumber(cool[1])
  if cool_until and cool_until > now then
    return {0, now, 0, cool_until, cool[2] or 'cooling down'}
  end
  strikes = tonumber(cool[3]) or 0
end

local n = tonumber(ARGV[1])
local writes = {}
local reply = {1, now}
local blocked_i, blocked_until, blocked_why = nil, 0, ''

for i = 1, n do
  local base = 4 + (i - 1) * 4
  local kind, cap, win, cost = ARGV[base], tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local h = redis.call('HMGET', KEYS[i + 1], 'at', 'used', 'spill', 'until', 'why')
  local at, used, spill, held = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4])
  local until_ms, why, reset, left = nil, nil, nil, 0
  if kind == 'f' then
    local w = math.floor(now / win)
    if at == w - 1 then used, spill = spill, 0 elseif at ~= w then used, spill = 0, 0 end
    reset = (w + 1) * win
    if used + cost > cap then until_ms, why = reset, 'full' end
    if reset - now < margin then spill = spill + cost end
    writes[i] = {w, used + cost, spill, reset}
    left = cap - used - cost
  else
    local level, checked = 0, 0
    if at then
      local elapsed = now - at
      level = used - elapsed * cap / win
      if level < 0 then level = 0 end
      local credited = elapsed - margin
      if credited < 0 then credited = 0 end
      checked = used - credited * cap / win
      if checked < 0 then checked = 0 end
    end
    if cost > cap then
      until_ms, why = -1, 'too large'
    elseif checked + cost > cap then
      until_ms, why = at + margin + math.ceil((used + cost - cap) * win / cap), 'full'
      if until_ms <= now then until_ms = now + 1 end
    end
    reset = now + math.ceil((level + cost) * win / cap)
    writes[i] = {now, level + cost, 0, now + win}
    left = cap - checked - cost
  end
  if held and held > now and until_ms ~= -1 and (until_ms == nil or held > until_ms) then
    until_ms, why = held, h[5] or 'exhausted'
  end
  if until_ms ~= nil then
    if until_ms == -1 then
      return {0, now, i, -1, 'request larger than the whole limit'}
    end
    if until_ms > blocked_until then blocked_i, blocked_until, blocked_why = i, until_ms, why end
  end
  if left < 0 then left = 0 end
  reply[#reply + 1] = math.floor(left)
  reply[#reply + 1] = reset
end

if blocked_i then
  return {0, now, blocked_i, blocked_until, blocked_why}
end
if not dry then
  for i = 1, n do
    local key, wr = KEYS[i + 1], writes[i]
    redis.call('HSET', key, 'at', string.format('%.17g', wr[1]), 'used', string.format('%.17g', wr[2]),
               'spill', string.format('%.17g', wr[3]))
    local ttl = redis.call('PTTL', key)
    local keep_until = wr[4]
    if wr[3] > 0 then keep_until = keep_until + tonumber(ARGV[4 + (i - 1) * 4 + 2]) end  -- spill is read next window
    keep_until = keep_until + 1000
    if ttl < 0 or now + ttl < keep_until then redis.call('PEXPIREAT', key, keep_until) end
  end
end
reply[#reply + 1] = strikes
return reply
