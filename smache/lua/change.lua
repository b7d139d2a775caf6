-- The worker saw documents change: queue a recompute of every value that
-- depends on them, and save the change stream's resume token, atomically,
-- so a crash never loses a change nor its jobs.
--
-- KEYS[1]  the resume token key
-- ARGV[1]  base, ARGV[2] resume token ("" to keep), ARGV[3..] changed tokens
-- Returns the number of jobs queued.
local base = ARGV[1]
local queued = 0
for i = 3, #ARGV do
  queued = queued + signal_dependents(base, ARGV[i])
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2])
end
return queued
