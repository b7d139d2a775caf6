//! Measuring beside the clock: Redis command counts and server time, the
//! host's load.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;

use crate::ctx::Result;

/// Calls and server time (µs) of each Redis command (`INFO commandstats`).
pub(crate) type CommandStats = BTreeMap<String, (u64, u64)>;

/// Redis command counts and times (`INFO commandstats`), by command.
pub(crate) async fn command_counts(conn: &mut ConnectionManager) -> Result<CommandStats> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let field = |rest: &str, name: &str| -> Option<u64> {
        rest.split(',')
            .find_map(|part| part.strip_prefix(name))?
            .parse()
            .ok()
    };
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            Some((
                name.to_owned(),
                (field(rest, "calls=")?, field(rest, "usec=")?),
            ))
        })
        .collect())
}

/// Commands run between two [`command_counts`], per `per`, leaving out
/// the commands the bench itself sends (`ping`, `info`, …).
pub(crate) fn commands_per(
    before: &CommandStats,
    after: &CommandStats,
    per: usize,
    ignore: &[&str],
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(name, _)| !ignore.contains(&name.as_str()))
        .filter_map(|(name, (calls, _))| {
            let delta = calls.saturating_sub(before.get(name).map_or(0, |c| c.0));
            (delta > 0).then(|| (name.clone(), delta as f64 / per as f64))
        })
        .collect()
}

/// Server time (µs) of `command` between two [`command_counts`], per `per`.
pub(crate) fn usec_per(
    before: &CommandStats,
    after: &CommandStats,
    command: &str,
    per: usize,
) -> f64 {
    let at = |stats: &CommandStats| stats.get(command).map_or(0, |c| c.1);
    at(after).saturating_sub(at(before)) as f64 / per as f64
}

/// `{"evalsha": 2.0, "hmget": 1.0}` as "evalsha 2.00, hmget 1.00".
pub(crate) fn commands_line(per: &BTreeMap<String, f64>) -> String {
    per.iter()
        .map(|(name, n)| format!("{name} {n:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The host's load average (1 min), if known.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
