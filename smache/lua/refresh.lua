-- A reader found a value past its time-to-live: it is served once more,
-- and refreshed in the background as if a document it depends on changed.
-- One expiry, one refresh: nothing is done when the value is no longer
-- the one the reader found (a new one was stored since), when it is
-- already stale (a recompute is owed or under way: another reader's
-- refresh, or a change), or when a job is pending for it.
--
-- KEYS[1]  the jobs stream (declares the hash tag for Redis Cluster routing)
-- ARGV[1]  base, ARGV[2] value id, ARGV[3] the value version the reader found
-- Returns 1 if a job was queued.
local vkey = ARGV[1] .. 'v:' .. ARGV[2]
local found = redis.pcall('HMGET', vkey, 'v', 'g', 'w', 'q')
if type(found) ~= 'table' or found.err then
  return 0
end
local version, g, w, q = unpack(found)
if version ~= ARGV[3] or num(g) > num(w) or q then
  return 0
end
return signal(ARGV[1], ARGV[2])
