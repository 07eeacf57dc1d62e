-- The values of slots, in one round trip (layout: observer/adapters/redis/keys.py).
-- ARGV: per slot: bucket_key, field. Returns the values in order, false where none is stored.
local out = {}
for j = 1, #ARGV, 2 do
  out[#out + 1] = redis.call('HGET', ARGV[j], ARGV[j + 1])
end
return out
