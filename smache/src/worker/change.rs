//! What a change event touches: the dependency tokens of the document
//! (and of its collection), every document token of a collection that is
//! dropped or renamed, and what `change.lua` is told besides.

use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};

use super::position::Unseen;
use super::Worker;
use crate::entity::EntityId;
use crate::error::{Error, Result};
use crate::store::{keys, timestamp_key};

impl Worker<'_> {
    /// What a change event tells the scripts, and whether the stream must
    /// be reopened after it (it was invalidated).
    pub(super) async fn change_of(
        &self,
        event: &ChangeStreamEvent<bson::Document>,
    ) -> Result<(Change, bool)> {
        let (tokens, restart) = self.tokens_of(event).await?;
        let op = match event.operation_type {
            OperationType::Insert => "i",
            OperationType::Update => "u",
            OperationType::Replace => "r",
            OperationType::Delete => "d",
            _ => "",
        };
        let before = match &event.full_document_before_change {
            Some(document) if !op.is_empty() => {
                Some(bson::to_vec(document).map_err(|err| Error::Serialize {
                    what: "pre-image",
                    message: err.to_string(),
                })?)
            }
            _ => None,
        };
        let change = Change {
            tokens,
            op,
            before,
            time: event.cluster_time.map(timestamp_key),
        };
        Ok((change, restart))
    }

    /// The dependency tokens a change touches, and whether the stream must
    /// be reopened after it (it was invalidated).
    async fn tokens_of(
        &self,
        event: &ChangeStreamEvent<bson::Document>,
    ) -> Result<(Vec<String>, bool)> {
        let coll = event.ns.as_ref().and_then(|ns| ns.coll.clone());
        match (&event.operation_type, coll) {
            (
                OperationType::Insert
                | OperationType::Update
                | OperationType::Replace
                | OperationType::Delete,
                Some(coll),
            ) => {
                let mut tokens = vec![keys::collection_token(&coll)];
                let id = event
                    .document_key
                    .as_ref()
                    .and_then(|key| key.get("_id"))
                    .and_then(EntityId::from_bson);
                if let Some(id) = id {
                    tokens.push(id.token(&coll));
                }
                Ok((tokens, false))
            }
            (OperationType::Drop | OperationType::Rename, Some(coll)) => {
                tracing::warn!(collection = coll, "smache worker: a collection was dropped or renamed; refreshing everything that depends on it");
                Ok((self.collection_tokens(&coll).await?, false))
            }
            (OperationType::Invalidate, _) => Ok((Vec::new(), true)),
            (other, coll) => {
                tracing::warn!(operation = ?other, collection = ?coll, "smache worker: a change smache cannot map to documents; marking every value stale");
                self.mark_everything_stale(Unseen::Unmappable).await?;
                Ok((Vec::new(), false))
            }
        }
    }

    /// Every token of a collection: the collection itself and each of its
    /// documents that some value depends on.
    async fn collection_tokens(&self, coll: &str) -> Result<Vec<String>> {
        let mut tokens = vec![keys::collection_token(coll)];
        tokens.extend(self.store.dependant_documents(coll).await?);
        Ok(tokens)
    }
}

/// What one change event means to smache.
pub(super) struct Change {
    /// The dependency tokens it touches.
    pub(super) tokens: Vec<String>,
    /// Its kind, as `change.lua` takes it.
    pub(super) op: &'static str,
    /// The document before the change (BSON), when MongoDB gave it.
    pub(super) before: Option<Vec<u8>>,
    /// Its cluster time (`seconds << 32 | increment`).
    pub(super) time: Option<u64>,
}
