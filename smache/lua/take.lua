-- An executor woken by the bell reads new jobs from a shard it named, or
-- sweeps the shards after a read that took as many jobs as it asked for
-- (a store of several shards; other sweeps read with plain XREADGROUPs),
-- and starts the recompute jobs among them at once, start_value's step
-- (lua/start_value.lua): such a job costs no round trip of its own
-- before its function runs. Started only if the executor has the job's
-- function (ARGV[6..]): a job left for another executor (an
-- orphan, in a deploy) keeps its pending flag, as with start.lua. A job
-- started here and then left (the executor stops before it runs) is
-- reclaimed later and started again: its value's pending flag is clear
-- meanwhile, so a change queues a job of its own (a recompute too many,
-- never one missed).
--
-- KEYS[1]  the shard's jobs stream
-- ARGV[1]  the consumer group, ARGV[2] the consumer, ARGV[3] the most
--          jobs read, ARGV[4] the shard's base, ARGV[5] the minimum
--          interval between recomputes of one value (ms),
-- ARGV[6..] the function heads ("<name>#<version>") the executor has
-- Returns {the XREADGROUP reply (false: none), {per job, in order: 0 when
-- not started here (or starting it failed: the executor starts it
-- itself), else what start_value returned}}; never an error once the
-- jobs are read, which would leave them held, unseen, until reclaimed.
local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>')
if not read then
  return {false, {}}
end
local heads = {}
for i = 6, #ARGV do heads[ARGV[i]] = true end
local base, interval = ARGV[4], tonumber(ARGV[5]) or 0
local starts = {}
for i, entry in ipairs(read[1][2]) do
  local fields = entry[2]
  starts[i] = 0
  -- A recompute job is its value id alone (signal in common.lua).
  if type(fields) == 'table' and #fields == 2 and fields[1] == 'id' then
    local id = fields[2]
    -- Its function's head, as store.lua reads it.
    local head = string.match(id, '^(.-#%d+):')
    if head and heads[head] then
      local ok, start = pcall(start_value, base .. 'v:' .. id, interval)
      if ok then starts[i] = start end
    end
  end
end
return {read, starts}
