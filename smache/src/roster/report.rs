//! What `inspect workers` reports: the live workers of a prefix, and the
//! head line of the jobs report.

use std::fmt;

use super::age;
use super::{elsewhere, workers_of, OtherPrefix, WorkerInfo};
use crate::error::{Error, Result};
use crate::instance::Smache;
use crate::store::Store;

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
        let mut roll = store.roll().await?;
        let depended_on = std::mem::take(&mut roll.collections);
        let workers = workers_of(roll);
        let (elsewhere, searched_every_key) = if workers.is_empty() {
            elsewhere(store).await
        } else {
            (Vec::new(), true)
        };
        Ok(WorkersReport {
            prefix: self.inner.prefix.clone(),
            key: store.workers_key(),
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
        Ok(workers_of(store.roll().await?))
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
