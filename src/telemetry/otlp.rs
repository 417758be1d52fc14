//! Sends queued spans to an OpenTelemetry collector over OTLP (HTTP/protobuf or gRPC), in
//! batches, from one background task per tracer. Only one export is in flight at a time:
//! while the collector is slow, spans wait in the tracer's queue, and past its size they are
//! dropped (counted by the tracer), never waited for.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};

use super::{AttributeValue, ExportQueue, ExportStats, SpanKind, SpanRecord, Tracer};
use crate::config::{OtlpProtocol, TraceExportConfig};

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("trace export to {endpoint}: {reason}")]
pub struct ExportSetupError {
    endpoint: String,
    reason: String,
}

/// Starts a tracer and its export task. `stats` carries counters over from the tracer this
/// one replaces. Needs a Tokio runtime (`None` without one: nothing could send).
pub fn start(config: &TraceExportConfig, stats: Arc<ExportStats>) -> Option<Arc<Tracer>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (tracer, queue) = Tracer::new(config.clone(), Arc::clone(&stats));
    let config = config.clone();
    runtime.spawn(async move {
        match build_exporter(&config) {
            Ok(exporter) => export_until_closed(exporter, queue, &config, &stats).await,
            Err(error) => {
                tracing::error!(%error, "trace export is off");
            }
        }
    });
    Some(Arc::new(tracer))
}

fn build_exporter(
    config: &TraceExportConfig,
) -> Result<opentelemetry_otlp::SpanExporter, ExportSetupError> {
    let setup_error = |reason: String| ExportSetupError {
        endpoint: config.endpoint.clone(),
        reason,
    };
    let built = match config.protocol {
        OtlpProtocol::HttpProtobuf => {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(crate::tls::ring_client_config(webpki_roots_store()))
                .https_or_http()
                .enable_http1()
                .build();
            let client =
                opentelemetry_http::hyper::HyperClient::new(connector, config.timeout, None);
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .build()
        }
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.timeout)
            .build(),
    };
    let mut exporter = built.map_err(|e| setup_error(e.to_string()))?;
    exporter.set_resource(
        &Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .build(),
    );
    Ok(exporter)
}

fn webpki_roots_store() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// Collects batches (full, or `flush_interval` after their first span) and exports them
/// one at a time until every sender is gone; a flush request sends all that is queued at
/// once and is answered when it has been.
async fn export_until_closed(
    exporter: opentelemetry_otlp::SpanExporter,
    queue: ExportQueue,
    config: &TraceExportConfig,
    stats: &ExportStats,
) {
    let ExportQueue {
        spans: mut queue,
        mut flushes,
    } = queue;
    let batcher = Batcher {
        exporter: &exporter,
        config,
        stats,
        scope: InstrumentationScope::builder("weir")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    };
    let mut batch = Vec::with_capacity(config.batch_spans);
    let mut open = true;
    while open {
        let mut flushed = None;
        tokio::select! {
            span = queue.recv() => match span {
                Some(span) => batch.push(to_span_data(span, &batcher.scope)),
                None => break,
            },
            Some(done) = flushes.recv() => flushed = Some(done),
        }
        let flush_at = tokio::time::Instant::now() + config.flush_interval;
        while flushed.is_none() && batch.len() < config.batch_spans {
            tokio::select! {
                span = queue.recv() => match span {
                    Some(span) => batch.push(to_span_data(span, &batcher.scope)),
                    None => {
                        open = false;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(flush_at) => break,
                Some(done) = flushes.recv() => flushed = Some(done),
            }
        }
        if flushed.is_some() {
            // Everything queued now goes, in full batches.
            while let Ok(span) = queue.try_recv() {
                batch.push(to_span_data(span, &batcher.scope));
                if batch.len() >= config.batch_spans {
                    batcher.send(std::mem::take(&mut batch)).await;
                }
            }
        }
        if !batch.is_empty() {
            batcher.send(std::mem::take(&mut batch)).await;
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
    let _ = exporter.shutdown();
}

/// What every export shares.
struct Batcher<'a> {
    exporter: &'a opentelemetry_otlp::SpanExporter,
    config: &'a TraceExportConfig,
    stats: &'a ExportStats,
    scope: InstrumentationScope,
}

impl Batcher<'_> {
    async fn send(&self, batch: Vec<SpanData>) {
        export(self.exporter, batch, self.config.timeout, self.stats).await;
    }
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    timeout: Duration,
    stats: &ExportStats,
) {
    let spans = batch.len() as u64;
    // The exporter has its own timeout; this bounds anything it does not cover.
    match tokio::time::timeout(timeout + Duration::from_secs(1), exporter.export(batch)).await {
        Ok(Ok(())) => {
            stats.exported.fetch_add(spans, Relaxed);
        }
        Ok(Err(error)) => {
            stats.dropped_export_failed.fetch_add(spans, Relaxed);
            tracing::warn!(%error, spans, "trace export failed; spans dropped");
        }
        Err(_) => {
            stats.dropped_export_failed.fetch_add(spans, Relaxed);
            tracing::warn!(spans, "trace export timed out; spans dropped");
        }
    }
}

fn hex_str(hex: &[u8]) -> &str {
    std::str::from_utf8(hex).unwrap_or("0")
}

fn to_span_data(span: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let trace_id = TraceId::from_hex(hex_str(&span.trace_id)).unwrap_or(TraceId::INVALID);
    let span_id = SpanId::from_hex(hex_str(&span.span_id)).unwrap_or(SpanId::INVALID);
    let parent_span_id = span
        .parent_id
        .and_then(|id| SpanId::from_hex(hex_str(&id)).ok())
        .unwrap_or(SpanId::INVALID);
    SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id,
        parent_span_is_remote: span.parent_is_remote,
        span_kind: match span.kind {
            SpanKind::Server => OtelKind::Server,
            SpanKind::Client => OtelKind::Client,
            SpanKind::Internal => OtelKind::Internal,
        },
        name: span.name,
        start_time: span.start,
        end_time: span.end,
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| {
                let value = match value {
                    AttributeValue::Text(text) => Value::String(text.into()),
                    AttributeValue::Int(n) => Value::I64(n),
                    AttributeValue::Bool(b) => Value::Bool(b),
                };
                KeyValue::new(key, value)
            })
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match span.error {
            Some(description) => Status::Error {
                description: description.into(),
            },
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}
