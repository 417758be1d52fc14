//! The cache's hit paths without the network: L1 lookup + reuse decision + served head
//! (what a memory hit costs beyond HTTP parsing), and an L2 lookup against a real
//! redis-server on loopback (skipped when redis-server is not installed).
//! `cargo bench --bench cache_hit`

use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, StatusCode};
use weir::cache::policy::{self, Lifetimes, PolicyRequest, Reuse};
use weir::cache::{Cache, RouteCache};
use weir::config::{CacheConfig, RedisConfig};

fn stored_response(request: &HeaderMap) -> weir::cache::object::StoredResponse {
    let mut response = HeaderMap::new();
    response.insert("cache-control", "max-age=3600".parse().unwrap());
    response.insert("content-type", "application/json".parse().unwrap());
    response.insert("etag", "\"v1\"".parse().unwrap());
    let view = PolicyRequest {
        method: &Method::GET,
        target: "/api/items/1".parse().unwrap(),
        headers: request,
    };
    let lifetimes = Lifetimes {
        keep_stale: Duration::from_secs(600),
        heuristic: 0.1,
        ..Lifetimes::default()
    };
    let mut stored = policy::storable(
        &view,
        StatusCode::OK,
        &response,
        SystemTime::now(),
        &lifetimes,
    )
    .unwrap();
    stored.body = bytes::Bytes::from(vec![b'x'; 1024]);
    stored
}

fn hit_paths(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut request = HeaderMap::new();
    request.insert("host", "api.example".parse().unwrap());
    request.insert("accept", "*/*".parse().unwrap());
    let config = CacheConfig {
        enabled: true,
        ..CacheConfig::default()
    };
    let route = RouteCache::from_config(&config, None).unwrap();
    let key = route
        .key
        .primary("api.example", "/api/items/1", None, &request);

    let memory = runtime.block_on(async { Cache::new(&config, None) });
    runtime.block_on(memory.store(&route, &key, &request, stored_response(&request)));
    c.bench_function("l1_hit: key + lookup + reuse + served head (1 KiB)", |b| {
        b.to_async(&runtime).iter(|| async {
            let key = route
                .key
                .primary("api.example", "/api/items/1", None, &request);
            let (stored, _) = memory.lookup(&route, &key, &request).await.unwrap();
            let view = PolicyRequest {
                method: &Method::GET,
                target: "/api/items/1".parse().unwrap(),
                headers: &request,
            };
            let now = SystemTime::now();
            assert!(matches!(policy::reuse(&stored, &view, now), Reuse::Fresh));
            policy::served_headers(&stored, now, http::HeaderValue::from_static("weir-l1; hit"))
        })
    });

    let Some(redis) = RedisProcess::start() else {
        eprintln!("redis-server not found: L2 benchmark skipped");
        return;
    };
    let redis_config = RedisConfig {
        url: Some(format!("redis://127.0.0.1:{}", redis.port)),
        cluster_nodes: Vec::new(),
        timeout: Duration::from_millis(500),
        key_prefix: "bench".into(),
    };
    let l2_only = RouteCache {
        memory: false,
        ..route.clone()
    };
    let shared = runtime.block_on(async {
        Cache::new(
            &config,
            weir::cache::redis::RedisTier::shared(Some(&redis_config), None),
        )
    });
    runtime.block_on(shared.store(&l2_only, &key, &request, stored_response(&request)));
    c.bench_function("l2_hit: Redis GET + decode (1 KiB, loopback)", |b| {
        b.to_async(&runtime).iter(|| async {
            let found = shared.lookup(&l2_only, &key, &request).await;
            assert!(found.is_some());
            found
        })
    });
    drop(redis);
}

struct RedisProcess {
    port: u16,
    child: std::process::Child,
}

impl RedisProcess {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self { port, child });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hit_paths
}
criterion_main!(benches);
