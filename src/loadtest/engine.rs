//! Connections and the two loops. The closed loop runs one task per connection, each
//! sending its next request when the last one is answered. The open loop schedules
//! starts at the plan's rate and hands each to an idle connection, so a slow server
//! delays requests but never the schedule: latency counts from the scheduled time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{HOST, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::plan::{Model, Plan};
use super::{LoadError, LoadReport, Slot};

/// Timeline slots at most; longer runs widen each slot.
const MAX_SLOTS: usize = 3600;
/// In-flight requests get at most this long after the run's end to finish.
const MAX_DRAIN: Duration = Duration::from_secs(10);
/// HTTP/2: requests multiplexed on one connection before another is opened.
const STREAMS_PER_CONNECTION: usize = 64;

/// How progress is shown while the run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Silent,
    /// A bar on a terminal, a line every 5 s otherwise (on stderr).
    Show,
}

pub fn new_histogram(significant_digits: u8) -> Histogram<u64> {
    // 1 µs .. 5 min.
    Histogram::new_with_bounds(1, 300_000_000, significant_digits)
        .expect("constant histogram bounds are valid")
}

struct SlotStats {
    latency: Histogram<u64>,
    completed: u64,
    errors: u64,
    statuses: BTreeMap<u16, u64>,
    error_kinds: BTreeMap<String, u64>,
}

/// Everything recorded; behind one mutex, which is uncontended on the single-threaded
/// runtime `weir loadtest` uses and cheap enough otherwise.
struct Recorder {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    body_bytes: u64,
    slots: Vec<SlotStats>,
    slot_width: Duration,
}

impl Recorder {
    fn new(duration: Duration) -> Self {
        let slot_width =
            Duration::from_secs((duration.as_secs().div_ceil(MAX_SLOTS as u64)).max(1));
        Self {
            latency: new_histogram(3),
            service: new_histogram(3),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            body_bytes: 0,
            slots: Vec::new(),
            slot_width,
        }
    }

    fn slot(&mut self, at: Duration) -> &mut SlotStats {
        let index = (at.as_secs() / self.slot_width.as_secs()) as usize;
        while self.slots.len() <= index {
            self.slots.push(SlotStats {
                latency: new_histogram(1),
                completed: 0,
                errors: 0,
                statuses: BTreeMap::new(),
                error_kinds: BTreeMap::new(),
            });
        }
        &mut self.slots[index]
    }

    fn answered(
        &mut self,
        at: Duration,
        status: u16,
        bytes: u64,
        latency_us: u64,
        service_us: u64,
    ) {
        let latency_us = latency_us.clamp(1, 300_000_000);
        let _ = self.latency.record(latency_us);
        let _ = self.service.record(service_us.clamp(1, 300_000_000));
        *self.statuses.entry(status).or_default() += 1;
        self.body_bytes += bytes;
        let slot = self.slot(at);
        slot.completed += 1;
        if status >= 500 {
            slot.errors += 1;
        }
        *slot.statuses.entry(status).or_default() += 1;
        let _ = slot.latency.record(latency_us);
    }

    fn failed(&mut self, at: Duration, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        let slot = self.slot(at);
        slot.errors += 1;
        *slot.error_kinds.entry(kind.to_owned()).or_default() += 1;
    }
}

/// An HTTP/2 connection shared by many concurrent streams (open model).
type SharedH2 = tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>;

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// Where connections go and how they are secured.
struct Endpoint {
    /// `host:port`, dialled for each new connection.
    authority: String,
    /// `https://` targets: the client config and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    http2: bool,
}

impl Endpoint {
    async fn connect(&self) -> Result<Conn, &'static str> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|_| "connect")?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => handshake(TokioIo::new(stream), self.http2).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|_| "tls handshake")?;
                handshake(TokioIo::new(stream), self.http2).await
            }
        }
    }
}

async fn handshake<I>(io: TokioIo<I>, http2: bool) -> Result<Conn, &'static str>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if http2 {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|_| "handshake")?;
        tokio::spawn(connection);
        Ok(Conn::H2(sender))
    } else {
        let (sender, connection) = http1::handshake(io).await.map_err(|_| "handshake")?;
        tokio::spawn(connection);
        Ok(Conn::H1(sender))
    }
}

/// Sends request `n` on `conn` (connecting first when needed); returns status and body
/// bytes.
async fn send(
    conn: &mut Option<Conn>,
    shared: &Shared,
    n: u64,
) -> Result<(u16, u64), &'static str> {
    let usable = match conn {
        Some(Conn::H1(s)) => !s.is_closed(),
        Some(Conn::H2(s)) => !s.is_closed(),
        None => false,
    };
    if !usable {
        *conn = Some(shared.endpoint.connect().await?);
    }
    let spec = &shared.plan.request;
    let mut request = Request::new(Full::new(spec.body.clone()));
    *request.method_mut() = spec.method.clone();
    *request.uri_mut() = shared.uris[(n % shared.uris.len() as u64) as usize].clone();
    *request.headers_mut() = spec.headers.clone();
    if shared.endpoint.http2 {
        // The authority travels in the URI (`:authority`), not as a Host header.
        request.headers_mut().remove(HOST);
    } else if !request.headers().contains_key(HOST) {
        request.headers_mut().insert(HOST, shared.host.clone());
    }
    let response = match conn.as_mut() {
        Some(Conn::H1(s)) => {
            s.ready().await.map_err(|_| "connection closed")?;
            s.send_request(request).await
        }
        Some(Conn::H2(s)) => {
            s.ready().await.map_err(|_| "connection closed")?;
            s.send_request(request).await
        }
        None => return Err("connect"),
    }
    .map_err(|_| "request failed")?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "body read failed")?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
        }
    }
    Ok((status, bytes))
}

struct Shared {
    plan: Plan,
    endpoint: Endpoint,
    /// Request targets, cycled through: origin-form (`/path?q`) for HTTP/1.1, absolute for
    /// HTTP/2.
    uris: Vec<Uri>,
    /// `Host` for HTTP/1.1 requests whose spec sets none.
    host: HeaderValue,
    started: Instant,
    ends: Instant,
    next: AtomicU64,
    stop: AtomicBool,
    recorder: Mutex<Recorder>,
    late: AtomicU64,
    /// Requests sent and not yet answered (cut ones count as `deadline` failures).
    in_flight: AtomicU64,
}

impl Shared {
    fn recorder(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.recorder.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the next request number, or `None` when the run is over.
    fn claim(&self) -> Option<u64> {
        if self.stop.load(Relaxed) || Instant::now() >= self.ends {
            return None;
        }
        let n = self.next.fetch_add(1, Relaxed);
        (n < self.plan.max_requests).then_some(n)
    }

    /// One request: send, time, record. `scheduled` is when it should have started.
    /// Returns false when the server could not be reached at all.
    async fn one(&self, conn: &mut Option<Conn>, n: u64, scheduled: Instant) -> bool {
        self.in_flight.fetch_add(1, Relaxed);
        let sent = Instant::now();
        let outcome = tokio::time::timeout(self.plan.timeout, send(conn, self, n)).await;
        let done = Instant::now();
        let at = done.saturating_duration_since(self.started);
        let reached = !matches!(outcome, Ok(Err("connect")));
        match outcome {
            Ok(Ok((status, bytes))) => {
                let latency = done.saturating_duration_since(scheduled).as_micros() as u64;
                let service = done.saturating_duration_since(sent).as_micros() as u64;
                self.recorder()
                    .answered(at, status, bytes, latency, service);
            }
            Ok(Err(kind)) => {
                *conn = None;
                self.recorder().failed(at, kind);
            }
            Err(_) => {
                *conn = None;
                self.recorder().failed(at, "timeout");
            }
        }
        self.in_flight.fetch_sub(1, Relaxed);
        reached
    }
}

pub async fn execute(plan: &Plan, progress: Progress) -> Result<LoadReport, LoadError> {
    plan.validate()?;
    let first = &plan.targets[0];
    let target = first
        .authority()
        .ok_or_else(|| LoadError::NoAuthority(first.clone()))?;
    let https = first.scheme_str() == Some("https");
    let port = target.port_u16().unwrap_or(if https { 443 } else { 80 });
    // A Host header in the spec names the virtual host: it is the HTTP/2 authority and the
    // TLS server name too.
    let host = plan.request.host(target.as_str()).to_owned();
    let invalid = |m: String| LoadError::Plan(super::plan::PlanError::Invalid(m));
    let host_value =
        HeaderValue::from_str(&host).map_err(|_| invalid(format!("{host:?}: invalid Host")))?;
    let tls = if https {
        let config = plan.tls.client_config(plan.http2)?;
        // The host without its port; an IPv6 literal without its brackets.
        let authority = host
            .parse::<http::uri::Authority>()
            .map_err(|_| invalid(format!("{host:?}: invalid host")))?;
        let name = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| invalid(format!("{name:?} is not a TLS server name")))?;
        Some((TlsConnector::from(config), name))
    } else {
        None
    };
    let uris = plan
        .targets
        .iter()
        .map(|u| {
            let path = u.path_and_query().map_or("/", |p| p.as_str());
            let uri = if plan.http2 {
                format!("{}://{host}{path}", first.scheme_str().unwrap_or("http"))
            } else {
                path.to_owned()
            };
            uri.parse::<Uri>().map_err(|e| invalid(format!("{u}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        endpoint: Endpoint {
            authority: format!("{}:{port}", target.host()),
            tls,
            http2: plan.http2,
        },
        uris,
        host: host_value,
        started,
        ends: started + plan.duration(),
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        recorder: Mutex::new(Recorder::new(plan.duration())),
        late: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
    });
    let reporter = match progress {
        Progress::Show => Some(tokio::spawn(super::output::progress(shared.clone_view()))),
        Progress::Silent => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    match plan.model {
        Model::Closed => {
            for index in 0..plan.peak_target().ceil() as usize {
                tasks.spawn(closed_worker(Arc::clone(&shared), index));
            }
        }
        Model::Open => {
            tasks.spawn(open_dispatcher(Arc::clone(&shared)));
        }
    }
    // Past the end, what is still in flight gets a bounded grace period.
    let drain = plan.timeout.min(MAX_DRAIN);
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout_at(shared.ends + drain, all_done)
        .await
        .is_err()
    {
        shared.stop.store(true, Relaxed);
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let cut = shared.in_flight.swap(0, Relaxed);
        let at = started.elapsed();
        let mut recorder = shared.recorder();
        for _ in 0..cut {
            recorder.failed(at, "deadline");
        }
    }
    let elapsed = started.elapsed();
    shared.stop.store(true, Relaxed);
    if let Some(reporter) = reporter {
        let _ = reporter.await;
    }
    let recorder = std::mem::replace(&mut *shared.recorder(), Recorder::new(Duration::ZERO));
    let slot_s = recorder.slot_width.as_secs_f64();
    let timeline = recorder
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| Slot {
            at_s: i as f64 * slot_s,
            width_s: slot_s,
            completed: s.completed,
            errors: s.errors,
            statuses: s.statuses.clone(),
            error_kinds: s.error_kinds.clone(),
            p50_ms: s.latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99_ms: s.latency.value_at_quantile(0.99) as f64 / 1000.0,
            max_ms: s.latency.max() as f64 / 1000.0,
            target: plan.target_at(Duration::from_secs_f64(i as f64 * slot_s)),
        })
        .collect();
    let mut report = LoadReport {
        sent: 0,
        statuses: recorder.statuses,
        errors: recorder.errors,
        latency: recorder.latency,
        service_latency: (plan.model == Model::Open).then_some(recorder.service),
        elapsed,
        body_bytes: recorder.body_bytes,
        timeline,
        late: shared.late.load(Relaxed),
    };
    report.sent = report.completed() + report.failed();
    Ok(report)
}

/// What the progress reporter reads while the run goes.
pub struct View {
    shared: Arc<Shared>,
}

impl View {
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }
    pub fn duration(&self) -> Duration {
        self.shared.plan.duration()
    }
    pub fn finished(&self) -> bool {
        self.shared.stop.load(Relaxed)
    }
    /// (answered, failed, p99 ms of the last whole slot)
    pub fn counts(&self) -> (u64, u64, f64) {
        let r = self.shared.recorder();
        let answered = r.statuses.values().sum();
        let failed = r.errors.values().sum();
        let n = r.slots.len();
        let p99 = if n >= 2 {
            r.slots[n - 2].latency.value_at_quantile(0.99) as f64 / 1000.0
        } else {
            0.0
        };
        (answered, failed, p99)
    }
}

impl Shared {
    fn clone_view(self: &Arc<Self>) -> Arc<View> {
        Arc::new(View {
            shared: Arc::clone(self),
        })
    }
}

async fn closed_worker(shared: Arc<Shared>, index: usize) {
    let mut conn = None;
    loop {
        let elapsed = shared.started.elapsed();
        if Instant::now() >= shared.ends || shared.stop.load(Relaxed) {
            return;
        }
        // Stages change the number of busy connections: this one waits while idle.
        if index as f64 >= shared.plan.target_at(elapsed).round() {
            conn = None;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let Some(n) = shared.claim() else { return };
        if !shared.one(&mut conn, n, Instant::now()).await {
            // Refused: do not spin a core on a server that is not there.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn open_dispatcher(shared: Arc<Shared>) {
    let slots = if shared.plan.http2 {
        shared
            .plan
            .max_connections
            .div_ceil(STREAMS_PER_CONNECTION)
            .max(1)
    } else {
        shared.plan.max_connections
    };
    // Idle connections come back through this channel; a request waits for one.
    let (idle_tx, mut idle_rx) =
        tokio::sync::mpsc::channel::<Option<Conn>>(shared.plan.max_connections);
    let streams = if shared.plan.http2 {
        STREAMS_PER_CONNECTION
    } else {
        1
    };
    let h2_connections: Arc<Vec<SharedH2>> =
        Arc::new((0..slots).map(|_| tokio::sync::Mutex::new(None)).collect());
    for _ in 0..shared.plan.max_connections {
        let _ = idle_tx.try_send(None);
    }
    let mut scheduled = shared.started;
    // Requests in flight; dropped (and so aborted) with the dispatcher if it is cut.
    let mut requests = tokio::task::JoinSet::new();
    loop {
        while requests.try_join_next().is_some() {}
        let elapsed = scheduled.saturating_duration_since(shared.started);
        let rate = shared.plan.target_at(elapsed);
        if rate <= 0.0 {
            // Nothing to send in this stage: look again shortly.
            scheduled += Duration::from_millis(10);
            if scheduled >= shared.ends {
                break;
            }
            tokio::time::sleep_until(scheduled).await;
            continue;
        }
        if scheduled >= shared.ends {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        let Some(n) = shared.claim() else { break };
        // The timer wakes up to a millisecond late; that is the generator's doing, so such
        // a request counts from when it was sent. A request that had to wait for a busy
        // connection counts from its scheduled time: that wait is the server's doing
        // (the coordinated-omission correction).
        let dispatched = Instant::now().max(scheduled);
        let (mut conn, start) = match idle_rx.try_recv() {
            Ok(conn) => (conn, dispatched),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                shared.late.fetch_add(1, Relaxed);
                let Some(conn) = idle_rx.recv().await else {
                    break;
                };
                (conn, scheduled)
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
        };
        let worker = Arc::clone(&shared);
        let back = idle_tx.clone();
        let h2 = Arc::clone(&h2_connections);
        let at = start;
        requests.spawn(async move {
            if worker.plan.http2 {
                // Streams share a few connections; the slot only bounds concurrency.
                let index = (n as usize / streams.max(1)) % h2.len();
                let sender = h2[index].lock().await.clone();
                let mut stream = sender.map(Conn::H2);
                let _ = worker.one(&mut stream, n, at).await;
                if let Some(Conn::H2(sender)) = stream {
                    *h2[index].lock().await = Some(sender);
                }
            } else {
                let _ = worker.one(&mut conn, n, at).await;
            }
            let _ = back.send(conn).await;
        });
        scheduled += Duration::from_secs_f64(1.0 / rate);
    }
    while requests.join_next().await.is_some() {}
}
