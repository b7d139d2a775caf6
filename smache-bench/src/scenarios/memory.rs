//! P5: Redis memory per dependency edge. Values with a known number of
//! edges each are computed, then `MEMORY USAGE` (exact: `SAMPLES 0`) is
//! summed over every reverse set (`{prefix}:r:<token>`) and, for the
//! forward edges (field `f` of each value's hash), over the difference
//! each value's hash makes with and without that field (measured on a
//! `COPY`, so the run leaves the graph as it was).

use serde_json::json;

use crate::ctx::{scan, Ctx, Result};
use crate::fns::{edge_value, edge_values};
use crate::report::{Met, Row};
use crate::target::ServerCommands;

/// P5.
pub(crate) async fn memory_per_edge(ctx: &Ctx) -> Result<Vec<Row>> {
    let prefix = ctx.prefix("p5");
    let smache = ctx.redis_instance(&prefix)?;
    let (users, per_user) = ctx.pick((100u32, 10u32), (1_000, 10));
    eprintln!("[smache-bench] P5: {} values × 2 edges", users * per_user);
    let all = edge_values(&smache, users, per_user, 32).await;
    // Each value depends on its user (e:users:<id>) and on the settings
    // collection (c:settings): 2 edges, each stored in both directions.
    let values = u64::from(users * per_user);
    let edges = values * 2;
    let mut conn = ctx.redis.clone();
    let forward = scan(&mut conn, &format!("{{{prefix}}}:v:*")).await?;
    let reverse = scan(&mut conn, &format!("{{{prefix}}}:r:*")).await?;
    let mut bytes = [0u64; 2];
    let spare = format!("{{{prefix}}}:p5-copy");
    let mut with_edges = 0;
    for key in &forward {
        let whole = usage(&mut conn, key).await?;
        let _: () = redis::pipe()
            .cmd("COPY")
            .arg(key)
            .arg(&spare)
            .arg("REPLACE")
            .ignore()
            .cmd("HDEL")
            .arg(&spare)
            .arg("f")
            .ignore()
            .query_async(&mut conn)
            .await?;
        let without = usage(&mut conn, &spare).await?;
        if without < whole {
            with_edges += 1;
        }
        bytes[0] += whole.saturating_sub(without);
    }
    let _: () = redis::cmd("DEL").arg(&spare).query_async(&mut conn).await?;
    for key in &reverse {
        bytes[1] += usage(&mut conn, key).await?;
    }
    let mut check = Vec::new();
    if with_edges != values {
        check.push(format!("{with_edges} values with edges out of {values}"));
    }
    if reverse.len() as u64 != u64::from(users) + 1 {
        check.push(format!(
            "{} reverse keys for {users} users + 1 collection",
            reverse.len()
        ));
    }
    let per_edge = (bytes[0] + bytes[1]) as f64 / edges as f64;
    let id_len =
        smache.storage_key(&edge_value::key(&all[0], 0)?).len() - format!("{{{prefix}}}:v:").len();
    let mut notes = vec![
        format!(
            "{values} values × 2 edges (their user, the settings collection); forward edges (field `f` of the value hashes) {} B, reverse sets {} B in all",
            bytes[0], bytes[1]
        ),
        format!(
            "each edge is stored twice (forward in the value's hash, reverse in the token's set, which holds the value id); a value id here is {id_len} bytes (prefix `{prefix}`)"
        ),
    ];
    notes.extend(check.iter().cloned());
    Ok(vec![Row {
        id: "P5".to_owned(),
        scenario: "Redis memory per dependency edge (MEMORY USAGE)".to_owned(),
        smache: format!("{per_edge:.0} B per edge"),
        baseline: "—".to_owned(),
        ratio: None,
        ratio_of: String::new(),
        target: "≤ 100 B".to_owned(),
        met: Met::from(check.is_empty() && per_edge <= 100.0),
        notes,
        data: json!({
            "values": values,
            "edges": edges,
            "forward_bytes": bytes[0],
            "reverse_bytes": bytes[1],
            "values_with_edges": with_edges,
            "reverse_keys": reverse.len(),
            "bytes_per_edge": per_edge,
            "value_id_len": id_len,
        }),
    }])
}

/// `MEMORY USAGE` of `key`, exact (`SAMPLES 0`), on the server `conn`
/// reaches; 0 if it does not exist.
pub(crate) async fn usage(conn: &mut impl ServerCommands, key: &str) -> Result<u64> {
    let usage: Option<u64> = conn
        .query(
            redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0),
        )
        .await?;
    Ok(usage.unwrap_or(0))
}
