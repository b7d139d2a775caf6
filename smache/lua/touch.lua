-- A document changed, on a store of several shards (#16): what change.lua
-- does for its tokens, in one shard, but for its relation jobs. The worker
-- runs this in every shard that holds `r:<token>` of a changed token or
-- `rel:<collection>` of a changed document's collection (what this script
-- reads; the worker checks with one EXISTS per shard first), then queues
-- one relation job for each changed
-- document that some shard said has relations (lua/relation.lua, in the
-- document's own shard), then runs change.lua with no token to save its
-- position, so a crash between replays the change (its dependants
-- signalled twice: at most one more recompute each) and never loses it. A
-- worker that lost its lease may still signal here: a recompute too many,
-- never a change lost; saving its position is what the lease fences.
--
-- KEYS[1]  the shard's jobs stream
-- ARGV[1]  the shard's base, ARGV[2] the change ("i", "u", "r", "d" or ""),
-- ARGV[3]  the document before the change (BSON) or "",
-- ARGV[4..] changed tokens
-- Returns the number of jobs queued in the shard, then the tokens that
-- name documents of collections some function of the shard declares in
-- `relations(...)`.
local base = ARGV[1]
local queued, related = 0, {}
for i = 4, #ARGV do
  queued = queued + signal_dependents(base, ARGV[i])
  if related_document(base, ARGV[i]) then
    related[#related + 1] = ARGV[i]
  end
end
return {queued, unpack(related)}
