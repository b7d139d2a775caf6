-- Removes a value and its edges, and tells the values that depend on it.
--
-- KEYS[1]  the value key; ARGV[1] base, ARGV[2] value id
-- Returns 1 if a value was stored.
local existed = redis.call('HEXISTS', KEYS[1], 'd')
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then existed = 0 end
redis.call('DEL', KEYS[1])
drop_edges(ARGV[1], ARGV[2])
signal_dependents(ARGV[1], 'v:' .. ARGV[2])
return existed
