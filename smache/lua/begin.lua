-- A caller missed and is about to compute. Two jobs, atomically:
--
-- 1. Single flight: one computation of a value at a time across every
--    process. The first caller takes a compute lease (fields c = owner,
--    cx = lease end, ms); others get {"wait", ms} and wait for the
--    `{prefix}:done` notification that store.lua / release.lua publish.
--    A lease that ran out (its holder died) is taken over. A caller that
--    has not seen the value stored now (its version differs from the one
--    the caller last read; "" for none) is not granted the lease but told
--    {"read", version}: a value was stored since its last read (the
--    lease holder finished), and it reads that rather than computing
--    again.
-- 2. Record the value's known dependencies first, so a change made while
--    it computes is seen, and return {"go", g}: the change generation the
--    computation starts from.
--
-- KEYS[1]  the value key
-- ARGV[1]  base ("{prefix}:"), ARGV[2] value id, ARGV[3] full arguments or "",
-- ARGV[4]  lease in ms of a key that holds no value yet (orphan cleanup),
-- ARGV[5]  this caller's owner token, ARGV[6] compute lease in ms,
-- ARGV[7]  the value version the caller last read ("" for none),
-- ARGV[8..] tokens
local vkey = KEYS[1]
local base, id = ARGV[1], ARGV[2]
local link, holder, lease_end, g, has_value, f =
  unpack(call_on('HMGET', vkey, 'l', 'c', 'cx', 'g', 'v', 'f'))
if link then
  -- An alias now: compute without lease or edges (store.lua refuses it).
  return {'go', '0'}
end
if (has_value or '') ~= ARGV[7] then
  return {'read', has_value or ''}
end
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
lease_end = num(lease_end)
if holder and holder ~= ARGV[5] and lease_end > now_ms then
  return {'wait', tostring(lease_end - now_ms)}
end
g = num(g)
redis.call('HSET', vkey, 'g', g, 'c', ARGV[5], 'cx', now_ms + num(ARGV[6]))
if not has_value then
  if ARGV[3] ~= '' then redis.call('HSET', vkey, 'a', ARGV[3]) end
  redis.call('PEXPIRE', vkey, ARGV[4])
end
add_edges(base, id, vkey, f, argv_from(8))
return {'go', tostring(g)}
