-- A flow's decider writes what it decided, atomically, unless another decider committed since
-- its snapshot (guardrails, contract §7; keys: observer/adapters/redis/keys.py, Keys.guard).
-- ARGV: state, rev, upto ('' = none), blob, waiting, wdata, released, held, heldn, cap,
--   n_decided, id*, n_released, oid*, n_outbox, (outbox_key, oid, record)*,
--   n_held, (oid, action, entry)*, n_hist, (hist_key, entry)*
-- Returns 1, or 0 when the stored rev is not `rev` (nothing written).
local a = ARGV
local state = a[1]
if (redis.call('HGET', state, 'rev') or '0') ~= a[2] then return 0 end
redis.call('HSET', state, 'rev', tostring(tonumber(a[2]) + 1), 'blob', a[4])
if a[3] == '' then redis.call('HDEL', state, 'upto') else redis.call('HSET', state, 'upto', a[3]) end
local waiting, wdata, released, held, heldn, cap = a[5], a[6], a[7], a[8], a[9], tonumber(a[10])
local i = 11
local n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  redis.call('ZREM', waiting, a[i])
  redis.call('HDEL', wdata, a[i])
  i = i + 1
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  redis.call('HDEL', released, a[i])
  i = i + 1
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', a[i], a[i + 1], a[i + 2])
  i = i + 3
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', held, a[i], a[i + 2])
  redis.call('HINCRBY', heldn, a[i + 1], 1)
  i = i + 3
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  if redis.call('RPUSHX', a[i], a[i + 1]) > 0 then redis.call('LTRIM', a[i], -cap, -1) end
  i = i + 2
end
return 1
