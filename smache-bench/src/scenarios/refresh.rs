//! P2: one document update at a time; the time from the update being
//! committed to the new value being readable through the function, with
//! the worker and an executor in another process.

use std::time::{Duration, Instant};

use bson::doc;
use bson::oid::ObjectId;
use serde_json::json;
use smache::Smache;

use super::refresher::RefresherProcess;
use crate::ctx::{short_sleep, Ctx, Result};
use crate::fns::{label, User};
use crate::report::{Met, Row};
use crate::stats::{Micros, Summary};
use crate::target::Target;

/// P2: update → fresh value readable, smache on `target` (the run's
/// server, or its cluster: row `P2·cluster`).
pub(crate) async fn update_to_fresh(ctx: &Ctx, target: &Target) -> Result<Vec<Row>> {
    let client = ctx.mongo().await?;
    let name = if target.cluster { "p2c" } else { "p2" };
    let database = ctx.database(name);
    let prefix = ctx.prefix(name);
    let (users_n, warmup, updates) = ctx.pick((100usize, 20usize, 200usize), (500, 50, 1_000));
    eprintln!(
        "[smache-bench] {}: update → fresh, {updates} updates",
        target.id("P2")
    );
    let smache = Smache::builder()
        .redis_url(&target.url)
        .mongodb(&client, &database)
        .prefix(&prefix)
        .build()?;
    let users = client.database(&database).collection::<User>("users");
    let mut all: Vec<User> = (0..users_n)
        .map(|i| User {
            id: ObjectId::new(),
            name: format!("user {i}"),
        })
        .collect();
    users.insert_many(&all).await?;
    // The worker first: one that starts after the values were stored (with
    // no saved position) marks them all stale.
    let refresher = RefresherProcess::start(&prefix, &database, &target.url, 1).await?;
    for user in &all {
        smache.scope(label(user)).await;
    }
    let mut samples = Vec::with_capacity(updates);
    for i in 0..warmup + updates {
        let user = &mut all[i % users_n];
        user.name = format!("user {} rev {i}", user.id);
        users
            .update_one(
                doc! { "_id": user.id },
                doc! { "$set": { "name": &user.name } },
            )
            .await?;
        let committed = Instant::now();
        while smache.scope(label(user)).await != user.name {
            if committed.elapsed() > Duration::from_secs(10) {
                return Err(format!("update {i} was not refreshed within 10 s").into());
            }
            short_sleep(Duration::from_micros(200));
        }
        if i >= warmup {
            samples.push(committed.elapsed());
        }
    }
    let (peak, _) = refresher.stop().await?;
    let rtt = Summary::of(&target.rtt(&prefix, ctx.pick(200, 1_000)).await?).ok_or("no samples")?;
    let ours = Summary::of(&samples).ok_or("no samples")?;
    let met = ours.p50_us <= 5_000.0 && ours.p99_us <= 20_000.0;
    Ok(vec![Row {
        id: target.id("P2"),
        scenario: "document update committed → fresh value readable (compute ≈ 0)".to_owned(),
        smache: ours.to_string(),
        baseline: format!("Redis round trip (PING): {rtt}"),
        ratio: Some(ours.p50_us / rtt.p50_us),
        ratio_of: "p50 / p50 round trip (context: the target is absolute)".to_owned(),
        target: "p50 ≤ 5 ms, p99 ≤ 20 ms".to_owned(),
        met: Met::from(met),
        notes: vec![
            format!(
                "{updates} updates one at a time ({warmup} more to warm up) over {users_n} users; p90 {}, max {}",
                Micros(ours.p90_us),
                Micros(ours.max_us)
            ),
            format!(
                "worker (default options) + 1 executor in a child process; the executor loads the user from MongoDB; polled every ~0.2 ms; peak RSS of that process {}",
                peak.map_or("n/a".to_owned(), |kib| format!("{} MiB", kib / 1024))
            ),
        ],
        data: json!({ "latency": ours, "rtt": rtt, "refresher_vmhwm_kib": peak }),
    }])
}
