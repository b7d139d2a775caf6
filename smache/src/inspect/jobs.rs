//! The jobs report: [`Smache::inspect_jobs`]; see the [module docs](super).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::instance::Smache;
use crate::store::{keys, EntryRef, Store, StreamEntry, StreamJob};

use super::{age, entry_ms};
use crate::roster::WorkerInfo;

/// An executor that has not announced a function for this long is taken
/// for gone (they announce every third of
/// [`RECLAIM_AFTER`](crate::executor::RECLAIM_AFTER)).
pub const ANNOUNCED_WITHIN: Duration = Duration::from_secs(60);

/// At most this many jobs are read to group them; a longer stream is
/// reported as [`JobsReport::truncated`].
pub const MAX_SCANNED: usize = 100_000;

/// How many of the latest dead letters a report lists.
pub const RECENT_DEAD_LETTERS: usize = 10;

/// The state of the job stream; see the [module docs](super).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct JobsReport {
    /// The stream's key (on several shards: the first shard's, and how
    /// many).
    pub stream: String,
    /// Jobs in the stream, in every shard (acknowledged jobs are deleted,
    /// so all of these are either held by an executor or waiting for one).
    pub queued: u64,
    /// Each shard's jobs and dead letters, by shard (one entry on a store
    /// of one shard).
    pub shards: Vec<ShardJobs>,
    /// Jobs delivered to an executor and not acknowledged yet: running,
    /// waiting between retries, or left for an executor that can run them.
    pub held: u64,
    /// Held jobs per executor (consumer name).
    pub held_by: Vec<(String, u64)>,
    /// The jobs grouped by what they run, most queued first.
    pub groups: Vec<JobGroup>,
    /// Whether the stream held more than [`MAX_SCANNED`] jobs, so the
    /// groups count only the oldest of them.
    pub truncated: bool,
    /// The dead-letter stream's key.
    pub dead_stream: String,
    /// Jobs given up (kept up to about
    /// [`DEAD_LETTERS_KEPT`](crate::executor::DEAD_LETTERS_KEPT)).
    pub dead: u64,
    /// The latest dead letters, newest first.
    pub recent_dead: Vec<DeadLetter>,
    /// The live workers (see [`Smache::inspect_workers`]): without one
    /// watching, no change queues a job.
    pub workers: Vec<WorkerInfo>,
}

/// The streams of one shard (see [`JobsReport::shards`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardJobs {
    /// Its jobs stream's key.
    pub stream: String,
    /// Jobs in its stream.
    pub queued: u64,
    /// Of those, delivered and not acknowledged.
    pub held: u64,
    /// Jobs given up in it.
    pub dead: u64,
}

/// The jobs of one kind, for one function or callback.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobGroup {
    /// What the jobs run: `recompute <name>#<version>`, `task <name>#<version>`,
    /// `callback <name>`, `fan-out`, `relation <collection>`, or `unknown`.
    pub what: String,
    /// Jobs of this group in the stream.
    pub queued: u64,
    /// Of those, delivered and not acknowledged.
    pub held: u64,
    /// The most times one of them was delivered: a number that keeps
    /// growing means no executor finishes it.
    pub max_deliveries: u64,
    /// The age of the oldest.
    pub oldest: Duration,
    /// Whether any executor runs these jobs (fan-out, relation, and jobs
    /// of no known kind, which executors dead-letter).
    pub any_executor: bool,
    /// How long ago a live executor last announced it can run these jobs;
    /// `None` if none did within [`ANNOUNCED_WITHIN`].
    pub announced: Option<Duration>,
    /// For jobs no live executor can run: how long until the oldest is
    /// given up (moved to the dead letters; zero: when an executor next
    /// sees it), by the executors' orphan timeout
    /// ([`SmacheBuilder::orphan_timeout`](crate::SmacheBuilder::orphan_timeout)).
    pub gives_up_in: Option<Duration>,
}

impl JobGroup {
    /// Whether no live executor can run these jobs: they wait for one.
    #[must_use]
    pub fn orphaned(&self) -> bool {
        !self.any_executor && self.announced.is_none()
    }
}

/// A job an executor gave up: malformed, or failed on every attempt of the
/// [`Retry`](crate::Retry) policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// How long ago it was given up.
    pub age: Duration,
    /// What the job ran, as in [`JobGroup::what`], with its value id.
    pub job: String,
    /// Why it was given up.
    pub reason: String,
    /// The executor that gave it up.
    pub by: String,
}

impl Smache {
    /// Reports the jobs queued, held and given up; see [`crate::inspect`].
    ///
    /// # Errors
    /// [`Error::Config`] without the Redis store; [`Error::Redis`] if Redis
    /// cannot be read.
    pub async fn inspect_jobs(&self) -> Result<JobsReport> {
        let Store::Redis(store) = &self.inner.store else {
            return Err(Error::Config("inspect needs the Redis store".into()));
        };
        let stream = store.jobs_stream_key();
        let dead_stream = store.dead_stream_key();
        let now_ms = store.clock_ms().await?;
        let age = |entry: &str| Duration::from_millis(now_ms.saturating_sub(entry_ms(entry)));

        let announced: HashMap<String, u64> = store.announced().await.unwrap_or_default();
        // The executors' orphan timeout, as they published it; else ours.
        let orphan_timeout = store
            .published_orphan_timeout()
            .await
            .ok()
            .flatten()
            .unwrap_or(self.inner.settings.orphan_timeout);
        let announced_age = |field: &str| {
            announced
                .get(field)
                .map(|at| Duration::from_millis(now_ms.saturating_sub(*at)))
                .filter(|age| *age <= ANNOUNCED_WITHIN)
        };

        // Held entries: who holds them and how often each was delivered.
        let shard_count = store.shard_count();
        let mut deliveries: HashMap<EntryRef, u64> = HashMap::new();
        let mut held_in = vec![0_u64; shard_count];
        let mut held_by: BTreeMap<String, u64> = BTreeMap::new();
        for (shard, held_here) in held_in.iter_mut().enumerate() {
            let mut from: Option<String> = None;
            loop {
                // No stream or no group yet: nothing is held.
                let page = store
                    .held_jobs(shard, from.as_deref(), 1000)
                    .await
                    .unwrap_or_default();
                for held in &page {
                    let at = EntryRef {
                        shard,
                        id: held.id.clone(),
                    };
                    deliveries.insert(at, held.deliveries);
                    *held_here += 1;
                    *held_by.entry(held.consumer.clone()).or_default() += 1;
                }
                match page.last() {
                    Some(last) if page.len() == 1000 && deliveries.len() < MAX_SCANNED => {
                        from = Some(last.id.clone());
                    }
                    _ => break,
                }
            }
        }

        // Each group, with the `fns` field of its executors and the time
        // its oldest job was queued.
        let mut groups: BTreeMap<String, (JobGroup, Option<String>, u64)> = BTreeMap::new();
        let mut scanned = 0;
        let mut truncated = false;
        'shards: for shard in 0..shard_count {
            let mut from: Option<String> = None;
            loop {
                let page = store
                    .queued_jobs(shard, from.as_deref(), 1000)
                    .await
                    .unwrap_or_default();
                for StreamEntry { at, job, .. } in &page {
                    let (what, announced_as) = describe(job);
                    let (group, _, oldest_ms) = groups.entry(what.clone()).or_insert_with(|| {
                        let group = JobGroup {
                            what,
                            queued: 0,
                            held: 0,
                            max_deliveries: 0,
                            oldest: Duration::ZERO,
                            any_executor: announced_as.is_none(),
                            announced: announced_as.as_deref().and_then(announced_age),
                            gives_up_in: None,
                        };
                        (group, announced_as, u64::MAX)
                    });
                    group.queued += 1;
                    if let Some(delivered) = deliveries.get(at) {
                        group.held += 1;
                        group.max_deliveries = group.max_deliveries.max(*delivered);
                    }
                    group.oldest = group.oldest.max(age(&at.id));
                    *oldest_ms = (*oldest_ms).min(entry_ms(&at.id));
                }
                scanned += page.len();
                match page.last() {
                    Some(last) if page.len() == 1000 => {
                        if scanned >= MAX_SCANNED {
                            truncated = true;
                            break 'shards;
                        }
                        from = Some(last.at.id.clone());
                    }
                    _ => break,
                }
            }
        }
        let mut groups: Vec<JobGroup> = groups
            .into_values()
            .map(|(mut group, field, oldest_ms)| {
                if group.orphaned() {
                    let last = field.and_then(|field| announced.get(&field).copied());
                    let deadline = orphan_deadline(oldest_ms, last, orphan_timeout);
                    group.gives_up_in =
                        Some(Duration::from_millis(deadline.saturating_sub(now_ms)));
                }
                group
            })
            .collect();
        groups.sort_by(|a, b| b.queued.cmp(&a.queued).then_with(|| a.what.cmp(&b.what)));

        let lengths = store.stream_lengths().await.unwrap_or_default();
        let queued = lengths.iter().map(|(queued, _)| queued).sum();
        let dead = lengths.iter().map(|(_, dead)| dead).sum();
        let shards = lengths
            .iter()
            .enumerate()
            .map(|(shard, &(queued, dead))| ShardJobs {
                stream: store.jobs_key(shard),
                queued,
                held: held_in.get(shard).copied().unwrap_or(0),
                dead,
            })
            .collect();
        let latest = store
            .latest_dead_letters(RECENT_DEAD_LETTERS)
            .await
            .unwrap_or_default();
        let workers = self.live_workers().await?;
        let recent_dead = latest
            .into_iter()
            .map(|letter| {
                let (what, _) = describe(&letter.job);
                let job = match letter.job.value_id() {
                    Some(id) => format!("{} {id}", what.split(' ').next().unwrap_or("")),
                    None => what,
                };
                DeadLetter {
                    age: age(&letter.id),
                    job,
                    reason: letter.reason,
                    by: letter.by,
                }
            })
            .collect();
        Ok(JobsReport {
            stream,
            queued,
            shards,
            held: deliveries.len() as u64,
            held_by: held_by.into_iter().collect(),
            groups,
            truncated,
            dead_stream,
            dead,
            recent_dead,
            workers,
        })
    }
}

/// What a job runs, and the `{prefix}:fns` field of the executors that
/// can run it (`None`: any executor can).
fn describe(job: &StreamJob) -> (String, Option<String>) {
    let head = |id: &str| {
        crate::key::split_value_id(id)
            .map_or(id, |(head, _)| head)
            .to_owned()
    };
    match job {
        StreamJob::FanOut { .. } => ("fan-out".into(), None),
        StreamJob::FanAll { .. } => ("fan-out to every shard".into(), None),
        StreamJob::Callback { name, .. } => {
            (format!("callback {name}"), Some(keys::callback_field(name)))
        }
        StreamJob::Value(id) => {
            let head = head(id);
            (format!("recompute {head}"), Some(head))
        }
        StreamJob::Submitted { id, .. } => {
            let head = head(id);
            (format!("task {head}"), Some(head))
        }
        StreamJob::Related { collection, .. } => (format!("relation {collection}"), None),
        StreamJob::Malformed => ("unknown".into(), None),
    }
}

/// When a job queued at `queued_ms` (its stream entry's time) for a
/// function (or callback) that no executor at hand has, last announced at
/// `announced_ms`, is given up (ms, Redis clock): `timeout` after the later
/// of the two, and never while a live executor has it (announced within
/// [`ANNOUNCED_WITHIN`]). See `SmacheBuilder::orphan_timeout`.
pub(crate) fn orphan_deadline(queued_ms: u64, announced_ms: Option<u64>, timeout: Duration) -> u64 {
    let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let deadline = queued_ms
        .max(announced_ms.unwrap_or(0))
        .saturating_add(timeout);
    match announced_ms {
        Some(at) => {
            let live = u64::try_from(ANNOUNCED_WITHIN.as_millis()).unwrap_or(u64::MAX);
            deadline.max(at.saturating_add(live).saturating_add(1))
        }
        None => deadline,
    }
}

/// Why a job was given up: `what` (`function <name>#<version>` or
/// `callback <name>`) had no live executor for `timeout`.
pub(crate) fn orphan_reason(
    what: &str,
    announced_ms: Option<u64>,
    now_ms: u64,
    timeout: Duration,
) -> String {
    let last = match announced_ms {
        Some(at) => format!(
            "last announced {} ago",
            age(Duration::from_millis(now_ms.saturating_sub(at)))
        ),
        None => "never announced".to_owned(),
    };
    format!("no live executor has {what} ({last}) for {}", age(timeout))
}

mod display;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_described_by_what_runs_them() {
        let value = |id: &str| StreamJob::Value(id.into());
        assert_eq!(
            describe(&value("app::card#2:o:0123")),
            ("recompute app::card#2".into(), Some("app::card#2".into()))
        );
        assert_eq!(
            describe(&value("card#2:o:0123")),
            ("recompute card#2".into(), Some("card#2".into()))
        );
        let task = StreamJob::Submitted {
            id: "app::card#2:1".into(),
            task: "t".into(),
            args: String::new(),
        };
        assert_eq!(
            describe(&task),
            ("task app::card#2".into(), Some("app::card#2".into()))
        );
        let callback = StreamJob::Callback {
            name: "mail".into(),
            task: "t".into(),
            args: String::new(),
        };
        assert_eq!(
            describe(&callback),
            ("callback mail".into(), Some("cb:mail".into()))
        );
        let fan = StreamJob::FanOut {
            token: "e:users:o:1".into(),
            cursor: "0".into(),
            lazy: false,
            dependants: None,
        };
        assert_eq!(describe(&fan), ("fan-out".into(), None));
        let related = StreamJob::Related {
            collection: "orders".into(),
            doc: "o:1".into(),
            op: None,
            before: None,
            all: true,
        };
        assert_eq!(describe(&related), ("relation orders".into(), None));
        assert_eq!(describe(&StreamJob::Malformed), ("unknown".into(), None));
    }

    #[test]
    fn orphans_are_given_up_after_the_timeout_and_never_while_announced() {
        let timeout = Duration::from_secs(100);
        // Never announced: the timeout after the job was queued.
        assert_eq!(orphan_deadline(1_000, None, timeout), 101_000);
        // Announced after it was queued: the timeout after that.
        assert_eq!(orphan_deadline(1_000, Some(5_000), timeout), 105_000);
        // Announced long before: counted from the job.
        assert_eq!(orphan_deadline(900_000, Some(5_000), timeout), 1_000_000);
        // A short timeout never gives up a function announced within
        // ANNOUNCED_WITHIN: its executor is alive.
        let live = u64::try_from(ANNOUNCED_WITHIN.as_millis()).unwrap();
        assert_eq!(
            orphan_deadline(1_000, Some(5_000), Duration::from_secs(1)),
            5_000 + live + 1
        );
        assert_eq!(
            orphan_reason("function app::card#1", None, 0, Duration::from_secs(600)),
            "no live executor has function app::card#1 (never announced) for 10.0 min"
        );
        assert_eq!(
            orphan_reason("callback mail", Some(1_000), 181_000, timeout),
            "no live executor has callback mail (last announced 3.0 min ago) for 1.7 min"
        );
    }
}
