-- Reads the dependency graph around some tokens, for `inspect graph`
-- (store/graph.rs), with lua/common.lua in front. Read-only, and bounded:
-- a set is counted (SCARD) and at most `limit` of its members read
-- (SSCAN), never read whole; a value's
-- envelope is not returned, only its header (the computed-at time), and
-- not even read past `HEADER_READ_MAX` bytes.
--
-- KEYS[1]  the jobs stream (declares the hash tag for Redis Cluster routing)
-- ARGV[1]  base, ARGV[2] limit: the most members returned of one set (and
--          tokens of one value's `f`), ARGV[3..] the tokens to read:
--          "v:<value id>", "e:<collection>:<id key>", "c:<collection>"
-- Returns {now (ms, Redis clock), {entry, …}}, an entry per token:
--   {dependants, {some of them}, value, relations}
-- value (for "v:" tokens; else {"", {}, 0, 0, {}, 0, {}}):
--   {key type, fields, envelope size, dependencies, {some of them},
--    aliases, {some of them}}
--   fields: v g w q t e m c cx k l s, then the envelope header (the first
--   12 bytes of d) or false
-- relations (for "e:" and "c:" tokens; else {0, {}}): {functions with
--   relations on the collection, {{function head, mapped, {some of its
--   mapped id keys}, {per mapped id key, the value id "<head>:<id key>"
--   if it is stored, else false}}, …}}: what the document mapped to at its
--   last change smache saw (none for a "c:" token)
local base, limit = ARGV[1], tonumber(ARGV[2]) or 50

-- A value's envelope larger than this is not read for its header.
local HEADER_READ_MAX = 1048576

-- How many members set `key` holds and up to `limit` of them, sorted; a
-- key of another type counts as empty.
local function sample(key)
  local n = redis.pcall('SCARD', key)
  if type(n) ~= 'number' or n == 0 or limit <= 0 then
    return type(n) == 'number' and n or 0, {}
  end
  local out = {}
  if n <= limit then
    out = redis.call('SMEMBERS', key)
  else
    local seen, cursor = {}, '0'
    repeat
      local page = redis.call('SSCAN', key, cursor, 'COUNT', limit)
      cursor = page[1]
      for _, member in ipairs(page[2]) do
        if #out < limit and not seen[member] then
          seen[member] = true
          out[#out + 1] = member
        end
      end
    until cursor == '0' or #out >= limit
  end
  table.sort(out)
  return n, out
end

-- How many tokens a value's `f` holds (each ended by a NUL byte) and the
-- first `limit` of them, sorted.
local function dependencies(f)
  local n, out = 0, {}
  if type(f) == 'string' then
    for token in string.gmatch(f, '([^%z]*)%z') do
      n = n + 1
      if n <= limit then out[#out + 1] = token end
    end
  end
  table.sort(out)
  return n, out
end

local function value(id)
  local vkey = base .. 'v:' .. id
  local kind = redis.call('TYPE', vkey)['ok']
  if kind ~= 'hash' then
    return {kind, {}, 0, 0, {}, 0, {}}
  end
  local fields = redis.call('HMGET', vkey, 'v', 'g', 'w', 'q', 't', 'e', 'm', 'c', 'cx', 'k', 'l', 's')
  local size = redis.call('HSTRLEN', vkey, 'd')
  local header = false
  if size > 0 and size <= HEADER_READ_MAX then
    header = string.sub(redis.call('HGET', vkey, 'd'), 1, 12)
  end
  fields[#fields + 1] = header
  local n, deps = dependencies(redis.call('HGET', vkey, 'f'))
  local an, aliases = sample(base .. 'al:' .. id)
  return {kind, fields, size, n, deps, an, aliases}
end

local function relations(token)
  local coll, doc = document_of(token)
  if not coll then
    coll = string.match(token, '^c:(.+)$')
  end
  if not coll then
    return {0, {}}
  end
  local n, heads = sample(base .. 'rel:' .. coll)
  local out = {}
  for _, head in ipairs(heads) do
    if doc then
      local mkey = base .. 'm:' .. head .. '|' .. coll .. ':' .. doc
      local mapped, targets = sample(mkey)
      local values = {}
      for i, target in ipairs(targets) do
        local id = head .. ':' .. target
        values[i] = redis.call('EXISTS', base .. 'v:' .. id) == 1 and id or false
      end
      out[#out + 1] = {head, mapped, targets, values}
    else
      out[#out + 1] = {head, 0, {}, {}}
    end
  end
  return {n, out}
end

local entries = {}
for i = 3, #ARGV do
  local token = ARGV[i]
  local n, dependants = sample(base .. 'r:' .. token)
  local id = string.match(token, '^v:(.*)$')
  if id then
    entries[#entries + 1] = {n, dependants, value(id), {0, {}}}
  else
    entries[#entries + 1] = {n, dependants, {'', {}, 0, 0, {}, 0, {}}, relations(token)}
  end
end
local now = redis.call('TIME')
return {now[1] * 1000 + math.floor(now[2] / 1000), entries}
