-- An operator releases or drops held actions (guardrails, contract §7; keys:
-- observer/adapters/redis/keys.py, Keys.guard). A released entry moves to `released`, where the
-- flow's decider finds it and publishes its record (same observer-id); a dropped one is gone
-- (counted in `totals`). Either way its instance's history says so (if it still has one).
-- ARGV: mode (release|drop), held, heldn, released, totals, cap,
--   then per record: observer_id, action, hist_key, history_entry
-- Returns how many were still held.
local mode, held, heldn, released, totals, cap =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local done = 0
for i = 7, #ARGV, 4 do
  local oid, action, hist, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local v = redis.call('HGET', held, oid)
  if v then
    redis.call('HDEL', held, oid)
    if redis.call('HINCRBY', heldn, action, -1) <= 0 then redis.call('HDEL', heldn, action) end
    if mode == 'release' then
      redis.call('HSET', released, oid, v)
    else
      redis.call('HINCRBY', totals, 'dropped:' .. action, 1)
    end
    if redis.call('RPUSHX', hist, entry) > 0 then redis.call('LTRIM', hist, -cap, -1) end
    done = done + 1
  end
end
return done
