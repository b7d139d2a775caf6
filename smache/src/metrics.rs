//! What smache measures, through the [`metrics`](https://docs.rs/metrics)
//! facade.
//!
//! smache records; your application decides where the numbers go by
//! installing a recorder (an exporter) once at start-up, such as
//! `metrics-exporter-prometheus`. Without one nothing is recorded and a
//! metric costs a couple of loads. `smache-worker --metrics-addr <ip:port>`
//! serves its own metrics as Prometheus text; `examples/metrics.rs` shows an
//! application doing the same. Call [`describe`] after installing a
//! recorder to give each metric its help text and unit.
//!
//! Labels are bounded: `function` is a `#[computed]` function's name (its
//! `name = "…"` if it sets one), never a value's arguments or id; `prefix`
//! an instance's key prefix.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `smache_hits_total` | counter | `function`, `layer` | calls answered from the store, `layer` `embedded`, `redis`, or `local` (the in-process layer in front of Redis; values kept in MongoDB are read through Redis: `redis`) |
//! | `smache_misses_total` | counter | `function`, `layer` | lookups that found no value to serve (none, stale past what may be served, corrupt); the caller then computes it or waits for the process that does |
//! | `smache_calls_coalesced_total` | counter | `function` | calls that waited for a concurrent call of the same value in this process and took its result, with no lookup of their own |
//! | `smache_computations_total` | counter | `function` | runs of the function for a caller: after a miss, or while the store is unavailable (those runs are not misses) |
//! | `smache_computation_duration_seconds` | histogram | `function` | how long those runs took (the function alone) |
//! | `smache_recomputations_total` | counter | `function`, `outcome` | runs of recompute jobs by this process's executor; `outcome` is `stored`, `superseded` (a value from newer data was already stored), `gone` (an entity was deleted: the value is dropped), `error` (the function failed, panicked or its value did not serialize; retried by the policy), `unreachable` (the store could not be reached; the job stays queued) or `too_large` |
//! | `smache_recomputation_duration_seconds` | histogram | `function` | how long each run took: loading the entity arguments, the function, and storing the value |
//! | `smache_refresh_lag_seconds` | histogram | `function` | from a recompute job's queueing (its stream entry id: Redis's clock) to its value stored (the executor's clock; skew between the two adds to it): how long a changed value waited to be fresh, beside the worker's own lag |
//! | `smache_job_queue_length` | gauge | | entries of the job stream (`{prefix}:jobs`): waiting and held by executors; sampled every [`QUEUE_SAMPLE_EVERY`] by each executor and each `smache-worker` |
//! | `smache_dead_letters_total` | counter | | jobs this process's executor gave up and moved to the dead letters (`{prefix}:dead`, see [`crate::inspect`]) |
//! | `smache_local_misses_total` | counter | | lookups the in-process layer could not answer (nothing kept, past its time-to-live, or the layer off): they go on to Redis |
//! | `smache_local_invalidations_total` | counter | | keys Redis told this process changed (each one dropped from the layer) |
//! | `smache_local_flushes_total` | counter | | times the whole layer was dropped: `FLUSHALL`/`FLUSHDB`, or its tracking connection lost |
//! | `smache_local_entries` | gauge | `prefix` | values the in-process layer of the instance with this prefix holds (sampled every half second) |
//! | `smache_local_bytes` | gauge | `prefix` | their weight, keys and envelopes (bounded by `SmacheBuilder::local_cache_capacity`) |
//! | `smache_store_degraded` | gauge | | 1 while this process's calls find the store unavailable (they compute directly, uncached), 0 once it answers again; absent until the first outage |
//! | `smache_worker_lag_seconds` | gauge | | the watching worker: now minus the cluster time of the change it just handled (cluster times are whole seconds: a worker that keeps up shows 0 to 1 s); 0 when the stream had nothing more to give |
//! | `smache_worker_changes_total` | counter | | change events the watching worker handled (recorded with their jobs and resume token) |
//! | `smache_worker_jobs_queued_total` | counter | | jobs those changes queued (a change whose values already have a job pending queues none) |
//!
//! A call is one of: a hit, a miss (then a computation, or the value
//! another process stored meanwhile), a coalesced call, or a computation
//! with the store unavailable. An executor running a submitted task makes
//! such a call too, and counts it here. Metrics are per process (the
//! instances of one process share them, but for the in-process layer's
//! size, per instance by its `prefix`): sum counters and histograms over
//! processes, but not `smache_job_queue_length`, the same stream as each
//! sampling process sees it (take the latest or the largest), nor
//! `smache_worker_lag_seconds`, which only the watching worker updates (a
//! worker that lost the lease keeps its last value: read the largest of
//! the recent ones, or the watcher's).
//!
//! Cost on the hit path, measured in isolation (release build, 2 cores):
//! without a recorder a hit's metric costs about 4 ns; with the Prometheus
//! recorder about 80 ns (a lookup in its registry: a read lock, a hash
//! probe and a few atomic operations). Each function's metric keys are made
//! on its first call: a hit allocates and formats nothing.
//!
//! Traces: a caller's computation runs in a `smache.compute` span and an
//! executor's recompute job in a `smache.recompute` span, each with the
//! `function` and the value `id` (debug and info level); hits make no span.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Key, Label, Level, Metadata, Unit};

use crate::envelope::now_ms;

/// Calls answered from the store (counter; `function`, `layer`).
pub const HITS: &str = "smache_hits_total";
/// Lookups that found no value to serve (counter; `function`, `layer`).
pub const MISSES: &str = "smache_misses_total";
/// Calls that took a concurrent call's result in this process (counter;
/// `function`).
pub const COALESCED: &str = "smache_calls_coalesced_total";
/// Runs of a function for a caller (counter; `function`).
pub const COMPUTATIONS: &str = "smache_computations_total";
/// How long those runs took (histogram, seconds; `function`).
pub const COMPUTATION_DURATION: &str = "smache_computation_duration_seconds";
/// Runs of recompute jobs by an executor (counter; `function`, `outcome`).
pub const RECOMPUTATIONS: &str = "smache_recomputations_total";
/// How long each recompute run took (histogram, seconds; `function`).
pub const RECOMPUTATION_DURATION: &str = "smache_recomputation_duration_seconds";
/// From a recompute job's queueing to its value stored (histogram,
/// seconds; `function`).
pub const REFRESH_LAG: &str = "smache_refresh_lag_seconds";
/// Entries of the job stream (gauge).
pub const JOB_QUEUE_LENGTH: &str = "smache_job_queue_length";
/// Jobs moved to the dead letters (counter).
pub const DEAD_LETTERS: &str = "smache_dead_letters_total";
/// Lookups the in-process layer could not answer (counter).
pub const LOCAL_MISSES: &str = "smache_local_misses_total";
/// Keys dropped from the in-process layer on Redis's word (counter).
pub const LOCAL_INVALIDATIONS: &str = "smache_local_invalidations_total";
/// Times the whole in-process layer was dropped (counter).
pub const LOCAL_FLUSHES: &str = "smache_local_flushes_total";
/// Values the in-process layer holds (gauge; `prefix`).
pub const LOCAL_ENTRIES: &str = "smache_local_entries";
/// The in-process layer's weight in bytes (gauge; `prefix`).
pub const LOCAL_BYTES: &str = "smache_local_bytes";
/// 1 while calls find the store unavailable (gauge).
pub const STORE_DEGRADED: &str = "smache_store_degraded";
/// The watching worker's lag behind the change stream (gauge, seconds).
pub const WORKER_LAG: &str = "smache_worker_lag_seconds";
/// Change events the watching worker handled (counter).
pub const WORKER_CHANGES: &str = "smache_worker_changes_total";
/// Jobs queued by those changes (counter).
pub const WORKER_JOBS_QUEUED: &str = "smache_worker_jobs_queued_total";
/// Shards the watching worker ran a change's script in, on a store of
/// several shards: those holding dependants of the change (counter; per
/// change, compare with [`WORKER_CHANGES`]).
pub const WORKER_SHARDS_SIGNALLED: &str = "smache_worker_shards_signalled_total";
/// Dependency edges the watching worker's graph sweep removed: ids of
/// values that no longer exist (counter).
pub const WORKER_EDGES_SWEPT: &str = "smache_worker_edges_swept_total";
/// Steps of the graph sweep that failed (counter).
pub const WORKER_SWEEP_FAILURES: &str = "smache_worker_sweep_failures_total";

/// How often executors and workers sample [`JOB_QUEUE_LENGTH`].
pub const QUEUE_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Gives every smache metric its help text and unit in the installed
/// recorder. Call it once, after installing the recorder (describing is
/// a call to the recorder, so nothing is kept before one is installed).
///
/// ```
/// // With no recorder installed this does nothing.
/// smache::metrics::describe();
/// ```
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HITS,
        Unit::Count,
        "Calls answered from the store, by function and layer (embedded, redis)."
    );
    describe_counter!(
        MISSES,
        Unit::Count,
        "Lookups that found no value to serve, by function and layer."
    );
    describe_counter!(
        COALESCED,
        Unit::Count,
        "Calls that took the result of a concurrent call of the same value in this process."
    );
    describe_counter!(
        COMPUTATIONS,
        Unit::Count,
        "Runs of a computed function for a caller (a miss, or the store unavailable)."
    );
    describe_histogram!(
        COMPUTATION_DURATION,
        Unit::Seconds,
        "How long a computed function ran for a caller."
    );
    describe_counter!(
        RECOMPUTATIONS,
        Unit::Count,
        "Runs of recompute jobs by this process's executor, by function and outcome."
    );
    describe_histogram!(
        RECOMPUTATION_DURATION,
        Unit::Seconds,
        "How long a recompute job's run took: loading its entities, the function, storing."
    );
    describe_histogram!(
        REFRESH_LAG,
        Unit::Seconds,
        "From a recompute job's queueing to its value stored."
    );
    describe_gauge!(
        JOB_QUEUE_LENGTH,
        Unit::Count,
        "Entries of the job stream: waiting and held by executors."
    );
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Jobs this process's executor moved to the dead letters."
    );
    describe_counter!(
        LOCAL_MISSES,
        Unit::Count,
        "Lookups the in-process layer could not answer; they went on to Redis."
    );
    describe_counter!(
        LOCAL_INVALIDATIONS,
        Unit::Count,
        "Keys Redis said changed, dropped from the in-process layer."
    );
    describe_counter!(
        LOCAL_FLUSHES,
        Unit::Count,
        "Times the whole in-process layer was dropped (FLUSHALL, tracking connection lost)."
    );
    describe_gauge!(
        LOCAL_ENTRIES,
        Unit::Count,
        "Values the in-process layer holds, by instance prefix."
    );
    describe_gauge!(
        LOCAL_BYTES,
        Unit::Bytes,
        "The in-process layer's weight, by instance prefix."
    );
    describe_gauge!(
        STORE_DEGRADED,
        "1 while this process's calls find the store unavailable and compute directly."
    );
    describe_gauge!(WORKER_LAG, Unit::Seconds, "The watching worker: now minus the cluster time of the change it last handled (0 when caught up).");
    describe_counter!(
        WORKER_CHANGES,
        Unit::Count,
        "Change events the watching worker handled."
    );
    describe_counter!(
        WORKER_JOBS_QUEUED,
        Unit::Count,
        "Recompute jobs queued by the changes the worker handled."
    );
    describe_counter!(
        WORKER_SHARDS_SIGNALLED,
        Unit::Count,
        "Shards a change's script ran in (several shards: those holding its dependants)."
    );
    describe_counter!(
        WORKER_EDGES_SWEPT,
        Unit::Count,
        "Dependency edges the graph sweep removed: ids of values that no longer exist."
    );
    describe_counter!(
        WORKER_SWEEP_FAILURES,
        Unit::Count,
        "Steps of the graph sweep that failed (the pass starts over)."
    );
}

static METADATA: Metadata<'static> = Metadata::new("smache", Level::INFO, Some(module_path!()));

/// The keys of one function's caller-side metrics, made on its first
/// call, so that a hit allocates nothing and hashes nothing.
pub(crate) struct FnKeys {
    /// By [`Served`].
    hits: [Key; 3],
    misses: [Key; 2],
    coalesced: Key,
    computations: Key,
    computation_duration: Key,
}

/// Where a function keeps its [`FnKeys`].
#[derive(Default)]
pub(crate) struct FnMetrics(OnceLock<FnKeys>);

impl std::fmt::Debug for FnMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnMetrics")
    }
}

impl FnMetrics {
    pub(crate) const fn new() -> Self {
        FnMetrics(OnceLock::new())
    }

    fn keys(&self, function: &'static str) -> &FnKeys {
        self.0.get_or_init(|| {
            // Labels made once per function and kept for the process:
            // static labels are what a recorder retains without copying
            // them on every call.
            let labels = |layer: Option<&'static str>| -> &'static [Label] {
                let function = Label::from_static_parts("function", function);
                match layer {
                    Some(layer) => Box::leak(Box::new([
                        function,
                        Label::from_static_parts("layer", layer),
                    ])),
                    None => Box::leak(Box::new([function])),
                }
            };
            let (of, embedded, redis) = (
                labels(None),
                labels(Some("embedded")),
                labels(Some("redis")),
            );
            FnKeys {
                hits: [
                    Key::from_static_parts(HITS, embedded),
                    Key::from_static_parts(HITS, redis),
                    Key::from_static_parts(HITS, labels(Some("local"))),
                ],
                misses: [
                    Key::from_static_parts(MISSES, embedded),
                    Key::from_static_parts(MISSES, redis),
                ],
                coalesced: Key::from_static_parts(COALESCED, of),
                computations: Key::from_static_parts(COMPUTATIONS, of),
                computation_duration: Key::from_static_parts(COMPUTATION_DURATION, of),
            }
        })
    }
}

/// Where a hit was answered: the `layer` label of [`HITS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// The embedded store.
    Embedded = 0,
    /// Redis.
    Redis = 1,
    /// The in-process layer in front of Redis.
    Local = 2,
}

/// The `layer` label's index in [`FnKeys`]'s misses: the embedded store
/// or Redis.
fn miss_index(redis: bool) -> usize {
    usize::from(redis)
}

fn count(key: &Key) {
    metrics::with_recorder(|recorder| recorder.register_counter(key, &METADATA).increment(1));
}

/// A call of `function` answered from the store.
#[inline]
pub(crate) fn hit(function: &'static str, keys: &FnMetrics, served: Served) {
    count(&keys.keys(function).hits[served as usize]);
}

/// A lookup of `function` that found no value to serve.
pub(crate) fn miss(function: &'static str, keys: &FnMetrics, redis: bool) {
    count(&keys.keys(function).misses[miss_index(redis)]);
}

/// A call that took a concurrent call's result.
pub(crate) fn coalesced(function: &'static str, keys: &FnMetrics) {
    count(&keys.keys(function).coalesced);
}

/// `function` ran for a caller, for `took`.
pub(crate) fn computed(function: &'static str, keys: &FnMetrics, took: Duration) {
    let keys = keys.keys(function);
    metrics::with_recorder(|recorder| {
        recorder
            .register_counter(&keys.computations, &METADATA)
            .increment(1);
        recorder
            .register_histogram(&keys.computation_duration, &METADATA)
            .record(took.as_secs_f64());
    });
}

/// An executor ran a recompute job of `function`, for `took`.
pub(crate) fn recomputed(function: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!(RECOMPUTATIONS, "function" => function, "outcome" => outcome).increment(1);
    metrics::histogram!(RECOMPUTATION_DURATION, "function" => function).record(took.as_secs_f64());
}

/// A recompute job queued at `queued_ms` (its entry id) stored its value now.
pub(crate) fn refreshed(function: &'static str, queued_ms: u64) {
    let lag = Duration::from_millis(now_ms().saturating_sub(queued_ms));
    metrics::histogram!(REFRESH_LAG, "function" => function).record(lag.as_secs_f64());
}

/// A job was moved to the dead letters.
pub(crate) fn dead_lettered() {
    metrics::counter!(DEAD_LETTERS).increment(1);
}

/// What happened in the in-process layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LayerEvent {
    /// A lookup it could not answer.
    Missed,
    /// A key dropped on Redis's word.
    Invalidated,
    /// Everything dropped.
    Flushed,
}

/// Counts `event` in the in-process layer.
pub(crate) fn layer(event: LayerEvent) {
    let name = match event {
        LayerEvent::Missed => LOCAL_MISSES,
        LayerEvent::Invalidated => LOCAL_INVALIDATIONS,
        LayerEvent::Flushed => LOCAL_FLUSHES,
    };
    metrics::counter!(name).increment(1);
}

/// Records the size of the in-process layer of the instance with prefix
/// `prefix`: two instances of a process report apart.
pub(crate) fn local_size(prefix: &str, entries: u64, bytes: u64) {
    metrics::gauge!(LOCAL_ENTRIES, "prefix" => prefix.to_owned()).set(entries as f64);
    metrics::gauge!(LOCAL_BYTES, "prefix" => prefix.to_owned()).set(bytes as f64);
}

/// Calls find the store unavailable (`true`), or reachable again.
pub(crate) fn store_degraded(degraded: bool) {
    metrics::gauge!(STORE_DEGRADED).set(if degraded { 1.0 } else { 0.0 });
}

/// The watching worker handled a change of cluster time `time`
/// (`seconds << 32 | increment`, if known), queueing `queued` jobs.
pub(crate) fn change_handled(time: Option<u64>, queued: u64) {
    metrics::counter!(WORKER_CHANGES).increment(1);
    metrics::counter!(WORKER_JOBS_QUEUED).increment(queued);
    if let Some(time) = time {
        let lag = Duration::from_millis(now_ms().saturating_sub((time >> 32) * 1000));
        metrics::gauge!(WORKER_LAG).set(lag.as_secs_f64());
    }
}

/// The watching worker ran a change's script in `shards` shards.
pub(crate) fn shards_signalled(shards: usize) {
    metrics::counter!(WORKER_SHARDS_SIGNALLED).increment(shards as u64);
}

/// A step of the graph sweep removed `edges` (or failed: `None`).
pub(crate) fn swept(edges: Option<u64>) {
    match edges {
        Some(edges) => metrics::counter!(WORKER_EDGES_SWEPT).increment(edges),
        None => metrics::counter!(WORKER_SWEEP_FAILURES).increment(1),
    }
}

/// The change stream had nothing more for the watching worker.
pub(crate) fn worker_caught_up() {
    metrics::gauge!(WORKER_LAG).set(0.0);
}

/// Records the job stream's length, as sampled every
/// [`QUEUE_SAMPLE_EVERY`].
pub(crate) fn job_queue_length(length: u64) {
    metrics::gauge!(JOB_QUEUE_LENGTH).set(length as f64);
}

/// Stops a sampling task when dropped.
pub(crate) struct Sampling(tokio::task::AbortHandle);

impl Sampling {
    /// Starts `sample` (a loop that records samples) on the current tokio
    /// runtime.
    pub(crate) fn start(
        sample: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Sampling {
        Sampling(tokio::spawn(sample).abort_handle())
    }
}

impl Drop for Sampling {
    fn drop(&mut self) {
        self.0.abort();
    }
}
