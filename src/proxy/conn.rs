//! Per-client-connection bookkeeping: requests in flight (for the idle timeout, which
//! [`super::sweeper`] watches), the request to close, and the upstream clients that belong
//! to this connection alone (pools sending a PROXY header).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::task::Context;

use atomic_waker::AtomicWaker;

use crate::upstream::{Pool, UpstreamClient};

/// What the connection's task is asked to do, in increasing order: a later request never
/// undoes an earlier, stronger one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Closing {
    /// Keep serving.
    No = 0,
    /// Finish the request in flight, then close (idle timeout, drain).
    Gracefully = 1,
    /// Close now (the drain deadline passed).
    Now = 2,
}

/// Shared by a connection's task and the requests it carries.
#[derive(Debug)]
pub struct ConnActivity {
    in_flight: AtomicU32,
    started: AtomicU64,
    /// A [`Closing`], set by the connection's sweeper.
    closing: AtomicU8,
    /// Set by the sweeper once the connection has been quiet for a while: it may give
    /// back what it keeps for its next request.
    trim: AtomicBool,
    /// The connection's responses pass through the listener's compression layer (set
    /// when it opens, before its first request; a reload does not take the layer away).
    /// The layer reads `Content-Type` and `Content-Encoding`, so its cache hits keep
    /// their stored head in the map rather than a block of lines that would hide them.
    /// Kept here, in the padding beside `trim`: a field of the request service made
    /// every idle connection hold ~140 bytes more (`benches/allocations`).
    behind_compression: AtomicBool,
    /// The connection's task, woken when `closing` or `trim` is set.
    task: AtomicWaker,
    /// What only pools that send a PROXY header read (under a lock no other request
    /// takes).
    private: Mutex<Private>,
}

#[derive(Debug)]
struct Private {
    /// The client's address and port (the TCP peer or its PROXY header's source) and the
    /// address it reached weir at: what a PROXY header sent upstream says.
    ends: (SocketAddr, SocketAddr),
    /// Clients of pools with `proxy_protocol`: their connections name this connection's
    /// client, so they are this connection's own, and close with it.
    clients: Vec<(Weak<Pool>, Arc<UpstreamClient>)>,
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
            closing: AtomicU8::new(Closing::No as u8),
            trim: AtomicBool::new(false),
            behind_compression: AtomicBool::new(false),
            task: AtomicWaker::new(),
            private: Mutex::new(Private {
                ends: (peer, local),
                clients: Vec::new(),
            }),
        }
    }

    fn private(&self) -> std::sync::MutexGuard<'_, Private> {
        // Nothing panics while holding it; were it poisoned, its data would still be whole.
        self.private
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that the connection is served through the compression layer.
    pub fn set_behind_compression(&self) {
        self.behind_compression.store(true, Relaxed);
    }

    /// Whether the connection is served through the compression layer.
    pub fn is_behind_compression(&self) -> bool {
        self.behind_compression.load(Relaxed)
    }

    /// The client's and weir's ends of the connection.
    pub fn ends(&self) -> (SocketAddr, SocketAddr) {
        self.private().ends
    }

    /// The client is `source`, as the connection's PROXY header says (read after the
    /// connection was accepted and this record made).
    pub fn set_client(&self, source: SocketAddr) {
        self.private().ends.0 = source;
    }

    /// This connection's client for `pool` (built on first use by `build`). Only pools
    /// that send a PROXY header come here; the lock is held for a lookup, never an await.
    /// Shared, not cloned: a request holds it across its attempts, and the client itself
    /// is several hundred bytes of every request's future.
    pub fn private_client(
        &self,
        pool: &Arc<Pool>,
        build: impl FnOnce() -> Option<UpstreamClient>,
    ) -> Option<Arc<UpstreamClient>> {
        let mut private = self.private();
        let clients = &mut private.clients;
        // Pools replaced by a reload are gone: so are their clients.
        clients.retain(|(owner, _)| owner.strong_count() > 0);
        if let Some((_, client)) = clients
            .iter()
            .find(|(owner, _)| std::ptr::eq(owner.as_ptr(), Arc::as_ptr(pool)))
        {
            return Some(Arc::clone(client));
        }
        let client = Arc::new(build()?);
        clients.push((Arc::downgrade(pool), Arc::clone(&client)));
        Some(client)
    }

    pub fn begin_request(self: &Arc<Self>) -> ConnRequestGuard {
        self.started.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        ConnRequestGuard {
            activity: Arc::clone(self),
        }
    }

    /// Requests started on the connection so far.
    pub fn started(&self) -> u64 {
        self.started.load(Relaxed)
    }

    /// Requests in flight on the connection.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// What the connection's task is asked to do; the task (`cx`) is woken when that
    /// changes.
    pub fn closing(&self, cx: &mut Context<'_>) -> Closing {
        self.task.register(cx.waker());
        Closing::from_u8(self.closing.load(Relaxed))
    }

    /// Whether the connection was asked to give back what it keeps for its next request
    /// (the request is then taken). Read after [`ConnActivity::closing`], which
    /// registers the task to wake.
    pub fn take_trim(&self) -> bool {
        self.trim.load(Relaxed) && self.trim.swap(false, Relaxed)
    }

    /// Asks the connection's task to give back what it keeps for its next request, and
    /// wakes it.
    pub fn trim(&self) {
        if !self.trim.swap(true, Relaxed) {
            self.task.wake();
        }
    }

    /// Asks the connection's task to close, and wakes it.
    pub fn close(&self, how: Closing) {
        let before = self.closing.fetch_max(how as u8, Relaxed);
        if before < how as u8 {
            self.task.wake();
        }
    }
}

impl Closing {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Closing::No,
            1 => Closing::Gracefully,
            _ => Closing::Now,
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
