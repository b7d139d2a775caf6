//! Measures the self-refreshing loop: the time from a committed document
//! update to the fresh value being readable, and the Redis round trips one
//! change costs. Run it with servers at hand:
//!
//! ```text
//! ./scripts/with-servers.sh cargo run --release --example refresh_latency
//! ```
//!
//! The worker and an executor run in this process (as tasks), the way the
//! `dashboard` example runs them; the value's function does no work, so
//! the figures are smache's own overhead plus the change stream's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use smache::bson::doc;
use smache::bson::oid::ObjectId;
use smache::{computed, Entity, Smache};

#[derive(Clone, Debug, Serialize, Deserialize, Entity)]
#[entity(collection = "users")]
struct User {
    #[serde(rename = "_id")]
    id: ObjectId,
    name: String,
}

#[computed(User)]
async fn label(user: &User) -> String {
    user.name.clone()
}

const USERS: usize = 250;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url = std::env::var("SMACHE_REDIS_URL")?;
    let mongodb_uri = std::env::var("SMACHE_MONGODB_URI")?;
    let client = smache::mongodb::Client::with_uri_str(&mongodb_uri).await?;
    let database = format!("latency_{}", ObjectId::new().to_hex());
    let smache = Smache::builder()
        .redis_url(&redis_url)
        .mongodb(&client, &database)
        .prefix(format!("latency-{}", ObjectId::new().to_hex()))
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(smache::worker::run_until(
        smache.clone(),
        smache::worker::WorkerOptions::default().await_time(Duration::from_millis(100)),
        async move {
            let _ = stopped.await;
        },
    ));
    let executor = smache::executor::spawn(&smache);
    let users = client.database(&database).collection::<User>("users");
    let mut all = Vec::new();
    for i in 0..USERS {
        let user = User {
            id: ObjectId::new(),
            name: format!("user {i}"),
        };
        users.insert_one(&user).await?;
        smache.scope(label(&user)).await;
        all.push(user);
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // the worker is watching

    // 1. Latency: one update at a time, polling the cached value.
    let mut samples = Vec::with_capacity(USERS);
    for user in &all {
        let name = format!("{} (renamed)", user.name);
        users
            .update_one(doc! { "_id": user.id }, doc! { "$set": { "name": &name } })
            .await?;
        let committed = Instant::now();
        loop {
            if smache.scope(label(user)).await == name {
                break;
            }
            if committed.elapsed() > Duration::from_secs(10) {
                return Err(format!("{} was not refreshed within 10 s", user.id).into());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples.push(committed.elapsed());
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "update committed -> fresh value readable, over {} updates: p50 {:.2?}  p90 {:.2?}  p99 {:.2?}  max {:.2?}",
        samples.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        samples[samples.len() - 1]
    );

    // 2. Round trips: a batch of updates, no polling until the end.
    let mut redis = redis::Client::open(redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let before = command_counts(&mut redis).await?;
    for user in &all {
        users
            .update_one(
                doc! { "_id": user.id },
                doc! { "$set": { "name": "final" } },
            )
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for user in &all {
        while smache.scope(label(user)).await != "final" {
            if Instant::now() > deadline {
                return Err("the batch was not refreshed within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let after = command_counts(&mut redis).await?;
    let mut per_change = BTreeMap::new();
    for (command, calls) in &after {
        let delta = calls - before.get(command).copied().unwrap_or(0);
        if delta > 0 && !matches!(command.as_str(), "hmget" | "info") {
            per_change.insert(command.clone(), delta as f64 / USERS as f64);
        }
    }
    let total: f64 = per_change.values().sum();
    println!("redis commands per change (excluding the readers' HMGETs): {total:.2}");
    for (command, calls) in &per_change {
        println!("  {command:<12} {calls:.2}");
    }

    let _ = stop.send(());
    worker.await??;
    executor.shutdown().await?;
    client.database(&database).drop().await?;
    Ok(())
}

async fn command_counts(
    redis: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}
