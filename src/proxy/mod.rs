//! The data plane: listeners, the request service, header rewriting, routing and bodies.
//! It publishes [`ProxyState`] and never reads from the control or admin sides.
//!
//! May import: `balancer`, `cache`, `config`, `upstream`; never `admin`, `app` or `control`.

pub mod access_log;
mod attempt;
pub mod body;
pub mod client_address;
pub mod compress;
pub mod conn;
mod deadlines;
pub mod error;
pub mod grpc;
pub mod headers;
pub mod listener;
pub mod normalize;
pub mod protocol;
pub mod ratelimit;
pub mod retry;
pub mod route;
pub mod service;
pub mod serving;
pub mod snapshot;
pub mod spans;
pub mod stats;
mod sweeper;
pub mod trace;

use arc_swap::ArcSwap;

pub use snapshot::Snapshot;
pub use stats::ProxyStats;

/// What the data plane shares with the rest of weir: the current snapshot (swapped whole on
/// reload) and live counters.
#[derive(Debug)]
pub struct ProxyState {
    pub snapshot: ArcSwap<Snapshot>,
    pub stats: ProxyStats,
}

impl ProxyState {
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            stats: ProxyStats::default(),
        }
    }
}
