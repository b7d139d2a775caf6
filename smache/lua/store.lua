-- Stores a computed value with its dependencies, unless a value computed
-- from newer data is already stored; then tells the values that depend on
-- this one, if its payload changed.
--
-- A value read by the computation (a nested call) may have been stored
-- anew between that read and this store, before the reverse edge that
-- would have told this value existed. Then the value is still stored (its
-- caller has it, and it is no older than what was stored before) but as
-- stale, and its recompute queued (or, for a mark_stale function, the
-- next read recomputes it), as if that nested value had changed after it.
-- "Stored anew": its version or its computed-at time (envelope bytes
-- 5..12, the same in a reference) is not what was read, or it is gone.
--
-- KEYS[1]  the value key
-- ARGV[1]  base, ARGV[2] value id, ARGV[3] envelope,
-- ARGV[4]  the time-to-live "<ms> <expires at, Unix ms>" or "0" for none: past
--          it the value is served once more while it is refreshed, and the
--          key itself expires after twice the time-to-live,
-- ARGV[5]  the change generation the computation started from,
-- ARGV[6]  full arguments or "", ARGV[7] "1" for mark_stale functions else "0",
-- ARGV[8]  n, the number of collections in the function's relations(...),
-- ARGV[9 .. 8+n] those collections,
-- ARGV[9+n] r, the number of values the computation read (nested calls)
--          in this value's shard (on a store of several shards, those of
--          other shards are not passed: their edge was written in this
--          shard before they were read, edge.lua, and a store of them
--          signals this value instead),
-- ARGV[10+n .. 9+n+2r] each one's value id, then what was read of it:
--          "<version>:<computed-at, Unix ms>",
-- ARGV[10+n+2r ..] the complete dependency tokens
-- Returns the new value version, or -1 when a newer value is stored (or
-- the key is an alias).
local vkey = KEYS[1]
local base, id, data = ARGV[1], ARGV[2], ARGV[3]
local started = num(ARGV[5])
local old = call_on('HMGET', vkey, 'v', 'd', 'w', 'l', 'g', 'f')
-- Every computation starts on a hash (begin.lua makes one; an executor's
-- recompute starts only on one, start_value.lua), whose change generation
-- never goes back while it lives. Gone now (expired while it computed,
-- evicted, flushed), or made anew since (a reader's begin.lua, a task's
-- submit.lua: its generation from 0, below the one this computation
-- started from): a change in between found no value to signal, so what
-- was computed may be older than its data.
local vanished = redis.call('EXISTS', vkey) == 0 or num(old[5]) < started
-- Whoever stores ends the computation in flight: waiters wake and read.
redis.call('HDEL', vkey, 'c', 'cx')
redis.call('PUBLISH', done_channel(base), id)
if old[4] then
  -- The key became an alias while this value was computed: refused.
  return -1
end
-- A value computed from newer data is stored: one that started from a
-- later generation, or one stored on the hash made anew, which began
-- after this computation's hash was gone.
if old[2] and (vanished or (tonumber(old[3]) and started < tonumber(old[3]))) then
  return -1
end
local version = num(old[1]) + 1
redis.call('HSET', vkey, 'v', version, 'd', data, 'w', started, 'm', ARGV[7])
if vanished or not old[5] then redis.call('HSET', vkey, 'g', started) end
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
local reads = num(ARGV[9 + relations])
local first = 10 + relations
set_edges(base, id, vkey, old[6], argv_from(first + 2 * reads))
if vanished then
  -- Stored, as its caller has it, but stale with no recompute coming: the
  -- next read recomputes it. (A queued recompute could outlast twice a
  -- short TTL again, and again, with no one reading.)
  signal(base, id, true)
else
  for i = first, first + 2 * reads - 1, 2 do
    local now = redis.pcall('HMGET', base .. 'v:' .. ARGV[i], 'v', 'd')
    local mark = ''
    if type(now) == 'table' and not now.err and now[1] and now[2] then
      local at = 0
      for b = 12, 5, -1 do at = at * 256 + (string.byte(now[2], b) or 0) end
      mark = now[1] .. ':' .. string.format('%.0f', at)
    end
    if mark ~= ARGV[i + 1] then
      -- Stored anew since it was read: this value is stale from now.
      signal(base, id)
      break
    end
  end
end
if not old[2] or payload(old[2]) ~= payload(data) then
  signal_dependents(base, 'v:' .. id)
end
return version
