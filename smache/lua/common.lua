-- Shared by the scripts below (prepended to each of them).
--
-- Key layout, all under one hash tag `{prefix}` (written `base` = "{prefix}:"):
--   base.."v:"..id     value hash: v value version, d envelope, g change generation,
--                      w generation the stored value was computed at, q job pending,
--                      a full arguments (only when the id holds their hash),
--                      m "1" when the function is `mark_stale` (no background job),
--                      t when it went stale (0: no recompute is queued, the
--                      next read recomputes), s when its last recompute started
--                      (ms, Redis clock), e when its time-to-live ends (ms,
--                      the writer's clock), c/cx the compute lease (owner, end),
--                      k the id of the submitted task pending for it,
--                      l (an alias, instead of a value) the id it stands for
--   base.."al:"..id    set: the aliases of value `id`
--   base.."d:"..id     set: the dependency tokens of value `id` (forward edges)
--   base.."r:"..token  set: the value ids that depend on `token` (reverse edges)
--   base.."collections" set: the collections that some value depends on
--   base.."jobs"       stream of jobs: `id` a recompute; `id`+`task`(+`args`) a
--                      submitted task; `cb`+`args`+`task` a callback to run;
--                      `rel`+`doc` a related document changed; `fan`+`cur`
--                      signal the dependants of a token, a chunk at a time
--                      (`lazy` "1": past max_fanout, mark them stale only)
--   base.."dead"       stream of the jobs executors gave up (dead.lua): the
--                      job's own fields plus `job` its entry id, `reason`,
--                      `by` the executor
--   base.."config"     hash: `max_fanout` the most dependants one change
--                      recomputes eagerly (set by the watching worker)
--   base.."fns"        hash: `name#version` (a function) or `cb:<name>` (a
--                      callback) → when an executor that has it last said
--                      so (ms); what `inspect` reads to spot orphaned jobs
--   base.."t:"..task   task hash: s state (p pending, d done, f failed),
--                      v value id, r result (envelope, or error message)
--   base.."t:"..task..":cb"  list of the callbacks attached to a pending task
--   base.."done"       pub/sub channel: a value id whose computation ended
-- Tokens: "e:<collection>:<id key>" a document, "c:<collection>" a whole
-- collection, "v:<value id>" another computed value.

local function num(value)
  return tonumber(value) or 0
end

-- Returns `key`, first deleting it if it holds a Redis type other than
-- `kind` (foreign or corrupt data must never wedge a script).
local function typed(key, kind)
  local t = redis.call('TYPE', key)['ok']
  if t ~= kind and t ~= 'none' then
    redis.call('DEL', key)
  end
  return key
end

-- ARGV[from..] as a table, without unpack's limit on its size.
local function argv_from(from)
  local out = {}
  for i = from, #ARGV do out[#out + 1] = ARGV[i] end
  return out
end

-- What identifies an envelope's value: the payload (bytes 13.., after the
-- header), or for a reference to a value kept in MongoDB (flag bit 0 of
-- byte 4) its 32-byte digest, without the document id that follows it.
local function payload(envelope)
  local flags = string.byte(envelope, 4) or 0
  if flags % 2 == 1 then
    return string.sub(envelope, 13, 44)
  end
  return string.sub(envelope, 13)
end

-- The collection named by a token, if any.
local function collection_of(token)
  local coll = string.match(token, '^e:([^:]+):')
  if coll then return coll end
  return string.match(token, '^c:(.+)$')
end

local function add_edges(base, id, tokens)
  local dkey = typed(base .. 'd:' .. id, 'set')
  local collections = typed(base .. 'collections', 'set')
  for _, token in ipairs(tokens) do
    redis.call('SADD', dkey, token)
    redis.call('SADD', typed(base .. 'r:' .. token, 'set'), id)
    local coll = collection_of(token)
    if coll then redis.call('SADD', collections, coll) end
  end
end

local function drop_edges(base, id)
  local dkey = typed(base .. 'd:' .. id, 'set')
  for _, token in ipairs(redis.call('SMEMBERS', dkey)) do
    redis.call('SREM', typed(base .. 'r:' .. token, 'set'), id)
  end
  redis.call('DEL', dkey)
end

-- A document or value that `id` depends on changed: bump its generation
-- and queue one recompute job, unless one is already pending or the
-- function only wants its values marked stale. A value that
-- no longer exists only loses its edges. Returns 1 if a job was queued.
-- `lazy` (a change past max_fanout): no job; unless one is pending, the
-- value is marked as stale with none coming (`t` 0), so the next read
-- recomputes it rather than serving it stale.
local function signal(base, id, lazy)
  local vkey = base .. 'v:' .. id
  if redis.call('TYPE', vkey)['ok'] ~= 'hash' or redis.call('HEXISTS', vkey, 'l') == 1 then
    drop_edges(base, id)
    return 0
  end
  local g = num(redis.call('HGET', vkey, 'g'))
  if g <= num(redis.call('HGET', vkey, 'w')) then
    local now = redis.call('TIME')
    redis.call('HSET', vkey, 't', now[1] * 1000 + math.floor(now[2] / 1000))
  end
  redis.call('HSET', vkey, 'g', g + 1)
  if redis.call('HGET', vkey, 'm') == '1' then
    return 0
  end
  if lazy then
    if redis.call('HEXISTS', vkey, 'q') == 0 then
      redis.call('HSET', vkey, 't', 0)
    end
    return 0
  end
  if redis.call('HSETNX', vkey, 'q', 1) == 1 then
    redis.call('XADD', typed(base .. 'jobs', 'stream'), '*', 'id', id)
    return 1
  end
  return 0
end

-- Above this many dependants, a change is not signalled in the script at
-- hand but queued as a fan-out job (fields `fan`, `cur`) that executors run
-- in chunks of this size (fanout.lua), so that no script holds Redis for
-- long however many values depend on one document.
local FANOUT_CHUNK = 1000

-- The most dependants one change recomputes eagerly, unless the watching
-- worker set another (`config` max_fanout; WorkerOptions::max_fanout). Past
-- it they are marked stale in chunks and recomputed when next read.
local DEFAULT_MAX_FANOUT = 100000

local function max_fanout(base)
  return tonumber(redis.call('HGET', typed(base .. 'config', 'hash'), 'max_fanout'))
    or DEFAULT_MAX_FANOUT
end

local function signal_dependents(base, token)
  local rkey = typed(base .. 'r:' .. token, 'set')
  local n = redis.call('SCARD', rkey)
  if n == 0 then
    return 0
  end
  if n > max_fanout(base) then
    redis.call('XADD', typed(base .. 'jobs', 'stream'), '*', 'fan', token, 'cur', '0',
      'lazy', '1', 'n', n)
    return 1
  end
  if n > FANOUT_CHUNK then
    redis.call('XADD', typed(base .. 'jobs', 'stream'), '*', 'fan', token, 'cur', '0')
    return 1
  end
  local queued = 0
  for _, id in ipairs(redis.call('SMEMBERS', rkey)) do
    queued = queued + signal(base, id)
  end
  return queued
end

