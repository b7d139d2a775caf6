-- The last step of making an alias on a store of several shards (#16;
-- one shard runs alias.lua whole), in the alias's own shard: its value
-- and edges are dropped, the values of this shard that depended on it
-- are told (those of other shards by the fan-all job signal_dependents
-- queues if a value of another shard read it, and at once by the caller),
-- and it names the target. Its own aliases were registered in
-- the target's set and re-pointed before (alias_link.lua,
-- alias_point.lua): they leave its set.
--
-- KEYS[1]  the alias's value key
-- ARGV[1]  its shard's base, ARGV[2] the alias id, ARGV[3] the target id,
-- ARGV[4]  the target's full arguments or "",
-- ARGV[5..] the aliases of the alias that were re-pointed
-- Returns the members left in the alias's set: aliases of it made
-- meanwhile, which the caller re-points too.
local akey = KEYS[1]
local base, alias, target, args = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
drop_edges(base, alias)
redis.call('DEL', akey)
signal_dependents(base, 'v:' .. alias)
redis.call('HSET', akey, 'l', target)
if args ~= '' then redis.call('HSET', akey, 'la', args) end
local mine = typed(base .. 'al:' .. alias, 'set')
for i = 5, #ARGV do
  redis.call('SREM', mine, ARGV[i])
end
return redis.call('SMEMBERS', mine)
