-- An executor gives a job up for good (malformed, failed on every attempt
-- of the retry policy, or for a function no live executor has had for the
-- orphan timeout): the job is copied to the dead-letter stream with why,
-- and acknowledged, in one step, so it is never both gone from the jobs
-- and missing from the dead letters.
--
-- KEYS[1]  the jobs stream, KEYS[2] the dead-letter stream
-- ARGV[1]  the job's entry id, ARGV[2] the consumer group, ARGV[3] why,
-- ARGV[4]  the executor giving it up, ARGV[5] how many dead letters to keep
-- Only for a job given up before it started (an orphan), in the same step:
-- ARGV[6]  base, ARGV[7] the id of the value the job is for,
-- ARGV[8]  "" for a recompute (its value's pending flag is cleared, see
--          abandon_recompute), or the id of the submitted task to fail with
--          the reason (its waiters wake, its callbacks are queued),
-- ARGV[9]  how long the failed task is kept (ms)
-- Returns 1 if the job was dead-lettered, 0 if it was gone already or is
-- held by another executor now.
local jobs = typed(KEYS[1], 'stream')
local found = redis.call('XRANGE', jobs, ARGV[1], ARGV[1])
if #found == 0 then
  return 0
end
-- Only while this executor holds it: one that was too slow, whose job
-- another executor reclaimed meanwhile, leaves it to that one.
if #redis.call('XPENDING', jobs, ARGV[2], ARGV[1], ARGV[1], 1, ARGV[4]) == 0 then
  return 0
end
local letter = {'job', ARGV[1], 'reason', ARGV[3], 'by', ARGV[4]}
for _, field in ipairs(found[1][2]) do
  letter[#letter + 1] = field
end
redis.call('XADD', typed(KEYS[2], 'stream'), 'MAXLEN', '~', ARGV[5], '*', unpack(letter))
redis.call('XACK', jobs, ARGV[2], ARGV[1])
redis.call('XDEL', jobs, ARGV[1])
local base, id, task = ARGV[6], ARGV[7], ARGV[8]
if base and id and id ~= '' then
  if task == '' then
    abandon_recompute(base, id)
  else
    finish_task(base, base .. 't:' .. task, base .. 'v:' .. id, task, 'f', ARGV[3], ARGV[9])
  end
end
return 1
