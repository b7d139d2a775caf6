-- Makes the value id ARGV[2] an alias of ARGV[3]: a lookup of the alias
-- reads the target's value. Chains are collapsed (an alias always names a
-- value that is not itself an alias), so a lookup follows one link at most;
-- aliases of the alias are re-pointed. The alias's own value and edges are
-- dropped, and the values that depended on it are told.
--
-- KEYS[1]  the alias's value key, KEYS[2] the target's value key
-- ARGV[1]  base, ARGV[2] alias id, ARGV[3] target id, ARGV[4] the target's
--          full arguments when its id holds only their hash, else ""
-- Returns the id the alias now names, or {err = "cycle"}.
local akey, tkey = KEYS[1], KEYS[2]
local base, alias, target, args = ARGV[1], ARGV[2], ARGV[3], ARGV[4] or ''

if target == alias then
  return redis.error_reply('cycle')
end
if redis.call('TYPE', tkey)['ok'] == 'hash' then
  local link = redis.call('HGET', tkey, 'l')
  if link then
    target = link
    args = redis.call('HGET', tkey, 'la') or ''
  end
end
if target == alias then
  return redis.error_reply('cycle')
end
drop_edges(base, alias)
redis.call('DEL', akey)
signal_dependents(base, 'v:' .. alias)
redis.call('HSET', akey, 'l', target)
if args ~= '' then redis.call('HSET', akey, 'la', args) end
local targets = typed(base .. 'al:' .. target, 'set')
local mine = typed(base .. 'al:' .. alias, 'set')
for _, other in ipairs(redis.call('SMEMBERS', mine)) do
  local okey = base .. 'v:' .. other
  if redis.call('TYPE', okey)['ok'] == 'hash' and redis.call('HGET', okey, 'l') == alias then
    redis.call('HSET', okey, 'l', target)
    if args ~= '' then redis.call('HSET', okey, 'la', args) else redis.call('HDEL', okey, 'la') end
    redis.call('SADD', targets, other)
  end
end
redis.call('DEL', mine)
redis.call('SADD', targets, alias)
return target
