-- An executor starts a job: clear the pending flag (a change from now on
-- queues a new job) and return the generation to compute from and the
-- full arguments; false if the value is gone (or became an alias).
--
-- Recomputes of one value are spaced at least ARGV[1] ms apart: if the
-- last one started more recently, nothing changes (the pending flag stays,
-- so changes keep coalescing into this job) and {"wait", ms} is returned.
-- A lone change is recomputed at once; a burst costs a few recomputes.
--
-- KEYS[1]  the value key; ARGV[1] the minimum interval in ms
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
  -- Gone.
  return false
end
local link, last, g, a, x = unpack(redis.call('HMGET', KEYS[1], 'l', 's', 'g', 'a', 'x'))
if link then
  -- An alias now (its target has jobs of its own).
  return false
end
if x and redis.call('HEXISTS', KEYS[1], 'd') == 0 then
  -- Dropped (a tombstone, see drop.lua), and nothing stored since.
  return false
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
last = tonumber(last)
local interval = tonumber(ARGV[1]) or 0
if last and now_ms - last < interval then
  return {'wait', tostring(interval - (now_ms - last))}
end
redis.call('HSET', KEYS[1], 's', now_ms)
redis.call('HDEL', KEYS[1], 'q')
return {g or '0', a or ''}
