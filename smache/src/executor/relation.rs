//! The relation handler: a document of a collection named in some
//! `relations(...)` changed; map it, as it is now and as it was, to the
//! entities whose values it concerns, and refresh those.
//!
//! One job per change answers for every shard (`all`): the document is
//! read and mapped once, its mapping recorded in the job's shard (the
//! document's own), and the values concerned refreshed in every shard
//! that holds values of the function. The steps, each idempotent, in an
//! order where a crash between two costs a refresh again, never one
//! missed:
//!
//! 1. the functions with relations on the collection, in every shard;
//! 2. the document, as it is now (MongoDB), mapped; the recorded mapping;
//! 3. if what it mapped to before is unknown (no pre-image, not an
//!    insert, nothing recorded): every value of the function marked stale;
//! 4. the values of the targets, now and before, signalled in every other
//!    shard holding values of the function;
//! 5. in the job's shard, the same, and the record replaced by the
//!    current mapping (`lua/relate.lua`);
//! 6. the job acknowledged.
//!
//! A job from a worker older than one job per change answers for its own
//! shard alone (one such job was queued in each shard), and counts the
//! targets recorded in the document's shard as well as its own: a worker
//! of this version may have recorded the mapping there (a rollback, or an
//! older standby taking the lease during a rolling deploy).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use super::Executor;
use crate::entity::EntityId;
use crate::error::Result;
use crate::registry;
use crate::store::{EntryRef, Related, StreamJob};

impl Executor {
    /// A related document changed: for each function with a relation on
    /// its collection, map it (as it is now, and as it was before the
    /// change when that is known) to entity ids and refresh their values.
    pub(super) async fn relate(&self, entry: &EntryRef, change: &RelatedChange<'_>) {
        let RelatedChange {
            collection, doc, ..
        } = *change;
        let Some(id) = EntityId::from_key(doc) else {
            tracing::warn!(
                entry = %entry,
                doc,
                "smache executor: malformed relation job; dead-lettered"
            );
            return self
                .give_up(entry, "malformed document id in a relation job")
                .await;
        };
        let before = match change.before.map(bson::from_slice::<bson::Document>) {
            Some(Ok(before)) => Some(before),
            Some(Err(err)) => {
                // Mapped as if MongoDB had given no pre-image.
                tracing::warn!(entry = %entry, error = %err, "smache executor: a relation job's pre-image does not decode; ignored");
                None
            }
            None => None,
        };
        let scope: Vec<usize> = if change.all {
            (0..self.store.shard_count()).collect()
        } else {
            vec![entry.shard]
        };
        // The shards holding values of each function with relations on
        // the collection.
        let mut holders: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        match self.store.related_functions(&scope, collection).await {
            Ok(by_shard) => {
                for (shard, heads) in by_shard {
                    for head in heads {
                        holders.entry(head).or_default().push(shard);
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "smache executor: redis unavailable; job left for retry");
                return;
            }
        }
        let Some(db) = self.smache.mongodb() else {
            tracing::error!(
                "smache executor: relation jobs need a MongoDB database (SmacheBuilder::mongodb)"
            );
            return;
        };
        let document = match db
            .collection::<bson::Document>(collection)
            .find_one(bson::doc! { "_id": id.to_bson() })
            .await
        {
            Ok(document) => document,
            Err(err) => {
                tracing::warn!(error = %err, "smache executor: mongodb unavailable; job left for retry");
                return;
            }
        };
        let source = format!("{collection}:{doc}");
        // Where one job per change records the mapping: the document's
        // own shard. A job of one shard (from an older worker) reads that
        // record too, should a newer worker have written it.
        let document_shard = self.store.shard_of(&format!("e:{source}"));
        // Every function concerned must be known here, or the job is left
        // for an executor that has them all (a deploy in progress), until
        // those missing have had no live executor for the orphan timeout:
        // then it is applied for the others and dead-lettered.
        let mut registrations = Vec::with_capacity(holders.len());
        let mut missing = Vec::new();
        for head in holders.keys() {
            match registry::find(head) {
                Some(registration) => registrations.push((head, registration)),
                None => missing.push(head),
            }
        }
        let mut given_up = Vec::new();
        for head in missing {
            let what = format!("function {head}");
            match self.absence(entry, head).await {
                Ok(absence) if absence.due() => {
                    given_up.push(absence.reason(&what, self.orphan_timeout));
                }
                Ok(absence) => {
                    tracing::warn!(function = head, "smache executor: a relation of a function this process does not have; leaving the job for another executor");
                    let again = StreamJob::Related {
                        collection: collection.to_owned(),
                        doc: doc.to_owned(),
                        op: change.op.map(str::to_owned),
                        before: change.before.map(<[u8]>::to_vec),
                        all: change.all,
                    };
                    return self.recheck(entry, again, &absence);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "smache executor: redis unavailable; job left for retry");
                    return;
                }
            }
        }
        let applied = registrations.len();
        for (head, registration) in registrations {
            let shards = &holders[head];
            for (index, relation) in registration
                .relations
                .iter()
                .filter(|r| r.source == collection)
                .enumerate()
            {
                // Each relation of the function on this collection keeps
                // its own record (`buyer` and `seller` of one order map to
                // different users): the first under the document's name,
                // as before there could be several, the others numbered.
                let recorded_as = match index {
                    0 => None,
                    n => Some(format!("{source}#{n}")),
                };
                let Some(now) = map_related(relation, head, document.as_ref()) else {
                    continue;
                };
                // What it mapped to before: its pre-image's targets; none
                // for an insert; else unknown (the recorded mapping, if
                // any, stands in).
                let earlier = match &before {
                    Some(before) => map_related(relation, head, Some(before)),
                    None if change.op == Some("i") => Some(Vec::new()),
                    None => None,
                };
                let related = Related {
                    collection,
                    source: recorded_as.as_deref().unwrap_or(&source),
                    target: relation.target,
                    gone: document.is_none(),
                    now: &now,
                    before: earlier.as_deref(),
                };
                if let Err(err) = self
                    .refresh_related(entry.shard, document_shard, shards, head, &related)
                    .await
                {
                    tracing::warn!(error = %err, "smache executor: redis unavailable; job left for retry");
                    return;
                }
            }
        }
        if given_up.is_empty() {
            return self.ack(entry).await;
        }
        let mut reason = given_up.join("; ");
        if applied > 0 {
            reason.push_str("; applied for the other functions");
        }
        tracing::error!(
            entry = %entry,
            reason,
            "smache executor: no live executor can run a relation job; dead-lettered"
        );
        self.give_up(entry, &reason).await;
    }

    /// Steps 2–5 of the module's protocol for one function `head` whose
    /// values lie in `shards`, the job's shard being `home` and the
    /// document's `document_shard` (the same, but for a job of one shard
    /// from an older worker).
    async fn refresh_related(
        &self,
        home: usize,
        document_shard: usize,
        shards: &[usize],
        head: &str,
        related: &Related<'_>,
    ) -> Result<()> {
        let mut recorded = self
            .store
            .recorded_targets(home, head, related.source)
            .await?;
        if document_shard != home {
            for target in self
                .store
                .recorded_targets(document_shard, head, related.source)
                .await?
            {
                if !recorded.contains(&target) {
                    recorded.push(target);
                }
            }
        }
        let unknown = recorded.is_empty() && related.before.is_none();
        if unknown {
            self.stale_function(shards, head, related).await?;
        }
        // What it mapped to before, as far as known: the pre-image's
        // targets and the recorded ones (the record in `home`, read again
        // by its script, may have changed since: it adds what it holds).
        let mut before: Vec<String> = related.before.unwrap_or_default().to_vec();
        for target in recorded {
            if !before.contains(&target) {
                before.push(target);
            }
        }
        let related = Related {
            before: Some(&before),
            ..*related
        };
        let others: Vec<usize> = shards.iter().copied().filter(|&s| s != home).collect();
        if !others.is_empty() {
            self.store.relate_in(&others, head, &related).await?;
        }
        fail::fail_point!("smache::executor::relation::before_record");
        self.store.relate(home, head, &related, true).await?;
        fail::fail_point!("smache::executor::relation::after_record");
        Ok(())
    }

    /// Marks every value of one function in `shards` stale, with no
    /// recompute coming: each is recomputed by its next reader (a
    /// recompute of every value of a function on each such change could
    /// swamp the executors).
    async fn stale_function(
        &self,
        shards: &[usize],
        head: &str,
        related: &Related<'_>,
    ) -> Result<()> {
        unknown_earlier_targets(head, related.collection, related.source);
        self.store.mark_function_stale(shards, head).await?;
        Ok(())
    }
}

/// A related document's change, as a relation job gives it.
#[derive(Debug, Clone, Copy)]
pub(super) struct RelatedChange<'a> {
    /// The document's collection.
    pub(super) collection: &'a str,
    /// The document's id key.
    pub(super) doc: &'a str,
    /// The kind of change, when the worker said.
    pub(super) op: Option<&'a str>,
    /// The document before the change (BSON), when MongoDB gave it.
    pub(super) before: Option<&'a [u8]>,
    /// The job answers for every shard, else for its own only.
    pub(super) all: bool,
}

/// The id keys a relation maps a version of a related document to (none
/// for no document); `None` if its mapper fails (logged).
fn map_related(
    relation: &registry::Relation,
    head: &str,
    document: Option<&bson::Document>,
) -> Option<Vec<String>> {
    let Some(document) = document else {
        return Some(Vec::new());
    };
    match (relation.map)(document.clone()) {
        Ok(ids) => Some(
            ids.iter()
                .map(|id| {
                    let mut key = String::new();
                    id.write_key(&mut key);
                    key
                })
                .collect(),
        ),
        Err(err) => {
            tracing::warn!(error = %err, function = head, "smache executor: a relation mapper failed; skipped");
            None
        }
    }
}

/// Says, once per function and collection in this process, that a related
/// document changed whose earlier targets are unknown, and what that costs.
fn unknown_earlier_targets(head: &str, collection: &str, source: &str) {
    static WARNED: Mutex<Option<HashSet<(String, String)>>> = Mutex::new(None);
    let first = crate::sync::lock(&WARNED)
        .get_or_insert_with(HashSet::new)
        .insert((head.to_owned(), collection.to_owned()));
    if first {
        tracing::warn!(function = head, collection, source, "smache executor: a related document changed that smache had not seen change before, and MongoDB gave no pre-image: what it concerned before is unknown, so every value of the function is marked stale (recomputed when next read). Enable changeStreamPreAndPostImages on the collection to refresh only the values concerned");
    } else {
        tracing::debug!(function = head, source, "smache executor: a related document's earlier targets are unknown; every value of the function marked stale");
    }
}
