-- A caller missed and is about to compute: record the value's known
-- dependencies first, so a change made while it computes is seen, and
-- return the change generation the computation starts from.
--
-- KEYS[1]  the value key
-- ARGV[1]  base ("{prefix}:"), ARGV[2] value id, ARGV[3] full arguments or "",
-- ARGV[4]  lease in ms for a key that holds no value yet, ARGV[5..] tokens
local vkey = KEYS[1]
local base, id = ARGV[1], ARGV[2]
local kind = redis.call('TYPE', vkey)['ok']
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', vkey)
end
local g = num(redis.call('HGET', vkey, 'g'))
if redis.call('HEXISTS', vkey, 'd') == 0 then
  redis.call('HSET', vkey, 'g', g)
  if ARGV[3] ~= '' then redis.call('HSET', vkey, 'a', ARGV[3]) end
  redis.call('PEXPIRE', vkey, ARGV[4])
end
add_edges(base, id, {unpack(ARGV, 5)})
return g
