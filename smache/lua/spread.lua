-- An executor runs a fan-all job (see fan_all in common.lua) in one other
-- shard of a store of several: the dependants of a value's token that
-- live in this shard are signalled, as the value's own shard signalled
-- its own inline. The executor runs this in every other shard, then
-- acknowledges the job; a crash before the acknowledgement means the job
-- is reclaimed and run again: each dependant signalled twice, at most one
-- more recompute (a pending one absorbs the second signal).
--
-- KEYS[1]  the shard's jobs stream (declares the hash tag for Redis
--          Cluster routing)
-- ARGV[1]  the shard's base, ARGV[2] the token ("v:<id>"), ARGV[3] "1"
--          when the value turned stale with no new value coming (its
--          dependants are only marked stale, a chunk at a time), else "0"
-- Returns the number of jobs queued in the shard.
local base, token = ARGV[1], ARGV[2]
if ARGV[3] == '1' then
  if redis.call('EXISTS', base .. 'r:' .. token) == 0 then
    return 0
  end
  call_on('XADD', base .. 'jobs', '*', 'fan', token, 'cur', '0', 'lazy', '1')
  ring(base)
  return 1
end
return signal_dependents(base, token, true)
