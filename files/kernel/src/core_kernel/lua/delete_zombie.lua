-- Delete a consumer only if it is still idle past the limit and holds nothing pending,
-- checked and done in one step so no entry can be assigned to it in between.
-- KEYS[1] stream  ARGV[1] group  ARGV[2] consumer  ARGV[3] min_idle_ms
-- Idle field: Redis 7.2+ reports 'inactive' (since the last successful interaction; -1 if never);
-- 7.0 has only 'idle', which means the same there.
-- Reply: {0, delconsumer_reply} deleted | {-1, pending} has pending | {-2, idle} not idle enough
--        | {-3, 0} no such consumer
local info = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, c in ipairs(info) do
  local m = {}
  for i = 1, #c, 2 do m[c[i]] = c[i + 1] end
  if m['name'] == ARGV[2] then
    local pending = tonumber(m['pending'])
    if pending ~= 0 then return {-1, pending} end
    local idle = tonumber(m['idle'])
    if m['inactive'] ~= nil and tonumber(m['inactive']) >= 0 then idle = tonumber(m['inactive']) end
    if idle < tonumber(ARGV[3]) then return {-2, idle} end
    return {0, redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])}
  end
end
return {-3, 0}
