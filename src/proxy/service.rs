//! The request path: route, pick, rewrite, forward, stream back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;

use super::ProxyState;
use super::body::{RequestGuards, ResponseBody};
use super::conn::{ConnActivity, ConnRequestGuard};
use super::error::ProxyError;
use super::headers::{self, strip_hop_by_hop};
use super::snapshot::Snapshot;
use crate::balancer::PickContext;

/// One per client connection; cloned into each request.
#[derive(Clone)]
pub struct ProxyService {
    state: Arc<ProxyState>,
    peer: SocketAddr,
    proto: &'static str,
    conn: Arc<ConnActivity>,
}

impl ProxyService {
    pub fn new(
        state: Arc<ProxyState>,
        peer: SocketAddr,
        proto: &'static str,
        conn: Arc<ConnActivity>,
    ) -> Self {
        Self {
            state,
            peer,
            proto,
            conn,
        }
    }

    pub async fn handle(self, req: Request<Incoming>) -> Response<ResponseBody> {
        let conn_guard = self.conn.begin_request();
        self.state.stats.requests.fetch_add(1, Relaxed);
        let snapshot = self.state.snapshot.load_full();
        let request_id = headers::request_id(req.headers(), &snapshot.headers.request_id);
        let method = req.method().clone();
        let mut response = match self.forward(&snapshot, req, &request_id, conn_guard).await {
            Ok(response) => response,
            Err(failure) => {
                let status = failure.error.status();
                if status.is_server_error() {
                    tracing::warn!(
                        request_id = ?request_id,
                        %method,
                        route = failure.route.as_deref().unwrap_or("-"),
                        endpoint = failure.endpoint.as_deref().unwrap_or("-"),
                        status = status.as_u16(),
                        error = %failure.error.detail(),
                        "request failed"
                    );
                } else {
                    tracing::debug!(request_id = ?request_id, status = status.as_u16(), error = %failure.error, "request refused");
                }
                failure.error.to_response()
            }
        };
        self.state.stats.record_response(response.status());
        response
            .headers_mut()
            .insert(snapshot.headers.request_id.clone(), request_id);
        response
    }

    async fn forward(
        &self,
        snapshot: &Snapshot,
        req: Request<Incoming>,
        request_id: &HeaderValue,
        conn_guard: ConnRequestGuard,
    ) -> Result<Response<ResponseBody>, Failure> {
        let (mut parts, body) = req.into_parts();
        if parts.method == Method::CONNECT {
            return Err(ProxyError::ConnectNotSupported.into());
        }
        let route = {
            let host = request_host(&parts)?;
            snapshot
                .router
                .find(host, parts.uri.path())
                .ok_or(ProxyError::NoRoute)?
        };
        let pool = &route.pool;
        let failure = |error: ProxyError, endpoint: Option<&str>| Failure {
            error,
            route: Some(route.name.to_string()),
            endpoint: endpoint.map(str::to_owned),
        };

        let endpoint = {
            let ctx = PickContext {
                client_ip: self.peer.ip(),
                headers: &parts.headers,
            };
            pool.pick(&ctx)
                .ok_or_else(|| failure(ProxyError::NoEndpoint(pool.name.clone()), None))?
        };

        // The target's authority (HTTP/2 :authority, HTTP/1.1 absolute-form) is what the
        // route was chosen by, so it replaces any Host header (RFC 9112 §3.2.2); HTTP/1.1
        // upstreams need it as a Host header in any case.
        if let Some(authority) = parts.uri.authority() {
            let matches = parts
                .headers
                .get(header::HOST)
                .is_some_and(|h| h.as_bytes() == authority.as_str().as_bytes());
            if !matches && let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, value);
            }
        }
        let client_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        snapshot.headers.add_forwarding(
            &mut parts.headers,
            self.peer.ip(),
            self.proto,
            client_host.as_ref().and_then(|h| h.to_str().ok()),
        );
        snapshot.headers.add_via(&mut parts.headers, parts.version);
        if !pool.preserve_host {
            parts
                .headers
                .insert(header::HOST, endpoint.host_header().clone());
        }
        parts
            .headers
            .insert(snapshot.headers.request_id.clone(), request_id.clone());

        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = Some(path_and_query);
        parts.uri = Uri::from_parts(uri)
            .map_err(|_| failure(ProxyError::BadRequest("invalid request target"), None))?;
        parts.version = Version::HTTP_11;

        let endpoint_guard = endpoint.begin_request();
        let started = Instant::now();
        let upstream_request = Request::from_parts(parts, body);
        let outcome =
            tokio::time::timeout(pool.response_timeout, pool.client.request(upstream_request))
                .await;
        let response = match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => {
                let error = ProxyError::from_client(err);
                let counter = match error {
                    ProxyError::Connect(_) => &endpoint.stats.connect_errors,
                    ProxyError::ConnectTimeout(_) => &endpoint.stats.timeouts,
                    _ => &endpoint.stats.protocol_errors,
                };
                counter.fetch_add(1, Relaxed);
                return Err(failure(error, Some(&endpoint.address)));
            }
            Err(_elapsed) => {
                endpoint.stats.timeouts.fetch_add(1, Relaxed);
                return Err(failure(
                    ProxyError::ResponseTimeout(pool.response_timeout),
                    Some(&endpoint.address),
                ));
            }
        };
        let latency = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
        endpoint.record_response(response.status(), latency);

        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        snapshot.headers.add_via(&mut parts.headers, parts.version);
        parts.version = Version::HTTP_11;
        let guards = RequestGuards {
            endpoint: endpoint_guard,
            connection: conn_guard,
        };
        Ok(Response::from_parts(
            parts,
            ResponseBody::upstream(body, guards),
        ))
    }
}

/// A failed request with what is known of where it was going, for the log line.
struct Failure {
    error: ProxyError,
    route: Option<String>,
    endpoint: Option<String>,
}

impl From<ProxyError> for Failure {
    fn from(error: ProxyError) -> Self {
        Failure {
            error,
            route: None,
            endpoint: None,
        }
    }
}

/// The host the client asked for: the absolute-form/`:authority` host, else `Host`.
fn request_host(parts: &http::request::Parts) -> Result<&str, ProxyError> {
    let mut host_headers = parts.headers.get_all(header::HOST).iter();
    let host_header = host_headers.next();
    if host_headers.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if let Some(authority) = parts.uri.authority() {
        return Ok(authority.as_str());
    }
    match host_header {
        Some(value) => {
            let host = value
                .to_str()
                .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
            if host.is_empty() || host.parse::<http::uri::Authority>().is_err() {
                return Err(ProxyError::BadRequest("invalid Host header"));
            }
            Ok(host)
        }
        None if parts.version == Version::HTTP_10 || parts.version == Version::HTTP_09 => Ok(""),
        None => Err(ProxyError::BadRequest("missing Host header")),
    }
}
