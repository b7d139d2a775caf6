//! Reading how a value stands ([`Smache::entry`], [`Smache::is_fresh`])
//! and waiting until it is fresh ([`Smache::wait_fresh`],
//! [`Smache::wait_fresh_after`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::Smache;
use crate::envelope;
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::runtime;
use crate::store::{Backend, Lookup, Store};

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

impl Smache {
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
            let written = crate::store::timestamp_key(write);
            let mut pause = Pause::new();
            // Every change up to the write has been turned into jobs…
            let newest = loop {
                let (reached, newest) = store.worker_progress().await?;
                if reached.is_some_and(|reached| reached >= written) {
                    break newest;
                }
                if !pause.until(deadline).await {
                    return Ok(false);
                }
            };
            // …and the relation jobs among them have run.
            while store.relations_pending(&newest).await? {
                if !pause.until(deadline).await {
                    return Ok(false);
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
            let lookup = inner.stored(&storage_key).await?;
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
        let lookup = runtime::in_tokio(async move { inner.stored(&storage_key).await }).await??;
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
