-- One recovery page: XAUTOCLAIM stale entries into the live consumer, dead-letter the ones
-- delivered too often.
-- KEYS[1] stream  KEYS[2] dead-letter stream  KEYS[3] the worker's order_unknown hash
-- (entry id -> record): a PASS whose order status is not settled is never dead-lettered; the
-- worker resolves it by looking the order up.
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] min_idle_ms  ARGV[4] cursor  ARGV[5] count
-- ARGV[6] max_deliveries
-- Reply: {next_cursor, claimed, {dead-lettered ids}, deleted}
-- JUSTID: the claim is not a delivery (the consumer's next read of its pending list is, and
-- increments the count), and the entries' data never leave the server.
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                     'COUNT', ARGV[5], 'JUSTID')
local ids = r[2]
local deleted = r[3] or {}
local dead = {}
if #ids > 0 then
  -- XAUTOCLAIM returns no delivery counts: read them for the claimed id range in one bounded
  -- XPENDING (filtered to the consumer they now belong to). The bound keeps the call short;
  -- an entry it misses is simply checked again on the next sweep.
  local claimed = {}
  for _, id in ipairs(ids) do claimed[id] = true end
  local max = tonumber(ARGV[6])
  local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ids[1], ids[#ids],
                          4 * #ids, ARGV[2])
  for _, row in ipairs(rows) do
    local id, n = row[1], tonumber(row[4])
    if claimed[id] and n > max and redis.call('HEXISTS', KEYS[3], id) == 0 then
      local e = redis.call('XRANGE', KEYS[1], id, id)
      local args = {'dlq_source_id', id, 'dlq_reason', 'max_deliveries', 'dlq_deliveries', n,
                    'dlq_stream', KEYS[1], 'dlq_group', ARGV[1]}
      if e[1] then
        for _, v in ipairs(e[1][2]) do args[#args + 1] = v end
      end
      -- XADD before XACK (same script, so atomic anyway): never lose an entry.
      redis.call('XADD', KEYS[2], '*', unpack(args))
      redis.call('XACK', KEYS[1], ARGV[1], id)
      dead[#dead + 1] = id
    end
  end
end
return {r[1], #ids - #dead, dead, #deleted}
