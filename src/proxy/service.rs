//! The request path: route, pick, rewrite, forward, stream back.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ProxyState;
use super::access_log::{AccessLine, Destination};
use super::body::{BodyPace, RequestGuards, ResponseBody, UpstreamRequestBody};
use super::client_address;
use super::conn::{ConnActivity, ConnRequestGuard};
use super::error::ProxyError;
use super::grpc;
use super::headers;
use super::normalize::normalize_path;
use super::route::cors::Cors;
use super::route::mirror::Mirror;
use super::route::rewrite::{FORWARDED_PREFIX, HeaderVariables};
use super::route::{Action, Route, RouteRequest};
use super::snapshot::Snapshot;
use super::spans::{Recording, RequestEnd, RequestSpan};
use super::stats::RouteStats;
use super::trace::{TraceContext, Traceparent};
use crate::config::IpBlock;
use crate::upstream::request_body::{CopyInProgress, ReplayCopy};
use crate::upstream::{Endpoint, Pool};

mod cache_status;
mod cached;
mod forward;

/// One per client connection; cloned into each request. It lives in the connection's
/// task for the connection's whole life, so what is the same for all of a listener's
/// connections is shared ([`ListenerShared`]): 160 → 96 bytes, which took an idle
/// connection's task from 1 024 to 896 bytes.
#[derive(Clone)]
pub struct ProxyService {
    state: Arc<ProxyState>,
    /// The connection's client: the TCP peer, or the source a PROXY header gave.
    client: headers::ClientAddress,
    /// The connection's verified client certificate, as the header upstreams get.
    client_cert: Option<Arc<(http::HeaderName, HeaderValue)>>,
    conn: Arc<ConnActivity>,
    listener: Arc<ListenerShared>,
}

/// What a listener's connections have in common, built once by its accept loop.
#[derive(Debug)]
pub struct ListenerShared {
    /// `http` or `https`: what the client spoke to weir.
    pub(super) proto: &'static str,
    /// Proxies whose `X-Forwarded-For` names the client (see [`client_address::resolve`]).
    pub(super) trusted_proxies: Arc<[IpBlock]>,
    pub(super) body_pace: BodyPace,
    /// Where upgraded connections (WebSocket) run, and what cuts them at shutdown.
    pub(super) tunnels: Option<(TaskTracker, CancellationToken)>,
}

impl ProxyService {
    pub fn new(
        state: Arc<ProxyState>,
        peer: SocketAddr,
        conn: Arc<ConnActivity>,
        listener: Arc<ListenerShared>,
    ) -> Self {
        Self {
            state,
            client: headers::ClientAddress::new(peer.ip()),
            client_cert: None,
            conn,
            listener,
        }
    }

    /// Tells upstreams of the connection's verified client certificate in this header.
    pub fn with_client_certificate(
        mut self,
        header: Option<Arc<(http::HeaderName, HeaderValue)>>,
    ) -> Self {
        self.client_cert = header;
        self
    }

    /// The request's client: this connection's, or the one a trusted proxy names.
    fn resolve_client(&self, headers: &http::HeaderMap) -> Option<headers::ClientAddress> {
        if self.listener.trusted_proxies.is_empty() {
            return None;
        }
        let ip = client_address::resolve(self.client.ip, &self.listener.trusted_proxies, headers);
        (ip != self.client.ip).then(|| headers::ClientAddress::new(ip))
    }

    /// The scheme the client used (see [`client_address::scheme`]).
    fn request_scheme(&self, headers: &http::HeaderMap) -> &'static str {
        client_address::scheme(
            self.client.ip,
            &self.listener.trusted_proxies,
            headers,
            self.listener.proto,
        )
    }

    /// Answers one request. The result is hyper's service contract (`Infallible`: every
    /// failure is a response) so that the connection boxes this future as it is: a
    /// wrapper around it would move its several kilobytes once more per request.
    #[inline(always)]
    pub fn handle(
        self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, std::convert::Infallible>> + Send {
        // Timed and counted from the call, which hyper makes once the head is parsed: the
        // poll's clock reading (its first ask, just before). The end is read from the
        // clock itself: a hit answered within the poll took microseconds, not none.
        let started = crate::clock::now_std();
        let conn_guard = self.conn.begin_request();
        self.state.stats.requests.fetch_add(1, Relaxed);
        // Taken apart here, and lent to `forward` and the rest: passed by value down the
        // request's `async fn`s, each held its own copy of the 224-byte head (and its
        // argument slot another), moved with the future.
        let (mut parts, body) = req.into_parts();
        // An `async` block, not an `async fn`: the function's arguments would each have
        // a second slot in the future (360 bytes of its 4.4 KiB, moved with it per request).
        async move {
            let snapshot = self.state.snapshot.load_full();
            let tracer = snapshot.tracer.as_ref();
            // A tracer and the access log need the trace context from the start; otherwise
            // only a request that goes upstream does, and with a cache many do not (see
            // `Traceparent::Deferred`). Without one it is made here, with the request id:
            // one cut from the id block for both.
            let deferred = snapshot.headers.traceparent
                && tracer.is_none()
                && !snapshot.access_log
                && snapshot.cache.is_some();
            let trace =
                (tracer.is_some() || (snapshot.headers.traceparent && !deferred)).then(|| {
                    TraceContext::from_headers(&parts.headers, || {
                        tracer.is_some_and(|t| t.sample_new_trace())
                    })
                });
            let plan = match &trace {
                _ if deferred => headers::TraceparentPlan::Later,
                Some(trace) if snapshot.headers.traceparent => headers::TraceparentPlan::Now(trace),
                _ => headers::TraceparentPlan::None,
            };
            let (request_id, made) =
                headers::request_ids(&parts.headers, &snapshot.headers.request_id, plan);
            let traceparent = match plan {
                headers::TraceparentPlan::Later => Some(Traceparent::deferred()),
                headers::TraceparentPlan::Now(_) => Some(Traceparent::Made(made)),
                headers::TraceparentPlan::None => None,
            };
            let method = parts.method.clone();
            let path = snapshot.access_log.then(|| parts.uri.path().to_owned());
            let recording = Recording::new(tracer, trace.as_ref());
            let mut request_span =
                recording.map(|recording| RequestSpan::start(recording, &method, parts.uri.path()));
            let is_grpc = grpc::is_grpc(&parts.headers);
            // Only routes with a CORS policy read it, after the request is gone.
            let cors_origin = snapshot
                .router
                .any_cors()
                .then(|| parts.headers.get(header::ORIGIN).cloned())
                .flatten();
            let resolved = self.resolve_client(&parts.headers);
            let client = resolved.as_ref().unwrap_or(&self.client);
            let origin = Origin {
                request_id: &request_id,
                traceparent: traceparent.as_ref(),
                trace: trace.as_ref(),
                client,
                is_grpc,
                recording,
            };
            let result = self
                .forward(&snapshot, &mut parts, body, origin, conn_guard)
                .await;
            let (mut response, outcome) = match result {
                Ok((response, served)) => {
                    served
                        .route_stats
                        .record(response.status(), started.elapsed());
                    (response, Ok(served))
                }
                Err(failure) => {
                    let status = failure.error.status();
                    if let Some(route_stats) = &failure.route_stats {
                        route_stats.record(status, started.elapsed());
                    }
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
                    let response = if is_grpc {
                        failure.error.to_grpc_response()
                    } else {
                        failure.error.to_response()
                    };
                    (response, Err(failure))
                }
            };
            let route_index = match &outcome {
                Ok(served) => Some(served.route_index),
                Err(failure) => failure.route_index,
            };
            if let Some(route) = route_index
                .and_then(|i| snapshot.router.routes().get(i))
                .filter(|r| r.has_response_rules())
            {
                let side = match &outcome {
                    Ok(served) => served.side,
                    Err(_) => None,
                };
                let pool = route.pool_name(side);
                let preflight =
                    matches!(&outcome, Ok(served) if matches!(served.source, Source::Preflight));
                let vars = HeaderVariables {
                    client_ip: client.ip,
                    request_id: &request_id,
                    route: &route.name,
                    pool,
                };
                route.finish_response(
                    response.headers_mut(),
                    &vars,
                    cors_origin.as_ref(),
                    preflight,
                );
            }
            if let Some(span) = &mut request_span {
                let (route, endpoint, attempts) = match &outcome {
                    Ok(served) => (
                        Some(&*served.route),
                        served.endpoint().map(|e| e.address.as_str()),
                        served.attempts,
                    ),
                    Err(failure) => (failure.route.as_deref(), failure.endpoint.as_deref(), 0),
                };
                span.end(RequestEnd {
                    status: response.status().as_u16(),
                    route,
                    endpoint,
                    attempts,
                    cache: response
                        .headers()
                        .get(&crate::cache::policy::CACHE_STATUS)
                        .and_then(|v| v.to_str().ok()),
                });
            }
            let access = path.map(|path| {
                let (route, destination, attempts, upstream_ms) = match &outcome {
                    Ok(served) => (
                        Some(Arc::clone(&served.route)),
                        match &served.source {
                            Source::Endpoint(e) => Destination::Endpoint(Arc::clone(e)),
                            Source::Cache => Destination::Cache,
                            Source::Answer | Source::Preflight => Destination::Route,
                        },
                        served.attempts,
                        served.upstream.as_secs_f64() * 1000.0,
                    ),
                    Err(failure) => (
                        failure.route.as_deref().map(Arc::from),
                        Destination::Failed(failure.endpoint.clone()),
                        0,
                        0.0,
                    ),
                };
                AccessLine {
                    request_id: request_id.clone(),
                    trace: trace.clone(),
                    client: client.ip,
                    method,
                    path,
                    status: response.status().as_u16(),
                    route,
                    destination,
                    attempts,
                    started,
                    upstream_ms,
                    cache: response
                        .headers()
                        .get(&crate::cache::policy::CACHE_STATUS)
                        .cloned(),
                }
            });
            if is_grpc {
                let route_stats = match &outcome {
                    Ok(served) => Some(Arc::clone(&served.route_stats)),
                    Err(failure) => failure.route_stats.clone(),
                };
                let end = grpc::CallEnd::new(route_stats, access, request_span);
                match grpc::head_status(response.headers()) {
                    // A status alone (weir's own answers too): the call has ended.
                    Some(code) => end.finish(Some(code)),
                    None => {
                        let (parts, body) = response.into_parts();
                        let (body, not_taken) = body.with_call_end(end);
                        if let Some(end) = not_taken {
                            end.finish(None);
                        }
                        response = Response::from_parts(parts, body);
                    }
                }
            } else {
                if let Some(line) = access {
                    line.write(None);
                }
                if let Some(span) = request_span {
                    span.send(None);
                }
            }
            self.state.stats.record_response(response.status());
            response
                .headers_mut()
                .insert(snapshot.headers.request_id.clone(), request_id);
            Ok(response)
        }
    }

    async fn forward(
        &self,
        snapshot: &Arc<Snapshot>,
        parts: &mut http::request::Parts,
        body: Incoming,
        origin: Origin<'_>,
        conn_guard: ConnRequestGuard,
    ) -> Result<(Response<ResponseBody>, Served), Failure> {
        if parts.method == Method::CONNECT {
            return Err(ProxyError::ConnectNotSupported.into());
        }
        check_framing(&parts.headers)?;
        // HTTP/1 requests are held to this by hyper already; HTTP/2 ones are not.
        if parts.headers.len() > snapshot.max_request_headers {
            return Err(ProxyError::TooManyHeaders(snapshot.max_request_headers).into());
        }
        // Route and forward the same, normalised path.
        if let Cow::Owned(path) = normalize_path(parts.uri.path())
            .map_err(|_| ProxyError::BadRequest("invalid percent-encoding in the path"))?
        {
            set_path(&mut parts.uri, &path)
                .map_err(|()| ProxyError::BadRequest("invalid request target"))?;
        }
        let host = request_host(parts)?;
        let matched = RouteRequest {
            host,
            path: parts.uri.path(),
            method: &parts.method,
            headers: &parts.headers,
            query: parts.uri.query(),
            client: origin.client.ip,
        };
        let route = snapshot.router.find(&matched).ok_or(ProxyError::NoRoute)?;
        if !route.access.permits(origin.client.ip) {
            return Err(Failure::at(route, ProxyError::Forbidden, None));
        }
        if let Some(cors) = &route.cors
            && Cors::is_preflight(&parts.method, &parts.headers)
        {
            return Ok(answered(
                route,
                cors.preflight(&parts.headers),
                Source::Preflight,
            ));
        }
        if let Some(limiter) = &route.rate_limit
            && let Err(wait) = limiter.check(origin.client.ip, &parts.headers).await
        {
            return Err(Failure::at(route, ProxyError::RateLimited(wait), None));
        }
        let (side, pool) = match &route.action {
            Action::Forward(split) => split.pick(origin.client.ip, &parts.headers),
            Action::Redirect(redirect) => {
                let location = redirect
                    .location(&matched, self.request_scheme(&parts.headers))
                    .ok_or_else(|| {
                        Failure::at(route, ProxyError::BadRequest("invalid Host header"), None)
                    })?;
                let response = redirect.response(location, &parts.method);
                return Ok(answered(route, response, Source::Answer));
            }
            Action::Respond(fixed) => {
                return Ok(answered(
                    route,
                    fixed.response(&parts.method),
                    Source::Answer,
                ));
            }
        };
        // A declared length over the limit is refused before anything goes upstream; a
        // chunked body is cut when it gets there (see `UpstreamRequestBody`).
        if route.max_body_bytes > 0
            && declared_length(&parts.headers).is_some_and(|n| n > route.max_body_bytes)
        {
            return Err(Failure::at(
                route,
                ProxyError::BodyTooLarge(route.max_body_bytes),
                None,
            ));
        }
        if let Some(rewrite) = &route.rewrite {
            let (path, prefix) = rewrite.apply(parts.uri.path());
            set_path(&mut parts.uri, &path).map_err(|()| {
                let error = ProxyError::BadRequest("the rewritten path is not a valid target");
                Failure::at(route, error, None)
            })?;
            if let Some(prefix) = prefix.and_then(|p| HeaderValue::from_str(p).ok()) {
                parts.headers.insert(FORWARDED_PREFIX.clone(), prefix);
            }
        }
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
        let mirror = route.mirror.as_ref().filter(|m| m.chosen());
        let exchange = Exchange {
            snapshot,
            route,
            side,
            pool,
            mirror,
            request_id: origin.request_id,
            traceparent: origin.traceparent,
            trace: origin.trace,
            client: origin.client,
            is_grpc: origin.is_grpc,
            recording: origin.recording,
        };
        if let (Some(cache), Some(policy)) = (&snapshot.cache, &route.cache)
            && upgrade_protocol(parts).is_none()
        {
            let probed = match self.fresh_memory_hit(&exchange, cache, policy, parts) {
                Ok(answer) => {
                    // The request's map becomes the next served head's (or parsed one's).
                    crate::header_maps::recycle(std::mem::take(&mut parts.headers));
                    return Ok(answer);
                }
                Err(probed) => probed,
            };
            let request = cached::CachedRequest {
                parts: take_parts(parts),
                body,
                conn_guard,
                probed,
            };
            // Boxed: the cache path's state machine is several KiB, and hyper moves the
            // request future by value; the plain path should not carry (and copy) it.
            return Box::pin(self.forward_cached(&exchange, cache, policy, request)).await;
        }
        self.forward_upstream(&exchange, parts, Some(body), Some(conn_guard))
            .await
    }
}

/// The request head out of `parts`, leaving an empty one (no allocation) in its place.
fn take_parts(parts: &mut http::request::Parts) -> http::request::Parts {
    std::mem::replace(parts, Request::new(()).into_parts().0)
}

/// How a client's request body is to be held: what [`RequestBody::prepare`] decides by.
#[derive(Debug, Clone, Copy)]
struct BodyPlan {
    /// Retries the pool may make (none: nothing is held).
    retries: u32,
    /// Bodies up to this many bytes are held for a retry.
    buffer_limit: u64,
    pace: BodyPace,
    /// The route's body limit (0 = none).
    max_body: u64,
    /// Stream the body and keep a copy (up to `buffer_limit`) rather than read it first:
    /// for calls whose body has no length and may not end before the answer starts.
    copy_while_streaming: bool,
    /// A mirrored request's body is held whole up to this (0: not mirrored).
    mirror_limit: u64,
}

/// The client's request body, held so that it can be sent again when it is small enough.
enum RequestBody {
    /// Empty or buffered: every attempt gets the same bytes.
    Replayable(Bytes),
    /// Streams from the client; only one attempt can have it (with its size limit).
    Streaming(Option<Incoming>, BodyPace, u64),
    /// Streams from the client to the first attempt while a copy is kept; later attempts
    /// get the copy, if it completed.
    Copied {
        first: Option<(Incoming, CopyInProgress)>,
        pace: BodyPace,
        max_body: u64,
        copy: ReplayCopy,
    },
}

impl RequestBody {
    async fn prepare(
        body: Incoming,
        headers: &http::HeaderMap,
        plan: BodyPlan,
    ) -> Result<Self, ProxyError> {
        if body.is_end_stream() {
            return Ok(RequestBody::Replayable(Bytes::new()));
        }
        let declared = declared_length(headers);
        match declared {
            Some(length)
                if (plan.retries > 0 && length <= plan.buffer_limit)
                    || length <= plan.mirror_limit =>
            {
                let limit = plan.buffer_limit.max(plan.mirror_limit);
                let limited = http_body_util::Limited::new(body, limit as usize);
                let deadline = plan.pace.deadline(tokio::time::Instant::now(), length);
                let bytes = tokio::time::timeout_at(deadline, limited.collect())
                    .await
                    .map_err(|_| ProxyError::ClientBodyTimeout)?
                    .map_err(ProxyError::ClientBody)?
                    .to_bytes();
                Ok(RequestBody::Replayable(bytes))
            }
            None if plan.retries > 0 && plan.copy_while_streaming => {
                let copy = ReplayCopy::default();
                let in_progress = CopyInProgress::new(plan.buffer_limit, Arc::clone(&copy));
                Ok(RequestBody::Copied {
                    first: Some((body, in_progress)),
                    pace: plan.pace,
                    max_body: plan.max_body,
                    copy,
                })
            }
            _ => Ok(RequestBody::Streaming(Some(body), plan.pace, plan.max_body)),
        }
    }

    /// Whether a retry may be possible: decided before the first attempt is sent.
    fn may_replay(&self) -> bool {
        !matches!(self, RequestBody::Streaming(..))
    }

    /// Whether the next attempt can be sent the whole body.
    fn is_replayable(&self) -> bool {
        match self {
            RequestBody::Replayable(_) => true,
            RequestBody::Streaming(..) => false,
            RequestBody::Copied { copy, .. } => copy.get().is_some(),
        }
    }

    fn for_attempt(&mut self) -> UpstreamRequestBody {
        match self {
            RequestBody::Replayable(bytes) => UpstreamRequestBody::buffered(bytes.clone()),
            RequestBody::Streaming(body, pace, limit) => match body.take() {
                Some(inner) => UpstreamRequestBody::streaming(inner, *pace, *limit),
                None => UpstreamRequestBody::buffered(Bytes::new()),
            },
            RequestBody::Copied {
                first,
                pace,
                max_body,
                copy,
            } => match first.take() {
                Some((inner, in_progress)) => UpstreamRequestBody::streaming_with_copy(
                    inner,
                    *pace,
                    *max_body,
                    Some(in_progress),
                ),
                None => UpstreamRequestBody::buffered(copy.get().cloned().unwrap_or_default()),
            },
        }
    }
}

/// The request's `Content-Length` (already checked to be one valid value).
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Who a request is from: its identifiers and its client (resolved behind trusted
/// proxies), fixed before it is routed.
#[derive(Clone, Copy)]
struct Origin<'a> {
    request_id: &'a HeaderValue,
    /// The `traceparent` sent upstream, when weir sends one.
    traceparent: Option<&'a Traceparent>,
    trace: Option<&'a TraceContext>,
    client: &'a headers::ClientAddress,
    /// A gRPC call (by its content type), told once for the whole request path.
    is_grpc: bool,
    /// Set when the request's trace is recorded (decided once, with its span).
    recording: Option<Recording<'a>>,
}

/// What every upstream exchange of one client request shares: the configuration it was
/// routed under, its route, and the identifiers it carries upstream.
#[derive(Clone, Copy)]
pub(super) struct Exchange<'a> {
    pub snapshot: &'a Arc<Snapshot>,
    pub route: &'a Route,
    /// The side of the route's split chosen for this request, and its pool.
    pub side: usize,
    pub pool: &'a Arc<Pool>,
    /// The route's mirror, when this request is one it copies.
    pub mirror: Option<&'a Mirror>,
    pub request_id: &'a HeaderValue,
    /// The `traceparent` sent upstream, when weir sends one.
    pub traceparent: Option<&'a Traceparent>,
    pub trace: Option<&'a TraceContext>,
    /// The client balancing and forwarding headers use.
    pub client: &'a headers::ClientAddress,
    /// A gRPC call: its deadline, status retries and body copy apply.
    pub is_grpc: bool,
    /// Set when the request's trace is recorded: attempts and cache lookups add spans.
    pub recording: Option<Recording<'a>>,
}

/// Where a proxied request went, for route stats and the access log.
pub(super) struct Served {
    route_stats: Arc<RouteStats>,
    route: Arc<str>,
    /// The route's position in the snapshot (to finish the response by its rules).
    route_index: usize,
    /// The split side the request went to; `None` when the route answered itself.
    side: Option<usize>,
    source: Source,
    attempts: u32,
    /// Time to the response head of the attempt that answered.
    upstream: std::time::Duration,
}

impl Served {
    fn endpoint(&self) -> Option<&Arc<Endpoint>> {
        match &self.source {
            Source::Endpoint(endpoint) => Some(endpoint),
            _ => None,
        }
    }
}

/// Who gave a served response.
#[derive(Debug)]
pub(super) enum Source {
    Endpoint(Arc<Endpoint>),
    Cache,
    /// The route itself: a redirect or a fixed response.
    Answer,
    /// The route's CORS policy, answering a preflight.
    Preflight,
}

/// A response the route gives itself.
fn answered(
    route: &Route,
    response: Response<ResponseBody>,
    source: Source,
) -> (Response<ResponseBody>, Served) {
    let served = Served {
        route_stats: Arc::clone(&route.stats),
        route: Arc::clone(&route.name),
        route_index: route.index,
        side: None,
        source,
        attempts: 0,
        upstream: std::time::Duration::ZERO,
    };
    (response, served)
}

/// A failed request with what is known of where it was going, for the log line.
pub(super) struct Failure {
    error: ProxyError,
    route: Option<String>,
    route_index: Option<usize>,
    route_stats: Option<Arc<RouteStats>>,
    endpoint: Option<String>,
}

impl Failure {
    pub(super) fn at(route: &Route, error: ProxyError, endpoint: Option<&str>) -> Self {
        Failure {
            error,
            route: Some(route.name.to_string()),
            route_index: Some(route.index),
            route_stats: Some(Arc::clone(&route.stats)),
            endpoint: endpoint.map(str::to_owned),
        }
    }
}

impl From<ProxyError> for Failure {
    fn from(error: ProxyError) -> Self {
        Failure {
            error,
            route: None,
            route_index: None,
            route_stats: None,
            endpoint: None,
        }
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` +
/// `Upgrade`).
fn upgrade_protocol(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    // Most requests have no `Upgrade`: one lookup answers for them.
    let protocol = crate::header_maps::first(&parts.headers, &header::UPGRADE)?;
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    // h2c is never tunnelled: the client would get a raw HTTP/2 connection to the
    // endpoint, past routing, limits and the cache (h2c smuggling). Such a request goes on
    // as a plain one, its Upgrade and HTTP2-Settings stripped as hop-by-hop.
    let h2c = protocol.to_str().map_or(true, |p| {
        p.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c"))
    });
    (asks && !h2c).then(|| protocol.clone())
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections
/// until either side closes or shutdown aborts; the request stays in flight meanwhile.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guards: RequestGuards,
    abort: CancellationToken,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (client, upstream) => {
            tracing::debug!(
                client_ok = client.is_ok(),
                upstream_ok = upstream.is_ok(),
                "upgrade did not complete"
            );
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "tunnel closed with an error");
            }
        }
        _ = abort.cancelled() => {}
    }
    drop(guards);
}

/// Refuses message framing that an upstream could read differently from weir (RFC 9112
/// §6.1): a transfer coding other than a single `chunked` (hyper decodes only that one,
/// and weir does not forward `Transfer-Encoding`), or both `Content-Length` and
/// `Transfer-Encoding` (hyper already drops the length and closes the connection after
/// the response; this is defence in depth should that change).
/// Replaces the target's path, keeping its query. A new path that brings a query of its own
/// (a regex rewrite to `/page.php?id=$1`) gets the original one after it, joined by `&`.
fn set_path(uri: &mut Uri, path: &str) -> Result<(), ()> {
    let target = match (path.contains('?'), uri.query()) {
        (_, None) => path.to_owned(),
        (true, Some(query)) => format!("{path}&{query}"),
        (false, Some(query)) => format!("{path}?{query}"),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(target).map_err(|_| ())?);
    *uri = Uri::from_parts(parts).map_err(|_| ())?;
    Ok(())
}

fn check_framing(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    let mut codings = crate::header_maps::all(headers, &header::TRANSFER_ENCODING).peekable();
    if codings.peek().is_none() {
        return Ok(());
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let only_chunked = codings
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .try_fold(0, |count, coding| {
            coding.eq_ignore_ascii_case("chunked").then_some(count + 1)
        })
        == Some(1);
    if only_chunked {
        Ok(())
    } else {
        Err(ProxyError::UnsupportedTransferEncoding)
    }
}

/// The host the client asked for: the absolute-form/`:authority` host, else `Host`.
/// Whether a `Host` header value is a valid authority. The common `name[:port]` is checked
/// here without allocating; anything else goes to `http`'s parser, which copies it.
fn is_valid_host(host: &str) -> bool {
    let (name, port) = super::route::rsplit_at_colon(host).unwrap_or((host, ""));
    let plain_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let plain_port = port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    (plain_name && plain_port) || host.parse::<http::uri::Authority>().is_ok()
}

fn request_host(parts: &http::request::Parts) -> Result<&str, ProxyError> {
    let mut host_headers = crate::header_maps::all(&parts.headers, &header::HOST);
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
            if host.is_empty() || !is_valid_host(host) {
                return Err(ProxyError::BadRequest("invalid Host header"));
            }
            Ok(host)
        }
        None if parts.version == Version::HTTP_10 || parts.version == Version::HTTP_09 => Ok(""),
        None => Err(ProxyError::BadRequest("missing Host header")),
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_host;

    #[test]
    fn the_host_fast_path_agrees_with_the_authority_parser() {
        let samples = [
            "example.com",
            "example.com:8080",
            "example.com:",
            ":80",
            "a:99999",
            "a:123456",
            "127.0.0.1:80",
            "[::1]:80",
            "[::1",
            "user@example.com",
            "exa mple.com",
            "example.com:8o",
            "ex_ample.com",
            "a:b:c",
            "-",
            ".",
            "a/b",
            "a?b",
            "é.example",
            "%41.example",
        ];
        for host in samples {
            assert_eq!(
                is_valid_host(host),
                host.parse::<http::uri::Authority>().is_ok(),
                "{host:?}"
            );
        }
    }
}
