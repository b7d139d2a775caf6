//! What a `#[computed]` function does when called: look up, else compute
//! and store, recording what the value depends on. Reached only through
//! the generated code.
//!
//! Two task-locals carry context through a computation:
//! * `DEPS`: the dependencies of the value being computed; a `#[computed]`
//!   call made while computing adds itself (`v:<id>`), so nested values are
//!   tracked without the user saying so, and which value it read (version
//!   and computed-at time), so that a value stored anew before the
//!   computation's own store makes that store stale (see `store.lua`).
//!   Work moved to other tasks (`tokio::spawn`) is not tracked.
//! * `TARGET`: set by an executor running a recompute job; the call whose
//!   key it names skips the lookup, computes, and stores conditionally on
//!   the job's change generation.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::envelope;
use crate::error::Result;
use crate::flight::{follow, Join, Landing, Pilot};
use crate::instance::{Fetched, Inner, Located, Smache};
use crate::key::CacheKey;
use crate::runtime;
use crate::spec::FnSpec;
use crate::store::{Backend, Begin, Put, Store};
use crate::sync::lock;

/// How a function's return value maps to the cached value.
pub trait Mode<R> {
    /// The type that is stored.
    type Value: Serialize + DeserializeOwned;
    /// The part of a result to store, if any.
    fn cacheable(result: &R) -> Option<&Self::Value>;
    /// Rebuilds a result from a stored value.
    fn from_cached(value: Self::Value) -> R;
    /// Why a result is not cached, for the waiters of a submitted task and
    /// the executor's log: the error's message.
    fn failure(result: &R) -> Option<String>;
}

/// The cached value type of a mode, without [`Mode`]'s serde bounds: the
/// generated `submit` names its return type with it, so that a return type
/// that cannot be cached is reported once, by the call.
pub trait ValueType<R> {
    /// The type that is stored.
    type Value;
}

impl<T> ValueType<T> for Plain {
    type Value = T;
}

impl<T, E> ValueType<Result<T, E>> for OkOnly {
    type Value = T;
}

/// Every return value is cached.
#[derive(Debug)]
pub struct Plain;

impl<T: Serialize + DeserializeOwned> Mode<T> for Plain {
    type Value = T;
    fn cacheable(result: &T) -> Option<&T> {
        Some(result)
    }
    fn from_cached(value: T) -> T {
        value
    }
    fn failure(_: &T) -> Option<String> {
        None
    }
}

/// For functions returning `Result`: only `Ok` values are cached; the
/// message of an `Err` is what waiters on a submitted task are told.
#[derive(Debug)]
pub struct OkOnly;

impl<T: Serialize + DeserializeOwned, E: std::fmt::Display> Mode<Result<T, E>> for OkOnly {
    type Value = T;
    fn cacheable(result: &Result<T, E>) -> Option<&T> {
        result.as_ref().ok()
    }
    fn from_cached(value: T) -> Result<T, E> {
        Ok(value)
    }
    fn failure(result: &Result<T, E>) -> Option<String> {
        result.as_ref().err().map(ToString::to_string)
    }
}

/// What a computation depends on, recorded as it runs.
#[derive(Debug, Default)]
struct Recorded {
    /// Its dependency tokens.
    tokens: Vec<String>,
    /// The values it read (nested calls): each one's id and what was read
    /// of it, `<version>:<computed-at ms>` (see [`read_mark`]).
    read: Vec<(String, String)>,
}

type Deps = Arc<Mutex<Recorded>>;

/// What identifies a value read as `version` with envelope `data`, as
/// `store.lua` compares it: the version alone starts over at 1 when a key
/// is removed and computed again, the computed-at time tells those apart.
/// Version 0 (no stored value has it) for a value that is not the stored
/// one.
fn read_mark(version: u64, data: &[u8]) -> String {
    let at = envelope::decode(data).map_or(0, |env| env.computed_at_ms);
    format!("{version}:{at}")
}

tokio::task_local! {
    static DEPS: Deps;
    static TARGET: Arc<Target>;
}

/// A call an executor makes on behalf of a job.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) key: String,
    /// A recompute from this change generation: no lookup, no single
    /// flight, a conditional store. `None`: a submitted task, which goes
    /// through the plain call path (lookup, single flight) and only has
    /// its failure observed.
    pub(crate) started: Option<u64>,
    pub(crate) outcome: Mutex<Option<Outcome>>,
    /// Why the function's result was not cached, if it was not.
    pub(crate) failure: Mutex<Option<String>>,
}

/// What became of a recompute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The value was stored.
    Stored,
    /// A value computed from newer data was already stored.
    Superseded,
    /// The function returned an error or an unserializable value.
    NotCached,
    /// The store could not be reached.
    Unreachable,
    /// The value is larger than the instance's `max_value_size`.
    TooLarge,
}

impl Target {
    pub(crate) async fn scope<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        TARGET.scope(Arc::clone(self), fut).await
    }

    pub(crate) fn scope_sync<R>(self: &Arc<Self>, f: impl FnOnce() -> R) -> R {
        TARGET.sync_scope(Arc::clone(self), f)
    }

    pub(crate) fn new(key: String, started: Option<u64>) -> Arc<Self> {
        Arc::new(Target {
            key,
            started,
            outcome: Mutex::new(None),
            failure: Mutex::new(None),
        })
    }

    fn finish(&self, outcome: Outcome) {
        *lock(&self.outcome) = Some(outcome);
    }

    /// Notes why a result is not cached (an `Err`, or a value that cannot
    /// be serialized).
    fn observe<M: Mode<R>, R>(&self, result: &R) {
        let encoded = M::cacheable(result).is_some_and(|v| Inner::encode(&self.key, v).is_some());
        self.observe_encoded::<M, R>(result, encoded);
    }

    /// [`observe`](Self::observe) when the result was already encoded.
    fn observe_encoded<M: Mode<R>, R>(&self, result: &R, encoded: bool) {
        let failure = match M::failure(result) {
            Some(message) => Some(message),
            None if !encoded => Some("the value cannot be serialized".to_owned()),
            None => None,
        };
        *lock(&self.failure) = failure;
    }
}

struct Call {
    inner: Arc<Inner>,
    at: Located,
    spec: &'static FnSpec,
    ttl: Option<Duration>,
    /// The key called with: its static dependencies are only worked out
    /// on a miss.
    key: CacheKey,
    /// Reached through an alias: `at` is the value it stands for.
    redirected: bool,
    /// Made while another value computes (it depends on this one).
    nested: bool,
}

/// A hit in the embedded store, answered before anything else is set up:
/// the value decoded from the stored bytes, which are shared with the store
/// rather than copied out. `None` sends the call down the full path (a
/// miss, an alias, an executor's job, bytes that do not decode: that path
/// logs them).
fn embedded_hit<V: DeserializeOwned>(smache: &Smache, key: &Result<CacheKey>) -> Option<V> {
    let Store::Memory(store) = &smache.inner.store else {
        return None;
    };
    let key = key.as_ref().ok()?;
    if TARGET.try_with(|_| ()).is_ok() {
        return None;
    }
    let data = store.peek(&smache.inner.base, |out| key.write_value_id(out))?;
    let value = envelope::decode(&data).and_then(|env| env.value()).ok()?;
    // A computation in progress depends on this value.
    let _ = DEPS.try_with(|deps| {
        let mut token = String::from("v:");
        key.write_value_id(&mut token);
        lock(deps).tokens.push(token);
    });
    Some(value)
}

fn prepare(smache: Smache, spec: &'static FnSpec, key: Result<CacheKey>) -> Option<Call> {
    match key {
        Ok(key) => {
            let at = smache.locate(&key);
            // A computation in progress depends on this value.
            let nested = DEPS
                .try_with(|deps| lock(deps).tokens.push(format!("v:{}", at.id)))
                .is_ok();
            Some(Call {
                redirected: false,
                nested,
                ttl: spec.ttl().or(smache.inner.default_ttl),
                key,
                inner: smache.inner,
                at,
                spec,
            })
        }
        Err(err) => {
            tracing::warn!(function = spec.name(), error = %err, "smache: cannot build the cache key; computing without the cache");
            None
        }
    }
}

impl Call {
    /// The executor's job for this very value, if this call runs one.
    fn target(&self) -> Option<Arc<Target>> {
        TARGET
            .try_with(|target| (target.key == self.at.key).then(|| Arc::clone(target)))
            .ok()
            .flatten()
    }

    /// The call of the value an alias stands for: it is looked up, computed
    /// and stored in the alias's stead.
    fn redirect(&self, target: Located) -> Call {
        let _ = DEPS.try_with(|deps| lock(deps).tokens.push(format!("v:{}", target.id)));
        Call {
            inner: Arc::clone(&self.inner),
            at: target,
            spec: self.spec,
            ttl: self.ttl,
            key: self.key.clone(),
            redirected: true,
            nested: self.nested,
        }
    }

    /// What this call's followers get for these bytes, stored as `version`
    /// when known.
    fn landing(&self, data: Arc<Vec<u8>>, version: Option<u64>) -> Landing {
        let alias_of = self.redirected.then(|| Arc::from(self.at.id.as_str()));
        Landing::Value(data, alias_of, version)
    }

    /// Tells the computation this call is nested in, if any, which value
    /// of `id` it got: stored as `version`, with envelope `data`.
    fn note_read(&self, id: &str, version: u64, data: &[u8]) {
        if self.nested {
            let _ = DEPS.try_with(|deps| {
                lock(deps)
                    .read
                    .push((id.to_owned(), read_mark(version, data)));
            });
        }
    }

    /// [`note_read`](Self::note_read) for a value landed in this process,
    /// if its version is known.
    fn note_landing(&self, landing: &Landing) {
        if let Landing::Value(data, alias_of, Some(version)) = landing {
            let id = alias_of.as_deref().unwrap_or(&self.at.id);
            self.note_read(id, *version, data);
        }
    }

    /// Whether a stored value may be served; see [`Inner::acceptable`].
    fn acceptable(&self, fetched: &Fetched) -> bool {
        self.inner.acceptable(self.spec, fetched)
    }

    /// A usable stored value, if any; one past its time-to-live is served
    /// once more and a refresh queued.
    fn usable<V: DeserializeOwned>(
        self: &Arc<Self>,
        fetched: Option<Fetched>,
    ) -> Option<(V, Vec<u8>)> {
        let fetched = fetched?;
        if !self.acceptable(&fetched) {
            return None;
        }
        if fetched.expired && !fetched.stale {
            self.refresh_in_background(fetched.version);
        }
        let value = Inner::decode(&self.at.key, &fetched.data)?;
        Some((value, fetched.data))
    }

    /// What a pilot that computed without the store (unreachable) hands
    /// its followers: the value, so that they need not compute it too.
    fn share<M: Mode<R>, R>(&self, pilot: Pilot, result: &R) {
        let data = M::cacheable(result).and_then(|v| Inner::encode(&self.at.key, v));
        pilot.land(data.map_or(Landing::Failed, |data| self.landing(Arc::new(data), None)));
    }

    /// After a miss, waits for this caller's turn across processes: compute
    /// (holding the compute lease), or read the value another process
    /// stored meanwhile. `seen` is the version of the value this caller's
    /// lookup found, if any: the lease is never granted over a value stored
    /// after this caller's last read (the holder it waited for finished
    /// just before), which is read instead, and served if it may be.
    async fn take_turn(self: Arc<Self>, seen: Option<u64>) -> Turn {
        // As begin.lua compares it: "" for none.
        let mut seen = seen.map_or_else(String::new, |version| version.to_string());
        let owner = bson::oid::ObjectId::new().to_hex();
        let static_deps = self.key.static_deps();
        loop {
            // Registered before asking, so a notification cannot slip by.
            let waiter = self.inner.store.waiter(&self.inner.base, &self.at.id).await;
            let begun = self
                .inner
                .store
                .begin(
                    self.at.slot(&self.inner.base),
                    &static_deps,
                    &owner,
                    self.inner.compute_lease,
                    &seen,
                )
                .await;
            // The version begin.lua found stored when it says to read it.
            let stored = match begun {
                Ok(Begin::Go(generation)) => {
                    self.inner.store_ok();
                    return Turn::Compute {
                        started: Some(generation),
                        owner,
                    };
                }
                Ok(Begin::Read(stored)) => stored,
                Ok(Begin::Wait(left)) => {
                    // Woken by the notification; re-checked at least every
                    // 250 ms in case it is lost, and when the lease ends.
                    let pause = left.clamp(Duration::from_millis(1), Duration::from_millis(250));
                    match waiter {
                        Some(waiter) => {
                            let _ = tokio::time::timeout(pause, waiter).await;
                        }
                        None => tokio::time::sleep(pause.min(Duration::from_millis(25))).await,
                    }
                    String::new()
                }
                Err(err) => {
                    self.inner.store_failed(&err);
                    return Turn::Compute {
                        started: None,
                        owner,
                    };
                }
            };
            match self.inner.fetch(&self.at.key).await {
                Ok(Some(fetched)) if self.acceptable(&fetched) => return Turn::Ready(fetched),
                // Not servable (stale, say): the next turn may compute.
                Ok(Some(fetched)) => seen = fetched.version.to_string(),
                // Nothing readable (gone, or not a value): what begin.lua
                // found counts as seen, so that only a newer store is new.
                Ok(None) => seen = stored,
                Err(()) => {
                    return Turn::Compute {
                        started: None,
                        owner,
                    }
                }
            }
        }
    }

    /// What a follower in this process gets from its pilot.
    fn landed<V: DeserializeOwned>(&self, landing: Landing) -> Option<V> {
        match landing {
            Landing::Value(ref data, ref alias_of, _) => {
                if let Some(target) = alias_of {
                    // The pilot followed an alias: this value depends on
                    // the target's, as the pilot's does.
                    let _ = DEPS.try_with(|deps| lock(deps).tokens.push(format!("v:{target}")));
                }
                self.note_landing(&landing);
                Inner::decode(&self.at.key, data)
            }
            Landing::Failed | Landing::Cancelled => None,
        }
    }

    /// Resolves a caller's turn: the value another process stored (its
    /// bytes handed on to this process's followers), or what to compute
    /// with. No turn (the store failed) means computing without storing.
    fn resolve<V: DeserializeOwned>(&self, turn: Option<Turn>, pilot: Pilot) -> Resolved<V> {
        match turn {
            Some(Turn::Ready(fetched)) => match Inner::decode(&self.at.key, &fetched.data) {
                Some(value) => {
                    let landing = self.landing(Arc::new(fetched.data), Some(fetched.version));
                    self.note_landing(&landing);
                    pilot.land(landing);
                    Resolved::Cached(value)
                }
                None => Resolved::Compute(pilot, None, String::new()),
            },
            Some(Turn::Compute { started, owner }) => Resolved::Compute(pilot, started, owner),
            None => Resolved::Compute(pilot, None, String::new()),
        }
    }

    /// Keeps the compute lease alive while the computation runs. Call
    /// [`LeaseKeeper::done`] when it returns; a keeper dropped without it
    /// (the function panicked, or the caller dropped its future) gives the
    /// lease up, so that waiters elsewhere take over at once.
    fn keep_lease(self: &Arc<Self>, owner: &str) -> LeaseKeeper {
        if self.inner.store.backend() == Backend::Embedded || owner.is_empty() {
            return LeaseKeeper {
                renewal: None,
                release: None,
            };
        }
        let call = Arc::clone(self);
        let owner = owner.to_owned();
        let owner_for_release = owner.clone();
        let every = call.inner.compute_lease / 3;
        let task = runtime::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match call
                    .inner
                    .store
                    .renew(&call.at.key, &owner, call.inner.compute_lease)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => break, // taken over, or already stored
                    Err(err) => {
                        tracing::debug!(key = %call.at.key, error = %err, "smache: could not renew a compute lease");
                    }
                }
            }
        });
        LeaseKeeper {
            renewal: Some(task.abort_handle()),
            release: Some((Arc::clone(self), owner_for_release)),
        }
    }

    /// Stores what a computation produced (or gives up its lease), and says
    /// what the callers waiting on it in this process get.
    async fn settle(
        self: Arc<Self>,
        started: Option<u64>,
        owner: Option<String>,
        data: Option<Vec<u8>>,
        mut recorded: Recorded,
    ) -> (Outcome, Landing) {
        match (started, data) {
            (Some(started), Some(data)) => {
                let shared = Arc::new(data.clone());
                // A value read many times is checked once.
                recorded.read.sort_unstable();
                recorded.read.dedup();
                let (outcome, version) = self
                    .inner
                    .put(self.put_request(data, started, &recorded))
                    .await;
                if outcome == Outcome::Stored && self.needs_a_worker(&recorded) {
                    crate::roster::stored(&self.inner);
                }
                if outcome == Outcome::TooLarge {
                    if let Some(target) = self.target() {
                        *lock(&target.failure) = Some(format!(
                            "the value ({} bytes) is larger than max_value_size",
                            shared.len()
                        ));
                    }
                }
                if let (Outcome::Unreachable | Outcome::TooLarge, Some(owner)) = (outcome, &owner) {
                    // Nothing was stored (MongoDB failed while Redis may be
                    // fine, or the value is too large): let waiters go.
                    let _ = self
                        .inner
                        .store
                        .release(self.at.slot(&self.inner.base), owner)
                        .await;
                }
                let landing = match outcome {
                    Outcome::Stored => self.landing(shared, version),
                    // A newer value is stored: whoever read this one read
                    // a value that is not the stored one.
                    Outcome::Superseded => self.landing(shared, Some(0)),
                    Outcome::Unreachable | Outcome::TooLarge => self.landing(shared, None),
                    Outcome::NotCached => Landing::Failed,
                };
                (outcome, landing)
            }
            (Some(_), None) => {
                if let Some(owner) = owner {
                    if let Err(err) = self
                        .inner
                        .store
                        .release(self.at.slot(&self.inner.base), &owner)
                        .await
                    {
                        self.inner.store_failed(&err);
                    }
                }
                (Outcome::NotCached, Landing::Failed)
            }
            (None, data) => (
                Outcome::Unreachable,
                data.map_or(Landing::Failed, |data| self.landing(Arc::new(data), None)),
            ),
        }
    }

    /// Queues a refresh of the value found as `version` without making
    /// the caller wait for it.
    fn refresh_in_background(self: &Arc<Self>, version: u64) {
        let call = Arc::clone(self);
        let refresh = async move {
            if let Err(err) = call
                .inner
                .store
                .refresh(call.at.slot(&call.inner.base), version)
                .await
            {
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

    fn put_request<'a>(&'a self, data: Vec<u8>, started: u64, recorded: &'a Recorded) -> Put<'a> {
        Put {
            slot: self.at.slot(&self.inner.base),
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
    fn needs_a_worker(&self, recorded: &Recorded) -> bool {
        !self.spec.relations().is_empty()
            || recorded
                .tokens
                .iter()
                .any(|token| token.starts_with("e:") || token.starts_with("c:"))
    }

    fn deps(&self) -> Deps {
        Arc::new(Mutex::new(Recorded {
            tokens: self.key.static_deps(),
            read: Vec::new(),
        }))
    }
}

/// A resolved turn: a value to return, or a computation to run (as pilot,
/// from this generation, holding the lease as this owner).
enum Resolved<V> {
    Cached(V),
    Compute(Pilot, Option<u64>, String),
}

/// Renews a compute lease while a computation runs; see [`Call::keep_lease`].
struct LeaseKeeper {
    renewal: Option<tokio::task::AbortHandle>,
    /// Armed until the computation returns.
    release: Option<(Arc<Call>, String)>,
}

impl LeaseKeeper {
    /// The value was stored (or the lease given up): stop renewing,
    /// nothing to release.
    fn done(mut self) {
        self.release = None;
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
        if let Some((call, owner)) = self.release.take() {
            runtime::spawn(async move {
                let slot = call.at.slot(&call.inner.base);
                if let Err(err) = call.inner.store.release(slot, &owner).await {
                    call.inner.store_failed(&err);
                }
            });
        }
    }
}

/// What a caller that missed does after [`Call::take_turn`].
enum Turn {
    /// Compute: from this change generation (`None`: the store is
    /// unreachable, compute without storing), holding the lease as `owner`.
    Compute { started: Option<u64>, owner: String },
    /// Another process stored the value meanwhile.
    Ready(Fetched),
}

/// The body of an `async` computed function.
pub async fn call_async<M, R>(
    spec: &'static FnSpec,
    key: Result<CacheKey>,
    compute: impl Future<Output = R>,
) -> R
where
    M: Mode<R>,
{
    let smache = Smache::current();
    if let Some(value) = embedded_hit::<M::Value>(&smache, &key) {
        crate::metrics::hit(spec, Backend::Embedded);
        return M::from_cached(value);
    }
    let Some(call) = prepare(smache, spec, key) else {
        let started = Instant::now();
        let result = compute.await;
        crate::metrics::computed(spec, started.elapsed());
        return result;
    };
    let call = Arc::new(call);
    let target = call.target();
    if let Some((target, started)) = target
        .as_ref()
        .and_then(|t| t.started.map(|started| (t, started)))
    {
        // An executor's recompute: no lookup, no single flight.
        let deps = call.deps();
        let result = DEPS.scope(Arc::clone(&deps), compute).await;
        let data = M::cacheable(&result).and_then(|v| Inner::encode(&call.at.key, v));
        target.observe_encoded::<M, R>(&result, data.is_some());
        let deps = std::mem::take(&mut *lock(&deps));
        let settled = Arc::clone(&call).settle(Some(started), None, data, deps);
        let (outcome, _) = runtime::in_tokio(settled)
            .await
            .unwrap_or((Outcome::Unreachable, Landing::Failed));
        target.finish(outcome);
        return result;
    }
    // A submitted task runs the plain path; whatever computes is observed
    // (and measured, in a span: never on a hit).
    let at = Arc::clone(&call);
    let compute = async move {
        let span = tracing::debug_span!("smache.compute", function = spec.name(), id = %at.at.id);
        let started = Instant::now();
        let result = compute.instrument(span).await;
        crate::metrics::computed(spec, started.elapsed());
        if let Some(target) = &target {
            target.observe::<M, R>(&result);
        }
        result
    };
    // Concurrent callers of this process share one lookup (and, on a
    // miss, one computation): the first leads, the others follow.
    let pilot = loop {
        match call.inner.flights.join(&call.at.key) {
            Join::Lead(pilot) => break pilot,
            Join::Follow(rx) => match follow(rx).await {
                // The pilot gave up (its caller was dropped): start over.
                Landing::Cancelled => {}
                landing => {
                    return match call.landed::<M::Value>(landing) {
                        Some(value) => {
                            crate::metrics::coalesced(spec);
                            M::from_cached(value)
                        }
                        None => compute.await,
                    }
                }
            },
        }
    };
    let looked = {
        let call = Arc::clone(&call);
        runtime::in_tokio(async move { call.inner.lookup(&call.at).await })
            .await
            .unwrap_or(Err(()))
    };
    let Ok((fetched, alias_of)) = looked else {
        let result = compute.await;
        call.share::<M, R>(pilot, &result);
        return result;
    };
    let call = match alias_of {
        Some(target) => Arc::new(call.redirect(target)),
        None => call,
    };
    let seen = fetched.as_ref().map(|fetched| fetched.version);
    if let Some((value, data)) = call.usable::<M::Value>(fetched) {
        crate::metrics::hit(spec, call.inner.store.backend());
        if let Some(version) = seen {
            call.note_read(&call.at.id, version, &data);
        }
        pilot.land_with(|| call.landing(Arc::new(data), seen));
        return M::from_cached(value);
    }
    crate::metrics::miss(spec, call.inner.store.backend());
    let turn = runtime::in_tokio(Arc::clone(&call).take_turn(seen))
        .await
        .ok();
    let (pilot, started, owner) = match call.resolve::<M::Value>(turn, pilot) {
        Resolved::Cached(value) => return M::from_cached(value),
        Resolved::Compute(pilot, started, owner) => (pilot, started, owner),
    };
    let keeper = call.keep_lease(&owner);
    let deps = call.deps();
    let result = DEPS.scope(Arc::clone(&deps), compute).await;
    let data = M::cacheable(&result).and_then(|v| Inner::encode(&call.at.key, v));
    let deps = std::mem::take(&mut *lock(&deps));
    let settled = Arc::clone(&call).settle(started, Some(owner), data, deps);
    let (_, landing) = runtime::in_tokio(settled)
        .await
        .unwrap_or((Outcome::Unreachable, Landing::Failed));
    // Only now: a caller dropped while storing still lets the lease go.
    keeper.done();
    call.note_landing(&landing);
    pilot.land(landing);
    result
}

/// The body of a synchronous computed function. Works with or without a
/// tokio runtime around the caller.
pub fn call_sync<M, R>(
    spec: &'static FnSpec,
    key: Result<CacheKey>,
    compute: impl FnOnce() -> R,
) -> R
where
    M: Mode<R>,
{
    let smache = Smache::current();
    if let Some(value) = embedded_hit::<M::Value>(&smache, &key) {
        crate::metrics::hit(spec, Backend::Embedded);
        return M::from_cached(value);
    }
    let Some(call) = prepare(smache, spec, key) else {
        let started = Instant::now();
        let result = compute();
        crate::metrics::computed(spec, started.elapsed());
        return result;
    };
    let call = Arc::new(call);
    let target = call.target();
    if let Some((target, started)) = target
        .as_ref()
        .and_then(|t| t.started.map(|started| (t, started)))
    {
        let deps = call.deps();
        let result = DEPS.sync_scope(Arc::clone(&deps), compute);
        let data = M::cacheable(&result).and_then(|v| Inner::encode(&call.at.key, v));
        target.observe_encoded::<M, R>(&result, data.is_some());
        let deps = std::mem::take(&mut *lock(&deps));
        let (outcome, _) = blocking(&call, move |call| {
            call.settle(Some(started), None, data, deps)
        })
        .unwrap_or((Outcome::Unreachable, Landing::Failed));
        target.finish(outcome);
        return result;
    }
    let at = Arc::clone(&call);
    let compute = move || {
        let span = tracing::debug_span!("smache.compute", function = spec.name(), id = %at.at.id);
        let started = Instant::now();
        let result = span.in_scope(compute);
        crate::metrics::computed(spec, started.elapsed());
        if let Some(target) = &target {
            target.observe::<M, R>(&result);
        }
        result
    };
    let pilot = loop {
        match call.inner.flights.join(&call.at.key) {
            Join::Lead(pilot) => break pilot,
            Join::Follow(rx) => match futures::executor::block_on(follow(rx)) {
                Landing::Cancelled => {}
                landing => {
                    return match call.landed::<M::Value>(landing) {
                        Some(value) => {
                            crate::metrics::coalesced(spec);
                            M::from_cached(value)
                        }
                        None => compute(),
                    }
                }
            },
        }
    };
    let looked = blocking(
        &call,
        |call| async move { call.inner.lookup(&call.at).await },
    )
    .unwrap_or(Err(()));
    let Ok((fetched, alias_of)) = looked else {
        let result = compute();
        call.share::<M, R>(pilot, &result);
        return result;
    };
    let call = match alias_of {
        Some(target) => Arc::new(call.redirect(target)),
        None => call,
    };
    let seen = fetched.as_ref().map(|fetched| fetched.version);
    if let Some((value, data)) = call.usable::<M::Value>(fetched) {
        crate::metrics::hit(spec, call.inner.store.backend());
        if let Some(version) = seen {
            call.note_read(&call.at.id, version, &data);
        }
        pilot.land_with(|| call.landing(Arc::new(data), seen));
        return M::from_cached(value);
    }
    crate::metrics::miss(spec, call.inner.store.backend());
    let turn = blocking(&call, move |call| call.take_turn(seen));
    let (pilot, started, owner) = match call.resolve::<M::Value>(turn, pilot) {
        Resolved::Cached(value) => return M::from_cached(value),
        Resolved::Compute(pilot, started, owner) => (pilot, started, owner),
    };
    let keeper = call.keep_lease(&owner);
    let deps = call.deps();
    let result = DEPS.sync_scope(Arc::clone(&deps), compute);
    let data = M::cacheable(&result).and_then(|v| Inner::encode(&call.at.key, v));
    let deps = std::mem::take(&mut *lock(&deps));
    let (_, landing) = blocking(&call, move |call| {
        call.settle(started, Some(owner), data, deps)
    })
    .unwrap_or((Outcome::Unreachable, Landing::Failed));
    keeper.done();
    call.note_landing(&landing);
    pilot.land(landing);
    result
}

/// Runs a store operation to completion from synchronous code. The embedded
/// store never waits, so it runs in place; Redis goes through the
/// background runtime. `None` if the background runtime could not run it.
fn blocking<F, Fut>(call: &Arc<Call>, op: F) -> Option<Fut::Output>
where
    F: FnOnce(Arc<Call>) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let fut = op(Arc::clone(call));
    match call.inner.store.backend() {
        Backend::Embedded => Some(futures::executor::block_on(fut)),
        _ => runtime::block_on(fut).ok(),
    }
}
