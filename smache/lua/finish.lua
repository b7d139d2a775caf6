-- A submitted task ended: record its result once (a task finishes exactly
-- once, whichever executor gets there first), queue one job per attached
-- callback, and wake the task's waiters.
--
-- KEYS[1]  the task key, KEYS[2] the value key
-- ARGV[1]  base, ARGV[2] task id, ARGV[3] "d" (done) or "f" (failed),
-- ARGV[4]  the value's envelope, or the error message,
-- ARGV[5]  how long the finished task is kept (ms)
-- Returns 1 if this call finished the task, 0 if it was not pending.
local tkey, vkey = KEYS[1], KEYS[2]
local base, task = ARGV[1], ARGV[2]
if redis.call('TYPE', tkey)['ok'] ~= 'hash' or redis.call('HGET', tkey, 's') ~= 'p' then
  return 0
end
local id = redis.call('HGET', tkey, 'v') or ''
redis.call('HSET', tkey, 's', ARGV[3], 'r', ARGV[4])
redis.call('PEXPIRE', tkey, ARGV[5])
if redis.call('TYPE', vkey)['ok'] == 'hash' and redis.call('HGET', vkey, 'k') == task then
  redis.call('HDEL', vkey, 'k')
end
local cbkey = base .. 't:' .. task .. ':cb'
if redis.call('TYPE', cbkey)['ok'] == 'list' then
  for _, entry in ipairs(redis.call('LRANGE', cbkey, 0, -1)) do
    local name, args = string.match(entry, '^([^\n]*)\n(.*)$')
    if name then
      redis.call('XADD', typed(base .. 'jobs', 'stream'), '*', 'cb', name, 'args', args, 'task', task)
    end
  end
end
redis.call('DEL', cbkey)
redis.call('PUBLISH', base .. 'done', id)
return 1
