//! Per-request work on the hot path, without the network: endpoint pick per balancing
//! strategy (8 endpoints), route matching (20 routes), request header rewriting, and the
//! cache key. `cargo bench --bench hot_path`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Version};
use weir::cache::key::KeySpec;
use weir::config::{self, HeadersConfig, RouteCacheConfig};
use weir::proxy::Snapshot;
use weir::proxy::headers::{ClientAddress, HeaderPolicy, strip_hop_by_hop};

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
    c.bench_function("route: 21 routes, host + path prefix, 12th matches", |b| {
        b.iter(|| {
            black_box(snapshot.router.find(
                black_box("svc3.example.com"),
                black_box("/api/v11/orders/42"),
            ))
        })
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

criterion_group!(benches, balancers, headers);
criterion_main!(benches);
