-- The worker saw a document change: queue a recompute of every value that
-- depends on it, and save the change stream's resume token with the
-- cluster time it stands for, atomically, so a crash never loses a change
-- nor its jobs. Only the worker holding the lease may do this (fencing: a
-- worker that lost its lease and does not know it yet is refused).
--
-- KEYS[1]  the resume token key, KEYS[2] the lease key, KEYS[3] the
--          position's cluster time key
-- ARGV[1]  base, ARGV[2] this worker's id, ARGV[3] resume token ("" to keep),
-- ARGV[4]  the cluster time the stream has reached ("" to keep): seconds
--          and increment as one number, seconds * 2^32 + increment,
-- ARGV[5]  the change: "i" insert, "u" update, "r" replace, "d" delete,
--          "" another kind or none,
-- ARGV[6]  the document before the change (BSON), when MongoDB gave it
--          (collections with changeStreamPreAndPostImages), else "",
-- ARGV[7..] changed tokens
-- A changed document of a collection that some function declares in
-- `relations(...)` also queues a relation job (fields `rel`, `doc`, `op`,
-- and `pre` the document before the change, if known): an executor maps
-- the document, before and after, to the entities whose values depend on it.
-- Returns the number of jobs queued, or -1 if this worker lost the lease.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
local base, op, pre = ARGV[1], ARGV[5], ARGV[6]
local queued = 0
for i = 7, #ARGV do
  local token = ARGV[i]
  queued = queued + signal_dependents(base, token)
  local coll, doc = string.match(token, '^e:([^:]+):(.+)$')
  if coll and redis.call('TYPE', base .. 'rel:' .. coll)['ok'] == 'set' then
    local job = {'rel', coll, 'doc', doc, 'op', op}
    if pre ~= '' then
      job[#job + 1] = 'pre'
      job[#job + 1] = pre
    end
    redis.call('XADD', typed(base .. 'jobs', 'stream'), '*', unpack(job))
    queued = queued + 1
  end
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4])
end
return queued
