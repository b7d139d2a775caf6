//! Submitting a computation and awaiting it later: tasks, their status,
//! callbacks, and the retry policy of background work. The user's guide is
//! the crate documentation's "Tasks" section.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::{Call, Drive, Looked, Mode};
pub(crate) use crate::callback::{callback, Callback};
pub use crate::callback::{CallbackResult, Completion};
use crate::envelope;
use crate::error::{Error, Result};
use crate::instance::{Inner, Smache};
use crate::key::CacheKey;
pub use crate::retry::Retry;
use crate::runtime;
use crate::spec::FnSpec;
use crate::store::{RedisStore, Store, TaskPhase, TaskState};

/// The result of `f::submit(..)`: the cached value, or a task computing it.
#[derive(Debug)]
#[must_use]
pub enum Submitted<V> {
    /// The value was cached: no work was submitted.
    Ready(V),
    /// The value is being computed by an executor.
    Pending(Task<V>),
}

impl<V: DeserializeOwned> Submitted<V> {
    /// The value: at once if it was cached, else when the task finishes.
    ///
    /// # Errors
    /// [`Error::TaskFailed`] with the function's error; store errors.
    pub async fn wait(self) -> Result<V> {
        match self {
            Submitted::Ready(value) => Ok(value),
            Submitted::Pending(task) => task.wait().await,
        }
    }
}

/// What became of a task; see [`Smache::task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus<V> {
    /// Not finished yet.
    Pending,
    /// Finished with this value.
    Done(V),
    /// Finished with this error (after the retries of the [`Retry`] policy).
    Failed(String),
}

/// A submitted computation of one value; see [Tasks](crate#tasks).
pub struct Task<V> {
    smache: Smache,
    id: String,
    value_id: String,
    _value: PhantomData<fn() -> V>,
}

impl<V> fmt::Debug for Task<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("value", &self.value_id)
            .finish()
    }
}

impl<V> Task<V> {
    /// The task's id: stable, and valid in every process sharing the Redis
    /// (see [`Smache::task`]) until [`SmacheBuilder::task_retention`](crate::SmacheBuilder::task_retention)
    /// after it finishes.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<V: DeserializeOwned> Task<V> {
    /// The task's status now.
    ///
    /// # Errors
    /// [`Error::TaskNotFound`] once the task has expired; store errors.
    pub async fn status(&self) -> Result<TaskStatus<V>> {
        self.smache.task(&self.id).await
    }

    /// Waits for the task to finish. Woken by a notification when it does,
    /// and re-checked every 250 ms should one be lost. To bound the wait,
    /// wrap it in [`tokio::time::timeout`].
    ///
    /// # Errors
    /// [`Error::TaskFailed`] with the function's error;
    /// [`Error::TaskNotFound`] if the task expired; store errors.
    pub async fn wait(&self) -> Result<V> {
        let mut value_id = self.value_id.clone();
        loop {
            // Registered before checking, so a notification cannot slip by.
            let waiter = if value_id.is_empty() {
                None
            } else {
                let inner = Arc::clone(&self.smache.inner);
                let id = value_id.clone();
                runtime::in_tokio(async move { inner.store.waiter(&id).await }).await?
            };
            let (status, of) = self.smache.task_status(&self.id).await?;
            match status {
                TaskStatus::Pending => {}
                TaskStatus::Done(value) => return Ok(value),
                TaskStatus::Failed(message) => {
                    return Err(Error::TaskFailed {
                        task: self.id.clone(),
                        message,
                    })
                }
            }
            if value_id.is_empty() && !of.is_empty() {
                value_id = of; // a handle made from an id: now it is known
                continue;
            }
            let pause = Duration::from_millis(250);
            match waiter {
                Some(waiter) => {
                    let _ = tokio::time::timeout(pause, waiter).await;
                }
                None => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    /// Attaches a callback registered with
    /// [`SmacheBuilder::callback`](crate::SmacheBuilder::callback): when
    /// the task finishes, an executor that has a callback of this name runs
    /// it once with the outcome and `args`. Attaching to a task that has
    /// already finished queues the callback at once.
    ///
    /// # Errors
    /// [`Error::TaskNotFound`]; [`Error::Serialize`] if `args` cannot be
    /// serialized; [`Error::Config`] for a name with a newline; store errors.
    pub async fn on_complete<A: Serialize + ?Sized>(&self, callback: &str, args: &A) -> Result<()> {
        self.smache.on_complete(&self.id, callback, args).await
    }
}

/// How long a finished task (and its result) is kept by default.
pub const DEFAULT_TASK_RETENTION: Duration = Duration::from_secs(600);

impl Inner {
    /// The envelope of a task that is done: in the task's record, or for a
    /// value kept in MongoDB in the task's copy there.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the copy is gone; MongoDB errors.
    pub(crate) async fn task_value(&self, task: &str, state: &TaskState) -> Result<Vec<u8>> {
        if !envelope::is_reference(&state.result) {
            return Ok(state.result.clone());
        }
        let key = self.redis()?.task_key(task);
        match &self.values {
            Some(values) => values.task_value(&key).await?.ok_or_else(|| {
                Error::Corrupt(format!("the MongoDB copy of task {task}'s value is gone"))
            }),
            None => Err(Error::Config(
                "this task's value is kept in MongoDB: configure SmacheBuilder::mongodb".into(),
            )),
        }
    }

    /// Keeps a copy of a finished task's value (kept in MongoDB) beside it
    /// in MongoDB; the reference for the task's record.
    pub(crate) async fn keep_for_task(&self, task: &str, envelope: &[u8]) -> Result<Vec<u8>> {
        let values = self.values.as_ref().ok_or_else(|| {
            Error::Config("values kept in MongoDB need SmacheBuilder::mongodb".into())
        })?;
        let key = self.redis()?.task_key(task);
        values
            .keep_for_task(&key, envelope, self.settings.task_retention)
            .await?;
        Ok(envelope::reference(envelope, [0; 12]))
    }

    /// The Redis store, which tasks need.
    pub(crate) fn redis(&self) -> Result<&RedisStore> {
        match &self.store {
            Store::Redis(store) => Ok(store),
            Store::Memory(_) => Err(Error::Config(
                "submitted tasks need the Redis store and an executor (SmacheBuilder::redis_url)"
                    .into(),
            )),
        }
    }
}

impl Smache {
    /// The status of a task, from any process: pending, done with its
    /// value, or failed with its error.
    ///
    /// # Errors
    /// [`Error::TaskNotFound`] for an unknown or expired id;
    /// [`Error::Corrupt`] if the value does not decode as `V`; store errors.
    ///
    /// ```no_run
    /// # async fn run(smache: smache::Smache, id: String) -> Result<(), smache::Error> {
    /// match smache.task::<String>(&id).await? {
    ///     smache::TaskStatus::Pending => println!("still computing"),
    ///     smache::TaskStatus::Done(value) => println!("done: {value}"),
    ///     smache::TaskStatus::Failed(error) => println!("failed: {error}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn task<V: DeserializeOwned>(&self, id: &str) -> Result<TaskStatus<V>> {
        Ok(self.task_status(id).await?.0)
    }

    /// A task's status and the id of the value it computes.
    async fn task_status<V: DeserializeOwned>(&self, id: &str) -> Result<(TaskStatus<V>, String)> {
        let inner = Arc::clone(&self.inner);
        let task = id.to_owned();
        let found = runtime::in_tokio(async move {
            let Some(found) = inner.redis()?.task(&task).await? else {
                return Ok(None);
            };
            let result = match found.state {
                TaskPhase::Done => inner.task_value(&task, &found).await?,
                _ => found.result.clone(),
            };
            Ok::<_, Error>(Some((found, result)))
        })
        .await??;
        let Some((found, result)) = found else {
            return Err(Error::TaskNotFound(id.to_owned()));
        };
        let status = match found.state {
            TaskPhase::Pending => TaskStatus::Pending,
            TaskPhase::Done => TaskStatus::Done(envelope::decode(&result)?.value()?),
            _ => TaskStatus::Failed(String::from_utf8_lossy(&result).into_owned()),
        };
        Ok((status, found.value_id))
    }

    /// A handle on a task submitted by any process, to [`wait`](Task::wait)
    /// for it or attach callbacks. The handle does not check the id; its
    /// methods do.
    #[must_use]
    pub fn task_handle<V: DeserializeOwned>(&self, id: &str) -> Task<V> {
        Task {
            smache: self.clone(),
            id: id.to_owned(),
            value_id: String::new(),
            _value: PhantomData,
        }
    }

    /// Attaches a callback to the task `id`; see [`Task::on_complete`].
    ///
    /// # Errors
    /// As [`Task::on_complete`].
    pub async fn on_complete<A: Serialize + ?Sized>(
        &self,
        id: &str,
        callback: &str,
        args: &A,
    ) -> Result<()> {
        if callback.contains('\n') || callback.is_empty() {
            return Err(Error::Config(format!(
                "invalid callback name {callback:?} (empty, or with a newline)"
            )));
        }
        let args = serde_json::to_string(args).map_err(|err| Error::Serialize {
            what: "callback arguments",
            message: err.to_string(),
        })?;
        let inner = Arc::clone(&self.inner);
        let (task, callback) = (id.to_owned(), callback.to_owned());
        let attached =
            runtime::in_tokio(async move { inner.redis()?.attach(&task, &callback, &args).await })
                .await??;
        if attached {
            Ok(())
        } else {
            Err(Error::TaskNotFound(id.to_owned()))
        }
    }
}

/// The body of a generated `f::submit(..)`.
///
/// # Errors
/// When the key cannot be built, the instance has no Redis store, or Redis
/// cannot be reached (nothing is submitted then).
pub async fn submit<M: Mode<R>, R>(
    spec: &'static FnSpec,
    key: Result<CacheKey>,
) -> Result<Submitted<M::Value>> {
    let smache = Smache::current();
    let key = key?;
    smache.inner.redis()?;
    let call = Call::prepare(smache.clone(), spec, Ok(key)).ok_or(Error::Unavailable)?;
    // An alias submits the computation of the value it stands for.
    let at = match call.look::<M::Value>(Drive::Async).await {
        Looked::Hit(value, _, _) => return Ok(Submitted::Ready(value)),
        Looked::Miss(call, _) => call.at().clone(),
        Looked::Unreachable => return Err(Error::Unavailable),
    };
    let inner = Arc::clone(&smache.inner);
    let slot_at = at.clone();
    let id = runtime::in_tokio(async move {
        let fresh = bson::oid::ObjectId::new().to_hex();
        inner
            .redis()?
            .submit(slot_at.slot(), &fresh, inner.settings.task_retention)
            .await
    })
    .await??;
    Ok(Submitted::Pending(Task {
        smache,
        id,
        value_id: at.id,
        _value: PhantomData,
    }))
}
