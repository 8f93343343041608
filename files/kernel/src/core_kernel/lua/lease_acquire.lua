-- Take the order lease for this process's token, or keep it if it is already ours.
-- KEYS[1] lease key   ARGV[1] token   ARGV[2] ttl_ms
-- Reply: 1 taken fresh (someone else may have held it before), 2 already ours, 0 held by another
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 2
end
return 0
