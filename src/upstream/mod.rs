//! Upstream side: endpoints with their live state, and pools that group them.

mod endpoint;
mod pool;

pub use endpoint::{Endpoint, EndpointState, EndpointStats, InFlightGuard};
pub use pool::{Pool, UpstreamClient};
