//! Everything a request needs from the configuration, built whole and swapped whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::headers::HeaderPolicy;
use super::route::{Route, RouteBuild, Router};
use crate::cache::redis::RedisTier;
use crate::cache::{Cache, RouteCache};
use crate::config::Config;
use crate::telemetry::{Tracer, otlp};
use crate::tls::TlsMaterial;
use crate::upstream::Pool;

/// One immutable view of routes, pools and header policy. Requests hold the snapshot they
/// started with, so a swap never changes a request half-way.
#[derive(Debug)]
pub struct Snapshot {
    pub router: Router,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub headers: HeaderPolicy,
    pub access_log: bool,
    pub compression: bool,
    /// Most header fields a request may carry (431 above it).
    pub max_request_headers: usize,
    /// The HTTP cache, kept (with its contents) across reloads that leave its settings.
    pub cache: Option<Arc<Cache>>,
    /// The instance's Redis connection (`[redis]`): the cache's L2 and shared rate limits.
    pub redis: Option<Arc<RedisTier>>,
    /// Headers that carry verified client certificates upstream (any listener's
    /// `tls.client_auth.header`): removed from every client request, so only weir sets them.
    pub client_cert_headers: Vec<http::HeaderName>,
    /// Where spans go when `[trace_export]` is on; kept across reloads that keep its
    /// settings (a changed one starts anew, and the old exporter sends what it has).
    pub tracer: Option<Arc<Tracer>>,
}

impl Snapshot {
    /// Builds from a validated config and its loaded certificates; with `previous` (the
    /// snapshot being replaced by a reload), pools of the same name keep their live state
    /// (see [`Pool::from_config`]).
    pub fn build(config: &Config, tls: &TlsMaterial, previous: Option<&Snapshot>) -> Self {
        let redis = RedisTier::shared(
            config.redis.as_ref(),
            previous.and_then(|p| p.redis.as_ref()),
        );
        let pools: BTreeMap<String, Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, pool)| {
                let old = previous.and_then(|p| p.pools.get(name)).map(Arc::as_ref);
                let client_tls = tls.pool(name).map(Arc::as_ref);
                let built = Pool::from_config(name, pool, client_tls, old);
                (name.clone(), Arc::new(built))
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .enumerate()
            .filter_map(|(index, route)| {
                let build = RouteBuild {
                    index,
                    pools: &pools,
                    redis: redis.as_ref(),
                };
                let (matcher, mut fresh) = Route::new(route, build)?;
                fresh.max_body_bytes = route
                    .max_body_bytes
                    .unwrap_or(config.server.max_request_body_bytes);
                fresh.cache =
                    RouteCache::from_config(&config.cache, route.cache.as_ref()).map(Arc::new);
                if let Some(old) =
                    previous.and_then(|p| p.router.routes().iter().find(|r| r.name == fresh.name))
                {
                    fresh.stats = Arc::clone(&old.stats);
                    if let (Some(mirror), Some(kept)) = (&mut fresh.mirror, &old.mirror)
                        && mirror.pool.name == kept.pool.name
                    {
                        mirror.stats = Arc::clone(&kept.stats);
                    }
                    // Unchanged limits keep their buckets across a reload.
                    if let (Some(new), Some(kept)) = (&route.rate_limit, &old.rate_limit)
                        && kept.fits(new, redis.as_ref())
                    {
                        fresh.rate_limit = Some(Arc::clone(kept));
                    }
                }
                Some((matcher, fresh))
            })
            .collect();
        Self {
            router: Router::new(routes),
            pools,
            headers: HeaderPolicy::from_config(&config.headers),
            access_log: config.server.access_log,
            compression: config.server.compression,
            max_request_headers: config.server.max_request_headers,
            cache: Cache::rebuild(
                &config.cache,
                redis.as_ref(),
                previous.and_then(|p| p.cache.as_ref()),
            ),
            redis,
            client_cert_headers: config
                .listeners
                .iter()
                .filter_map(|l| l.tls.as_ref()?.client_auth.as_ref()?.header.as_ref())
                .filter_map(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            tracer: tracer_for(config, previous),
        }
    }
}

/// The previous tracer when its settings are unchanged, else a new one (with the previous
/// one's counters), or none when export is off.
fn tracer_for(config: &Config, previous: Option<&Snapshot>) -> Option<Arc<Tracer>> {
    let settings = config.trace_export.as_ref()?;
    let old = previous.and_then(|p| p.tracer.as_ref());
    match old {
        Some(old) if old.config == *settings => Some(Arc::clone(old)),
        _ => otlp::start(
            settings,
            old.map(|t| Arc::clone(&t.stats)).unwrap_or_default(),
        ),
    }
}
