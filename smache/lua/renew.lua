-- The computation holding a compute lease is still running: extend it, so
-- a slow computation is not taken over while a dead one still is.
--
-- KEYS[1]  the value key; ARGV[1] owner token, ARGV[2] lease in ms
-- Returns 1 if the lease was extended, 0 if this owner no longer holds it.
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' or redis.call('HGET', KEYS[1], 'c') ~= ARGV[1] then
  return 0
end
local now = redis.call('TIME')
redis.call('HSET', KEYS[1], 'cx', now[1] * 1000 + math.floor(now[2] / 1000) + num(ARGV[2]))
-- A key that holds no value yet expires (orphan cleanup): not while the
-- computation that will fill it is alive, or a change could be missed.
if redis.call('HEXISTS', KEYS[1], 'd') == 0 then
  redis.call('PEXPIRE', KEYS[1], math.max(60000, 3 * num(ARGV[2])))
end
return 1
