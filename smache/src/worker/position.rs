//! The saved position in the change stream, and what is owed when it is
//! gone: where a watch starts (the saved resume token, else this worker's
//! last position, else now), marking every value stale when changes may
//! have gone unseen, and the resume token's encoding and cluster time.

use bson::doc;
use mongodb::change_stream::event::ResumeToken;
use mongodb::error::ErrorKind;

use super::Worker;
use crate::error::{Error, Result};
use crate::store::{timestamp_key, Owed};

impl Worker<'_> {
    /// The saved position, which this worker now takes for its own.
    pub(super) async fn saved_token(&mut self) -> Result<Option<ResumeToken>> {
        let bytes = self.store.saved_position().await?;
        self.position.clone_from(&bytes);
        if bytes.is_empty() {
            return Ok(None);
        }
        match decode_token(&bytes) {
            Some(token) => Ok(Some(token)),
            None => {
                tracing::error!("smache worker: the saved resume token is corrupt; treating the history as lost: every value will be marked stale");
                self.owe_stale_marking(Owed::Lost).await?;
                self.position.clear();
                Ok(None)
            }
        }
    }

    /// Where to start when Redis holds no position: where this worker last
    /// was, if it watched before (Redis lost its data while we ran: replay
    /// the changes since); else from now, owing a stale-marking of every
    /// value stored so far, since changes made before the stream opens
    /// would never reach them (a first start finds few; a Redis that came
    /// back empty while no worker watched finds the values stored since).
    pub(super) async fn position_when_none_is_saved(&self) -> Result<Option<ResumeToken>> {
        if let Some(token) = &self.last_token {
            tracing::warn!(
                "smache worker: Redis holds no resume token (it restarted empty?); resuming from \
                 this worker's last position"
            );
            return Ok(Some(token.clone()));
        }
        tracing::info!(
            "smache worker: no saved position; watching from now, and marking the values stored \
             before stale"
        );
        self.owe_stale_marking(Owed::BeforeStart).await?;
        Ok(None)
    }

    pub(super) async fn forget_history(&mut self, err: &mongodb::error::Error) -> Result<()> {
        // This worker's own last position is as gone as the saved one.
        self.last_token = None;
        tracing::error!(
            error = %err,
            "smache worker: MongoDB no longer has the change history after the saved resume token \
             (the worker was down longer than the oplog window); changes in that gap cannot be \
             replayed, so every cached value is marked stale and will be recomputed"
        );
        self.owe_stale_marking(Owed::Lost).await
    }

    /// Records that everything must be marked stale, and why, and drops
    /// the token, in one step, so whichever worker watches next does it.
    async fn owe_stale_marking(&self, why: Owed) -> Result<()> {
        self.store.owe_stale_marking(why).await
    }

    /// Marks every value stale, queueing their recomputes.
    pub(super) async fn mark_everything_stale(&self, why: Unseen) -> Result<()> {
        let (values, queued) = self.store.mark_matching_stale("*", false).await?;
        match why {
            // The documented first start: no cause for alarm.
            Unseen::BeforeStart => tracing::info!(
                values,
                queued,
                "smache worker: marked the values stored before it watched stale; their \
                 recomputes are queued"
            ),
            Unseen::Lost | Unseen::Unmappable => {
                tracing::warn!(values, queued, "smache worker: marked every value stale");
            }
        }
        Ok(())
    }
}

/// Why changes may have gone unseen, so that every value is marked stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unseen {
    /// No position was saved: a first start (or Redis came back empty
    /// while no worker watched); the changes before it are unknown.
    BeforeStart,
    /// MongoDB no longer has the history after the saved position, or
    /// the saved position is corrupt.
    Lost,
    /// A change smache cannot map to documents.
    Unmappable,
}

impl From<Owed> for Unseen {
    fn from(owed: Owed) -> Self {
        match owed {
            Owed::BeforeStart => Unseen::BeforeStart,
            Owed::Lost => Unseen::Lost,
        }
    }
}

/// The cluster time a resume token stands for, where it says: MongoDB's
/// tokens (4.2 on) are `{_data: "<hex>"}` whose first byte, 0x82, tags the
/// Timestamp that follows (seconds and increment, big-endian). `None` for
/// a token of another form.
pub(super) fn token_time(token: &ResumeToken) -> Option<u64> {
    let value = bson::to_bson(token).ok()?;
    let data = value.as_document()?.get_str("_data").ok()?;
    let hex = data.get(..18)?;
    if !hex.starts_with("82") {
        return None;
    }
    let seconds = u32::from_str_radix(&hex[2..10], 16).ok()?;
    let increment = u32::from_str_radix(&hex[10..18], 16).ok()?;
    Some(timestamp_key(bson::Timestamp {
        time: seconds,
        increment,
    }))
}

/// The server cannot resume from the token: the history is gone.
pub(super) fn history_lost(err: &mongodb::error::Error) -> bool {
    // 286 ChangeStreamHistoryLost, 280 ChangeStreamFatalError,
    // 136 CappedPositionLost.
    matches!(&*err.kind, ErrorKind::Command(cmd) if matches!(cmd.code, 286 | 280 | 136))
}

pub(super) fn encode_token(token: &ResumeToken) -> Result<Vec<u8>> {
    let value = bson::to_bson(token).map_err(|err| Error::Serialize {
        what: "resume token",
        message: err.to_string(),
    })?;
    bson::to_vec(&doc! { "t": value }).map_err(|err| Error::Serialize {
        what: "resume token",
        message: err.to_string(),
    })
}

fn decode_token(bytes: &[u8]) -> Option<ResumeToken> {
    let doc: bson::Document = bson::from_slice(bytes).ok()?;
    bson::from_bson(doc.get("t")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(data: &str) -> ResumeToken {
        bson::from_bson(bson::bson!({ "_data": data })).unwrap()
    }

    #[test]
    fn resume_tokens_tell_their_cluster_time() {
        // MongoDB's form: 0x82, then seconds and increment, big-endian.
        let mongodb = token("82654A1B2C0000000A2B022C0100296E5A1004");
        assert_eq!(
            token_time(&mongodb),
            Some(timestamp_key(bson::Timestamp {
                time: 0x654A_1B2C,
                increment: 10
            }))
        );
        assert!(
            timestamp_key(bson::Timestamp {
                time: 2,
                increment: 0
            }) > timestamp_key(bson::Timestamp {
                time: 1,
                increment: u32::MAX
            })
        );
        for other in ["", "82", "83654A1B2C0000000A", "82zz4A1B2C0000000A"] {
            assert_eq!(token_time(&token(other)), None, "{other:?}");
        }
    }
}
