-- An executor gives a job up for good (malformed, or failed on every
-- attempt of the retry policy): the job is copied to the dead-letter
-- stream with why, and acknowledged, in one step, so it is never both
-- gone from the jobs and missing from the dead letters.
--
-- KEYS[1]  the jobs stream, KEYS[2] the dead-letter stream
-- ARGV[1]  the job's entry id, ARGV[2] the consumer group, ARGV[3] why,
-- ARGV[4]  the executor giving it up, ARGV[5] how many dead letters to keep
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
return 1
