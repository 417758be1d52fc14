//! Per-client-connection bookkeeping: requests in flight, for the idle timeout, and the
//! upstream clients that belong to this connection alone (pools sending a PROXY header).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::upstream::{Pool, UpstreamClient};

/// Shared by a connection's task and the requests it carries.
#[derive(Debug)]
pub struct ConnActivity {
    in_flight: AtomicU32,
    started: AtomicU64,
    /// The client's address and port (the TCP peer or its PROXY header's source) and the
    /// address it reached weir at: what a PROXY header sent upstream says.
    ends: (SocketAddr, SocketAddr),
    /// Clients of pools with `proxy_protocol`: their connections name this connection's
    /// client, so they are this connection's own, and close with it.
    private_clients: Mutex<Vec<(Weak<Pool>, UpstreamClient)>>,
}

impl Default for ConnActivity {
    fn default() -> Self {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Self::new(unspecified, unspecified)
    }
}

impl ConnActivity {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            started: AtomicU64::new(0),
            ends: (peer, local),
            private_clients: Mutex::new(Vec::new()),
        }
    }

    /// The client's and weir's ends of the connection.
    pub fn ends(&self) -> (SocketAddr, SocketAddr) {
        self.ends
    }

    /// This connection's client for `pool` (built on first use by `build`). Only pools
    /// that send a PROXY header come here; the lock is held for a lookup, never an await.
    pub fn private_client(
        &self,
        pool: &Arc<Pool>,
        build: impl FnOnce() -> Option<UpstreamClient>,
    ) -> Option<UpstreamClient> {
        let mut clients = self.private_clients.lock().ok()?;
        // Pools replaced by a reload are gone: so are their clients.
        clients.retain(|(owner, _)| owner.strong_count() > 0);
        if let Some((_, client)) = clients
            .iter()
            .find(|(owner, _)| std::ptr::eq(owner.as_ptr(), Arc::as_ptr(pool)))
        {
            return Some(client.clone());
        }
        let client = build()?;
        clients.push((Arc::downgrade(pool), client.clone()));
        Some(client)
    }

    pub fn begin_request(self: &Arc<Self>) -> ConnRequestGuard {
        self.started.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        ConnRequestGuard {
            activity: Arc::clone(self),
        }
    }

    /// Completes once the connection has had no request in flight and none started for
    /// `timeout` (checked in quarters, so it fires between 1× and 1.25× `timeout`).
    pub async fn idle(&self, timeout: Duration) {
        let tick = (timeout / 4).max(Duration::from_millis(1));
        let mut quiet_ticks = 0;
        let mut last_started = self.started.load(Relaxed);
        loop {
            tokio::time::sleep(tick).await;
            let started = self.started.load(Relaxed);
            if started == last_started && self.in_flight.load(Relaxed) == 0 {
                quiet_ticks += 1;
                if quiet_ticks >= 4 {
                    return;
                }
            } else {
                quiet_ticks = 0;
                last_started = started;
            }
        }
    }
}

#[derive(Debug)]
pub struct ConnRequestGuard {
    activity: Arc<ConnActivity>,
}

impl ConnRequestGuard {
    /// A second hold on the same connection, for work the request starts besides the one
    /// this guard covers (the cache fetching a response again).
    pub fn duplicate(&self) -> Self {
        self.activity.in_flight.fetch_add(1, Relaxed);
        ConnRequestGuard {
            activity: Arc::clone(&self.activity),
        }
    }
}

impl Drop for ConnRequestGuard {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_quiet_period() {
        let activity = Arc::new(ConnActivity::default());
        let start = tokio::time::Instant::now();
        activity.idle(Duration::from_secs(60)).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(60) && waited <= Duration::from_secs(75));
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_request_is_never_idle() {
        let activity = Arc::new(ConnActivity::default());
        let guard = activity.begin_request();
        let idle = tokio::time::timeout(
            Duration::from_secs(600),
            activity.idle(Duration::from_secs(10)),
        );
        assert!(
            idle.await.is_err(),
            "a connection with a request in flight went idle"
        );
        drop(guard);
        let start = tokio::time::Instant::now();
        activity.idle(Duration::from_secs(10)).await;
        assert!(start.elapsed() >= Duration::from_secs(10));
    }
}
