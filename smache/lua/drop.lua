-- Removes a value (and its edges), or an alias, and tells the values that
-- depend on it.
--
-- KEYS[1]  the value key; ARGV[1] base, ARGV[2] value id
-- Returns 1 if a value or an alias was stored.
local existed = 0
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' then
  local link = redis.call('HGET', KEYS[1], 'l')
  if link then
    existed = 1
    redis.call('SREM', typed(ARGV[1] .. 'al:' .. link, 'set'), ARGV[2])
  end
  existed = math.max(existed, redis.call('HEXISTS', KEYS[1], 'd'))
end
drop_edges(ARGV[1], ARGV[2])
redis.call('DEL', KEYS[1])
signal_dependents(ARGV[1], 'v:' .. ARGV[2])
return existed
