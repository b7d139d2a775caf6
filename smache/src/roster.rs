//! Which workers serve an instance.
//!
//! Every `smache-worker` announces itself in Redis (`{prefix}:workers`) each
//! time it takes or renews its lease (every third or fourth of the lease):
//! its id and host, the database whose change stream it follows (every
//! collection of it), the collections it saw changes in, how far behind
//! the stream it is, and, while it retries, why. A record counts for twice
//! the worker's lease: a worker that dies drops out of the reports within
//! that, and the next heartbeat of another removes its record; one that
//! stops takes its record away at once.
//!
//! An application that stores values depending on documents needs a worker
//! of its prefix that follows its database, or nothing refreshes them.
//! After such a store (never on a hit), at most once per
//! [`SmacheBuilder::expect_worker_within`](crate::SmacheBuilder::expect_worker_within)
//! (30 s), it reads the records in the background; if it finds no such
//! worker for that long, it logs one warning naming what it expected and
//! what it found, and an info line once one appears.
//!
//! [`Smache::inspect_workers`] reports them, as does
//! `smache-worker inspect workers`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::envelope::now_ms;
use crate::error::{Error, Result};
use crate::inspect::age;
use crate::instance::{Inner, Smache};
use crate::store::{Announced, Roll, Store};
use crate::sync::lock;

/// A worker names at most this many collections it saw changes in (the
/// changes in others still count).
pub const MAX_COLLECTIONS_NAMED: usize = 64;

/// What a worker announces, as stored (JSON): unknown fields are ignored
/// and missing ones default, so workers of other versions read.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Record {
    db: String,
    host: String,
    version: String,
    /// Its uptime at the heartbeat (ms).
    up_ms: u64,
    /// How far behind the change stream it was (ms), when known.
    lag_ms: Option<u64>,
    /// Changes seen since it started, in all and per collection.
    changes: u64,
    seen: BTreeMap<String, u64>,
    error: Option<String>,
}

/// What a worker announces about itself, kept up to date as it runs.
#[derive(Debug)]
pub(crate) struct Presence {
    database: String,
    host: String,
    started: Instant,
    changes: u64,
    seen: BTreeMap<String, u64>,
    /// The cluster time (seconds) of its last saved position, while it
    /// watches.
    position: Option<u32>,
    /// Its last poll of the change stream found nothing more to read.
    caught_up: bool,
    error: Option<String>,
}

impl Presence {
    pub(crate) fn new(database: &str) -> Self {
        Presence {
            database: database.to_owned(),
            host: std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
            started: Instant::now(),
            changes: 0,
            seen: BTreeMap::new(),
            position: None,
            caught_up: false,
            error: None,
        }
    }

    /// A change event, in `collection` if it names one.
    pub(crate) fn saw(&mut self, collection: Option<&str>) {
        self.changes += 1;
        self.caught_up = false;
        if let Some(collection) = collection {
            if self.seen.len() < MAX_COLLECTIONS_NAMED || self.seen.contains_key(collection) {
                *self.seen.entry(collection.to_owned()).or_default() += 1;
            }
        }
    }

    /// A position saved, at cluster time `time` (`seconds << 32 |
    /// increment`) when known.
    pub(crate) fn saved(&mut self, time: Option<u64>) {
        if let Some(time) = time {
            self.position = u32::try_from(time >> 32).ok();
        }
        self.error = None;
    }

    /// A poll of the change stream that found nothing more to read.
    pub(crate) fn caught_up(&mut self) {
        self.caught_up = true;
        self.error = None;
    }

    /// Watching failed; the worker retries.
    pub(crate) fn failed(&mut self, err: &Error) {
        let mut why = err.to_string();
        if why.len() > 300 {
            let mut end = 300;
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            why.truncate(end);
            why.push('…');
        }
        self.error = Some(why);
        self.caught_up = false;
    }

    /// It stands by: another worker watches.
    pub(crate) fn standby(&mut self) {
        self.position = None;
        self.caught_up = false;
        self.error = None;
    }

    /// The record to announce now.
    pub(crate) fn record(&self) -> String {
        let lag_ms = if self.caught_up {
            Some(0)
        } else {
            self.position
                .map(|seconds| now_ms().saturating_sub(u64::from(seconds) * 1000))
        };
        let record = Record {
            db: self.database.clone(),
            host: self.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            up_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            lag_ms,
            changes: self.changes,
            seen: self.seen.clone(),
            error: self.error.clone(),
        };
        serde_json::to_string(&record).unwrap_or_default()
    }
}

/// A live worker, as it last announced itself; see [`Smache::inspect_workers`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its id (`<pid>-<random>`), as it holds the lease.
    pub id: String,
    /// The host it runs on (`$HOSTNAME`).
    pub host: String,
    /// The MongoDB database whose change stream it follows (all of its
    /// collections).
    pub database: String,
    /// Whether it holds the lease and follows the change stream; the
    /// others stand by.
    pub watching: bool,
    /// How far behind the change stream it was at its heartbeat, while it
    /// watches: zero when its last poll found nothing more to read, else
    /// the time since its saved position (seconds resolution). `None` when
    /// it stands by or has no position yet.
    pub lag: Option<Duration>,
    /// Changes it saw since it started.
    pub changes: u64,
    /// The collections it saw changes in, with how many, the most first
    /// (at most [`MAX_COLLECTIONS_NAMED`]).
    pub collections: Vec<(String, u64)>,
    /// Why watching failed, while it retries.
    pub error: Option<String>,
    /// How long ago it last announced itself (by the Redis clock).
    pub heartbeat: Duration,
    /// How long it has been running.
    pub uptime: Duration,
    /// The smache version it runs.
    pub version: String,
}

impl WorkerInfo {
    fn of(announced: Announced, roll_now_ms: u64, watcher: Option<&str>) -> Option<Self> {
        let record: Record = serde_json::from_str(&announced.record).ok()?;
        let heartbeat = Duration::from_millis(roll_now_ms.saturating_sub(announced.at_ms));
        let watching = watcher == Some(announced.id.as_str());
        let mut collections: Vec<(String, u64)> = record.seen.into_iter().collect();
        collections.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Some(WorkerInfo {
            watching,
            lag: record
                .lag_ms
                .filter(|_| watching)
                .map(Duration::from_millis),
            database: record.db,
            host: record.host,
            changes: record.changes,
            collections,
            error: record.error,
            heartbeat,
            uptime: Duration::from_millis(record.up_ms) + heartbeat,
            version: record.version,
            id: announced.id,
        })
    }
}

/// The live workers of a roll, the watching one first.
fn workers_of(roll: Roll) -> Vec<WorkerInfo> {
    let watcher = roll.watcher.as_deref();
    let mut workers: Vec<WorkerInfo> = roll
        .workers
        .into_iter()
        .filter_map(|announced| WorkerInfo::of(announced, roll.now_ms, watcher))
        .collect();
    workers.sort_by(|a, b| b.watching.cmp(&a.watching).then_with(|| a.id.cmp(&b.id)));
    workers
}

/// The workers of another prefix, found when none serves this one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OtherPrefix {
    /// The prefix (`--prefix` of its workers).
    pub prefix: String,
    /// The databases its live workers follow.
    pub databases: Vec<String>,
}

/// The workers of a prefix; see [`Smache::inspect_workers`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct WorkersReport {
    /// The prefix.
    pub prefix: String,
    /// Where the workers announce themselves (`{prefix}:workers`).
    pub key: String,
    /// The live workers, the watching one first.
    pub workers: Vec<WorkerInfo>,
    /// The collections some value of the prefix depends on
    /// (`{prefix}:collections`).
    pub depended_on: Vec<String>,
    /// When no worker of the prefix is live: the other prefixes that have
    /// some (a worker started with another `--prefix`?).
    pub elsewhere: Vec<OtherPrefix>,
    /// Whether looking for [`elsewhere`](Self::elsewhere) went through
    /// every key (it stops after 100,000).
    pub searched_every_key: bool,
}

/// The other prefixes with live workers, and whether every key was seen.
async fn elsewhere(store: &crate::store::RedisStore, base: &str) -> (Vec<OtherPrefix>, bool) {
    match store.other_rolls(base).await {
        Ok((others, complete)) => {
            let others = others
                .into_iter()
                .map(|(prefix, roll)| {
                    let mut databases: Vec<String> =
                        workers_of(roll).into_iter().map(|w| w.database).collect();
                    databases.sort();
                    databases.dedup();
                    OtherPrefix { prefix, databases }
                })
                .collect();
            (others, complete)
        }
        Err(err) => {
            tracing::debug!(error = %err, "smache: cannot look for the workers of other prefixes");
            (Vec::new(), false)
        }
    }
}

impl Smache {
    /// Reports the live workers of this instance's prefix: what each
    /// follows, whether it watches or stands by, how far behind it is; and,
    /// when there is none, the prefixes that have some. See the
    /// [`inspect`](crate::inspect) module, and `smache-worker inspect
    /// workers`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), smache::Error> {
    /// let smache = smache::Smache::builder()
    ///     .redis_url("redis://127.0.0.1:6379/")
    ///     .prefix("shop")
    ///     .build()?;
    /// let report = smache.inspect_workers().await?;
    /// if !report.workers.iter().any(|w| w.watching && w.database == "shop") {
    ///     eprintln!("nothing refreshes the values of shop:\n{report}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] without the Redis store; [`Error::Redis`] if Redis
    /// cannot be read.
    pub async fn inspect_workers(&self) -> Result<WorkersReport> {
        let Store::Redis(store) = &self.inner.store else {
            return Err(Error::Config("inspect needs the Redis store".into()));
        };
        let base = &self.inner.base;
        let mut roll = store.roll(base).await?;
        let depended_on = std::mem::take(&mut roll.collections);
        let workers = workers_of(roll);
        let (elsewhere, searched_every_key) = if workers.is_empty() {
            elsewhere(store, base).await
        } else {
            (Vec::new(), true)
        };
        Ok(WorkersReport {
            prefix: self.inner.prefix.clone(),
            key: format!("{base}workers"),
            workers,
            depended_on,
            elsewhere,
            searched_every_key,
        })
    }

    /// The live workers of this instance's prefix, for the jobs report.
    pub(crate) async fn live_workers(&self) -> Result<Vec<WorkerInfo>> {
        let Store::Redis(store) = &self.inner.store else {
            return Ok(Vec::new());
        };
        Ok(workers_of(store.roll(&self.inner.base).await?))
    }
}

/// One line about the workers, for the head of the jobs report.
pub(crate) fn summary(workers: &[WorkerInfo]) -> String {
    if workers.is_empty() {
        return "NONE live: no change queues a job (see `inspect workers`)".to_owned();
    }
    let mut parts: Vec<String> = workers
        .iter()
        .filter(|w| w.watching)
        .map(|w| {
            let lag = w.lag.map_or_else(|| "?".to_owned(), age);
            format!("1 watching (database {}, lag {lag})", w.database)
        })
        .collect();
    let standby = workers.iter().filter(|w| !w.watching).count();
    if standby > 0 {
        parts.push(format!("{standby} standing by"));
    }
    parts.join(", ")
}

impl fmt::Display for WorkersReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.workers.is_empty() {
            writeln!(
                f,
                "workers ({}): NONE live: no change reaches the values of prefix {} (start \
                 `smache-worker --prefix {} --database …`)",
                self.key, self.prefix, self.prefix
            )?;
            for other in &self.elsewhere {
                writeln!(
                    f,
                    "  workers of prefix {} follow database {}",
                    other.prefix,
                    other.databases.join(", ")
                )?;
            }
            if !self.searched_every_key {
                writeln!(
                    f,
                    "  (looked for the workers of other prefixes in part of the keys only)"
                )?;
            }
        } else {
            let watching = self.workers.iter().filter(|w| w.watching).count();
            writeln!(
                f,
                "workers ({}): {} live, {watching} watching",
                self.key,
                self.workers.len()
            )?;
            let rows: Vec<[String; 8]> = self
                .workers
                .iter()
                .map(|w| {
                    let seen = if w.collections.is_empty() {
                        "-".to_owned()
                    } else {
                        w.collections
                            .iter()
                            .map(|(name, n)| format!("{name} {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    [
                        w.id.clone(),
                        w.host.clone(),
                        w.database.clone(),
                        if w.watching { "watching" } else { "standby" }.to_owned(),
                        match (w.watching, w.lag) {
                            (false, _) => "-".to_owned(),
                            (true, None) => "?".to_owned(),
                            (true, Some(lag)) => age(lag),
                        },
                        format!("{} ago", age(w.heartbeat)),
                        age(w.uptime),
                        format!("{} ({seen})", w.changes),
                    ]
                })
                .collect();
            let head = [
                "worker",
                "host",
                "database",
                "role",
                "lag",
                "heartbeat",
                "up",
                "changes seen",
            ];
            let mut widths = head.map(str::len);
            for row in &rows {
                for (width, cell) in widths.iter_mut().zip(row) {
                    *width = (*width).max(cell.chars().count());
                }
            }
            let line = |f: &mut fmt::Formatter<'_>, cells: [&str; 8]| {
                let mut text = String::from(" ");
                for (cell, width) in cells.iter().zip(widths) {
                    text.push_str(&format!(" {cell:width$} "));
                }
                writeln!(f, "{}", text.trim_end())
            };
            line(f, head)?;
            for (row, worker) in rows.iter().zip(&self.workers) {
                line(f, row.each_ref().map(String::as_str))?;
                if let Some(error) = &worker.error {
                    writeln!(f, "    retrying: {error}")?;
                }
            }
        }
        if !self.depended_on.is_empty() {
            writeln!(
                f,
                "values depend on collections: {}",
                self.depended_on.join(", ")
            )?;
        }
        Ok(())
    }
}

/// An application's check that a worker serves it; see the [module
/// docs](self).
#[derive(Debug)]
pub(crate) struct Watchdog {
    /// How long no serving worker may be found before a warning; `None`:
    /// no check.
    within: Option<Duration>,
    /// When a store may start the next check (ms); `u64::MAX` while one
    /// runs.
    next_ms: AtomicU64,
    state: Mutex<Served>,
}

/// What the checks found so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Unknown,
    Yes,
    /// No serving worker since then.
    Missing(Instant),
    /// None for long enough, and said so.
    Warned,
}

/// What a check calls for.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Served: check again after a while.
    Served,
    /// Served again after the warning: say so.
    Appeared,
    /// Not served: look again soon.
    Missing,
    /// Not served for this long: warn, then look again soon.
    Warn(Duration),
}

impl Watchdog {
    pub(crate) fn new(within: Option<Duration>) -> Self {
        Watchdog {
            within,
            next_ms: AtomicU64::new(0),
            state: Mutex::new(Served::Unknown),
        }
    }

    /// What finding a serving worker (or not) at `now` calls for.
    fn observe(&self, served: bool, now: Instant, within: Duration) -> Step {
        let mut state = lock(&self.state);
        let (next, step) = match (*state, served) {
            (Served::Warned, true) => (Served::Yes, Step::Appeared),
            (_, true) => (Served::Yes, Step::Served),
            (Served::Unknown | Served::Yes, false) => (Served::Missing(now), Step::Missing),
            (Served::Missing(since), false) if now.duration_since(since) >= within => {
                (Served::Warned, Step::Warn(now.duration_since(since)))
            }
            (missing, false) => (missing, Step::Missing),
        };
        *state = next;
        step
    }
}

/// After a store of a value that depends on documents: checks in the
/// background, at most once per [`Watchdog`] interval, that a worker
/// serves this instance.
pub(crate) fn stored(inner: &Arc<Inner>) {
    let dog = &inner.watchdog;
    if dog.within.is_none() || !matches!(inner.store, Store::Redis(_)) {
        return;
    }
    let next = dog.next_ms.load(Ordering::Relaxed);
    if now_ms() < next
        || dog
            .next_ms
            .compare_exchange(next, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    crate::runtime::spawn(check(Arc::downgrade(inner)));
}

/// Looks for a worker serving the instance, again and again while there is
/// none; ends once there is one (or the instance is gone).
async fn check(inner: Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let (Some(within), Store::Redis(store)) = (inner.watchdog.within, &inner.store) else {
            return;
        };
        let again = (within / 3).max(Duration::from_millis(100));
        let later = |after: Duration| {
            let at = now_ms().saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
            inner.watchdog.next_ms.store(at, Ordering::Relaxed);
        };
        let expected = inner.mongo.as_ref().map(|db| db.name().to_owned());
        let workers = match store.roll(&inner.base).await {
            Ok(roll) => workers_of(roll),
            Err(err) => {
                // Redis unreachable is the store's to log; look again
                // after a later store.
                tracing::debug!(error = %err, "smache: cannot look for workers");
                return later(again);
            }
        };
        let serving = workers
            .iter()
            .find(|w| expected.as_ref().is_none_or(|db| *db == w.database));
        match inner
            .watchdog
            .observe(serving.is_some(), Instant::now(), within)
        {
            Step::Served => return later(within),
            Step::Appeared => {
                if let Some(worker) = serving {
                    tracing::info!(
                        prefix = %inner.prefix,
                        database = %worker.database,
                        worker = %worker.id,
                        "smache: a smache-worker serves this instance now; values are refreshed \
                         again"
                    );
                }
                return later(within);
            }
            Step::Missing => {}
            Step::Warn(missing) => {
                let (others, complete) = elsewhere(store, &inner.base).await;
                let message = missing_worker(
                    &inner.prefix,
                    expected.as_deref(),
                    missing,
                    &workers,
                    &others,
                    complete,
                );
                tracing::warn!(
                    prefix = %inner.prefix,
                    database = expected.as_deref().unwrap_or("(any)"),
                    "smache: {message}"
                );
            }
        }
        drop(inner);
        tokio::time::sleep(again).await;
    }
}

/// The warning of an instance no worker serves: what it expected, what it
/// found, and what to do.
fn missing_worker(
    prefix: &str,
    database: Option<&str>,
    missing: Duration,
    here: &[WorkerInfo],
    others: &[OtherPrefix],
    complete: bool,
) -> String {
    let wanted = match database {
        Some(db) => format!("no smache-worker follows database `{db}` for prefix `{prefix}`"),
        None => format!("no smache-worker runs for prefix `{prefix}`"),
    };
    let mut found = Vec::new();
    if !here.is_empty() {
        let workers: Vec<String> = here
            .iter()
            .map(|w| format!("{} (database `{}`)", w.id, w.database))
            .collect();
        found.push(format!(
            "under prefix `{prefix}`, workers of other databases: {}",
            workers.join(", ")
        ));
    }
    if !others.is_empty() {
        let prefixes: Vec<String> = others
            .iter()
            .map(|o| format!("`{}` (database `{}`)", o.prefix, o.databases.join("`, `")))
            .collect();
        found.push(format!(
            "workers of other prefixes: {}",
            prefixes.join(", ")
        ));
    }
    if found.is_empty() {
        found.push(format!(
            "no live worker under this prefix{}",
            if complete {
                " nor any other"
            } else {
                " (nor any other in the keys looked through)"
            }
        ));
    }
    format!(
        "{wanted} (none for {}): values that depend on documents are cached, but nothing \
         refreshes them when the documents change. Found: {}. Start `smache-worker --prefix \
         {prefix} --database {}` (`smache-worker inspect workers --prefix {prefix}` shows what \
         runs)",
        age(missing),
        found.join("; "),
        database.unwrap_or("…"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_absence_and_a_word_when_a_worker_appears() {
        let dog = Watchdog::new(Some(Duration::from_secs(30)));
        let within = Duration::from_secs(30);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(dog.observe(false, at(0), within), Step::Missing);
        assert_eq!(dog.observe(false, at(10), within), Step::Missing);
        assert_eq!(
            dog.observe(false, at(31), within),
            Step::Warn(Duration::from_secs(31))
        );
        // Once.
        assert_eq!(dog.observe(false, at(41), within), Step::Missing);
        assert_eq!(dog.observe(false, at(400), within), Step::Missing);
        assert_eq!(dog.observe(true, at(401), within), Step::Appeared);
        assert_eq!(dog.observe(true, at(431), within), Step::Served);
        // Gone again: a new absence, a new warning.
        assert_eq!(dog.observe(false, at(500), within), Step::Missing);
        assert_eq!(dog.observe(true, at(501), within), Step::Served);
        assert_eq!(dog.observe(false, at(600), within), Step::Missing);
        assert_eq!(
            dog.observe(false, at(630), within),
            Step::Warn(Duration::from_secs(30))
        );
    }

    fn worker(id: &str, database: &str) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            host: "h".into(),
            database: database.into(),
            watching: true,
            lag: None,
            changes: 0,
            collections: Vec::new(),
            error: None,
            heartbeat: Duration::ZERO,
            uptime: Duration::ZERO,
            version: String::new(),
        }
    }

    #[test]
    fn the_warning_says_what_was_expected_and_what_was_found() {
        let message = missing_worker(
            "shop",
            Some("shop"),
            Duration::from_secs(31),
            &[worker("12-ab", "staging")],
            &[OtherPrefix {
                prefix: "smache".into(),
                databases: vec!["shop".into()],
            }],
            true,
        );
        assert!(
            message.starts_with(
                "no smache-worker follows database `shop` for prefix `shop` (none for 31 s)"
            ),
            "{message}"
        );
        assert!(
            message.contains("workers of other databases: 12-ab (database `staging`)"),
            "{message}"
        );
        assert!(
            message.contains("workers of other prefixes: `smache` (database `shop`)"),
            "{message}"
        );
        assert!(
            message.contains("smache-worker --prefix shop --database shop"),
            "{message}"
        );
        let none = missing_worker("p", None, Duration::from_secs(40), &[], &[], false);
        assert!(
            none.contains("Found: no live worker under this prefix (nor any other in the keys looked through)"),
            "{none}"
        );
    }

    #[test]
    fn records_round_trip_and_tell_the_lag() {
        let mut presence = Presence::new("shop");
        presence.saw(Some("users"));
        presence.saw(Some("users"));
        presence.saw(Some("orders"));
        let now_s = now_ms() / 1000;
        presence.saved(Some((now_s - 5) << 32));
        let announced = Announced {
            id: "w1".into(),
            at_ms: 1_000,
            lives_ms: 20_000,
            record: presence.record(),
        };
        let info = WorkerInfo::of(announced.clone(), 3_000, Some("w1")).unwrap();
        assert_eq!(info.database, "shop");
        assert!(info.watching);
        assert_eq!(info.changes, 3);
        assert_eq!(
            info.collections,
            [("users".to_owned(), 2), ("orders".to_owned(), 1)]
        );
        assert_eq!(info.heartbeat, Duration::from_secs(2));
        let lag = info.lag.unwrap();
        assert!(
            lag >= Duration::from_secs(4) && lag < Duration::from_secs(60),
            "{lag:?}"
        );
        // Caught up: no lag. A standby shows none.
        presence.caught_up();
        let caught_up = Announced {
            record: presence.record(),
            ..announced.clone()
        };
        assert_eq!(
            WorkerInfo::of(caught_up.clone(), 3_000, Some("w1"))
                .unwrap()
                .lag,
            Some(Duration::ZERO)
        );
        assert_eq!(
            WorkerInfo::of(caught_up, 3_000, Some("w2")).unwrap().lag,
            None
        );
        // Records of other versions read; garbage does not.
        let other = Announced {
            record: r#"{"db":"x","future":1}"#.into(),
            ..announced.clone()
        };
        assert_eq!(WorkerInfo::of(other, 3_000, None).unwrap().database, "x");
        let garbage = Announced {
            record: "not json".into(),
            ..announced
        };
        assert!(WorkerInfo::of(garbage, 3_000, None).is_none());
    }
}
