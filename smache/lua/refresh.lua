-- A reader found a value past its time-to-live: it is served once more,
-- and refreshed in the background as if a document it depends on changed.
--
-- KEYS[1]  the jobs stream (declares the hash tag for Redis Cluster routing)
-- ARGV[1]  base, ARGV[2] value id
-- Returns 1 if a job was queued.
return signal(ARGV[1], ARGV[2])
