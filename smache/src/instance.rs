//! The [`Smache`] handle: a store, a key prefix and defaults.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use once_cell::sync::OnceCell;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builder::SmacheBuilder;
use crate::envelope;
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::runtime;
use crate::spec::{FnSpec, Refresh, ValueStore};
use crate::store::Outcome;
use crate::store::{Backend, Lookup, MongoValues, Put, Slot, Store};

static GLOBAL: OnceCell<Smache> = OnceCell::new();

tokio::task_local! {
    static CURRENT: Smache;
}

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

pub(crate) struct Inner {
    pub(crate) prefix: String,
    /// `{prefix}:`, the start of every key.
    pub(crate) base: String,
    pub(crate) max_stale: Duration,
    pub(crate) store: Store,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) mongo: Option<mongodb::Database>,
    /// Computations in flight in this process.
    pub(crate) flights: Arc<crate::flight::Flights>,
    /// How long one computation may hold a key before another process
    /// takes over.
    pub(crate) compute_lease: Duration,
    /// How long a finished task is kept.
    pub(crate) task_retention: Duration,
    /// How executors retry failed background work.
    pub(crate) retry: crate::task::Retry,
    /// How many jobs this process's executor runs at once.
    pub(crate) executor_concurrency: usize,
    /// How long a job waits for an executor that has its function.
    pub(crate) orphan_timeout: Duration,
    /// Where values go when their function does not say.
    pub(crate) value_store: ValueStore,
    /// The largest envelope stored.
    pub(crate) max_value_size: usize,
    /// The collection of values kept in MongoDB, with a MongoDB database.
    pub(crate) values: Option<MongoValues>,
    /// `store = mongo` without a database: warned about once.
    values_missing_warned: AtomicBool,
    /// Callbacks by name, run by this process's executor.
    pub(crate) callbacks: std::collections::HashMap<String, crate::task::Callback>,
    health: Health,
    /// Whether a worker serves this instance (see `roster`).
    pub(crate) watchdog: crate::roster::Watchdog,
    /// The executor started by `SmacheBuilder::run_executor`.
    executor: std::sync::Mutex<Option<crate::executor::ExecutorHandle>>,
}

impl fmt::Debug for Smache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smache")
            .field("prefix", &self.inner.prefix)
            .field("backend", &self.backend())
            .field("default_ttl", &self.inner.default_ttl)
            .field(
                "mongodb",
                &self.inner.mongo.as_ref().map(mongodb::Database::name),
            )
            .finish()
    }
}

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

    pub(crate) fn from_parts(parts: Parts) -> Smache {
        let Parts {
            prefix,
            store,
            default_ttl,
            max_stale,
            compute_lease,
            mongo,
            task_retention,
            retry,
            executor_concurrency,
            orphan_timeout,
            callbacks,
            value_store,
            values_collection,
            max_value_size,
            expect_worker_within,
        } = parts;
        let values = mongo
            .as_ref()
            .map(|db| MongoValues::new(db.collection(&values_collection)));
        Smache {
            inner: Arc::new(Inner {
                base: crate::store::keys::base(&prefix),
                max_stale,
                prefix,
                store,
                default_ttl,
                mongo,
                health: Health::default(),
                watchdog: crate::roster::Watchdog::new(expect_worker_within),
                flights: Arc::default(),
                compute_lease,
                task_retention,
                retry,
                executor_concurrency,
                orphan_timeout,
                callbacks,
                value_store,
                values,
                max_value_size,
                values_missing_warned: AtomicBool::new(false),
                executor: std::sync::Mutex::new(None),
            }),
        }
    }

    pub(crate) fn attach_executor(&self, handle: crate::executor::ExecutorHandle) {
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

    /// Makes this instance the process-wide default. Do it once at start-up,
    /// before the first `#[computed]` call.
    ///
    /// # Errors
    /// [`Error::AlreadyInstalled`] if a default is already in place (installed,
    /// or created from the environment by an earlier call).
    ///
    /// ```
    /// let smache = smache::Smache::builder().prefix("app").build()?;
    /// smache.install()?;
    /// assert_eq!(smache::Smache::current().prefix(), "app");
    /// # Ok::<(), smache::Error>(())
    /// ```
    pub fn install(self) -> Result<()> {
        GLOBAL.set(self).map_err(|_| Error::AlreadyInstalled)
    }

    /// The process-wide default: the installed instance, else one made
    /// from the environment ([`Smache::from_env`]). If the environment is
    /// invalid, the error is logged and the embedded store is used.
    pub fn global() -> &'static Smache {
        GLOBAL.get_or_init(|| {
            Smache::from_env().unwrap_or_else(|err| {
                tracing::error!(error = %err, "smache: invalid environment configuration; using the embedded store");
                Smache::embedded()
            })
        })
    }

    /// The instance `#[computed]` functions use here: the innermost
    /// [`scope`](Smache::scope)'s, else [`Smache::global`].
    #[must_use]
    pub fn current() -> Smache {
        CURRENT
            .try_with(Smache::clone)
            .unwrap_or_else(|_| Smache::global().clone())
    }

    /// Runs `fut` with this instance as [`Smache::current`]. Tasks spawned
    /// inside do not inherit it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let a = smache::Smache::builder().prefix("a").build().unwrap();
    /// let prefix = a.scope(async { smache::Smache::current().prefix().to_owned() }).await;
    /// assert_eq!(prefix, "a");
    /// # }
    /// ```
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        CURRENT.scope(self.clone(), fut).await
    }

    /// Runs `f` with this instance as [`Smache::current`], for synchronous code.
    ///
    /// ```
    /// #[smache::computed(Raw)]
    /// fn triple(x: u32) -> u32 {
    ///     x * 3
    /// }
    ///
    /// let smache = smache::Smache::builder().prefix("sync-docs").build().unwrap();
    /// assert_eq!(smache.scope_sync(|| triple(3)), 9);
    /// ```
    pub fn scope_sync<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
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
        self.inner.default_ttl
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
        key.storage_key(&self.inner.prefix)
    }

    pub(crate) fn locate(&self, key: &CacheKey) -> Located {
        let base = &self.inner.base;
        let mut storage_key = String::with_capacity(base.len() + 2 + key.args().len() + 48);
        storage_key.push_str(base);
        storage_key.push_str("v:");
        key.write_value_id(&mut storage_key);
        let id = storage_key[base.len() + 2..].to_owned();
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
            let existed = inner.store.drop_value(at.slot(&inner.base)).await?;
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
        let named = runtime::in_tokio(async move {
            inner
                .store
                .alias(from.slot(&inner.base), to.slot(&inner.base))
                .await
        })
        .await??;
        match named {
            Some(_) => Ok(()),
            None => Err(Error::AliasCycle {
                alias: alias.to_string(),
                target: target.to_string(),
            }),
        }
    }

    /// Whether a valid value is stored for `key` and no document it depends
    /// on changed since it was computed (no recompute is pending).
    ///
    /// # Errors
    /// When the store cannot be reached.
    pub async fn is_fresh(&self, key: &CacheKey) -> Result<bool> {
        Ok(self
            .entry(key)
            .await?
            .is_some_and(|entry| !entry.is_stale()))
    }

    /// Waits until the value of `key` is fresh (stored, and no recompute
    /// pending), for at most `timeout`; returns whether it is. For tests,
    /// and for callers that need to read their own writes after changing a
    /// document.
    ///
    /// # Errors
    /// When the store cannot be reached.
    pub async fn wait_fresh(&self, key: &CacheKey, timeout: Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        poll_until(deadline, || self.is_fresh(key)).await
    }

    /// Read-your-writes: after writing to MongoDB, waits (at most `timeout`)
    /// until the value of `key` reflects the write, and returns whether it
    /// does. `write` is the write's operation time, which the driver's
    /// session records (`ClientSession::operation_time`): the call waits
    /// until the worker's saved position in the change stream is at or past
    /// it (every change up to the write is turned into jobs), until the
    /// relation jobs of those changes have run (a related document's values
    /// are marked by an executor), and then until no old value of `key` can
    /// be served: it is fresh (its pending recompute has landed), or marked
    /// stale with no recompute coming (the next call computes it), or gone.
    /// [`wait_fresh`](Self::wait_fresh) alone can return before the worker
    /// has seen the write.
    ///
    /// Not covered: a change with more than 1,000 dependants of one
    /// document is marked by executors a chunk at a time, and the value may
    /// be in a chunk not yet marked.
    ///
    /// # Errors
    /// [`Error::Config`] without the Redis store (the embedded store has no
    /// worker); store errors.
    ///
    /// ```no_run
    /// # use smache::bson::doc;
    /// # #[derive(serde::Serialize, serde::Deserialize, smache::Entity)]
    /// # #[entity(collection = "users")]
    /// # struct User { #[serde(rename = "_id")] id: smache::bson::oid::ObjectId, name: String }
    /// #[smache::computed(User)]
    /// async fn greeting(user: &User) -> String {
    ///     format!("Hello, {}", user.name)
    /// }
    ///
    /// # async fn run(smache: smache::Smache, client: smache::mongodb::Client, ada: User) -> Result<(), Box<dyn std::error::Error>> {
    /// let users = client.database("shop").collection::<User>("users");
    /// let mut session = client.start_session().await?;
    /// users
    ///     .update_one(doc! { "_id": ada.id }, doc! { "$set": { "name": "Augusta" } })
    ///     .session(&mut session)
    ///     .await?;
    /// let written = session.operation_time().expect("the server reports it");
    /// let key = greeting::key(&ada)?;
    /// if smache.wait_fresh_after(&key, written, std::time::Duration::from_secs(5)).await? {
    ///     // A call now returns the greeting of "Augusta".
    /// }
    /// # Ok(())
    /// # }
    /// # fn main() {}
    /// ```
    pub async fn wait_fresh_after(
        &self,
        key: &CacheKey,
        write: bson::Timestamp,
        timeout: Duration,
    ) -> Result<bool> {
        if self.inner.store.backend() != Backend::Redis {
            return Err(Error::Config(
                "read-your-writes needs the Redis store and a running smache-worker".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let inner = Arc::clone(&self.inner);
        let caught_up = runtime::in_tokio(async move {
            let Store::Redis(store) = &inner.store else {
                return Ok(false);
            };
            let keys = crate::store::keys::WorkerKeys::new(&inner.base);
            let written = crate::worker::timestamp_key(write);
            let mut pause = Pause::new();
            // Every change up to the write has been turned into jobs…
            let newest = loop {
                let (reached, newest) = store.worker_progress(&keys).await?;
                if reached.is_some_and(|reached| reached >= written) {
                    break newest;
                }
                if !pause.until(deadline).await {
                    return Ok(false);
                }
            };
            // …and the relation jobs among them have run.
            if let Some(newest) = newest {
                while store.relations_pending(&inner.base, &newest).await? {
                    if !pause.until(deadline).await {
                        return Ok(false);
                    }
                }
            }
            Ok::<_, Error>(true)
        })
        .await??;
        if !caught_up {
            return Ok(false);
        }
        poll_until(deadline, || self.serves_nothing_stale(key)).await
    }

    /// Whether the next call of `key` returns a value computed after every
    /// change signalled so far: nothing is stored, the value is fresh, or it
    /// may not be served (stale with no recompute coming, or of a
    /// `mark_stale` function), so the call computes it.
    async fn serves_nothing_stale(&self, key: &CacheKey) -> Result<bool> {
        let inner = Arc::clone(&self.inner);
        let storage_key = self.storage_key(key);
        let spec = key.spec();
        runtime::in_tokio(async move {
            let lookup = match inner.store.get(&storage_key).await? {
                Lookup::Alias { target, .. } => {
                    inner
                        .store
                        .get(&crate::store::keys::value(&inner.base, &target))
                        .await?
                }
                lookup => lookup,
            };
            let fetched = inner
                .fetched(&storage_key, Ok(lookup))
                .map_err(|()| Error::Unavailable)?;
            Ok(fetched.is_none_or(|fetched| !fetched.stale || !inner.acceptable(spec, &fetched)))
        })
        .await?
    }

    /// What is stored for `key`: its value version and when it was computed.
    /// `None` when nothing valid is stored.
    ///
    /// # Errors
    /// When the store cannot be reached.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), smache::Error> {
    /// #[smache::computed(Raw)]
    /// async fn cube(x: i64) -> i64 {
    ///     x * x * x
    /// }
    ///
    /// let smache = smache::Smache::embedded();
    /// smache.scope(cube(3)).await;
    /// let first = smache.entry(&cube::key(3)?).await?.expect("stored");
    /// smache.invalidate(&cube::key(3)?).await?;
    /// smache.scope(cube(3)).await;
    /// let second = smache.entry(&cube::key(3)?).await?.expect("stored");
    /// assert!(second.computed_at() >= first.computed_at());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn entry(&self, key: &CacheKey) -> Result<Option<EntryInfo>> {
        let inner = Arc::clone(&self.inner);
        let storage_key = self.storage_key(key);
        let lookup = runtime::in_tokio(async move {
            match inner.store.get(&storage_key).await? {
                Lookup::Alias { target, .. } => {
                    inner
                        .store
                        .get(&crate::store::keys::value(&inner.base, &target))
                        .await
                }
                lookup => Ok(lookup),
            }
        })
        .await??;
        Ok(match lookup {
            Lookup::Hit {
                version,
                data,
                stale_since_ms,
                expired,
                ..
            } => envelope::decode(&data).ok().map(|env| EntryInfo {
                version,
                computed_at_ms: env.computed_at_ms,
                stale: stale_since_ms.is_some() || expired,
            }),
            Lookup::Miss | Lookup::Foreign(_) | Lookup::Alias { .. } => None,
        })
    }
}

/// The pauses of a polling wait: 2 ms, doubling up to 50 ms.
struct Pause(Duration);

impl Pause {
    fn new() -> Self {
        Pause(Duration::from_millis(2))
    }

    /// Sleeps the next pause, cut short at `deadline`; `false` once the
    /// deadline has passed (nothing slept).
    async fn until(&mut self, deadline: tokio::time::Instant) -> bool {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(self.0.min(deadline - now)).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(50));
        true
    }
}

/// Asks `check` until it says yes (`true`) or `deadline` passes (`false`),
/// pausing as [`Pause`] does between the tries.
async fn poll_until<F, Fut>(deadline: tokio::time::Instant, mut check: F) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let mut pause = Pause::new();
    loop {
        if check().await? {
            return Ok(true);
        }
        if !pause.until(deadline).await {
            return Ok(false);
        }
    }
}

/// What a built instance is made of.
pub(crate) struct Parts {
    pub(crate) prefix: String,
    pub(crate) store: Store,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) max_stale: Duration,
    pub(crate) compute_lease: Duration,
    pub(crate) mongo: Option<mongodb::Database>,
    pub(crate) task_retention: Duration,
    pub(crate) retry: crate::task::Retry,
    pub(crate) executor_concurrency: usize,
    pub(crate) orphan_timeout: Duration,
    pub(crate) callbacks: std::collections::HashMap<String, crate::task::Callback>,
    pub(crate) value_store: ValueStore,
    pub(crate) values_collection: String,
    pub(crate) max_value_size: usize,
    pub(crate) expect_worker_within: Option<Duration>,
}

/// MongoDB documents hold at most 16 MiB; leave room for the fields.
const MONGO_MAX_VALUE_SIZE: usize = 16 * 1024 * 1024 - 64 * 1024;

/// Metadata of a stored value; see [`Smache::entry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    version: u64,
    computed_at_ms: u64,
    stale: bool,
}

impl EntryInfo {
    /// The value version: it increases each time a value is stored under the
    /// key, and starts again at 1 after the key is removed (invalidated or
    /// expired).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the value was computed.
    #[must_use]
    pub fn computed_at(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_millis(self.computed_at_ms)
    }

    /// Whether a document the value depends on changed after it was
    /// computed, or its time-to-live has passed (a recompute is pending, or
    /// the next call recomputes).
    #[must_use]
    pub fn is_stale(&self) -> bool {
        self.stale
    }
}

/// Where a value lives, resolved against an instance's prefix.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub(crate) key: String,
    pub(crate) id: String,
    pub(crate) full_args: String,
}

impl Located {
    pub(crate) fn slot<'a>(&'a self, base: &'a str) -> Slot<'a> {
        Slot {
            key: &self.key,
            base,
            id: &self.id,
            full_args: &self.full_args,
        }
    }
}

/// A stored value as read by a call.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The value version the store assigned it.
    pub(crate) version: u64,
    pub(crate) data: Vec<u8>,
    /// Past its time-to-live: serve it once more and refresh it.
    pub(crate) expired: bool,
    pub(crate) stale: bool,
    /// How long it has been stale; `Duration::MAX` when no recompute is
    /// coming (marked past `max_fanout`, "stale since 0").
    pub(crate) stale_for: Duration,
}

impl Inner {
    /// Whether a stored value of `spec`'s function may be served. A
    /// `write_through` value that is stale is served while an executor
    /// refreshes it (for at most `max_stale`); `mark_stale` values that are
    /// stale or past their time-to-live, and stale values no recompute is
    /// coming for, are recomputed by the caller.
    pub(crate) fn acceptable(&self, spec: &FnSpec, fetched: &Fetched) -> bool {
        let write_through = spec.refresh() == Refresh::WriteThrough;
        let abandoned = fetched.stale_for == Duration::MAX;
        if fetched.stale && (!write_through || abandoned || fetched.stale_for > self.max_stale) {
            return false;
        }
        write_through || !fetched.expired
    }

    /// Reads the value at `at`, following an alias: what is stored, and
    /// the value the alias stands for, if `at` is one (a call then computes
    /// and stores that value). `Err` means the store could not be asked
    /// (already logged).
    pub(crate) async fn lookup(
        &self,
        at: &Located,
    ) -> Result<(Option<Fetched>, Option<Located>), ()> {
        match self.store.get(&at.key).await {
            Ok(Lookup::Alias { target, full_args }) => {
                let target = Located {
                    key: crate::store::keys::value(&self.base, &target),
                    id: target,
                    full_args,
                };
                let fetched = self.fetch(&target.key).await?;
                Ok((fetched, Some(target)))
            }
            lookup => {
                let fetched = self.fetched(&at.key, lookup)?;
                Ok((self.materialize(&at.key, fetched).await?, None))
            }
        }
    }

    /// Whether `spec`'s values are kept in MongoDB.
    pub(crate) fn external(&self, spec: &FnSpec) -> bool {
        let mongo = spec.store().unwrap_or(self.value_store) == ValueStore::Mongo;
        if !mongo || self.store.backend() != Backend::Redis {
            return false;
        }
        if self.values.is_none() {
            if !self.values_missing_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    function = spec.name(),
                    "smache: values kept in MongoDB need SmacheBuilder::mongodb; keeping them in Redis"
                );
            }
            return false;
        }
        true
    }

    /// Replaces a reference to a value kept in MongoDB by the value.
    async fn materialize(
        &self,
        storage_key: &str,
        fetched: Option<Fetched>,
    ) -> Result<Option<Fetched>, ()> {
        let Some(mut fetched) = fetched else {
            return Ok(None);
        };
        if !envelope::is_reference(&fetched.data) {
            return Ok(Some(fetched));
        }
        let Some(document) = envelope::referenced_document(&fetched.data) else {
            tracing::warn!(
                key = storage_key,
                "smache: a malformed reference to MongoDB; recomputing"
            );
            return Ok(None);
        };
        let Some(values) = &self.values else {
            tracing::warn!(key = storage_key, "smache: a value is kept in MongoDB but this instance has no MongoDB database; recomputing");
            return Ok(None);
        };
        match values
            .get(storage_key, &bson::oid::ObjectId::from_bytes(document))
            .await
        {
            Ok(Some(data)) => {
                fetched.data = data;
                Ok(Some(fetched))
            }
            Ok(None) => Ok(None),
            Err(err) => {
                self.health.failed(&err);
                Err(())
            }
        }
    }

    /// After a value is removed: lets its MongoDB documents expire.
    pub(crate) async fn forget_external(&self, spec: &FnSpec, storage_key: &str) {
        if let (true, Some(values)) = (self.external(spec), &self.values) {
            if let Err(err) = values.forget(storage_key).await {
                tracing::debug!(key = storage_key, error = %err, "smache: cannot retire the MongoDB documents of a removed value");
            }
        }
    }

    /// Reads what is stored under `storage_key`. `Err` means the store
    /// could not be asked (already logged).
    pub(crate) async fn fetch(&self, storage_key: &str) -> Result<Option<Fetched>, ()> {
        let lookup = self.store.get(storage_key).await;
        let fetched = self.fetched(storage_key, lookup)?;
        self.materialize(storage_key, fetched).await
    }

    fn fetched(&self, storage_key: &str, lookup: Result<Lookup>) -> Result<Option<Fetched>, ()> {
        match lookup {
            Ok(Lookup::Hit {
                version,
                data,
                stale_since_ms,
                expired,
            }) => {
                self.health.ok();
                Ok(Some(Fetched {
                    version,
                    data,
                    expired,
                    stale: stale_since_ms.is_some(),
                    stale_for: match stale_since_ms {
                        Some(0) => Duration::MAX,
                        since => Duration::from_millis(
                            since.map_or(0, |since| envelope::now_ms().saturating_sub(since)),
                        ),
                    },
                }))
            }
            Ok(Lookup::Miss) => {
                self.health.ok();
                Ok(None)
            }
            Ok(Lookup::Foreign(why)) => {
                self.health.ok();
                tracing::warn!(key = storage_key, reason = %why, "smache: foreign data under a value key; recomputing and overwriting");
                Ok(None)
            }
            Ok(Lookup::Alias { .. }) => {
                // Aliases name values that are not aliases: only a race
                // with a new alias gets here. Treated as a miss.
                self.health.ok();
                Ok(None)
            }
            Err(err) => {
                self.health.failed(&err);
                Err(())
            }
        }
    }

    /// Logs a store failure (rate-limited) and marks the store degraded.
    pub(crate) fn store_failed(&self, err: &Error) {
        self.health.failed(err);
    }

    /// Notes a store success (ends a degraded period).
    pub(crate) fn store_ok(&self) {
        self.health.ok();
    }

    /// Decodes fetched bytes; a corrupt entry is logged and treated as a miss.
    pub(crate) fn decode<T: DeserializeOwned>(storage_key: &str, data: &[u8]) -> Option<T> {
        match envelope::decode(data).and_then(|env| env.value()) {
            Ok(value) => Some(value),
            Err(err) => {
                tracing::warn!(key = storage_key, error = %err, "smache: corrupt cached value; recomputing and overwriting");
                None
            }
        }
    }

    /// Encodes a value for storage; a value that cannot be serialized is
    /// logged and not cached.
    pub(crate) fn encode<T: Serialize + ?Sized>(storage_key: &str, value: &T) -> Option<Vec<u8>> {
        match envelope::encode(value, envelope::now_ms()) {
            Ok(data) => Some(data),
            Err(err) => {
                tracing::warn!(key = storage_key, error = %err, "smache: value not cached");
                None
            }
        }
    }

    /// Stores a value; failures are logged. A value kept in MongoDB is
    /// written there first, then its reference in Redis. With the value
    /// version it was stored as.
    pub(crate) async fn put(&self, mut put: Put<'_>) -> (Outcome, Option<u64>) {
        let key = put.slot.key;
        let started = put.started;
        let values = if put.external {
            self.values.as_ref()
        } else {
            None
        };
        let limit = match values {
            Some(_) => self.max_value_size.min(MONGO_MAX_VALUE_SIZE),
            None => self.max_value_size,
        };
        if put.data.len() > limit {
            tracing::warn!(
                key,
                bytes = put.data.len(),
                limit,
                "smache: value larger than max_value_size; returned but not cached"
            );
            return (Outcome::TooLarge, None);
        }
        let mut document = None;
        if let Some(values) = values {
            match values.put(key, started, &put.data, put.ttl).await {
                Ok(oid) => {
                    put.data = envelope::reference(&put.data, oid.bytes());
                    document = Some((values, oid));
                }
                Err(err) => {
                    self.health.failed(&err);
                    return (Outcome::Unreachable, None);
                }
            }
        }
        match self.store.put(put).await {
            Ok(Some(version)) => {
                self.health.ok();
                if let Some((values, oid)) = document {
                    if let Err(err) = values.retire(key, &oid, started).await {
                        tracing::debug!(key, error = %err, "smache: cannot retire replaced MongoDB documents");
                    }
                }
                (Outcome::Stored, Some(version))
            }
            Ok(None) => {
                self.health.ok();
                tracing::debug!(
                    key,
                    "smache: a value computed from newer data is already stored"
                );
                if let Some((values, oid)) = document {
                    if let Err(err) = values.discard(key, &oid).await {
                        tracing::debug!(key, error = %err, "smache: cannot delete a refused MongoDB document");
                    }
                }
                (Outcome::Superseded, None)
            }
            Err(err) => {
                self.health.failed(&err);
                (Outcome::Unreachable, None)
            }
        }
    }
}

/// Tracks whether the store works, to log its failures once rather than
/// once per call. Redis being unreachable is the Redis store's to log (its
/// circuit breaker logs each outage once): this tracks the other failures
/// (MongoDB, for values kept there; errors Redis answers with).
#[derive(Default)]
struct Health {
    degraded: AtomicBool,
    last_warning_ms: AtomicU64,
}

/// While degraded, repeat the warning at most this often.
const WARN_EVERY_MS: u64 = 10_000;

impl Health {
    fn ok(&self) {
        if self.degraded.load(Ordering::Relaxed) && self.degraded.swap(false, Ordering::Relaxed) {
            crate::metrics::store_degraded(false);
            tracing::info!("smache: the store is reachable again; caching resumed");
        }
    }

    fn failed(&self, err: &Error) {
        if err.is_unreachable() {
            tracing::debug!(error = %err, "smache: Redis unreachable; computing directly");
            return;
        }
        let now = envelope::now_ms();
        let was_degraded = self.degraded.swap(true, Ordering::Relaxed);
        crate::metrics::store_degraded(true);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if !was_degraded || now.saturating_sub(last) >= WARN_EVERY_MS {
            self.last_warning_ms.store(now, Ordering::Relaxed);
            tracing::warn!(error = %err, "smache: the store is unavailable; computing values directly until it returns");
        } else {
            tracing::debug!(error = %err, "smache: store still unavailable");
        }
    }
}
