//! linkerd's slow-backend experiment on loopback: four upstreams answering in ~5 ms, one of
//! them slowed to 1 s for the middle third of the run, under a constant arrival rate.
//! Latency is measured from each request's scheduled start (open model: no coordinated
//! omission). Prints p50/p99/p99.9/max, the count of requests ≥ 500 ms and ≥ 1 s per
//! strategy, and the share of the last third's requests the once-slow endpoint answered
//! (after it recovered; a fair share is 25 %), and the largest share of the run any one
//! endpoint answered.
//!
//! Run: `cargo bench --bench slow_backend`; WEIR_BENCH_SECONDS and WEIR_BENCH_RATE change
//! the run, WEIR_BENCH_SLOW=all keeps the endpoint slow for the whole run,
//! WEIR_BENCH_SLOW=none keeps every endpoint fast (the `max share` column then shows how
//! evenly equal endpoints share the load; fair is 25 %), WEIR_BENCH_HANG=1 makes it hang (each request held 10 s) instead of slow, and
//! WEIR_BENCH_POOL adds pool settings (e.g. `retry = { per_try_timeout = "300ms" }`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Response;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// An upstream answering after `delay_ms`, naming itself in `x-endpoint`.
async fn upstream(index: usize, delay_ms: Arc<AtomicU64>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let delay_ms = delay_ms.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let delay = Duration::from_millis(delay_ms.load(Relaxed));
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                        response
                            .headers_mut()
                            .insert("x-endpoint", http::HeaderValue::from(index));
                        Ok::<_, Infallible>(response)
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

struct Result {
    strategy: String,
    latency: Histogram<u64>,
    slow: u64,
    over_a_second: u64,
    /// Share of the last third's requests the once-slow endpoint answered (fair: 25 %).
    recovered_share: f64,
    /// The largest share of all answered requests one endpoint answered (fair: 25 %).
    max_share: f64,
    failed: u64,
}

/// One run's shape.
#[derive(Clone)]
struct Plan {
    seconds: u64,
    rate: u64,
    slow_all_run: bool,
    /// No endpoint is ever slow (fairness among equals).
    none_slow: bool,
    /// The slow endpoint's delay in ms while slow (1 000, or 10 000 for a hang).
    slow_ms: u64,
    pool_extra: String,
}

async fn run(strategy: &str, plan: &Plan) -> Result {
    let Plan {
        seconds,
        rate,
        slow_all_run,
        none_slow,
        slow_ms,
        ..
    } = *plan;
    let delays: Vec<Arc<AtomicU64>> = (0..4).map(|_| Arc::new(AtomicU64::new(5))).collect();
    let mut addrs = Vec::new();
    for (index, d) in delays.iter().enumerate() {
        addrs.push(upstream(index, d.clone()).await);
    }
    let endpoints: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    let config = format!(
        "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n[[routes]]\npool = \"p\"\n\
         [pools.p]\nstrategy = \"{strategy}\"\nendpoints = [{}]\nresponse_timeout = \"10s\"\n{}\n{}\n",
        endpoints.join(", "),
        // Requests carry one of 10 000 user keys: the ring's balance, not one client's.
        if strategy == "consistent_hash" {
            "hash = { key = \"header:x-user\" }"
        } else {
            ""
        },
        plan.pool_extra
    );
    let config = weir::config::load_str(&config, Path::new("bench")).unwrap();
    let weir = weir::app::start(&config).await.unwrap();
    let proxy = weir.listener_addr("http").unwrap();
    let uri: http::Uri = format!("http://{proxy}/").parse().unwrap();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let failed = Arc::new(AtomicU64::new(0));
    let recovered_hits = Arc::new(AtomicU64::new(0));
    let hits: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let total = seconds * rate;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        // One endpoint is slow for the middle third of the run (or all of it).
        let third = total / 3;
        let slow = !none_slow && (slow_all_run || (third..2 * third).contains(&i));
        delays[0].store(if slow { slow_ms } else { 5 }, Relaxed);
        tokio::time::sleep_until(scheduled).await;
        let (client, uri, histogram, failed, recovered_hits, hits) = (
            client.clone(),
            uri.clone(),
            histogram.clone(),
            failed.clone(),
            recovered_hits.clone(),
            hits.clone(),
        );
        let after_recovery = !slow_all_run && i >= 2 * third;
        tasks.spawn(async move {
            let request = http::Request::get(uri)
                .header("x-user", i % 10_000)
                .body(Empty::new())
                .unwrap();
            let ok = match tokio::time::timeout(Duration::from_secs(15), client.request(request))
                .await
            {
                Ok(Ok(response)) => {
                    let ok = response.status().is_success();
                    let endpoint = response
                        .headers()
                        .get("x-endpoint")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<usize>().ok());
                    if let Some(hit) = endpoint.and_then(|index| hits.get(index)) {
                        hit.fetch_add(1, Relaxed);
                    }
                    if after_recovery
                        && response.headers().get("x-endpoint").map(|v| v.as_bytes()) == Some(b"0")
                    {
                        recovered_hits.fetch_add(1, Relaxed);
                    }
                    let _ = response.into_body().collect().await;
                    ok
                }
                _ => false,
            };
            if ok {
                let micros = scheduled.elapsed().as_micros() as u64;
                let _ = histogram
                    .lock()
                    .unwrap()
                    .record(micros.clamp(1, 60_000_000));
            } else {
                failed.fetch_add(1, Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    weir.shutdown().await;
    let latency = histogram.lock().unwrap().clone();
    let slow = latency.count_between(500_000, 60_000_000);
    let over_a_second = latency.count_between(1_000_000, 60_000_000);
    let last_third = total - 2 * (total / 3);
    let answered: u64 = hits.iter().map(|h| h.load(Relaxed)).sum();
    let most = hits.iter().map(|h| h.load(Relaxed)).max().unwrap_or(0);
    Result {
        strategy: strategy.to_owned(),
        max_share: most as f64 / answered.max(1) as f64,
        latency,
        slow,
        over_a_second,
        recovered_share: recovered_hits.load(Relaxed) as f64 / last_third.max(1) as f64,
        failed: failed.load(Relaxed),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "slow_backend: a benchmark, not a test; run it with `cargo bench --bench slow_backend`"
        );
        return;
    }
    let seconds: u64 = std::env::var("WEIR_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let rate: u64 = std::env::var("WEIR_BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let hang = std::env::var("WEIR_BENCH_HANG").is_ok_and(|v| v == "1");
    let plan = Plan {
        seconds,
        rate,
        slow_all_run: std::env::var("WEIR_BENCH_SLOW").is_ok_and(|v| v == "all"),
        none_slow: std::env::var("WEIR_BENCH_SLOW").is_ok_and(|v| v == "none"),
        slow_ms: if hang { 10_000 } else { 1000 },
        pool_extra: std::env::var("WEIR_BENCH_POOL").unwrap_or_default(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "slow backend: 4 upstreams at 5 ms, one {} for {}; {rate} req/s for {seconds} s ({} requests){}\n",
        if hang { "hanging (10 s)" } else { "at 1 s" },
        if plan.none_slow {
            "none of the run"
        } else if plan.slow_all_run {
            "the whole run"
        } else {
            "the middle third"
        },
        seconds * rate,
        if plan.pool_extra.is_empty() {
            String::new()
        } else {
            format!("; pool: {}", plan.pool_extra)
        }
    );
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7} {:>10} {:>10}",
        "strategy",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        ">=500 ms",
        ">=1 s",
        "failed",
        "recovered",
        "max share"
    );
    let strategies = std::env::var("WEIR_BENCH_STRATEGIES").unwrap_or_else(|_| {
        "round_robin,weighted,least_connections,score,consistent_hash".to_owned()
    });
    for strategy in strategies.split(',').map(str::trim) {
        let r = runtime.block_on(run(strategy, &plan));
        let ms = |q: f64| r.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<18} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>9} {:>7} {:>9.1}% {:>9.1}%",
            r.strategy,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            r.latency.max() as f64 / 1000.0,
            r.slow,
            r.over_a_second,
            r.failed,
            r.recovered_share * 100.0,
            r.max_share * 100.0
        );
    }
}
