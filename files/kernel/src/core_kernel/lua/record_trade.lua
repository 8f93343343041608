-- record_trade for the two-step API: same writes as admit's recording branch.
-- KEYS[1] last-trade key  KEYS[2] trades ZSET
-- ARGV[1] now_ms  ARGV[2] member  ARGV[3] window_start_ms
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
return redis.call('ZCARD', KEYS[2])
