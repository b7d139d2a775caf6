-- An executor mapped a changed document of a related collection to the
-- entities it concerns for one function: refresh that function's values
-- of those entities and of the ones it concerned before the change (a
-- moved order changes two users' totals), and remember the mapping, so
-- that a later change whose earlier state MongoDB does not give is still
-- mapped.
--
-- What the document concerned before comes from its pre-image (the change
-- event's `fullDocumentBeforeChange`, for collections with
-- changeStreamPreAndPostImages), else from the mapping recorded at its last
-- change smache saw. An insert concerned nothing before. With neither (an
-- update, replace or delete of a document smache never saw change), the
-- earlier targets are unknown: -1 is returned, after refreshing the
-- current ones, and the executor marks every value of the function stale.
--
-- KEYS[1]  the jobs stream (declares the hash tag for Redis Cluster routing)
-- ARGV[1]  base, ARGV[2] function head ("name#version"),
-- ARGV[3]  the source document ("<collection>:<id key>"),
-- ARGV[4]  the target collection, ARGV[5] "1" if the document is gone,
-- ARGV[6]  "1" if its earlier targets are known (given below, or none: an
--          insert), ARGV[7] n, the number of target id keys it maps to now,
-- ARGV[8 .. 7+n] those, ARGV[8+n ..] the target id keys it mapped to
--          before the change
-- Returns the number of jobs queued, or -1 when the earlier targets are
-- unknown.
local base, head, source, target = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local gone, known = ARGV[5] == '1', ARGV[6] == '1'
local now = num(ARGV[7])
local mkey = typed(base .. 'm:' .. head .. '|' .. source, 'set')
local targets = {}
local recorded = false
for _, t in ipairs(redis.call('SMEMBERS', mkey)) do
  targets[t] = true
  recorded = true
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
redis.call('DEL', mkey)
if not gone then
  for i = 8, 7 + now do redis.call('SADD', mkey, ARGV[i]) end
end
if not recorded and not known then
  return -1
end
return queued
