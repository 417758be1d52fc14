//! Upstream side: endpoints with their live state (health, breaker, latency), pools that
//! group them, the active health checker DNS service discovery, and when to hedge.
//!
//! May import: `config`, `tls` (upstream client settings), `stable_hash`, `header_maps`, `clock`,
//! and `balancer` (a pool owns its strategy); never `proxy`, `cache`, `admin`, `app` or `control`.

pub mod breaker;
pub mod connector;
pub mod discovery;
mod endpoint;
pub mod exchange;
mod h1;
pub mod health;
pub mod hedge;
mod lean;
mod pool;
pub mod request_body;
pub mod signals;

pub use endpoint::{
    Arrival, Endpoint, EndpointPolicy, EndpointState, EndpointStats, InFlightGuard, NewEndpoint,
    Outcome, Transition,
};
pub use exchange::{BodyError, Dispatched, ResponseFuture, SendError, UpstreamBody};
pub use pool::{PickError, Pool, PoolSlot, PoolStats, UpstreamClient, run_stall_sweep};

/// Methods that may be sent twice without changing the result (RFC 9110 §9.2.2): what
/// retries and hedges may repeat.
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
