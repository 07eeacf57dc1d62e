-- What a flow's decider reads, in one round trip (guardrails, contract §7; key names and what
-- they hold: observer/adapters/redis/keys.py, Keys.guard).
-- ARGV: state, watermarks, shards, waiting, wdata, released, paused, flow, limit, heldn, totals,
--   floor
-- Returns {rev, upto|false, blob|false, watermark|false, more (0/1), paused (0/1),
--          {id...}, {data...}, {released oid, entry, ...}, {action, n, ...}, {name, n, ...}}
-- watermark: the lowest of the shards' stored watermarks, false while a shard has none, and
-- below the earliest timer of the flow's instances that have not fired it though due (they
-- wait for an alias answer: `floor`, slot id by due time); the
-- waiting deviations are those with a time up to max(watermark, upto), at most `limit`, in
-- (time, id) order.
local state, wm, shards = ARGV[1], ARGV[2], tonumber(ARGV[3])
local waiting, wdata, released, paused_key = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local flow, limit, heldn, totals = ARGV[8], tonumber(ARGV[9]), ARGV[10], ARGV[11]
local st = redis.call('HMGET', state, 'rev', 'upto', 'blob')
local rev, upto, blob = st[1] or '0', st[2], st[3]
local low, low_text = nil, false
local marks = redis.call('HGETALL', wm)
local seen = 0
for j = 1, #marks, 2 do
  local s = tonumber(marks[j])
  if s ~= nil and s >= 0 and s < shards then
    seen = seen + 1
    local v = tonumber(marks[j + 1])
    if low == nil or v < low then low, low_text = v, marks[j + 1] end
  end
end
if seen < shards then low, low_text = nil, false end
local floor = redis.call('ZRANGE', ARGV[12], 0, 0, 'WITHSCORES')
if low ~= nil and floor[2] ~= nil and tonumber(floor[2]) - 1 < low then
  low = tonumber(floor[2]) - 1
  low_text = string.format('%d', low)
end
local hi = low_text
if upto and (low == nil or tonumber(upto) > low) then hi = upto end
local ids, datas, more = {}, {}, 0
if hi then
  ids = redis.call('ZRANGEBYSCORE', waiting, '-inf', hi, 'LIMIT', 0, limit + 1)
  if #ids > limit then
    more = 1
    ids[#ids] = nil
  end
  if #ids > 0 then datas = redis.call('HMGET', wdata, unpack(ids)) end
end
local is_paused = 0
if redis.call('HEXISTS', paused_key, '*') == 1 or redis.call('HEXISTS', paused_key, flow) == 1 then
  is_paused = 1
end
return {rev, upto or false, blob or false, low_text, more, is_paused, ids, datas,
        redis.call('HGETALL', released), redis.call('HGETALL', heldn), redis.call('HGETALL', totals)}
