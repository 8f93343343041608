-- set_trading_state: the operator's change of the trading state, recorded with its audit entry
-- in one script, so the state and its history can never disagree.
-- KEYS[1] state hash  KEYS[2] audit stream
-- ARGV[1] new state  ARGV[2] reason  ARGV[3] user  ARGV[4] host  ARGV[5] source (cli, ...)
-- ARGV[6] audit stream MAXLEN
-- Reply: {from, to, at_ms, audit entry id or '' when unchanged}
-- A state hash of the wrong type or with an unknown value reads as HALTED (what admit.lua treats
-- it as): the change replaces it, and the audit entry names what was found.
local kind = redis.call('TYPE', KEYS[1])['ok']
local from = 'ACTIVE'
local found = ''
if kind == 'hash' then
  local got = redis.call('HGET', KEYS[1], 'state')
  if got == 'ACTIVE' or got == 'REDUCING' or got == 'HALTED' then
    from = got
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
if from == ARGV[1] and found == '' then
  return {from, ARGV[1], now, ''}
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
  'from', from, 'to', ARGV[1], 'reason', ARGV[2], 'user', ARGV[3], 'host', ARGV[4],
  'source', ARGV[5], 'at_ms', now, 'found', found)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2], 'user', ARGV[3],
  'host', ARGV[4], 'source', ARGV[5], 'at_ms', now, 'from', from, 'audit_id', id)
return {from, ARGV[1], now, id}
