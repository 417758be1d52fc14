//! #25's end-to-end check: weir in a dry run in front of upstreams of exactly known
//! capacity, under open-model load that follows a profile, scored every second against the
//! right count, beside a Kubernetes-HPA-style recommender fed the same signal.
//!
//! Each upstream serves at most C = 4 requests at once (a FIFO semaphore) for S ms, so the
//! right count is ⌈λ·S / (C·0.7)⌉ with a target of 2.8 in flight per instance. weir runs
//! with `interval = 1s`, `signal_window = 3s`, `scale_down_window = 15s`, cooldowns 0, dry
//! run; every second the bench reads weir's last decision (its desired count, and the
//! in-flight signal it decided from, which the reference then decides from too).
//!
//! Run: `cargo bench --bench autoscale_e2e` (both profiles, about 8 minutes);
//! WEIR_BENCH_PROFILE=steps or =spike runs one; WEIR_BENCH_SEED picks the Poisson seed.
//! Loopback only; every profile is bounded in time (at most ~1 200 req/s).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use weir::control::evaluate::{
    self, DOWN_WINDOW_S, HpaReference, Profile, SIGNAL_WINDOW_S, SLOTS, Score, TARGET_IN_FLIGHT,
    TOLERANCE, profiles,
};

/// An upstream with `SLOTS` slots (FIFO) that holds each request `service_ms`.
async fn upstream(service_ms: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slots = Arc::new(Semaphore::new(SLOTS));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (service_ms, slots) = (Arc::clone(&service_ms), Arc::clone(&slots));
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let (service_ms, slots) = (Arc::clone(&service_ms), Arc::clone(&slots));
                    async move {
                        let _slot = slots.acquire().await;
                        let hold = Duration::from_millis(service_ms.load(Relaxed));
                        tokio::time::sleep(hold).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn config(endpoints: &[SocketAddr]) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[routes]]
pool = "api"

[pools.api]
endpoints = [{}]
response_timeout = "30s"

[control]
interval = "1s"

[[control.autoscale]]
pool = "api"
min_instances = 1
max_instances = 40
target_in_flight = {TARGET_IN_FLIGHT}
tolerance = {TOLERANCE}
signal_window = "{SIGNAL_WINDOW_S}s"
scale_down_window = "{DOWN_WINDOW_S}s"
scale_up_cooldown = "0s"
scale_down_cooldown = "0s"
dry_run = true
"#,
        list.join(", ")
    )
}

/// Arrival offsets (ms from the start) for the whole profile.
fn arrivals(profile: &Profile, seed: u64) -> Vec<f64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let end_ms = profile.seconds as f64 * 1000.0;
    let mut out = Vec::new();
    let mut t = 0.0f64;
    loop {
        let rate = (profile.rate)(t / 1000.0).max(1e-6);
        t += if profile.poisson {
            -(1.0 - rng.f64()).ln() / rate * 1000.0
        } else {
            1000.0 / rate
        };
        if t >= end_ms {
            return out;
        }
        out.push(t);
    }
}

async fn run(profile: &Profile, seed: u64) -> (Score, Score, u64) {
    let service_ms = Arc::new(AtomicU64::new((profile.service_ms)(0.0) as u64));
    let mut endpoints = Vec::new();
    for _ in 0..profile.instances {
        endpoints.push(upstream(Arc::clone(&service_ms)).await);
    }
    let config = weir::config::load_str(&config(&endpoints), Path::new("autoscale_e2e")).unwrap();
    let weir = weir::app::start(&config).await.unwrap();
    let proxy = weir.listener_addr("http").unwrap();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    let failed = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();

    let load = {
        let (client, failed) = (client.clone(), Arc::clone(&failed));
        let times = arrivals(profile, seed);
        tokio::spawn(async move {
            let uri: http::Uri = format!("http://{proxy}/").parse().unwrap();
            for at in times {
                tokio::time::sleep_until(start + Duration::from_micros((at * 1000.0) as u64)).await;
                let (client, failed, uri) = (client.clone(), Arc::clone(&failed), uri.clone());
                tokio::spawn(async move {
                    let answered = tokio::time::timeout(Duration::from_secs(30), async {
                        let response = client.get(uri).await.ok()?;
                        let ok = response.status().is_success();
                        response.into_body().collect().await.ok()?;
                        ok.then_some(())
                    })
                    .await;
                    if !matches!(answered, Ok(Some(()))) {
                        failed.fetch_add(1, Relaxed);
                    }
                });
            }
        })
    };

    let control = Arc::clone(weir.supervisor().control());
    let real = profile.instances as u32;
    let mut reference = HpaReference::new(real, TARGET_IN_FLIGHT, TOLERANCE, DOWN_WINDOW_S);
    let (mut weir_counts, mut reference_counts, mut right) = (Vec::new(), Vec::new(), Vec::new());
    let (mut last_seq, mut weir_count, mut reference_count) = (0u64, real, real);
    for second in 1..=profile.seconds {
        let t = second as f64 - 0.5;
        service_ms.store((profile.service_ms)(t) as u64, Relaxed);
        tokio::time::sleep_until(start + Duration::from_millis(second * 1000)).await;
        if let Some(last) = control
            .scaling("api", 1)
            .and_then(|s| s.get("last").cloned())
        {
            let seq = last["seq"].as_u64().unwrap_or(0);
            if seq != last_seq {
                last_seq = seq;
                weir_count = last["desired"].as_u64().unwrap_or(u64::from(real)) as u32;
                let in_flight = last["signals"]["in_flight"].as_f64().unwrap_or(0.0);
                reference_count = reference.decide(second, in_flight);
            }
        }
        weir_counts.push(weir_count);
        reference_counts.push(reference_count);
        right.push(profile.right_count(t));
    }
    let _ = load.await;
    weir.shutdown().await;
    (
        evaluate::score(&weir_counts, &right, DOWN_WINDOW_S as usize),
        evaluate::score(&reference_counts, &right, DOWN_WINDOW_S as usize),
        failed.load(Relaxed),
    )
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too: eight minutes of load is not a test.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "autoscale_e2e: a benchmark, not a test; run it with `cargo bench --bench autoscale_e2e`"
        );
        return;
    }
    let only = std::env::var("WEIR_BENCH_PROFILE").ok();
    let seed: u64 = std::env::var("WEIR_BENCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for profile in profiles() {
        if only.as_deref().is_some_and(|key| key != profile.key) {
            continue;
        }
        let (weir, reference, failed) = runtime.block_on(run(&profile, seed));
        println!("{} (seed {seed}, {failed} requests failed)", profile.name);
        print!("{}", evaluate::table(&weir, &reference));
    }
}
