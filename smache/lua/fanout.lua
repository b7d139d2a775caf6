-- An executor signals one chunk of the dependants of a token with many
-- (see signal_dependents in common.lua), queues the next chunk first (so
-- the marking runs ahead of the recomputes each chunk queues), and
-- acknowledges its own job in the same script: a job run twice after a
-- lost acknowledgement finds itself gone and does nothing, so a chain is
-- never doubled. SSCAN returns every member present for the whole scan at
-- least once; a value that starts depending on the token later was
-- computed from newer data.
--
-- KEYS[1]  the jobs stream
-- ARGV[1]  base, ARGV[2] token, ARGV[3] SSCAN cursor, ARGV[4] this job's
--          stream entry id, ARGV[5] the consumer group, ARGV[6] "1" for a
--          change past max_fanout (mark stale only, no recompute jobs)
-- Returns the number of recompute jobs queued.
local base, token, entry = ARGV[1], ARGV[2], ARGV[4]
local jobs = typed(KEYS[1], 'stream')
if #redis.call('XRANGE', jobs, entry, entry) == 0 then
  return 0
end
local reply = redis.call('SSCAN', typed(base .. 'r:' .. token, 'set'), ARGV[3], 'COUNT', FANOUT_CHUNK)
local lazy = ARGV[6] == '1'
if reply[1] ~= '0' then
  if lazy then
    redis.call('XADD', jobs, '*', 'fan', token, 'cur', reply[1], 'lazy', '1')
  else
    redis.call('XADD', jobs, '*', 'fan', token, 'cur', reply[1])
  end
  ring(base)
end
local queued = 0
for _, id in ipairs(reply[2]) do
  queued = queued + signal(base, id, lazy, token)
end
redis.call('XACK', jobs, ARGV[5], entry)
redis.call('XDEL', jobs, entry)
return queued
