//! Single flight: while a value is being computed, other callers for the
//! same key wait for that result instead of computing it again.
//!
//! * In one process, concurrent callers share one computation ([`Flights`]):
//!   the first becomes the pilot, the others follow and receive the stored
//!   bytes when it lands.
//! * Across processes, the pilots of each process meet in Redis: the first
//!   takes a compute lease (`lua/begin.lua`), the others wait for the
//!   `{prefix}:done` notification (the store's `Notifier`) and then read
//!   the value.
//!   The holder renews its lease while it computes (`lua/renew.lua`); the
//!   lease of a holder that died runs out, and one waiter takes over. No
//!   caller is granted the lease over a value stored after its last read:
//!   it reads that value instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::sync::lock;

/// How a computation in flight ended.
#[derive(Debug, Clone)]
pub(crate) enum Landing {
    /// The stored envelope: followers decode it. With the value id an
    /// alias stood for, when the pilot followed one (followers depend on
    /// that value too), and the value version the pilot read or stored,
    /// when known (0: not the stored one, a newer one is).
    Value(Arc<Vec<u8>>, Option<Arc<str>>, Option<u64>),
    /// No value to share (the function failed): followers compute for
    /// themselves.
    Failed,
    /// The pilot was dropped before it landed (its caller gave up, or it
    /// panicked): followers start over.
    Cancelled,
}

/// The computations in flight in this process, by value key. A flight's
/// channel is made by its first follower: a pilot nobody follows (every
/// hit) costs one map entry and nothing else.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Arc<str>, Option<LandingTx>>>,
}

/// Where a pilot announces its landing.
type LandingTx = watch::Sender<Option<Landing>>;

/// Joining a flight: lead it, or follow the one in progress.
pub(crate) enum Join {
    Lead(Pilot),
    Follow(watch::Receiver<Option<Landing>>),
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut map = lock(&self.map);
        if let Some(tx) = map.get_mut(key) {
            let rx = match tx {
                Some(tx) => tx.subscribe(),
                None => {
                    let (sender, rx) = watch::channel(None);
                    *tx = Some(sender);
                    rx
                }
            };
            return Join::Follow(rx);
        }
        // One copy of the key, shared by the map and the pilot.
        let key: Arc<str> = Arc::from(key);
        map.insert(Arc::clone(&key), None);
        Join::Lead(Pilot {
            flights: Arc::clone(self),
            key,
            landed: false,
        })
    }
}

/// The caller computing a value for every caller of this process.
/// Dropping it without [`land`](Pilot::land) (a panic, a cancelled
/// future) lets the followers compute for themselves.
pub(crate) struct Pilot {
    flights: Arc<Flights>,
    key: Arc<str>,
    landed: bool,
}

impl Pilot {
    pub(crate) fn land(self, landing: Landing) {
        self.land_with(|| landing);
    }

    /// [`land`](Self::land), the landing made only if someone follows.
    pub(crate) fn land_with(mut self, landing: impl FnOnce() -> Landing) {
        self.finish(landing);
    }

    fn finish(&mut self, landing: impl FnOnce() -> Landing) {
        if !std::mem::replace(&mut self.landed, true) {
            let followed = lock(&self.flights.map).remove(&*self.key).flatten();
            if let Some(tx) = followed {
                let _ = tx.send(Some(landing()));
            }
        }
    }
}

impl Drop for Pilot {
    fn drop(&mut self) {
        self.finish(|| Landing::Cancelled);
    }
}

/// Waits for the pilot of this process to land.
pub(crate) async fn follow(mut rx: watch::Receiver<Option<Landing>>) -> Landing {
    match rx.wait_for(Option::is_some).await {
        Ok(landing) => landing.clone().unwrap_or(Landing::Cancelled),
        Err(_) => Landing::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_pilots_landing() {
        let flights = Arc::new(Flights::default());
        let Join::Lead(pilot) = flights.join("k") else {
            panic!("first is the pilot")
        };
        let Join::Follow(rx) = flights.join("k") else {
            panic!("second follows")
        };
        let follower = tokio::spawn(follow(rx));
        pilot.land(Landing::Value(Arc::new(b"v".to_vec()), None, Some(1)));
        match follower.await.unwrap() {
            Landing::Value(bytes, _, version) => {
                assert_eq!(bytes.as_slice(), b"v");
                assert_eq!(version, Some(1));
            }
            other => panic!("expected the value, got {other:?}"),
        }
        // Landed: the next caller leads a new flight.
        assert!(matches!(flights.join("k"), Join::Lead(_)));
    }

    #[tokio::test]
    async fn a_dropped_pilot_cancels_its_followers() {
        let flights = Arc::new(Flights::default());
        let Join::Lead(pilot) = flights.join("k") else {
            panic!()
        };
        let Join::Follow(rx) = flights.join("k") else {
            panic!()
        };
        drop(pilot);
        assert!(matches!(follow(rx).await, Landing::Cancelled));
    }
}
