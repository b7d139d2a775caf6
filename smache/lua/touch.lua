-- A document changed, on a store of several shards (#16): what change.lua
-- does for its tokens, in one shard. The worker runs this in every shard,
-- then change.lua with no token to save its position, so a crash between
-- replays the change (its dependants signalled twice: at most one more
-- recompute each) and never loses it. A worker that lost its lease may
-- still signal here: a recompute too many, never a change lost; saving
-- its position is what the lease fences.
--
-- KEYS[1]  the shard's jobs stream
-- ARGV[1]  the shard's base, ARGV[2] the change ("i", "u", "r", "d" or ""),
-- ARGV[3]  the document before the change (BSON) or "",
-- ARGV[4..] changed tokens
-- Returns the number of jobs queued in the shard.
local base, op, pre = ARGV[1], ARGV[2], ARGV[3]
local queued = 0
for i = 4, #ARGV do
  local token = ARGV[i]
  queued = queued + signal_dependents(base, token)
  queued = queued + relation_job(base, token, op, pre)
end
return queued
