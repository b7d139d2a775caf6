-- A computation of value ARGV[2] is about to read a value of another
-- shard (a nested call, on a store of several shards: #16). Its reverse
-- edge goes first, in this value's own shard: `r:v:<that value>` holds
-- the dependants of that value that live here, and any store of it from
-- now on signals them (its own shard inline, the others by its fan-out
-- job). So a store of it that the computation's read may have missed
-- bumps this value's generation, and this value's own store lands stale:
-- what store.lua's in-script version check does for nested values of its
-- own shard, which it cannot read across shards.
--
-- The token is added to the value's dependencies (`f`) too, so that
-- set_edges (the final store) keeps or removes the edge and drop_edges
-- removes it, as for any other; an abandoned computation leaves an edge
-- that the value's next store (or its expiry, then the next signal or
-- the worker's graph sweep) removes.
--
-- KEYS[1]  the computing value's key
-- ARGV[1]  its shard's base, ARGV[2] its id, ARGV[3] the token of the
--          value about to be read ("v:<id>")
-- Returns 1 once the edge is recorded; 0 if the computing value has no
-- hash (gone: begin.lua makes one for a computation) or is an alias, and
-- the edge would not be seen.
local vkey = KEYS[1]
if redis.call('TYPE', vkey)['ok'] ~= 'hash' then
  return 0
end
local link, f = unpack(redis.call('HMGET', vkey, 'l', 'f'))
if link then
  return 0
end
add_edges(ARGV[1], ARGV[2], vkey, f, {ARGV[3]})
return 1
