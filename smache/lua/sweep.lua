-- The graph sweep (run by the watching worker): drops from reverse-edge
-- sets the values that no longer exist. A value that expires (its TTL)
-- takes its own record of its dependencies with it, but its id stays in
-- the reverse sets of what it depended on until each of them changes
-- (signal, in common.lua, then drops it); for documents that never
-- change, nothing else ever would. The rule is signal's: an id whose
-- value key holds no hash is gone, and a later store of it records its
-- edges anew in the same script that writes the hash (store.lua; edge.lua
-- needs the hash too), so no edge of a live value is removed. The sets
-- and the values they list share a shard, so each check and its removal
-- are one atomic step. A set left empty goes with its last member.
--
-- KEYS     reverse-edge sets (`r:<token>`), all of one shard (then the
--          slot's never-written key, see store/script.rs)
-- ARGV[1]  that shard's base, ARGV[2] SSCAN COUNT per set, ARGV[2 + i]
--          the SSCAN cursor of KEYS[i]
-- Returns {members removed, next cursor of KEYS[1], …} ("0": that set is
-- done). A key that is not a set is left alone (done).
local base, count = ARGV[1], ARGV[2]
local removed = 0
local reply = {0}
for i = 1, #ARGV - 2 do
  local rkey = KEYS[i]
  local next = '0'
  if redis.call('TYPE', rkey)['ok'] == 'set' then
    local page = redis.call('SSCAN', rkey, ARGV[2 + i], 'COUNT', count)
    next = page[1]
    for _, id in ipairs(page[2]) do
      if redis.call('TYPE', base .. 'v:' .. id)['ok'] ~= 'hash' then
        removed = removed + redis.call('SREM', rkey, id)
      end
    end
  end
  reply[i + 1] = next
end
reply[1] = removed
return reply
