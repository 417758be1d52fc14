//! Checks that need the whole file: references between sections, value ranges, duplicates.
//! Every problem found is reported, not just the first.

use std::collections::HashSet;

use http::uri::Authority;

use super::defaults::MIN_REQUEST_HEADER_BYTES;
use super::error::Problem;
use super::model::{
    Config, EndpointSource, HashKey, HedgeDelay, OtlpProtocol, PoolConfig, Strategy,
};

pub fn validate(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_listeners(config, &mut problems);
    check_routes(config, &mut problems);
    check_pools(config, &mut problems);
    check_dns(config, &mut problems);
    check_trace_export(config, &mut problems);
    check_headers(config, &mut problems);
    check_services(config, &mut problems);
    check_control(config, &mut problems);
    super::alerting::check(config, &mut problems);
    problems
}

fn check_listeners(config: &Config, problems: &mut Vec<Problem>) {
    let header_bytes = config.server.max_request_header_bytes;
    if !(MIN_REQUEST_HEADER_BYTES..=16 * 1024 * 1024).contains(&header_bytes) {
        problems.push(Problem::new(
            "server.max_request_header_bytes",
            format!("must be {MIN_REQUEST_HEADER_BYTES} to 16777216, got {header_bytes}"),
        ));
    }
    let header_count = config.server.max_request_headers;
    if !(8..=10_000).contains(&header_count) {
        problems.push(Problem::new(
            "server.max_request_headers",
            format!("must be 8 to 10000, got {header_count}"),
        ));
    }
    if config.listeners.is_empty() {
        problems.push(Problem::new(
            "listeners",
            "at least one [[listeners]] entry is required",
        ));
    }
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        if listener.name.trim().is_empty() {
            problems.push(Problem::new(format!("{key}.name"), "must not be empty"));
        } else if !names.insert(listener.name.as_str()) {
            problems.push(Problem::new(
                format!("{key}.name"),
                format!("duplicate listener name {:?}", listener.name),
            ));
        }
        if listener.address.port() != 0 && !addresses.insert(listener.address) {
            problems.push(Problem::new(
                format!("{key}.address"),
                format!("{} is used by another listener", listener.address),
            ));
        }
        if let Some(tls) = &listener.tls {
            if tls.certificates.is_empty() {
                problems.push(Problem::new(
                    format!("{key}.tls.certificates"),
                    "at least one certificate is required",
                ));
            }
            if let Some(header) = tls.client_auth.as_ref().and_then(|c| c.header.as_ref())
                && http::HeaderName::from_bytes(header.as_bytes()).is_err()
            {
                problems.push(Problem::new(
                    format!("{key}.tls.client_auth.header"),
                    format!("{header:?} is not a valid header name"),
                ));
            }
        }
        if listener.max_connections == 0 {
            problems.push(Problem::new(
                format!("{key}.max_connections"),
                "must be at least 1",
            ));
        }
    }
    if let Some(admin) = &config.admin
        && admin.address.port() != 0
        && addresses.contains(&admin.address)
    {
        problems.push(Problem::new(
            "admin.address",
            format!("{} is also a proxy listener", admin.address),
        ));
    }
}

fn check_routes(config: &Config, problems: &mut Vec<Problem>) {
    if config.routes.is_empty() {
        problems.push(Problem::new(
            "routes",
            "at least one [[routes]] entry is required",
        ));
    }
    for (i, route) in config.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        super::route::check_route(config, i, route, problems);
        if let Some(host) = &route.host
            && let Err(reason) = check_host_pattern(host)
        {
            problems.push(Problem::new(format!("{key}.host"), reason));
        }
        if let Some(limit) = &route.rate_limit {
            if limit.requests_per_second == 0 || limit.burst == Some(0) {
                problems.push(Problem::new(
                    format!("{key}.rate_limit"),
                    "requests_per_second and burst must be at least 1",
                ));
            }
            if let Err(reason) = super::RateLimitKey::parse(&limit.key) {
                problems.push(Problem::new(format!("{key}.rate_limit.key"), reason));
            }
            if limit.shared && config.redis.is_none() {
                problems.push(Problem::new(
                    format!("{key}.rate_limit.shared"),
                    "shared limits live in Redis; add a [redis] table or remove shared",
                ));
            }
        }
    }
}

fn check_host_pattern(host: &str) -> Result<(), String> {
    let bare = host.strip_prefix("*.").unwrap_or(host);
    if bare.is_empty() {
        return Err("must not be empty".into());
    }
    if bare.contains('*') {
        return Err(format!(
            "{host:?}: only a leading '*.' wildcard is supported"
        ));
    }
    if bare.contains(':') {
        return Err(format!(
            "{host:?}: give the host without a port (ports are ignored when matching)"
        ));
    }
    let valid = bare
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(format!("{host:?} is not a valid host name"));
    }
    Ok(())
}

fn check_pools(config: &Config, problems: &mut Vec<Problem>) {
    for (name, pool) in &config.pools {
        let key = format!("pools.{name}");
        let mut seen = HashSet::new();
        for (i, endpoint) in pool.endpoints.iter().enumerate() {
            let ekey = format!("{key}.endpoints[{i}]");
            let (field, checked) = match &endpoint.source {
                EndpointSource::Address(address) => {
                    ("address", parse_endpoint_address(address).map(|_| ()))
                }
                EndpointSource::Dns(name) => ("dns", check_dns_endpoint(name)),
                EndpointSource::Srv(name) => ("srv", check_dns_name(name)),
            };
            match checked {
                Ok(()) => {
                    if !seen.insert(endpoint.source.label().to_ascii_lowercase()) {
                        problems.push(Problem::new(
                            format!("{ekey}.{field}"),
                            format!("duplicate endpoint {:?}", endpoint.source.label()),
                        ));
                    }
                }
                Err(reason) => problems.push(Problem::new(format!("{ekey}.{field}"), reason)),
            }
            if let Err(reason) = super::Weight::new(endpoint.weight) {
                problems.push(Problem::new(format!("{ekey}.weight"), reason));
            }
        }
        let discovers = pool.endpoints.iter().any(|e| e.source.address().is_none());
        if discovers && pool.tls.as_ref().is_some_and(|t| t.server_name.is_none()) {
            problems.push(Problem::new(
                format!("{key}.tls.server_name"),
                "needed with dns or srv endpoints: discovered endpoints are addresses, and \
                 the certificate is verified against this name",
            ));
        }
        for (field, value) in [
            ("connect_timeout", pool.connect_timeout),
            ("response_timeout", pool.response_timeout),
        ] {
            if value.is_zero() {
                problems.push(Problem::new(format!("{key}.{field}"), "must be above 0"));
            }
        }
        check_pool_policies(&key, pool, problems);
    }
}

fn check_pool_policies(key: &str, pool: &PoolConfig, problems: &mut Vec<Problem>) {
    let mut problem = |field: &str, reason: String| {
        problems.push(Problem::new(format!("{key}.{field}"), reason));
    };
    match (&pool.hash, pool.strategy) {
        (None, Strategy::ConsistentHash) => problem(
            "hash",
            "strategy \"consistent_hash\" needs a [hash] table with a key".into(),
        ),
        (Some(_), strategy) if strategy != Strategy::ConsistentHash => problem(
            "hash",
            "only used with strategy = \"consistent_hash\"; remove it or change the strategy"
                .into(),
        ),
        (Some(hash), _) => {
            if let Err(reason) = HashKey::parse(&hash.key) {
                problem("hash.key", reason);
            }
            if !(1..=10_000).contains(&hash.vnodes) {
                problem(
                    "hash.vnodes",
                    format!("must be 1 to 10000, got {}", hash.vnodes),
                );
            }
        }
        (None, _) => {}
    }
    if pool.tls.is_none()
        && matches!(
            pool.protocol,
            crate::config::UpstreamProtocol::H2 | crate::config::UpstreamProtocol::Auto
        )
    {
        problem(
            "protocol",
            "h2 and auto are negotiated by TLS ALPN and need [tls]; use h2c for HTTP/2 in \
             cleartext"
                .into(),
        );
    }
    if let Some(tls) = &pool.tls {
        if pool.protocol == crate::config::UpstreamProtocol::H2c {
            problem(
                "protocol",
                "h2c is HTTP/2 in cleartext; it cannot be combined with [tls]".into(),
            );
        }
        // Certificate files are read when the runtime is built (`tls::TlsMaterial`).
        if let Some(name) = &tls.server_name
            && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            problem(
                "tls.server_name",
                format!("{name:?} is not a valid server name"),
            );
        }
    }
    if let Some(cookie) = &pool.sticky_cookie
        && !is_token(cookie)
    {
        problem(
            "sticky_cookie",
            format!("{cookie:?} is not a valid cookie name"),
        );
    }
    if let Some(check) = &pool.health_check {
        if check.grpc_service.is_some()
            && !matches!(
                pool.protocol,
                crate::config::UpstreamProtocol::H2c | crate::config::UpstreamProtocol::H2
            )
        {
            problem(
                "health_check.grpc_service",
                "gRPC health checks need protocol = \"h2c\" or \"h2\"".into(),
            );
        }
        if !check.path.starts_with('/') {
            problem(
                "health_check.path",
                format!("must start with '/', got {:?}", check.path),
            );
        }
        if check.interval.is_zero() || check.timeout.is_zero() {
            problem(
                "health_check",
                "interval and timeout must be above 0".into(),
            );
        }
        if check.rise == 0 || check.fall == 0 {
            problem("health_check", "rise and fall must be at least 1".into());
        }
        if !(0.0..=0.5).contains(&check.jitter) {
            problem(
                "health_check.jitter",
                format!("must be 0 to 0.5, got {}", check.jitter),
            );
        }
        if check
            .expected_status
            .iter()
            .any(|s| !(100..=599).contains(s))
        {
            problem(
                "health_check.expected_status",
                "statuses must be 100 to 599".into(),
            );
        }
    }
    let passive = &pool.passive;
    if passive.consecutive_failures == 0 || passive.half_open_probes == 0 {
        problem(
            "passive",
            "consecutive_failures and half_open_probes must be at least 1".into(),
        );
    }
    if !(passive.error_rate > 0.0 && passive.error_rate <= 1.0) {
        problem(
            "passive.error_rate",
            format!("must be above 0 and at most 1, got {}", passive.error_rate),
        );
    }
    if !(0.0..=1.0).contains(&passive.max_ejected_share) {
        problem(
            "passive.max_ejected_share",
            format!("must be 0 to 1, got {}", passive.max_ejected_share),
        );
    }
    if passive.base_ejection.is_zero() || passive.window.is_zero() {
        problem("passive", "base_ejection and window must be above 0".into());
    }
    if passive.max_ejection < passive.base_ejection {
        problem(
            "passive.max_ejection",
            "must be at least base_ejection".into(),
        );
    }
    let retry = &pool.retry;
    if !(0.0..=1.0).contains(&retry.budget_ratio) {
        problem(
            "retry.budget_ratio",
            format!("must be 0 to 1, got {}", retry.budget_ratio),
        );
    }
    if retry.statuses.iter().any(|s| !(100..=599).contains(s)) {
        problem("retry.statuses", "statuses must be 100 to 599".into());
    }
    if retry.backoff_cap < retry.backoff_base {
        problem("retry.backoff_cap", "must be at least backoff_base".into());
    }
    if let Some(per_try) = retry.per_try_timeout
        && (per_try.is_zero() || per_try >= pool.response_timeout)
    {
        problem(
            "retry.per_try_timeout",
            format!(
                "must be above 0 and below response_timeout ({})",
                humantime::format_duration(pool.response_timeout)
            ),
        );
    }
    if let Some(hedge) = &pool.hedge {
        if let HedgeDelay::Fixed(delay) = hedge.delay
            && (delay.is_zero() || delay >= pool.response_timeout)
        {
            problem(
                "hedge.delay",
                format!(
                    "must be above 0 and below response_timeout ({})",
                    humantime::format_duration(pool.response_timeout)
                ),
            );
        }
        if !(hedge.factor >= 1.0 && hedge.factor.is_finite()) {
            problem(
                "hedge.factor",
                format!("must be at least 1, got {}", hedge.factor),
            );
        }
        if hedge.min_delay >= pool.response_timeout {
            problem(
                "hedge.min_delay",
                "must be below response_timeout".to_owned(),
            );
        }
        if retry.attempts == 0 {
            problem(
                "hedge",
                "a hedge is an extra attempt: it needs retry.attempts of at least 1".to_owned(),
            );
        }
    }
    if !(passive.stall_factor >= 1.0 && passive.stall_factor.is_finite()) {
        problem(
            "passive.stall_factor",
            format!("must be at least 1, got {}", passive.stall_factor),
        );
    }
    if retry.attempts > 10 {
        problem(
            "retry.attempts",
            format!("at most 10, got {}", retry.attempts),
        );
    }
    let w = &pool.score;
    let weights = [w.response_time, w.availability, w.load, w.success_rate];
    if weights.iter().any(|x| !x.is_finite() || *x < 0.0) || weights.iter().sum::<f64>() <= 0.0 {
        problem("score", "weights must be 0 or more, and not all 0".into());
    }
    if w.decay.is_zero() {
        problem("score.decay", "must be above 0".into());
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A `dns` endpoint: `name:port`, where the name is to be resolved (not an address).
fn check_dns_endpoint(value: &str) -> Result<(), String> {
    let authority = parse_endpoint_address(value)?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{value:?} is an address, not a name; give it as `address`"
        ));
    }
    check_dns_name(host)
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_` (SRV names start with
/// `_service._proto`), each 1 to 63 bytes, 253 in all; a trailing dot is allowed.
fn check_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let labels_ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if labels_ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid DNS name"))
    }
}

fn check_trace_export(config: &Config, problems: &mut Vec<Problem>) {
    let Some(export) = &config.trace_export else {
        return;
    };
    let mut problem = |field: &str, reason: String| {
        problems.push(Problem::new(format!("trace_export.{field}"), reason));
    };
    let schemes: &[&str] = match export.protocol {
        OtlpProtocol::HttpProtobuf => &["http", "https"],
        // The gRPC transport is built without TLS: a local collector or agent is the usual
        // first hop.
        OtlpProtocol::Grpc => &["http"],
    };
    match export.endpoint.parse::<http::Uri>() {
        Ok(uri)
            if uri.host().is_some() && uri.scheme_str().is_some_and(|s| schemes.contains(&s)) => {}
        _ => problem(
            "endpoint",
            format!(
                "{:?} must be a {} URL with a host",
                export.endpoint,
                schemes.join(" or ")
            ),
        ),
    }
    if !(0.0..=1.0).contains(&export.sample_ratio) {
        problem(
            "sample_ratio",
            format!("must be 0 to 1, got {}", export.sample_ratio),
        );
    }
    if export.queue_spans == 0 {
        problem("queue_spans", "must be above 0".into());
    }
    if export.batch_spans == 0 || export.batch_spans > export.queue_spans {
        problem(
            "batch_spans",
            format!("must be 1 to queue_spans ({})", export.queue_spans),
        );
    }
    for (field, value) in [
        ("flush_interval", export.flush_interval),
        ("timeout", export.timeout),
    ] {
        if value.is_zero() {
            problem(field, "must be above 0".into());
        }
    }
    if export.service_name.is_empty() {
        problem("service_name", "must not be empty".into());
    }
}

fn check_dns(config: &Config, problems: &mut Vec<Problem>) {
    let dns = &config.dns;
    if dns.min_ttl.is_zero() {
        problems.push(Problem::new(
            "dns.min_ttl",
            "must be above 0 (a TTL of 0 would mean asking in a loop)",
        ));
    }
    if dns.max_ttl < dns.min_ttl {
        problems.push(Problem::new(
            "dns.max_ttl",
            format!(
                "must be at least dns.min_ttl ({})",
                humantime::format_duration(dns.min_ttl)
            ),
        ));
    }
    if dns.timeout.is_zero() {
        problems.push(Problem::new("dns.timeout", "must be above 0"));
    }
    for (i, server) in dns.servers.iter().enumerate() {
        if server.port() == 0 {
            problems.push(Problem::new(
                format!("dns.servers[{i}]"),
                format!("{server} needs a port between 1 and 65535"),
            ));
        }
    }
}

/// Parses `host:port` as an endpoint address, with a reason when it is not one.
pub fn parse_endpoint_address(address: &str) -> Result<Authority, String> {
    if address.contains("://") || address.contains('/') {
        return Err(format!(
            "{address:?}: give host:port without a scheme or path"
        ));
    }
    let authority: Authority = address
        .parse()
        .map_err(|_| format!("{address:?} is not a valid host:port"))?;
    if authority.port_u16().is_none_or(|p| p == 0) {
        return Err(format!("{address:?} needs a port between 1 and 65535"));
    }
    if address.contains('@') {
        return Err(format!("{address:?}: user info is not allowed"));
    }
    Ok(authority)
}

fn check_headers(config: &Config, problems: &mut Vec<Problem>) {
    let name = &config.headers.request_id_header;
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        problems.push(Problem::new(
            "headers.request_id_header",
            format!("{name:?} is not a valid header name"),
        ));
    }
    let proxy_name = &config.headers.proxy_name;
    let token_ok = !proxy_name.is_empty()
        && proxy_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !token_ok {
        problems.push(Problem::new(
            "headers.proxy_name",
            format!("{proxy_name:?} must be a token (letters, digits, - . _ ~)"),
        ));
    }
}

/// Runtime threads accepted in `[server] threads`.
const MAX_THREADS: usize = 1024;

fn check_redis_addresses(redis: &crate::config::RedisConfig, problems: &mut Vec<Problem>) {
    let scheme_ok = |url: &str| url.starts_with("redis://") || url.starts_with("rediss://");
    match (&redis.url, redis.cluster_nodes.is_empty()) {
        (None, true) => problems.push(Problem::new(
            "redis",
            "set url (a standalone Redis) or cluster_nodes (a Redis Cluster)",
        )),
        (Some(_), false) => problems.push(Problem::new(
            "redis.cluster_nodes",
            "set either url or cluster_nodes, not both",
        )),
        (Some(url), true) if !scheme_ok(url) => problems.push(Problem::new(
            "redis.url",
            format!("{url:?} must start with redis:// or rediss://"),
        )),
        _ => {}
    }
    for (i, node) in redis.cluster_nodes.iter().enumerate() {
        if !scheme_ok(node) {
            problems.push(Problem::new(
                format!("redis.cluster_nodes[{i}]"),
                format!("{node:?} must start with redis:// or rediss://"),
            ));
        }
    }
}

fn check_control(config: &Config, problems: &mut Vec<Problem>) {
    if config.server.threads > MAX_THREADS {
        problems.push(Problem::new(
            "server.threads",
            format!("{} is more than {MAX_THREADS}", config.server.threads),
        ));
    }
    let control = &config.control;
    if control.interval < std::time::Duration::from_millis(100) {
        problems.push(Problem::new("control.interval", "must be at least 100ms"));
    }
    if control.history < control.interval {
        problems.push(Problem::new(
            "control.history",
            "must be at least control.interval",
        ));
    }
    if !(control.target_rps >= 0.0 && control.target_rps.is_finite()) {
        problems.push(Problem::new("control.target_rps", "must be 0 or more"));
    }
    if control.anomaly_z.is_nan() || control.anomaly_z <= 0.0 {
        problems.push(Problem::new("control.anomaly_z", "must be more than 0"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, scaler) in control.autoscale.iter().enumerate() {
        let key = |field: &str| format!("control.autoscale[{i}].{field}");
        if !config.pools.contains_key(&scaler.pool) {
            problems.push(Problem::new(
                key("pool"),
                format!("no pool named {:?}", scaler.pool),
            ));
        } else if !seen.insert(scaler.pool.as_str()) {
            problems.push(Problem::new(
                key("pool"),
                format!("{:?} has two autoscalers", scaler.pool),
            ));
        }
        if scaler.max_instances == 0 || scaler.min_instances > scaler.max_instances {
            problems.push(Problem::new(
                key("max_instances"),
                format!(
                    "must be at least 1 and at least min_instances ({})",
                    scaler.min_instances
                ),
            ));
        }
        if !(scaler.target_in_flight > 0.0 && scaler.target_in_flight.is_finite()) {
            problems.push(Problem::new(key("target_in_flight"), "must be more than 0"));
        }
        if !(0.0..1.0).contains(&scaler.tolerance) {
            problems.push(Problem::new(
                key("tolerance"),
                "must be at least 0 and below 1",
            ));
        }
        for (field, value) in [
            ("cpu_high", scaler.cpu_high),
            ("memory_high", scaler.memory_high),
            ("error_rate_high", scaler.error_rate_high),
            ("cpu_low", scaler.cpu_low),
            ("memory_low", scaler.memory_low),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                problems.push(Problem::new(
                    key(field),
                    format!("must be a fraction in (0, 1], got {value}"),
                ));
            }
        }
        if scaler.cpu_low >= scaler.cpu_high || scaler.memory_low >= scaler.memory_high {
            problems.push(Problem::new(
                key("cpu_low"),
                "the low marks must sit below the high ones",
            ));
        }
        if scaler.queue_high.is_nan() || scaler.queue_high <= 0.0 {
            problems.push(Problem::new(key("queue_high"), "must be more than 0"));
        }
        if scaler.signal_window < control.interval {
            problems.push(Problem::new(
                key("signal_window"),
                "must be at least control.interval",
            ));
        }
        if !(scaler.scale_down_max_fraction > 0.0 && scaler.scale_down_max_fraction <= 1.0) {
            problems.push(Problem::new(
                key("scale_down_max_fraction"),
                "must be a fraction in (0, 1]",
            ));
        }
        if scaler.scale_up_max_step == 0 {
            problems.push(Problem::new(key("scale_up_max_step"), "must be at least 1"));
        }
        for (j, rule) in scaler.schedule.iter().enumerate() {
            if let Err(reason) = rule.window() {
                problems.push(Problem::new(key(&format!("schedule[{j}]")), reason));
            }
            if rule.min_instances > scaler.max_instances {
                problems.push(Problem::new(
                    key(&format!("schedule[{j}].min_instances")),
                    "is above max_instances",
                ));
            }
        }
        if let Some(action) = &scaler.action {
            match (action.command.is_empty(), &action.webhook) {
                (true, None) | (false, Some(_)) => problems.push(Problem::new(
                    key("action"),
                    "set exactly one of command (a program and its arguments) or webhook",
                )),
                (_, Some(url)) if !url.starts_with("http://") => problems.push(Problem::new(
                    key("action.webhook"),
                    format!("{url:?} must be an http:// URL"),
                )),
                _ => {}
            }
            if action.timeout.is_zero() {
                problems.push(Problem::new(key("action.timeout"), "must be more than 0"));
            }
        }
    }
}

fn check_services(config: &Config, problems: &mut Vec<Problem>) {
    check_cache(config, problems);
    if let Some(redis) = &config.redis {
        check_redis_addresses(redis, problems);
    }
    if let Some(admin) = &config.admin
        && admin.token.as_deref().is_some_and(|t| t.len() < 16)
    {
        problems.push(Problem::new(
            "admin.token",
            "must be at least 16 characters (or leave it out and set the token_env variable)",
        ));
    }
}

/// The candidate nearest to `name` by edit distance, if it is close enough to be a typo.
pub(super) fn closest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}

fn check_cache(config: &Config, problems: &mut Vec<Problem>) {
    let cache = &config.cache;
    if cache.memory_bytes == 0 {
        problems.push(Problem::new("cache.memory_bytes", "must be more than 0"));
    }
    if cache.max_object_bytes == 0 || cache.max_object_bytes > cache.memory_bytes {
        problems.push(Problem::new(
            "cache.max_object_bytes",
            format!(
                "must be 1 to cache.memory_bytes ({}), got {}",
                cache.memory_bytes, cache.max_object_bytes
            ),
        ));
    }
    if !(0.0..=1.0).contains(&cache.heuristic_fraction) {
        problems.push(Problem::new(
            "cache.heuristic_fraction",
            format!("must be 0 to 1, got {}", cache.heuristic_fraction),
        ));
    }
    if cache.warm_concurrency == 0 || cache.warm_concurrency > 256 {
        problems.push(Problem::new(
            "cache.warm_concurrency",
            format!("must be 1 to 256, got {}", cache.warm_concurrency),
        ));
    }
    for (i, url) in cache.warm_urls.iter().enumerate() {
        let ok = url
            .parse::<http::Uri>()
            .ok()
            .filter(|u| u.scheme_str() == Some("http") || u.scheme_str() == Some("https"))
            .is_some_and(|u| u.authority().is_some());
        if !ok {
            problems.push(Problem::new(
                format!("cache.warm_urls[{i}]"),
                format!("{url:?} must be an absolute http(s)://host/path URL"),
            ));
        }
    }
    if cache.shared_lock && config.redis.is_none() {
        problems.push(Problem::new(
            "cache.shared_lock",
            "needs a [redis] section (the lock lives in Redis)",
        ));
    }
    for (i, route) in config.routes.iter().enumerate() {
        let Some(policy) = &route.cache else { continue };
        let key = format!("routes[{i}].cache");
        if let (Some(min), Some(max)) = (policy.min_ttl, policy.max_ttl)
            && min > max
        {
            problems.push(Problem::new(
                format!("{key}.min_ttl"),
                format!("{min:?} is more than max_ttl {max:?}"),
            ));
        }
        if policy.max_object_bytes == Some(0) {
            problems.push(Problem::new(
                format!("{key}.max_object_bytes"),
                "must be more than 0 (set enabled = false to not cache)",
            ));
        }
        if policy.tiers.is_empty() {
            problems.push(Problem::new(
                format!("{key}.tiers"),
                "name at least one of \"memory\", \"redis\" (or set enabled = false)",
            ));
        }
        for (j, name) in policy.key_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(Problem::new(
                    format!("{key}.key_headers[{j}]"),
                    format!("{name:?} is not a header name"),
                ));
            }
        }
    }
    if let Some(redis) = &config.redis {
        if redis.timeout.is_zero() {
            problems.push(Problem::new("redis.timeout", "must be more than 0"));
        }
        let prefix_ok = !redis.key_prefix.is_empty()
            && redis
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"{}*?[]".contains(&b));
        if !prefix_ok {
            problems.push(Problem::new(
                "redis.key_prefix",
                format!(
                    "{:?} must be non-empty printable ASCII without {{ }} * ? [ ]",
                    redis.key_prefix
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_pool_names() {
        assert_eq!(closest("apii", ["api", "web"].into_iter()), Some("api"));
        assert_eq!(closest("zzzzzz", ["api", "web"].into_iter()), None);
    }

    #[test]
    fn weights_are_checked_one_way() {
        assert_eq!(crate::config::Weight::new(1).map(|w| w.get()), Ok(1));
        assert_eq!(
            crate::config::Weight::new(10_000).map(|w| w.get()),
            Ok(10_000)
        );
        for bad in [0, 10_001, u32::MAX] {
            assert_eq!(
                crate::config::Weight::new(bad),
                Err(format!("must be between 1 and 10000, got {bad}"))
            );
        }
    }

    #[test]
    fn endpoint_addresses() {
        assert!(parse_endpoint_address("127.0.0.1:80").is_ok());
        assert!(parse_endpoint_address("backend.internal:8080").is_ok());
        assert!(parse_endpoint_address("[::1]:8080").is_ok());
        assert!(parse_endpoint_address("127.0.0.1").is_err());
        assert!(parse_endpoint_address("http://a:1").is_err());
        assert!(parse_endpoint_address("a:0").is_err());
        assert!(parse_endpoint_address("u@a:1").is_err());
    }

    #[test]
    fn host_patterns() {
        assert!(check_host_pattern("api.example.com").is_ok());
        assert!(check_host_pattern("*.example.com").is_ok());
        assert!(check_host_pattern("a.*.com").is_err());
        assert!(check_host_pattern("api:80").is_err());
        assert!(check_host_pattern("").is_err());
    }
}
