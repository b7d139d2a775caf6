//! Measuring beside the clock: Redis command counts and server time,
//! the slow log, CPU time and memory of processes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ctx::Result;
use crate::target::ServerCommands;

/// Calls and server time (µs) of each Redis command (`INFO commandstats`).
pub(crate) type CommandStats = BTreeMap<String, (u64, u64)>;

/// Redis command counts and times (`INFO commandstats`), by command.
pub(crate) async fn command_counts(conn: &mut impl ServerCommands) -> Result<CommandStats> {
    let info: String = conn.query(redis::cmd("INFO").arg("commandstats")).await?;
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

/// This process's peak and current resident set, in KiB (Linux).
pub(crate) fn memory_kib() -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time this process used so far, user + system, in seconds (Linux;
/// assumes the usual 100 clock ticks a second).
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses: state is
    // field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3)?.parse::<f64>().ok();
    Some((ticks(14)? + ticks(15)?) / 100.0)
}

/// CPU time the Redis server used so far, user + system, in seconds.
pub(crate) async fn redis_cpu_seconds(conn: &mut impl ServerCommands) -> Result<f64> {
    let info: String = conn.query(redis::cmd("INFO").arg("cpu")).await?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            matches!(name, "used_cpu_sys" | "used_cpu_user")
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum())
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

/// The slowest command Redis logged since `SLOWLOG RESET`: its time and
/// name (`EVALSHA` scripts named by `scripts`, hash → name).
pub(crate) async fn slowest_command(
    conn: &mut impl ServerCommands,
    scripts: &[(String, &str)],
) -> Result<Option<(Duration, String)>> {
    let entries: Vec<redis::Value> = conn
        .query(redis::cmd("SLOWLOG").arg("GET").arg(128))
        .await?;
    let mut slowest: Option<(Duration, String)> = None;
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let micros = match fields.get(2) {
            Some(redis::Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
            _ => continue,
        };
        let args: Vec<String> = fields
            .get(3)
            .and_then(|args| redis::from_redis_value(args.clone()).ok())
            .unwrap_or_default();
        let mut name = args.first().cloned().unwrap_or_default();
        if name.eq_ignore_ascii_case("evalsha") {
            if let Some((_, script)) = scripts
                .iter()
                .find(|(hash, _)| args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(hash)))
            {
                name = format!("EVALSHA {script}");
            }
        }
        let took = Duration::from_micros(micros);
        if slowest.as_ref().is_none_or(|(max, _)| took > *max) {
            slowest = Some((took, name));
        }
    }
    Ok(slowest)
}
