//! The one call algorithm, shared by async and sync functions, submits and
//! an executor's jobs: look up → (hit) serve; (miss) single flight in this
//! process, a turn across processes → compute → store.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::deps::{self, Recorded, Recorder};
use super::drive::Drive;
use super::mode::{self, Mode};
use super::turn::Resolved;
use crate::flight::{follow, Join, Landing};
use crate::instance::{Fetched, Inner, Located, Smache};
use crate::key::{CacheKey, Job};
use crate::runtime;
use crate::spec::FnSpec;
use crate::store::{keys, Outcome, Put};

/// One call of a computed function, once its key is built.
pub(crate) struct Call {
    pub(super) inner: Arc<Inner>,
    pub(super) at: Located,
    pub(super) spec: &'static FnSpec,
    ttl: Option<Duration>,
    /// The key called with: its static dependencies are only worked out
    /// on a miss.
    pub(super) key: CacheKey,
    /// Reached through an alias: `at` is the value it stands for.
    redirected: bool,
    /// Made while another value computes (it depends on this one).
    nested: bool,
    /// On a store of several shards, the id of the value whose computation
    /// made this call (nested): a value of another shard is read only
    /// once that value's edge on it is written (see `call::edge`).
    pub(super) home: Option<String>,
}

/// What a lookup decided.
pub(crate) enum Looked<V> {
    /// A value that may be served, with its bytes and version.
    Hit(V, Vec<u8>, u64),
    /// Nothing servable: the call (redirected if the key is an alias) and
    /// the version found, if any.
    Miss(Arc<Call>, Option<u64>),
    /// The store could not be asked (already logged).
    Unreachable,
}

impl Call {
    /// The call of `key` in `smache`; `None` (logged) when the key could
    /// not be built: the caller computes without the cache.
    pub(crate) fn prepare(
        smache: Smache,
        spec: &'static FnSpec,
        key: crate::Result<CacheKey>,
    ) -> Option<Arc<Call>> {
        match key {
            Ok(key) => {
                let at = smache.locate(&key);
                // A computation in progress depends on this value.
                let nested = deps::depends_on_value(&at.id);
                let home = (nested && smache.inner.store.sharded())
                    .then(deps::home)
                    .flatten();
                Some(Arc::new(Call {
                    redirected: false,
                    nested,
                    home,
                    ttl: spec.ttl().or(smache.inner.settings.default_ttl),
                    key,
                    inner: smache.inner,
                    at,
                    spec,
                }))
            }
            Err(err) => {
                tracing::warn!(function = spec.name(), error = %err, "smache: cannot build the cache key; computing without the cache");
                None
            }
        }
    }

    /// The value this call is for.
    pub(crate) fn at(&self) -> &Located {
        &self.at
    }

    /// The call of the value an alias stands for: it is looked up, computed
    /// and stored in the alias's stead.
    fn redirect(&self, target: Located) -> Call {
        deps::depends_on_value(&target.id);
        Call {
            inner: Arc::clone(&self.inner),
            at: target,
            spec: self.spec,
            ttl: self.ttl,
            key: self.key.clone(),
            redirected: true,
            nested: self.nested,
            home: self.home.clone(),
        }
    }

    /// What this call's followers get for these bytes, stored as `version`
    /// when known.
    pub(super) fn landing(&self, data: Arc<Vec<u8>>, version: Option<u64>) -> Landing {
        let alias_of = self.redirected.then(|| Arc::from(self.at.id.as_str()));
        Landing::Value(data, alias_of, version)
    }

    /// Tells the computation this call is nested in, if any, which value
    /// of `id` it got: stored as `version`, with envelope `data`.
    pub(super) fn note_read(&self, id: &str, version: u64, data: &[u8]) {
        if self.nested {
            deps::read(id, version, data);
        }
    }

    /// [`note_read`](Self::note_read) for a value landed in this process,
    /// if its version is known.
    pub(super) fn note_landing(&self, landing: &Landing) {
        if let Landing::Value(data, alias_of, Some(version)) = landing {
            let id = alias_of.as_deref().unwrap_or(&self.at.id);
            self.note_read(id, *version, data);
        }
    }

    /// Whether the instance keeps its values in Redis (rather than in the
    /// embedded store): the `layer` of its metrics.
    fn redis(&self) -> bool {
        self.inner.store.backend() == crate::store::Backend::Redis
    }

    /// Where this call's hits are answered, for their metric.
    fn served(&self) -> crate::metrics::Served {
        if self.redis() {
            crate::metrics::Served::Redis
        } else {
            crate::metrics::Served::Embedded
        }
    }

    /// Whether a stored value may be served; see [`Inner::acceptable`].
    pub(super) fn acceptable(&self, fetched: &Fetched) -> bool {
        self.inner.acceptable(self.spec, fetched)
    }

    /// Looks the value up (following an alias) and decides: a value that
    /// may be served (one past its time-to-live is served once more and a
    /// refresh queued), or a miss.
    pub(crate) async fn look<V: DeserializeOwned>(self: Arc<Self>, drive: Drive) -> Looked<V> {
        let looked = {
            let call = Arc::clone(&self);
            drive
                .store(&self.inner, async move {
                    let home = call.home.as_deref();
                    call.inner.lookup_from(&call.at, home).await
                })
                .await
                .unwrap_or(Err(()))
        };
        let Ok((fetched, alias_of)) = looked else {
            return Looked::Unreachable;
        };
        let call = match alias_of {
            Some(target) => {
                if self.home.is_some() {
                    // lookup_from wrote the edge on it, if it was needed.
                    deps::edge_written(&target.id);
                }
                Arc::new(self.redirect(target))
            }
            None => self,
        };
        let Some(fetched) = fetched else {
            return Looked::Miss(call, None);
        };
        if call.acceptable(&fetched) {
            if fetched.expired && !fetched.stale {
                call.refresh_in_background(fetched.version);
            }
            if let Some(value) = Inner::decode(&call.at.key, &fetched.data) {
                return Looked::Hit(value, fetched.data, fetched.version);
            }
        }
        Looked::Miss(call, Some(fetched.version))
    }

    /// What a follower in this process gets from its pilot.
    fn landed<V: DeserializeOwned>(&self, landing: Landing) -> Option<V> {
        match landing {
            Landing::Value(ref data, ref alias_of, _) => {
                if let Some(target) = alias_of {
                    // The pilot followed an alias: this value depends on
                    // the target's, as the pilot's does.
                    deps::depends_on_value(target);
                }
                self.note_landing(&landing);
                Inner::decode(&self.at.key, data)
            }
            Landing::Failed | Landing::Cancelled => None,
        }
    }

    /// Runs the computation `fut`, recording its dependencies; `measured`
    /// (a caller's computation, not an executor's recompute) records its
    /// time and traces it.
    async fn compute<R>(&self, fut: impl Future<Output = R>, measured: bool) -> (R, Recorded) {
        let home = self.inner.store.sharded().then(|| self.at.id.clone());
        let recorder = Recorder::new(&self.key, home);
        if !measured {
            return recorder.record(fut).await;
        }
        let span =
            tracing::debug_span!("smache.compute", function = self.spec.name(), id = %self.at.id);
        let started = Instant::now();
        let output = recorder.record(fut.instrument(span)).await;
        crate::metrics::computed(self.spec.name(), self.spec.metrics(), started.elapsed());
        output
    }

    /// Computes without storing (the store is unreachable, or the pilot
    /// this caller followed failed); why the result is not cached, if it
    /// is not.
    async fn compute_only<M: Mode<R>, R>(
        &self,
        fut: impl Future<Output = R>,
    ) -> (R, Option<Vec<u8>>, Option<String>) {
        let (result, _) = self.compute(fut, true).await;
        let (data, failure) = self.encode::<M, R>(&result);
        (result, data, failure)
    }

    /// What of `result` is stored, if any, and why it is not, if it is not.
    fn encode<M: Mode<R>, R>(&self, result: &R) -> (Option<Vec<u8>>, Option<String>) {
        let data = M::cacheable(result).and_then(|v| Inner::encode(&self.at.key, v));
        let failure = mode::failure::<M, R>(result, data.is_some());
        (data, failure)
    }

    /// Stores what a computation from generation `started` produced (or
    /// gives up the lease `owner` holds, if any): how it went, what this
    /// call's followers get, and why the result is not cached, if it is not.
    async fn store_result<M: Mode<R>, R>(
        self: &Arc<Self>,
        result: &R,
        recorded: Recorded,
        started: Option<u64>,
        owner: Option<String>,
        drive: Drive,
    ) -> (Outcome, Landing, Option<String>) {
        let (data, mut failure) = self.encode::<M, R>(result);
        let size = data.as_ref().map_or(0, Vec::len);
        let settled = Arc::clone(self).settle(started, owner, data, recorded);
        let (outcome, landing) = drive
            .store(&self.inner, settled)
            .await
            .unwrap_or((Outcome::Unreachable, Landing::Failed));
        if outcome == Outcome::TooLarge {
            failure = Some(format!(
                "the value ({size} bytes) is larger than max_value_size"
            ));
        }
        (outcome, landing, failure)
    }

    /// Queues a refresh of the value found as `version` without making
    /// the caller wait for it.
    fn refresh_in_background(self: &Arc<Self>, version: u64) {
        let call = Arc::clone(self);
        let refresh = async move {
            if let Err(err) = call.inner.store.refresh(call.at.slot(), version).await {
                tracing::debug!(key = %call.at.key, error = %err, "smache: could not queue the refresh of an expired value");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(refresh);
            }
            Err(_) => {
                let _ = runtime::block_on(refresh);
            }
        }
    }

    pub(super) fn put_request<'a>(
        &'a self,
        data: Vec<u8>,
        started: u64,
        recorded: &'a Recorded,
    ) -> Put<'a> {
        Put {
            slot: self.at.slot(),
            data,
            ttl: self.ttl,
            started,
            refresh: self.spec.refresh(),
            relations: self.spec.relations(),
            deps: &recorded.tokens,
            read: &recorded.read,
            external: self.inner.external(self.spec),
        }
    }

    /// Whether a value recorded so depends on documents, which only a
    /// worker's change stream keeps it fresh from.
    pub(super) fn needs_a_worker(&self, recorded: &Recorded) -> bool {
        !self.spec.relations().is_empty()
            || recorded.tokens.iter().any(|t| keys::names_documents(t))
    }
}

/// The call algorithm: serve a hit; else one computation for all the
/// callers of this value in this process (the first leads, the others
/// follow) and across processes (one holds the compute lease), stored and
/// handed to every caller. Returns the function's result and why it was
/// not cached, if it was not.
pub(crate) async fn run<M, R, F, Fut>(
    call: Arc<Call>,
    compute: F,
    drive: Drive,
) -> (R, Option<String>)
where
    M: Mode<R>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = R>,
{
    let spec = call.spec;
    if !call.edge_first(&call.at.id, drive).await {
        let (result, _, failure) = call.compute_only::<M, R>(compute()).await;
        return (result, failure);
    }
    let pilot = loop {
        match call.inner.flights.join(&call.at.key) {
            Join::Lead(pilot) => break pilot,
            Join::Follow(rx) => match follow(rx).await {
                // The pilot gave up (its caller was dropped): start over.
                Landing::Cancelled => {}
                landing => {
                    if let Some(target) = call.read_again(&landing) {
                        if let Some(value) = call.read_target::<M::Value>(&target, drive).await {
                            crate::metrics::coalesced(spec.name(), spec.metrics());
                            return (M::from_cached(value), None);
                        }
                    } else if let Some(value) = call.landed::<M::Value>(landing) {
                        crate::metrics::coalesced(spec.name(), spec.metrics());
                        return (M::from_cached(value), None);
                    }
                    let (result, _, failure) = call.compute_only::<M, R>(compute()).await;
                    return (result, failure);
                }
            },
        }
    };
    let (call, seen) = match Arc::clone(&call).look::<M::Value>(drive).await {
        Looked::Hit(value, data, version) => {
            crate::metrics::hit(spec.name(), spec.metrics(), call.served());
            call.note_read(&call.at.id, version, &data);
            pilot.land_with(|| call.landing(Arc::new(data), Some(version)));
            return (M::from_cached(value), None);
        }
        Looked::Miss(call, seen) => (call, seen),
        Looked::Unreachable => {
            let (result, data, failure) = call.compute_only::<M, R>(compute()).await;
            // What followers get: the value, so that they need not
            // compute it too.
            pilot.land(data.map_or(Landing::Failed, |data| call.landing(Arc::new(data), None)));
            return (result, failure);
        }
    };
    crate::metrics::miss(spec.name(), spec.metrics(), call.redis());
    let turn = drive
        .store(&call.inner, Arc::clone(&call).take_turn(seen))
        .await;
    let (pilot, started, owner) = match call.resolve::<M::Value>(turn, pilot) {
        Resolved::Cached(value) => return (M::from_cached(value), None),
        Resolved::Compute(pilot, started, owner) => (pilot, started, owner),
    };
    let keeper = call.keep_lease(&owner);
    let (result, recorded) = call.compute(compute(), true).await;
    let (_, landing, failure) = call
        .store_result::<M, R>(&result, recorded, started, Some(owner), drive)
        .await;
    // Only now: a caller dropped while storing still lets the lease go.
    keeper.done();
    call.note_landing(&landing);
    pilot.land(landing);
    (result, failure)
}

/// An executor's recompute of a stale value from change generation
/// `started`: no lookup, no single flight; stored only if no value
/// computed from newer data was stored meanwhile. Reported to `job`.
pub(crate) async fn recompute<M, R>(
    call: Arc<Call>,
    started: u64,
    fut: impl Future<Output = R>,
    job: &Job,
) -> R
where
    M: Mode<R>,
{
    let (result, recorded) = call.compute(fut, false).await;
    // In the executor's runtime, as a job runs, whether the function is
    // async or not.
    let (outcome, _, failure) = call
        .store_result::<M, R>(&result, recorded, Some(started), None, Drive::Async)
        .await;
    job.report(Some(outcome), failure);
    result
}
