-- An executor mapped a changed document of a related collection to the
-- entities it concerns for one function: refresh that function's values
-- of those entities and of the ones it concerned before the change (a
-- moved order changes two users' totals), in this shard, and, in the
-- document's own shard (the relation job's), remember the mapping, so
-- that a later change whose earlier state MongoDB does not give is still
-- mapped.
--
-- What the document concerned before is given: its pre-image's targets
-- and the mapping recorded at its last change smache saw, as the executor
-- read them (it decides, before this script, whether they are unknown and
-- the function's values must be marked stale; see executor/relation.rs).
-- With ARGV[6] "1" the record here is read again (it may have changed
-- since), counted too, and replaced by the current mapping.
--
-- On several shards the relation job's executor runs this in every other
-- shard holding values of the function with ARGV[6] "0", then in the
-- job's shard (the document's own) with "1".
--
-- KEYS[1]  the jobs stream (declares the hash tag for Redis Cluster routing)
-- ARGV[1]  base, ARGV[2] function head ("name#version"),
-- ARGV[3]  the source document ("<collection>:<id key>"),
-- ARGV[4]  the target collection, ARGV[5] "1" if the document is gone,
-- ARGV[6]  "1" to read and replace the mapping record here,
-- ARGV[7]  n, the number of target id keys it maps to now,
-- ARGV[8 .. 7+n] those, ARGV[8+n ..] the target id keys it mapped to
--          before the change
-- Returns the number of jobs queued.
local base, head, source, target = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local gone, record = ARGV[5] == '1', ARGV[6] == '1'
local now = num(ARGV[7])
local mkey = typed(base .. 'm:' .. head .. '|' .. source, 'set')
local targets = {}
if record then
  for _, t in ipairs(redis.call('SMEMBERS', mkey)) do targets[t] = true end
end
for i = 8, #ARGV do targets[ARGV[i]] = true end
local queued = 0
local mine = head .. ':'
for t in pairs(targets) do
  local token = 'e:' .. target .. ':' .. t
  for _, id in ipairs(redis.call('SMEMBERS', typed(base .. 'r:' .. token, 'set'))) do
    if string.sub(id, 1, #mine) == mine then
      queued = queued + signal(base, id, false, token)
    end
  end
end
if not record then
  return queued
end
redis.call('DEL', mkey)
if not gone then
  for i = 8, 7 + now do redis.call('SADD', mkey, ARGV[i]) end
end
return queued
