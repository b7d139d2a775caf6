//! How a [`JobsReport`] prints: what `smache-worker inspect jobs` shows.

use std::fmt;
use std::time::Duration;

use super::super::age;
use super::{JobsReport, MAX_SCANNED};

impl fmt::Display for JobsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "jobs ({}): {} queued, {} held by an executor, {} waiting",
            self.stream,
            self.queued,
            self.held,
            self.queued.saturating_sub(self.held)
        )?;
        writeln!(f, "  workers: {}", crate::roster::summary(&self.workers))?;
        if self.shards.len() > 1 {
            for shard in self.shards.iter().filter(|s| s.queued > 0 || s.dead > 0) {
                writeln!(
                    f,
                    "  {}: {} queued, {} held, {} dead",
                    shard.stream, shard.queued, shard.held, shard.dead
                )?;
            }
        }
        for (consumer, held) in &self.held_by {
            writeln!(f, "  held by {consumer}: {held}")?;
        }
        if !self.groups.is_empty() {
            let width = self.groups.iter().map(|g| g.what.len()).max().unwrap_or(0);
            writeln!(
                f,
                "  {:width$}  {:>7}  {:>5}  {:>10}  {:>9}  executor",
                "job", "queued", "held", "deliveries", "oldest"
            )?;
            for group in &self.groups {
                let executor = match group.announced {
                    _ if group.any_executor => "any".to_owned(),
                    Some(seen) => format!("seen {} ago", age(seen)),
                    None => match group.gives_up_in {
                        Some(Duration::ZERO) => {
                            "NONE: waits for an executor that has it; given up when next seen"
                                .to_owned()
                        }
                        Some(left) => format!(
                            "NONE: waits for an executor that has it; given up in {}",
                            age(left)
                        ),
                        None => "NONE: waits for an executor that has it".to_owned(),
                    },
                };
                writeln!(
                    f,
                    "  {:width$}  {:>7}  {:>5}  {:>10}  {:>9}  {executor}",
                    group.what,
                    group.queued,
                    group.held,
                    group.max_deliveries,
                    age(group.oldest),
                )?;
            }
        }
        if self.truncated {
            writeln!(f, "  (only the oldest {MAX_SCANNED} jobs were grouped)")?;
        }
        writeln!(f, "dead letters ({}): {}", self.dead_stream, self.dead)?;
        for letter in &self.recent_dead {
            writeln!(
                f,
                "  {} ago  {}  {}  (by {})",
                age(letter.age),
                letter.job,
                letter.reason,
                letter.by
            )?;
        }
        Ok(())
    }
}
