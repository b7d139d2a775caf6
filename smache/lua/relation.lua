-- The worker saw documents change whose collections some function
-- declares in `relations(...)` in some shard (lua/touch.lua said which):
-- one relation job each, answering for every shard (field `all`), queued
-- in this shard, the document's own, where its mapping is recorded
-- (lua/relate.lua). The worker runs this after touch.lua in every shard
-- and before saving its position: a crash between replays the change.
--
-- KEYS[1]  this shard's jobs stream
-- ARGV[1]  this shard's base, ARGV[2] the change ("i", "u", "r", "d" or ""),
-- ARGV[3]  the document before the change (BSON) or "",
-- ARGV[4..] tokens of the changed documents (`e:<collection>:<id key>`)
-- Returns the number of jobs queued.
local queued = 0
for i = 4, #ARGV do
  local coll, doc = document_of(ARGV[i])
  if coll then
    queue_relation(ARGV[1], coll, doc, ARGV[2], ARGV[3], true)
    queued = queued + 1
  end
end
return queued
