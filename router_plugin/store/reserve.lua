-- Reserve the first candidate of a chain that fits: every counter it needs, all or none, in one round trip.
-- Time is Redis TIME. Candidates are tried in order; the first that fits is reserved and named, and when none
-- fits every candidate's reason is answered with its reset. One call per routing decision, whatever the chain.
--
-- KEYS          per candidate, in order: its model's cooldown hash (fields: until, why, strikes), then one hash
--               per counter (fields: at, used, spill, until, why)
--                 fixed window : at = window index (now_ms // window_ms), used = units in that window,
--                                spill = units reserved so close to the window's end that they may reach the
--                                provider in the next window: they are counted in both
--                 refill bucket: at = ms of last update, used = level (drains capacity/window per ms),
--                                spill = "credit start" q: drain older than max(q, now - margin) is not
--                                credited to the admission check (see the arrival margin below)
--                 until/why    = the counter is blocked (the provider said so) until that ms
-- ARGV[1]       m candidates
-- ARGV[2]       arrival margin, ms: how much later than its reservation a request may reach the provider.
--               A refill bucket credits no drain of the last `margin` ms; see below and README "Zero 429s".
-- ARGV[3..]     per candidate: mode, n counters, then per counter: kind ("f" | "r"), capacity, window_ms, cost,
--               ceiling (the admission threshold for this request, <= capacity: the check and the wait it
--               reports use it; a refill bucket still drains at capacity/window)
--                 mode "0" = reserve; "1" = dry run (report, write nothing); "2" = dry run that ignores the
--                 model's cooldown (report the pool's counters even while the model is set aside); "3" = report
--                 only: never chosen, its reason is answered when it is blocked (a candidate that fits is
--                 answered as {-1, 0, ''})
--               A candidate with no counters (unmetered) only has its cooldown checked; nothing is written.
--
-- Reply, chosen  : {1, now_ms, c (1-based candidate), strikes, remaining_1, reset_ms_1, remaining_2, ...}
--                  strikes = the model's recent failures (its cooldown hash outlives the cooldown): a success
--                  then clears them (circuit.py); 0 = nothing to clear, no extra round trip
--        none    : {0, now_ms, then per candidate: index (0 = model cooldown, i = counter i), until_ms
--                  (-1 = can never fit), why}; why "ceiling": refused under a ceiling below the capacity
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = tonumber(ARGV[1])
local margin = tonumber(ARGV[2])
-- Refill levels are sums of floating-point drains that cancel exactly in arithmetic but not always in doubles
-- (29 admitted may read 29.000000000000007): compare and report with this tolerance, in units of the limit.
local EPS = 1e-6

-- One candidate: its model key is KEYS[k], its counter count ARGV[a]. Returns the blocked reason {i, until, why},
-- or nil, strikes, {remaining, reset, ...}, writes.
local function try(k, a, mode)
  local strikes = 0
  if mode ~= '2' then
    local cool = redis.call('HMGET', KEYS[k], 'until', 'why', 'strikes')
    local cool_until = tonumber(cool[1])
    if cool_until and cool_until > now then
      return {0, cool_until, cool[2] or 'cooling down'}
    end
    strikes = tonumber(cool[3]) or 0
  end
  local n = tonumber(ARGV[a])
  local writes = {}
  local states = {}
  local blocked_i, blocked_until, blocked_why = nil, 0, ''
  for i = 1, n do
    local base = a + 1 + (i - 1) * 5
    local kind, cap, win, cost = ARGV[base], tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
    local ceil = tonumber(ARGV[base + 4])
    local over = 'full'
    if ceil < cap then over = 'ceiling' end
    local h = redis.call('HMGET', KEYS[k + i], 'at', 'used', 'spill', 'until', 'why')
    local at, used, spill, held = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4])
    local until_ms, why, reset, left = nil, nil, nil, 0
    if kind == 'f' then
      local w = math.floor(now / win)
      if at == w - 1 then used, spill = spill, 0 elseif at ~= w then used, spill = 0, 0 end
      reset = (w + 1) * win
      if used + cost > ceil then until_ms, why = reset, over end
      if reset - now < margin then spill = spill + cost end
      writes[i] = {w, used + cost, spill, reset}
      if spill > 0 then writes[i][4] = reset + win end  -- spill is read next window
      left = cap - used - cost
    else
      -- The arrival margin on a refill bucket. The provider sees each admission up to `margin` ms after we grant
      -- it, so delays in [0, margin] can squeeze every admission of any span of `margin` ms into one instant at the
      -- provider. The provider's level then never exceeds
      --     C(now) = L(now - margin) + (admitted in the last margin ms)
      --            = L(now) + (drain L credited in the last margin ms)
      -- where L is the plain bucket (drain credited whenever it is not empty). We admit only if C(now) + cost <= cap.
      -- "Drain credited in the last margin ms" is bounded with one stored time q (field spill, the "credit start"):
      -- it is at most (now - q) x rate, capped at margin x rate. q starts a busy period: an idle bucket has nothing
      -- to credit back (q = now); a bucket that emptied at e, `gap` ms ago, credited at most min(margin - gap,
      -- e - q_old) ms of drain within the margin. A missing q (0: a key written by adjust.lua) credits the whole
      -- margin: conservative. So after a burst from idle the next admission waits `margin` once; in steady state the
      -- bucket admits at its rate (only its burst room shrinks by margin x rate while it stays busy).
      local level, credit = 0, 0
      if at then
        local elapsed = now - at
        level = used - elapsed * cap / win
        if level > 0 then
          credit = now - spill
        else
          local empty_at = at + used * win / cap
          credit = math.min(margin - (now - empty_at), empty_at - spill)
          level = 0
        end
        if credit > margin then credit = margin end
        if credit < 0 then credit = 0 end
      end
      local checked = level + credit * cap / win
      if cost > cap then
        until_ms, why = -1, 'too large'
      elseif checked + cost > ceil + EPS then
        -- checked stays level + credit until the credit reaches the whole margin, then falls at the rate:
        -- checked + cost reaches the threshold `margin` ms after the plain bucket would admit the request
        until_ms, why = now + margin + math.ceil((level + cost - ceil) * win / cap), over
        if until_ms <= now then until_ms = now + 1 end
      end
      reset = now + math.ceil((level + cost) * win / cap)
      writes[i] = {now, level + cost, now - credit, now + win + margin}
      left = cap - checked - cost
    end
    if held and held > now and until_ms ~= -1 and (until_ms == nil or held > until_ms) then
      until_ms, why = held, h[5] or 'exhausted'
    end
    if until_ms ~= nil then
      if until_ms == -1 then
        return {i, -1, 'request larger than the whole limit'}
      end
      if until_ms > blocked_until then blocked_i, blocked_until, blocked_why = i, until_ms, why end
    end
    if left < 0 then left = 0 end
    states[#states + 1] = math.floor(left + EPS)
    states[#states + 1] = reset
  end
  if blocked_i then
    return {blocked_i, blocked_until, blocked_why}
  end
  return nil, strikes, states, writes
end

local none = {0, now}
local k, a = 1, 3
for c = 1, m do
  local mode, n = ARGV[a], tonumber(ARGV[a + 1])
  local blocked, strikes, states, writes = try(k, a + 1, mode)
  if blocked == nil and mode == '3' then blocked = {-1, 0, ''} end
  if blocked == nil then
    if mode == '0' then
      for i = 1, n do
        local key, wr = KEYS[k + i], writes[i]
        redis.call('HSET', key, 'at', string.format('%.17g', wr[1]), 'used', string.format('%.17g', wr[2]),
                   'spill', string.format('%.17g', wr[3]))
        local ttl = redis.call('PTTL', key)
        local keep_until = wr[4] + 1000
        if ttl < 0 or now + ttl < keep_until then redis.call('PEXPIREAT', key, keep_until) end
      end
    end
    local reply = {1, now, c, strikes}
    for j = 1, #states do reply[#reply + 1] = states[j] end
    return reply
  end
  none[#none + 1] = blocked[1]
  none[#none + 1] = blocked[2]
  none[#none + 1] = blocked[3]
  k = k + 1 + n
  a = a + 2 + 5 * n
end
return none
