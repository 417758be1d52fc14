//! Per-request work on the hot path, without the network: endpoint pick per balancing
//! strategy (8 endpoints), route matching (21 host + prefix routes; 100 routes of mixed
//! rule kinds), request header rewriting, and the
//! cache key. `cargo bench --bench hot_path`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Version};
use weir::cache::key::KeySpec;
use weir::config::{self, HeadersConfig, RouteCacheConfig};
use weir::proxy::Snapshot;
use weir::proxy::headers::{ClientAddress, HeaderPolicy, strip_hop_by_hop};
use weir::proxy::route::{Action, RouteRequest};

fn config_text() -> String {
    let endpoints = (0..8)
        .map(|i| {
            format!(
                "{{ address = \"127.0.0.1:{}\", weight = {} }}",
                20000 + i,
                1 + i % 3
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = String::from("[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n");
    for i in 0..20 {
        text += &format!(
            "\n[[routes]]\nname = \"r{i}\"\nhost = \"svc{}.example.com\"\npath_prefix = \"/api/v{}/\"\npool = \"round_robin\"\n",
            i % 4,
            i
        );
    }
    text += "\n[[routes]]\nname = \"default\"\npool = \"round_robin\"\n";
    for strategy in [
        "round_robin",
        "weighted",
        "least_connections",
        "score",
        "consistent_hash",
    ] {
        text += &format!(
            "\n[pools.{strategy}]\nstrategy = \"{strategy}\"\nendpoints = [{endpoints}]\n"
        );
        if strategy == "consistent_hash" {
            text += "hash = { key = \"header:x-user-id\" }\n";
        }
    }
    text
}

fn balancers(c: &mut Criterion) {
    let config = config::load_str(&config_text(), Path::new("bench.toml")).unwrap();
    let snapshot = Snapshot::build(&config, &Default::default(), None);
    let client = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", HeaderValue::from_static("user-4711"));
    for (name, pool) in &snapshot.pools {
        c.bench_function(&format!("pick: {name} (8 endpoints)"), |b| {
            b.iter(|| black_box(pool.pick(client, &headers, &[]).unwrap()))
        });
    }
    let no_headers = HeaderMap::new();
    c.bench_function("route: 21 routes, host + path prefix, 12th matches", |b| {
        b.iter(|| {
            black_box(snapshot.router.find(&RouteRequest {
                host: black_box("svc3.example.com"),
                path: black_box("/api/v11/orders/42"),
                method: &Method::GET,
                headers: &no_headers,
                query: None,
                client,
            }))
        })
    });
}

/// 100 routes of every rule kind, in blocks of ten (host + prefix, exact path, path
/// regex, method, header value, header regex, query parameter, cookie, client block,
/// split), each on its own host so that the request below passes over the first 95.
fn mixed_routes_text() -> String {
    let mut text = String::from("[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n");
    for i in 0..100 {
        let rule = match i / 10 {
            0 => format!("path_prefix = \"/api/v{i}\""),
            1 => format!("path = \"/exact/{i}\""),
            2 => format!("path_regex = \"/items/[0-9]+/v{i}\""),
            3 => "methods = [\"PUT\", \"PATCH\"]".to_owned(),
            4 => format!("headers = [{{ name = \"x-canary\", value = \"{i}\" }}]"),
            5 => "headers = [{ name = \"x-user\", regex = \"beta-[a-z]+\" }]".to_owned(),
            6 => format!("query = [{{ name = \"version\", value = \"{i}\" }}]"),
            7 => format!("cookies = [{{ name = \"tier\", value = \"t{i}\" }}]"),
            8 => format!("clients = [\"10.{i}.0.0/16\"]"),
            _ => "pools = [{ pool = \"round_robin\", weight = 95 }, { pool = \"weighted\", weight = 5 }]\nsticky = \"header:x-user-id\"".to_owned(),
        };
        let pool = if i / 10 == 9 {
            ""
        } else {
            "pool = \"round_robin\"\n"
        };
        text += &format!(
            "\n[[routes]]\nname = \"m{i}\"\nhost = \"svc{i}.example.com\"\n{rule}\n{pool}"
        );
    }
    for strategy in ["round_robin", "weighted"] {
        text += &format!(
            "\n[pools.{strategy}]\nstrategy = \"{strategy}\"\nendpoints = [{{ address = \"127.0.0.1:20000\" }}]\n"
        );
    }
    text
}

fn route_rules(c: &mut Criterion) {
    let config = config::load_str(&mixed_routes_text(), Path::new("bench.toml")).unwrap();
    let snapshot = Snapshot::build(&config, &Default::default(), None);
    let mut headers = HeaderMap::new();
    headers.insert("x-user-id", HeaderValue::from_static("user-4711"));
    headers.insert("x-canary", HeaderValue::from_static("1"));
    headers.insert("cookie", HeaderValue::from_static("session=abc; tier=t3"));
    let client = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let request = |host: &'static str, path: &'static str| RouteRequest {
        host,
        path,
        method: &Method::GET,
        headers: &headers,
        query: Some("page=2&version=1"),
        client,
    };
    c.bench_function(
        "route: 100 mixed routes, a header-regex route (55th) matches",
        |b| {
            let req = request("svc55.example.com", "/anything");
            b.iter(|| black_box(snapshot.router.find(black_box(&req))))
        },
    );
    c.bench_function(
        "route: 100 mixed routes, a sticky split (96th) matches and picks",
        |b| {
            let req = request("svc96.example.com", "/anything");
            b.iter(|| {
                let route = snapshot.router.find(black_box(&req)).unwrap();
                match &route.action {
                    Action::Forward(split) => black_box(split.pick(client, &headers)).1.name.len(),
                    _ => 0,
                }
            })
        },
    );
    c.bench_function("route: 100 mixed routes, none matches", |b| {
        let req = request("nowhere.example.com", "/anything");
        b.iter(|| black_box(snapshot.router.find(black_box(&req))))
    });
}

fn headers(c: &mut Criterion) {
    let policy = HeaderPolicy::from_config(&HeadersConfig::default());
    let mut request = HeaderMap::new();
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "203.0.113.9"),
        ("authorization", "Bearer 0123456789abcdef"),
        ("cookie", "session=abc; theme=dark"),
    ] {
        request.insert(name, HeaderValue::from_static(value));
    }
    let client = ClientAddress::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
    c.bench_function(
        "headers: hop-by-hop, X-Forwarded-*, Via on 8 headers",
        |b| {
            b.iter_batched_ref(
                || request.clone(),
                |headers| {
                    strip_hop_by_hop(headers);
                    policy.add_forwarding(
                        headers,
                        (&client).into(),
                        "http",
                        Some("api.example.com"),
                    );
                    policy.add_via(headers, Version::HTTP_11);
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
    let spec = KeySpec::from_config(&RouteCacheConfig::default());
    c.bench_function("cache key: host + path + query", |b| {
        b.iter(|| {
            black_box(spec.primary(
                black_box("api.example.com"),
                black_box("/api/items/42"),
                Some("page=2&sort=asc"),
                &request,
            ))
        })
    });
}

criterion_group!(benches, balancers, route_rules, headers);
criterion_main!(benches);
