-- A worker's heartbeat: it tells applications and `inspect` it is alive,
-- what it watches and how far behind it is (see `src/roster.rs`).
--
-- KEYS[1]  base.."workers": hash, worker id → "<heartbeat ms> <lives ms> <record>",
--          the heartbeat by the Redis clock, the record JSON
-- ARGV[1]  this worker's id, ARGV[2] its record, ARGV[3] how long it counts
--          as alive without another heartbeat (ms)
-- Drops the records of workers that missed theirs (they died), and lets the
-- hash expire with its longest-lived record. Returns the Redis time (ms).
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
  redis.call('DEL', KEYS[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lives = math.max(1, math.floor(tonumber(ARGV[3]) or 0))
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %d %s', now, lives, ARGV[2]))
local longest = lives
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local at, ttl = string.match(fields[i + 1], '^(%d+) (%d+) ')
  at, ttl = tonumber(at), tonumber(ttl)
  if not at or not ttl or at + ttl < now then
    redis.call('HDEL', KEYS[1], fields[i])
  elseif at + ttl - now > longest then
    longest = at + ttl - now
  end
end
redis.call('PEXPIRE', KEYS[1], longest)
return now
