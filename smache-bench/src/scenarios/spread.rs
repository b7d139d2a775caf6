//! P7 (with `--cluster-url`): how an instance's keys spread over a
//! cluster's masters (#16). Values with 2 dependencies each (P5's
//! `edge_value`: its user and the `settings` collection) are computed by
//! an instance whose keys lie in [`SHARDS`] shards; then, on each master,
//! the instance's keys are counted (`SCAN` of `{prefix}:*` and
//! `{prefix#*`) and their memory summed (`MEMORY USAGE`, exact), beside
//! the growth of the master's `INFO keyspace` count over the run. Target:
//! with 3 masters, each holds 33% ± 5% of the keys and of the memory.

use futures::StreamExt;
use serde_json::json;
use smache::Smache;

use super::memory::usage;
use crate::ctx::{Ctx, Result};
use crate::fns::edge_values;
use crate::report::{Met, Row};
use crate::target::{master_nodes, scan, Raw, ServerCommands, Target};

/// The shard count measured: 16 on each of 3 masters of an even split.
const SHARDS: usize = 48;

/// The most a master's share may be off an even split (percentage points).
const TOLERANCE: f64 = 5.0;

/// One master's part of the instance.
struct Share {
    address: String,
    keys: u64,
    bytes: u64,
    /// `INFO keyspace`'s count of keys, before and after the values.
    keyspace: (u64, u64),
}

/// P7·cluster.
pub(crate) async fn spread(ctx: &Ctx, on: &Target) -> Result<Vec<Row>> {
    let Raw::Cluster(cluster) = &on.raw else {
        return Err("P7 needs a cluster".into());
    };
    let prefix = ctx.prefix("p7");
    let smache = Smache::builder()
        .redis_url(&on.url)
        .prefix(&prefix)
        .local_cache_capacity(0)
        .redis_shards(SHARDS)
        .build()?;
    let (users, per_user) = ctx.pick((480u32, 10u32), (10_000, 10));
    let values = u64::from(users * per_user);
    let masters = master_nodes(cluster).await?;
    let mut before = Vec::with_capacity(masters.len());
    for (_, master) in &masters {
        before.push(keyspace(&mut master.clone()).await?);
    }
    eprintln!(
        "[smache-bench] P7·cluster: {values} values × 2 edges, {SHARDS} shards over {} masters",
        masters.len()
    );
    edge_values(&smache, users, per_user, 64).await;

    let mut shares = Vec::with_capacity(masters.len());
    for ((address, mut node), before) in masters.into_iter().zip(before) {
        let mut keys = scan(&mut node, &format!("{{{prefix}}}:*")).await?;
        keys.extend(scan(&mut node, &format!("{{{prefix}#*")).await?);
        let usages = futures::stream::iter(keys.iter().map(|key| {
            let mut node = node.clone();
            async move { usage(&mut node, key).await }
        }))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
        let mut bytes = 0;
        for usage in usages {
            bytes += usage?;
        }
        shares.push(Share {
            address,
            keys: keys.len() as u64,
            bytes,
            keyspace: (before, keyspace(&mut node).await?),
        });
    }
    Ok(vec![row(&prefix, values, &shares)])
}

/// The row: each master's share of the keys and of their memory.
fn row(prefix: &str, values: u64, shares: &[Share]) -> Row {
    let keys: u64 = shares.iter().map(|s| s.keys).sum();
    let bytes: u64 = shares.iter().map(|s| s.bytes).sum();
    let percent = |part: u64, whole: u64| 100.0 * part as f64 / whole.max(1) as f64;
    let even = 100.0 / shares.len().max(1) as f64;
    let within = |share: f64| (share - even).abs() <= TOLERANCE;
    let key_shares: Vec<f64> = shares.iter().map(|s| percent(s.keys, keys)).collect();
    let byte_shares: Vec<f64> = shares.iter().map(|s| percent(s.bytes, bytes)).collect();
    let list = |shares: &[f64]| {
        shares
            .iter()
            .map(|share| format!("{share:.1}%"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut notes = vec![format!(
        "{values} values × 2 edges (P5's), {SHARDS} shards, prefix `{prefix}`: {keys} keys, {bytes} B in all"
    )];
    for (share, (key_share, byte_share)) in shares.iter().zip(key_shares.iter().zip(&byte_shares)) {
        notes.push(format!(
            "master {}: {} keys ({key_share:.1}%), {} B ({byte_share:.1}%); INFO keyspace db0 keys {} → {}",
            share.address, share.keys, share.bytes, share.keyspace.0, share.keyspace.1
        ));
    }
    let met = shares.len() > 1
        && key_shares
            .iter()
            .chain(&byte_shares)
            .all(|&share| within(share));
    Row {
        id: "P7·cluster".to_owned(),
        scenario: format!("keys and memory per master ({} masters)", shares.len()),
        smache: format!("keys {}, memory {}", list(&key_shares), list(&byte_shares)),
        baseline: "—".to_owned(),
        ratio: None,
        ratio_of: String::new(),
        target: format!("{even:.0}% ± {TOLERANCE:.0}% per master"),
        met: Met::from(met),
        notes,
        data: json!({
            "values": values,
            "shards": SHARDS,
            "keys": keys,
            "bytes": bytes,
            "masters": shares.iter().map(|s| json!({
                "address": s.address,
                "keys": s.keys,
                "bytes": s.bytes,
                "keyspace_before": s.keyspace.0,
                "keyspace_after": s.keyspace.1,
            })).collect::<Vec<_>>(),
        }),
    }
}

/// `INFO keyspace`'s count of keys in db0 (0 if none).
async fn keyspace(node: &mut impl ServerCommands) -> Result<u64> {
    let info: String = node.query(redis::cmd("INFO").arg("keyspace")).await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("db0:keys="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|keys| keys.parse().ok())
        .unwrap_or(0))
}
