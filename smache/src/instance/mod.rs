//! The [`Smache`] handle: a store, a key prefix and defaults. Its parts:
//! which instance a call uses ([`current`]), reading and storing values
//! ([`values`]), freshness and waiting for it ([`fresh`]), and the store's
//! health ([`health`]).

mod current;
mod fresh;
mod health;
mod values;

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::runtime;
use crate::spec::ValueStore;
use crate::store::{Backend, MongoValues, Store};

pub use self::fresh::EntryInfo;
use self::health::Health;
pub use self::health::LocalCacheStats;
pub(crate) use self::values::{Fetched, Located};

/// A smache instance: where computed values are stored and how.
///
/// `Smache` is a cheap handle (an `Arc`); clone it freely. `#[computed]`
/// functions use [`Smache::current`]: the instance of the enclosing
/// [`scope`](Smache::scope), else the process-wide default, which is the one
/// [`install`](Smache::install)ed or, if none was, [`Smache::from_env`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), smache::Error> {
/// #[smache::computed(Raw)]
/// async fn double(x: u32) -> u32 {
///     x * 2
/// }
///
/// let smache = smache::Smache::builder().prefix("docs").build()?; // embedded store
/// let value = smache.scope(double(21)).await;
/// assert_eq!(value, 42);
/// assert!(smache.is_fresh(&double::key(21)?).await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Smache {
    pub(crate) inner: Arc<Inner>,
}

/// What a [`Smache`] handle shares: its store, key prefix and settings.
pub(crate) struct Inner {
    /// The key prefix (the Redis hash tag).
    pub(crate) prefix: String,
    /// Where values, the graph and the jobs live.
    pub(crate) store: Store,
    /// The settings, as the builder resolved them.
    pub(crate) settings: Settings,
    /// The database the entity documents live in.
    pub(crate) mongo: Option<mongodb::Database>,
    /// Computations in flight in this process.
    pub(crate) flights: Arc<crate::flight::Flights>,
    /// The collection of values kept in MongoDB, with a MongoDB database.
    pub(crate) values: Option<MongoValues>,
    /// `store = mongo` without a database: warned about once.
    values_missing_warned: AtomicBool,
    /// Callbacks by name, run by this process's executor.
    pub(crate) callbacks: std::collections::HashMap<String, crate::callback::Callback>,
    /// Whether the store works (see `health`).
    health: Health,
    /// Whether a worker serves this instance (see `roster`).
    pub(crate) watchdog: crate::watchdog::Watchdog,
    /// The executor started by `SmacheBuilder::run_executor`.
    executor: std::sync::Mutex<Option<crate::shutdown::ExecutorHandle>>,
}

impl fmt::Debug for Smache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smache")
            .field("prefix", &self.inner.prefix)
            .field("backend", &self.backend())
            .field("default_ttl", &self.inner.settings.default_ttl)
            .field(
                "mongodb",
                &self.inner.mongo.as_ref().map(mongodb::Database::name),
            )
            .finish()
    }
}

impl Smache {
    /// The instance made of what the builder assembled.
    pub(crate) fn from_parts(parts: Parts) -> Smache {
        let Parts {
            prefix,
            store,
            mongo,
            callbacks,
            values_collection,
            expect_worker_within,
            settings,
        } = parts;
        let values = mongo
            .as_ref()
            .map(|db| MongoValues::new(db.collection(&values_collection)));
        Smache {
            inner: Arc::new(Inner {
                prefix,
                store,
                settings,
                mongo,
                health: Health::default(),
                watchdog: crate::watchdog::Watchdog::new(expect_worker_within),
                flights: Arc::default(),
                callbacks,
                values,
                values_missing_warned: AtomicBool::new(false),
                executor: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Keeps the executor started by the builder, for
    /// [`stop_executor`](Self::stop_executor).
    pub(crate) fn attach_executor(&self, handle: crate::shutdown::ExecutorHandle) {
        *crate::sync::lock(&self.inner.executor) = Some(handle);
    }

    /// Stops the executor started by
    /// [`SmacheBuilder::run_executor`](crate::SmacheBuilder::run_executor),
    /// after its running jobs finish. Does nothing if there is none.
    ///
    /// # Errors
    /// The executor's own error, if it stopped on one.
    pub async fn stop_executor(&self) -> Result<()> {
        let handle = crate::sync::lock(&self.inner.executor).take();
        match handle {
            Some(handle) => handle.shutdown().await,
            None => Ok(()),
        }
    }

    /// The key prefix (the Redis hash tag).
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Which store this instance uses.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.inner.store.backend()
    }

    /// The TTL of functions that do not set their own.
    #[must_use]
    pub fn default_ttl(&self) -> Option<Duration> {
        self.inner.settings.default_ttl
    }

    /// The MongoDB database the documents live in, if one was configured.
    #[must_use]
    pub fn mongodb(&self) -> Option<&mongodb::Database> {
        self.inner.mongo.as_ref()
    }

    /// The Redis key (or embedded-store key) a value is stored under.
    ///
    /// ```
    /// #[smache::computed(Raw, name = "shop.price")]
    /// fn price(sku: &str) -> u64 {
    ///     100
    /// }
    ///
    /// let smache = smache::Smache::builder().prefix("shop").build().unwrap();
    /// assert_eq!(smache.storage_key(&price::key("x1").unwrap()), r#"{shop}:v:shop.price#1:"x1""#);
    /// ```
    #[must_use]
    pub fn storage_key(&self, key: &CacheKey) -> String {
        self.inner.store.value_key(&key.value_id())
    }

    /// Where the value of `key` lives in this instance: its storage key,
    /// value id, and the full arguments of a hashed key (for executors).
    pub(crate) fn locate(&self, key: &CacheKey) -> Located {
        let (storage_key, id_at) = self
            .inner
            .store
            .value_key_with(key.args().len() + 48, |out| key.write_value_id(out));
        let id = storage_key[id_at..].to_owned();
        Located {
            key: storage_key,
            full_args: if key.is_hashed() {
                key.args().to_owned()
            } else {
                String::new()
            },
            id,
        }
    }

    /// Removes the cached value of `key`; the next call computes it again.
    /// Returns whether a value was stored.
    ///
    /// # Errors
    /// When the store cannot be reached.
    pub async fn invalidate(&self, key: &CacheKey) -> Result<bool> {
        let inner = Arc::clone(&self.inner);
        let at = self.locate(key);
        let spec = key.spec();
        runtime::in_tokio(async move {
            let existed = inner.store.drop_value(at.slot()).await?;
            inner.forget_external(spec, &at.key).await;
            Ok(existed)
        })
        .await?
    }

    /// Makes `alias` stand for `target`: a call with `alias`'s arguments
    /// returns `target`'s value, and a miss computes it (with `alias`'s
    /// arguments) and stores it as `target`'s. Any value stored for `alias`
    /// is dropped. Invalidating `target` invalidates its aliases with it;
    /// invalidating `alias` removes the alias. An alias of an alias stands
    /// for the final value; aliasing a key to itself, directly or through
    /// other aliases, is an error.
    ///
    /// # Errors
    /// [`Error::AliasCycle`]; [`Error::Config`] if the keys belong to
    /// different functions; store errors.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), smache::Error> {
    /// #[smache::computed(Raw)]
    /// async fn page(url: &str) -> String {
    ///     format!("<html>{url}</html>")
    /// }
    ///
    /// let smache = smache::Smache::embedded();
    /// smache.alias(&page::key("http://a.example/old")?, &page::key("http://a.example/")?).await?;
    /// let value = smache.scope(page("http://a.example/")).await;
    /// assert_eq!(smache.scope(page("http://a.example/old")).await, value);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn alias(&self, alias: &CacheKey, target: &CacheKey) -> Result<()> {
        let (a, t) = (alias.spec(), target.spec());
        if a.name() != t.name() || a.version() != t.version() {
            return Err(Error::Config(format!(
                "an alias must name a value of the same function: {}#{} is not {}#{}",
                a.name(),
                a.version(),
                t.name(),
                t.version()
            )));
        }
        let inner = Arc::clone(&self.inner);
        let (from, to) = (self.locate(alias), self.locate(target));
        let named =
            runtime::in_tokio(async move { inner.store.alias(from.slot(), to.slot()).await })
                .await??;
        match named {
            Some(_) => Ok(()),
            None => Err(Error::AliasCycle {
                alias: alias.to_string(),
                target: target.to_string(),
            }),
        }
    }
}

/// What a built instance is made of.
pub(crate) struct Parts {
    pub(crate) prefix: String,
    pub(crate) store: Store,
    pub(crate) mongo: Option<mongodb::Database>,
    pub(crate) callbacks: std::collections::HashMap<String, crate::callback::Callback>,
    pub(crate) values_collection: String,
    pub(crate) expect_worker_within: Option<Duration>,
    pub(crate) settings: Settings,
}

/// The plain settings of an instance, resolved once by the builder (its
/// defaults applied) and held whole by the instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// The time-to-live of values whose function sets none.
    pub(crate) default_ttl: Option<Duration>,
    /// How long a stale `write_through` value may still be served.
    pub(crate) max_stale: Duration,
    /// How long one computation may hold a key before another process
    /// takes over.
    pub(crate) compute_lease: Duration,
    /// How long a finished task is kept.
    pub(crate) task_retention: Duration,
    /// How executors retry failed background work.
    pub(crate) retry: crate::retry::Retry,
    /// How many jobs this process's executor runs at once.
    pub(crate) executor_concurrency: usize,
    /// How long a job waits for an executor that has its function.
    pub(crate) orphan_timeout: Duration,
    /// Where values go when their function does not say.
    pub(crate) value_store: ValueStore,
    /// The largest envelope stored.
    pub(crate) max_value_size: usize,
}
