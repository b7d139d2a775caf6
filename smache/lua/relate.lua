-- An executor mapped a changed document of a related collection to the
-- entities it concerns for one function: refresh that function's values
-- of those entities and of the ones it concerned before the change (a
-- moved order changes two users' totals), in this shard, and, in the
-- document's own shard (the relation job's), remember the mapping, so
-- that a later change whose earlier state MongoDB does not give is still
-- mapped.
--
-- What the document concerned before comes from its pre-image (the change
-- event's `fullDocumentBeforeChange`, for collections with
-- changeStreamPreAndPostImages), else from the mapping recorded at its last
-- change smache saw. An insert concerned nothing before. With neither (an
-- update, replace or delete of a document smache never saw change), the
-- earlier targets are unknown: -1 is returned, after refreshing the
-- current ones. (The executor reads the record first, and marks every
-- value of the function stale before this script replaces it: a crash in
-- between then costs a stale-marking again, never one missed.)
--
-- On several shards the relation job's executor runs this in every other
-- shard holding values of the function with ARGV[7] "0" (no record: the
-- earlier targets given are the recorded ones and the pre-image's), then
-- in the job's shard with "1".
--
-- KEYS[1]  the jobs stream (declares the hash tag for Redis Cluster routing)
-- ARGV[1]  base, ARGV[2] function head ("name#version"),
-- ARGV[3]  the source document ("<collection>:<id key>"),
-- ARGV[4]  the target collection, ARGV[5] "1" if the document is gone,
-- ARGV[6]  "1" if its earlier targets are known (given below, or none: an
--          insert), ARGV[7] "1" to read and replace the mapping record
--          here, ARGV[8] n, the number of target id keys it maps to now,
-- ARGV[9 .. 8+n] those, ARGV[9+n ..] the target id keys it mapped to
--          before the change
-- Returns the number of jobs queued, or -1 when the earlier targets are
-- unknown (with ARGV[7] "1" only).
local base, head, source, target = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local gone, known, record = ARGV[5] == '1', ARGV[6] == '1', ARGV[7] == '1'
local now = num(ARGV[8])
local mkey = typed(base .. 'm:' .. head .. '|' .. source, 'set')
local targets = {}
local recorded = false
if record then
  for _, t in ipairs(redis.call('SMEMBERS', mkey)) do
    targets[t] = true
    recorded = true
  end
end
for i = 9, #ARGV do targets[ARGV[i]] = true end
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
  for i = 9, 8 + now do redis.call('SADD', mkey, ARGV[i]) end
end
if not recorded and not known then
  return -1
end
return queued
