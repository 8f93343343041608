-- One recovery page over the group's pending entries list (PEL), bounded to COUNT entries so
-- one call holds Redis for a fraction of a millisecond.
-- KEYS[1] stream  KEYS[2] dead-letter stream
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] min_idle_ms  ARGV[4] start ("-" or "(id")
-- ARGV[5] count  ARGV[6] max_deliveries
-- Reply: {next_start or "0-0", claimed, {dead-lettered ids}, deleted, stale_own}
-- Stale entries of other consumers are claimed into ARGV[2] with XCLAIM ... JUSTID: the claim
-- is not a delivery (the consumer's next read of its pending list is, and increments the
-- count), and the entries' data never leave the server. Entries delivered more than
-- max_deliveries times are copied to the dead-letter stream, then acked.
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[4], '+', ARGV[5])
local min_idle = tonumber(ARGV[3])
local max = tonumber(ARGV[6])
local claim, dead = {}, {}
local own = 0
for _, row in ipairs(rows) do
  local id, owner, idle, n = row[1], row[2], tonumber(row[3]), tonumber(row[4])
  if idle >= min_idle then
    if n > max then
      local e = redis.call('XRANGE', KEYS[1], id, id)
      local args = {'dlq_source_id', id, 'dlq_deliveries', n, 'dlq_consumer', owner,
                    'dlq_stream', KEYS[1], 'dlq_group', ARGV[1]}
      if e[1] then
        for _, v in ipairs(e[1][2]) do args[#args + 1] = v end
      end
      -- XADD before XACK (same script, so atomic anyway): never lose an entry.
      redis.call('XADD', KEYS[2], '*', unpack(args))
      redis.call('XACK', KEYS[1], ARGV[1], id)
      dead[#dead + 1] = id
    elseif owner == ARGV[2] then
      own = own + 1
    else
      claim[#claim + 1] = id
    end
  end
end
local claimed, deleted = 0, 0
if #claim > 0 then
  claim[#claim + 1] = 'JUSTID'
  -- XCLAIM re-checks min_idle per entry; entries deleted from the stream are dropped from
  -- the PEL and left out of the reply (Redis 7.0+).
  local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(claim))
  claimed = #got
  deleted = #claim - 1 - claimed
end
local nxt = '0-0'
if #rows >= tonumber(ARGV[5]) then nxt = '(' .. rows[#rows][1] end
return {nxt, claimed, dead, deleted, own}
