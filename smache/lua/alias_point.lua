-- Re-points one alias on a store of several shards (#16): an alias of a
-- value that is becoming an alias itself names that value's target from
-- now on (so that no alias names an alias). Run in the alias's own shard,
-- after it was registered in the new target's set (alias_link.lua) and
-- before the value it names becomes an alias (alias_set.lua): a crash in
-- between leaves it naming the new target while the old one is still a
-- value, never a chain.
--
-- KEYS[1]  the alias's value key
-- ARGV[1]  the id it names now, ARGV[2] the id it is to name,
-- ARGV[3]  that one's full arguments, or ""
-- Returns 1 if re-pointed, 0 if it no longer names ARGV[1].
local okey = KEYS[1]
if redis.call('TYPE', okey)['ok'] ~= 'hash' or redis.call('HGET', okey, 'l') ~= ARGV[1] then
  return 0
end
redis.call('HSET', okey, 'l', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', okey, 'la', ARGV[3])
else
  redis.call('HDEL', okey, 'la')
end
return 1
