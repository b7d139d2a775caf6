//! What operators see: the jobs queued, held and given up, the workers, and
//! the dependency graph around a value or a document.
//!
//! ## Jobs
//!
//! [`Smache::inspect_jobs`](crate::Smache::inspect_jobs) reads the job
//! stream (`{prefix}:jobs`), its consumer group, the dead letters
//! (`{prefix}:dead`) and what the live executors announced they can run
//! (`{prefix}:fns`), and groups the jobs by what they run. A job for a
//! function that no live executor has (a deploy in progress, a function
//! renamed or given a new `version`) is never dropped silently: it stays
//! queued for an executor that has it, and shows here with when it will be
//! given up; once no live executor has announced the function for the
//! orphan timeout
//! ([`SmacheBuilder::orphan_timeout`](crate::SmacheBuilder::orphan_timeout),
//! 10 minutes by default), an executor moves it to the dead letters with why.
//! `smache-worker inspect jobs` prints the report; its head says which
//! workers are live.
//!
//! ```no_run
//! # async fn run() -> Result<(), smache::Error> {
//! let smache = smache::Smache::builder()
//!     .redis_url("redis://127.0.0.1:6379/")
//!     .build()?;
//! let report = smache.inspect_jobs().await?;
//! for group in report.groups.iter().filter(|g| g.orphaned()) {
//!     eprintln!("{}: {} jobs no executor can run", group.what, group.queued);
//! }
//! println!("{report}");
//! # Ok(())
//! # }
//! ```
//!
//! ## Workers
//!
//! [`Smache::inspect_workers`](crate::Smache::inspect_workers) reads what the
//! live workers announced (`{prefix}:workers`): the database each follows,
//! whether it watches or stands by, how far behind the change stream it is,
//! the collections it saw changes in; when none is live, the other prefixes
//! that have some. `smache-worker inspect workers` prints it.
//!
//! ## The graph
//!
//! [`Smache::inspect_graph`](crate::Smache::inspect_graph) starts from a
//! value ([`GraphStart::Value`], or a [`CacheKey`](crate::CacheKey)), a
//! document or a collection, and reports what the value depends on (its
//! dependency tokens, field `f` of its hash) and what depends on it or on
//! the document (the reverse sets `r:<token>`, aliases `al:<id>`, and the
//! functions with `relations(...)` on the collection), transitively up to
//! [`GraphOptions::depth`] edges away: each value with its version,
//! [`Freshness`], pending job and computed-at time. It is bounded for huge
//! fan-outs: of a set it reads the size and at most
//! [`GraphOptions::limit`] members ("… and 12,345 more"). `Display` prints
//! a tree, [`GraphReport::dot`] Graphviz dot and [`GraphReport::mermaid`]
//! a Mermaid flowchart; `smache-worker inspect graph <start> --format
//! text|dot|mermaid` prints them.
//!
//! ```no_run
//! use smache::inspect::{GraphFormat, GraphOptions, GraphStart};
//!
//! # async fn run(smache: smache::Smache) -> Result<(), smache::Error> {
//! let start: GraphStart = "users/65f000000000000000000001".parse()?;
//! let report = smache.inspect_graph(start, GraphOptions::default().limit(20)).await?;
//! println!("{report}");
//! std::fs::write("graph.dot", report.format(GraphFormat::Dot)).unwrap();
//! # Ok(())
//! # }
//! ```

mod graph;
mod jobs;
mod render;
mod start;
mod walk;

pub use self::graph::{
    EdgeKind, Freshness, GraphEdge, GraphNode, GraphOptions, GraphReport, NodeKind, ValueNode,
};
pub(crate) use self::jobs::{orphan_deadline, orphan_reason};
pub use self::jobs::{
    DeadLetter, JobGroup, JobsReport, ShardJobs, ANNOUNCED_WITHIN, MAX_SCANNED, RECENT_DEAD_LETTERS,
};
pub use self::render::GraphFormat;
pub use self::start::GraphStart;
pub use crate::roster::{OtherPrefix, WorkerInfo, WorkersReport, MAX_COLLECTIONS_NAMED};

/// The milliseconds part of a stream entry id (`<ms>-<seq>`).
pub(crate) fn entry_ms(entry: &str) -> u64 {
    entry
        .split_once('-')
        .map_or(entry, |(ms, _)| ms)
        .parse()
        .unwrap_or(0)
}

pub(crate) use crate::roster::age;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(entry_ms("1700000000123-4"), 1_700_000_000_123);
        assert_eq!(entry_ms("garbage"), 0);
        assert_eq!(age(Duration::from_millis(850)), "850 ms");
        assert_eq!(age(Duration::from_secs(12)), "12 s");
        assert_eq!(age(Duration::from_secs(210)), "3.5 min");
        assert_eq!(age(Duration::from_secs(7200)), "2.0 h");
    }
}
