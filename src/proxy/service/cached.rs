//! The request path through the HTTP cache: look up, answer (whole, ranges, 304),
//! revalidate, coalesce misses, store as the body streams, and invalidate after unsafe
//! methods.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::cache_status::{CacheStatus, Outcome};
use super::{Exchange, Failure, ProxyService, Served, Source};
use crate::cache::coalesce;
use crate::cache::object::StoredResponse;
use crate::cache::policy::{self, PolicyRequest, Reuse};
use crate::cache::range::{self, RangeAnswer};
use crate::cache::redis::Lock;
use crate::cache::{Cache, Flight, FlightGuard, MemoryProbe, PurgeTarget, RouteCache, Tier};
use crate::proxy::body::{ResponseBody, Tee};
use crate::proxy::compress;
use crate::proxy::conn::ConnRequestGuard;
use crate::proxy::spans::ChildSpan;
use crate::proxy::stats::CacheLookup;
use crate::telemetry::SpanKind;

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

/// A client answered 304 while the origin is still sending the 200 behind it: the rest of
/// that body is read in the background (for the cache, or so that the upstream connection
/// can be reused) for at most this long…
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// …and, once the cache is not copying it, for at most this many bytes; past them closing
/// the upstream connection is cheaper than reading on.
const DRAIN_LIMIT_BYTES: u64 = 64 * 1024;

/// One GET or HEAD on a caching route: what every step of the cache path needs.
struct CacheCtx<'a> {
    exchange: Exchange<'a>,
    cache: &'a Arc<Cache>,
    policy: &'a Arc<RouteCache>,
    primary: String,
    /// The request as the cache policy sees it: GET, the origin-form target as the route
    /// keys it (query kept, sorted or dropped), and `client_headers`.
    view: PolicyRequest<'a>,
    /// The target as the client sent it: what a fetch of weir's own asks for.
    original: Uri,
    version: Version,
    /// The client's head after weir's own changes (Accept-Encoding reduced to one
    /// coding): it selects variants and carries the client's own conditionals.
    client_headers: &'a HeaderMap,
    /// The coding of this request's variant, when compression is on.
    coding: Option<&'static str>,
    head_only: bool,
}

/// What [`ProxyService::forward_cached`] takes of the request.
pub(super) struct CachedRequest {
    pub parts: http::request::Parts,
    pub body: Incoming,
    pub conn_guard: ConnRequestGuard,
    /// The memory tier's answer, when [`ProxyService::fresh_memory_hit`] asked it.
    pub probed: Option<Probed>,
}

/// A request whose primary key the memory tier was asked about.
pub(super) struct Probed {
    primary: String,
    memory: MemoryProbe,
}

/// Removes the URL-building headers the route does not key on (see
/// [`UNKEYED_URL_HEADERS`]).
fn remove_unkeyed(policy: &RouteCache, headers: &mut HeaderMap) {
    // One pass over the request's few fields first: most requests carry none of these,
    // and each removal hashes and probes (ten of them were 5 % of a hit's instructions).
    if !headers.keys().any(is_unkeyed_url_header) {
        return;
    }
    for name in &UNKEYED_URL_HEADERS {
        if !policy.key.keys_on(name) {
            headers.remove(name);
        }
    }
}

/// Whether `name` is one of [`UNKEYED_URL_HEADERS`]. All but `Forwarded` are `X-` names:
/// that rules out most fields before the list is built and searched (~140 instructions
/// of a hit whose only field is `Host`).
fn is_unkeyed_url_header(name: &HeaderName) -> bool {
    (*name == header::FORWARDED || name.as_str().starts_with("x-"))
        && UNKEYED_URL_HEADERS.contains(name)
}

/// The request's primary cache key.
fn primary_key(policy: &RouteCache, parts: &http::request::Parts) -> String {
    let mut key = String::new();
    primary_key_into(&mut key, policy, parts);
    key
}

/// [`primary_key`] written into `key`.
fn primary_key_into(key: &mut String, policy: &RouteCache, parts: &http::request::Parts) {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    policy.key.primary_into(
        key,
        host,
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
    );
}

thread_local! {
    /// The key a fresh-hit probe is written into: a hit needs no key of its own.
    static PROBE_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// What a cache lookup needs.
#[derive(Clone, Copy)]
struct Lookup<'a> {
    cache: &'a Cache,
    policy: &'a RouteCache,
    primary: &'a str,
    /// Select the variant.
    client_headers: &'a HeaderMap,
    recording: Option<crate::proxy::spans::Recording<'a>>,
}

/// A cache lookup, with a span of its own when the request is recorded.
/// `probe` is the memory tier's answer when it was asked already
/// ([`ProxyService::fresh_memory_hit`]).
async fn traced_lookup(
    lookup: Lookup<'_>,
    probe: Option<MemoryProbe>,
) -> Option<(Arc<StoredResponse>, Tier)> {
    let start = lookup.recording.map(|_| SystemTime::now());
    let found = lookup
        .cache
        .lookup_after(lookup.policy, lookup.primary, lookup.client_headers, probe)
        .await;
    if let (Some(recording), Some(start)) = (lookup.recording, start) {
        let result = found
            .as_ref()
            .map_or("miss", |(_, tier)| tier.status_name());
        recording.child(
            ChildSpan {
                kind: SpanKind::Internal,
                name: "cache lookup".into(),
                start,
                attributes: vec![
                    ("weir.cache.key", lookup.primary.to_owned().into()),
                    ("weir.cache.result", result.into()),
                ],
                error: None,
            },
            None,
        );
    }
    found
}

/// What answering from a stored response needs: less than [`CacheCtx`], so that the
/// common hit is served before the rest of it is built.
struct HitView<'a> {
    exchange: Exchange<'a>,
    cache: &'a Cache,
    client_headers: &'a HeaderMap,
    head_only: bool,
    /// The answer may carry the stored fields as their written-out block
    /// ([`StoredResponse::field_block`]); see [`ProxyService::takes_field_blocks`].
    field_block: bool,
}

impl HitView<'_> {
    /// Route bookkeeping for an answer that came from the cache.
    fn served_from_cache(&self) -> Served {
        Served {
            route_stats: Arc::clone(&self.exchange.route.stats),
            route: Arc::clone(&self.exchange.route.name),
            route_index: self.exchange.route.index,
            side: Some(self.exchange.side),
            source: Source::Cache,
            attempts: 0,
            upstream: Duration::ZERO,
        }
    }
}

impl<'a> CacheCtx<'a> {
    fn lookup(&'a self) -> Lookup<'a> {
        Lookup {
            cache: self.cache,
            policy: self.policy,
            primary: &self.primary,
            client_headers: self.client_headers,
            recording: self.exchange.recording,
        }
    }

    fn hit_view(&'a self) -> HitView<'a> {
        HitView {
            exchange: self.exchange,
            cache: self.cache,
            client_headers: self.client_headers,
            head_only: self.head_only,
            // These answers may still be compressed or relabelled, which reads and
            // changes the map's fields.
            field_block: false,
        }
    }
}

impl ProxyService {
    /// Whether a hit answered as it is may carry the stored fields as a block: only
    /// hyper's HTTP/1 server writes a block as lines (HTTP/2 would take it apart again),
    /// and route response rules, gRPC and the connection's compression layer read or
    /// change the response's fields after it is made.
    fn takes_field_blocks(&self, exchange: &Exchange<'_>, version: Version) -> bool {
        version < Version::HTTP_2
            && !self.conn.is_behind_compression()
            && !exchange.is_grpc
            && !exchange.route.has_response_rules()
    }
}

impl CacheCtx<'_> {
    fn tier_name(&self) -> &'static str {
        if self.policy.memory {
            "weir-l1"
        } else {
            "weir-l2"
        }
    }

    /// Whether the client asked conditionally (it may then get a 304 from weir).
    fn client_conditional(&self) -> bool {
        crate::header_maps::contains(self.client_headers, &header::IF_NONE_MATCH)
            || crate::header_maps::contains(self.client_headers, &header::IF_MODIFIED_SINCE)
    }

    /// A request head of weir's own for this resource (GET, or HEAD for a HEAD), with
    /// `headers`.
    fn fetch_parts(&self, headers: HeaderMap) -> http::request::Parts {
        let method = if self.head_only {
            Method::HEAD
        } else {
            Method::GET
        };
        request_head(method, &self.original, self.version, headers)
    }
}

/// A stored response about to answer a request.
struct Hit<'a> {
    stored: &'a StoredResponse,
    tier: Tier,
    now: SystemTime,
    status: CacheStatus,
}

impl ProxyService {
    /// The commonest cache hit, answered before the cache path's future (several KiB,
    /// boxed) is built: a GET or HEAD without `Range`, plainly fresh in the memory tier.
    /// Otherwise the memory tier's answer is handed on, so that the cache path does not
    /// ask it again. Not tried with compression on (variants by coding) or when the
    /// request is recorded (the lookup has a span of its own).
    pub(super) fn fresh_memory_hit(
        &self,
        exchange: &Exchange<'_>,
        cache: &Arc<Cache>,
        policy: &Arc<RouteCache>,
        parts: &mut http::request::Parts,
    ) -> Result<(Response<ResponseBody>, Served), Option<Probed>> {
        if !policy.memory
            || exchange.snapshot.compression
            || exchange.recording.is_some()
            || !(parts.method == Method::GET || parts.method == Method::HEAD)
            || crate::header_maps::contains(&parts.headers, &header::RANGE)
        {
            return Err(None);
        }
        remove_unkeyed(policy, &mut parts.headers);
        let memory = PROBE_KEY.with_borrow_mut(|key| {
            primary_key_into(key, policy, parts);
            cache.probe_memory(policy, key, &parts.headers)
        });
        if let MemoryProbe::Found(stored) = &memory {
            let view = HitView {
                exchange: *exchange,
                cache,
                client_headers: &parts.headers,
                head_only: parts.method == Method::HEAD,
                field_block: self.takes_field_blocks(exchange, parts.version),
            };
            if let Some(answer) =
                serve_if_plainly_fresh(&view, stored, Tier::Memory, SystemTime::now())
            {
                return Ok(answer);
            }
        }
        // Not served: the rest of the cache path keeps the key.
        let primary = PROBE_KEY.with_borrow(String::clone);
        Err(Some(Probed { primary, memory }))
    }

    pub(super) async fn forward_cached(
        &self,
        exchange: &Exchange<'_>,
        cache: &Arc<Cache>,
        policy: &Arc<RouteCache>,
        request: CachedRequest,
    ) -> Result<(Response<ResponseBody>, Served), Failure> {
        let CachedRequest {
            mut parts,
            body,
            conn_guard,
            probed,
        } = request;
        remove_unkeyed(policy, &mut parts.headers);
        if parts.method != Method::GET && parts.method != Method::HEAD {
            // Boxed so that the hit path's future stays small.
            return Box::pin(self.forward_unsafe(exchange, cache, policy, parts, body, conn_guard))
                .await;
        }
        let (primary, probe) = match probed {
            Some(Probed { primary, memory }) => (primary, Some(memory)),
            None => (primary_key(policy, &parts), None),
        };
        let head_only = parts.method == Method::HEAD;
        // Range applies to GET only (RFC 9110 §14.2).
        let range = (!head_only)
            .then(|| parts.headers.get(header::RANGE).cloned())
            .flatten();
        // With compression on, each coding is a variant of its own (see `compress`). A
        // range request that the cache cannot answer goes upstream as the client sent it,
        // so its reduced head is a copy.
        let compression = exchange.snapshot.compression;
        let (range_headers, coding) = if range.is_none() {
            let coding =
                compression.then(|| compress::normalize_accept_encoding(&mut parts.headers));
            (None, coding)
        } else {
            let mut headers = parts.headers.clone();
            let coding = compression.then(|| compress::normalize_accept_encoding(&mut headers));
            (Some(headers), coding)
        };
        let now = SystemTime::now();
        let found = traced_lookup(
            Lookup {
                cache,
                policy,
                primary: &primary,
                client_headers: range_headers.as_ref().unwrap_or(&parts.headers),
                recording: exchange.recording,
            },
            probe,
        )
        .await;
        // The common hit: answered from the client's own head, before anything else of
        // the cache path (its policy view, targets, a copy of the head) is built.
        if range.is_none()
            && let Some((stored, tier)) = &found
        {
            let view = HitView {
                exchange: *exchange,
                cache,
                client_headers: &parts.headers,
                head_only,
                field_block: self.takes_field_blocks(exchange, parts.version),
            };
            if let Some(answer) = serve_if_plainly_fresh(&view, stored, *tier, now) {
                return Ok(answer);
            }
        }
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
        let client_headers = range_headers.unwrap_or_else(|| parts.headers.clone());
        let ctx = CacheCtx {
            exchange: *exchange,
            cache,
            policy,
            primary,
            view: PolicyRequest {
                method: &Method::GET,
                target,
                headers: &client_headers,
            },
            original,
            version: parts.version,
            client_headers: &client_headers,
            coding,
            head_only,
        };
        if range.is_some() {
            // Ranges are cut from a fresh, complete stored response; anything else goes to
            // the origin as the client sent it, and is not stored.
            if let Some((stored, tier)) = &found
                && stored.status == StatusCode::OK
                && matches!(policy::reuse(stored, &ctx.view, now), Reuse::Fresh)
            {
                return Ok(serve(
                    &ctx.hit_view(),
                    Hit {
                        stored,
                        tier: *tier,
                        now,
                        status: fresh(*tier, stored, now),
                    },
                ));
            }
            cache.stats.bypass.fetch_add(1, Relaxed);
            return self
                .forward_upstream(exchange, &mut parts, Some(body), Some(conn_guard))
                .await;
        }

        let mut revalidating = None;
        if let Some((stored, tier)) = found {
            let cache_status = match policy::reuse(&stored, &ctx.view, now) {
                Reuse::Fresh => {
                    if cache.rewarm_hot && near_expiry(&stored, now) {
                        let revalidation =
                            policy::revalidation_headers(&stored, ctx.client_headers);
                        self.refresh_in_background(&ctx, Arc::clone(&stored), revalidation);
                    }
                    Some(fresh(tier, &stored, now))
                }
                Reuse::StaleWhileRevalidate { revalidation } => {
                    self.refresh_in_background(&ctx, Arc::clone(&stored), revalidation);
                    cache.stats.stale.fetch_add(1, Relaxed);
                    exchange.route.stats.record_cache(CacheLookup::Other);
                    Some(CacheStatus::of_tier(
                        tier,
                        Outcome::Hit {
                            detail: "stale-while-revalidate",
                        },
                    ))
                }
                Reuse::Revalidate { revalidation } => {
                    revalidating = Some((Arc::clone(&stored), tier, revalidation));
                    None
                }
                Reuse::NoMatch => None,
            };
            if let Some(status) = cache_status {
                let hit = Hit {
                    stored: &stored,
                    tier,
                    now,
                    status,
                };
                return Ok(serve(&ctx.hit_view(), hit));
            }
        }

        if let Some((stored, tier, revalidation)) = revalidating {
            return self
                .revalidate(&ctx, (&stored, tier), parts, body, conn_guard, revalidation)
                .await;
        }

        if head_only {
            cache.stats.misses.fetch_add(1, Relaxed);
            exchange.route.stats.record_cache(CacheLookup::Other);
            let (response, served) = self
                .forward_upstream(exchange, &mut parts, Some(body), Some(conn_guard))
                .await?;
            let status = CacheStatus::new(ctx.tier_name(), Outcome::Miss);
            return Ok((with_status(response, status), served));
        }

        // A miss: the first request fetches, concurrent ones wait for it (bounded).
        let mut leader = None;
        match cache.join_flight(&ctx.primary) {
            Flight::Leader(guard) => leader = Some(guard),
            Flight::Follower(waiting) => {
                if coalesce::wait(waiting, cache.coalesce_wait).await
                    && let Some(answer) = self.answer_if_fresh(&ctx, "coalesced").await
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
            match redis.lock(&ctx.primary, cache.coalesce_wait).await {
                Lock::Acquired(token) => lock = Some((Arc::clone(redis), token)),
                Lock::HeldElsewhere => {
                    let deadline = tokio::time::Instant::now() + cache.coalesce_wait;
                    while tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(SHARED_LOCK_POLL).await;
                        if let Some(answer) = self.answer_if_fresh(&ctx, "coalesced").await {
                            return Ok(answer);
                        }
                    }
                }
                Lock::Unavailable => {}
            }
        }
        cache.stats.misses.fetch_add(1, Relaxed);
        exchange.route.stats.record_cache(CacheLookup::Other);
        let release = leader.map(|guard| Release { guard, lock });
        let status = CacheStatus::new(ctx.tier_name(), Outcome::Miss);
        let fetch = Fetch {
            body: Some(body),
            conn_guard: Some(conn_guard),
            release,
        };
        self.fetch_whole(&ctx, parts, fetch, status).await
    }

    /// Asks the origin about a stale entry with its validators, and answers from what
    /// comes back: the refreshed entry on a 304 that is about it, the new response
    /// otherwise, the stale entry when the origin fails and the entry allows it.
    async fn revalidate(
        &self,
        ctx: &CacheCtx<'_>,
        (stored, tier): (&Arc<StoredResponse>, Tier),
        mut parts: http::request::Parts,
        body: Incoming,
        conn_guard: ConnRequestGuard,
        revalidation: HeaderMap,
    ) -> Result<(Response<ResponseBody>, Served), Failure> {
        let cache = ctx.cache;
        parts.headers = revalidation;
        // A second hold on the connection, should the 304 not be about the stored entry.
        let refetch_guard = conn_guard.duplicate();
        let result = self
            .forward_upstream(&ctx.exchange, &mut parts, Some(body), Some(conn_guard))
            .await;
        let now = SystemTime::now();
        let stale = |status: Option<u16>, detail: Option<&'static str>| {
            CacheStatus::of_tier(tier, Outcome::Stale { status, detail })
        };
        let stale_hit = |status: CacheStatus| {
            cache.stats.stale.fetch_add(1, Relaxed);
            ctx.exchange.route.stats.record_cache(CacheLookup::Other);
            serve(
                &ctx.hit_view(),
                Hit {
                    stored,
                    tier,
                    now,
                    status,
                },
            )
        };
        match result {
            Ok((response, served)) if response.status() == StatusCode::NOT_MODIFIED => {
                let Some(fresh) = policy::refresh(
                    stored,
                    &ctx.view,
                    response.headers(),
                    now,
                    &ctx.policy.lifetimes,
                ) else {
                    // The 304 names another response than the stored one: it answers
                    // nobody's question here, so the response is fetched whole (RFC 9111
                    // §4.3.4). It never reaches a client that did not ask for it.
                    drop(response);
                    tracing::debug!(
                        key = %ctx.primary,
                        "a 304 does not match the stored response; fetching it again"
                    );
                    let parts = ctx.fetch_parts(without_conditionals(ctx.client_headers));
                    let fetch = Fetch {
                        body: None,
                        conn_guard: Some(refetch_guard),
                        release: None,
                    };
                    let status = stale(None, Some("304-mismatch"));
                    return self.fetch_whole(ctx, parts, fetch, status).await;
                };
                drop(response);
                cache.stats.revalidated.fetch_add(1, Relaxed);
                let (response, _) = serve(
                    &ctx.hit_view(),
                    Hit {
                        stored: &fresh,
                        tier,
                        now,
                        status: stale(Some(304), None),
                    },
                );
                let (store_cache, policy, primary, request) = (
                    Arc::clone(cache),
                    Arc::clone(ctx.policy),
                    ctx.primary.clone(),
                    ctx.client_headers.clone(),
                );
                cache.spawn_background(async move {
                    store_cache.store(&policy, &primary, &request, fresh).await;
                });
                Ok((response, served))
            }
            Ok((response, served))
                if response.status().is_server_error()
                    && policy::may_serve_on_error(stored, now) =>
            {
                let status = stale(Some(response.status().as_u16()), Some("stale-if-error"));
                drop(response);
                Ok((stale_hit(status).0, served))
            }
            Err(failure)
                if failure.error.status().is_server_error()
                    && (policy::may_serve_on_error(stored, now)
                        || policy::may_serve_when_unreachable(stored, now)) =>
            {
                tracing::debug!(error = %failure.error, "upstream failed; serving stale");
                let detail = if policy::may_serve_on_error(stored, now) {
                    "stale-if-error"
                } else {
                    "origin-unreachable"
                };
                Ok(stale_hit(stale(None, Some(detail))))
            }
            Ok((response, served)) => {
                let status = stale(Some(response.status().as_u16()), None);
                Ok((self.take_fetched(ctx, response, None, status).await, served))
            }
            Err(failure) => Err(failure),
        }
    }

    /// Fetches the whole response for the cache: the client's own validators are not
    /// sent (the cache wants a body to keep) and are answered here instead.
    async fn fetch_whole(
        &self,
        ctx: &CacheCtx<'_>,
        mut parts: http::request::Parts,
        fetch: Fetch,
        status: CacheStatus,
    ) -> Result<(Response<ResponseBody>, Served), Failure> {
        parts.headers.remove(header::IF_NONE_MATCH);
        parts.headers.remove(header::IF_MODIFIED_SINCE);
        let (response, served) = self
            .forward_upstream(&ctx.exchange, &mut parts, fetch.body, fetch.conn_guard)
            .await?;
        Ok((
            self.take_fetched(ctx, response, fetch.release, status)
                .await,
            served,
        ))
    }

    /// A response fetched for the cache: encoded in the request's coding, copied to the
    /// cache as it streams, and turned into a 304 when the client's own conditional
    /// matches it.
    async fn take_fetched(
        &self,
        ctx: &CacheCtx<'_>,
        response: Response<ResponseBody>,
        release: Option<Release>,
        status: CacheStatus,
    ) -> Response<ResponseBody> {
        let response = encoded(response, ctx.coding).await;
        let response = store_as_it_streams(ctx, response, release, status);
        if !(ctx.client_conditional()
            && response.status() == StatusCode::OK
            && policy::client_not_modified(ctx.client_headers, response.headers()))
        {
            return response;
        }
        ctx.cache.stats.not_modified.fetch_add(1, Relaxed);
        let (head, body) = response.into_parts();
        drain_in_background(ctx.cache, body);
        let mut not_modified = Response::new(ResponseBody::empty());
        *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
        *not_modified.headers_mut() = policy::not_modified_headers(&head.headers);
        not_modified
    }

    /// Looks again after waiting on another request's fetch.
    async fn answer_if_fresh(
        &self,
        ctx: &CacheCtx<'_>,
        detail: &'static str,
    ) -> Option<(Response<ResponseBody>, Served)> {
        let now = SystemTime::now();
        let (stored, tier) = traced_lookup(ctx.lookup(), None).await?;
        if !matches!(policy::reuse(&stored, &ctx.view, now), Reuse::Fresh) {
            return None;
        }
        ctx.cache.stats.coalesced.fetch_add(1, Relaxed);
        Some(serve(
            &ctx.hit_view(),
            Hit {
                stored: &stored,
                tier,
                now,
                status: CacheStatus::of_tier(tier, Outcome::Hit { detail }),
            },
        ))
    }

    /// Unsafe methods go upstream; a success invalidates the target URI and the
    /// `Location` / `Content-Location` it names on the same host (RFC 9111 §4.4).
    async fn forward_unsafe(
        &self,
        exchange: &Exchange<'_>,
        cache: &Arc<Cache>,
        policy: &Arc<RouteCache>,
        mut parts: http::request::Parts,
        body: Incoming,
        conn_guard: ConnRequestGuard,
    ) -> Result<(Response<ResponseBody>, Served), Failure> {
        let invalidates = !matches!(parts.method, Method::OPTIONS | Method::TRACE);
        let request_headers = parts.headers.clone();
        let request_path = parts.uri.path().to_owned();
        let request_query = parts.uri.query().map(str::to_owned);
        cache.stats.bypass.fetch_add(1, Relaxed);
        let (response, served) = self
            .forward_upstream(exchange, &mut parts, Some(body), Some(conn_guard))
            .await?;
        let status = response.status();
        if invalidates && (status.is_success() || status.is_redirection()) {
            let host = request_headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            let mut keys = vec![policy.key.primary(
                host,
                &request_path,
                request_query.as_deref(),
                &request_headers,
            )];
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

    /// Refreshes an entry off the request path (stale-while-revalidate, re-warming), at
    /// most once at a time per key.
    fn refresh_in_background(
        &self,
        ctx: &CacheCtx<'_>,
        stored: Arc<StoredResponse>,
        revalidation: HeaderMap,
    ) {
        let Flight::Leader(guard) = ctx.cache.join_flight(&ctx.primary) else {
            return;
        };
        let refresh = BackgroundRefresh {
            service: self.clone(),
            snapshot: Arc::clone(ctx.exchange.snapshot),
            route_index: ctx.exchange.route.index,
            side: ctx.exchange.side,
            pool: Arc::clone(ctx.exchange.pool),
            cache: Arc::clone(ctx.cache),
            policy: Arc::clone(ctx.policy),
            primary: ctx.primary.clone(),
            target: ctx.view.target.clone(),
            original: ctx.original.clone(),
            client_headers: ctx.client_headers.clone(),
        };
        let cache = Arc::clone(ctx.cache);
        cache.spawn_background(async move {
            refresh.run(stored, revalidation).await;
            drop(guard);
        });
    }
}

/// What a fetch for the cache takes besides the request head.
struct Fetch {
    /// The client's body, if the client's own request is the one going upstream.
    body: Option<Incoming>,
    conn_guard: Option<ConnRequestGuard>,
    /// A miss's leadership, released once the response is stored.
    release: Option<Release>,
}

/// A refresh of one entry running after the request that started it has been answered.
struct BackgroundRefresh {
    service: ProxyService,
    snapshot: Arc<crate::proxy::snapshot::Snapshot>,
    route_index: usize,
    /// The split side (and its pool) the request that found the entry due went to.
    side: usize,
    pool: Arc<crate::upstream::Pool>,
    cache: Arc<Cache>,
    policy: Arc<RouteCache>,
    primary: String,
    target: Uri,
    original: Uri,
    client_headers: HeaderMap,
}

impl BackgroundRefresh {
    async fn run(self, stored: Arc<StoredResponse>, revalidation: HeaderMap) {
        let Some(route) = self.snapshot.router.routes().get(self.route_index) else {
            return;
        };
        let request_id = HeaderValue::from_static("weir-cache-refresh");
        let exchange = Exchange {
            snapshot: &self.snapshot,
            route,
            side: self.side,
            pool: &self.pool,
            // A refresh is weir's own request, not the client's: not copied.
            mirror: None,
            request_id: &request_id,
            traceparent: None,
            trace: None,
            // The refresh is made for the connection that found the entry due.
            client: &self.service.client,
            // Refreshes are GETs of stored responses; gRPC calls are never stored.
            is_grpc: false,
            // A background refresh belongs to no recorded request.
            recording: None,
        };
        let view = PolicyRequest {
            method: &Method::GET,
            target: self.target.clone(),
            headers: &self.client_headers,
        };
        // A 304 that is not about the stored entry is followed by one unconditional fetch.
        let mut headers = revalidation;
        let coding = self
            .snapshot
            .compression
            .then(|| compress::negotiate(&self.client_headers));
        for _ in 0..2 {
            let mut parts = request_head(Method::GET, &self.original, Version::HTTP_11, headers);
            let Ok((response, _)) = self
                .service
                .forward_upstream(&exchange, &mut parts, None, None)
                .await
            else {
                return;
            };
            let response = encoded(response, coding).await;
            let now = SystemTime::now();
            let fresh = if response.status() == StatusCode::NOT_MODIFIED {
                match policy::refresh(
                    &stored,
                    &view,
                    response.headers(),
                    now,
                    &self.policy.lifetimes,
                ) {
                    Some(fresh) => Some(fresh),
                    None => {
                        headers = without_conditionals(&self.client_headers);
                        continue;
                    }
                }
            } else {
                let (head, body) = response.into_parts();
                let limit = usize::try_from(self.policy.max_object_bytes).unwrap_or(usize::MAX);
                let Ok(collected) = http_body_util::Limited::new(body, limit).collect().await
                else {
                    return;
                };
                policy::storable(
                    &view,
                    head.status,
                    &head.headers,
                    now,
                    &self.policy.lifetimes,
                )
                .map(|mut s| {
                    s.body = crate::cache::object::owned_body(collected.aggregate());
                    s
                })
            };
            if let Some(fresh) = fresh {
                self.cache.stats.revalidated.fetch_add(1, Relaxed);
                self.cache
                    .store(&self.policy, &self.primary, &self.client_headers, fresh)
                    .await;
            }
            return;
        }
    }
}

/// Attaches the cache's copy to a response that may be stored, and names the outcome in
/// `Cache-Status`.
fn store_as_it_streams(
    ctx: &CacheCtx<'_>,
    response: Response<ResponseBody>,
    release: Option<Release>,
    status: CacheStatus,
) -> Response<ResponseBody> {
    let (mut head, body) = response.into_parts();
    let declared = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = declared.is_some_and(|n| n > ctx.policy.max_object_bytes);
    let stored = (!ctx.head_only && !too_large)
        .then(|| {
            policy::storable(
                &ctx.view,
                head.status,
                &head.headers,
                SystemTime::now(),
                &ctx.policy.lifetimes,
            )
        })
        .flatten();
    if too_large {
        ctx.cache.stats.too_large.fetch_add(1, Relaxed);
    }
    let Some(stored) = stored else {
        status.set_on(&mut head.headers);
        return Response::from_parts(head, body);
    };
    CacheStatus {
        stored: true,
        ..status
    }
    .set_on(&mut head.headers);
    let cache = Arc::clone(ctx.cache);
    let policy = Arc::clone(ctx.policy);
    let primary = ctx.primary.clone();
    let request = ctx.client_headers.clone();
    let store = move |bytes: Bytes| {
        let mut stored = stored;
        stored.body = bytes;
        let store_cache = Arc::clone(&cache);
        cache.spawn_background(async move {
            store_cache.store(&policy, &primary, &request, stored).await;
            drop(release);
        });
    };
    let limit = usize::try_from(ctx.policy.max_object_bytes).unwrap_or(usize::MAX);
    Response::from_parts(head, body.with_tee(Tee::new(limit, store)))
}

/// Reads the rest of a body nobody will see, bounded (see [`DRAIN_DEADLINE`] and
/// [`DRAIN_LIMIT_BYTES`]) and tracked by the cache: the cache may still be copying it,
/// and a body read to its end lets the upstream connection be reused.
fn drain_in_background(cache: &Cache, body: ResponseBody) {
    cache.spawn_background(async move {
        let _ = tokio::time::timeout(DRAIN_DEADLINE, drain(body)).await;
    });
}

async fn drain(body: ResponseBody) {
    let mut body = std::pin::pin!(body);
    let mut read = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        if let Some(data) = frame.data_ref() {
            read += data.len() as u64;
        }
        if !body.is_teeing() && read > DRAIN_LIMIT_BYTES {
            return;
        }
    }
}

/// A request head of weir's own (a refetch or a refresh), with no body.
fn request_head(
    method: Method,
    target: &Uri,
    version: Version,
    headers: HeaderMap,
) -> http::request::Parts {
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = target.clone();
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    request.into_parts().0
}

/// The client's head without its validators.
fn without_conditionals(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    headers
}

/// Answers from a stored response: the whole response, a 304 to a matching conditional,
/// or a byte range of it (206, or 416 when the range lies past its end).
/// The common hit: `stored` answers the client's own head as it is (plainly fresh, and
/// not one that a hot-entry rewarm should refresh first).
fn serve_if_plainly_fresh(
    view: &HitView<'_>,
    stored: &StoredResponse,
    tier: Tier,
    now: SystemTime,
) -> Option<(Response<ResponseBody>, Served)> {
    if !policy::plainly_fresh(stored, view.client_headers, now)
        || (view.cache.rewarm_hot && near_expiry(stored, now))
    {
        return None;
    }
    let hit = Hit {
        stored,
        tier,
        now,
        status: fresh(tier, stored, now),
    };
    Some(serve(view, hit))
}

fn serve(ctx: &HitView<'_>, hit: Hit<'_>) -> (Response<ResponseBody>, Served) {
    let Hit {
        stored,
        tier,
        now,
        status,
    } = hit;
    let client = ctx.client_headers;
    let stored_ok = stored.status == StatusCode::OK;
    let range = client
        .get(header::RANGE)
        .filter(|_| stored_ok && !ctx.head_only && range::if_range_allows(client, &stored.headers))
        .map_or(RangeAnswer::Whole, |r| {
            range::select(r, stored.body.len() as u64)
        });
    let mut response = if stored_ok && policy::client_not_modified(client, &stored.headers) {
        ctx.cache.stats.not_modified.fetch_add(1, Relaxed);
        let mut r = Response::new(ResponseBody::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        let headers = policy::served_headers(stored, now, status.render());
        *r.headers_mut() = policy::not_modified_headers(&headers);
        r
    } else if let RangeAnswer::Partial { first, last } = range {
        // Both ends lie within the body (`range::select`).
        let part = stored.body.slice(first as usize..=last as usize);
        let mut r = Response::new(ResponseBody::full(part));
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        *r.headers_mut() = policy::served_headers(stored, now, status.render());
        let len = stored.body.len() as u64;
        if let Some(value) = range.content_range(len) {
            r.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
        r
    } else if range == RangeAnswer::Unsatisfiable {
        let mut r = Response::new(ResponseBody::empty());
        *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
        if let Some(value) = range.content_range(stored.body.len() as u64) {
            r.headers_mut().insert(header::CONTENT_RANGE, value);
        }
        for name in [header::DATE, header::ETAG, header::LAST_MODIFIED] {
            if let Some(value) = stored.headers.get(&name) {
                r.headers_mut().insert(name, value.clone());
            }
        }
        status.set_on(r.headers_mut());
        r
    } else {
        let body = if ctx.head_only {
            ResponseBody::empty()
        } else {
            ResponseBody::full(stored.body.clone())
        };
        let mut r = Response::new(body);
        *r.status_mut() = stored.status;
        *r.headers_mut() = match &stored.field_block {
            Some(block) if ctx.field_block => policy::served_headers_with_block(
                stored,
                block,
                now,
                status.render(),
                ctx.head_only,
            ),
            _ => policy::served_headers(stored, now, status.render()),
        };
        r
    };
    *response.version_mut() = Version::HTTP_11;
    let sent = hyper::body::Body::size_hint(response.body())
        .exact()
        .unwrap_or(0);
    ctx.cache
        .stats
        .record_hit(tier, usize::try_from(sent).unwrap_or(usize::MAX));
    ctx.exchange.route.stats.record_cache(match tier {
        Tier::Memory => CacheLookup::MemoryHit,
        Tier::Redis => CacheLookup::RedisHit,
    });
    (response, ctx.served_from_cache())
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

fn with_status(
    mut response: Response<ResponseBody>,
    status: CacheStatus,
) -> Response<ResponseBody> {
    status.set_on(response.headers_mut());
    response
}

/// A fresh hit from `tier`, with the whole seconds of freshness left.
fn fresh(tier: Tier, stored: &StoredResponse, now: SystemTime) -> CacheStatus {
    let ttl = stored
        .fresh_until_ms
        .saturating_sub(crate::cache::object::unix_ms(now))
        / 1000;
    CacheStatus::of_tier(tier, Outcome::Fresh { ttl })
}

/// In the last tenth of its freshness (at least the last second).
fn near_expiry(stored: &StoredResponse, now: SystemTime) -> bool {
    let left = stored
        .fresh_until_ms
        .saturating_sub(crate::cache::object::unix_ms(now));
    let lifetime =
        stored.policy.time_to_live(now).as_millis() as u64 + stored.age(now).as_millis() as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unkeyed_url_header_is_recognised_alone() {
        for name in &UNKEYED_URL_HEADERS {
            assert!(is_unkeyed_url_header(name), "{name}");
        }
        for name in [
            "host",
            "user-agent",
            "x-request-id",
            "x-forwarded-for",
            "origin",
        ] {
            let name = HeaderName::from_static(name);
            assert!(!is_unkeyed_url_header(&name), "{name}");
        }
    }
}
