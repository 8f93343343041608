-- One recovery page: claim stale entries into the live consumer, dead-letter over-delivered ones.
-- KEYS[1] stream  KEYS[2] dead-letter stream
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] min_idle_ms  ARGV[4] cursor  ARGV[5] count
-- ARGV[6] max_deliveries
-- Reply: {next_cursor, claimed, {dead-lettered ids}, deleted}
-- JUSTID: the claim itself is not a delivery (the consumer's next read of its pending entries
-- is, and that read increments the count), and the entries' data never leave the server.
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                     'COUNT', ARGV[5], 'JUSTID')
local ids = r[2]
local deleted = r[3] or {}
local max = tonumber(ARGV[6])
local dead = {}
for _, id in ipairs(ids) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local n = 0
  if p[1] then n = tonumber(p[1][4]) end
  if n > max then
    local e = redis.call('XRANGE', KEYS[1], id, id)
    local args = {'dlq_source_id', id, 'dlq_deliveries', n, 'dlq_stream', KEYS[1],
                  'dlq_group', ARGV[1]}
    if e[1] then
      for _, v in ipairs(e[1][2]) do table.insert(args, v) end
    end
    -- XADD before XACK (same script, so atomic anyway): never lose an entry.
    redis.call('XADD', KEYS[2], '*', unpack(args))
    redis.call('XACK', KEYS[1], ARGV[1], id)
    table.insert(dead, id)
  end
end
return {r[1], #ids, dead, #deleted}
