-- The watcher lease: one worker at a time follows the change stream.
--
-- KEYS[1]  the lease key, KEYS[2] the fencing counter
-- ARGV[1]  this worker's id, ARGV[2] lease length in ms
-- Takes the lease if it is free, renews it if this worker holds it.
-- Returns the fencing token (a number that grows with every new holder),
-- or 0 if another worker holds the lease.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local fence = tonumber(redis.call('GET', KEYS[2]))
  if not fence or fence < 1 then
    -- The counter was lost or is corrupt: start a new one (never 0).
    redis.call('SET', KEYS[2], 1)
    fence = 1
  end
  return fence
end
if holder then
  return 0
end
if not tonumber(redis.call('GET', KEYS[2])) then
  redis.call('DEL', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
