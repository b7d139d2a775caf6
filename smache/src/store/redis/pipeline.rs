//! Pipelines on a Redis Cluster (see [`cluster`]): split by master (by
//! slot when that fails), and resent one command at a time when a slot
//! moves under them. The one
//! place that knows how redis-rs sends a cluster pipeline; `conn.rs` sends
//! every non-transaction pipeline on a cluster through it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{Cmd, Pipeline, RedisResult, Value};

use super::scan::SlotMap;
use crate::store::shards;
use crate::sync::lock;

/// Which master serves each slot, as the cluster said last, shared by a
/// cluster connection's clones: a pipeline over several slots goes out as
/// a pipeline per master rather than per slot (48 shards over 3 masters:
/// 3 requests, not 48, each costing a trip through the client's routing).
/// Read when first needed and again once [`MAP_FOR`] old; forgotten when
/// a pipeline so sent meets an error or is dropped unanswered (a slot
/// moved, a master failed over; the client, asked for a node it has no
/// connection to, reconnects to every node), then read again by the next
/// such pipeline. A move the client follows by itself (every command of a
/// part redirected to one other master) costs a redirection per part
/// until the map is read again, at most [`MAP_FOR`] later.
#[derive(Debug, Default)]
pub(crate) struct Masters(Mutex<Option<(Arc<SlotMap>, Instant)>>);

/// How long a map of the slots' masters is used before it is read again.
const MAP_FOR: Duration = Duration::from_secs(2);

impl Masters {
    /// The map, read from the cluster if none is kept or it is too old.
    async fn map(&self, conn: &mut ClusterConnection) -> RedisResult<Arc<SlotMap>> {
        if let Some((map, read)) = lock(&self.0).clone() {
            if read.elapsed() < MAP_FOR {
                return Ok(map);
            }
        }
        let map = Arc::new(SlotMap::read(conn).await?);
        *lock(&self.0) = Some((Arc::clone(&map), Instant::now()));
        Ok(map)
    }

    fn forget(&self) {
        *lock(&self.0) = None;
    }
}

/// Forgets the map when dropped armed: a part sent by master that fails,
/// or whose future is dropped (an operation's timeout), leaves no map to
/// send the next pipeline the same way.
struct ForgetUnlessAnswered<'a>(Option<&'a Masters>);

impl Drop for ForgetUnlessAnswered<'_> {
    fn drop(&mut self) {
        if let Some(masters) = self.0 {
            masters.forget();
        }
    }
}

/// A pipeline (not a transaction) on a cluster.
///
/// redis-rs sends a cluster pipeline whole to the node of its first key's
/// slot and refuses one whose keys lie in several slots ("crossed slots").
/// The store's keys spread over shards, one slot each, and an operation on
/// every shard (an executor's sweep of the job streams, `inspect jobs`)
/// is one pipeline of a command per shard: such a pipeline is split here,
/// a pipeline per master ([`by_master`]; per slot where that fails), sent
/// at once, and the replies put back in the pipeline's order. Commands of
/// one slot keep their order. A command's slot is that of its first argument with a
/// hash tag: every key of the store has one (`{prefix}` or `{prefix#n}`),
/// and in every command the store pipelines its key comes before any
/// payload, which could hold braces.
///
/// redis-rs follows an `ASK` of a pipeline by sending it whole to the node
/// named, after one `ASKING`; but `ASKING` holds for the next command
/// only, so in a slot migration the commands after the first are sent
/// back (`MOVED`), and once the client's retries are spent the pipeline
/// fails having run its first command only: an executor's `XACK` without
/// its `XDEL` left an acknowledged job in the stream for good. Such a
/// pipeline runs again one command at a time, each following its own
/// redirection. (Running its commands twice is nothing new: the client's
/// own retries resend a pipeline whole.)
pub(super) async fn cluster(
    conn: &mut ClusterConnection,
    masters: &Masters,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let slots: Vec<Option<u16>> = pipeline.cmd_iter().map(tagged_slot).collect();
    let first = slots.iter().flatten().next();
    if slots.iter().flatten().any(|slot| Some(slot) != first) {
        return by_master(conn, masters, pipeline, &slots).await;
    }
    one_slot(conn, pipeline, offset, count).await
}

/// A pipeline over several slots (`slots`, by command): a pipeline per
/// master ([`Masters`]), at once, the replies back in the pipeline's
/// order. Commands of one slot keep their order (they go to one master).
/// A master's part that fails (a command redirected, a node down) is sent
/// again [`by_slot`], where the client follows each slot to its new
/// master, and the map is read again next time; its commands may so run
/// twice, as when the client resends a pipeline. Without a map (the read
/// failed), or with a command of no tag or of a slot the map lacks, the
/// whole pipeline goes [`by_slot`].
async fn by_master(
    conn: &mut ClusterConnection,
    masters: &Masters,
    pipeline: &Pipeline,
    slots: &[Option<u16>],
) -> RedisResult<Vec<Value>> {
    let Ok(map) = masters.map(conn).await else {
        return by_slot(conn, pipeline, slots).await;
    };
    let Some(owners) = slots
        .iter()
        .map(|slot| slot.and_then(|slot| map.master_of(slot)))
        .collect::<Option<Vec<usize>>>()
    else {
        return by_slot(conn, pipeline, slots).await;
    };
    let groups = split(pipeline, &owners);
    let sent = groups.iter().map(|(master, places, part)| {
        let mut conn = conn.clone();
        let (host, port) = map.masters[*master].clone();
        async move {
            let route = SingleNodeRoutingInfo::ByAddress { host, port };
            let mut guard = ForgetUnlessAnswered(Some(masters));
            match conn
                .route_pipeline(part.clone(), 0, part.len(), route)
                .await
            {
                Ok(replies) => {
                    guard.0 = None;
                    Ok(replies)
                }
                Err(_) => {
                    drop(guard);
                    let part_slots: Vec<Option<u16>> = places.iter().map(|&at| slots[at]).collect();
                    by_slot(&conn, part, &part_slots).await
                }
            }
        }
    });
    let replies = futures::future::try_join_all(sent).await?;
    Ok(in_order(slots.len(), &groups, replies))
}

/// A pipeline whose keys are all in one slot (see [`cluster`]).
async fn one_slot(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    match conn.req_packed_commands(pipeline, offset, count).await {
        Err(err) if redirected(&err) => {
            let mut replies = Vec::with_capacity(count);
            for cmd in pipeline.cmd_iter() {
                // A reply that is an error the pipeline would have had
                // in its place comes back as a value, as there.
                replies.push(conn.req_packed_command(cmd).await?);
            }
            Ok(replies)
        }
        result => result,
    }
}

/// A pipeline over several slots (`slots`, by command): a pipeline per
/// slot, at once, the replies back in the pipeline's order.
async fn by_slot(
    conn: &ClusterConnection,
    pipeline: &Pipeline,
    slots: &[Option<u16>],
) -> RedisResult<Vec<Value>> {
    let groups = split(pipeline, slots);
    let sent = groups.iter().map(|(_, _, part)| {
        let mut conn = conn.clone();
        async move { one_slot(&mut conn, part, 0, part.len()).await }
    });
    let replies = futures::future::try_join_all(sent).await?;
    Ok(in_order(slots.len(), &groups, replies))
}

/// `pipeline` split by `by` (one per command: its slot, its master): each
/// group's key, its commands' places in the pipeline, and its pipeline, in
/// the order first met; commands keep their order within a group.
fn split<K: PartialEq + Copy>(pipeline: &Pipeline, by: &[K]) -> Vec<(K, Vec<usize>, Pipeline)> {
    let mut groups: Vec<(K, Vec<usize>, Pipeline)> = Vec::new();
    for (at, (cmd, &key)) in pipeline.cmd_iter().zip(by).enumerate() {
        let group = match groups.iter().position(|(k, _, _)| *k == key) {
            Some(group) => group,
            None => {
                groups.push((key, Vec::new(), Pipeline::new()));
                groups.len() - 1
            }
        };
        groups[group].1.push(at);
        groups[group].2.add_command(cmd.clone());
    }
    groups
}

/// The groups' replies (by group, in [`split`]'s order) put back in the
/// pipeline's order.
fn in_order<K>(
    len: usize,
    groups: &[(K, Vec<usize>, Pipeline)],
    replies: Vec<Vec<Value>>,
) -> Vec<Value> {
    let mut ordered: Vec<Value> = vec![Value::Nil; len];
    for ((_, places, _), replies) in groups.iter().zip(replies) {
        for (&at, reply) in places.iter().zip(replies) {
            ordered[at] = reply;
        }
    }
    ordered
}

/// The slot of `cmd`'s first argument that has a hash tag, if any.
fn tagged_slot(cmd: &Cmd) -> Option<u16> {
    cmd.args_iter().skip(1).find_map(|arg| {
        let redis::Arg::Simple(bytes) = arg else {
            return None;
        };
        shards::hash_tag(bytes).map(|_| shards::slot(bytes))
    })
}

/// Whether the cluster sent `err`'s command elsewhere (and the client's
/// retries did not get it served).
fn redirected(err: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        err.kind(),
        ErrorKind::Server(ServerErrorKind::Ask | ServerErrorKind::Moved)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_routed_by_its_first_tagged_argument() {
        let slot = |key: &str| shards::slot(key.as_bytes());
        let mut hset = redis::cmd("HSET");
        hset.arg("{p#3}:v:x")
            .arg("d")
            .arg("{\"json\": {\"braces\": 1}}");
        assert_eq!(tagged_slot(&hset), Some(slot("{p#3}:v:x")));
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg("smache")
            .arg("host-1-ab")
            .arg("COUNT")
            .arg(8);
        read.arg("STREAMS").arg("{p#7}:jobs").arg(">");
        assert_eq!(tagged_slot(&read), Some(slot("{p#7}:jobs")));
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("0123abcd").arg(1).arg("{p}:v:y").arg("{}");
        assert_eq!(tagged_slot(&eval), Some(slot("{p}")));
        // No tag (or an empty one): routed by redis-rs alone.
        assert_eq!(tagged_slot(redis::cmd("TIME").arg("{}")), None);
    }
}
