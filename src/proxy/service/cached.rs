//! The request path through the HTTP cache: look up, answer, revalidate, coalesce misses,
//! store as the body streams, and invalidate after unsafe methods.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Failure, ProxyService, Served};
use crate::cache::coalesce;
use crate::cache::object::StoredResponse;
use crate::cache::policy::{self, CACHE_STATUS, PolicyRequest, Reuse};
use crate::cache::redis::Lock;
use crate::cache::{Cache, Flight, FlightGuard, PurgeTarget, RouteCache, Tier};
use crate::proxy::body::{ResponseBody, Tee};
use crate::proxy::compress;
use crate::proxy::conn::ConnRequestGuard;
use crate::proxy::route::Route;
use crate::proxy::snapshot::Snapshot;
use crate::proxy::trace::TraceContext;

/// Request headers that applications commonly use to build URLs (redirects, links,
/// canonical hosts) but that are not part of the cache key. A client could otherwise send
/// `X-Forwarded-Host: evil.example` and have the page it causes served to everyone from
/// the cache. On caching routes they are removed before forwarding unless the route keys
/// on them; weir then adds its own forwarding headers.
const UNKEYED_URL_HEADERS: [HeaderName; 10] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("forwarded"),
];

/// How often a request waiting on another instance's lock looks in Redis.
const SHARED_LOCK_POLL: Duration = Duration::from_millis(20);

/// Statuses weir stores: cacheable by default (RFC 9110 §15.1) plus redirects and 5xx
/// that carry explicit freshness. Never 206 (ranges) or 304 (no body).
fn status_may_be_stored(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203
            | 204
            | 300
            | 301
            | 302
            | 303
            | 307
            | 308
            | 404
            | 405
            | 410
            | 414
            | 500
            | 501
            | 502
            | 503
            | 504
    )
}

impl ProxyService {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward_cached(
        &self,
        snapshot: &Arc<Snapshot>,
        route: &Route,
        cache: &Arc<Cache>,
        policy: &Arc<RouteCache>,
        mut parts: http::request::Parts,
        body: Incoming,
        request_id: &HeaderValue,
        trace: Option<&TraceContext>,
        conn_guard: ConnRequestGuard,
    ) -> Result<(Response<ResponseBody>, Served), Failure> {
        for name in &UNKEYED_URL_HEADERS {
            if !policy.key.keys_on(name) {
                parts.headers.remove(name);
            }
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let primary =
            policy
                .key
                .primary(&host, parts.uri.path(), parts.uri.query(), &parts.headers);
        let method = parts.method.clone();
        if method != Method::GET && method != Method::HEAD {
            // Boxed so that the hit path's future stays small.
            return Box::pin(self.forward_unsafe(
                snapshot, route, cache, policy, parts, body, request_id, trace, conn_guard, &host,
                primary,
            ))
            .await;
        }
        if parts.headers.contains_key(header::RANGE) {
            cache.stats.bypass.fetch_add(1, Relaxed);
            return self
                .forward_upstream(
                    snapshot,
                    route,
                    parts,
                    Some(body),
                    request_id,
                    trace,
                    Some(conn_guard),
                )
                .await;
        }
        let tier_name = if policy.memory { "weir-l1" } else { "weir-l2" };
        let target: Uri = policy
            .key
            .target(parts.uri.path(), parts.uri.query())
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        let original: Uri = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        // With compression on, each coding is a variant of its own (see `compress`).
        let coding = snapshot
            .compression
            .then(|| compress::normalize_accept_encoding(&mut parts.headers));
        let client_headers = parts.headers.clone();
        let view = PolicyRequest {
            method: &Method::GET,
            target: target.clone(),
            headers: &client_headers,
        };
        let head_only = method == Method::HEAD;
        let now = SystemTime::now();
        let mut revalidating = None;
        if let Some((stored, tier, _)) = cache.lookup(policy, &primary, &client_headers).await {
            match policy::reuse(&stored, &view, now) {
                Reuse::Fresh => {
                    if cache.rewarm_hot && near_expiry(&stored, now) {
                        let revalidation = policy::revalidation_headers(&stored, &client_headers);
                        self.refresh_in_background(
                            snapshot,
                            route,
                            cache,
                            policy,
                            &primary,
                            Arc::clone(&stored),
                            (target, original),
                            client_headers.clone(),
                            revalidation,
                        );
                    }
                    let status = format!(
                        "{}; hit; ttl={}",
                        tier.status_name(),
                        ttl_secs(&stored, now)
                    );
                    return Ok(serve(
                        cache,
                        tier,
                        &stored,
                        now,
                        &status,
                        head_only,
                        &client_headers,
                        route,
                    ));
                }
                Reuse::StaleWhileRevalidate { revalidation } => {
                    self.refresh_in_background(
                        snapshot,
                        route,
                        cache,
                        policy,
                        &primary,
                        Arc::clone(&stored),
                        (target, original),
                        client_headers.clone(),
                        revalidation,
                    );
                    cache.stats.stale.fetch_add(1, Relaxed);
                    let status =
                        format!("{}; hit; detail=stale-while-revalidate", tier.status_name());
                    return Ok(serve(
                        cache,
                        tier,
                        &stored,
                        now,
                        &status,
                        head_only,
                        &client_headers,
                        route,
                    ));
                }
                Reuse::Revalidate { revalidation } => {
                    revalidating = Some((stored, tier, revalidation))
                }
                Reuse::NoMatch => {}
            }
        }

        if let Some((stored, tier, revalidation)) = revalidating {
            parts.headers = revalidation;
            let result = self
                .forward_upstream(
                    snapshot,
                    route,
                    parts,
                    Some(body),
                    request_id,
                    trace,
                    Some(conn_guard),
                )
                .await;
            let now = SystemTime::now();
            let name = tier.status_name();
            return match result {
                Ok((response, served)) if response.status() == StatusCode::NOT_MODIFIED => {
                    match policy::refresh(
                        &stored,
                        &view,
                        response.headers(),
                        now,
                        &policy.lifetimes,
                    ) {
                        Some(fresh) => {
                            drop(response);
                            cache.stats.revalidated.fetch_add(1, Relaxed);
                            let status = format!("{name}; fwd=stale; fwd-status=304");
                            let (response, _) = serve(
                                cache,
                                tier,
                                &fresh,
                                now,
                                &status,
                                head_only,
                                &client_headers,
                                route,
                            );
                            let (cache, policy, primary) =
                                (Arc::clone(cache), Arc::clone(policy), primary.clone());
                            tokio::spawn(async move {
                                cache.store(&policy, &primary, &client_headers, fresh).await;
                            });
                            Ok((response, served))
                        }
                        None => Ok((
                            with_status(response, &format!("{name}; fwd=stale; fwd-status=304")),
                            served,
                        )),
                    }
                }
                Ok((response, served))
                    if response.status().is_server_error()
                        && policy::may_serve_on_error(&stored, now) =>
                {
                    cache.stats.stale.fetch_add(1, Relaxed);
                    let status = format!(
                        "{name}; fwd=stale; fwd-status={}; detail=stale-if-error",
                        response.status().as_u16()
                    );
                    drop(response);
                    let (response, _) = serve(
                        cache,
                        tier,
                        &stored,
                        now,
                        &status,
                        head_only,
                        &client_headers,
                        route,
                    );
                    Ok((response, served))
                }
                Err(failure) if policy::may_serve_on_error(&stored, now) => {
                    cache.stats.stale.fetch_add(1, Relaxed);
                    tracing::debug!(error = %failure.error, "upstream failed; serving stale (stale-if-error)");
                    let status = format!("{name}; fwd=stale; detail=stale-if-error");
                    Ok(serve(
                        cache,
                        tier,
                        &stored,
                        now,
                        &status,
                        head_only,
                        &client_headers,
                        route,
                    ))
                }
                Ok((response, served)) => {
                    let fwd = format!(
                        "{name}; fwd=stale; fwd-status={}",
                        response.status().as_u16()
                    );
                    let response = encoded(response, coding).await;
                    Ok((
                        self.store_as_it_streams(
                            cache, policy, &primary, &view, response, None, &fwd, head_only,
                        ),
                        served,
                    ))
                }
                Err(failure) => Err(failure),
            };
        }

        if head_only {
            cache.stats.misses.fetch_add(1, Relaxed);
            let (response, served) = self
                .forward_upstream(
                    snapshot,
                    route,
                    parts,
                    Some(body),
                    request_id,
                    trace,
                    Some(conn_guard),
                )
                .await?;
            return Ok((
                with_status(response, &format!("{tier_name}; fwd=miss")),
                served,
            ));
        }

        // A miss: the first request fetches, concurrent ones wait for it (bounded).
        let mut leader = None;
        match cache.join_flight(&primary) {
            Flight::Leader(guard) => leader = Some(guard),
            Flight::Follower(waiting) => {
                if coalesce::wait(waiting, cache.coalesce_wait).await
                    && let Some(answer) = self
                        .answer_if_fresh(
                            cache,
                            policy,
                            &primary,
                            &view,
                            head_only,
                            route,
                            "coalesced",
                        )
                        .await
                {
                    return Ok(answer);
                }
            }
        }
        let mut lock = None;
        if leader.is_some()
            && cache.shared_lock
            && policy.redis
            && let Some(redis) = cache.redis()
        {
            match redis.lock(&primary, cache.coalesce_wait).await {
                Lock::Acquired(token) => lock = Some((Arc::clone(redis), token)),
                Lock::HeldElsewhere => {
                    let deadline = tokio::time::Instant::now() + cache.coalesce_wait;
                    while tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(SHARED_LOCK_POLL).await;
                        if let Some(answer) = self
                            .answer_if_fresh(
                                cache,
                                policy,
                                &primary,
                                &view,
                                head_only,
                                route,
                                "coalesced",
                            )
                            .await
                        {
                            return Ok(answer);
                        }
                    }
                }
                Lock::Unavailable => {}
            }
        }
        // The cache wants the whole response to store; the client's own validators are
        // then answered here.
        let client_conditional = parts.headers.contains_key(header::IF_NONE_MATCH)
            || parts.headers.contains_key(header::IF_MODIFIED_SINCE);
        if client_conditional {
            parts.headers.remove(header::IF_NONE_MATCH);
            parts.headers.remove(header::IF_MODIFIED_SINCE);
        }
        let (response, served) = self
            .forward_upstream(
                snapshot,
                route,
                parts,
                Some(body),
                request_id,
                trace,
                Some(conn_guard),
            )
            .await?;
        cache.stats.misses.fetch_add(1, Relaxed);
        let response = encoded(response, coding).await;
        let release = leader.map(|guard| Release { guard, lock });
        let response = self.store_as_it_streams(
            cache,
            policy,
            &primary,
            &view,
            response,
            release,
            &format!("{tier_name}; fwd=miss"),
            false,
        );
        if client_conditional
            && response.status() == StatusCode::OK
            && policy::client_not_modified(&client_headers, response.headers())
        {
            cache.stats.not_modified.fetch_add(1, Relaxed);
            let (head, body) = response.into_parts();
            // The body still goes to the cache, in the background.
            tokio::spawn(async move {
                let _ = body.collect().await;
            });
            let mut not_modified = Response::new(ResponseBody::empty());
            *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
            *not_modified.headers_mut() = policy::not_modified_headers(&head.headers);
            return Ok((not_modified, served));
        }
        Ok((response, served))
    }

    /// Looks again after waiting on another request's fetch.
    #[allow(clippy::too_many_arguments)]
    async fn answer_if_fresh(
        &self,
        cache: &Arc<Cache>,
        policy: &RouteCache,
        primary: &str,
        view: &PolicyRequest<'_>,
        head_only: bool,
        route: &Route,
        detail: &str,
    ) -> Option<(Response<ResponseBody>, Served)> {
        let now = SystemTime::now();
        let (stored, tier, _) = cache.lookup(policy, primary, view.headers).await?;
        if !matches!(policy::reuse(&stored, view, now), Reuse::Fresh) {
            return None;
        }
        cache.stats.coalesced.fetch_add(1, Relaxed);
        let status = format!("{}; hit; detail={detail}", tier.status_name());
        Some(serve(
            cache,
            tier,
            &stored,
            now,
            &status,
            head_only,
            view.headers,
            route,
        ))
    }

    /// Unsafe methods go upstream; a success invalidates the target URI and the
    /// `Location` / `Content-Location` it names on the same host (RFC 9111 §4.4).
    #[allow(clippy::too_many_arguments)]
    async fn forward_unsafe(
        &self,
        snapshot: &Arc<Snapshot>,
        route: &Route,
        cache: &Arc<Cache>,
        policy: &Arc<RouteCache>,
        parts: http::request::Parts,
        body: Incoming,
        request_id: &HeaderValue,
        trace: Option<&TraceContext>,
        conn_guard: ConnRequestGuard,
        host: &str,
        primary: String,
    ) -> Result<(Response<ResponseBody>, Served), Failure> {
        let invalidates = !matches!(parts.method, Method::OPTIONS | Method::TRACE);
        let request_headers = parts.headers.clone();
        let request_path = parts.uri.path().to_owned();
        cache.stats.bypass.fetch_add(1, Relaxed);
        let (response, served) = self
            .forward_upstream(
                snapshot,
                route,
                parts,
                Some(body),
                request_id,
                trace,
                Some(conn_guard),
            )
            .await?;
        let status = response.status();
        if invalidates && (status.is_success() || status.is_redirection()) {
            let mut keys = vec![primary];
            for name in [header::LOCATION, header::CONTENT_LOCATION] {
                let Some(location) = response.headers().get(&name).and_then(|v| v.to_str().ok())
                else {
                    continue;
                };
                if let Some((path, query)) = same_host_target(location, host, &request_path) {
                    keys.push(
                        policy
                            .key
                            .primary(host, &path, query.as_deref(), &request_headers),
                    );
                }
            }
            for key in keys {
                cache.purge(&PurgeTarget::Key(key), false).await;
            }
        }
        Ok((response, served))
    }

    /// Attaches the cache's copy to a response that may be stored, and names the outcome
    /// in `Cache-Status`.
    #[allow(clippy::too_many_arguments)]
    fn store_as_it_streams(
        &self,
        cache: &Arc<Cache>,
        policy: &Arc<RouteCache>,
        primary: &str,
        view: &PolicyRequest<'_>,
        response: Response<ResponseBody>,
        release: Option<Release>,
        cache_status: &str,
        head_only: bool,
    ) -> Response<ResponseBody> {
        let (mut head, body) = response.into_parts();
        let declared = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = declared.is_some_and(|n| n > policy.max_object_bytes);
        let stored = (!head_only && status_may_be_stored(head.status) && !too_large)
            .then(|| {
                policy::storable(
                    view,
                    head.status,
                    &head.headers,
                    SystemTime::now(),
                    &policy.lifetimes,
                )
            })
            .flatten();
        if too_large {
            cache.stats.too_large.fetch_add(1, Relaxed);
        }
        let Some(stored) = stored else {
            set_status(&mut head.headers, cache_status);
            return Response::from_parts(head, body);
        };
        set_status(&mut head.headers, &format!("{cache_status}; stored"));
        let cache = Arc::clone(cache);
        let policy2 = Arc::clone(policy);
        let primary = primary.to_owned();
        let request = view.headers.clone();
        let store = move |bytes: Bytes| {
            let mut stored = stored;
            stored.body = bytes;
            tokio::spawn(async move {
                cache.store(&policy2, &primary, &request, stored).await;
                drop(release);
            });
        };
        let limit = usize::try_from(policy.max_object_bytes).unwrap_or(usize::MAX);
        Response::from_parts(head, body.with_tee(Tee::new(limit, store)))
    }

    /// Refreshes an entry off the request path (stale-while-revalidate, re-warming), at
    /// most once at a time per key.
    #[allow(clippy::too_many_arguments)]
    fn refresh_in_background(
        &self,
        snapshot: &Arc<Snapshot>,
        route: &Route,
        cache: &Arc<Cache>,
        policy: &Arc<RouteCache>,
        primary: &str,
        stored: Arc<StoredResponse>,
        (target, original): (Uri, Uri),
        client_headers: HeaderMap,
        revalidation: HeaderMap,
    ) {
        let Flight::Leader(guard) = cache.join_flight(primary) else {
            return;
        };
        let this = self.clone();
        let snapshot = Arc::clone(snapshot);
        let index = route.index;
        let cache = Arc::clone(cache);
        let policy = Arc::clone(policy);
        let primary = primary.to_owned();
        tokio::spawn(async move {
            let Some(route) = snapshot.router.routes().get(index) else {
                return;
            };
            let mut request = Request::new(());
            *request.uri_mut() = original;
            *request.version_mut() = Version::HTTP_11;
            *request.headers_mut() = revalidation;
            let (parts, ()) = request.into_parts();
            let request_id = HeaderValue::from_static("weir-cache-refresh");
            let Ok((response, _)) = this
                .forward_upstream(&snapshot, route, parts, None, &request_id, None, None)
                .await
            else {
                return;
            };
            let coding = snapshot
                .compression
                .then(|| compress::negotiate(&client_headers));
            let response = encoded(response, coding).await;
            let view = PolicyRequest {
                method: &Method::GET,
                target,
                headers: &client_headers,
            };
            let now = SystemTime::now();
            let fresh = if response.status() == StatusCode::NOT_MODIFIED {
                policy::refresh(&stored, &view, response.headers(), now, &policy.lifetimes)
            } else if status_may_be_stored(response.status()) {
                let (head, body) = response.into_parts();
                let limit = usize::try_from(policy.max_object_bytes).unwrap_or(usize::MAX);
                let Ok(collected) = http_body_util::Limited::new(body, limit).collect().await
                else {
                    return;
                };
                policy::storable(&view, head.status, &head.headers, now, &policy.lifetimes).map(
                    |mut s| {
                        s.body = collected.to_bytes();
                        s
                    },
                )
            } else {
                None
            };
            if let Some(fresh) = fresh {
                cache.stats.revalidated.fetch_add(1, Relaxed);
                cache.store(&policy, &primary, &client_headers, fresh).await;
            }
            drop(guard);
        });
    }
}

/// What a miss's leader holds until its response is stored: the flight (waiters) and the
/// cross-instance lock.
struct Release {
    guard: FlightGuard,
    lock: Option<(Arc<crate::cache::redis::RedisTier>, String)>,
}

impl Drop for Release {
    fn drop(&mut self) {
        if let Some((redis, token)) = self.lock.take() {
            let primary = self.guard.key().to_owned();
            tokio::spawn(async move { redis.unlock(&primary, &token).await });
        }
    }
}

/// Answers from a stored response: the whole response, or 304 to a matching conditional.
#[allow(clippy::too_many_arguments)]
fn serve(
    cache: &Cache,
    tier: Tier,
    stored: &StoredResponse,
    now: SystemTime,
    cache_status: &str,
    head_only: bool,
    client: &HeaderMap,
    route: &Route,
) -> (Response<ResponseBody>, Served) {
    let headers = policy::served_headers(stored, now, cache_status);
    let served = Served {
        route_stats: Arc::clone(&route.stats),
        route: Arc::clone(&route.name),
        endpoint: None,
        attempts: 0,
        upstream: Duration::ZERO,
    };
    let mut response = if stored.status == StatusCode::OK
        && policy::client_not_modified(client, &stored.headers)
    {
        cache.stats.not_modified.fetch_add(1, Relaxed);
        let mut r = Response::new(ResponseBody::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        *r.headers_mut() = policy::not_modified_headers(&headers);
        r
    } else {
        let body = if head_only {
            ResponseBody::empty()
        } else {
            ResponseBody::full(stored.body.clone())
        };
        let mut r = Response::new(body);
        *r.status_mut() = stored.status;
        *r.headers_mut() = headers;
        r
    };
    *response.version_mut() = Version::HTTP_11;
    cache
        .stats
        .record_hit(tier, if head_only { 0 } else { stored.body.len() });
    (response, served)
}

/// The response in the request's coding, when compression is on.
async fn encoded(
    response: Response<ResponseBody>,
    coding: Option<&'static str>,
) -> Response<ResponseBody> {
    match coding {
        Some(coding) => compress::encode(response, coding).await,
        None => response,
    }
}

fn with_status(mut response: Response<ResponseBody>, cache_status: &str) -> Response<ResponseBody> {
    set_status(response.headers_mut(), cache_status);
    response
}

fn set_status(headers: &mut HeaderMap, cache_status: &str) {
    if let Ok(value) = HeaderValue::from_str(cache_status) {
        headers.insert(CACHE_STATUS.clone(), value);
    }
}

fn ttl_secs(stored: &StoredResponse, now: SystemTime) -> u64 {
    stored
        .fresh_until_ms
        .saturating_sub(crate::cache::object::unix_ms(now))
        / 1000
}

/// In the last tenth of its freshness (at least the last second).
fn near_expiry(stored: &StoredResponse, now: SystemTime) -> bool {
    let left = stored
        .fresh_until_ms
        .saturating_sub(crate::cache::object::unix_ms(now));
    let lifetime = stored.policy.time_to_live(now).as_millis() as u64
        + stored.policy.age(now).as_millis() as u64;
    left <= (lifetime / 10).max(1000)
}

/// A `Location`-style reference on the same host as (`path`, `query`).
fn same_host_target(
    reference: &str,
    host: &str,
    base_path: &str,
) -> Option<(String, Option<String>)> {
    let uri: Uri = reference.parse().ok()?;
    if let Some(authority) = uri.authority()
        && !authority.as_str().eq_ignore_ascii_case(host)
    {
        return None;
    }
    let path = uri.path();
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        // Relative: resolved against the request's directory.
        let dir = base_path.rfind('/').map_or("/", |at| &base_path[..=at]);
        format!("{dir}{path}")
    };
    Some((path, uri.query().map(str::to_owned)))
}
