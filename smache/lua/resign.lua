-- A worker that stops gives up the watcher lease, if it still holds it.
--
-- KEYS[1]  the lease key
-- ARGV[1]  this worker's id
-- Returns 1 if it held the lease (now free), else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
