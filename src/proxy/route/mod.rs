//! Routes: what they match (host, exact or `*.suffix`, and path prefix on segment
//! boundaries first, then the rest in [`conditions`]), who may use them (client address
//! allow and deny lists), and what they do with a request ([`Action`]: forward to a
//! [`split::Split`] of pools, redirect, or answer), rewrite ([`rewrite`]), copy
//! ([`mirror`]) and allow across origins ([`cors`]).

pub mod answer;
pub mod conditions;
pub mod cors;
pub mod mirror;
pub mod rewrite;
pub mod split;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::ratelimit::RouteLimiter;
use super::stats::RouteStats;
use crate::cache::redis::RedisTier;
use crate::config::{HashKey, IpBlock, RouteConfig};
use crate::upstream::Pool;
use answer::{FixedResponse, Redirect};
use conditions::Conditions;
pub use conditions::RouteRequest;
use cors::Cors;
use rewrite::{HeaderRules, PathRewrite};
use split::Split;

#[derive(Debug)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com` stored as `.example.com`: exactly one label before it.
    Wildcard(String),
}

/// What selects a route: host and prefix first (the common case, and all most routes
/// have), then the rest. Kept apart from the routes, in a compact list of its own, so that
/// the search over many routes touches only these.
#[derive(Debug)]
pub struct Matcher {
    host: HostMatch,
    path_prefix: String,
    /// Checked after host and prefix; usually none.
    conditions: Conditions,
}

impl Matcher {
    fn new(config: &RouteConfig) -> Self {
        let host = match config.host.as_deref() {
            None => HostMatch::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => HostMatch::Wildcard(suffix.to_ascii_lowercase()),
                None => HostMatch::Exact(h.to_ascii_lowercase()),
            },
        };
        Self {
            host,
            path_prefix: config.path_prefix.clone(),
            conditions: Conditions::from_config(config),
        }
    }

    /// `host` without its port; `path` is `request.path`, passed apart so that the search
    /// keeps it in a register.
    #[inline]
    fn matches(&self, host: &str, path: &str, request: &RouteRequest<'_>) -> bool {
        self.host_matches(host)
            && path_has_prefix(path, &self.path_prefix)
            && self.conditions.hold(request)
    }

    #[inline]
    fn host_matches(&self, host: &str) -> bool {
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(expected) => host.eq_ignore_ascii_case(expected),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !host[..host.len() - suffix.len()].contains('.')
            }
        }
    }
}

/// What a route does with a request that passed its checks.
#[derive(Debug)]
pub enum Action {
    Forward(Split),
    Redirect(Redirect),
    Respond(FixedResponse),
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub action: Action,
    pub rewrite: Option<PathRewrite>,
    pub request_headers: Option<HeaderRules>,
    pub response_headers: Option<HeaderRules>,
    pub cors: Option<Cors>,
    /// Copies a share of the requests to another pool.
    pub mirror: Option<mirror::Mirror>,
    pub stats: Arc<RouteStats>,
    pub rate_limit: Option<Arc<RouteLimiter>>,
    /// Caching policy, when the cache is on and the route uses it.
    pub cache: Option<Arc<crate::cache::RouteCache>>,
    /// Position in the config, to find the route again in the same snapshot.
    pub index: usize,
    /// Largest request body in bytes (0 = no limit); more gets 413.
    pub max_body_bytes: u64,
    /// Which client addresses may use the route.
    pub access: ClientAccess,
}

/// A route's `allow` and `deny` blocks: deny wins, then an empty allow list allows all.
#[derive(Debug, Default)]
pub struct ClientAccess {
    allow: Vec<IpBlock>,
    deny: Vec<IpBlock>,
}

impl ClientAccess {
    pub fn new(allow: &[IpBlock], deny: &[IpBlock]) -> Self {
        Self {
            allow: allow.to_vec(),
            deny: deny.to_vec(),
        }
    }

    /// Whether a client at `ip` may use the route (an IPv4-mapped IPv6 address is judged
    /// as its IPv4 one).
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|block| block.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|block| block.contains(ip)))
    }
}

/// What a route is built from besides its own config.
#[derive(Clone, Copy)]
pub struct RouteBuild<'a> {
    pub index: usize,
    pub pools: &'a BTreeMap<String, Arc<Pool>>,
    /// Holds shared rate-limit buckets.
    pub redis: Option<&'a Arc<RedisTier>>,
}

impl Route {
    /// The route and what selects it; `None` when the config names a pool that does not
    /// exist (validation prevents it).
    pub fn new(config: &RouteConfig, build: RouteBuild<'_>) -> Option<(Matcher, Self)> {
        let RouteBuild {
            index,
            pools,
            redis,
        } = build;
        let name = config.display_name(index);
        let action = if let Some(redirect) = &config.redirect {
            Action::Redirect(Redirect::new(redirect, &config.path_prefix))
        } else if let Some(respond) = &config.respond {
            Action::Respond(FixedResponse::new(respond))
        } else {
            let sides = config
                .split()
                .into_iter()
                .map(|(pool, weight)| Some((Arc::clone(pools.get(pool)?), weight)))
                .collect::<Option<Vec<_>>>()?;
            if sides.is_empty() {
                return None;
            }
            let sticky = config
                .sticky
                .as_deref()
                .and_then(|k| HashKey::parse(k).ok());
            Action::Forward(Split::new(sides, sticky))
        };
        let rate_limit = config
            .rate_limit
            .as_ref()
            .map(|limit| Arc::new(RouteLimiter::new(limit, &name, redis)));
        let route = Self {
            name: name.into(),
            action,
            rewrite: config
                .rewrite
                .as_ref()
                .and_then(|r| PathRewrite::new(r, &config.path_prefix)),
            request_headers: config.request_headers.as_ref().map(HeaderRules::new),
            response_headers: config.response_headers.as_ref().map(HeaderRules::new),
            cors: config.cors.as_ref().map(Cors::new),
            mirror: match &config.mirror {
                Some(mirror) => Some(mirror::Mirror::new(
                    mirror,
                    Arc::clone(pools.get(&mirror.pool)?),
                )),
                None => None,
            },
            stats: Arc::default(),
            rate_limit,
            cache: None,
            index,
            max_body_bytes: config.max_body_bytes.unwrap_or(0),
            access: ClientAccess::new(&config.allow, &config.deny),
        };
        Some((Matcher::new(config), route))
    }

    /// Whether [`Route::finish_response`] has anything to do.
    pub fn has_response_rules(&self) -> bool {
        self.response_headers.is_some() || self.cors.is_some()
    }

    /// Applies the route's response rules to a response of its (the upstream's, the
    /// cache's, or weir's own): header changes, then the CORS policy for a request from
    /// `origin` (a preflight's answer already carries it).
    pub fn finish_response(
        &self,
        headers: &mut http::HeaderMap,
        vars: &rewrite::HeaderVariables<'_>,
        origin: Option<&http::HeaderValue>,
        preflight: bool,
    ) {
        if let Some(rules) = &self.response_headers {
            rules.apply(headers, vars);
        }
        if let Some(cors) = self.cors.as_ref().filter(|_| !preflight) {
            cors.decorate(origin, headers);
        }
    }

    /// The pool of split side `side`, or of the route (its first, the one metrics name
    /// it by) when the side is not known or not asked for; empty for a route that answers
    /// itself.
    pub fn pool_name(&self, side: Option<usize>) -> &str {
        match &self.action {
            Action::Forward(split) => side
                .and_then(|i| split.sides().get(i))
                .map_or(split.primary(), |s| &s.pool)
                .name
                .as_str(),
            Action::Redirect(_) | Action::Respond(_) => "",
        }
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
    /// `matchers[i]` selects `routes[i]`.
    matchers: Vec<Matcher>,
    routes: Vec<Route>,
    /// Whether any route has a CORS policy (only then is a request's `Origin` kept).
    any_cors: bool,
}

impl Router {
    pub fn new(entries: Vec<(Matcher, Route)>) -> Self {
        let (matchers, routes): (Vec<Matcher>, Vec<Route>) = entries.into_iter().unzip();
        let any_cors = routes.iter().any(|r| r.cors.is_some());
        Self {
            matchers,
            routes,
            any_cors,
        }
    }

    pub fn any_cors(&self) -> bool {
        self.any_cors
    }

    /// The first route that matches (the request's host may carry a port; it is
    /// ignored).
    pub fn find(&self, request: &RouteRequest<'_>) -> Option<&Route> {
        let host = strip_port(request.host);
        let path = request.path;
        let index = self
            .matchers
            .iter()
            .position(|m| m.matches(host, path, request))?;
        self.routes.get(index)
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Why each route up to the first match did or did not take `request`, in file order
    /// (the routing simulation; the hot path uses [`Router::find`]).
    pub fn explain(&self, request: &RouteRequest<'_>) -> Vec<RouteVerdict> {
        let host = strip_port(request.host);
        let mut verdicts = Vec::new();
        for (matcher, route) in self.matchers.iter().zip(&self.routes) {
            let mut reasons = Vec::new();
            let host_ok = matcher.host_matches(host);
            reasons.push(match &matcher.host {
                HostMatch::Any => "any host".to_owned(),
                HostMatch::Exact(expected) => format!(
                    "host {host:?} {} {expected:?}",
                    if host_ok { "is" } else { "is not" }
                ),
                HostMatch::Wildcard(suffix) => format!(
                    "host {host:?} {} *{suffix}",
                    if host_ok { "matches" } else { "does not match" }
                ),
            });
            let prefix_ok = path_has_prefix(request.path, &matcher.path_prefix);
            reasons.push(format!(
                "path {:?} {} under {:?}",
                request.path,
                if prefix_ok { "is" } else { "is not" },
                matcher.path_prefix
            ));
            let conditions = matcher.conditions.explain(request);
            let conditions_ok = conditions.iter().all(|(_, ok)| *ok);
            reasons.extend(
                conditions
                    .into_iter()
                    .map(|(what, ok)| format!("{what}: {}", if ok { "yes" } else { "no" })),
            );
            let matched = host_ok && prefix_ok && conditions_ok;
            verdicts.push(RouteVerdict {
                index: route.index,
                name: route.name.to_string(),
                matched,
                reasons,
            });
            if matched {
                break;
            }
        }
        verdicts
    }
}

/// Whether a route took a simulated request, and each check behind that.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteVerdict {
    pub index: usize,
    pub name: String,
    pub matched: bool,
    pub reasons: Vec<String>,
}

/// The host without its port, and an IPv6 literal without its brackets (`::1`).
fn strip_port(host: &str) -> &str {
    let (name, _) = split_port(host);
    name.strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name)
}

/// `text` around its last `:` (`str::rsplit_once(':')`, found with `memrchr`: the
/// generic char search cost each request 300 instructions for the Host's two splits).
pub(crate) fn rsplit_at_colon(text: &str) -> Option<(&str, &str)> {
    let at = memchr::memrchr(b':', text.as_bytes())?;
    // A `:` is one byte: both sides are on character boundaries.
    Some((text.get(..at)?, text.get(at + 1..)?))
}

/// A `Host` value cut into its name (an IPv6 literal keeps its brackets) and the digits
/// of its port, if it names one: `[::1]:8080` → (`[::1]`, `8080`). The one reading of a
/// host's port that routing, redirects and mirrors share.
fn split_port(host: &str) -> (&str, Option<&str>) {
    let cut = if host.starts_with('[') {
        host.rsplit_once("]:")
            .map(|(name, port)| (&host[..name.len() + 1], port))
    } else {
        rsplit_at_colon(host)
    };
    match cut {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (name, Some(port)),
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_an_empty_allow_list_allows_all() {
        let block = |text: &str| IpBlock(text.parse().unwrap());
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let open = ClientAccess::default();
        assert!(open.permits(ip("203.0.113.5")));
        let access = ClientAccess::new(&[block("10.0.0.0/8")], &[block("10.6.6.0/24")]);
        assert!(access.permits(ip("10.1.2.3")));
        assert!(!access.permits(ip("10.6.6.6")));
        assert!(!access.permits(ip("192.0.2.1")));
        assert!(
            access.permits(ip("::ffff:10.1.2.3")),
            "IPv4-mapped IPv6 is judged as IPv4"
        );
        let deny_only = ClientAccess::new(&[], &[block("2001:db8::/32")]);
        assert!(!deny_only.permits(ip("2001:db8::1")));
        assert!(deny_only.permits(ip("2001:db9::1")));
    }

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
        assert_eq!(strip_port("[::1]"), "::1");
        for text in [
            "",
            ":",
            "a:",
            ":b",
            "a:b:c",
            "héllo:80",
            "no colon",
            "[::1]:8080",
        ] {
            assert_eq!(rsplit_at_colon(text), text.rsplit_once(':'), "{text}");
        }
        assert_eq!(split_port("[::1]:8080"), ("[::1]", Some("8080")));
        assert_eq!(split_port("[::1]"), ("[::1]", None));
        assert_eq!(split_port("example.com:x"), ("example.com:x", None));
    }
}
