-- Step 1 of making an alias on a store of several shards (#16; one shard
-- runs alias.lua whole): registers the alias, and the aliases of the
-- alias about to be re-pointed, in the target's set `al:<target>`, in the
-- target's shard, before any of them names the target. Idempotent: a
-- crash after it leaves members that name something else, which every
-- reader of the set skips (a value's aliases are those of its members
-- whose link names it) and the alias's next drop or re-aliasing removes.
-- A target that is itself an alias is not registered to: the caller
-- runs this again on the value it names (chains are collapsed).
--
-- KEYS[1]  the target's value key
-- ARGV[1]  the target's shard base, ARGV[2] the target id,
-- ARGV[3..] the aliases to register
-- Returns {"ok"}, or {"alias", id, full arguments} when the target is an
-- alias of value `id` (nothing registered).
local tkey = KEYS[1]
if redis.call('TYPE', tkey)['ok'] == 'hash' then
  local link, args = unpack(redis.call('HMGET', tkey, 'l', 'la'))
  if link then
    return {'alias', link, args or ''}
  end
end
local set = typed(ARGV[1] .. 'al:' .. ARGV[2], 'set')
for i = 3, #ARGV do
  redis.call('SADD', set, ARGV[i])
end
return {'ok'}
