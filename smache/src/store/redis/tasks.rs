//! Submitted tasks: submitting a computation, finishing it, attaching
//! callbacks, and reading a task's record (`{prefix}:t:<task>`).

use std::time::Duration;

use super::{is_wrong_type, millis, RedisStore};
use crate::error::{Error, Result};
use crate::store::{keys, Slot};

impl RedisStore {
    /// Submits the computation of a value to the executors; the id of the
    /// task pending for it (`task` if there was none).
    pub(crate) async fn submit(
        &self,
        slot: Slot<'_>,
        task: &str,
        retention: Duration,
    ) -> Result<String> {
        let mut conn = self.connection().await?;
        // On a sharded store a task lives in its value's shard, which its
        // id names: `<shard>.<id>`.
        let task = match self.shards.count() {
            1 => task.to_owned(),
            _ => format!("{}.{task}", self.shards.of(slot.id)),
        };
        let mut invocation = self.scripts.submit.key(slot.key);
        invocation
            .arg(slot.base())
            .arg(slot.id)
            .arg(slot.full_args)
            .arg(&task)
            .arg(millis(retention).max(1));
        self.bounded("submit", invocation.invoke_async(&mut conn))
            .await
    }

    /// Finishes a pending task; `false` if it was not pending.
    pub(crate) async fn finish_task(
        &self,
        task: &str,
        value_key: &str,
        result: &std::result::Result<Vec<u8>, String>,
        retention: Duration,
    ) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.finish.key(self.task_key(task));
        invocation
            .key(value_key)
            .arg(self.task_base(task))
            .arg(task);
        match result {
            Ok(data) => invocation.arg("d").arg(data.as_slice()),
            Err(message) => invocation.arg("f").arg(message.as_str()),
        };
        invocation.arg(millis(retention).max(1));
        let finished: i64 = self
            .bounded("finish", invocation.invoke_async(&mut conn))
            .await?;
        Ok(finished == 1)
    }

    /// Attaches a callback to a task; `false` if the task is unknown.
    pub(crate) async fn attach(&self, task: &str, callback: &str, args: &str) -> Result<bool> {
        let mut conn = self.connection().await?;
        let mut invocation = self.scripts.attach.key(self.task_key(task));
        invocation
            .arg(self.task_base(task))
            .arg(task)
            .arg(callback)
            .arg(args);
        let attached: i64 = self
            .bounded("attach", invocation.invoke_async(&mut conn))
            .await?;
        Ok(attached == 1)
    }

    /// The key of a task's record (see `lua/common.lua`), which also
    /// names the MongoDB copy of a task's value kept there.
    pub(crate) fn task_key(&self, task: &str) -> String {
        keys::task(self.task_base(task), task)
    }

    /// The base of a task's keys: its shard's, named by the id on a
    /// sharded store (an id without one, from no sharded store, has the
    /// first shard's).
    fn task_base(&self, task: &str) -> &str {
        let shard = match self.shards.count() {
            1 => None,
            _ => task
                .split_once('.')
                .and_then(|(shard, _)| shard.parse().ok()),
        };
        self.shards.base(shard.unwrap_or(0))
    }

    /// A task's state; `None` if it is unknown.
    pub(crate) async fn task(&self, task: &str) -> Result<Option<TaskState>> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.task_key(task)).arg("s").arg("r").arg("v");
        match self
            .bounded("task", cmd.query_async::<[Option<Vec<u8>>; 3]>(&mut conn))
            .await
        {
            Ok([Some(state), result, value]) => {
                let value_id = String::from_utf8_lossy(&value.unwrap_or_default()).into_owned();
                Ok(Some(match TaskPhase::parse(&state) {
                    Some(phase) => TaskState {
                        state: phase,
                        result: result.unwrap_or_default(),
                        value_id,
                    },
                    None => TaskState {
                        state: TaskPhase::Failed,
                        result: format!(
                            "the task's record is corrupt: its state is {:?}",
                            String::from_utf8_lossy(&state)
                        )
                        .into_bytes(),
                        value_id,
                    },
                }))
            }
            Ok([None, ..]) => Ok(None),
            Err(Error::Redis(err)) if is_wrong_type(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// What is recorded about a task.
#[derive(Debug)]
pub(crate) struct TaskState {
    /// Pending, done or failed.
    pub(crate) state: TaskPhase,
    /// The value's envelope (done), or the error message (failed).
    pub(crate) result: Vec<u8>,
    /// The id of the value the task computes.
    pub(crate) value_id: String,
}

/// Where a task is: its record's `s` field, one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskPhase {
    /// `p`: submitted, not finished.
    Pending,
    /// `d`: done; the result is the value's envelope.
    Done,
    /// `f`: failed; the result is the error message.
    Failed,
}

impl TaskPhase {
    /// The phase the stored field names; `None` for anything else.
    pub(crate) fn parse(stored: &[u8]) -> Option<Self> {
        // The first byte says (the scripts write one).
        match stored.first() {
            Some(b'p') => Some(TaskPhase::Pending),
            Some(b'd') => Some(TaskPhase::Done),
            Some(b'f') => Some(TaskPhase::Failed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TaskPhase;

    #[test]
    fn task_phases_parse_from_what_the_scripts_write() {
        assert_eq!(TaskPhase::parse(b"p"), Some(TaskPhase::Pending));
        assert_eq!(TaskPhase::parse(b"d"), Some(TaskPhase::Done));
        assert_eq!(TaskPhase::parse(b"f"), Some(TaskPhase::Failed));
        for other in [&b""[..], b"x", b"?"] {
            assert_eq!(TaskPhase::parse(other), None, "{other:?}");
        }
    }
}
