//! The deployment files cannot run here (no Docker engine); check what can be checked:
//! every YAML and JSON file parses, the files agree with each other (ports, secret, paths,
//! datasource), the compose weir config serves, and every metric and label the Grafana
//! dashboard queries is one a running weir exports.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use serde_yaml_ng::Value;

const TOKEN: &str = "deploy-test-token-0123456789";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_config_is_valid() {
    let config = weir::config::load_file(&repo("deploy/weir.compose.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.pools["app"].endpoints.len(), 2);
}

#[test]
fn example_config_is_valid() {
    weir::config::load_file(&repo("config/weir.toml")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn compose_file_wires_weir_prometheus_and_grafana_together() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for service in [
        "weir",
        "redis",
        "upstream-a",
        "upstream-b",
        "prometheus",
        "grafana",
    ] {
        assert!(
            names.contains(service),
            "docker-compose.yml lacks {service}"
        );
    }
    // Every bind mount names a file or folder of this repository.
    for (name, service) in services {
        for volume in strings(&service["volumes"]) {
            let host = volume.split(':').next().unwrap_or_default();
            assert!(
                host.starts_with("./") && repo(host).exists(),
                "{name:?} mounts {host}, which is not in the repository"
            );
        }
    }
    let weir = &compose["services"]["weir"];
    assert!(
        strings(&weir["volumes"])
            .contains(&"./deploy/weir.compose.toml:/etc/weir/weir.toml:ro".to_owned())
    );
    // The admin port only on the host's loopback, and no default token.
    let ports = strings(&weir["ports"]);
    assert!(
        ports.contains(&"127.0.0.1:9901:9901".to_owned()),
        "{ports:?}"
    );
    let token = weir["environment"]["WEIR_ADMIN_TOKEN"].as_str().unwrap();
    assert!(token.starts_with("${WEIR_ADMIN_TOKEN:?"), "{token}");
    for service in ["prometheus", "grafana"] {
        for port in strings(&compose["services"][service]["ports"]) {
            assert!(port.starts_with("127.0.0.1:"), "{service} publishes {port}");
        }
    }

    // Prometheus scrapes weir's admin port with the token compose hands it as a secret.
    let secrets = strings(&compose["services"]["prometheus"]["secrets"]);
    assert_eq!(secrets, ["weir_admin_token"]);
    assert_eq!(
        compose["secrets"]["weir_admin_token"]["environment"].as_str(),
        Some("WEIR_ADMIN_TOKEN")
    );
    let prometheus = yaml("deploy/prometheus.yml");
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    assert_eq!(
        job["authorization"]["credentials_file"].as_str(),
        Some("/run/secrets/weir_admin_token")
    );
    let config = weir::config::load_file(&repo("deploy/weir.compose.toml")).unwrap();
    let admin = config.admin.expect("the compose config has an admin port");
    let target = format!("weir:{}", admin.address.port());
    assert_eq!(strings(&job["static_configs"][0]["targets"]), [target]);

    // Grafana: the provisioned datasource is the one every panel names, and the dashboard
    // provider reads the folder compose mounts the dashboard into.
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["url"].as_str(), Some("http://prometheus:9090"));
    let uid = datasource["uid"].as_str().unwrap();
    let providers = yaml("deploy/grafana/provisioning/dashboards/weir.yml");
    let folder = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert!(
        strings(&compose["services"]["grafana"]["volumes"])
            .contains(&format!("./deploy/grafana/dashboards:{folder}:ro"))
    );
    let dashboard = dashboard();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(
            panel["datasource"]["uid"].as_str(),
            Some(uid),
            "{}",
            panel["title"]
        );
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/dashboards/weir.json")).expect("dashboard JSON")
}

/// A label matcher: the label and the values it accepts (`=~"a|b"` gives two).
type Matcher = (String, Vec<String>);

/// `(metric, matchers)` for every `weir_*` selector in a PromQL expression.
fn selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("weir_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut matchers = Vec::new();
        rest = &tail[end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let close = inner.find('}').expect("closed selector");
            for matcher in inner[..close].split(',') {
                let (label, values) = matcher
                    .split_once("=~")
                    .or_else(|| matcher.split_once('='))
                    .expect("label matcher");
                let values = values.trim_matches('"').split('|').map(str::to_owned);
                matchers.push((label.trim().to_owned(), values.collect()));
            }
            rest = &inner[close..];
        }
        found.push((name, matchers));
    }
    found
}

/// Labels in `by (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<String> {
    expr.split("by (")
        .skip(1)
        .flat_map(|part| part.split(')').next().unwrap_or_default().split(','))
        .map(|label| label.trim().to_owned())
        .filter(|label| label != "le")
        .collect()
}

async fn scrape(admin: std::net::SocketAddr) -> String {
    let reply = admin_get(admin, "/metrics", TOKEN).await;
    assert_eq!(reply.status, 200);
    reply.text()
}

#[tokio::test]
async fn the_compose_config_serves_and_exports_what_the_dashboard_queries() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let redis = RedisServer::start().await;
    // The compose config with this machine's addresses, the token inline and a fast loop.
    let config = read("deploy/weir.compose.toml")
        .replace("0.0.0.0:8080", "127.0.0.1:0")
        .replace("0.0.0.0:9901", "127.0.0.1:0")
        .replace("upstream-a:80", &a.addr.to_string())
        .replace("upstream-b:80", &b.addr.to_string())
        .replace("redis://redis:6379/0", &redis.url())
        .replace(
            "token_env = \"WEIR_ADMIN_TOKEN\"",
            &format!("token = \"{TOKEN}\""),
        )
        .replace("interval = \"10s\"", "interval = \"100ms\"");
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let admin = weir.admin_addr().unwrap();
    let served = served_by(proxy, 20).await;
    assert_eq!(served.values().sum::<usize>(), 20, "{served:?}");

    // Wait for an autoscaler decision (its gauges appear after the first one).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(admin).await;
        if text.contains("weir_autoscale_desired_instances{") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no autoscaler decision"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();

    let dashboard = dashboard();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (metric, matchers) in selectors(expr) {
                let of_metric: Vec<&&str> = series
                    .iter()
                    .filter(|line| {
                        line.starts_with(&format!("{metric}{{"))
                            || line.starts_with(&format!("{metric} "))
                    })
                    .collect();
                assert!(!of_metric.is_empty(), "{expr}: weir exports no {metric}");
                for (label, values) in matchers {
                    for value in values {
                        let pair = format!("{label}=\"{value}\"");
                        assert!(
                            of_metric.iter().any(|line| line.contains(&pair)),
                            "{expr}: no {metric} series with {pair}"
                        );
                    }
                }
                for label in grouping_labels(expr) {
                    assert!(
                        of_metric
                            .iter()
                            .any(|line| line.contains(&format!("{label}=\""))),
                        "{expr}: {metric} has no label {label}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} selectors checked");
    weir.shutdown().await;
}

/// The build stage copies everything the manifest names (a declared bench or a patched
/// crate without its files fails the build), and the runtime stage runs as a non-root user.
#[test]
fn dockerfile_copies_what_the_manifest_needs_and_runs_as_non_root() {
    let dockerfile = read("Dockerfile");
    let (build, runtime) = dockerfile
        .rsplit_once("\nFROM ")
        .expect("a multi-stage build");
    let copied: Vec<&str> = build
        .lines()
        .filter_map(|line| line.strip_prefix("COPY "))
        .flat_map(|args| {
            let mut parts: Vec<&str> = args.split_whitespace().collect();
            parts.pop();
            parts
        })
        .collect();
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let mut needed = vec![
        "Cargo.toml".to_owned(),
        "Cargo.lock".to_owned(),
        "src".to_owned(),
    ];
    for target in manifest["bench"].as_array().into_iter().flatten() {
        let name = target["name"].as_str().unwrap();
        let path = target
            .get("path")
            .and_then(|p| p.as_str())
            .map_or_else(|| format!("benches/{name}.rs"), str::to_owned);
        needed.push(path.split('/').next().unwrap().to_owned());
    }
    // Patched crates are path dependencies: the build needs their sources too.
    for patched in manifest
        .get("patch")
        .and_then(|p| p.get("crates-io"))
        .and_then(|p| p.as_table())
        .into_iter()
        .flat_map(|t| t.values())
    {
        let path = patched["path"].as_str().unwrap();
        needed.push(path.split('/').next().unwrap().to_owned());
    }
    for path in needed {
        assert!(
            copied.iter().any(|c| c.trim_end_matches('/') == path),
            "the build stage does not COPY {path}"
        );
        assert!(repo(&path).exists(), "{path}");
    }
    let user = runtime
        .lines()
        .filter_map(|line| line.strip_prefix("USER "))
        .next_back()
        .expect("a USER line");
    assert!(!["root", "0"].contains(&user.trim()), "runs as {user}");
}
