//! Upstream side: endpoints with their live state (health, breaker, latency), pools that
//! group them, and the active health checker.

pub mod breaker;
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
