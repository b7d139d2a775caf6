-- Prepended to start.lua and take.lua (without lua/common.lua, whose
-- preamble an executor's every read of a shard would pay).

-- Starts a recompute of the value at `vkey` (start.lua, take.lua): clears
-- its pending flag (a change from now on queues a new job) and returns
-- {the generation to compute from, the full arguments}; false if the
-- value is gone (or became an alias, or was dropped); {"wait", ms} if its
-- last recompute started less than `interval` ms ago (then nothing
-- changes: the flag stays, so changes keep coalescing into this job).
local function start_value(vkey, interval)
  if redis.call('TYPE', vkey)['ok'] ~= 'hash' then
    -- Gone.
    return false
  end
  local link, last, g, a, x = unpack(redis.call('HMGET', vkey, 'l', 's', 'g', 'a', 'x'))
  if link then
    -- An alias now (its target has jobs of its own).
    return false
  end
  if x and redis.call('HEXISTS', vkey, 'd') == 0 then
    -- Dropped (a tombstone, see drop.lua), and nothing stored since.
    return false
  end
  local now = redis.call('TIME')
  local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
  last = tonumber(last)
  if last and now_ms - last < interval then
    return {'wait', tostring(interval - (now_ms - last))}
  end
  redis.call('HSET', vkey, 's', now_ms)
  redis.call('HDEL', vkey, 'q')
  return {g or '0', a or ''}
end
