-- admit: read the shared state, record the trade if it passes, store the decision - atomically.
-- The pure Python gates decided everything that needs no state (base_ok); this script only
-- applies the two state gates with exactly the comparisons of gates.evaluate:
--   cooldown passes when  max(0, now - last) >= min_hold   (integer ms)
--   rate passes when      count(score > window_start) < max_trades
-- KEYS[1] order dedup key  KEYS[2] last-trade key  KEYS[3] trades ZSET
-- ARGV[1] now_ms  ARGV[2] min_hold_ms  ARGV[3] max_trades  ARGV[4] window_start_ms
-- ARGV[5] base_ok  ARGV[6] state_gated  ARGV[7] is_entry  ARGV[8] ttl_s  ARGV[9] member
-- Reply: {replayed(0|1), "V|now_ms|last_ms|count"} (V = P or H)
local prev = redis.call('GET', KEYS[1])
if prev then
  return {1, prev}
end
local now = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[2])
local count = redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[4], '+inf')
local pass = ARGV[5] == '1'
if pass and ARGV[6] == '1' then
  -- Each worker reads its own clock before the script runs, so a trade recorded a moment
  -- earlier by another worker can carry a later stamp: clamp the elapsed time at zero.
  if last and math.max(0, now - tonumber(last)) < tonumber(ARGV[2]) then
    pass = false
  end
  if count >= tonumber(ARGV[3]) then
    pass = false
  end
end
if pass and ARGV[7] == '1' then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[9])
  -- Trim what left the window, so the ZSET stays as small as the window.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
end
local stored = (pass and 'P' or 'H') .. '|' .. ARGV[1] .. '|' .. (last or '') .. '|' .. count
redis.call('SET', KEYS[1], stored, 'EX', ARGV[8])
return {0, stored}
