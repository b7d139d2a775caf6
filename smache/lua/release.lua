-- A computation ended without storing a value (an error, or a value that
-- cannot be serialized): give up the compute lease and wake the waiters,
-- who then compute for themselves.
--
-- KEYS[1]  the value key; ARGV[1] base, ARGV[2] value id, ARGV[3] owner token
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' and redis.call('HGET', KEYS[1], 'c') == ARGV[3] then
  redis.call('HDEL', KEYS[1], 'c', 'cx')
end
redis.call('PUBLISH', done_channel(ARGV[1]), ARGV[2])
return 1
