-- The worker saw documents change: queue a recompute of every value that
-- depends on them, and save the change stream's resume token, atomically,
-- so a crash never loses a change nor its jobs. Only the worker holding
-- the lease may do this (fencing: a worker that lost its lease and does
-- not know it yet is refused), and only from the position it last saved:
-- a saved token that is not what this worker expects (Redis lost its
-- data, or came back from an older snapshot without the jobs queued
-- since) is refused too, and the worker resumes from what is saved.
--
-- KEYS[1]  the resume token key, KEYS[2] the lease key
-- ARGV[1]  base, ARGV[2] this worker's id, ARGV[3] resume token ("" to keep),
-- ARGV[4]  the token this worker expects saved ("" for none),
-- ARGV[5..] changed tokens
-- A changed document of a collection that some function declares in
-- `relations(...)` also queues a relation job (fields `rel`, `doc`): an
-- executor maps the document to the entities whose values depend on it.
-- Returns the number of jobs queued, -1 if this worker lost the lease, or
-- -2 if the saved token is not the one it expects.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return -1
end
if (call_on('GET', KEYS[1]) or '') ~= ARGV[4] then
  return -2
end
local base = ARGV[1]
local queued = 0
for i = 5, #ARGV do
  local token = ARGV[i]
  queued = queued + signal_dependents(base, token)
  local coll, doc = string.match(token, '^e:([^:]+):(.+)$')
  if coll and redis.call('TYPE', base .. 'rel:' .. coll)['ok'] == 'set' then
    redis.call('XADD', typed(base .. 'jobs', 'stream'), '*', 'rel', coll, 'doc', doc)
    queued = queued + 1
  end
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3])
end
return queued
