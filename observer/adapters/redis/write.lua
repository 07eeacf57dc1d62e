-- One batch of the observer, applied atomically. Key names and the value layout come from
-- observer/adapters/redis/keys.py: a slot is field f of bucket hash b, its value its due time
-- (8 bytes, big-endian two's complement epoch ms; NONE: not due) then its state; the shard's
-- due index idx scores each bucket (member m = <flow>:<n>) with the earliest due time among
-- its fields.
-- ARGV (flat, counted groups):
--   n_puts,   then per put:   b, idx, m, f, value, ttl_ms, hist_key ('' when n = 0), cap, n,
--                             entry*n
--   n_dels,   then per del:   b, idx, m, f, hist_key
--   n_stale,  then per stale: b, idx, m, f   (the slot's timers are dropped, its state kept)
--   n_odel,   then per entry: outbox_key, observer_id
--   n_oadd,   then per entry: outbox_key, observer_id, record
--   stats_key, n_stats, then per stat: field, increment
--   then the guardrails' block (see there)
local a = ARGV
local i = 1

-- NONE and due_of come from value.lua, which the store puts before this script.

-- Per bucket touched: `low` is a lower bound of its fields' due times, exact unless `dirty`
-- (the field that held the earliest moved later or left: the bucket is read again at the end);
-- `was` is its score in the index before the batch; `ttl` the longest TTL written into it.
local buckets, order = {}, {}
local function bucket(b, idx, m)
  local r = buckets[b]
  if r == nil then
    local s = redis.call('ZSCORE', idx, m)
    s = s and tonumber(s) or nil
    r = {idx = idx, m = m, low = s, was = s, dirty = false, ttl = 0}
    buckets[b] = r
    order[#order + 1] = b
  end
  return r
end
local function moved(r, old, new)
  if old and new ~= old and (r.low == nil or old <= r.low) then r.dirty = true end
  if new and (r.low == nil or new < r.low) then r.low = new end
end

local n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  local b, idx, m, f, v, ttl, hist, cap, k =
    a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], tonumber(a[i + 5]), a[i + 6], tonumber(a[i + 7]), tonumber(a[i + 8])
  i = i + 9
  local r = bucket(b, idx, m)
  moved(r, due_of(redis.call('HGET', b, f)), due_of(v))
  redis.call('HSET', b, f, v)
  if ttl > r.ttl then r.ttl = ttl end
  if k > 0 then
    -- the history's safety-net TTL follows its slot's as of its last entry (most slots have no
    -- history: no call for them)
    redis.call('RPUSH', hist, unpack(a, i, i + k - 1))
    i = i + k
    redis.call('LTRIM', hist, -cap, -1)
    redis.call('PEXPIRE', hist, ttl)
  end
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  local b, f = a[i], a[i + 3]
  moved(bucket(b, a[i + 1], a[i + 2]), due_of(redis.call('HGET', b, f)), nil)
  redis.call('HDEL', b, f)
  redis.call('DEL', a[i + 4])
  i = i + 5
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  local b, f = a[i], a[i + 3]
  local v = redis.call('HGET', b, f)
  local d = due_of(v)
  if d then
    moved(bucket(b, a[i + 1], a[i + 2]), d, nil)
    redis.call('HSET', b, f, NONE .. string.sub(v, 9))
  end
  i = i + 4
end
-- The due index and the safety-net TTL of every bucket touched. A hash field has no TTL of
-- its own (Redis 7.0), so a bucket lives as long as its longest-lived slot: its TTL is only
-- ever raised (PTTL -1: a bucket created by this batch).
for _, b in ipairs(order) do
  local r = buckets[b]
  if r.dirty then
    local low = nil
    for _, v in ipairs(redis.call('HVALS', b)) do
      local d = due_of(v)
      if d and (low == nil or d < low) then low = d end
    end
    r.low = low
  end
  if r.low ~= r.was then
    if r.low then
      redis.call('ZADD', r.idx, string.format('%.17g', r.low), r.m)
    else
      redis.call('ZREM', r.idx, r.m)
    end
  end
  if r.ttl > 0 then
    local left = redis.call('PTTL', b)
    if left == -1 or (left >= 0 and left < r.ttl) then redis.call('PEXPIRE', b, r.ttl) end
  end
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  redis.call('HDEL', a[i], a[i + 1])
  i = i + 2
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', a[i], a[i + 1], a[i + 2])
  i = i + 3
end
local stats = a[i]
n = tonumber(a[i + 1]); i = i + 2
for _ = 1, n do
  redis.call('HINCRBY', stats, a[i], a[i + 1])
  i = i + 2
end

-- == guardrails (contract §7; docs/architecture.md) ==========================================
-- ARGV continues:
--   wm_key, n_wm, then per shard: shard, watermark_ms   (a shard's watermark is only raised)
--   n_wait, then per deviation: waiting_zset, wdata_hash, at_ms, id, data
--   paused_key, cap, n_gated, then per record: flow, outbox_key, observer_id, record,
--     held_key, heldn_key, action, held_entry, hist_key, published_entry, held_history
--   n_floor, then per slot: floor_zset, slot_id, due_ms ('' = no floor any more)
-- Returns the observer-ids of the gated records held (their flow, or every flow, is paused).
local wm_key = a[i]
n = tonumber(a[i + 1]); i = i + 2
for _ = 1, n do
  local old = redis.call('HGET', wm_key, a[i])
  if not old or tonumber(old) < tonumber(a[i + 1]) then redis.call('HSET', wm_key, a[i], a[i + 1]) end
  i = i + 2
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  redis.call('ZADD', a[i], a[i + 2], a[i + 3])
  redis.call('HSET', a[i + 1], a[i + 3], a[i + 4])
  i = i + 5
end
local paused_key, cap = a[i], tonumber(a[i + 1])
n = tonumber(a[i + 2]); i = i + 3
local held, paused = {}, {}
local everything = n > 0 and redis.call('HEXISTS', paused_key, '*') == 1
for _ = 1, n do
  local flow = a[i]
  if paused[flow] == nil then
    paused[flow] = everything or redis.call('HEXISTS', paused_key, flow) == 1
  end
  local hist, entry = a[i + 8], a[i + 9]
  if paused[flow] then
    redis.call('HSET', a[i + 4], a[i + 2], a[i + 7])
    redis.call('HINCRBY', a[i + 5], a[i + 6], 1)
    held[#held + 1] = a[i + 2]
    entry = a[i + 10]
  else
    redis.call('HSET', a[i + 1], a[i + 2], a[i + 3])
  end
  if redis.call('RPUSHX', hist, entry) > 0 then redis.call('LTRIM', hist, -cap, -1) end
  i = i + 11
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  if a[i + 2] == '' then redis.call('ZREM', a[i], a[i + 1])
  else redis.call('ZADD', a[i], a[i + 2], a[i + 1]) end
  i = i + 3
end
return held
