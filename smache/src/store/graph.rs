//! Reading the dependency graph around some tokens, for
//! [`Smache::inspect_graph`](crate::Smache::inspect_graph): one read-only
//! script (`lua/graph.lua`) a batch of tokens, that counts every set and
//! reads at most a bounded number of its members.

use std::sync::LazyLock;

use super::redis::RedisStore;
use super::script::StoreScript;
use crate::envelope;
use crate::error::Result;

/// At most this many tokens are read by one script, so that none holds
/// Redis for long however large the batch.
const BATCH: usize = 100;

static GRAPH: LazyLock<StoreScript> = LazyLock::new(|| {
    StoreScript::new(concat!(
        include_str!("../../lua/common.lua"),
        include_str!("../../lua/graph.lua")
    ))
});

/// What a set holds: how many members, and some of them (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Members {
    pub(crate) total: u64,
    pub(crate) some: Vec<String>,
}

/// What was read about one token.
#[derive(Debug)]
pub(crate) struct TokenRead {
    /// The values that depend on it (`r:<token>`).
    pub(crate) dependants: Members,
    /// For a `v:` token, what its key holds.
    pub(crate) value: Option<ValueRead>,
    /// For a document or collection token, the functions with relations
    /// on its collection (`rel:<collection>`).
    pub(crate) relations: u64,
    /// Some of those, each with what the document mapped to.
    pub(crate) mapped: Vec<RelationRead>,
}

/// What a value key holds.
#[derive(Debug)]
pub(crate) enum ValueRead {
    /// Nothing (expired, or dropped).
    Gone,
    /// Another Redis type than a hash.
    Foreign(String),
    /// An alias of the value `target`.
    Alias { target: String },
    /// A value (or a computation in progress, with no value yet).
    Value(Box<ValueFields>),
}

/// The fields of a value's hash that say how it stands (see
/// `lua/common.lua`).
#[derive(Debug, Default)]
pub(crate) struct ValueFields {
    /// `v`: the value version; `None` before the first store.
    pub(crate) version: Option<u64>,
    /// `g`/`w`: the change generation, and the one it was computed at.
    pub(crate) generation: u64,
    pub(crate) computed_from: u64,
    /// `q`: a recompute job is queued.
    pub(crate) queued: bool,
    /// `t`: when it went stale (ms, Redis clock); 0: no recompute coming.
    pub(crate) stale_at_ms: Option<u64>,
    /// `e`: when its time-to-live ends (ms, the writer's clock).
    pub(crate) expires_ms: Option<u64>,
    /// `m`: its function is `mark_stale`.
    pub(crate) mark_stale: bool,
    /// `c`/`cx`: the compute lease's owner and end (ms, Redis clock).
    pub(crate) lease: Option<(String, u64)>,
    /// `k`: the submitted task pending for it.
    pub(crate) task: Option<String>,
    /// `s`: when its last recompute started (ms, Redis clock).
    pub(crate) recompute_started_ms: Option<u64>,
    /// The size of its envelope (`d`), 0 for none.
    pub(crate) size: u64,
    /// From the envelope's header: when it was computed (ms, the
    /// computer's clock), and whether the value is kept in MongoDB; `None`
    /// when not read (no value, or one over 1 MiB).
    pub(crate) header: Option<(u64, bool)>,
    /// Its dependency tokens (`f`).
    pub(crate) dependencies: Members,
    /// Its aliases (`al:<id>`).
    pub(crate) aliases: Members,
}

/// A function with a relation on a document's collection.
#[derive(Debug)]
pub(crate) struct RelationRead {
    /// `<name>#<version>`.
    pub(crate) head: String,
    /// The id keys the document mapped to at its last change smache saw.
    pub(crate) targets: Members,
    /// Per target shown, the id of the function's value of that entity
    /// alone (`<head>:<id key>`), if one is stored.
    pub(crate) values: Vec<Option<String>>,
}

type Bytes = Vec<u8>;
type ValueReply = (
    Bytes,
    Vec<Option<Bytes>>,
    u64,
    u64,
    Vec<Bytes>,
    u64,
    Vec<Bytes>,
);
type RelationReply = (Bytes, u64, Vec<Bytes>, Vec<Option<Bytes>>);
type EntryReply = (u64, Vec<Bytes>, ValueReply, (u64, Vec<RelationReply>));

impl RedisStore {
    /// Reads `tokens` (`v:…`, `e:…`, `c:…`), in order, at most `limit`
    /// members of each set; the Redis clock (ms) and what was read.
    pub(crate) async fn read_graph(
        &self,
        tokens: &[String],
        limit: usize,
    ) -> Result<(u64, Vec<TokenRead>)> {
        let conn = self.connection().await?;
        let mut now_ms = 0;
        let mut out = Vec::with_capacity(tokens.len());
        for batch in tokens.chunks(BATCH) {
            // Each shard holds its part of every set (and each value is
            // in one): every shard read at once, then merged.
            let reads = self.shards.bases().map(|base| {
                let mut conn = conn.clone();
                let mut invocation = GRAPH.key(super::keys::jobs(base));
                invocation.arg(base).arg(limit).arg(batch);
                async move {
                    invocation
                        .invoke_async::<(u64, Vec<EntryReply>)>(&mut conn)
                        .await
                }
            });
            let mut shards = self
                .bounded("graph", futures::future::try_join_all(reads))
                .await?
                .into_iter()
                .map(|(now, entries)| {
                    now_ms = now_ms.max(now);
                    entries.into_iter().map(token_read)
                })
                .collect::<Vec<_>>();
            for token in batch {
                let mut reads = shards.iter_mut().filter_map(Iterator::next);
                let home = token.strip_prefix("v:").map(|id| self.shards.of(id));
                out.extend(merge(&mut reads, home, limit));
            }
        }
        if self.shards.count() > 1 && out.len() == tokens.len() {
            self.read_mappings(&conn, tokens, &mut out, limit).await?;
        }
        Ok((now_ms, out))
    }

    /// On several shards a related document's mapping is recorded in the
    /// document's own shard (the shard of its token, see
    /// `executor::relation`), and each value it maps to in its own: the
    /// mappings the shards' scripts read (each its own record, and its
    /// own values) are replaced by the document's record and the values
    /// found in theirs, read in two pipelines.
    async fn read_mappings(
        &self,
        conn: &super::redis::Conn,
        tokens: &[String],
        out: &mut [TokenRead],
        limit: usize,
    ) -> Result<()> {
        // (token index, relation index, the record's key)
        let mut records = Vec::new();
        for (at, (token, read)) in tokens.iter().zip(out.iter()).enumerate() {
            let Some(source) = token.strip_prefix("e:") else {
                continue;
            };
            let base = self.shards.base_of(token);
            for (index, relation) in read.mapped.iter().enumerate() {
                records.push((
                    at,
                    index,
                    super::keys::mapping(base, &relation.head, source),
                ));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut conn = conn.clone();
        // How many targets each record holds, and at most `limit` of them
        // (a document may map to many).
        let mut pipe = redis::pipe();
        for (.., key) in &records {
            pipe.cmd("SCARD")
                .arg(key)
                .cmd("SRANDMEMBER")
                .arg(key)
                .arg(limit);
        }
        let replies: Vec<redis::Value> = self.bounded("graph", pipe.query_async(&mut conn)).await?;
        let mut pipe = redis::pipe();
        let mut shown = Vec::with_capacity(records.len());
        let mut replies = replies.into_iter();
        for (at, index, _) in &records {
            let total: u64 = replies
                .next()
                .and_then(|reply| redis::from_redis_value(reply).ok())
                .unwrap_or(0);
            let mut targets: Vec<String> = replies
                .next()
                .and_then(|reply| redis::from_redis_value(reply).ok())
                .unwrap_or_default();
            targets.sort();
            let head = &out[*at].mapped[*index].head;
            for target in &targets {
                let id = format!("{head}:{target}");
                pipe.cmd("EXISTS")
                    .arg(super::keys::value(self.shards.base_of(&id), &id));
            }
            shown.push((total, targets));
        }
        let exists: Vec<bool> = if shown.iter().all(|(_, targets)| targets.is_empty()) {
            Vec::new()
        } else {
            self.bounded("graph", pipe.query_async(&mut conn)).await?
        };
        let mut exists = exists.into_iter();
        for ((at, index, _), (total, targets)) in records.iter().zip(shown) {
            let relation = &mut out[*at].mapped[*index];
            relation.values = targets
                .iter()
                .map(|target| {
                    let id = format!("{}:{target}", relation.head);
                    exists.next().unwrap_or(false).then_some(id)
                })
                .collect();
            relation.targets = Members {
                total,
                some: targets,
            };
        }
        Ok(())
    }
}

/// What the shards read of one token, as one read: the sets' parts added
/// up (at most `limit` members shown), the value from `home`, its shard,
/// the relations and their mappings (recorded in each shard that holds a
/// value of the function) by function.
fn merge(
    reads: &mut dyn Iterator<Item = TokenRead>,
    home: Option<usize>,
    limit: usize,
) -> Option<TokenRead> {
    let mut merged: Option<TokenRead> = None;
    for (shard, read) in reads.enumerate() {
        let Some(into) = merged.as_mut() else {
            merged = Some(read);
            if home.is_some_and(|home| home != shard) {
                if let Some(into) = merged.as_mut() {
                    into.value = None;
                }
            }
            continue;
        };
        join(&mut into.dependants, read.dependants, limit);
        if home == Some(shard) {
            into.value = read.value;
        }
        into.relations = into.relations.max(read.relations);
        for relation in read.mapped {
            match into.mapped.iter_mut().find(|r| r.head == relation.head) {
                None => into.mapped.push(relation),
                Some(known) => {
                    let stored: Vec<(String, Option<String>)> = known
                        .targets
                        .some
                        .drain(..)
                        .zip(known.values.drain(..))
                        .chain(relation.targets.some.into_iter().zip(relation.values))
                        .collect();
                    known.targets.total = known.targets.total.max(relation.targets.total);
                    let mut by_target = std::collections::BTreeMap::new();
                    for (target, value) in stored {
                        let slot = by_target.entry(target).or_insert(None);
                        if value.is_some() {
                            *slot = value;
                        }
                    }
                    for (target, value) in by_target.into_iter().take(limit) {
                        known.targets.some.push(target);
                        known.values.push(value);
                    }
                }
            }
        }
    }
    if let Some(into) = merged.as_mut() {
        into.mapped.sort_by(|a, b| a.head.cmp(&b.head));
        into.mapped.truncate(limit);
        into.relations = into.relations.max(into.mapped.len() as u64);
    }
    merged
}

/// Adds `more`, another shard's part of a set, to `into`.
fn join(into: &mut Members, more: Members, limit: usize) {
    into.total += more.total;
    into.some.extend(more.some);
    into.some.sort();
    into.some.dedup();
    into.some.truncate(limit);
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn members(total: u64, some: Vec<Bytes>) -> Members {
    Members {
        total,
        some: some.iter().map(|m| text(m)).collect(),
    }
}

fn token_read((total, some, value, (relations, mapped)): EntryReply) -> TokenRead {
    let (kind, ..) = &value;
    TokenRead {
        dependants: members(total, some),
        value: (!kind.is_empty()).then(|| value_read(value)),
        relations,
        mapped: mapped
            .into_iter()
            .map(|(head, total, targets, values)| RelationRead {
                head: text(&head),
                targets: members(total, targets),
                values: values.iter().map(|v| v.as_deref().map(text)).collect(),
            })
            .collect(),
    }
}

fn value_read(reply: ValueReply) -> ValueRead {
    let (kind, fields, size, deps, some_deps, aliases, some_aliases) = reply;
    match kind.as_slice() {
        b"hash" => {}
        b"none" => return ValueRead::Gone,
        other => return ValueRead::Foreign(text(other)),
    }
    let field = |i: usize| fields.get(i).cloned().flatten();
    let number = |i: usize| field(i).and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok());
    if let Some(target) = field(10) {
        return ValueRead::Alias {
            target: text(&target),
        };
    }
    ValueRead::Value(Box::new(ValueFields {
        version: number(0),
        generation: number(1).unwrap_or(0),
        computed_from: number(2).unwrap_or(0),
        queued: field(3).is_some(),
        stale_at_ms: number(4),
        expires_ms: number(5),
        mark_stale: field(6).as_deref() == Some(b"1"),
        lease: field(7).map(|owner| (text(&owner), number(8).unwrap_or(0))),
        task: field(9).map(|task| text(&task)),
        recompute_started_ms: number(11),
        size,
        header: field(12).and_then(|header| {
            envelope::decode(&header)
                .ok()
                .map(|e| (e.computed_at_ms, e.reference))
        }),
        dependencies: members(deps, some_deps),
        aliases: members(aliases, some_aliases),
    }))
}
