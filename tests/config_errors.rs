//! A bad config gives one clear error naming file, key and reason; `check-config` exits 2.

use std::path::Path;
use std::process::Command;

use weir::config::{ConfigError, load_str};

const GOOD: &str = r#"
[[listeners]]
name = "http"
address = "127.0.0.1:8080"

[[routes]]
pool = "api"

[pools.api]
endpoints = [{ address = "127.0.0.1:9001" }]
"#;

fn error_for(text: &str) -> String {
    match load_str(text, Path::new("config/weir.toml")) {
        Ok(_) => panic!("config should have been rejected:\n{text}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn the_baseline_is_valid() {
    let config = load_str(GOOD, Path::new("good.toml")).unwrap();
    assert_eq!(config.pools["api"].endpoints[0].weight, 1);
    assert_eq!(
        config.server.drain_timeout,
        weir::config::defaults::DEFAULT_DRAIN_TIMEOUT
    );
}

#[test]
fn unknown_pool_names_file_key_and_suggests() {
    let text = GOOD.replace("pool = \"api\"", "pool = \"apii\"");
    assert_eq!(
        error_for(&text),
        "config/weir.toml: routes[0].pool: unknown pool \"apii\" (did you mean \"api\"?)"
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let text = GOOD.replace(
        "endpoints = [{ address = \"127.0.0.1:9001\" }]",
        "endpoints = [{ address = \"127.0.0.1:9001\", wieght = 3 }]",
    );
    let err = error_for(&text);
    assert!(
        err.starts_with("config/weir.toml: pools.api.endpoints[0].wieght (line 10, column"),
        "{err}"
    );
    assert!(err.contains("unknown field `wieght`"), "{err}");
}

#[test]
fn bad_listener_address() {
    let err = error_for(&GOOD.replace("127.0.0.1:8080", "localhost"));
    assert!(
        err.starts_with("config/weir.toml: listeners[0].address (line 4"),
        "{err}"
    );
    assert!(err.contains("invalid socket address"), "{err}");
}

#[test]
fn bad_endpoint_address() {
    let err = error_for(&GOOD.replace("127.0.0.1:9001", "http://backend"));
    assert_eq!(
        err,
        "config/weir.toml: pools.api.endpoints[0].address: \"http://backend\": give host:port without a scheme or path"
    );
    let err = error_for(&GOOD.replace("127.0.0.1:9001", "backend"));
    assert!(
        err.ends_with("\"backend\" needs a port between 1 and 65535"),
        "{err}"
    );
}

#[test]
fn bad_duration() {
    let text = GOOD.to_owned() + "connect_timeout = \"fast\"\n";
    let err = error_for(&text);
    assert!(
        err.starts_with("config/weir.toml: pools.api.connect_timeout"),
        "{err}"
    );
}

#[test]
fn zero_weight_and_zero_timeout() {
    let text = GOOD.replace(
        "{ address = \"127.0.0.1:9001\" }",
        "{ address = \"127.0.0.1:9001\", weight = 0 }",
    ) + "response_timeout = \"0s\"\n";
    let err = load_str(&text, Path::new("w.toml")).unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "pools.api.endpoints[0].weight",
            "pools.api.response_timeout"
        ],
        "every problem is reported, not just the first"
    );
}

#[test]
fn unknown_strategy() {
    let text = GOOD.to_owned() + "strategy = \"fastest\"\n";
    let err = error_for(&text);
    assert!(
        err.starts_with("config/weir.toml: pools.api.strategy"),
        "{err}"
    );
    assert!(err.contains("unknown variant `fastest`"), "{err}");
}

#[test]
fn missing_sections() {
    assert_eq!(
        error_for(""),
        "config/weir.toml: listeners: at least one [[listeners]] entry is required; \
         routes: at least one [[routes]] entry is required"
    );
}

#[test]
fn syntax_errors_give_a_line() {
    let err = error_for("[[listeners]\nname = 1\n");
    assert!(
        err.starts_with("config/weir.toml: (syntax) (line 1, column"),
        "{err}"
    );
}

#[test]
fn wrong_types_are_named() {
    let err = error_for(&GOOD.replace("name = \"http\"", "name = 7"));
    assert!(
        err.starts_with("config/weir.toml: listeners[0].name"),
        "{err}"
    );
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn duplicate_listeners_and_bad_hosts() {
    let text = GOOD.to_owned()
        + "\n[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n\
           \n[[routes]]\nhost = \"a.*.com\"\npath_prefix = \"api\"\npool = \"api\"\n";
    let err = load_str(&text, Path::new("w.toml")).unwrap_err();
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "listeners[1].name",
            "listeners[1].address",
            "routes[1].path_prefix",
            "routes[1].host"
        ]
    );
}

#[test]
fn cache_settings_are_checked() {
    let err = error_for(
        &(GOOD.to_owned()
            + "\n[cache]\nenabled = true\nmemory_bytes = 1000\nmax_object_bytes = 5000\nshared_lock = true\nwarm_urls = [\"/no-host\"]\n"),
    );
    assert!(
        err.contains("cache.max_object_bytes: must be 1 to cache.memory_bytes (1000), got 5000"),
        "{err}"
    );
    assert!(
        err.contains("cache.shared_lock: needs a [redis] section"),
        "{err}"
    );
    assert!(err.contains("cache.warm_urls[0]"), "{err}");
    let err = error_for(
        &(GOOD.to_owned() + "\n[redis]\nurl = \"redis://127.0.0.1\"\nkey_prefix = \"a{b}\"\n"),
    );
    assert!(err.contains("redis.key_prefix"), "{err}");
    let err = error_for(
        &(GOOD.to_owned()
            + "\n[control]\ninterval = \"10ms\"\n\n[[control.autoscale]]\npool = \"nope\"\nmin_instances = 5\nmax_instances = 2\nschedule = [{ days = \"mon-fry\", from = \"08:00\", to = \"18:00\", min_instances = 3 }]\naction = { command = [\"x\"], webhook = \"http://h/\" }\n"),
    );
    assert!(
        err.contains("control.interval: must be at least 100ms"),
        "{err}"
    );
    assert!(
        err.contains("control.autoscale[0].pool: no pool named \"nope\""),
        "{err}"
    );
    assert!(
        err.contains(
            "control.autoscale[0].max_instances: must be at least 1 and at least min_instances (5)"
        ),
        "{err}"
    );
    assert!(
        err.contains("control.autoscale[0].schedule[0]: \"fry\" is not a day"),
        "{err}"
    );
    assert!(
        err.contains("control.autoscale[0].action: set exactly one of command"),
        "{err}"
    );
    let err = error_for(&(GOOD.to_owned() + "\n[redis]\ntimeout = \"1s\"\n"));
    assert!(
        err.contains("redis: set url (a standalone Redis) or cluster_nodes"),
        "{err}"
    );
    let err = error_for(
        &(GOOD.to_owned()
            + "\n[redis]\nurl = \"redis://a\"\ncluster_nodes = [\"redis://b:7000\", \"http://c\"]\n"),
    );
    assert!(
        err.contains("redis.cluster_nodes: set either url or cluster_nodes, not both"),
        "{err}"
    );
    assert!(
        err.contains("redis.cluster_nodes[1]: \"http://c\" must start with redis://"),
        "{err}"
    );
    let err = error_for(&GOOD.replace(
        "[[routes]]",
        "[[routes]]\ncache = { min_ttl = \"10s\", max_ttl = \"1s\", key_headers = [\"bad header\"] }",
    ));
    assert!(
        err.contains(".cache.min_ttl: 10s is more than max_ttl 1s"),
        "{err}"
    );
    assert!(
        err.contains(".cache.key_headers[0]: \"bad header\" is not a header name"),
        "{err}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let err = weir::config::load_file(Path::new("/nonexistent/weir.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/weir.toml: cannot read:")
    );
}

#[test]
fn check_config_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_weir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/weir.toml");
    let ok = Command::new(bin)
        .arg("check-config")
        .arg(&example)
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(": ok ("));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, GOOD.replace("pool = \"api\"", "pool = \"apii\"")).unwrap();
    let out = Command::new(bin)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "{}: routes[0].pool: unknown pool \"apii\" (did you mean \"api\"?)",
            bad.display()
        )
    );

    let serve = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(
        serve.status.code(),
        Some(2),
        "serve refuses a bad config too"
    );
}

#[test]
fn balancing_sections_are_checked() {
    let cases = [
        (
            "strategy = \"consistent_hash\"\n",
            "pools.api.hash: strategy \"consistent_hash\" needs a [hash] table with a key",
        ),
        (
            "hash = { key = \"client_ip\" }\n",
            "pools.api.hash: only used with strategy = \"consistent_hash\"",
        ),
        (
            "strategy = \"consistent_hash\"\nhash = { key = \"ip\" }\n",
            "pools.api.hash.key: \"ip\": expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\"",
        ),
        (
            "health_check = { path = \"healthz\" }\n",
            "pools.api.health_check.path: must start with '/'",
        ),
        (
            "passive = { error_rate = 1.5 }\n",
            "pools.api.passive.error_rate: must be above 0 and at most 1, got 1.5",
        ),
        (
            "retry = { backoff_base = \"1s\", backoff_cap = \"10ms\" }\n",
            "pools.api.retry.backoff_cap: must be at least backoff_base",
        ),
        (
            "score = { response_time = 0, availability = 0, load = 0, success_rate = 0 }\n",
            "pools.api.score: weights must be 0 or more, and not all 0",
        ),
        (
            "sticky_cookie = \"a b\"\n",
            "pools.api.sticky_cookie: \"a b\" is not a valid cookie name",
        ),
        (
            "response_timeout = \"2s\"\nretry = { per_try_timeout = \"2s\" }\n",
            "pools.api.retry.per_try_timeout: must be above 0 and below response_timeout (2s)",
        ),
        (
            "response_timeout = \"2s\"\nhedge = { delay = \"2s\" }\n",
            "pools.api.hedge.delay: must be above 0 and below response_timeout (2s)",
        ),
        (
            "hedge = { delay = \"p100\" }\n",
            "the percentile must be above 0 and below 100",
        ),
        (
            "hedge = { delay = \"soon\" }\n",
            "\"soon\" is neither a duration (\"50ms\") nor a percentile (\"p95\")",
        ),
        (
            "hedge = { delay = \"p95\", factor = 0.5 }\n",
            "pools.api.hedge.factor: must be at least 1, got 0.5",
        ),
        (
            "hedge = { delay = \"p95\" }\nretry = { attempts = 0 }\n",
            "pools.api.hedge: a hedge is an extra attempt: it needs retry.attempts of at least 1",
        ),
        (
            "passive = { stall_factor = 0.5 }\n",
            "pools.api.passive.stall_factor: must be at least 1, got 0.5",
        ),
    ];
    for (extra, expected) in cases {
        let err = error_for(&(GOOD.to_owned() + extra));
        assert!(err.contains(expected), "{extra}: {err}");
    }
    let err = error_for(&(GOOD.to_owned() + "retry = { on = [\"always\"] }\n"));
    assert!(
        err.starts_with("config/weir.toml: pools.api.retry.on[0]"),
        "{err}"
    );
}

#[test]
fn discovery_entries_and_dns_settings_name_key_and_reason() {
    let endpoints = "endpoints = [{ address = \"127.0.0.1:9001\" }]";
    let cases = [
        (
            "endpoints = [{ address = \"127.0.0.1:9001\", dns = \"api.internal:80\" }]",
            "pools.api.endpoints[0]",
            "exactly one of `address` (host:port), `dns`",
        ),
        (
            "endpoints = [{ weight = 2 }]",
            "pools.api.endpoints[0]",
            "exactly one of",
        ),
        (
            "endpoints = [{ srv = \"_http._tcp.api.internal\", weight = 2 }]",
            "pools.api.endpoints[0]",
            "takes its weights from the SRV records",
        ),
        (
            "endpoints = [{ dns = \"api.internal\" }]",
            "pools.api.endpoints[0].dns",
            "needs a port between 1 and 65535",
        ),
        (
            "endpoints = [{ dns = \"10.0.0.1:80\" }]",
            "pools.api.endpoints[0].dns",
            "is an address, not a name; give it as `address`",
        ),
        (
            "endpoints = [{ srv = \"_http._tcp..internal\" }]",
            "pools.api.endpoints[0].srv",
            "is not a valid DNS name",
        ),
        (
            "endpoints = [{ dns = \"api.internal:80\" }, { dns = \"API.internal:80\" }]",
            "pools.api.endpoints[1].dns",
            "duplicate endpoint",
        ),
        (
            "endpoints = [{ dns = \"api.internal:443\" }]\ntls = {}",
            "pools.api.tls.server_name",
            "needed with dns or srv endpoints",
        ),
    ];
    for (replacement, key, reason) in cases {
        let err = error_for(&GOOD.replace(endpoints, replacement));
        assert!(
            err.starts_with(&format!("config/weir.toml: {key}")) && err.contains(reason),
            "{replacement}: {err}"
        );
    }
    for (dns, expected) in [
        (
            "[dns]\nmin_ttl = \"10s\"\nmax_ttl = \"1s\"\n",
            "dns.max_ttl: must be at least dns.min_ttl (10s)",
        ),
        ("[dns]\nmin_ttl = \"0s\"\n", "dns.min_ttl: must be above 0"),
        (
            "[dns]\nservers = [\"127.0.0.1:0\"]\n",
            "dns.servers[0]: 127.0.0.1:0 needs a port",
        ),
        ("[dns]\nservers = [\"resolver\"]\n", "dns.servers[0]"),
    ] {
        let err = error_for(&(GOOD.to_owned() + dns));
        assert!(err.contains(expected), "{dns}: {err}");
    }
    let good = GOOD.replace(
        endpoints,
        "endpoints = [{ dns = \"api.internal:8080\", weight = 2 }, { srv = \"_http._tcp.api.internal\" }]",
    );
    let config = load_str(&good, Path::new("good.toml")).unwrap();
    assert_eq!(config.pools["api"].endpoints[0].weight, 2);
    assert_eq!(
        config.pools["api"].endpoints[1].source,
        weir::config::EndpointSource::Srv("_http._tcp.api.internal".into())
    );
}

#[test]
fn trace_export_settings_name_key_and_reason() {
    let with = |table: &str| format!("{GOOD}\n[trace_export]\n{table}\n");
    for (table, expected) in [
        (
            "endpoint = \"collector:4318\"",
            "trace_export.endpoint: \"collector:4318\" must be a http or https URL with a host",
        ),
        (
            "endpoint = \"https://collector:4317\"\nprotocol = \"grpc\"",
            "trace_export.endpoint: \"https://collector:4317\" must be a http URL with a host",
        ),
        (
            "endpoint = \"http://collector:4318/v1/traces\"\nsample_ratio = 1.5",
            "trace_export.sample_ratio: must be 0 to 1, got 1.5",
        ),
        (
            "endpoint = \"http://collector:4318/v1/traces\"\nqueue_spans = 10\nbatch_spans = 20",
            "trace_export.batch_spans: must be 1 to queue_spans (10)",
        ),
        (
            "endpoint = \"http://collector:4318/v1/traces\"\ntimeout = \"0s\"",
            "trace_export.timeout: must be above 0",
        ),
        (
            "endpoint = \"http://collector:4318/v1/traces\"\nprotocol = \"thrift\"",
            "trace_export.protocol",
        ),
        ("sample_ratio = 0.5", "missing field `endpoint`"),
    ] {
        let err = error_for(&with(table));
        assert!(err.contains(expected), "{table}: {err}");
    }
    let config = load_str(
        &with("endpoint = \"http://127.0.0.1:4318/v1/traces\""),
        Path::new("good.toml"),
    )
    .unwrap();
    let export = config.trace_export.unwrap();
    assert_eq!(export.sample_ratio, 1.0);
    assert_eq!(export.service_name, "weir");
    assert!(
        load_str(GOOD, Path::new("good.toml"))
            .unwrap()
            .trace_export
            .is_none(),
        "off by default"
    );
}

#[test]
fn a_pool_proxy_protocol_is_v1_or_v2() {
    let text = GOOD.replace("[pools.api]\n", "[pools.api]\nproxy_protocol = \"v3\"\n");
    let err = error_for(&text);
    assert!(
        err.starts_with("config/weir.toml: pools.api.proxy_protocol") && err.contains("v1"),
        "{err}"
    );
    let good = GOOD.replace("[pools.api]\n", "[pools.api]\nproxy_protocol = \"v2\"\n");
    assert_eq!(
        load_str(&good, Path::new("good.toml")).unwrap().pools["api"].proxy_protocol,
        Some(weir::config::ProxyProtocolVersion::V2)
    );
}

#[test]
fn route_allow_and_deny_entries_name_key_and_reason() {
    let with =
        |extra: &str| GOOD.replace("pool = \"api\"\n", &format!("pool = \"api\"\n{extra}\n"));
    let err = error_for(&with("allow = [\"10.0.0.0/8\", \"10.0.0.300\"]"));
    assert!(
        err.contains("routes[0].allow[1]")
            && err.contains("\"10.0.0.300\" is not an IP address or CIDR block"),
        "{err}"
    );
    let err = error_for(&with("deny = [\"everyone\"]"));
    assert!(err.contains("routes[0].deny[0]"), "{err}");
    let config = load_str(
        &with("allow = [\"10.0.0.0/8\", \"::1\"]"),
        Path::new("ok.toml"),
    )
    .unwrap();
    assert_eq!(config.routes[0].allow.len(), 2);
}

/// Each route rule, wrong in a typical way, is named by its key with the reason.
#[test]
fn route_rules_are_checked_key_by_key() {
    let with_route = |route: &str| {
        format!(
            "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n\n[[routes]]\n{route}\n\n\
             [pools.api]\nendpoints = [{{ address = \"127.0.0.1:9001\" }}]\n\
             [pools.v2]\nendpoints = [{{ address = \"127.0.0.1:9002\" }}]\n"
        )
    };
    let cases = [
        (
            "pool = \"api\"\npath_regex = \"/users/(\"",
            "routes[0].path_regex: invalid regular expression \"/users/(\": unclosed group",
        ),
        (
            "pool = \"api\"\nheaders = [{ name = \"x-user\", regex = \"[\" }]",
            "routes[0].headers[0]: invalid regular expression \"[\"",
        ),
        (
            "pool = \"api\"\nheaders = [{ name = \"x y\" }]",
            "routes[0].headers[0]: \"x y\" is not a valid header name",
        ),
        (
            "pool = \"api\"\nmethods = [\"G T\"]",
            "routes[0].methods[0]: \"G T\" is not a method",
        ),
        (
            "pools = [{ pool = \"api\", weight = 0 }, { pool = \"v3\", weight = 0 }]",
            "routes[0].pools[1].pool: unknown pool \"v3\" (did you mean \"v2\"?)",
        ),
        (
            "pools = [{ pool = \"api\", weight = 0 }, { pool = \"v2\", weight = 0 }]",
            "routes[0].pools: the weights sum to 0: no side would get a request",
        ),
        (
            "pool = \"api\"\nsticky = \"header:x-user\"",
            "routes[0].sticky: only a split (pools) can be sticky",
        ),
        (
            "pools = [{ pool = \"api\", weight = 1 }, { pool = \"v2\", weight = 1 }]\nsticky = \"ip\"",
            "routes[0].sticky: \"ip\": expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\"",
        ),
        (
            "path_prefix = \"/x\"\nredirect = { status = 301 }",
            "routes[0].redirect: names no target (scheme, host, port, path or prefix): it would point at itself",
        ),
        (
            "redirect = { scheme = \"ftp\" }",
            "routes[0].redirect.scheme: expected \"http\" or \"https\", got \"ftp\"",
        ),
        (
            "redirect = { scheme = \"https\", status = 200 }",
            "routes[0].redirect.status: expected 301, 302, 303, 307 or 308, got 200",
        ),
        (
            "pool = \"api\"\nrespond = { status = 200 }",
            "routes[0]: has pool and respond: give exactly one",
        ),
        (
            "name = \"empty\"",
            "routes[0]: needs a destination: pool, pools, redirect or respond",
        ),
        (
            "pool = \"api\"\nrewrite = { strip_prefix = true }",
            "routes[0].rewrite: strips or replaces the route's path_prefix, which is \"/\"",
        ),
        (
            "pool = \"api\"\nrewrite = { regex = \"^/a\" }",
            "routes[0].rewrite: regex needs a replacement",
        ),
        (
            "pool = \"api\"\nrequest_headers = { set = { \"x-who\" = \"${user}\" } }",
            "routes[0].request_headers.set.x-who: \"${user}\": unknown variable ${user}",
        ),
        (
            "pool = \"api\"\ncors = { origins = [\"*\"], credentials = true }",
            "routes[0].cors.origins[0]: \"*\" with credentials = true: browsers refuse it",
        ),
        (
            "pool = \"api\"\ncors = { origins = [\"https://app.example.com/path\"] }",
            "routes[0].cors.origins[0]: \"https://app.example.com/path\" is not an origin",
        ),
        (
            "pool = \"api\"\nmirror = { pool = \"v9\" }",
            "routes[0].mirror.pool: unknown pool \"v9\"",
        ),
        (
            "pool = \"api\"\nmirror = { pool = \"v2\", percent = 150.0 }",
            "routes[0].mirror.percent: must be 0 to 100, got 150",
        ),
        (
            "respond = { status = 200 }\nmirror = { pool = \"v2\" }",
            "routes[0].mirror: only a route that forwards (pool or pools) can mirror",
        ),
    ];
    for (route, expected) in cases {
        let err = error_for(&with_route(route));
        assert!(
            err.contains(&format!("config/weir.toml: {expected}")),
            "for\n{route}\nexpected {expected:?}\ngot {err:?}"
        );
    }
}

#[test]
fn check_config_lists_each_routes_rules_in_match_order() {
    let bin = env!("CARGO_BIN_EXE_weir");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.toml");
    std::fs::write(
        &file,
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:8080"

[[routes]]
name = "canary"
host = "api.example.com"
headers = [{ name = "x-canary", value = "1" }]
pool = "v2"

[[routes]]
name = "split"
host = "api.example.com"
path_prefix = "/api"
pools = [{ pool = "v1", weight = 95 }, { pool = "v2", weight = 5 }]
sticky = "cookie:session"
rewrite = { strip_prefix = true }

[[routes]]
name = "to-https"
redirect = { scheme = "https" }

[pools.v1]
endpoints = [{ address = "127.0.0.1:9001" }]
[pools.v2]
endpoints = [{ address = "127.0.0.1:9002" }]
"#,
    )
    .unwrap();
    let out = Command::new(bin)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "  canary: host api.example.com, header x-canary = \"1\" → pool v2",
        "  split: host api.example.com, prefix /api → split v1 95.0% / v2 5.0%, sticky by cookie:session; strip /api",
        "  to-https: any request → redirect 301/308 (scheme https)",
    ] {
        assert!(stdout.contains(line), "no {line:?} in\n{stdout}");
    }
}

#[test]
fn bad_slos_alert_rules_and_notifiers_name_their_keys() {
    let text = GOOD.to_owned()
        + r#"
[[control.slo]]
name = "avail"
routes = ["nameless"]
objective = 99.9
burn_alerts = [{ factor = 14.4, long = "5m", short = "1h" }]

[[control.slo]]
name = "both"
routes = ["x"]
pool = "api"
objective = 0.99

[[control.alert]]
name = "p99"
signal = "p99_ms"
pool = "apii"
above = 500.0
below = 100.0

[[control.alert]]
name = "hits"
signal = "cache_hit_ratio"
pool = "api"
below = 0.5

[[control.notify]]
name = "pager"
webhook = "https://pager.example/hook"
retries = 50
"#;
    let err = error_for(&text);
    for expected in [
        "control.slo[0].routes: no route named \"nameless\" (give the route a name)",
        "control.slo[0].objective: must be a fraction strictly between 0 and 1, got 99.9",
        "control.slo[0].burn_alerts[0].short: must be at least control.interval and shorter than long",
        "control.slo[1].routes: set either routes (names) or pool, not both",
        "control.alert[0].above: set exactly one of above, below and anomaly_z",
        "control.alert[0].pool: no pool named \"apii\"",
        "control.alert[1].pool: cache_hit_ratio belongs to the whole instance, not a pool",
        "control.notify[0].webhook: must be an http:// URL",
        "control.notify[0].retries: must be at most 10",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let routed = error_for(
        &(GOOD.to_owned()
            + "\n[[control.alert]]\nname = \"x\"\nsignal = \"p99_ms\"\nroute = \"nope\"\nabove = 1.0\n"),
    );
    assert!(
        routed.contains(
            "control.alert[0].route: p99_ms is not counted per route (the cache hit ratios are)"
        ),
        "{routed}"
    );
    let unknown = error_for(
        &(GOOD.to_owned() + "\n[[control.alert]]\nname = \"x\"\nsignal = \"p42\"\nabove = 1.0\n"),
    );
    assert!(
        unknown.contains("control.alert[0].signal") && unknown.contains("unknown variant `p42`"),
        "{unknown}"
    );
}
