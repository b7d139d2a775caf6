-- An executor starts a job: clear the pending flag (a change from now on
-- queues a new job) and return the generation to compute from and the
-- full arguments; false if the value is gone.
--
-- KEYS[1]  the value key
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
  return false
end
redis.call('HDEL', KEYS[1], 'q')
local g = redis.call('HGET', KEYS[1], 'g') or '0'
local a = redis.call('HGET', KEYS[1], 'a') or ''
return {g, a}
