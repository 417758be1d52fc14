//! Endpoint selection. Each strategy lives in its own file behind [`Balancer`].

mod round_robin;

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

pub use round_robin::RoundRobin;

use crate::config::Strategy;
use crate::upstream::Endpoint;

/// What a strategy may look at about the request being placed.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
}

/// Chooses the endpoint for one request. Implementations keep their own state in atomics:
/// `pick` runs on every request, concurrently, and must not take a lock shared by the pool.
pub trait Balancer: Send + Sync + Debug {
    /// The strategy's config name, e.g. `round_robin`.
    fn strategy(&self) -> &'static str;

    /// Picks one of `endpoints` that [`Endpoint::is_available`], or `None` when none is.
    fn pick<'e>(
        &self,
        endpoints: &'e [Arc<Endpoint>],
        ctx: &PickContext<'_>,
    ) -> Option<&'e Arc<Endpoint>>;
}

/// Builds the balancer a pool's config asks for.
pub fn for_strategy(strategy: Strategy) -> Box<dyn Balancer> {
    match strategy {
        Strategy::RoundRobin => Box::new(RoundRobin::default()),
    }
}
