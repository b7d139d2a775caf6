-- Marks values stale after the change stream's history was lost: each is
-- signalled as if a document it depends on had changed.
--
-- KEYS[1]  the jobs stream (declares the hash tag for Redis Cluster routing)
-- ARGV[1]  base, ARGV[2..] value ids
local queued = 0
for i = 2, #ARGV do
  queued = queued + signal(ARGV[1], ARGV[i])
end
return queued
