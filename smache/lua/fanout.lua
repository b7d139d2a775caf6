-- An executor signals one chunk of the dependants of a token with many
-- (see signal_dependents in common.lua), and queues the next chunk. SSCAN
-- returns every member present for the whole scan at least once; a value
-- that starts depending on the token later was computed from newer data.
--
-- KEYS[1]  the jobs stream
-- ARGV[1]  base, ARGV[2] token, ARGV[3] SSCAN cursor
-- Returns the number of recompute jobs queued.
local base, token = ARGV[1], ARGV[2]
local reply = redis.call('SSCAN', typed(base .. 'r:' .. token, 'set'), ARGV[3], 'COUNT', FANOUT_CHUNK)
local queued = 0
for _, id in ipairs(reply[2]) do
  queued = queued + signal(base, id)
end
if reply[1] ~= '0' then
  redis.call('XADD', typed(KEYS[1], 'stream'), '*', 'fan', token, 'cur', reply[1])
end
return queued
