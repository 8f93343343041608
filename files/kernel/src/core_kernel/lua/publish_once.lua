-- Idempotent publish: the dedup key and the stream entry exist together or not at all.
-- KEYS[1] dedup key, KEYS[2] stream; ARGV[1] ttl seconds, ARGV[2] maxlen (0 = no trim),
-- ARGV[3..] field, value pairs. Returns the new entry id, or false for a duplicate.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return false
end
local maxlen = tonumber(ARGV[2])
local res
if maxlen and maxlen > 0 then
  res = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 3))
else
  res = redis.pcall('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
if type(res) == 'table' and res.err then
  -- Scripts are not rolled back on error: undo the key ourselves so a retry can publish.
  redis.call('DEL', KEYS[1])
  return redis.error_reply(res.err)
end
-- Remember which entry the key belongs to (same TTL), for forensics.
redis.call('SET', KEYS[1], res, 'KEEPTTL')
return res
