-- Attaches a callback to a task: kept with the task while it is pending
-- (finish.lua queues it), queued at once if the task already finished, so
-- that it runs exactly once either way.
--
-- KEYS[1]  the task key
-- ARGV[1]  base, ARGV[2] task id, ARGV[3] callback name, ARGV[4] its arguments
-- Returns 1, or 0 if the task is unknown (never submitted, or expired).
local tkey = KEYS[1]
local base, task = ARGV[1], ARGV[2]
if redis.call('TYPE', tkey)['ok'] ~= 'hash' then
  return 0
end
local state = redis.call('HGET', tkey, 's')
if state == 'p' then
  local cbkey = typed(base .. 't:' .. task .. ':cb', 'list')
  redis.call('RPUSH', cbkey, ARGV[3] .. '\n' .. ARGV[4])
  local ttl = redis.call('PTTL', tkey)
  if ttl > 0 then redis.call('PEXPIRE', cbkey, ttl) end
elseif state then
  redis.call('XADD', typed(base .. 'jobs', 'stream'), '*', 'cb', ARGV[3], 'args', ARGV[4], 'task', task)
  ring(base)
else
  return 0
end
return 1
