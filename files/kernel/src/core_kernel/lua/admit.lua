-- admit: the state gates, on the Redis server's clock, applied and recorded atomically.
-- The Python gates decided everything that needs no state (flag base_ok); this script decides
-- the rest and is the only place these rules live:
--   now        = TIME (the server's clock: worker clock skew cannot move a gate)
--   cooldown fails when  max(0, now - last) < MIN_HOLD_MS      (the one clamp, here)
--   rate fails when      count(score > now - WINDOW_MS) >= MAX_TRADES
--   expired when         max(0, now - entry_ms) > MAX_AGE_MS   (entry_ms: the XADD time)
--   trading state (issue 14, the operator's command, in every mode): KEYS[4]'s field state;
--     no key = ACTIVE; ACTIVE / REDUCING / HALTED as named; anything else reads as HALTED.
--     HALTED holds everything (bit T), REDUCING holds entries (bit U), exits pass.
--     gates.state_reason is the same rule for replies that carry no bits (replays, what-if).
-- The thresholds are compiled in when a store loads the script (one SHA per config);
-- $$ is a literal dollar (string.Template).
-- TTL_S is a string: a number passed to redis.call is formatted with %.17g on every call.
local MIN_HOLD_MS, MAX_TRADES, WINDOW_MS, TTL_S, MAX_AGE_MS =
  $min_hold_ms, $max_trades, $window_ms, '$ttl_s', $max_age_ms
-- KEYS[1] order dedup key  KEYS[2] last-trade key  KEYS[3] trades ZSET  KEYS[4] trading state
-- KEYS[5] KEYS[6] orders in flight (MAX_POSITION, see its block)  ARGV[5] the limits' input:
--   the three are given only when a limit on exchange data is configured (4 keys and 4 args
--   otherwise: every argument costs the client and the server time on each admit)
-- ARGV[1] flags = base_ok + 2 * state_gated + 4 * is_entry + 8 * dry_run
-- ARGV[2] entry time in ms ('' = unknown)  ARGV[3] trade member  ARGV[4] client order id
-- Replies (strings), each prefixed 'STATE;' (ACTIVE, REDUCING, HALTED or '?' .. what was found):
--   'k1|V|now|since|count|bits|age|cid'  the decision just stored (V = P or H; bits C R E K X T U)
--     followed, when ARGV[5] had a spec, by '~sym|gross' (the in-flight sums; not stored)
--   '=' .. stored value                  a decision stored earlier (a replay; Python checks it)
--   '#' .. reason                        a dedup key the kernel did not write (foreign)
--   '!' .. key .. '|' .. reason          state the kernel cannot read: nothing was written
-- A dry run (the two-step API's read) skips the dedup key and writes nothing.
local flags = tonumber(ARGV[1])
local dry = flags >= 8
if dry then flags = flags - 8 end
-- The trading state first: every reply carries it, a replay is held by it too (Python decides
-- that from the prefix, the stored decision is never rewritten).
-- HGETALL: one call tells "no key" (empty: ACTIVE) from a hash without the field, where HGET
-- needs an EXISTS after it (the hash is small: set_trading_state writes eight fields).
local ts = 'ACTIVE'
local sh = redis.pcall('HGETALL', KEYS[4])
if sh.err then
  ts = '?wrong type'
elseif #sh > 0 then
  ts = '?no state field'
  for i = 1, #sh, 2 do
    if sh[i] == 'state' then
      local sv = sh[i + 1]
      if sv == 'ACTIVE' or sv == 'REDUCING' or sv == 'HALTED' then
        ts = sv
      else
        ts = '?unknown state value'
      end
      break
    end
  end
end
local halted = ts ~= 'ACTIVE' and ts ~= 'REDUCING'
local head = ts .. ';'
-- The dedup key is read where it is claimed (SET NX GET, below); a decision stored there comes
-- back instead of a new one, whatever the state reads found.
local function stored_reply(got)
  if type(got) == 'table' and got.err then
    return head .. '#wrong type'
  end
  -- Only a value admit could have written comes back whole (ASCII, so every client decodes
  -- it); Python still checks its exact form.
  if #got > 200 or not string.match(got, '^k1|[PH]|[0-9A-Za-z|.:/_-]*$$') then
    return head .. '#foreign value'
  end
  return head .. '=' .. got
end
local function unreadable(key, reason)
  if not dry then
    local got = redis.pcall('GET', KEYS[1])
    if got then return stored_reply(got) end
  end
  return head .. '!' .. key .. '|' .. reason
end
local entry = flags >= 4
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Every number formatted below is whole milliseconds (or a count) far below 2^53: '%d' prints it
-- exactly, and costs less than '%.0f'.
local window_start
-- An exit (reduce-only) is not gated on the state, so it does not read it either.
local last, count = false, 0
if entry then
  window_start = string.format('%d', now - WINDOW_MS)
  last = redis.pcall('GET', KEYS[2])
  if type(last) == 'table' and last.err then
    return unreadable(KEYS[2], 'wrong type')
  end
  if last and (#last > 15 or not string.match(last, '^%d+$$')) then
    return unreadable(KEYS[2], 'not integer milliseconds')
  end
  count = redis.pcall('ZCOUNT', KEYS[3], '(' .. window_start, '+inf')
  if type(count) == 'table' and count.err then
    return unreadable(KEYS[3], 'wrong type')
  end
end
local bits = ''
local since = ''
local pass = flags % 2 == 1
if entry then
  if last then
    local elapsed = math.max(0, now - tonumber(last))
    since = string.format('%d', elapsed)
    if elapsed < MIN_HOLD_MS then bits = bits .. 'C' end
  end
  if count >= MAX_TRADES then bits = bits .. 'R' end
  if flags % 4 >= 2 and bits ~= '' then pass = false end
end
local age = ''
if ARGV[2] ~= '' then
  local a = math.max(0, now - tonumber(ARGV[2]))
  age = string.format('%d', a)
  if a > MAX_AGE_MS then
    bits = bits .. 'E'
    pass = false
  end
end
-- Limits on exchange data (issue 14) --------------------------------------------------------
-- ARGV[5] = absent (all off) or held .. ';' .. spec. held: what Python found (K = PRICE_COLLAR,
-- X = MAX_POSITION), stored in the bits so a replay knows its reasons. spec: '' or
-- 'pos|gross|add|max_pos|max_gross|ttl_ms' in integers of 1e-6 USD (max -1 = off): the
-- exchange's position notional on the symbol, its gross exposure, this order's notional.
-- Orders in flight, for every entry PASSed with a spec until the worker releases it
-- (inflight.py) or it expires: KEYS[5] hash, 'SYMBOL:trace_id' -> 'micro_usd|expires_ms' and
-- the running sums '#SYMBOL' and '#' (gross); KEYS[6] ZSET of the same fields by expiry, so an
-- admit only touches what expired (amortised O(1)). Bit X when pos + in flight on the symbol +
-- add > max_pos, or gross + all in flight + add > max_gross. A value that is not ours is state
-- the kernel cannot read (nothing written).
local tail, flight, expired = '', nil, nil
if entry and ARGV[5] then
  local held, spec = string.match(ARGV[5], '^(K?X?);(.*)$$')
  if not held then return unreadable('ARGV[5]', 'bad limits input') end
  if #KEYS < 6 then return unreadable('KEYS', 'in-flight keys not given') end
  local over = string.find(held, 'X', 1, true) ~= nil
  if spec ~= '' then
    local p, g, add, mp, mg, ttl =
      string.match(spec, '^(%d+)|(%d+)|(%d+)|(-?%d+)|(-?%d+)|(%d+)$$')
    if not p then return unreadable('ARGV[5]', 'bad exposure input') end
    p, g, add, mp, mg = tonumber(p), tonumber(g), tonumber(add), tonumber(mp), tonumber(mg)
    local sym_field = '#' .. string.match(ARGV[3], '^[^:]*')
    local sums = redis.pcall('HMGET', KEYS[5], sym_field, '#')
    if type(sums) == 'table' and sums.err then return unreadable(KEYS[5], 'wrong type') end
    local due = redis.pcall('ZRANGEBYSCORE', KEYS[6], '-inf', string.format('%.0f', now))
    if type(due) == 'table' and due.err then return unreadable(KEYS[6], 'wrong type') end
    local sym, gross = tonumber(sums[1] or '0'), tonumber(sums[2] or '0')
    if not sym or not gross or sym < 0 or gross < 0 then
      return unreadable(KEYS[5], 'not an in-flight sum')
    end
    local gone = {}
    for i = 1, #due do
      local v = redis.call('HGET', KEYS[5], due[i])
      local n = v and string.match(v, '^(%d+)|%d+$$')
      if v and not n then return unreadable(KEYS[5], 'not an in-flight record') end
      if n then
        gone[#gone + 1] = {due[i], tonumber(n)}
        gross = gross - tonumber(n)
        if '#' .. string.match(due[i], '^[^:]*') == sym_field then sym = sym - tonumber(n) end
      end
    end
    -- removed below, once the dedup key is claimed (a replay writes nothing)
    if #due > 0 then expired = {gone, due} end
    if (mp >= 0 and p + sym + add > mp) or (mg >= 0 and g + gross + add > mg) then
      over = true
      if flags % 4 >= 2 then pass = false end
    end
    tail = '~' .. string.format('%.0f', sym) .. '|' .. string.format('%.0f', gross)
    flight = {sym_field, add, now + tonumber(ttl)}
  end
  if string.find(held, 'K', 1, true) then bits = bits .. 'K' end
  if over then bits = bits .. 'X' end
end
-- end of the limits on exchange data --------------------------------------------------------
if halted then
  bits = bits .. 'T'
  pass = false
elseif ts == 'REDUCING' and entry then
  bits = bits .. 'U'
  pass = false
end
local now_s = string.format('%d', now)
local stored = 'k1|' .. (pass and 'P' or 'H') .. '|' .. now_s .. '|' .. since .. '|'
  .. string.format('%d', count) .. '|' .. bits .. '|' .. age .. '|' .. ARGV[4]
if dry then
  return head .. stored .. tail
end
-- Claim the dedup key and read it in one command (Redis 7.0+): NX leaves a stored decision and
-- its TTL as they are and GET returns it; nil means this decision is now the stored one.
local got = redis.pcall('SET', KEYS[1], stored, 'NX', 'EX', TTL_S, 'GET')
if got then
  return stored_reply(got)
end
if expired then
  for _, d in ipairs(expired[1]) do
    redis.call('HINCRBY', KEYS[5], '#' .. string.match(d[1], '^[^:]*'), -d[2])
    redis.call('HINCRBY', KEYS[5], '#', -d[2])
    redis.call('HDEL', KEYS[5], d[1])
  end
  redis.call('ZREM', KEYS[6], unpack(expired[2]))
end
if pass and entry then
  redis.call('SET', KEYS[2], now_s)
  redis.call('ZADD', KEYS[3], now_s, ARGV[3])
  -- Trim what left the window, so the ZSET stays as small as the window.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', window_start)
  if flight then
    local add, exp = string.format('%.0f', flight[2]), string.format('%.0f', flight[3])
    redis.call('HSET', KEYS[5], ARGV[3], add .. '|' .. exp)
    redis.call('HINCRBY', KEYS[5], flight[1], add)
    redis.call('HINCRBY', KEYS[5], '#', add)
    redis.call('ZADD', KEYS[6], exp, ARGV[3])
  end
end
return head .. stored .. tail
