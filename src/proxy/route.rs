//! Route matching: host (exact or `*.suffix`) and path prefix on segment boundaries.

use std::sync::Arc;

use super::ratelimit::RouteLimiter;
use super::stats::RouteStats;
use crate::cache::redis::RedisTier;
use crate::config::RouteConfig;
use crate::upstream::Pool;

#[derive(Debug)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`: exactly one label before it.
    Wildcard(String),
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    host: HostMatch,
    path_prefix: String,
    pub pool: Arc<Pool>,
    pub stats: Arc<RouteStats>,
    pub rate_limit: Option<Arc<RouteLimiter>>,
    /// Caching policy, when the cache is on and the route uses it.
    pub cache: Option<Arc<crate::cache::RouteCache>>,
    /// Position in the config, to find the route again in the same snapshot.
    pub index: usize,
    /// Largest request body in bytes (0 = no limit); more gets 413.
    pub max_body_bytes: u64,
}

impl Route {
    /// `stats` carries the counters of the route of the same name before a reload; `redis`
    /// holds shared rate-limit buckets.
    pub fn new(
        index: usize,
        config: &RouteConfig,
        pool: Arc<Pool>,
        stats: Option<Arc<RouteStats>>,
        redis: Option<&Arc<RedisTier>>,
    ) -> Self {
        let host = match config.host.as_deref() {
            None => HostMatch::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Wildcard(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(h.to_ascii_lowercase()),
            },
        };
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("routes[{index}]"));
        let rate_limit = config
            .rate_limit
            .as_ref()
            .map(|limit| Arc::new(RouteLimiter::new(limit, &name, redis)));
        Self {
            name: name.into(),
            host,
            path_prefix: config.path_prefix.clone(),
            pool,
            stats: stats.unwrap_or_default(),
            rate_limit,
            cache: None,
            index,
            max_body_bytes: config.max_body_bytes.unwrap_or(0),
        }
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(expected) => host.eq_ignore_ascii_case(expected),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !host[..host.len() - suffix.len()].contains('.')
            }
        };
        host_ok && path_has_prefix(path, &self.path_prefix)
    }
}

/// `/api` matches `/api` and `/api/…` but not `/apix`; a prefix ending in `/` matches
/// everything under it.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Routes in file order; the first match wins.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Self {
        Self { routes }
    }

    /// `host` may carry a port; it is ignored.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        let host = strip_port(host);
        self.routes.iter().find(|r| r.matches(host, path))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_aware_prefixes() {
        assert!(path_has_prefix("/api", "/api"));
        assert!(path_has_prefix("/api/users", "/api"));
        assert!(!path_has_prefix("/apix", "/api"));
        assert!(path_has_prefix("/anything", "/"));
        assert!(path_has_prefix("/static/a.css", "/static/"));
        assert!(!path_has_prefix("/static", "/static/"));
    }

    #[test]
    fn ports_are_ignored() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("127.0.0.1:80"), "127.0.0.1");
    }
}
