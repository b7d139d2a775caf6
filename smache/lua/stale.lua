-- Marks values stale: each is signalled as if a document it depends on had
-- changed (after the change stream's history was lost, say), or, lazily,
-- marked stale with no recompute coming, so its next read recomputes it
-- (a related document changed whose earlier targets are unknown).
--
-- KEYS[1]  the jobs stream (declares the hash tag for Redis Cluster routing)
-- ARGV[1]  base, ARGV[2] "1" lazily, else "0", ARGV[3..] value ids
local lazy = ARGV[2] == '1'
local queued = 0
for i = 3, #ARGV do
  queued = queued + signal(ARGV[1], ARGV[i], lazy)
end
return queued
