//! [`SmacheBuilder`]: how a [`Smache`] instance is configured. Its
//! defaults and the environment are in [`config`], the connections it
//! assembles in [`connect`].

mod config;
mod connect;
mod debug;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::instance::{Parts, Settings, Smache};
use crate::spec::ValueStore;
use crate::store::{Store, DEFAULT_VALUES_COLLECTION};
use crate::task::{self, Callback, CallbackResult, Completion, Retry, DEFAULT_TASK_RETENTION};

use self::config::validate_prefix;
pub use self::config::{
    DEFAULT_COMPUTE_LEASE, DEFAULT_EXPECT_WORKER_WITHIN, DEFAULT_LOCAL_CACHE_CAPACITY,
    DEFAULT_MAX_STALE, DEFAULT_MAX_VALUE_SIZE, DEFAULT_MEMORY_CAPACITY, DEFAULT_OP_TIMEOUT,
    DEFAULT_ORPHAN_TIMEOUT, DEFAULT_PREFIX,
};
use self::connect::RedisSource;

/// Configures a [`Smache`] instance. Every setting has a default; with none
/// set, the instance uses the embedded in-process store.
///
/// ```
/// use std::time::Duration;
///
/// let smache = smache::Smache::builder()
///     .redis_url("redis://127.0.0.1:6379/")
///     .prefix("shop")
///     .default_ttl(Duration::from_secs(3600))
///     .build()?; // does not connect: Redis is reached on first use
/// assert_eq!(smache.backend(), smache::Backend::Redis);
/// # Ok::<(), smache::Error>(())
/// ```
#[derive(Default)]
#[must_use]
pub struct SmacheBuilder {
    redis: Option<RedisSource>,
    mongo: Option<mongodb::Database>,
    prefix: Option<String>,
    default_ttl: Option<Duration>,
    op_timeout: Option<Duration>,
    max_stale: Option<Duration>,
    compute_lease: Option<Duration>,
    memory_capacity: Option<u64>,
    local_cache_capacity: Option<u64>,
    redis_shards: Option<usize>,
    executor: bool,
    task_retention: Option<Duration>,
    retry: Option<Retry>,
    executor_concurrency: Option<usize>,
    orphan_timeout: Option<Duration>,
    callbacks: HashMap<String, Callback>,
    value_store: Option<ValueStore>,
    values_collection: Option<String>,
    max_value_size: Option<usize>,
    expect_worker_within: Option<Option<Duration>>,
}

impl SmacheBuilder {
    /// The key prefix, used as the Redis hash tag `{prefix}` (default
    /// `smache`). Instances with different prefixes never share values.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The time-to-live of values whose function sets none (default: none).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The bound on each store operation (default 500 ms). Past it the
    /// caller computes the value directly.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = Some(timeout);
        self
    }

    /// How long a stale value may still be served while its recompute is
    /// pending (default 30 s). A `write_through` value whose documents
    /// changed is returned as it is while an executor recomputes it; past
    /// this bound (executors down or behind) callers compute it themselves.
    pub fn max_stale(mut self, max_stale: Duration) -> Self {
        self.max_stale = Some(max_stale);
        self
    }

    /// The compute lease of a missing value (default 30 s): while a caller
    /// computes it, callers everywhere wait for its result instead of
    /// computing the same value. The lease is renewed every third of its
    /// length while the computation runs; if the computing process dies,
    /// one waiter takes over within one lease.
    pub fn compute_lease(mut self, lease: Duration) -> Self {
        self.compute_lease = Some(lease);
        self
    }

    /// The size bound of the embedded store in bytes (default 64 MiB).
    pub fn memory_capacity(mut self, bytes: u64) -> Self {
        self.memory_capacity = Some(bytes);
        self
    }

    /// The size bound, in bytes, of the in-process layer in front of the
    /// Redis store (default 64 MiB; `0` turns it off). Without this call
    /// the environment variable `SMACHE_LOCAL_CACHE_CAPACITY` may set it,
    /// so operators can size or disable the layer without a new build.
    ///
    /// Hits are answered from this process's memory, in about a
    /// microsecond, and stay coherent with Redis: the values are read over
    /// a connection with Redis's client tracking on, and Redis tells this
    /// process the moment any process writes one of them (a refresh, a
    /// stale mark, a delete, `FLUSHALL`), which drops it here. While that
    /// connection is down the layer serves nothing. The embedded store
    /// needs no layer and ignores this, and so does a store given as a
    /// [`redis_connection`](Self::redis_connection) (it knows no address
    /// to open the tracking connection to).
    ///
    /// ```
    /// let smache = smache::Smache::builder()
    ///     .redis_url("redis://127.0.0.1:6379/")
    ///     .local_cache_capacity(256 * 1024 * 1024) // or 0: every hit asks Redis
    ///     .build()?;
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn local_cache_capacity(mut self, bytes: u64) -> Self {
        self.local_cache_capacity = Some(bytes);
        self
    }

    /// Spreads the instance's keys in Redis over `count` shards, from 1 to
    /// 1024 (README, "Shards"): hash tags `{prefix#i}` whose Redis Cluster
    /// slots are evenly spaced, so that values, their graph, tasks and jobs
    /// spread over a cluster's masters (48: 16 on each of 3 masters of an
    /// even split). Every process of an instance (applications, executors,
    /// the worker) must use the same count, and with more than one,
    /// executors must run: a value stored anew reaches its dependants in
    /// other shards through a job.
    ///
    /// Unset, the environment variable `SMACHE_REDIS_SHARDS` may set it,
    /// else 48 on a Redis Cluster (a `redis+cluster://` URL or several
    /// URLs) and 1 on one server: every key under `{prefix}`. A
    /// count out of range is an [`Error::Config`] at
    /// [`build`](Self::build). The instance's first process records its
    /// count in Redis; a process with another count does not use the store
    /// (its calls compute directly, and the explicit calls return
    /// [`Error::ShardCountMismatch`]) until the counts agree.
    ///
    /// ```
    /// let smache = smache::Smache::builder()
    ///     .redis_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002")
    ///     .redis_shards(48)
    ///     .build()?;
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn redis_shards(mut self, count: usize) -> Self {
        self.redis_shards = Some(count);
        self
    }

    /// Runs an executor (see [`crate::executor`]) as a background task of
    /// the current tokio runtime, from [`build`](Self::build) on, so this
    /// process recomputes values in the background; stop it with
    /// [`Smache::stop_executor`]. Needs Redis (by URL) and MongoDB.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mongo = mongodb::Client::with_uri_str("mongodb://127.0.0.1:27017/").await?;
    /// let smache = smache::Smache::builder()
    ///     .redis_url("redis://127.0.0.1:6379/")
    ///     .mongodb(&mongo, "shop")
    ///     .run_executor()
    ///     .build()?;
    /// # smache.stop_executor().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn run_executor(mut self) -> Self {
        self.executor = true;
        self
    }

    /// Where the Redis store keeps the values of functions that do not say
    /// (`#[computed(.., store = redis | mongo)]`): [`ValueStore::Redis`] (the
    /// default), or [`ValueStore::Mongo`] to keep them in the MongoDB
    /// database given to [`mongodb`](Self::mongodb), collection
    /// [`values_collection`](Self::values_collection). The graph, versions
    /// and leases stay in Redis either way.
    ///
    /// ```
    /// let smache = smache::Smache::builder()
    ///     .value_store(smache::ValueStore::Mongo)
    ///     .values_collection("report_cache")
    ///     .build()?;
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn value_store(mut self, store: ValueStore) -> Self {
        self.value_store = Some(store);
        self
    }

    /// The largest value stored, in bytes as encoded (default
    /// [`DEFAULT_MAX_VALUE_SIZE`], 64 MiB; values kept in MongoDB stop at
    /// its 16 MiB document limit). A larger value is returned to its
    /// callers but not cached, with a warning; a submitted task of it
    /// fails with that reason.
    ///
    /// ```
    /// let smache = smache::Smache::builder()
    ///     .max_value_size(1 << 20)
    ///     .build()?;
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = Some(bytes);
        self
    }

    /// The MongoDB collection of values kept in MongoDB (default
    /// [`DEFAULT_VALUES_COLLECTION`], `smache_values`). smache makes a TTL
    /// index on its `exp` field.
    pub fn values_collection(mut self, collection: impl Into<String>) -> Self {
        self.values_collection = Some(collection.into());
        self
    }

    /// How long a finished task and its result stay readable with
    /// [`Smache::task`] (default [`DEFAULT_TASK_RETENTION`], 10 minutes). A
    /// pending task is kept until it finishes.
    pub fn task_retention(mut self, retention: Duration) -> Self {
        self.task_retention = Some(retention);
        self
    }

    /// How this process's executor retries failed background work
    /// (default [`Retry::default`]: three runs, 100 ms then 200 ms apart).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let smache = smache::Smache::builder()
    ///     .retry(smache::Retry::new(5, Duration::from_secs(1)))
    ///     .build()?;
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// How many jobs this process's executor runs at once (default 16, or
    /// twice the CPUs if that is more). Each runs on a blocking thread of
    /// its own, and most of a recompute is waiting (for Redis, MongoDB),
    /// so running several per CPU keeps them busy: one change refreshing
    /// 10,000 values ran about 1.4× faster at 16 than at 4 on 2 CPUs
    /// (`smache-bench` P3). Lower it to bound what CPU-heavy recomputes may
    /// take from the application; raise it for functions that wait long.
    /// Fan-out jobs (a change with over 1,000 dependants) run apart, as
    /// many as this again, and at most two of their chunk scripts at once.
    ///
    /// ```
    /// let smache = smache::Smache::builder()
    ///     .executor_concurrency(32)
    ///     .build()?;
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn executor_concurrency(mut self, jobs: usize) -> Self {
        self.executor_concurrency = Some(jobs.max(1));
        self
    }

    /// How long this process's executor lets a job wait for an executor
    /// that has its function (default [`DEFAULT_ORPHAN_TIMEOUT`], 10
    /// minutes). A job for a function no executor here has (a deploy in
    /// progress, or a `version` bump whose old jobs nobody runs any more)
    /// is left for another executor; once no live executor has announced
    /// that function (or callback) for this long, counted from the later
    /// of the job's enqueue and the function's last announcement, the job
    /// is moved to the dead letters with why. A recompute given up so
    /// frees its value for the next change (its pending flag is cleared)
    /// and, if the value is stale, has its next caller recompute it; a
    /// submitted task fails with the reason, so its waiters get
    /// [`Error::TaskFailed`](crate::Error::TaskFailed). A function a live
    /// executor announced within the last minute is never given up.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let smache = smache::Smache::builder()
    ///     .orphan_timeout(Duration::from_secs(30 * 60))
    ///     .build()?;
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn orphan_timeout(mut self, timeout: Duration) -> Self {
        self.orphan_timeout = Some(timeout);
        self
    }

    /// How long this instance, once it stores values that depend on
    /// documents, may find no live `smache-worker` of its prefix that
    /// follows its MongoDB database (any database, without one configured
    /// here) before it logs a warning (default
    /// [`DEFAULT_EXPECT_WORKER_WITHIN`], 30 s). Without such a worker
    /// nothing refreshes the values when the documents change. The warning
    /// names what was expected and what was found (workers of other
    /// databases, or of other prefixes), once per absence; an info line
    /// follows when one appears. It looks in the background, at most once
    /// per this period (a third of it while none is found), never on a
    /// hit. `None`: no check (an application that runs no worker on
    /// purpose). See `smache-worker inspect workers`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let smache = smache::Smache::builder()
    ///     .redis_url("redis://127.0.0.1:6379/")
    ///     .expect_worker_within(Some(Duration::from_secs(120)))
    ///     .build()?;
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn expect_worker_within(mut self, within: Option<Duration>) -> Self {
        self.expect_worker_within = Some(within);
        self
    }

    /// Registers a callback under `name`, for [`Task::on_complete`](crate::Task::on_complete).
    /// It runs on an executor of an instance that registered it, once per
    /// attachment, after the task finishes (done or failed); an error it
    /// returns, or a panic, is logged and affects nothing else. Register
    /// the same callbacks in every process that runs an executor.
    ///
    /// ```
    /// let smache = smache::Smache::builder()
    ///     .callback("notify", |done: smache::Completion| async move {
    ///         let user: String = done.args()?;
    ///         match done.value::<u64>() {
    ///             Ok(total) => println!("{user}: your report is ready ({total})"),
    ///             Err(err) => println!("{user}: {err}"),
    ///         }
    ///         Ok(())
    ///     })
    ///     .build()?;
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn callback<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Completion) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CallbackResult> + Send + 'static,
    {
        self.callbacks.insert(name.into(), task::callback(handler));
        self
    }

    /// Builds the instance. Nothing is connected yet.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid prefix, Redis URL or timeout, or
    /// for [`run_executor`](Self::run_executor) outside a tokio runtime or
    /// without Redis.
    pub fn build(self) -> Result<Smache> {
        let prefix = self.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        validate_prefix(&prefix)?;
        let timeout = self.op_timeout.unwrap_or(DEFAULT_OP_TIMEOUT);
        if self
            .compute_lease
            .is_some_and(|lease| lease < Duration::from_millis(10))
        {
            return Err(Error::Config("compute_lease must be at least 10 ms".into()));
        }
        if timeout.is_zero() {
            return Err(Error::Config("op_timeout must be more than zero".into()));
        }
        let local_cache = match self.local_cache_capacity {
            Some(bytes) => bytes,
            None => config::local_cache_from_env()?,
        };
        let store = connect::store(
            self.redis,
            self.memory_capacity.unwrap_or(DEFAULT_MEMORY_CAPACITY),
            local_cache,
            self.redis_shards,
            timeout,
            &prefix,
        )?;
        let is_redis = matches!(store, Store::Redis(_));
        if let Some(name) = self
            .callbacks
            .keys()
            .find(|n| n.is_empty() || n.contains('\n'))
        {
            return Err(Error::Config(format!(
                "invalid callback name {name:?} (empty, or with a newline)"
            )));
        }
        let settings = Settings {
            default_ttl: self.default_ttl,
            max_stale: self.max_stale.unwrap_or(DEFAULT_MAX_STALE),
            compute_lease: self.compute_lease.unwrap_or(DEFAULT_COMPUTE_LEASE),
            task_retention: self.task_retention.unwrap_or(DEFAULT_TASK_RETENTION),
            retry: self.retry.unwrap_or_default(),
            executor_concurrency: self.executor_concurrency.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(16, |n| (n.get() * 2).max(16))
            }),
            orphan_timeout: self.orphan_timeout.unwrap_or(DEFAULT_ORPHAN_TIMEOUT),
            value_store: self.value_store.unwrap_or_default(),
            max_value_size: self.max_value_size.unwrap_or(DEFAULT_MAX_VALUE_SIZE),
        };
        let smache = Smache::from_parts(Parts {
            prefix,
            store,
            mongo: self.mongo,
            callbacks: self.callbacks,
            values_collection: self
                .values_collection
                .unwrap_or_else(|| DEFAULT_VALUES_COLLECTION.to_owned()),
            expect_worker_within: self
                .expect_worker_within
                .unwrap_or(Some(DEFAULT_EXPECT_WORKER_WITHIN)),
            settings,
        });
        if self.executor {
            if !is_redis {
                return Err(Error::Config("run_executor needs the Redis store".into()));
            }
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(Error::Config(
                    "run_executor needs build() to be called inside a tokio runtime".into(),
                ));
            }
            smache.attach_executor(crate::executor::spawn(&smache));
        }
        Ok(smache)
    }
}

// The handle's constructors live beside the builder they use, so that the
// handle's module does not reach up to the builder.
impl Smache {
    /// A builder with the defaults: embedded store, prefix `smache`, no TTL.
    pub fn builder() -> SmacheBuilder {
        SmacheBuilder::default()
    }

    /// An instance on the embedded in-process store, with the defaults.
    ///
    /// ```
    /// let smache = smache::Smache::embedded();
    /// assert_eq!(smache.backend(), smache::Backend::Embedded);
    /// ```
    #[must_use]
    pub fn embedded() -> Smache {
        SmacheBuilder::default()
            .build()
            .expect("the default configuration is valid")
    }

    /// An instance configured from the environment:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `SMACHE_REDIS_URL` | Redis URL (`redis://`, `rediss://`) | embedded store |
    /// | `SMACHE_MONGODB_URI` | MongoDB URI | none |
    /// | `SMACHE_MONGODB_DATABASE` | database name | the URI's, else `smache` |
    /// | `SMACHE_PREFIX` | key prefix | `smache` |
    ///
    /// ```
    /// // With none of the variables set, this is the embedded store.
    /// let smache = smache::Smache::from_env()?;
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn from_env() -> Result<Smache> {
        SmacheBuilder::from_env()?.build()
    }
}

#[cfg(test)]
mod tests;
