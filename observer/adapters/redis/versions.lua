-- Open and retained instances per flow version in some bucket hashes of one flow and one shard
-- (KEYS; observer/adapters/redis/keys.py). A bucket value is the slot's due time (8 bytes) then
-- its state, a compact JSON array `[2,<version>,...]` (observer/engine/codec.py); a slot that
-- holds only early events (`[2,null,...]`) has no instance and is not counted.
-- Returns {version, count, version, count, ...}.
local counts = {}
for _, b in ipairs(KEYS) do
  for _, v in ipairs(redis.call('HVALS', b)) do
    local version = string.match(v, '^%[2,(%d+),', 9)
    if version then counts[version] = (counts[version] or 0) + 1 end
  end
end
local out = {}
for version, n in pairs(counts) do
  out[#out + 1] = version
  out[#out + 1] = n
end
return out
