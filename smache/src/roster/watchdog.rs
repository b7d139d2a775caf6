//! An application's check that a worker serves it: see the [roster
//! docs](super).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::age;
use super::{elsewhere, workers_of, OtherPrefix, WorkerInfo};
use crate::envelope::now_ms;
use crate::instance::Inner;
use crate::store::Store;
use crate::watchdog::Step;
#[cfg(test)]
use crate::watchdog::Watchdog;

/// After a store of a value that depends on documents: checks in the
/// background, at most once per [`Watchdog`](crate::watchdog::Watchdog) interval, that a worker
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
        let workers = match store.roll().await {
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
                let (others, complete) = elsewhere(store).await;
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
}
