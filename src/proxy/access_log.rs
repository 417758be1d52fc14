//! The access log line (`weir::access` target): written when the response head goes out,
//! or, for a gRPC call whose status comes in trailers, when the call ends, so that it can
//! say how the call ended.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method};

use super::trace::TraceContext;
use crate::upstream::Endpoint;

/// Where the request went, as the line names it.
#[derive(Debug)]
pub enum Destination {
    /// An upstream endpoint answered.
    Endpoint(Arc<Endpoint>),
    /// The cache answered.
    Cache,
    /// The route answered itself (a redirect, a fixed response, a CORS preflight).
    Route,
    /// Weir answered itself; the endpoint it was trying, if any.
    Failed(Option<String>),
}

/// Everything one access log line says, held until it is written.
#[derive(Debug)]
pub struct AccessLine {
    pub request_id: HeaderValue,
    pub trace: Option<TraceContext>,
    pub client: IpAddr,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub route: Option<Arc<str>>,
    pub destination: Destination,
    pub attempts: u32,
    pub started: Instant,
    pub upstream_ms: f64,
    /// The cache's outcome and tier (`weir-l1; hit`, `weir-l2; fwd=miss`…).
    pub cache: Option<HeaderValue>,
}

impl AccessLine {
    /// Writes the line; `grpc_status` for gRPC calls (`None` when the call ended
    /// without one: the stream was cut).
    pub fn write(self, grpc_status: Option<Option<u8>>) {
        let endpoint = match &self.destination {
            Destination::Endpoint(endpoint) => endpoint.address.as_str(),
            Destination::Cache => "cache",
            Destination::Route => "route",
            Destination::Failed(endpoint) => endpoint.as_deref().unwrap_or("-"),
        };
        let request_id = self.request_id.to_str().unwrap_or("-");
        let trace_id = self.trace.as_ref().map_or("-", TraceContext::trace_id);
        let route = self.route.as_deref().unwrap_or("-");
        let cache = self
            .cache
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        // Absent from HTTP lines; `-` for a gRPC call that ended without a status.
        let grpc_status =
            grpc_status.map(|status| status.map_or_else(|| "-".to_owned(), |c| c.to_string()));
        tracing::info!(
            target: "weir::access",
            request_id,
            trace_id,
            client = %self.client,
            method = %self.method,
            path = self.path,
            status = self.status,
            grpc_status = grpc_status.as_deref(),
            route,
            endpoint,
            attempts = self.attempts,
            duration_ms,
            upstream_ms = self.upstream_ms,
            cache,
            "access"
        );
    }
}
