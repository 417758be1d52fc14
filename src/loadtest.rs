//! A bounded closed-loop load generator: N keep-alive connections, each sending its next
//! request when the previous response has been read. Used by the demo; bounded in both
//! request count and time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Requests cycle through these URIs (all must share scheme `http` and one authority).
    pub targets: Vec<Uri>,
    pub requests: u64,
    pub concurrency: usize,
    /// Hard stop even if not all requests were sent.
    pub deadline: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no target URI given")]
    NoTargets,
    #[error("target {0} has no host:port")]
    NoAuthority(Uri),
}

#[derive(Debug)]
pub struct LoadReport {
    pub sent: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Latency in microseconds, request sent to last body byte read.
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
    pub body_bytes: u64,
}

impl LoadReport {
    pub fn completed(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn throughput(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` (0..=1) in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

struct Worker {
    latency: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    body_bytes: u64,
}

pub async fn run(options: LoadOptions) -> Result<LoadReport, LoadError> {
    let first = options.targets.first().ok_or(LoadError::NoTargets)?;
    let authority = first
        .authority()
        .cloned()
        .ok_or_else(|| LoadError::NoAuthority(first.clone()))?;
    let targets: Arc<[Uri]> = options.targets.clone().into();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + options.deadline;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let targets = Arc::clone(&targets);
        let next = Arc::clone(&next);
        let authority = authority.clone();
        let total = options.requests;
        tasks.spawn(async move {
            let mut worker = Worker {
                latency: new_histogram(),
                statuses: BTreeMap::new(),
                errors: BTreeMap::new(),
                body_bytes: 0,
            };
            let mut sender: Option<http1::SendRequest<Empty<Bytes>>> = None;
            loop {
                let n = next.fetch_add(1, Relaxed);
                if n >= total || Instant::now() >= stop_at {
                    break;
                }
                let uri = &targets[(n % targets.len() as u64) as usize];
                let path = uri.path_and_query().map_or("/", |p| p.as_str());
                let outcome = tokio::time::timeout_at(
                    stop_at.into(),
                    one_request(&mut sender, authority.as_str(), path, &mut worker),
                )
                .await;
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(kind)) => {
                        sender = None;
                        *worker.errors.entry(kind).or_default() += 1;
                    }
                    Err(_) => {
                        *worker.errors.entry("deadline".into()).or_default() += 1;
                        break;
                    }
                }
            }
            worker
        });
    }
    let mut report = LoadReport {
        sent: 0,
        statuses: BTreeMap::new(),
        errors: BTreeMap::new(),
        latency: new_histogram(),
        elapsed: Duration::ZERO,
        body_bytes: 0,
    };
    while let Some(joined) = tasks.join_next().await {
        let Ok(worker) = joined else { continue };
        let _ = report.latency.add(&worker.latency);
        for (status, count) in worker.statuses {
            *report.statuses.entry(status).or_default() += count;
        }
        for (kind, count) in worker.errors {
            *report.errors.entry(kind).or_default() += count;
        }
        report.body_bytes += worker.body_bytes;
    }
    report.elapsed = started.elapsed();
    report.sent = report.completed() + report.failed();
    Ok(report)
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

async fn one_request(
    sender: &mut Option<http1::SendRequest<Empty<Bytes>>>,
    authority: &str,
    path: &str,
    worker: &mut Worker,
) -> Result<(), String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|_| "connect".to_owned())?;
        let _ = stream.set_nodelay(true);
        let (new_sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| "handshake".to_owned())?;
        tokio::spawn(connection);
        *sender = Some(new_sender);
    }
    let Some(active) = sender.as_mut() else {
        return Err("connect".into());
    };
    active
        .ready()
        .await
        .map_err(|_| "connection closed".to_owned())?;
    let request = Request::get(path)
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|_| "invalid request".to_owned())?;
    let started = Instant::now();
    let response = active
        .send_request(request)
        .await
        .map_err(|_| "request failed".to_owned())?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "body read failed".to_owned())?;
        if let Some(data) = frame.data_ref() {
            worker.body_bytes += data.len() as u64;
        }
    }
    let micros = started.elapsed().as_micros().clamp(1, 60_000_000) as u64;
    let _ = worker.latency.record(micros);
    *worker.statuses.entry(status).or_default() += 1;
    Ok(())
}
