//! Upstream side: endpoints with their live state (health, breaker, latency), pools that
//! group them, the active health checker and DNS service discovery.
//!
//! May import: `config`, `tls` (upstream client settings), `stable_hash`, and `balancer`
//! (a pool owns its strategy); never `proxy`, `cache`, `admin`, `app` or `control`.

pub mod breaker;
pub mod connector;
pub mod discovery;
mod endpoint;
pub mod health;
mod pool;
pub mod request_body;
pub mod signals;

pub use endpoint::{
    Arrival, Endpoint, EndpointPolicy, EndpointState, EndpointStats, InFlightGuard, NewEndpoint,
    Outcome, Transition,
};
pub use pool::{PickError, Pool, PoolSlot, PoolStats, UpstreamClient};
