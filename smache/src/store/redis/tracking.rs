//! The tracking connection: the connection the in-process layer's values
//! are read over, with `CLIENT TRACKING ON`, so that Redis pushes an
//! invalidation on it when any client writes a key it read (see
//! `store/layer.rs` for the layer and its races).
//!
//! The connection, its invalidations and its heartbeat live on a runtime
//! of their own (one thread, `smache-tracking`, shared by the instances of
//! the process): invalidations are applied as they arrive, whatever the
//! application's tasks are doing. A `current_thread` runtime whose only
//! task keeps hitting the layer, or a thread blocked in a synchronous
//! computed function, would otherwise never let them run.
//!
//! A supervisor task keeps one connection up: it connects (RESP3), turns
//! tracking on, and only then hands the connection to readers and lets
//! the layer serve. A `PING` every [`HEARTBEAT`] finds a connection that
//! died silently (no reset from the peer); when the connection is lost or
//! stops answering the layer is flushed and serves nothing until the next
//! connection has tracking on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use once_cell::sync::Lazy;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::layer::{Layer, Ticket};
use crate::sync::lock;

/// How often the supervisor checks that the connection answers: the
/// longest a connection lost without a word (a network partition) goes
/// unnoticed is this plus the operation timeout.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(500);

/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long a connection must last for the waits between attempts to
/// start over.
const STABLE_AFTER: Duration = Duration::from_secs(5);

static TRACKING: Lazy<Runtime> = Lazy::new(|| {
    Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("smache-tracking")
        .enable_all()
        .build()
        .expect("smache: cannot start its tracking runtime thread")
});

/// The layer's tracking connection, kept up by a supervisor task while
/// this lives.
pub(crate) struct Tracking {
    layer: Arc<Layer>,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

/// What the supervisor and the readers share.
struct Shared {
    /// The connection readers use, only ever one with tracking on, and its
    /// generation (the push handler of an older one must not suspend the
    /// layer when it goes).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// The last generation handed out.
    generations: AtomicU64,
    /// Wakes the supervisor to give up the current connection (a read
    /// over it failed).
    kick: Notify,
}

impl std::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracking")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl Tracking {
    /// Starts keeping a tracking connection to `client`'s server up for
    /// `layer`; operations on it are bounded by `timeout`.
    pub(crate) fn start(client: &Client, layer: Arc<Layer>, timeout: Duration) -> Tracking {
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
            kick: Notify::new(),
        });
        let supervisor = Supervisor {
            info: resp3(client.get_connection_info()),
            layer: Arc::clone(&layer),
            shared: Arc::clone(&shared),
            timeout,
            stop: stop.clone(),
        };
        TRACKING.spawn(supervisor.run());
        Tracking {
            layer,
            shared,
            _stop: stop.drop_guard(),
        }
    }

    /// The layer this connection keeps coherent.
    pub(crate) fn layer(&self) -> &Layer {
        &self.layer
    }

    /// Returns once every invalidation pushed before now has been applied:
    /// a `PING` on the tracking connection, answered after the pushes
    /// Redis queued before it, which the connection hands to the push
    /// handler, in order, before the reply. Nothing to wait for while no
    /// connection is up: the layer serves nothing then.
    pub(crate) async fn barrier(&self, timeout: Duration) -> crate::Result<()> {
        let Some((_, mut conn)) = lock(&self.shared.current).clone() else {
            return Ok(());
        };
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(timeout, cmd.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            // The connection went: the layer was flushed with it.
            Ok(Err(_)) if !self.layer.is_live() => Ok(()),
            Ok(Err(err)) => Err(crate::Error::Redis(err)),
            Err(_) => Err(crate::Error::Timeout {
                op: "sync_local_cache",
                timeout,
            }),
        }
    }

    /// The connection to read `key` over and the layer's ticket for the
    /// read, taken together (a reconnection between the two would
    /// otherwise let a read over the old connection fill the layer);
    /// `None` while no tracking connection is up.
    pub(crate) fn begin_read(&self, key: &str) -> Option<(MultiplexedConnection, Ticket)> {
        let current = lock(&self.shared.current);
        let (_, conn) = current.as_ref()?;
        Some((conn.clone(), self.layer.ticket(key)))
    }

    /// A read over the tracking connection failed (it is gone, or does
    /// not answer): the supervisor gives it up and opens another.
    pub(crate) fn failed(&self) {
        self.shared.kick.notify_one();
    }
}

/// Whether `err` says Redis could not be reached (rather than that it
/// refused what was asked): the supervisor's connecting, and a read over
/// the tracking connection, which is then given up.
pub(super) fn unreachable(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_timeout()
        || err.is_unrecoverable_error()
}

/// `info` speaking RESP3, the protocol with push messages.
fn resp3(info: &redis::ConnectionInfo) -> redis::ConnectionInfo {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.clone().set_redis_settings(settings)
}

struct Supervisor {
    info: redis::ConnectionInfo,
    layer: Arc<Layer>,
    shared: Arc<Shared>,
    timeout: Duration,
    stop: CancellationToken,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = Duration::from_millis(50);
        let mut warned = false;
        while !self.stop.is_cancelled() {
            match self.connect().await {
                Ok((conn, lost)) => {
                    warned = false;
                    tracing::debug!(
                        prefix = self.layer.prefix(),
                        "smache: in-process layer on (tracking connection up)"
                    );
                    let up = tokio::time::Instant::now();
                    self.watch(conn, &lost).await;
                    self.retire();
                    // A connection that lasted starts the waits over; one
                    // lost at once (killed by a client limit, say) keeps
                    // doubling them, rather than flushing the layer twenty
                    // times a second.
                    if up.elapsed() >= STABLE_AFTER {
                        backoff = Duration::from_millis(50);
                    }
                    tracing::debug!(
                        prefix = self.layer.prefix(),
                        "smache: in-process layer off until the tracking connection is back"
                    );
                }
                // Redis unreachable is the breaker's to report (once per
                // outage); a server that refuses tracking is ours, once.
                Err(err) if unreachable(&err) => {
                    tracing::debug!(prefix = self.layer.prefix(), error = %err, "smache: the in-process layer's tracking connection cannot reach Redis yet");
                }
                Err(err) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(prefix = self.layer.prefix(), error = %err, "smache: Redis refused the in-process layer's tracking connection (RESP3 and CLIENT TRACKING need Redis 6 or later; or an ACL, AUTH or client limit refused it); values are read from Redis until it accepts");
                    }
                }
            }
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.retire();
    }

    /// A new connection with tracking on, published to readers, and what
    /// is notified when it is lost.
    async fn connect(&self) -> redis::RedisResult<(MultiplexedConnection, Arc<Notify>)> {
        let generation = self.shared.generations.fetch_add(1, Ordering::SeqCst) + 1;
        let lost = Arc::new(Notify::new());
        let handler = Invalidations {
            layer: Arc::clone(&self.layer),
            shared: Arc::clone(&self.shared),
            generation,
            lost: Arc::clone(&lost),
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(move |push: PushInfo| {
                handler.handle(push);
                Ok::<(), std::convert::Infallible>(())
            });
        let client = Client::open(self.info.clone())?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .query_async::<()>(&mut conn)
            .await?;
        let mut current = lock(&self.shared.current);
        *current = Some((generation, conn.clone()));
        self.layer.resume();
        Ok((conn, lost))
    }

    /// Returns when the connection is lost, stops answering, or the
    /// tracking is stopped.
    async fn watch(&self, mut conn: MultiplexedConnection, lost: &Notify) {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = lost.notified() => return,
                () = self.shared.kick.notified() => return,
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<()>(&mut conn);
            if !matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Ok(()))) {
                return;
            }
            // Sampled here, recorded by the layer under its prefix.
            self.layer.size();
        }
    }

    /// Withdraws the current connection: readers stop using it and the
    /// layer is flushed and off.
    fn retire(&self) {
        let mut current = lock(&self.shared.current);
        *current = None;
        self.layer.suspend();
    }
}

/// The push handler of one connection: runs in the connection's driver,
/// on the tracking runtime, as each push arrives.
struct Invalidations {
    layer: Arc<Layer>,
    shared: Arc<Shared>,
    generation: u64,
    lost: Arc<Notify>,
}

impl Invalidations {
    fn handle(&self, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        if let Value::BulkString(key) = key {
                            self.layer.invalidate(&String::from_utf8_lossy(key));
                        }
                    }
                }
                // After FLUSHALL / FLUSHDB the server sends a null.
                _ => self.layer.flush(),
            },
            PushKind::Disconnection => {
                // Invalidations may be missed from now on: off at once,
                // before the supervisor even hears of it, if this is the
                // current connection (checked and done under its lock).
                let current = lock(&self.shared.current);
                if current.as_ref().is_some_and(|(g, _)| *g == self.generation) {
                    self.layer.suspend();
                }
                drop(current);
                self.lost.notify_one();
            }
            _ => {}
        }
    }
}
