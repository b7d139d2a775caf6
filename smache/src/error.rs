//! The error type of the runtime crate.

use std::time::Duration;

/// A specialised [`Result`](std::result::Result) for smache operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside smache.
///
/// Calls to `#[computed]` functions never return this type: when the cache
/// cannot be used they compute the value directly and log a warning. It is
/// returned by the explicit API ([`Smache::invalidate`](crate::Smache::invalidate),
/// [`Smache::is_fresh`](crate::Smache::is_fresh), the builder, the generated
/// `key` helpers).
///
/// Each cause is printed once along the
/// [`source`](std::error::Error::source) chain: a Redis or MongoDB error
/// is part of this error's message, not also its `source()` (those
/// drivers' errors already print their own sources in their messages, so
/// a chain through them would repeat each one). Match
/// [`Error::Redis`] or [`Error::Mongo`] to reach the driver's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis answered with an error or could not be reached (its message
    /// is this error's; see above).
    #[error("redis: {0}")]
    Redis(redis::RedisError),
    /// MongoDB answered with an error or could not be reached (its message
    /// is this error's; see above).
    #[error("mongodb: {0}")]
    Mongo(mongodb::error::Error),
    /// A store operation took longer than the configured operation timeout.
    #[error("{op} timed out after {timeout:?}")]
    Timeout {
        /// The operation that timed out (`get`, `set`, `connect`, …).
        op: &'static str,
        /// The timeout that was exceeded.
        timeout: Duration,
    },
    /// Redis is known to be unreachable, so the operation was not tried:
    /// after a failure to reach it, operations skip it until a probe finds
    /// it back (see "Degrade, never break" in the README).
    #[error("store unavailable (Redis unreachable; skipped until a probe finds it back)")]
    Unavailable,
    /// A function argument or a value could not be serialized.
    #[error("could not serialize {what}: {message}")]
    Serialize {
        /// What was being serialized (`argument`, `value`).
        what: &'static str,
        /// The serializer's message.
        message: String,
    },
    /// A cache key would be longer than smache allows: an entity id over
    /// 1024 bytes, or arguments over 64 KiB once encoded (see
    /// [`CacheKey`](crate::CacheKey#key-scheme)). A call with such
    /// arguments computes without the cache.
    #[error("cache key too long: {what} takes {len} bytes, more than the {max} allowed")]
    KeyTooLong {
        /// What is too long (`an entity id`, `the arguments`).
        what: &'static str,
        /// Its encoded length in bytes.
        len: usize,
        /// The limit it exceeds.
        max: usize,
    },
    /// The bytes under a key are not a valid smache entry.
    #[error("corrupt cache entry: {0}")]
    Corrupt(String),
    /// The configuration is invalid (bad URL, bad prefix, …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Stored data did not decode as the type asked for: a callback's
    /// arguments ([`Completion::args`](crate::Completion::args)), a related
    /// document for a `relations(...)` mapper.
    #[error("could not decode {what}: {message}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// [`Smache::alias`](crate::Smache::alias) would make a key an alias of
    /// itself (directly or through other aliases).
    #[error("alias cycle: {alias} cannot stand for {target}, which stands for it")]
    AliasCycle {
        /// The key that was to become an alias.
        alias: String,
        /// The key it was to stand for.
        target: String,
    },
    /// A submitted task failed: the function returned an error (its
    /// message), panicked, or produced a value that cannot be serialized,
    /// on every attempt of the [`Retry`](crate::Retry) policy.
    #[error("task {task} failed: {message}")]
    TaskFailed {
        /// The task's id.
        task: String,
        /// What went wrong.
        message: String,
    },
    /// No task has this id: it was never submitted, or it finished longer
    /// ago than the task retention.
    #[error("no task {0} (never submitted, or expired)")]
    TaskNotFound(String),
    /// [`Smache::install`](crate::Smache::install) was called after a
    /// process-wide default was already in place.
    #[error("a process-wide smache default is already installed")]
    AlreadyInstalled,
    /// This process spreads the instance's Redis keys over another number
    /// of shards than the one recorded in Redis by the instance's first
    /// process ([`SmacheBuilder::redis_shards`](crate::SmacheBuilder::redis_shards)).
    /// A process with another count would read and write keys no other
    /// process looks at, so it does not use the store at all: its calls
    /// compute directly (never wrong, never cached) until the counts agree.
    /// The README's "Shards" section says how to change an instance's count.
    #[error(
        "the Redis store of instance `{prefix}` spreads its keys over {recorded} shards \
         (recorded in Redis, `{{{prefix}}}:config` field `shards`) but this process over \
         {configured}: it does not use the store and computes every value directly until they \
         agree (set the same count in every process: redis_shards / SMACHE_REDIS_SHARDS)"
    )]
    ShardCountMismatch {
        /// The instance's prefix.
        prefix: String,
        /// This process's count.
        configured: usize,
        /// What Redis holds (as found: it may not be a number).
        recorded: String,
    },
}

impl Error {
    /// Whether Redis could not be reached (refused, dropped, timed out, or
    /// skipped while known to be down), as opposed to answering with an
    /// error: what opens the Redis store's circuit breaker, which logs the
    /// outage once.
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Unavailable => true,
            Error::Redis(err) => {
                err.is_io_error()
                    || matches!(
                        err.kind(),
                        redis::ErrorKind::AuthenticationFailed
                            | redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                            // A Redis Cluster with no node to reach, or in
                            // a failover or slot migration the client's own
                            // retries did not outlast (redirected to a
                            // master that is down, to a node that redirects
                            // back, to a replica not yet promoted): callers
                            // compute directly meanwhile.
                            | redis::ErrorKind::ClusterConnectionNotFound
                            | redis::ErrorKind::Server(
                                redis::ServerErrorKind::ClusterDown
                                    | redis::ServerErrorKind::MasterDown
                                    | redis::ServerErrorKind::TryAgain
                                    | redis::ServerErrorKind::Moved
                                    | redis::ServerErrorKind::Ask
                                    | redis::ServerErrorKind::ReadOnly
                            )
                    )
                    || script_met_a_moving_slot(err)
            }
            _ => false,
        }
    }
}

/// Whether a script was stopped because its slot is not served here right
/// now: it touched a key the node no longer holds (the slot is migrating,
/// or moved; Redis 7 answers `ERR Script attempted to access a non local
/// key in a cluster node …`), or the cluster is down. Redis sends no
/// redirection the client could follow for a key a script did not declare.
fn script_met_a_moving_slot(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
        && err.detail().is_some_and(|detail| {
            detail.starts_with("Script attempted to access a non local key")
                || detail
                    .starts_with("Script attempted to execute a command while the cluster is down")
        })
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        Error::Redis(err)
    }
}

impl From<mongodb::error::Error> for Error {
    fn from(err: mongodb::error::Error) -> Self {
        Error::Mongo(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a server reply `-<line>` makes.
    fn replied(line: &str) -> Error {
        let reply = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap();
        Error::Redis(reply.extract_error().unwrap_err())
    }

    #[test]
    fn a_cluster_in_a_failover_or_a_slot_migration_is_unreachable_a_bad_command_is_not() {
        for line in [
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "READONLY You can't write against a read only replica.",
            "ERR Script attempted to access a non local key in a cluster node script: 161aeb1f, on @user_script:93.",
            "ERR Script attempted to execute a command while the cluster is down script: 161aeb1f, on @user_script:9.",
        ] {
            assert!(replied(line).is_unreachable(), "{line}");
        }
        for line in [
            "ERR unknown command 'NOPE'",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "NOSCRIPT No matching script. Please use EVAL.",
            "ERR user_script:3: Script attempted to access nonexistent global variable 'x'",
        ] {
            assert!(!replied(line).is_unreachable(), "{line}");
        }
    }

    /// The messages of `err` and of each of its sources, outermost first.
    fn chain(err: &Error) -> Vec<String> {
        let mut messages = vec![err.to_string()];
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            messages.push(cause.to_string());
            source = cause.source();
        }
        messages
    }

    #[test]
    fn each_cause_is_printed_once_along_the_chain() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let errors = [
            Error::from(redis::RedisError::from(refused())),
            Error::from(redis::RedisError::from((
                redis::ErrorKind::Io,
                "connection dropped",
                "by peer".to_owned(),
            ))),
            Error::from(mongodb::error::Error::from(refused())),
            Error::Timeout {
                op: "get",
                timeout: Duration::from_millis(500),
            },
            Error::Unavailable,
            Error::Serialize {
                what: "value",
                message: "not UTF-8".into(),
            },
            Error::KeyTooLong {
                what: "the arguments",
                len: 9,
                max: 8,
            },
            Error::Corrupt("bad envelope".into()),
            Error::Config("bad prefix".into()),
            Error::Decode {
                what: "callback arguments",
                message: "expected a string".into(),
            },
            Error::AliasCycle {
                alias: "a".into(),
                target: "b".into(),
            },
            Error::TaskFailed {
                task: "t1".into(),
                message: "boom".into(),
            },
            Error::TaskNotFound("t2".into()),
            Error::AlreadyInstalled,
        ];
        for err in &errors {
            let messages = chain(err);
            for (i, outer) in messages.iter().enumerate() {
                for inner in &messages[i + 1..] {
                    assert!(
                        !outer.contains(inner.as_str()),
                        "{inner:?} is printed twice in the chain {messages:?}"
                    );
                }
            }
        }
        // The driver's message is kept, once.
        assert!(
            chain(&errors[0])[0].contains("refused"),
            "{:?}",
            chain(&errors[0])
        );
        assert!(
            chain(&errors[2])[0].contains("refused"),
            "{:?}",
            chain(&errors[2])
        );
    }
}
