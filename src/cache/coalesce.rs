//! Request coalescing: concurrent misses for one key make one upstream request.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;

#[derive(Default)]
pub struct Flights {
    in_flight: Arc<DashMap<String, watch::Receiver<()>>>,
}

/// The caller's part in a flight.
pub enum Flight {
    /// Fetch, store, then drop the guard to release the waiters.
    Leader(FlightGuard),
    /// Someone else is fetching: wait, then look again.
    Follower(watch::Receiver<()>),
}

/// Held by a flight's leader until the response is stored (or found not storable).
pub struct FlightGuard {
    key: String,
    map: Arc<DashMap<String, watch::Receiver<()>>>,
    done: watch::Sender<()>,
}

impl FlightGuard {
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.map.remove(&self.key);
        // Receivers see the sender close; nothing needs sending.
        let _ = &self.done;
    }
}

impl Flights {
    pub fn join(&self, key: &str) -> Flight {
        match self.in_flight.entry(key.to_owned()) {
            dashmap::Entry::Occupied(flight) => Flight::Follower(flight.get().clone()),
            dashmap::Entry::Vacant(slot) => {
                let (done, waiting) = watch::channel(());
                slot.insert(waiting);
                Flight::Leader(FlightGuard {
                    key: key.to_owned(),
                    map: Arc::clone(&self.in_flight),
                    done,
                })
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

/// Waits until the leader is done or `limit` passes; `true` if the leader finished.
pub async fn wait(mut follower: watch::Receiver<()>, limit: Duration) -> bool {
    // `changed` fails once the sender (the leader's guard) is dropped.
    tokio::time::timeout(limit, async { while follower.changed().await.is_ok() {} })
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_leader_and_bounded_waits() {
        let flights = Flights::default();
        let Flight::Leader(guard) = flights.join("k") else {
            panic!("first caller must lead")
        };
        let Flight::Follower(waiter) = flights.join("k") else {
            panic!("second caller must follow")
        };
        let Flight::Follower(slow) = flights.join("k") else {
            panic!("third caller must follow")
        };
        // A follower that waits past its limit gives up.
        assert!(!wait(slow, Duration::from_millis(50)).await);
        let released = tokio::spawn(wait(waiter, Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(guard);
        assert!(released.await.unwrap());
        assert!(flights.is_empty());
        assert!(matches!(flights.join("k"), Flight::Leader(_)));
    }
}
