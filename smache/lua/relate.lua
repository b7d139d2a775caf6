-- An executor mapped a changed document of a related collection to the
-- entities it concerns for one function: refresh that function's values
-- of those entities, the ones it concerned before too (a moved order
-- changes two users' totals), and remember the mapping, so that when the
-- document is deleted its old targets are known.
--
-- KEYS[1]  the jobs stream (declares the hash tag for Redis Cluster routing)
-- ARGV[1]  base, ARGV[2] function head ("name#version"),
-- ARGV[3]  the source document ("<collection>:<id key>"),
-- ARGV[4]  the target collection, ARGV[5] "1" if the document is gone,
-- ARGV[6..] the target id keys it maps to now
-- Returns the number of jobs queued, or -1 for a deleted document whose
-- mapping was never recorded.
local base, head, source, target = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local gone = ARGV[5] == '1'
local mkey = typed(base .. 'm:' .. head .. '|' .. source, 'set')
local targets = {}
for _, t in ipairs(redis.call('SMEMBERS', mkey)) do targets[t] = true end
if gone and next(targets) == nil then
  return -1
end
for i = 6, #ARGV do targets[ARGV[i]] = true end
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
  for i = 6, #ARGV do redis.call('SADD', mkey, ARGV[i]) end
end
return queued
