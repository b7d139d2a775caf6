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

mod report;
mod watchdog;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::envelope::now_ms;
use crate::error::Error;
use crate::store::{Announced, RedisStore, Roll};

pub(crate) use self::report::summary;
pub use self::report::WorkersReport;
pub(crate) use self::watchdog::stored;

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

/// A live worker, as it last announced itself; see
/// [`Smache::inspect_workers`](crate::Smache::inspect_workers).
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

/// The other prefixes with live workers, and whether every key was seen.
async fn elsewhere(store: &RedisStore) -> (Vec<OtherPrefix>, bool) {
    match store.other_rolls().await {
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

/// A compact age: `850 ms`, `12 s`, `3.5 min`, `2.0 h`.
pub(crate) fn age(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{} s", ms / 1000)
    } else if ms < 3_600_000 {
        format!("{:.1} min", d.as_secs_f64() / 60.0)
    } else {
        format!("{:.1} h", d.as_secs_f64() / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
