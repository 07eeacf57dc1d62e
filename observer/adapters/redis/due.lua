-- Slots due at or before their shard's watermark, with their state, in one round trip (nothing
-- is removed: the batch write that follows the firing reschedules or deletes them).
-- ARGV: limit, n, then per shard: shard, due_key, slot_key_prefix, watermark_ms
-- Returns: {overdue_ms|false, shard_1, member_1, state_1|false, shard_2, ...}; overdue_ms is the
-- largest (watermark - earliest due) over the shards, false when nothing is due.
local limit, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {false}
local overdue = nil
local left = limit
for s = 0, n - 1 do
  local shard, due, prefix, wm = ARGV[3 + 4 * s], ARGV[4 + 4 * s], ARGV[5 + 4 * s], ARGV[6 + 4 * s]
  local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if first[2] then
    local late = tonumber(wm) - tonumber(first[2])
    if late >= 0 then
      if overdue == nil or late > overdue then overdue = late end
      if left > 0 then
        local members = redis.call('ZRANGEBYSCORE', due, '-inf', wm, 'LIMIT', 0, left)
        for _, m in ipairs(members) do
          out[#out + 1] = shard
          out[#out + 1] = m
          out[#out + 1] = redis.call('GET', prefix .. m)
        end
        left = left - #members
      end
    end
  end
end
if overdue ~= nil then out[1] = string.format('%d', overdue) end
return out
