//! P6: what a miss adds to the function's own time, in Redis round trips.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::ctx::{ping, Ctx, Result};
use crate::fns::{miss_probe, MISS_OWN_NS};
use crate::probe::{command_counts, commands_line, commands_per, usec_per};
use crate::report::{Met, Row};
use crate::stats::{us, Micros, Summary};

/// P6: sequential first calls of distinct keys, each followed by one
/// timed `PING` on the same kind of connection.
pub(crate) async fn miss_overhead(ctx: &Ctx) -> Result<Vec<Row>> {
    eprintln!("[smache-bench] P6: miss overhead");
    let smache = ctx.redis_instance(&ctx.prefix("p6"))?;
    let (warmup, n) = ctx.pick((50u64, 300u64), (200, 3_000));
    // Warm-up: the connection, the `done` subscription, the scripts.
    for i in 0..warmup {
        smache.scope(miss_probe("warm", i)).await;
    }
    let mut conn = ctx.redis.clone();
    let before = command_counts(&mut conn).await?;
    let mut overheads = Vec::with_capacity(n as usize);
    let mut own_total = Duration::ZERO;
    let mut rtts = Vec::with_capacity(n as usize);
    for i in 0..n {
        let start = Instant::now();
        std::hint::black_box(smache.scope(miss_probe(&ctx.run, i)).await);
        let total = start.elapsed();
        let own = Duration::from_nanos(MISS_OWN_NS.load(Ordering::Relaxed));
        own_total += own;
        overheads.push(total.saturating_sub(own));
        rtts.push(ping(&mut conn).await?);
    }
    let after = command_counts(&mut conn).await?;
    let per_miss = commands_per(&before, &after, n as usize, &["ping", "info"]);
    let calls: f64 = per_miss.values().sum();
    let scripts_us = usec_per(&before, &after, "evalsha", n as usize);
    let hmget_us = usec_per(&before, &after, "hmget", n as usize);
    let ours = Summary::of(&overheads).ok_or("no samples")?;
    let rtt = Summary::of(&rtts).ok_or("no samples")?;
    let ratio = ours.p50_us / rtt.p50_us;
    Ok(vec![Row {
        id: "P6".to_owned(),
        scenario: "miss overhead (first call − the function's own time)".to_owned(),
        smache: ours.to_string(),
        baseline: format!("Redis round trip (PING): {rtt}"),
        ratio: Some(ratio),
        ratio_of: "p50 overhead / p50 round trip, i.e. in round trips".to_owned(),
        target: "≤ 3 round trips".to_owned(),
        met: Met::from(ratio <= 3.0),
        notes: vec![
            format!(
                "p99 {:.2} round trips; n = {n}; function's own time ≈ {} a call",
                ours.p99_us / rtt.p50_us,
                Micros(us(own_total) / n as f64)
            ),
            format!(
                "Redis commands a miss, those run inside scripts included: {calls:.2} ({})",
                commands_line(&per_miss)
            ),
            format!(
                "Redis server time a miss: scripts (EVALSHA) {}, HMGETs {}",
                Micros(scripts_us),
                Micros(hmget_us)
            ),
        ],
        data: json!({ "overhead": ours, "rtt": rtt, "commands_per_miss": per_miss, "script_server_us": scripts_us }),
    }])
}
