-- A submitted task ended: record its result once (a task finishes exactly
-- once, whichever executor gets there first), queue one job per attached
-- callback, and wake the task's waiters (finish_task in common.lua).
--
-- KEYS[1]  the task key, KEYS[2] the value key
-- ARGV[1]  base, ARGV[2] task id, ARGV[3] "d" (done) or "f" (failed),
-- ARGV[4]  the value's envelope, or the error message,
-- ARGV[5]  how long the finished task is kept (ms)
-- Returns 1 if this call finished the task, 0 if it was not pending.
return finish_task(ARGV[1], KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
