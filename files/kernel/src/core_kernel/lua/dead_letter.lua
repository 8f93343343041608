-- Move one pending entry to the dead-letter stream: XACK and XADD in one script, and the XADD
-- only if this call's XACK removed it (two processes sharing a consumer name may both try).
-- KEYS[1] stream  KEYS[2] dead-letter stream   ARGV[1] group  ARGV[2] entry id
-- ARGV[3..] field, value, ... for the dead letter.  Reply: 1 dead-lettered, 0 already gone
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return 1
