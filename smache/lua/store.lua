-- Stores a computed value with its dependencies, unless a value computed
-- from newer data is already stored; then tells the values that depend on
-- this one, if its payload changed.
--
-- KEYS[1]  the value key
-- ARGV[1]  base, ARGV[2] value id, ARGV[3] envelope,
-- ARGV[4]  the time-to-live "<ms> <expires at, Unix ms>" or "0" for none: past
--          it the value is served once more while it is refreshed, and the
--          key itself expires after twice the time-to-live,
-- ARGV[5]  the change generation the computation started from,
-- ARGV[6]  full arguments or "", ARGV[7] "1" for mark_stale functions else "0",
-- ARGV[8]  n, the number of collections in the function's relations(...),
-- ARGV[9 .. 8+n] those collections, ARGV[9+n ..] the complete dependency tokens
-- Returns the new value version, or -1 when a newer value is stored (or
-- the key is an alias).
local vkey = KEYS[1]
local base, id, data = ARGV[1], ARGV[2], ARGV[3]
local started = num(ARGV[5])
local old = call_on('HMGET', vkey, 'v', 'd', 'w', 'l', 'g', 'f')
-- Whoever stores ends the computation in flight: waiters wake and read.
redis.call('HDEL', vkey, 'c', 'cx')
redis.call('PUBLISH', base .. 'done', id)
if old[4] then
  -- The key became an alias while this value was computed: refused.
  return -1
end
if old[2] and tonumber(old[3]) and started < tonumber(old[3]) then
  return -1
end
local version = num(old[1]) + 1
redis.call('HSET', vkey, 'v', version, 'd', data, 'w', started, 'm', ARGV[7])
if not old[5] then redis.call('HSET', vkey, 'g', started) end
if ARGV[6] ~= '' then redis.call('HSET', vkey, 'a', ARGV[6]) end
local ttl, expires = string.match(ARGV[4], '^(%d+) (%d+)$')
if ttl and num(ttl) > 0 then
  redis.call('HSET', vkey, 'e', expires)
  redis.call('PEXPIRE', vkey, 2 * num(ttl))
else
  redis.call('HDEL', vkey, 'e')
  redis.call('PERSIST', vkey)
end
local relations = num(ARGV[8])
for i = 9, 8 + relations do
  -- Which functions a change in this collection concerns (see change.lua).
  redis.call('SADD', typed(base .. 'rel:' .. ARGV[i], 'set'), string.match(id, '^(.-#%d+):'))
end
set_edges(base, id, vkey, old[6], argv_from(9 + relations))
if not old[2] or payload(old[2]) ~= payload(data) then
  signal_dependents(base, 'v:' .. id)
end
return version
