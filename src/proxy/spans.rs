//! The spans a request records when trace export is on and its trace is sampled: the
//! request itself (server), each upstream attempt (client) and each cache lookup
//! (internal). Nothing here runs for requests that are not recorded.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use http::Method;

use super::trace::TraceContext;
use crate::telemetry::{AttributeValue, SpanKind, SpanRecord, Tracer};

/// A recorded request's tracer and trace: what child spans need.
#[derive(Debug, Clone, Copy)]
pub struct Recording<'a> {
    tracer: &'a Arc<Tracer>,
    trace: &'a TraceContext,
}

impl<'a> Recording<'a> {
    /// Some when export is on and the trace is sampled.
    pub fn new(tracer: Option<&'a Arc<Tracer>>, trace: Option<&'a TraceContext>) -> Option<Self> {
        let trace = trace.filter(|t| t.sampled())?;
        Some(Self {
            tracer: tracer?,
            trace,
        })
    }

    /// Records a finished span under the request's span; `own` is its context when it was
    /// made beforehand (an attempt's, sent upstream as the parent).
    pub fn child(&self, span: ChildSpan, own: Option<&TraceContext>) {
        let made;
        let own = match own {
            Some(own) => own,
            None => {
                made = self.trace.child();
                &made
            }
        };
        let (trace_id, span_id, parent_id) = own.ids();
        self.tracer.record(SpanRecord {
            trace_id,
            span_id,
            parent_id,
            parent_is_remote: false,
            kind: span.kind,
            name: span.name,
            start: span.start,
            end: SystemTime::now(),
            attributes: span.attributes,
            error: span.error,
        });
    }
}

/// A span under the request's, ended now.
#[derive(Debug)]
pub struct ChildSpan {
    pub kind: SpanKind,
    pub name: Cow<'static, str>,
    pub start: SystemTime,
    pub attributes: Vec<(&'static str, AttributeValue)>,
    pub error: Option<String>,
}

/// The request's own span: started with the request, finished when the response head goes
/// out (a gRPC call's, when the call ends, with its status).
#[derive(Debug)]
pub struct RequestSpan(Box<RequestSpanInner>);

/// Boxed: the request future holds a `RequestSpan` across its waits, and an unrecorded
/// request should carry a pointer's worth, not the whole record.
#[derive(Debug)]
struct RequestSpanInner {
    tracer: Arc<Tracer>,
    record: SpanRecord,
}

/// How a request ended, for its span.
#[derive(Debug, Default)]
pub struct RequestEnd<'a> {
    pub status: u16,
    pub route: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub attempts: u32,
    pub cache: Option<&'a str>,
}

impl RequestSpan {
    pub fn start(recording: Recording<'_>, method: &Method, path: &str) -> Self {
        let (trace_id, span_id, parent_id) = recording.trace.ids();
        Self(Box::new(RequestSpanInner {
            tracer: Arc::clone(recording.tracer),
            record: SpanRecord {
                trace_id,
                span_id,
                parent_id,
                parent_is_remote: true,
                kind: SpanKind::Server,
                name: Cow::Owned(method.as_str().to_owned()),
                start: SystemTime::now(),
                end: SystemTime::now(),
                attributes: vec![
                    ("http.request.method", method.as_str().to_owned().into()),
                    ("url.path", path.to_owned().into()),
                ],
                error: None,
            },
        }))
    }

    /// Adds how the request ended; the span is sent by [`RequestSpan::send`].
    pub fn end(&mut self, end: RequestEnd<'_>) {
        let record = &mut self.0.record;
        record.end = SystemTime::now();
        let attributes = &mut record.attributes;
        attributes.push(("http.response.status_code", i64::from(end.status).into()));
        if let Some(route) = end.route {
            attributes.push(("http.route", route.to_owned().into()));
            record.name = Cow::Owned(format!("{} {route}", record.name));
        }
        if let Some(endpoint) = end.endpoint {
            attributes.push(("weir.endpoint", endpoint.to_owned().into()));
        }
        if end.attempts > 0 {
            attributes.push(("weir.attempts", i64::from(end.attempts).into()));
        }
        if let Some(cache) = end.cache {
            attributes.push(("weir.cache", cache.to_owned().into()));
        }
        if end.status >= 500 {
            record.error = Some(format!("HTTP {}", end.status));
        }
    }

    /// Sends the span; `grpc_status` for a gRPC call (`None` inside: ended without one).
    pub fn send(self, grpc_status: Option<Option<u8>>) {
        let RequestSpanInner { tracer, mut record } = *self.0;
        if let Some(status) = grpc_status {
            record.end = SystemTime::now();
            match status {
                Some(code) => {
                    record
                        .attributes
                        .push(("rpc.grpc.status_code", i64::from(code).into()));
                    // The codes OpenTelemetry counts as a server's error.
                    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
                        record.error = Some(format!("gRPC {}", super::grpc::code_name(code)));
                    }
                }
                None => {
                    record.error = Some("the stream ended without a gRPC status".into());
                }
            }
        }
        tracer.record(record);
    }
}
