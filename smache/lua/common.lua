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
--                      f its dependency tokens (forward edges), each ended
--                      by a NUL byte,
--                      l (an alias, instead of a value) the id it stands for,
--                      x "1" on a dropped value's tombstone (g and v kept,
--                      no value; see drop.lua)
--   base.."al:"..id    set: the aliases of value `id`
--   base.."r:"..token  set: the value ids that depend on `token` (reverse edges)
--   base.."collections" set: the collections that some value depends on
--   base.."jobs"       stream of jobs: `id` a recompute; `id`+`task`(+`args`) a
--                      submitted task; `cb`+`args`+`task` a callback to run;
--                      `rel`+`doc`+`op` (+`pre`, the document before the
--                      change) a related document changed; `fan`+`cur`
--                      signal the dependants of a token, a chunk at a time
--                      (`lazy` "1": past max_fanout, mark them stale only);
--                      `fan`+`all` (+`lazy`) signal the dependants of a
--                      value's token in every other shard (see fan_all)
--   base.."fo:"..entry string: the SSCAN cursor a `fan`+`cur` job of that
--                      entry id got to (fanout.lua); gone with the job
--   base.."dead"       stream of the jobs executors gave up (dead.lua): the
--                      job's own fields plus `job` its entry id, `reason`,
--                      `by` the executor
--   base.."config"     hash: `max_fanout` the most dependants one change
--                      recomputes eagerly (set by the watching worker);
--                      `orphan_timeout` (ms) how long executors let a job
--                      wait for one that has its function (set by each
--                      executor as it announces; read by `inspect`)
--   base.."fns"        hash: `name#version` (a function) or `cb:<name>` (a
--                      callback) → when an executor that has it last said
--                      so (ms, Redis clock); what `inspect` reads to spot orphaned jobs,
--                      and executors to give them up (dead.lua)
--   base.."t:"..task   task hash: s state (p pending, d done, f failed),
--                      v value id, r result (envelope, or error message)
--   base.."t:"..task..":cb"  list of the callbacks attached to a pending task
--   base.."done"       pub/sub channel: a value id whose computation ended
--   base.."bell"       pub/sub channel (several shards only): a job was
--                      queued in some shard (see ring)
-- Tokens: "e:<collection>:<id key>" a document, "c:<collection>" a whole
-- collection, "v:<value id>" another computed value.

-- The instance's `done` channel, from the base of any of its shards
-- ("{prefix#<n>}:", or "{prefix}:" unsharded): "{prefix}:done". A script
-- may publish on any channel, whatever slot it runs in.
local function done_channel(base)
  return (string.gsub(base, '#%d+}:$', '}:')) .. 'done'
end

-- Whether `base` is a shard of a store of several ("{prefix#<n>}:"), whose
-- executors read every shard's stream without blocking and wait on the
-- doorbell between empty sweeps.
local function sharded(base)
  return string.find(base, '#%d+}:$') ~= nil
end

-- Rings the instance's doorbell, "{prefix}:bell", once per script, after
-- it queued a job in a shard of a store of several (a plain PUBLISH
-- reaches every node of a cluster, whatever slot the script runs in). One
-- shard (executors block on its one stream): no bell.
local rung = false
local function ring(base)
  if not rung and sharded(base) then
    rung = true
    redis.call('PUBLISH', (string.gsub(base, '#%d+}:$', '}:')) .. 'bell', base)
  end
end

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

-- Whether `key` has the shape of a document's id key: "o:" and 24 hex
-- digits, "i:" and an integer, or "s:" and a JSON string (no quote or
-- lone backslash left inside once each escaped character is taken out).
local function is_id_key(key)
  if (#key == 26 and string.find(key, '^o:%x+$')) or string.find(key, '^i:%-?%d+$') then
    return true
  end
  local inner = string.match(key, '^s:"(.*)"$')
  if not inner then return false end
  inner = string.gsub(inner, '\\.', '')
  return not string.find(inner, '["\\]')
end

-- The collection and id key of a document token "e:<collection>:<id
-- key>", else nil. A collection's name may hold ':', an id key's shape
-- starts no tail of one: the first ':' followed by a whole id key ends
-- the collection (keys::split_document reads tokens the same way).
local function document_of(token)
  if string.sub(token, 1, 2) ~= 'e:' then return nil end
  local colon = string.find(token, ':', 4, true)
  while colon do
    local key = string.sub(token, colon + 1)
    if is_id_key(key) then
      return string.sub(token, 3, colon - 1), key
    end
    colon = string.find(token, ':', colon + 1, true)
  end
end

-- The collection named by a token, if any.
local function collection_of(token)
  local coll = document_of(token)
  if coll then return coll end
  return string.match(token, '^c:(.+)$')
end

-- Runs command `cmd` on `key`; if the key holds another type (foreign or
-- corrupt data), deletes it and runs the command again. One command on the
-- usual path, where `typed` costs a TYPE before each.
local function call_on(cmd, key, ...)
  local reply = redis.pcall(cmd, key, ...)
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, 'WRONGTYPE', 1, true) then
      redis.call('DEL', key)
      return redis.call(cmd, key, ...)
    end
    error(reply)
  end
  return reply
end

-- A value's dependencies (its forward edges) live in its own hash, field
-- `f`: each token followed by a NUL byte (tokens never hold one: ids and
-- arguments are JSON-escaped, collection names cannot). They go with the
-- value when it expires; the reverse sets say who depends on a token.
local function tokens_of(f)
  local out = {}
  if f then
    for token in string.gmatch(f, '([^%z]*)%z') do out[#out + 1] = token end
  end
  return out
end

-- Adds `tokens` to the dependencies of `id` (its hash at `vkey` holds `f`,
-- read by the caller), keeping those it has.
local function add_edges(base, id, vkey, f, tokens)
  local have = {}
  for _, token in ipairs(tokens_of(f)) do have[token] = true end
  local added = f or ''
  for _, token in ipairs(tokens) do
    if not have[token] then
      have[token] = true
      added = added .. token .. '\0'
      call_on('SADD', base .. 'r:' .. token, id)
      local coll = collection_of(token)
      if coll then call_on('SADD', base .. 'collections', coll) end
    end
  end
  if added ~= (f or '') then
    redis.call('HSET', vkey, 'f', added)
  end
end

-- Makes `tokens` the complete dependencies of `id` (`f` as stored before),
-- touching only what changed: a recompute that reads what it read before
-- costs one SADD per token (re-asserting each reverse edge, in case it
-- was lost), instead of dropping and re-adding every edge.
local function set_edges(base, id, vkey, f, tokens)
  local old = {}
  for _, token in ipairs(tokens_of(f)) do old[token] = true end
  local new, list = {}, {}
  for _, token in ipairs(tokens) do
    if not new[token] then
      new[token] = true
      list[#list + 1] = token .. '\0'
      call_on('SADD', base .. 'r:' .. token, id)
      if not old[token] then
        local coll = collection_of(token)
        if coll then call_on('SADD', base .. 'collections', coll) end
      end
    end
  end
  for token in pairs(old) do
    if not new[token] then
      call_on('SREM', base .. 'r:' .. token, id)
    end
  end
  local joined = table.concat(list)
  if joined ~= (f or '') then
    redis.call('HSET', vkey, 'f', joined)
  end
end

-- Removes every dependency of `id`, read from its hash (before the hash
-- itself goes).
local function drop_edges(base, id)
  local vkey = base .. 'v:' .. id
  local f = redis.pcall('HGET', vkey, 'f')
  if type(f) ~= 'string' then
    return
  end
  for _, token in ipairs(tokens_of(f)) do
    call_on('SREM', base .. 'r:' .. token, id)
  end
  redis.call('HDEL', vkey, 'f')
end

-- A value stored anew (or dropped, or turned stale with no job) tells
-- its dependants in its own shard inline; on a store of several shards,
-- also in every other one, through a job of its own shard's stream
-- (fields `fan` "v:<id>", `all` "1", `lazy` "1" to mark stale only) that
-- an executor runs as lua/spread.lua on each other shard, then
-- acknowledges (at least once: a crash means it is reclaimed and run
-- again, at worst an extra recompute). Only for a value that a value of
-- another shard has read: `rd:<id>`, in the value's own shard, lists the
-- shards of its readers, and each one is added there before that reader
-- reads it (after its reverse edge: see edge_first in values.rs), so a
-- store the read may have missed finds it. Returns 1 if a job was queued.
local function fan_all(base, token, lazy)
  if not sharded(base) then
    return 0
  end
  if string.sub(token, 1, 2) == 'v:' and
      redis.call('EXISTS', base .. 'rd:' .. string.sub(token, 3)) == 0 then
    return 0
  end
  if lazy then
    call_on('XADD', base .. 'jobs', '*', 'fan', token, 'all', '1', 'lazy', '1')
  else
    call_on('XADD', base .. 'jobs', '*', 'fan', token, 'all', '1')
  end
  ring(base)
  return 1
end

-- A document or value that `id` depends on changed: bump its generation
-- and queue one recompute job, unless one is already pending or the
-- function only wants its values marked stale. A value that
-- no longer exists only loses its edges. Returns 1 if a job was queued.
-- `lazy` (a change past max_fanout, or a related document whose earlier
-- targets are unknown): no job; unless one is pending, the
-- value is marked as stale with none coming (`t` 0), so the next read
-- recomputes it rather than serving it stale.
local function signal(base, id, lazy, token)
  local vkey = base .. 'v:' .. id
  if redis.call('TYPE', vkey)['ok'] ~= 'hash' then
    -- Gone (expired, say): it no longer depends on the token at hand; its
    -- other reverse edges go as their own tokens change, or with the
    -- worker's graph sweep (sweep.lua), by this same rule.
    if token then call_on('SREM', base .. 'r:' .. token, id) end
    return 0
  end
  local link, g, w, m, q, t = unpack(redis.call('HMGET', vkey, 'l', 'g', 'w', 'm', 'q', 't'))
  if link then
    drop_edges(base, id)
    if token then call_on('SREM', base .. 'r:' .. token, id) end
    return 0
  end
  g = num(g)
  local was_fresh = g <= num(w)
  local update = {'g', g + 1}
  local queue = m ~= '1' and not q and not lazy
  if lazy and m ~= '1' and not q then
    -- Stale with no recompute coming.
    update[#update + 1] = 't'
    update[#update + 1] = 0
  elseif was_fresh or (queue and t == '0') then
    -- Stale from now (or, marked before with no recompute coming, one is
    -- coming now).
    local now = redis.call('TIME')
    update[#update + 1] = 't'
    update[#update + 1] = now[1] * 1000 + math.floor(now[2] / 1000)
  end
  if queue then
    -- The job before its flag: should the XADD fail (out of memory), no
    -- flag is left claiming a job that does not exist.
    call_on('XADD', base .. 'jobs', '*', 'id', id)
    ring(base)
    update[#update + 1] = 'q'
    update[#update + 1] = 1
  end
  redis.call('HSET', vkey, unpack(update))
  if queue then
    return 1
  end
  -- No job (a mark_stale function, or past max_fanout): no new value will
  -- be stored to tell the values built on this one, so tell them now, once,
  -- as it turns stale: lazily past max_fanout, else as their functions want.
  -- (A pending job will store a new value and tell them.) The other
  -- shards' dependants, on a store of several, by a job of their own.
  if was_fresh and (m == '1' or not q) then
    local queued = fan_all(base, 'v:' .. id, lazy)
    if redis.call('EXISTS', base .. 'r:v:' .. id) == 1 then
      if lazy then
        call_on('XADD', base .. 'jobs', '*', 'fan', 'v:' .. id, 'cur', '0', 'lazy', '1')
      else
        call_on('XADD', base .. 'jobs', '*', 'fan', 'v:' .. id, 'cur', '0')
      end
      ring(base)
      queued = queued + 1
    end
    return queued
  end
  return 0
end

-- Above this many dependants, a change is not signalled in the script at
-- hand but queued as a fan-out job (fields `fan`, `cur`) that executors run
-- in chunks of this size (fanout.lua), so that no script holds Redis for
-- long however many values depend on one document.
local FANOUT_CHUNK = 1000

-- How long the record of a fan-out job's progress (fanout.lua) outlives
-- its last chunk's script: it is deleted with the job, so this only bounds
-- what a job that ends otherwise leaves behind (seconds; a day).
local FANOUT_RECORD_TTL = 86400

-- The most dependants one change recomputes eagerly, unless the watching
-- worker set another (`config` max_fanout; WorkerOptions::max_fanout). Past
-- it they are marked stale in chunks and recomputed when next read.
local DEFAULT_MAX_FANOUT = 100000

local function max_fanout(base)
  return tonumber(call_on('HGET', base .. 'config', 'max_fanout')) or DEFAULT_MAX_FANOUT
end

-- Signals the dependants of `token` in shard `base`; for a value's token
-- ("v:<id>") on a store of several shards, also queues the job that
-- signals them in every other shard (see fan_all), unless `here` (that
-- job's own step in each other shard, lua/spread.lua). Returns the number
-- of jobs queued.
local function signal_dependents(base, token, here)
  local queued = 0
  if not here and string.sub(token, 1, 2) == 'v:' then
    queued = fan_all(base, token)
  end
  local rkey = base .. 'r:' .. token
  local n = call_on('SCARD', rkey)
  if n == 0 then
    return queued
  end
  if n > max_fanout(base) then
    call_on('XADD', base .. 'jobs', '*', 'fan', token, 'cur', '0', 'lazy', '1', 'n', n)
    ring(base)
    return queued + 1
  end
  if n > FANOUT_CHUNK then
    call_on('XADD', base .. 'jobs', '*', 'fan', token, 'cur', '0')
    ring(base)
    return queued + 1
  end
  for _, id in ipairs(redis.call('SMEMBERS', rkey)) do
    queued = queued + signal(base, id, false, token)
  end
  return queued
end


-- The collection and document id key of `token` if it names a document
-- of a collection that some function of the shard of `base` declares in
-- `relations(...)`, else nil.
local function related_document(base, token)
  local coll, doc = document_of(token)
  if coll and redis.call('TYPE', base .. 'rel:' .. coll)['ok'] == 'set' then
    return coll, doc
  end
end

-- Queues a relation job in the shard of `base` (fields `rel`, `doc`, `op`,
-- `pre` the document before the change, if known, and `all` "1" for a
-- job that answers for every shard): an executor maps the document,
-- before and after, to the entities whose values depend on it.
local function queue_relation(base, coll, doc, op, pre, all)
  local job = {'rel', coll, 'doc', doc, 'op', op}
  if pre ~= '' then
    job[#job + 1] = 'pre'
    job[#job + 1] = pre
  end
  if all then
    job[#job + 1] = 'all'
    job[#job + 1] = '1'
  end
  redis.call('XADD', typed(base .. 'jobs', 'stream'), '*', unpack(job))
  ring(base)
end

-- A changed document of a collection that some function declares in
-- `relations(...)` queues a relation job in this (the only) shard.
-- Returns 1 if a job was queued.
local function relation_job(base, token, op, pre)
  local coll, doc = related_document(base, token)
  if not coll then
    return 0
  end
  queue_relation(base, coll, doc, op, pre, false)
  return 1
end

-- A change of the documents or values named by ARGV[first..] (`op`, `pre`
-- as for relation_job) in the shard of `base`: their dependants signalled
-- and, for documents of collections with relations, a relation job each.
-- Returns the number of jobs queued.
local function signal_change(base, op, pre, first)
  local queued = 0
  for i = first, #ARGV do
    local token = ARGV[i]
    queued = queued + signal_dependents(base, token)
    queued = queued + relation_job(base, token, op, pre)
  end
  return queued
end

-- A submitted task ended: record its result once (a task finishes exactly
-- once, whichever executor gets there first), queue one job per attached
-- callback, and wake the task's waiters. `tkey`/`vkey` the task's and its
-- value's keys, `state` "d" (done) or "f" (failed), `result` the value's
-- envelope or the error message, `retention` how long the finished task
-- is kept (ms). Returns 1 if this call finished the task, 0 if it was not
-- pending.
local function finish_task(base, tkey, vkey, task, state, result, retention)
  if redis.call('TYPE', tkey)['ok'] ~= 'hash' or redis.call('HGET', tkey, 's') ~= 'p' then
    return 0
  end
  local id = redis.call('HGET', tkey, 'v') or ''
  redis.call('HSET', tkey, 's', state, 'r', result)
  redis.call('PEXPIRE', tkey, retention)
  if redis.call('TYPE', vkey)['ok'] == 'hash' and redis.call('HGET', vkey, 'k') == task then
    redis.call('HDEL', vkey, 'k')
  end
  local cbkey = base .. 't:' .. task .. ':cb'
  if redis.call('TYPE', cbkey)['ok'] == 'list' then
    for _, entry in ipairs(redis.call('LRANGE', cbkey, 0, -1)) do
      local name, args = string.match(entry, '^([^\n]*)\n(.*)$')
      if name then
        redis.call('XADD', typed(base .. 'jobs', 'stream'), '*', 'cb', name, 'args', args, 'task', task)
        ring(base)
      end
    end
  end
  redis.call('DEL', cbkey)
  redis.call('PUBLISH', done_channel(base), id)
  return 1
end

-- The recompute job of value `id` was given up before it started (no
-- executor has its function): the pending flag it held goes, so the next
-- change queues a job again; a value still stale has no recompute coming
-- (`t` 0: its next caller recomputes it rather than being served it), and
-- the values built on it are told now, as `signal` tells them of a value
-- that turns stale with no job (the job would have told them).
local function abandon_recompute(base, id)
  local vkey = base .. 'v:' .. id
  if redis.call('TYPE', vkey)['ok'] ~= 'hash' then
    return
  end
  local link, g, w = unpack(redis.call('HMGET', vkey, 'l', 'g', 'w'))
  if link then
    return
  end
  redis.call('HDEL', vkey, 'q')
  if num(g) > num(w) then
    redis.call('HSET', vkey, 't', 0)
    fan_all(base, 'v:' .. id)
    if redis.call('EXISTS', base .. 'r:v:' .. id) == 1 then
      call_on('XADD', base .. 'jobs', '*', 'fan', 'v:' .. id, 'cur', '0')
      ring(base)
    end
  end
end
