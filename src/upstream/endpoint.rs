//! One upstream endpoint and the live counters the data plane publishes about it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

use http::HeaderValue;
use http::uri::Authority;

/// Why an endpoint does or does not take new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndpointState {
    /// Takes new requests.
    Active = 0,
    /// Finishes what it has, takes nothing new.
    Draining = 1,
}

impl EndpointState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => EndpointState::Draining,
            _ => EndpointState::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Active => "active",
            EndpointState::Draining => "draining",
        }
    }
}

/// An upstream server. Shared by the balancer, in-flight guards and (read-only) by the
/// admin and control sides; every field that changes is an atomic.
#[derive(Debug)]
pub struct Endpoint {
    /// `host:port` as configured; the key that identifies the endpoint across reloads.
    pub address: String,
    pub authority: Authority,
    /// `Host` sent when the pool does not preserve the client's.
    host_header: HeaderValue,
    weight: AtomicU32,
    state: AtomicU8,
    pub stats: EndpointStats,
}

/// Cumulative counters; readers take differences between samples.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub responses: [AtomicU64; 5],
    pub connect_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Sum of time-to-response-head in microseconds, with `responses` gives the mean.
    pub latency_micros_total: AtomicU64,
}

impl Endpoint {
    pub fn new(address: String, authority: Authority, weight: u32) -> Self {
        let host_header = HeaderValue::from_str(authority.as_str())
            .unwrap_or(HeaderValue::from_static("localhost"));
        Self {
            address,
            authority,
            host_header,
            weight: AtomicU32::new(weight),
            state: AtomicU8::new(EndpointState::Active as u8),
            stats: EndpointStats::default(),
        }
    }

    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Relaxed);
    }

    pub fn state(&self) -> EndpointState {
        EndpointState::from_u8(self.state.load(Relaxed))
    }

    pub fn set_state(&self, state: EndpointState) {
        self.state.store(state as u8, Relaxed);
    }

    /// Whether the balancer may give it a new request.
    pub fn is_available(&self) -> bool {
        self.state() == EndpointState::Active
    }

    pub fn in_flight(&self) -> u64 {
        self.stats.in_flight.load(Relaxed)
    }

    /// Counts a request as started; the guard counts it finished when dropped.
    pub fn begin_request(self: &Arc<Self>) -> InFlightGuard {
        self.stats.requests.fetch_add(1, Relaxed);
        self.stats.in_flight.fetch_add(1, Relaxed);
        InFlightGuard {
            endpoint: Arc::clone(self),
        }
    }

    pub fn record_response(&self, status: http::StatusCode, latency_micros: u64) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.stats.responses[class].fetch_add(1, Relaxed);
        self.stats
            .latency_micros_total
            .fetch_add(latency_micros, Relaxed);
    }

    pub fn total_responses(&self) -> u64 {
        self.stats.responses.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Held while a request to an endpoint is in flight, until its response body has been
/// sent on or dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    endpoint: Arc<Endpoint>,
}

impl InFlightGuard {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.endpoint.stats.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_follows_guards() {
        let ep = Arc::new(Endpoint::new(
            "127.0.0.1:1".into(),
            "127.0.0.1:1".parse().unwrap(),
            1,
        ));
        let a = ep.begin_request();
        let b = ep.begin_request();
        assert_eq!(ep.in_flight(), 2);
        drop(a);
        assert_eq!(ep.in_flight(), 1);
        drop(b);
        assert_eq!(ep.in_flight(), 0);
        assert_eq!(ep.stats.requests.load(Relaxed), 2);
    }

    #[test]
    fn responses_by_class() {
        let ep = Endpoint::new("a:1".into(), "a:1".parse().unwrap(), 1);
        ep.record_response(http::StatusCode::OK, 10);
        ep.record_response(http::StatusCode::BAD_GATEWAY, 30);
        assert_eq!(ep.stats.responses[1].load(Relaxed), 1);
        assert_eq!(ep.stats.responses[4].load(Relaxed), 1);
        assert_eq!(ep.total_responses(), 2);
        assert_eq!(ep.stats.latency_micros_total.load(Relaxed), 40);
    }
}
