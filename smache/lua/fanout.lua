-- An executor signals one chunk of the dependants of a token with many
-- (see signal_dependents in common.lua) and records how far it got; the
-- executor calls it again at once for the next chunk, the job held all
-- along, so every dependant is marked within about a script's time per
-- chunk, not behind the recomputes each chunk queues. The last chunk
-- acknowledges and deletes the job and its record in the same script.
--
-- Crash-safe without a chain of jobs: the record (`fo:<entry id>`, its
-- SSCAN cursor) is written in the script that signals the chunk, so a job
-- reclaimed from a dead executor resumes after the last chunk signalled.
-- The record's time to live bounds what a job that ends otherwise leaves
-- (deleted by hand; finished by an executor of an earlier version, which
-- reads no record); a job resumed past it starts over: dependants
-- signalled twice, at most one more recompute. A job already acknowledged
-- finds itself gone and does nothing, so a job run twice at once marks
-- nothing twice past the chunk in flight. SSCAN returns every member
-- present for the whole scan at least once; a value that starts depending
-- on the token later was computed from newer data.
--
-- Jobs queued by an earlier version as a chain (one job a chunk, field
-- `cur`) start from their own cursor.
--
-- KEYS[1]  the jobs stream
-- ARGV[1]  base, ARGV[2] token, ARGV[3] the job's SSCAN cursor, ARGV[4]
--          this job's stream entry id, ARGV[5] the consumer group, ARGV[6]
--          "1" for a change past max_fanout (mark stale only, no
--          recompute jobs)
-- Returns {recompute jobs queued, the cursor to go on from ("0": done)}.
local base, token, entry = ARGV[1], ARGV[2], ARGV[4]
local jobs = typed(KEYS[1], 'stream')
if #redis.call('XRANGE', jobs, entry, entry) == 0 then
  return {0, '0'}
end
local record = typed(base .. 'fo:' .. entry, 'string')
local cursor = redis.call('GET', record)
if type(cursor) ~= 'string' then
  cursor = ARGV[3]
end
local reply = redis.call('SSCAN', typed(base .. 'r:' .. token, 'set'), cursor, 'COUNT', FANOUT_CHUNK)
local lazy = ARGV[6] == '1'
local queued = 0
for _, id in ipairs(reply[2]) do
  queued = queued + signal(base, id, lazy, token)
end
if reply[1] ~= '0' then
  redis.call('SET', record, reply[1], 'EX', FANOUT_RECORD_TTL)
  return {queued, reply[1]}
end
redis.call('DEL', record)
redis.call('XACK', jobs, ARGV[5], entry)
redis.call('XDEL', jobs, entry)
return {queued, '0'}
