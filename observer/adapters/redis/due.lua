-- Slots due at or before their shard's watermark, with their values, in one round trip. Due
-- times come from observer/adapters/redis/keys.py's layout: the shard's due index idx scores
-- each bucket (member m) with its earliest due time; a value starts with the slot's due time
-- (8 bytes, big-endian two's complement epoch ms; -2^63: not due). Nothing is removed: the
-- batch write that follows the firing reschedules or deletes the slots.
-- ARGV: limit, n, then per shard: shard, idx, bucket_key_prefix, watermark_ms
-- Returns: {overdue_ms|false, nexts, shard_1, member_1, field_1, value_1, shard_2, ...};
-- overdue_ms is the largest (watermark - earliest due) over the shards, false when nothing is
-- due. nexts has one entry per shard, in order (the tracker's due bounds, runtime/deadlines.py):
-- the earliest due time left after its watermark once the slots returned have fired ('inf':
-- none), or false when the limit kept some of its due slots back (not known).

-- due_of comes from value.lua, which the store puts before this script.

local limit, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local nexts = {}
local out = {false, nexts}
local overdue = nil
local left = limit
for s = 0, n - 1 do
  local shard, idx, prefix, wm_arg = ARGV[3 + 4 * s], ARGV[4 + 4 * s], ARGV[5 + 4 * s], ARGV[6 + 4 * s]
  local wm = tonumber(wm_arg)
  local known = false
  local later = nil -- the earliest due time after wm in the buckets read
  if left > 0 then
    local asked = left
    local due = redis.call('ZRANGEBYSCORE', idx, '-inf', wm_arg, 'WITHSCORES', 'LIMIT', 0, left)
    -- every bucket due was returned; every due slot of them too unless `left` runs out
    known = #due / 2 < asked
    for j = 1, #due, 2 do
      local m = due[j]
      local kv = redis.call('HGETALL', prefix .. m)
      local low = nil
      for x = 1, #kv, 2 do
        local d = due_of(kv[x + 1])
        if d then
          if low == nil or d < low then low = d end
          if d > wm then
            if later == nil or d < later then later = d end
          elseif left <= 0 then
            known = false
          else
            out[#out + 1] = shard
            out[#out + 1] = m
            out[#out + 1] = kv[x]
            out[#out + 1] = kv[x + 1]
            left = left - 1
          end
        end
      end
      -- the scripts keep the index exact; a bucket that expired or was deleted outside them
      -- would otherwise stay "due" for ever
      if low ~= tonumber(due[j + 1]) then
        if low then
          redis.call('ZADD', idx, string.format('%.17g', low), m)
        else
          redis.call('ZREM', idx, m)
        end
      end
      if left <= 0 then
        if j + 2 < #due then known = false end
        break
      end
    end
  end
  if known then
    local after = redis.call('ZRANGEBYSCORE', idx, '(' .. wm_arg, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if after[2] and (later == nil or tonumber(after[2]) < later) then later = tonumber(after[2]) end
    nexts[s + 1] = later and string.format('%d', later) or 'inf'
  else
    nexts[s + 1] = false
  end
  local first = redis.call('ZRANGE', idx, 0, 0, 'WITHSCORES')
  if first[2] then
    local late = wm - tonumber(first[2])
    if late >= 0 and (overdue == nil or late > overdue) then overdue = late end
  end
end
if overdue ~= nil then out[1] = string.format('%d', overdue) end
return out
