-- admit: read the shared state, record the trade if it passes, store the decision - atomically.
-- The pure Python gates decided everything that needs no state (base_ok); this script only
-- applies the two state gates with exactly the comparisons of gates.evaluate:
--   cooldown passes when  max(0, now - last) >= min_hold   (integer ms)
--   rate passes when      count(score > now - window) < max_trades
-- The thresholds are compiled in when a store loads the script (one SHA per config): every
-- argument costs server and client time on each call, and these never change between calls.
local MIN_HOLD_MS, MAX_TRADES, WINDOW_MS, TTL_S = $min_hold_ms, $max_trades, $window_ms, $ttl_s
-- KEYS[1] order dedup key  KEYS[2] last-trade key  KEYS[3] trades ZSET
-- ARGV[1] now_ms  ARGV[2] flags = base_ok + 2 * state_gated + 4 * is_entry  ARGV[3] member
-- Reply: the stored decision "V|now_ms|last_ms|count" (V = P or H); a decision stored earlier
-- comes back prefixed with "=" (a replay). A string, not a table: cheaper to build and parse.
-- Every redis.call costs about a microsecond of server time here, so the dedup key and the
-- last trade are read with one MGET.
local got = redis.call('MGET', KEYS[1], KEYS[2])
if got[1] then
  return '=' .. got[1]
end
local last = got[2]
local now = tonumber(ARGV[1])
-- ms since the epoch are integers below 2^53: exact as Lua numbers, printed in full by %.14g.
local window_start = now - WINDOW_MS
local count = redis.call('ZCOUNT', KEYS[3], '(' .. window_start, '+inf')
local flags = tonumber(ARGV[2])
local pass = flags % 2 == 1
if pass and flags % 4 >= 2 then
  -- Each worker reads its own clock before the script runs, so a trade recorded a moment
  -- earlier by another worker can carry a later stamp: clamp the elapsed time at zero.
  if last and math.max(0, now - tonumber(last)) < MIN_HOLD_MS then
    pass = false
  elseif count >= MAX_TRADES then
    pass = false
  end
end
if pass and flags >= 4 then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
  -- Trim what left the window, so the ZSET stays as small as the window.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', window_start)
end
local stored = (pass and 'P|' or 'H|') .. ARGV[1] .. '|' .. (last or '') .. '|' .. count
redis.call('SET', KEYS[1], stored, 'EX', TTL_S)
return stored
