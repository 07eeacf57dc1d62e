-- Slots due at or before a watermark, with their state, in one round trip (nothing is removed:
-- the batch write that follows the firing reschedules or deletes them).
-- ARGV: watermark_ms, limit, n, then per shard: due_key, slot_key_prefix
-- Returns: {earliest_due|false, shard_1, member_1, state_1|false, shard_2, ...}
local wm, limit, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {false}
local earliest = nil
local left = limit
for s = 0, n - 1 do
  local due, prefix = ARGV[4 + 2 * s], ARGV[5 + 2 * s]
  local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if first[2] then
    local score = tonumber(first[2])
    if earliest == nil or score < earliest then earliest = score end
    if left > 0 and score <= tonumber(wm) then
      local members = redis.call('ZRANGEBYSCORE', due, '-inf', wm, 'LIMIT', 0, left)
      for _, m in ipairs(members) do
        out[#out + 1] = s
        out[#out + 1] = m
        out[#out + 1] = redis.call('GET', prefix .. m)
      end
      left = left - #members
    end
  end
end
if earliest ~= nil then out[1] = string.format('%d', earliest) end
return out
