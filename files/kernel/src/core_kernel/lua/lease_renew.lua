-- Renew the order lease right before a send: only if it is still ours and has more than
-- ARGV[3] ms left (recvWindow + margin), so a holder that slept past its lease never sends.
-- KEYS[1] lease key   ARGV[1] token   ARGV[2] ttl_ms   ARGV[3] min_remaining_ms
-- Reply: 1 renewed, 0 not ours (expired or taken), -1 ours but too close to expiry
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if redis.call('PTTL', KEYS[1]) <= tonumber(ARGV[3]) then
  return -1
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
