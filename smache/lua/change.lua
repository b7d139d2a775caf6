-- The worker saw a document change: queue a recompute of every value that
-- depends on it, and save the change stream's resume token with the
-- cluster time it stands for, atomically, so a crash never loses a change
-- nor its jobs. Only the worker holding the lease may do this (fencing: a
-- worker that lost its lease and does not know it yet is refused), and
-- only from the position it last saved: a saved token that is not what
-- this worker expects (Redis lost its data, or came back from an older
-- snapshot without the jobs queued since) is refused too, and the worker
-- resumes from what is saved.
--
-- KEYS[1]  the resume token key, KEYS[2] the lease key, KEYS[3] the
--          position's cluster time key
-- ARGV[1]  base, ARGV[2] this worker's id, ARGV[3] resume token ("" to keep),
-- ARGV[4]  the token this worker expects saved ("" for none),
-- ARGV[5]  the cluster time the stream has reached ("" to keep): seconds
--          and increment as one number, seconds * 2^32 + increment,
-- ARGV[6]  the change: "i" insert, "u" update, "r" replace, "d" delete,
--          "" another kind or none,
-- ARGV[7]  the document before the change (BSON), when MongoDB gave it
--          (collections with changeStreamPreAndPostImages), else "",
-- ARGV[8..] changed tokens
-- A changed document of a collection that some function declares in
-- `relations(...)` also queues a relation job (fields `rel`, `doc`, `op`,
-- and `pre` the document before the change, if known): an executor maps
-- the document, before and after, to the entities whose values depend on it.
-- Returns the number of jobs queued, -1 if this worker lost the lease, or
-- -2 if the saved token is not the one it expects.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
if (call_on('GET', KEYS[1]) or '') ~= ARGV[4] then
  return -2
end
local queued = signal_change(ARGV[1], ARGV[6], ARGV[7], 8)
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3])
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[3], ARGV[5])
end
return queued
