-- Stores a value envelope and bumps the key's value version, atomically.
--
-- KEYS[1]  the value key (a hash: v = value version, d = envelope)
-- ARGV[1]  the envelope bytes
-- ARGV[2]  time-to-live in milliseconds, 0 for none
--
-- Returns the new value version. A key holding anything other than a hash
-- (a foreign or corrupt value) is replaced, and a version that is not a
-- number restarts at 1, so bad data under a key never blocks a write.
local kind = redis.call('TYPE', KEYS[1])['ok']
local version = 0
if kind == 'hash' then
  version = tonumber(redis.call('HGET', KEYS[1], 'v')) or 0
elseif kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
version = version + 1
redis.call('HSET', KEYS[1], 'v', version, 'd', ARGV[1])
local ttl = tonumber(ARGV[2]) or 0
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
return version
