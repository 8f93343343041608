-- record_trade for the two-step API: the same writes as admit's recording branch, on the same
-- clock (the server's TIME). A value the kernel did not write is never overwritten.
-- KEYS[1] last-trade key  KEYS[2] trades ZSET
-- ARGV[1] member prefix  ARGV[2] window ms
local last = redis.pcall('GET', KEYS[1])
if type(last) == 'table' and last.err then
  return redis.error_reply('STATE ' .. KEYS[1] .. ': wrong type')
end
if last and (#last > 15 or not string.match(last, '^%d+$')) then
  return redis.error_reply('STATE ' .. KEYS[1] .. ': not integer milliseconds')
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'zset' and kind ~= 'none' then
  return redis.error_reply('STATE ' .. KEYS[2] .. ': wrong type')
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now = string.format('%.0f', now_ms)
redis.call('SET', KEYS[1], now)
redis.call('ZADD', KEYS[2], now, ARGV[1] .. ':' .. now .. ':' .. t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now_ms - tonumber(ARGV[2])))
return redis.call('ZCARD', KEYS[2])
