//! Trace export: the spans the data plane records (request, upstream attempts, cache
//! lookups) and the bounded queue they wait in. The proxy only records plain
//! [`SpanRecord`]s; [`otlp`] turns them into OpenTelemetry spans and sends them, off the
//! request path. A full queue drops the span and counts it: a slow or absent collector
//! never makes a request wait.
//!
//! May import: `config`, `tls` (the collector's trust roots); never `proxy`, `upstream`, `cache`, `admin`, `app` or `control`.

pub mod otlp;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use crate::config::TraceExportConfig;

/// What a span stands for, as OpenTelemetry's `SpanKind` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The client's request to weir.
    Server,
    /// One attempt to an upstream endpoint.
    Client,
    /// Work inside weir (a cache lookup).
    Internal,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Text(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for AttributeValue {
    fn from(value: &'static str) -> Self {
        AttributeValue::Text(Cow::Borrowed(value))
    }
}

impl From<String> for AttributeValue {
    fn from(value: String) -> Self {
        AttributeValue::Text(Cow::Owned(value))
    }
}

impl From<bool> for AttributeValue {
    fn from(value: bool) -> Self {
        AttributeValue::Bool(value)
    }
}

impl From<i64> for AttributeValue {
    fn from(value: i64) -> Self {
        AttributeValue::Int(value)
    }
}

/// A finished span, ids as the lowercase hex `traceparent` carries them (converted off the
/// request path).
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 32],
    pub span_id: [u8; 16],
    /// The parent span: the client's (remote) for the request span, weir's request span
    /// for the others.
    pub parent_id: Option<[u8; 16]>,
    pub parent_is_remote: bool,
    pub kind: SpanKind,
    pub name: Cow<'static, str>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// Set when the span ended in error: its description.
    pub error: Option<String>,
}

/// Export counters, for metrics.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans in export requests that failed (collector down, refused, timed out).
    pub dropped_export_failed: AtomicU64,
}

/// Where the data plane hands its spans; shared by every snapshot with the same settings.
#[derive(Debug)]
pub struct Tracer {
    queue: mpsc::Sender<SpanRecord>,
    /// Asks the exporter to send everything queued now; it answers when it has.
    flushes: mpsc::UnboundedSender<oneshot::Sender<()>>,
    pub config: TraceExportConfig,
    pub stats: Arc<ExportStats>,
}

/// The exporter's ends of a tracer's channels.
#[derive(Debug)]
pub struct ExportQueue {
    pub spans: mpsc::Receiver<SpanRecord>,
    pub flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
}

impl Tracer {
    /// A tracer whose spans wait in a queue of `config.queue_spans`; `receiver` is the other
    /// end, for the exporter.
    pub fn new(config: TraceExportConfig, stats: Arc<ExportStats>) -> (Self, ExportQueue) {
        let (queue, spans) = mpsc::channel(config.queue_spans.max(1));
        let (flush_requests, flushes) = mpsc::unbounded_channel();
        (
            Self {
                queue,
                flushes: flush_requests,
                config,
                stats,
            },
            ExportQueue { spans, flushes },
        )
    }

    /// Sends every queued span now and waits for the exporter (at most `limit`): at
    /// shutdown, so that the last requests' spans are not lost with the process.
    pub async fn flush(&self, limit: std::time::Duration) {
        let (done, answered) = oneshot::channel();
        if self.flushes.send(done).is_ok() {
            let _ = tokio::time::timeout(limit, answered).await;
        }
    }

    /// Queues a finished span, or drops and counts it when the queue is full.
    pub fn record(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.stats.dropped_queue_full.fetch_add(1, Relaxed);
        }
    }

    /// Whether a trace weir starts is recorded.
    pub fn sample_new_trace(&self) -> bool {
        let ratio = self.config.sample_ratio;
        ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio)
    }
}
