//! A route's file model: what it matches, where it sends a request (one pool, weighted
//! pools, a redirect or a fixed answer), what it rewrites, copies and allows, and the
//! checks that keep a loaded route meaningful. The order in which a request meets these
//! is documented in docs/routing.md.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::cache::RouteCacheConfig;
use super::error::Problem;
use super::model::{Config, HashKey, IpBlock, RateLimitConfig};

/// Routes are tried in file order; the first whose every condition holds wins.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Option<String>,
    /// Exact host (`api.example.com`) or one-label wildcard (`*.example.com`); absent = any.
    pub host: Option<String>,
    /// Matches on whole path segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(default = "d_path_prefix")]
    pub path_prefix: String,
    /// The whole path, exactly (`/healthz`).
    pub path: Option<String>,
    /// A regular expression the whole path must match (`^` and `$` are implied).
    pub path_regex: Option<String>,
    /// Request methods the route takes (`["GET", "HEAD"]`); empty = any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request header conditions, all of which must hold.
    #[serde(default)]
    pub headers: Vec<FieldMatch>,
    /// Query parameter conditions (decoded values), all of which must hold.
    #[serde(default)]
    pub query: Vec<FieldMatch>,
    /// Cookie conditions, all of which must hold.
    #[serde(default)]
    pub cookies: Vec<FieldMatch>,
    /// The route matches only clients in these blocks (the resolved client, as for
    /// `allow`); others go on to the next route, where `allow` would answer 403.
    #[serde(default)]
    pub clients: Vec<IpBlock>,

    /// The one pool requests go to. A route has exactly one of `pool`, `pools`, `redirect`
    /// and `respond`.
    pub pool: Option<String>,
    /// Weighted pools: each request goes to one of them in proportion to `weight`.
    #[serde(default)]
    pub pools: Vec<SplitConfig>,
    /// Keeps one client on one side of a split: `client_ip`, `header:NAME` or
    /// `cookie:NAME` (requests without the key are split one by one). Absent: every request
    /// is split on its own.
    pub sticky: Option<String>,
    /// Answer with a redirect instead of forwarding.
    pub redirect: Option<RedirectConfig>,
    /// Answer with a fixed response instead of forwarding.
    pub respond: Option<RespondConfig>,
    /// Copy a share of the requests to another pool, discarding its answers.
    pub mirror: Option<MirrorConfig>,
    /// Change the path before it goes upstream.
    pub rewrite: Option<PathRewriteConfig>,
    /// Header changes on the request sent upstream.
    pub request_headers: Option<HeaderRulesConfig>,
    /// Header changes on the response sent to the client (weir's own answers too).
    pub response_headers: Option<HeaderRulesConfig>,
    /// Cross-origin resource sharing, answered by weir.
    pub cors: Option<CorsConfig>,

    /// Requests over this rate get 429 with `Retry-After`.
    pub rate_limit: Option<RateLimitConfig>,
    /// This route's caching policy; absent = the defaults when `[cache] enabled`.
    pub cache: Option<RouteCacheConfig>,
    /// Largest request body (bytes); more gets 413. Absent: `server.max_request_body_bytes`;
    /// 0 = no limit.
    pub max_body_bytes: Option<u64>,
    /// Only clients in these blocks may use the route (empty: any); others get 403. The
    /// client is the resolved one (PROXY protocol, `trusted_proxies`), not the connection.
    #[serde(default)]
    pub allow: Vec<IpBlock>,
    /// Clients in these blocks get 403, even when `allow` lists them too.
    #[serde(default)]
    pub deny: Vec<IpBlock>,
}

impl RouteConfig {
    /// The pools requests may be forwarded to, with their weights (one pool weighs 1).
    pub fn split(&self) -> Vec<(&str, u32)> {
        match &self.pool {
            Some(pool) => vec![(pool.as_str(), 1)],
            None => self
                .pools
                .iter()
                .map(|side| (side.pool.as_str(), side.weight))
                .collect(),
        }
    }

    /// The name requests, metrics and logs know the route by.
    pub fn display_name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("routes[{index}]"))
    }
}

/// A condition on a named request field (header, query parameter, cookie): with neither
/// `value` nor `regex` it only has to be present.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMatch {
    pub name: String,
    /// The value, exactly (case-sensitive).
    pub value: Option<String>,
    /// A regular expression the whole value must match.
    pub regex: Option<String>,
    /// true: the condition holds when the field is absent (a route for requests without
    /// the canary header).
    #[serde(default)]
    pub absent: bool,
}

/// One side of a split.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    pub pool: String,
    /// Relative share; 0 = no new requests (a drained side).
    pub weight: u32,
}

/// Where a redirect points; the parts not given are the request's own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// `http` or `https`.
    pub scheme: Option<String>,
    pub host: Option<String>,
    /// Absent: none in the location (the scheme's default), unless the request named one
    /// and the scheme is unchanged.
    pub port: Option<u16>,
    /// Replaces the whole path.
    pub path: Option<String>,
    /// Replaces the route's `path_prefix` in the path (keeping the rest).
    pub prefix: Option<String>,
    /// 301, 302, 303, 307 or 308. Absent: 301 for GET and HEAD, 308 (which keeps the
    /// method and body) for others.
    pub status: Option<u16>,
    /// true: the location carries no query string.
    #[serde(default)]
    pub drop_query: bool,
}

/// A fixed answer (a maintenance page, a health endpoint).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "d_content_type")]
    pub content_type: String,
}

/// Copies of requests sent to another pool (shadow traffic); their answers are discarded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub pool: String,
    /// Share of the route's requests copied, 0–100.
    #[serde(default = "d_mirror_percent")]
    pub percent: f64,
    /// Requests with a larger body (or a body of unknown length) are not copied.
    #[serde(default = "d_mirror_body")]
    pub max_body_bytes: u64,
    /// `Host` of the copies. Absent: the request's host with `-shadow` after its first label
    /// (`api.example.com` → `api-shadow.example.com`).
    pub host: Option<String>,
    /// Copies in flight at most; more are dropped (and counted), never queued.
    #[serde(default = "d_mirror_in_flight")]
    pub max_in_flight: u32,
}

/// One way of changing the path: `strip_prefix`, `replace_prefix`, or `regex` with
/// `replacement`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRewriteConfig {
    /// Removes the route's `path_prefix` (`/api/users` → `/users`); the removed prefix goes
    /// upstream in `X-Forwarded-Prefix`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replaces the route's `path_prefix` with this (`/api` → `/v2`); the old prefix goes
    /// upstream in `X-Forwarded-Prefix`.
    pub replace_prefix: Option<String>,
    /// A regular expression on the path; its first match is replaced by `replacement`
    /// (`$1`, `${name}` are its captures).
    pub regex: Option<String>,
    pub replacement: Option<String>,
}

/// Header changes, applied in the order remove, set, add. Values may name
/// `${client_ip}`, `${request_id}`, `${route}` and `${pool}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesConfig {
    #[serde(default)]
    pub remove: Vec<String>,
    /// Replaces any value the header had.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Adds a value next to any the header had.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

/// A CORS policy: preflights are answered by weir; responses to allowed origins carry the
/// `Access-Control-*` headers (any the upstream sent are replaced).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), wildcard subdomains
    /// (`https://*.example.com`), or `*` for any.
    pub origins: Vec<String>,
    #[serde(default = "d_cors_methods")]
    pub methods: Vec<String>,
    /// Request headers a page may send (`*`: any it asks for). The CORS-safelisted ones
    /// never need listing.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Response headers a page may read beyond the safelisted ones.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether pages may send cookies and read responses to credentialed requests.
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may keep a preflight's answer.
    #[serde(with = "humantime_serde", default = "d_cors_max_age")]
    pub max_age: Duration,
}

fn d_path_prefix() -> String {
    "/".to_owned()
}
fn d_content_type() -> String {
    "text/plain; charset=utf-8".to_owned()
}
fn d_mirror_percent() -> f64 {
    100.0
}
fn d_mirror_body() -> u64 {
    64 * 1024
}
fn d_mirror_in_flight() -> u32 {
    64
}
fn d_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(str::to_owned).to_vec()
}
fn d_cors_max_age() -> Duration {
    Duration::from_secs(600)
}

/// Variables a header rule's value may name.
pub const HEADER_VARIABLES: [&str; 4] = ["client_ip", "request_id", "route", "pool"];

/// A header rule value cut into literal text and variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Text(String),
    /// One of [`HEADER_VARIABLES`].
    Variable(&'static str),
}

/// Splits `"${client_ip} via weir"` into its parts; an unknown or unclosed `${` is an
/// error naming it.
pub fn parse_template(text: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(TemplatePart::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{text:?}: '${{' without a closing '}}'"))?;
        let name = &after[..end];
        let known = HEADER_VARIABLES
            .iter()
            .find(|v| **v == name)
            .ok_or_else(|| {
                format!(
                    "{text:?}: unknown variable ${{{name}}} (known: {})",
                    HEADER_VARIABLES.map(|v| format!("${{{v}}}")).join(", ")
                )
            })?;
        parts.push(TemplatePart::Variable(known));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// A regular expression matched against a whole value.
pub fn whole_value_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| regex_reason(pattern, &e))
}

fn regex_reason(pattern: &str, error: &regex::Error) -> String {
    // The crate's message spans lines (pattern, caret, reason); one line reads better.
    let detail = error
        .to_string()
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("error: ")
        .to_owned();
    format!("invalid regular expression {pattern:?}: {detail}")
}

/// What a route does with a request, for `check-config`: `host api.example.com, path /api
/// (prefix), header x-canary = "1" → pool v2`.
pub fn describe(route: &RouteConfig) -> String {
    let mut conditions = Vec::new();
    if let Some(host) = &route.host {
        conditions.push(format!("host {host}"));
    }
    if route.path_prefix != "/" {
        conditions.push(format!("prefix {}", route.path_prefix));
    }
    if let Some(path) = &route.path {
        conditions.push(format!("path {path}"));
    }
    if let Some(pattern) = &route.path_regex {
        conditions.push(format!("path ~ {pattern}"));
    }
    if !route.methods.is_empty() {
        conditions.push(format!("method {}", route.methods.join("|")));
    }
    let fields = [
        ("header", &route.headers),
        ("query", &route.query),
        ("cookie", &route.cookies),
    ];
    for (kind, list) in fields {
        for field in list {
            let test = match (&field.value, &field.regex) {
                _ if field.absent => "absent".to_owned(),
                (Some(value), _) => format!("= {value:?}"),
                (None, Some(pattern)) => format!("~ {pattern}"),
                (None, None) => "present".to_owned(),
            };
            conditions.push(format!("{kind} {} {test}", field.name));
        }
    }
    if !route.clients.is_empty() {
        let blocks: Vec<String> = route.clients.iter().map(|b| b.0.to_string()).collect();
        conditions.push(format!("client in {}", blocks.join(", ")));
    }
    let mut action = if let Some(redirect) = &route.redirect {
        let mut target = Vec::new();
        for (part, value) in [
            ("scheme", redirect.scheme.clone()),
            ("host", redirect.host.clone()),
            ("port", redirect.port.map(|p| p.to_string())),
            ("path", redirect.path.clone()),
            ("prefix", redirect.prefix.clone()),
        ] {
            if let Some(value) = value {
                target.push(format!("{part} {value}"));
            }
        }
        let status = redirect
            .status
            .map_or("301/308".to_owned(), |s| s.to_string());
        format!("redirect {status} ({})", target.join(", "))
    } else if let Some(respond) = &route.respond {
        format!("respond {} ({} bytes)", respond.status, respond.body.len())
    } else {
        let split = route.split();
        if split.len() == 1 {
            format!("pool {}", split[0].0)
        } else {
            let total: u64 = split.iter().map(|(_, w)| u64::from(*w)).sum();
            let sides: Vec<String> = split
                .iter()
                .map(|(pool, weight)| {
                    let share = 100.0 * f64::from(*weight) / total.max(1) as f64;
                    format!("{pool} {share:.1}%")
                })
                .collect();
            let sticky = route
                .sticky
                .as_ref()
                .map(|key| format!(", sticky by {key}"))
                .unwrap_or_default();
            format!("split {}{sticky}", sides.join(" / "))
        }
    };
    let mut extras = Vec::new();
    if !route.allow.is_empty() || !route.deny.is_empty() {
        extras.push(format!(
            "allow {} / deny {} blocks",
            route.allow.len(),
            route.deny.len()
        ));
    }
    if let Some(cors) = &route.cors {
        extras.push(format!("cors {}", cors.origins.join(" ")));
    }
    if let Some(limit) = &route.rate_limit {
        extras.push(format!("rate limit {}/s", limit.requests_per_second));
    }
    if let Some(rewrite) = &route.rewrite {
        if rewrite.strip_prefix {
            extras.push(format!("strip {}", route.path_prefix));
        } else if let Some(prefix) = &rewrite.replace_prefix {
            extras.push(format!("{} → {prefix}", route.path_prefix));
        } else if let (Some(pattern), Some(to)) = (&rewrite.regex, &rewrite.replacement) {
            extras.push(format!("path {pattern} → {to}"));
        }
    }
    for (side, rules) in [
        ("request", &route.request_headers),
        ("response", &route.response_headers),
    ] {
        if let Some(rules) = rules {
            extras.push(format!(
                "{side} headers -{} ={} +{}",
                rules.remove.len(),
                rules.set.len(),
                rules.add.len()
            ));
        }
    }
    if let Some(mirror) = &route.mirror {
        extras.push(format!("mirror {}% to {}", mirror.percent, mirror.pool));
    }
    if !extras.is_empty() {
        action = format!("{action}; {}", extras.join("; "));
    }
    let conditions = if conditions.is_empty() {
        "any request".to_owned()
    } else {
        conditions.join(", ")
    };
    format!("{conditions} → {action}")
}

/// Checks one route; problems name `routes[i].key`.
pub(super) fn check_route(
    config: &Config,
    index: usize,
    route: &RouteConfig,
    problems: &mut Vec<Problem>,
) {
    let key = format!("routes[{index}]");
    let mut problem = |field: &str, reason: String| {
        problems.push(Problem::new(format!("{key}{field}"), reason));
    };
    check_destination(config, route, &mut problem);
    if !route.path_prefix.starts_with('/') {
        problem(
            ".path_prefix",
            format!("must start with '/', got {:?}", route.path_prefix),
        );
    }
    if let Some(path) = &route.path
        && !path.starts_with('/')
    {
        problem(".path", format!("must start with '/', got {path:?}"));
    }
    if let Some(pattern) = &route.path_regex
        && let Err(reason) = whole_value_regex(pattern)
    {
        problem(".path_regex", reason);
    }
    for (i, method) in route.methods.iter().enumerate() {
        if http::Method::from_bytes(method.as_bytes()).is_err() || method.is_empty() {
            problem(
                &format!(".methods[{i}]"),
                format!("{method:?} is not a method"),
            );
        }
    }
    let field_lists = [
        ("headers", &route.headers),
        ("query", &route.query),
        ("cookies", &route.cookies),
    ];
    for (list_key, list) in field_lists {
        for (i, field) in list.iter().enumerate() {
            if let Err(reason) = check_field(list_key, field) {
                problem(&format!(".{list_key}[{i}]"), reason);
            }
        }
    }
    if let Some(rewrite) = &route.rewrite {
        check_rewrite(route, rewrite, &mut problem);
    }
    for (side, rules) in [
        ("request_headers", &route.request_headers),
        ("response_headers", &route.response_headers),
    ] {
        if let Some(rules) = rules {
            check_header_rules(side, rules, &mut problem);
        }
    }
    if let Some(cors) = &route.cors {
        check_cors(cors, &mut problem);
    }
    if let Some(mirror) = &route.mirror {
        if !config.pools.contains_key(&mirror.pool) {
            problem(".mirror.pool", unknown_pool(config, &mirror.pool));
        }
        if !(0.0..=100.0).contains(&mirror.percent) || mirror.percent.is_nan() {
            problem(
                ".mirror.percent",
                format!("must be 0 to 100, got {}", mirror.percent),
            );
        }
        if mirror.max_in_flight == 0 {
            problem(".mirror.max_in_flight", "must be at least 1".to_owned());
        }
        if let Some(host) = &mirror.host
            && host.parse::<http::uri::Authority>().is_err()
        {
            problem(".mirror.host", format!("{host:?} is not a host"));
        }
        if route.pool.is_none() && route.pools.is_empty() {
            problem(
                ".mirror",
                "only a route that forwards (pool or pools) can mirror".to_owned(),
            );
        }
    }
}

/// Exactly one of `pool`, `pools`, `redirect`, `respond`, each meaningful.
fn check_destination(config: &Config, route: &RouteConfig, problem: &mut impl FnMut(&str, String)) {
    let given: Vec<&str> = [
        ("pool", route.pool.is_some()),
        ("pools", !route.pools.is_empty()),
        ("redirect", route.redirect.is_some()),
        ("respond", route.respond.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match given.len() {
        0 => problem(
            "",
            "needs a destination: pool, pools, redirect or respond".to_owned(),
        ),
        1 => {}
        _ => problem("", format!("has {}: give exactly one", given.join(" and "))),
    }
    if let Some(pool) = &route.pool
        && !config.pools.contains_key(pool)
    {
        problem(".pool", unknown_pool(config, pool));
    }
    for (i, side) in route.pools.iter().enumerate() {
        if !config.pools.contains_key(&side.pool) {
            problem(
                &format!(".pools[{i}].pool"),
                unknown_pool(config, &side.pool),
            );
        }
        if route.pools[..i].iter().any(|s| s.pool == side.pool) {
            problem(
                &format!(".pools[{i}].pool"),
                format!("{:?} is listed twice", side.pool),
            );
        }
    }
    if !route.pools.is_empty() {
        let total: u64 = route.pools.iter().map(|s| u64::from(s.weight)).sum();
        if total == 0 {
            problem(
                ".pools",
                "the weights sum to 0: no side would get a request".to_owned(),
            );
        }
        if total > u64::from(u32::MAX) {
            problem(
                ".pools",
                format!("the weights sum to {total}, more than {}", u32::MAX),
            );
        }
    }
    if let Some(sticky) = &route.sticky {
        if route.pools.is_empty() {
            problem(".sticky", "only a split (pools) can be sticky".to_owned());
        }
        if let Err(reason) = HashKey::parse(sticky) {
            problem(".sticky", reason);
        }
    }
    if let Some(redirect) = &route.redirect {
        check_redirect(route, redirect, problem);
    }
    if let Some(respond) = &route.respond
        && !(200..=599).contains(&respond.status)
    {
        problem(
            ".respond.status",
            format!("must be 200 to 599, got {}", respond.status),
        );
    }
    if let Some(respond) = &route.respond
        && http::HeaderValue::from_str(&respond.content_type).is_err()
    {
        problem(
            ".respond.content_type",
            format!("{:?} is not a header value", respond.content_type),
        );
    }
}

fn check_redirect(
    route: &RouteConfig,
    redirect: &RedirectConfig,
    problem: &mut impl FnMut(&str, String),
) {
    let targets = [
        redirect.scheme.is_some(),
        redirect.host.is_some(),
        redirect.port.is_some(),
        redirect.path.is_some(),
        redirect.prefix.is_some(),
    ];
    if !targets.contains(&true) && !redirect.drop_query {
        problem(
            ".redirect",
            "names no target (scheme, host, port, path or prefix): it would point at itself"
                .to_owned(),
        );
    }
    if let Some(scheme) = &redirect.scheme
        && scheme != "http"
        && scheme != "https"
    {
        problem(
            ".redirect.scheme",
            format!("expected \"http\" or \"https\", got {scheme:?}"),
        );
    }
    if let Some(host) = &redirect.host
        && (host.is_empty() || host.contains(['/', ':', '?', '#', ' ']))
    {
        problem(
            ".redirect.host",
            format!("{host:?} is not a host name (give the port as port)"),
        );
    }
    for (field, value) in [("path", &redirect.path), ("prefix", &redirect.prefix)] {
        if let Some(value) = value
            && (!value.starts_with('/') || value.contains(['?', '#', ' ']))
        {
            problem(
                &format!(".redirect.{field}"),
                format!("must be a path starting with '/', got {value:?}"),
            );
        }
    }
    if redirect.path.is_some() && redirect.prefix.is_some() {
        problem(".redirect", "has both path and prefix: give one".to_owned());
    }
    if redirect.prefix.is_some() && route.path_prefix == "/" {
        problem(
            ".redirect.prefix",
            "replaces the route's path_prefix, which is \"/\": use path, or set path_prefix"
                .to_owned(),
        );
    }
    if let Some(status) = redirect.status
        && ![301, 302, 303, 307, 308].contains(&status)
    {
        problem(
            ".redirect.status",
            format!("expected 301, 302, 303, 307 or 308, got {status}"),
        );
    }
}

fn check_field(list_key: &str, field: &FieldMatch) -> Result<(), String> {
    if field.name.is_empty() {
        return Err("name must not be empty".into());
    }
    if list_key == "headers" && http::HeaderName::from_bytes(field.name.as_bytes()).is_err() {
        return Err(format!("{:?} is not a valid header name", field.name));
    }
    if field.value.is_some() && field.regex.is_some() {
        return Err("has both value and regex: give one".into());
    }
    if field.absent && (field.value.is_some() || field.regex.is_some()) {
        return Err("absent takes no value or regex".into());
    }
    if let Some(pattern) = &field.regex {
        whole_value_regex(pattern)?;
    }
    Ok(())
}

fn check_rewrite(
    route: &RouteConfig,
    rewrite: &PathRewriteConfig,
    problem: &mut impl FnMut(&str, String),
) {
    let kinds = [
        rewrite.strip_prefix,
        rewrite.replace_prefix.is_some(),
        rewrite.regex.is_some() || rewrite.replacement.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        0 => problem(
            ".rewrite",
            "does nothing: give strip_prefix, replace_prefix, or regex and replacement".to_owned(),
        ),
        1 => {}
        _ => problem(
            ".rewrite",
            "give one of strip_prefix, replace_prefix, or regex and replacement".to_owned(),
        ),
    }
    if (rewrite.strip_prefix || rewrite.replace_prefix.is_some()) && route.path_prefix == "/" {
        problem(
            ".rewrite",
            "strips or replaces the route's path_prefix, which is \"/\"".to_owned(),
        );
    }
    if let Some(prefix) = &rewrite.replace_prefix
        && !prefix.starts_with('/')
    {
        problem(
            ".rewrite.replace_prefix",
            format!("must start with '/', got {prefix:?}"),
        );
    }
    match (&rewrite.regex, &rewrite.replacement) {
        (Some(pattern), Some(_)) => {
            if let Err(error) = regex::Regex::new(pattern) {
                problem(".rewrite.regex", regex_reason(pattern, &error));
            }
        }
        (Some(_), None) => problem(".rewrite", "regex needs a replacement".to_owned()),
        (None, Some(_)) => problem(".rewrite", "replacement needs a regex".to_owned()),
        (None, None) => {}
    }
}

fn check_header_rules(
    side: &str,
    rules: &HeaderRulesConfig,
    problem: &mut impl FnMut(&str, String),
) {
    for (i, name) in rules.remove.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problem(
                &format!(".{side}.remove[{i}]"),
                format!("{name:?} is not a valid header name"),
            );
        }
    }
    for (list, entries) in [("set", &rules.set), ("add", &rules.add)] {
        for (name, value) in entries {
            let key = format!(".{side}.{list}.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problem(&key, format!("{name:?} is not a valid header name"));
            }
            match parse_template(value) {
                Err(reason) => problem(&key, reason),
                Ok(parts) => {
                    let literal: String = parts
                        .iter()
                        .map(|p| match p {
                            TemplatePart::Text(text) => text.as_str(),
                            TemplatePart::Variable(_) => "",
                        })
                        .collect();
                    if http::HeaderValue::from_str(&literal).is_err() {
                        problem(&key, format!("{value:?} is not a header value"));
                    }
                }
            }
        }
    }
}

fn check_cors(cors: &CorsConfig, problem: &mut impl FnMut(&str, String)) {
    if cors.origins.is_empty() {
        problem(
            ".cors.origins",
            "lists no origin: no page could use the route".to_owned(),
        );
    }
    for (i, origin) in cors.origins.iter().enumerate() {
        if origin == "*" {
            if cors.credentials {
                problem(
                    &format!(".cors.origins[{i}]"),
                    "\"*\" with credentials = true: browsers refuse it; list the origins"
                        .to_owned(),
                );
            }
            continue;
        }
        let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty() && !rest.is_empty() && !rest.contains('/')
        });
        if !valid {
            problem(
                &format!(".cors.origins[{i}]"),
                format!("{origin:?} is not an origin (scheme://host[:port], no path)"),
            );
        }
    }
    for (i, method) in cors.methods.iter().enumerate() {
        if http::Method::from_bytes(method.as_bytes()).is_err() {
            problem(
                &format!(".cors.methods[{i}]"),
                format!("{method:?} is not a method"),
            );
        }
    }
    for (list, names) in [
        ("headers", &cors.headers),
        ("expose_headers", &cors.expose_headers),
    ] {
        for (i, name) in names.iter().enumerate() {
            if name != "*" && http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problem(
                    &format!(".cors.{list}[{i}]"),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
    }
}

fn unknown_pool(config: &Config, pool: &str) -> String {
    let hint = super::validate::closest(pool, config.pools.keys().map(String::as_str))
        .map(|name| format!(" (did you mean {name:?}?)"))
        .unwrap_or_default();
    format!("unknown pool {pool:?}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_text_and_variables() {
        assert_eq!(
            parse_template("${client_ip} via ${route}").unwrap(),
            vec![
                TemplatePart::Variable("client_ip"),
                TemplatePart::Text(" via ".into()),
                TemplatePart::Variable("route"),
            ]
        );
        assert_eq!(
            parse_template("plain").unwrap(),
            vec![TemplatePart::Text("plain".into())]
        );
        assert!(
            parse_template("${nope}")
                .unwrap_err()
                .contains("unknown variable ${nope}")
        );
        assert!(
            parse_template("${client_ip")
                .unwrap_err()
                .contains("without a closing")
        );
    }

    #[test]
    fn whole_value_regexes_are_anchored() {
        let re = whole_value_regex("v[0-9]+").unwrap();
        assert!(re.is_match("v12"));
        assert!(!re.is_match("xv12"));
        assert!(!re.is_match("v12x"));
        let alternation = whole_value_regex("a|b").unwrap();
        assert!(
            !alternation.is_match("ab"),
            "the anchors bind the whole alternation"
        );
        assert!(
            whole_value_regex("(")
                .unwrap_err()
                .starts_with("invalid regular expression")
        );
    }
}
