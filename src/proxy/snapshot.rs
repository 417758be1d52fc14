//! Everything a request needs from the configuration, built whole and swapped whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::headers::HeaderPolicy;
use super::route::{Route, Router};
use crate::config::Config;
use crate::upstream::Pool;

/// One immutable view of routes, pools and header policy. Requests hold the snapshot they
/// started with, so a swap never changes a request half-way.
#[derive(Debug)]
pub struct Snapshot {
    pub router: Router,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub headers: HeaderPolicy,
}

impl Snapshot {
    /// Builds from a validated config.
    pub fn build(config: &Config) -> Self {
        let pools: BTreeMap<String, Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, pool)| (name.clone(), Arc::new(Pool::from_config(name, pool))))
            .collect();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, route)| {
                let pool = pools.get(&route.pool)?;
                Some(Route::new(i, route, Arc::clone(pool)))
            })
            .collect();
        Self {
            router: Router::new(routes),
            pools,
            headers: HeaderPolicy::from_config(&config.headers),
        }
    }
}
