-- One batch of the observer, applied atomically. All key names come from observer/adapters/redis/keys.py.
-- ARGV (flat, counted groups):
--   n_puts,   then per put:   slot_key, state, ttl_ms, due_key, member, due_ms|"", hist_key, cap, n, entry*n
--   n_dels,   then per del:   slot_key, hist_key, due_key, member
--   n_stale,  then per stale: due_key, member
--   n_odel,   then per entry: outbox_key, observer_id
--   n_oadd,   then per entry: outbox_key, observer_id, record
--   stats_key, n_stats, then per stat: field, increment
local a = ARGV
local i = 1
local n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  local slot, state, ttl, due, member, score, hist, cap, m =
    a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5], a[i + 6], tonumber(a[i + 7]), tonumber(a[i + 8])
  i = i + 9
  redis.call('SET', slot, state, 'PX', ttl)
  if score == '' then redis.call('ZREM', due, member) else redis.call('ZADD', due, score, member) end
  if m > 0 then
    redis.call('RPUSH', hist, unpack(a, i, i + m - 1))
    i = i + m
    redis.call('LTRIM', hist, -cap, -1)
  end
  redis.call('PEXPIRE', hist, ttl)
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  redis.call('DEL', a[i], a[i + 1])
  redis.call('ZREM', a[i + 2], a[i + 3])
  i = i + 4
end
n = tonumber(a[i]); i = i + 1
for _ = 1, n do
  redis.call('ZREM', a[i], a[i + 1])
  i = i + 2
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
return 1
