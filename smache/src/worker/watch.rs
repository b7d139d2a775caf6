//! Following the change stream while this worker holds the lease:
//! opening it where the saved position says, recording each change (or
//! empty batch) with its jobs and the new position in one script, renewing
//! the lease and checking the saved position every third of the lease
//! (counted from the request that last took or renewed it). The setup
//! (opening the stream, and marking everything stale when that is owed,
//! which on a large instance may outlast the lease) runs beside a future
//! that renews the lease meanwhile, in the same task.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::change_stream::ChangeStream;
use mongodb::options::FullDocumentBeforeChangeType;

use super::change::Change;
use super::lease::{announce, keep_lease};
use super::position::{encode_token, history_lost, token_time};
use super::{Ended, Worker};
use crate::error::Result;
use crate::store::{Changed, RedisStore, Seen};
use crate::sync::lock;

type Stream = ChangeStream<ChangeStreamEvent<bson::Document>>;

/// The longest one step of the graph sweep runs, between two polls of
/// the change stream.
const SWEEP_TIME_PER_STEP: std::time::Duration = std::time::Duration::from_millis(10);

impl Worker<'_> {
    /// Follows the change stream until shutdown, loss of the lease or an
    /// error, holding the lease with fencing token `fence`, taken (or
    /// renewed) by a request sent at `taken`.
    pub(super) async fn watch(
        &mut self,
        shutdown: &(impl Future<Output = ()> + Clone),
        fence: u64,
        taken: Instant,
    ) -> Result<Ended> {
        // Counted from the request that took the lease, not from here:
        // the lease runs out by Redis's clock all the same.
        let renewed = Mutex::new(taken);
        let (store, id, lease) = (self.store, self.id.clone(), self.options.lease);
        let heartbeat = self.presence.record();
        let set_up = self.set_up();
        let renewing = renew_beside(store, &id, lease, fence, &renewed, &heartbeat);
        // The setup is dropped if the lease is lost meanwhile, or on
        // shutdown: each of its steps is safe to stop between (as a crash
        // would), and marking everything stale stays owed until it is done.
        let (mut stream, mut saved) = tokio::select! {
            set_up = set_up => match set_up? {
                Ok(started) => started,
                Err(ended) => return Ok(ended),
            },
            ended = renewing => return ended,
            // Nor need a stopping worker wait for a long marking.
            () = shutdown.clone() => return Ok(Ended::Shutdown),
        };
        let mut renewed = *lock(&renewed);
        loop {
            if futures::FutureExt::now_or_never(shutdown.clone()).is_some() {
                return Ok(Ended::Shutdown);
            }
            if renewed.elapsed() >= self.options.lease / 3 {
                let asked = Instant::now();
                if let Some(ended) = self.keep_lease(fence, asked - renewed).await? {
                    return Ok(ended);
                }
                // An idle stream records nothing: check the saved position
                // here, so a Redis that lost it (or went back to an older
                // one) gets this worker's again without waiting for a change.
                if self.store.saved_position().await? != self.position {
                    return Ok(self.moved());
                }
                // Again with each renewal: a Redis that came back empty
                // lost it while this worker kept (or retook) the lease.
                self.publish_config().await?;
                self.announce().await;
                renewed = asked;
            }
            // Never cancelled mid-poll: a dropped getMore could lose a batch.
            let event = match stream.next_if_any().await {
                Ok(event) => event,
                Err(err) if history_lost(&err) => {
                    self.forget_history(&err).await?;
                    return Ok(Ended::Restart);
                }
                Err(err) => return Err(err.into()),
            };
            let token = stream.resume_token();
            // An empty batch: the stream had nothing more to give.
            let event_was_none = event.is_none();
            let (recorded, restart) = match event {
                Some(event) => {
                    let collection = event.ns.as_ref().and_then(|ns| ns.coll.as_deref());
                    self.presence.saw(collection);
                    let (change, restart) = self.change_of(&event).await?;
                    (self.record(token.as_ref(), Some(&change)).await?, restart)
                }
                // An empty batch still moves the stream's position on.
                None if token != saved => {
                    self.presence.caught_up();
                    (self.record(token.as_ref(), None).await?, false)
                }
                None => {
                    self.presence.caught_up();
                    (Changed::Queued(0), false)
                }
            };
            if event_was_none {
                crate::metrics::worker_caught_up();
            }
            match recorded {
                Changed::Queued(_) if restart => return Ok(Ended::Restart),
                Changed::Queued(_) => {}
                Changed::LeaseLost => return Ok(Ended::LeaseLost),
                // Not recorded: replayed from the saved position.
                Changed::Moved => return Ok(self.moved()),
            }
            self.last_token.clone_from(&token);
            saved = token;
            self.sweep_step().await;
        }
    }

    /// A step of the graph sweep, when one is due (see
    /// [`WorkerOptions::sweep_every`](super::WorkerOptions::sweep_every)):
    /// at most [`SWEEP_CALLS_PER_STEP`](super::SWEEP_CALLS_PER_STEP) calls
    /// and [`SWEEP_TIME_PER_STEP`], so a change waits little for it. Never
    /// fails the watch: a step that fails drops its pass (the next walks
    /// the keyspace again, from masters listed anew) and is counted.
    async fn sweep_step(&mut self) {
        let every = self.options.sweep_every;
        if every.is_zero() || self.sweep.last.elapsed() < every {
            return;
        }
        let mut pass = self
            .sweep
            .pass
            .take()
            .unwrap_or_else(|| self.store.graph_sweep());
        let before = pass.swept.removed;
        let stepped = self
            .store
            .sweep_step(&mut pass, super::SWEEP_CALLS_PER_STEP, SWEEP_TIME_PER_STEP)
            .await;
        self.sweep.last = Instant::now();
        match stepped {
            Ok(done) => {
                crate::metrics::swept(Some(pass.swept.removed - before));
                self.sweep.failing = false;
                if done {
                    tracing::debug!(
                        sets = pass.swept.sets,
                        removed = pass.swept.removed,
                        "smache worker: a pass of the graph sweep ended"
                    );
                } else {
                    self.sweep.pass = Some(pass);
                }
            }
            Err(err) => {
                crate::metrics::swept(None);
                if std::mem::replace(&mut self.sweep.failing, true) {
                    tracing::debug!(error = %err, "smache worker: a step of the graph sweep failed again");
                } else {
                    tracing::warn!(error = %err, "smache worker: a step of the graph sweep failed; its pass starts over");
                }
            }
        }
    }

    /// Opens the stream where the saved position says and saves where it
    /// starts; marks everything stale if that is owed. `Err`: why the
    /// watch ends instead.
    async fn set_up(
        &mut self,
    ) -> Result<std::result::Result<(Stream, Option<ResumeToken>), Ended>> {
        #[cfg(feature = "failpoints")]
        if let Some(delay) = held_in_setup() {
            tokio::time::sleep(delay).await;
        }
        self.publish_config().await?;
        let saved = match self.saved_token().await? {
            Some(token) => Some(token),
            None => self.position_when_none_is_saved().await?,
        };
        let stream = match self.open(saved).await {
            Ok(stream) => stream,
            Err(err) if history_lost(&err) => {
                self.forget_history(&err).await?;
                return Ok(Err(Ended::Restart));
            }
            Err(err) => return Err(err.into()),
        };
        // Save where the stream starts at once: should this worker die
        // before the first event, its successor resumes from here rather
        // than from its own later start.
        let saved = stream.resume_token();
        match self.record(saved.as_ref(), None).await? {
            Changed::Queued(_) => {}
            Changed::LeaseLost => return Ok(Err(Ended::LeaseLost)),
            Changed::Moved => return Ok(Err(self.moved())),
        }
        self.last_token.clone_from(&saved);
        if let Some(why) = self.store.stale_marking_owed().await? {
            // The new stream starts now and its position is saved: mark
            // everything stale, so no change in the lost gap stays unseen.
            // The marker goes only once that is done.
            self.mark_everything_stale(why.into()).await?;
            self.store.stale_marking_done().await?;
        }
        Ok(Ok((stream, saved)))
    }

    async fn open(&self, saved: Option<ResumeToken>) -> mongodb::error::Result<Stream> {
        // The whole database, unfiltered: a collection that gains its first
        // dependant later is covered without restarting the stream. With
        // the documents before each change where the collection keeps them
        // (changeStreamPreAndPostImages): a related document's earlier
        // targets.
        let watch = self
            .db
            .watch()
            .max_await_time(self.options.await_time)
            .full_document_before_change(FullDocumentBeforeChangeType::WhenAvailable);
        let stream = match saved {
            Some(token) => watch.start_after(token).await?,
            None => watch.await?,
        };
        Ok(stream)
    }

    /// Saves the stream's new position `token`, reached after `change`
    /// (none: an empty batch, or where a stream starts), with the jobs of
    /// the change, in one script, if the saved position is still the one
    /// this worker knows.
    async fn record(
        &mut self,
        token: Option<&ResumeToken>,
        change: Option<&Change>,
    ) -> Result<Changed> {
        let bytes = match token {
            Some(token) => encode_token(token)?,
            None => Vec::new(),
        };
        // The token's own time where it says (a post-batch token may be
        // later than the batch's last event), else the event's.
        let time = token
            .and_then(token_time)
            .max(change.and_then(|change| change.time));
        let seen = Seen {
            resume: &bytes,
            time,
            op: change.map_or("", |change| change.op),
            before: change.and_then(|change| change.before.as_deref()),
            tokens: change.map_or(&[], |change| &change.tokens),
        };
        let recorded = self.store.changed(&self.id, &self.position, &seen).await?;
        if let Changed::Queued(queued) = recorded {
            if let Some(change) = change {
                crate::metrics::change_handled(change.time, queued);
            }
            self.presence.saved(time);
            if queued > 0 {
                tracing::debug!(queued, "smache worker: recompute jobs queued");
            }
            if !bytes.is_empty() {
                self.position = bytes;
            }
        }
        Ok(recorded)
    }

    /// The saved position is not the one this worker saved: Redis lost it
    /// (restarted empty, FLUSHALL) or holds an older one (an older
    /// snapshot, without the jobs queued since). Watch again from what is
    /// saved (replaying the gap), else from this worker's last position.
    fn moved(&self) -> Ended {
        tracing::warn!(
            worker = %self.id,
            "smache worker: the saved resume token is not the one this worker saved (Redis lost \
             its data, or came back from an older snapshot); restarting the watch from it"
        );
        Ended::Restart
    }
}

/// Renews the lease (with fencing token `fence`) every third of it,
/// counted from `renewed`, the request that last took or renewed it, and
/// keeps the worker's announcement (`heartbeat`) alive alike, until the
/// lease is lost: the watch's setup runs beside it.
async fn renew_beside(
    store: &RedisStore,
    id: &str,
    lease: Duration,
    fence: u64,
    renewed: &Mutex<Instant>,
    heartbeat: &str,
) -> Result<Ended> {
    loop {
        let last = *lock(renewed);
        tokio::time::sleep_until((last + lease / 3).into()).await;
        let asked = Instant::now();
        if let Some(ended) = keep_lease(store, id, lease, fence, asked - last).await? {
            return Ok(ended);
        }
        *lock(renewed) = asked;
        announce(store, id, heartbeat, lease).await;
    }
}

/// How long a test holds the watch in its setup: the fail point
/// `smache::worker::watch::setup`, configured as `return(<ms>)`.
#[cfg(feature = "failpoints")]
fn held_in_setup() -> Option<Duration> {
    fail::fail_point!("smache::worker::watch::setup", |ms: Option<String>| {
        ms.and_then(|ms| ms.parse().ok()).map(Duration::from_millis)
    });
    None
}
