-- protection: the automatic protections' record and the trading state they change, in one
-- script (issue 14), so a trip, its audit entry and the state can never disagree.
-- KEYS[1] state hash  KEYS[2] audit stream  KEYS[3] protection hash
-- ARGV[1] 'poll' or 'resume'  ARGV[2] JSON arguments (see protect.py)
-- Reply: one JSON object.
--
-- poll: {epoch, fields, delete, trips=[{code, reason, state, day}], clear=[codes], rearm, day,
--   host, maxlen}. Refused with status RETRY when the record's epoch is not the one the poller
--   read (an operator resumed in between: decide again on the new record). Only ever tightens:
--   a trip moves the state to its target only when that is stricter than the current state;
--   the one way back to ACTIVE is the daily limit's re-arm at the UTC day boundary, and only
--   while the state is still the one that trip set and no other trip is recorded.
-- resume: {reason, user, host, source, maxlen, force, today}. Refused (status REFUSED) while
--   today's daily-loss trip is recorded, unless force (the daily limit then stays off until
--   the next UTC day). Clears every trip and the high-water mark (the next successful read sets
--   it: a new peak) and the staleness record, then moves to ACTIVE like set_trading_state.lua.
local rank = {ACTIVE = 0, REDUCING = 1, HALTED = 2}
local args = cjson.decode(ARGV[2])

-- The state as admit.lua reads it (the same reading as set_trading_state.lua).
local kind = redis.call('TYPE', KEYS[1])['ok']
local from, found, source, state_audit = 'ACTIVE', '', '', ''
if kind == 'hash' then
  local got = redis.call('HMGET', KEYS[1], 'state', 'source', 'audit_id')
  if rank[got[1]] then
    from = got[1]
    source = got[2] or ''
    state_audit = got[3] or ''
  else
    from = 'HALTED'
    found = 'unknown state value'
  end
elseif kind ~= 'none' then
  from = 'HALTED'
  found = 'key of type ' .. kind
end
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))

local function move(to, reason, user, host, src)
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', args.maxlen, '*',
    'from', from, 'to', to, 'reason', reason, 'user', user, 'host', host,
    'source', src, 'at_ms', now, 'found', found)
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', to, 'reason', reason, 'user', user,
    'host', host, 'source', src, 'at_ms', now, 'from', from, 'audit_id', id)
  return id
end

local function trip_fields()
  local out = {}
  for _, name in ipairs(redis.call('HKEYS', KEYS[3])) do
    if string.sub(name, 1, 5) == 'trip:' then
      out[#out + 1] = name
    end
  end
  return out
end

if ARGV[1] == 'resume' then
  local daily = redis.call('HGET', KEYS[3], 'trip:DAILY_LOSS_LIMIT')
  local waive = false
  if daily then
    local ok, rec = pcall(cjson.decode, daily)
    if ok and type(rec) == 'table' and rec.day == args.today then
      if not args.force then
        return cjson.encode({status = 'REFUSED', state = from, trip = rec})
      end
      waive = true
    end
  end
  local cleared = trip_fields()
  for _, name in ipairs(cleared) do
    redis.call('HDEL', KEYS[3], name)
  end
  redis.call('HDEL', KEYS[3], 'hwm', 'hwm_at_ms', 'last_ok_ms', 'first_fail_ms', 'last_error')
  if waive then
    redis.call('HSET', KEYS[3], 'daily_waived_day', args.today)
  end
  redis.call('HSET', KEYS[3], 'resumed_at_ms', now)
  redis.call('HINCRBY', KEYS[3], 'epoch', 1)
  local id = ''
  if from ~= 'ACTIVE' or found ~= '' then
    id = move('ACTIVE', args.reason, args.user, args.host, args.source)
  end
  return cjson.encode({status = 'OK', from = from, to = 'ACTIVE', at_ms = now, audit_id = id,
    cleared = #cleared, waived = waive})
end

-- poll
local epoch = redis.call('HGET', KEYS[3], 'epoch') or '0'
if epoch ~= tostring(args.epoch) then
  return cjson.encode({status = 'RETRY', epoch = epoch})
end
for name, value in pairs(args.fields) do
  redis.call('HSET', KEYS[3], name, value)
end
for _, name in ipairs(args.delete) do
  redis.call('HDEL', KEYS[3], name)
end
local cleared_audit = {}
for _, code in ipairs(args.clear) do
  local old = redis.call('HGET', KEYS[3], 'trip:' .. code)
  if old then
    local ok, rec = pcall(cjson.decode, old)
    cleared_audit[code] = (ok and type(rec) == 'table' and rec.audit_id) or ''
    redis.call('HDEL', KEYS[3], 'trip:' .. code)
  end
end

-- New trips: recorded once (the first time and reason are kept while it stays tripped).
local new, target, target_reason, target_user = {}, nil, {}, nil
for _, trip in ipairs(args.trips) do
  if redis.call('HEXISTS', KEYS[3], 'trip:' .. trip.code) == 0 then
    new[#new + 1] = trip
    if target == nil or rank[trip.state] > rank[target] then
      target = trip.state
      target_user = 'protection:' .. trip.code
    end
    target_reason[#target_reason + 1] = trip.code .. ': ' .. trip.reason
  end
end
local to, audit_id = from, ''
if target ~= nil and found == '' and rank[target] > rank[from] then
  local reason = string.sub(table.concat(target_reason, '; '), 1, 500)
  audit_id = move(target, reason, target_user, args.host, 'protection')
  to = target
end
local daily_audit = cleared_audit['DAILY_LOSS_LIMIT']
local new_codes = {}
for _, trip in ipairs(new) do
  new_codes[#new_codes + 1] = trip.code
  local aid = audit_id
  if aid == '' and trip.code == 'DAILY_LOSS_LIMIT' and daily_audit then
    -- A new day over the limit again: the state is still the one yesterday's trip set, and
    -- today's trip must be able to re-arm it tomorrow.
    aid = daily_audit
  end
  redis.call('HSET', KEYS[3], 'trip:' .. trip.code, cjson.encode({reason = trip.reason,
    at_ms = now, day = trip.day, state = trip.state, from = from, to = to,
    audit_id = aid}))
end

-- The daily limit's re-arm: only when the state is still the one that trip set.
local rearmed = ''
if args.rearm and daily_audit and daily_audit ~= '' and #new == 0 and found == ''
    and from ~= 'ACTIVE' and source == 'protection' and state_audit == daily_audit
    and #trip_fields() == 0 then
  rearmed = move('ACTIVE', 'DAILY_LOSS_LIMIT re-armed at the UTC day boundary (' ..
    tostring(args.day) .. ')', 'protection:DAILY_LOSS_LIMIT', args.host, 'protection')
  to = 'ACTIVE'
end
redis.call('HINCRBY', KEYS[3], 'epoch', 1)
local active = {}
for _, name in ipairs(trip_fields()) do
  active[#active + 1] = string.sub(name, 6)
end
return cjson.encode({status = 'OK', from = from, to = to, at_ms = now, audit_id = audit_id,
  rearm_audit_id = rearmed, new = new_codes, active = active, found = found})
