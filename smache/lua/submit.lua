-- A caller found a value missing (or not servable) and submits its
-- computation to the executors. Bulking: while a task for the value is
-- pending, every submit joins it and gets its id.
--
-- KEYS[1]  the value key
-- ARGV[1]  base, ARGV[2] value id, ARGV[3] full arguments or "",
-- ARGV[4]  the id for a new task, ARGV[5] how long a key with no value yet
--          is kept for it (ms); the task itself is kept until it finishes
--          (finish.lua then gives it its retention)
-- Returns the task id.
local vkey = KEYS[1]
local base, id = ARGV[1], ARGV[2]
local kind = redis.call('TYPE', vkey)['ok']
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('DEL', vkey)
end
local current = redis.call('HGET', vkey, 'k')
if current and redis.call('HGET', typed(base .. 't:' .. current, 'hash'), 's') == 'p' then
  return current
end
local task = ARGV[4]
local tkey = base .. 't:' .. task
redis.call('DEL', tkey)
redis.call('HSET', tkey, 's', 'p', 'v', id)
redis.call('HSET', vkey, 'k', task)
if redis.call('HEXISTS', vkey, 'd') == 0 then
  -- No value yet: keep the key (and with it the task's mark) for as long
  -- as the task, should it wait for an executor.
  if ARGV[3] ~= '' then redis.call('HSET', vkey, 'a', ARGV[3]) end
  if redis.call('PTTL', vkey) < num(ARGV[5]) then redis.call('PEXPIRE', vkey, ARGV[5]) end
end
redis.call('XADD', typed(base .. 'jobs', 'stream'), '*', 'id', id, 'task', task, 'args', ARGV[3])
ring(base)
return task
