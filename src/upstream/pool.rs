//! A pool: the endpoints behind a route, how to pick among them and how to reach them.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::Endpoint;
use crate::balancer::{self, Balancer, PickContext};
use crate::config::{PoolConfig, parse_endpoint_address};
use hyper::body::Incoming;

pub type UpstreamClient = Client<HttpConnector, Incoming>;

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    /// Replaced whole when endpoints are added or removed; readers never block.
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    balancer: Box<dyn Balancer>,
    pub client: UpstreamClient,
    pub response_timeout: Duration,
    pub preserve_host: bool,
}

impl Pool {
    /// Builds a pool from validated config.
    pub fn from_config(name: &str, config: &PoolConfig) -> Self {
        let endpoints = config
            .endpoints
            .iter()
            .filter_map(|e| {
                // Validation has already rejected bad addresses; skip defensively.
                let authority = parse_endpoint_address(&e.address).ok()?;
                Some(Arc::new(Endpoint::new(
                    e.address.clone(),
                    authority,
                    e.weight,
                )))
            })
            .collect();
        Self {
            name: name.to_owned(),
            endpoints: ArcSwap::from_pointee(endpoints),
            balancer: balancer::for_strategy(config.strategy),
            client: build_client(config),
            response_timeout: config.response_timeout,
            preserve_host: config.preserve_host,
        }
    }

    /// The current endpoints (a cheap snapshot).
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<Vec<Arc<Endpoint>>>> {
        self.endpoints.load()
    }

    /// Replaces the endpoint list; requests already placed keep their endpoint.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.endpoints.store(Arc::new(endpoints));
    }

    pub fn strategy(&self) -> &'static str {
        self.balancer.strategy()
    }

    /// Picks an endpoint for a request, `None` when no endpoint is available.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        self.balancer.pick(&endpoints, ctx).cloned()
    }
}

fn build_client(config: &PoolConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    // Upstream URIs are always http://host:port built by weir itself.
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(config.idle_timeout)
        .pool_max_idle_per_host(config.max_idle_per_endpoint)
        // Headers go upstream exactly as weir prepared them.
        .set_host(false)
        .build(connector)
}
