-- Removes a value (and its edges), or an alias, and tells the values that
-- depend on it.
--
-- A computation of the value may be running (a caller's, or an executor's
-- recompute) from its change generation of before the drop. So that its
-- store is not taken for a first value, and land fresh over a value
-- computed after the drop, the drop leaves a tombstone: the generation,
-- one past it, and the version (`x` marks it), which lookups see as no
-- value and which the next store carries on. It is kept for
-- DROPPED_KEPT_MS, or while the compute lease in flight lasts if longer.
--
-- KEYS[1]  the value key; ARGV[1] base, ARGV[2] value id
-- Returns 1 if a value or an alias was stored.
local DROPPED_KEPT_MS = 600000
local vkey = KEYS[1]
local existed = 0
local g, v, cx
if redis.call('TYPE', vkey)['ok'] == 'hash' then
  local link
  link, g, v, cx = unpack(redis.call('HMGET', vkey, 'l', 'g', 'v', 'cx'))
  if link then
    existed = 1
    redis.call('SREM', typed(ARGV[1] .. 'al:' .. link, 'set'), ARGV[2])
  end
  existed = math.max(existed, redis.call('HEXISTS', vkey, 'd'))
end
drop_edges(ARGV[1], ARGV[2])
redis.call('DEL', vkey)
if g or v then
  local now = redis.call('TIME')
  local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
  local keep = math.max(DROPPED_KEPT_MS, num(cx) - now_ms)
  redis.call('HSET', vkey, 'g', num(g) + 1, 'v', num(v), 'x', 1)
  redis.call('PEXPIRE', vkey, keep)
end
signal_dependents(ARGV[1], 'v:' .. ARGV[2])
return existed
