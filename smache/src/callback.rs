//! Callbacks of finished tasks: what a callback gets ([`Completion`]) and
//! how a handler is kept. Below the task module, so that the instance
//! holding the handlers does not depend on it.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::envelope;
use crate::error::{Error, Result};

/// What a callback gets: the finished task's outcome and the arguments
/// given to [`Task::on_complete`](crate::Task::on_complete).
#[derive(Debug, Clone)]
pub struct Completion {
    task: String,
    outcome: std::result::Result<Vec<u8>, String>,
    args: String,
}

impl Completion {
    pub(crate) fn new(
        task: String,
        outcome: std::result::Result<Vec<u8>, String>,
        args: String,
    ) -> Self {
        Completion {
            task,
            outcome,
            args,
        }
    }

    /// The id of the task.
    #[must_use]
    pub fn task_id(&self) -> &str {
        &self.task
    }

    /// The computed value.
    ///
    /// # Errors
    /// [`Error::TaskFailed`] if the task failed; [`Error::Corrupt`] if the
    /// value does not decode as `V`.
    pub fn value<V: DeserializeOwned>(&self) -> Result<V> {
        match &self.outcome {
            Ok(data) => envelope::decode(data).and_then(|env| env.value()),
            Err(message) => Err(Error::TaskFailed {
                task: self.task.clone(),
                message: message.clone(),
            }),
        }
    }

    /// The task's error, if it failed.
    #[must_use]
    pub fn error(&self) -> Option<&str> {
        self.outcome.as_ref().err().map(String::as_str)
    }

    /// The arguments given when the callback was attached.
    ///
    /// # Errors
    /// [`Error::Decode`] if they do not decode as `A`.
    pub fn args<A: DeserializeOwned>(&self) -> Result<A> {
        serde_json::from_str(&self.args).map_err(|err| Error::Decode {
            what: "callback arguments",
            message: err.to_string(),
        })
    }
}

/// What a callback returns: an error is logged by the executor.
pub type CallbackResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A registered callback.
pub(crate) type Callback =
    Arc<dyn Fn(Completion) -> BoxFuture<'static, CallbackResult> + Send + Sync>;

/// Wraps a user's async handler as a [`Callback`].
pub(crate) fn callback<F, Fut>(handler: F) -> Callback
where
    F: Fn(Completion) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallbackResult> + Send + 'static,
{
    Arc::new(move |completion| Box::pin(handler(completion)))
}
