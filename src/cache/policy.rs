//! HTTP caching semantics (RFC 9111) around the `http-cache-semantics` crate: what may be
//! stored and for how long, what a stored response may answer, conditional requests, and
//! the `Cache-Status` field (RFC 9211).
//!
//! The crate decides storability, freshness, `Vary` matching and revalidation headers.
//! This module adds what it leaves out: `CDN-Cache-Control` (RFC 9213), route TTL
//! overrides, `stale-while-revalidate` / `stale-if-error` (RFC 5861), surrogate keys, and
//! serving heads with every value of repeated fields (the crate collapses them).

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy, RequestLike};
use hyper::ext::FieldBlock;

use super::object::{StoredResponse, age_origin, owned_headers, served_field_block, unix_ms};

pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
/// Announces weir as a surrogate to origins (Edge Architecture 1.0 §2.1), so that they can
/// target `Surrogate-Control` directives at it (`max-age=60;weir`).
pub static SURROGATE_CAPABILITY: HeaderName = HeaderName::from_static("surrogate-capability");
/// weir's device token in `Surrogate-Capability` and in targeted directives.
pub const SURROGATE_DEVICE: &str = "weir";
/// The capability weir announces: `weir="Surrogate/1.0"`.
pub static SURROGATE_CAPABILITY_VALUE: HeaderValue =
    HeaderValue::from_static("weir=\"Surrogate/1.0\"");
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Statuses the `http-cache-semantics` crate knows the semantics of; it refuses any other.
/// weir stores the rest too when the origin gave them explicit freshness (RFC 9111 §3:
/// any final status the cache understands may be stored when the response allows it, and
/// explicit freshness does), building their policy as if they were a 200.
const CRATE_STATUSES: &[u16] = &[
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// Fields a 304 must not overwrite in the stored head (RFC 9111 §3.2).
const NOT_UPDATED_BY_304: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-md5",
    "transfer-encoding",
    "content-range",
];

/// How long responses may live, as a route configures it.
#[derive(Debug, Clone, Default)]
pub struct Lifetimes {
    pub ttl: Option<Duration>,
    pub min_ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
    /// Entries with a validator stay this long past freshness, for revalidation.
    pub keep_stale: Duration,
    /// Stale entries may answer this long past freshness while the origin is unreachable.
    pub stale_if_unreachable: Duration,
    pub heuristic: f32,
}

/// A request as the cache policy sees it: origin-form target and the client's head.
pub struct PolicyRequest<'a> {
    pub method: &'a Method,
    pub target: Uri,
    pub headers: &'a HeaderMap,
}

impl RequestLike for PolicyRequest<'_> {
    fn uri(&self) -> Uri {
        self.target.clone()
    }
    fn is_same_uri(&self, other: &Uri) -> bool {
        &self.target == other
    }
    fn method(&self) -> &Method {
        self.method
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

struct ResponseView<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
}

impl http_cache_semantics::ResponseLike for ResponseView<'_> {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        self.headers
    }
}

/// Builds the stored form of a response (without its body), or `None` if it must not or
/// need not be stored.
pub fn storable(
    req: &PolicyRequest<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    lifetimes: &Lifetimes,
) -> Option<StoredResponse> {
    // Shared caches replaying one client's cookie to another is the classic cache leak;
    // like Varnish and nginx, such responses are not stored.
    if headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    // Never 206 (ranges are served from complete responses) or 304 (no body of its own).
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return None;
    }
    // What is kept (the served head, the policy's copies of both heads) is built from
    // copies in allocations of their own: see `owned_headers`.
    let headers = &owned_headers(headers);
    let request_headers = owned_headers(req.headers);
    let req = &PolicyRequest {
        method: req.method,
        target: req.target.clone(),
        headers: &request_headers,
    };
    let (mut view, withheld) = policy_view(headers);
    let view = &mut view;
    let directives = Directives::parse(view.get_all(header::CACHE_CONTROL));
    let understood = CRATE_STATUSES.contains(&status.as_u16());
    let explicit = directives.explicit_freshness || view.contains_key(header::EXPIRES);
    if !understood && (directives.must_understand || !explicit) {
        // `must-understand` (RFC 9111 §5.2.2.3) limits storing to caches that know the
        // status's semantics; without explicit freshness only the statuses that are
        // heuristically cacheable may be stored (RFC 9110 §15.1).
        return None;
    }
    if understood && directives.must_understand {
        // A cache that understands the status ignores the `no-store` sent beside
        // `must-understand` for older caches.
        remove_directive(view, "no-store");
    }
    let policy_status = if understood { status } else { StatusCode::OK };
    let options = CacheOptions {
        shared: true,
        cache_heuristic: lifetimes.heuristic,
        ..CacheOptions::default()
    };
    let normalized = vary_view(req.headers, headers);
    let vary_req = normalized.as_ref().map(|headers| PolicyRequest {
        method: req.method,
        target: req.target.clone(),
        headers,
    });
    let req = vary_req.as_ref().unwrap_or(req);
    let build = |view: &HeaderMap| {
        CachePolicy::new_options(
            req,
            &ResponseView {
                status: policy_status,
                headers: view,
            },
            now,
            options,
        )
    };
    let mut policy = build(view);
    if !policy.is_storable() {
        return None;
    }
    let origin_ttl = policy.time_to_live(now);
    let wanted = clamp_ttl(origin_ttl, lifetimes);
    if wanted != origin_ttl && !directives.revalidate_always {
        // s-maxage rules for shared caches and counts from the response's age.
        let s_maxage = wanted + policy.age(now);
        let mut cc = directives_without(view, "s-maxage");
        cc.push(format!("s-maxage={}", s_maxage.as_secs()));
        set_cache_control(view, &cc);
        policy = build(view);
    }
    let ttl = policy.time_to_live(now);
    let has_validator =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    // must-revalidate, proxy-revalidate, no-cache and (for a shared cache) s-maxage forbid
    // serving stale without the origin's explicit leave (RFC 9111 §4.2.4, §5.2.2.10). A
    // response with no freshness at all, explicit or heuristic, is not kept for an outage
    // either: on a caching route that would store every API answer without caching
    // headers.
    let stale_if_unreachable =
        if directives.revalidate_always || directives.s_maxage || (ttl.is_zero() && !explicit) {
            Duration::ZERO
        } else {
            lifetimes.stale_if_unreachable
        };
    let stale_window = Duration::from_secs(directives.stale_while_revalidate)
        .max(Duration::from_secs(directives.stale_if_error));
    let keep =
        ttl + if directives.revalidate_always {
            Duration::ZERO
        } else {
            stale_window.max(stale_if_unreachable)
        } + if has_validator {
            lifetimes.keep_stale
        } else {
            Duration::ZERO
        };
    if keep.is_zero() {
        return None;
    }
    let mut tags = Vec::new();
    for value in headers.get_all(&SURROGATE_KEY) {
        if let Ok(v) = value.to_str() {
            tags.extend(v.split_ascii_whitespace().map(str::to_owned));
        }
    }
    for value in headers.get_all(&CACHE_TAG) {
        if let Ok(v) = value.to_str() {
            tags.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    tags.sort_unstable();
    tags.dedup();
    let mut served = headers.clone();
    served.remove(header::AGE);
    for name in &withheld {
        served.remove(name);
    }
    Some(StoredResponse {
        age_origin: age_origin(&policy, now),
        policy,
        status,
        field_block: served_field_block(&served),
        headers: served,
        fresh_until_ms: unix_ms(now + ttl),
        stale_while_revalidate: directives.stale_while_revalidate,
        stale_if_error: directives.stale_if_error,
        stale_if_unreachable: stale_if_unreachable.as_secs(),
        revalidate_always: directives.revalidate_always,
        tags,
        keep_until_ms: unix_ms(now + keep),
        body: bytes::Bytes::new(),
    })
}

/// The response head as the policy sees it:
/// - a targeted field replaces Cache-Control for this cache: `CDN-Cache-Control`
///   (RFC 9213 §2.1), else `Surrogate-Control` (Edge Architecture 1.0);
/// - directive names are lowercased (they are case-insensitive, RFC 9111 §5.2);
/// - an `Age` that is not one non-negative integer makes the response stale;
/// - dates in any of the three HTTP-date forms are rewritten as IMF-fixdate;
/// - `no-cache="field"` and `private="field"` are left out: they do not stop a shared
///   cache from reusing the response, only from sending those fields without
///   revalidation (RFC 9111 §5.2.2.4, §5.2.2.7), so the fields, returned beside the view,
///   are not stored (the crate would treat the qualified forms as unqualified).
fn policy_view(headers: &HeaderMap) -> (HeaderMap, Vec<HeaderName>) {
    let mut view = headers.clone();
    if let Some(cdn) = headers.get(&CDN_CACHE_CONTROL) {
        view.insert(header::CACHE_CONTROL, cdn.clone());
    } else if let Some(ours) = surrogate_directives(headers) {
        view.insert(header::CACHE_CONTROL, ours);
    }
    let mut withheld = Vec::new();
    let mut directives: Vec<String> = Vec::new();
    for value in view.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in split_directives(value) {
            let (name, arg) = match directive.split_once('=') {
                Some((name, arg)) => (name.trim().to_ascii_lowercase(), Some(arg.trim())),
                None => (directive.to_ascii_lowercase(), None),
            };
            match (name.as_str(), arg) {
                ("no-cache" | "private", Some(fields)) => withheld.extend(
                    fields
                        .trim_matches('"')
                        .split(',')
                        .filter_map(|f| HeaderName::from_bytes(f.trim().as_bytes()).ok()),
                ),
                (_, Some(arg)) => directives.push(format!("{name}={arg}")),
                (_, None) => directives.push(name),
            }
        }
    }
    if view.contains_key(header::CACHE_CONTROL) {
        set_cache_control(&mut view, &directives);
    }
    // Recipients must accept all three HTTP-date forms (RFC 9110 §5.6.7); the crate reads
    // only the IMF-fixdate one, and would take an RFC 850 or asctime `Expires` as past.
    for name in [header::EXPIRES, header::DATE, header::LAST_MODIFIED] {
        if let Some(date) = view
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
            && let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(date))
        {
            view.insert(name, value);
        }
    }
    let mut ages = headers.get_all(header::AGE).iter();
    if let Some(age) = ages.next() {
        let valid = ages.next().is_none()
            && !age.is_empty()
            && age.as_bytes().iter().all(u8::is_ascii_digit);
        if !valid {
            view.insert(header::AGE, HeaderValue::from_static("2147483648"));
        }
    }
    (view, withheld)
}

/// The directives of one `Cache-Control`-style field value, split at commas outside
/// quoted strings (`no-cache="a, b"` is one directive), trimmed, empty ones dropped.
fn split_directives(value: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut start = 0;
    let mut parts = Vec::new();
    for (at, byte) in value.bytes().enumerate() {
        match byte {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&value[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().map(str::trim).filter(|d| !d.is_empty())
}

/// The `Surrogate-Control` directives that apply to weir: those without a target and those
/// targeted at `weir` (`max-age=60;weir`); directives for other devices are left out.
/// `None` when the response has no `Surrogate-Control`.
fn surrogate_directives(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&SURROGATE_CONTROL).iter().peekable();
    values.peek()?;
    let ours: Vec<&str> = values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter_map(|directive| match directive.rsplit_once(';') {
            Some((directive, target)) => target
                .trim()
                .eq_ignore_ascii_case(SURROGATE_DEVICE)
                .then(|| directive.trim()),
            None => Some(directive),
        })
        .filter(|d| !d.is_empty())
        .collect();
    HeaderValue::from_str(&ours.join(", ")).ok()
}

/// Removes one directive (by name) from the view's `Cache-Control`.
fn remove_directive(view: &mut HeaderMap, name: &str) {
    let kept = directives_without(view, name);
    set_cache_control(view, &kept);
}

/// The view's `Cache-Control` directives (split outside quoted strings), except those
/// named `name`.
fn directives_without(view: &HeaderMap, name: &str) -> Vec<String> {
    view.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_directives)
        .filter(|d| {
            !d.split('=')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(name)
        })
        .map(str::to_owned)
        .collect()
}

/// Makes `directives` the view's one `Cache-Control` field (none when there are none).
fn set_cache_control(view: &mut HeaderMap, directives: &[String]) {
    match HeaderValue::from_str(&directives.join(", ")) {
        Ok(value) if !directives.is_empty() => {
            view.insert(header::CACHE_CONTROL, value);
        }
        _ => {
            view.remove(header::CACHE_CONTROL);
        }
    }
}

fn clamp_ttl(origin: Duration, lifetimes: &Lifetimes) -> Duration {
    let mut ttl = lifetimes.ttl.unwrap_or(origin);
    if let Some(min) = lifetimes.min_ttl {
        ttl = ttl.max(min);
    }
    if let Some(max) = lifetimes.max_ttl {
        ttl = ttl.min(max);
    }
    ttl
}

/// What a stored response can do for a request.
pub enum Reuse {
    /// Fresh (or stale as the client allows): answer from the cache.
    Fresh,
    /// Stale but inside `stale-while-revalidate`: answer, then refresh in the background.
    StaleWhileRevalidate { revalidation: HeaderMap },
    /// Must go upstream; with `conditional`, as a revalidation (ETag/Last-Modified).
    Revalidate { revalidation: HeaderMap },
    /// Not for this request (another URI, Vary mismatch, or a method it cannot answer).
    NoMatch,
}

/// The request's head with the selecting headers that `response_headers`' `Vary` names
/// normalised as the variant key sees them ([`super::key::selecting_value`]), so that the
/// crate's `Vary` check agrees with the key. `None` when the response has no `Vary`.
fn vary_view(request: &HeaderMap, response_headers: &HeaderMap) -> Option<HeaderMap> {
    let mut names = super::key::vary_names(response_headers)
        .filter(|n| n != "*")
        .peekable();
    names.peek()?;
    let mut view = request.clone();
    for name in names {
        let Ok(header_name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if let Some(value) =
            super::key::selecting_value(&name, request).and_then(|v| HeaderValue::from_str(&v).ok())
        {
            view.insert(header_name, value);
        }
    }
    Some(view)
}

/// `req` should carry GET for a HEAD request: a stored GET response answers both.
/// Whether `stored` answers a request as it is, decided without the policy's view of the
/// request: fresh by weir's clock (which soft purges shorten) and the policy's, no `Vary`
/// (variants go through [`reuse`]), and a request without `Cache-Control` or `Pragma`, so
/// with no directive of its own to weigh. Where it holds, [`reuse`] says `Fresh` too (its
/// URI, method and host checks hold for an entry found under the request's key), but only
/// after building a whole response head per hit; this is the common hit without that.
/// Hosts are compared as the key compares them, without case (RFC 9110 §4.2.3).
/// The policy's own `is_stale` is not asked: `fresh_until_ms` is the end of the policy's
/// freshness (set from its `time_to_live` at its response time, by [`storable`] and
/// [`refresh`], to the millisecond and never later), shortened only by soft purges, and
/// `is_stale` parses the stored `Cache-Control` and dates again at every call (2 700
/// instructions, a tenth of a hit).
pub fn plainly_fresh(stored: &StoredResponse, request: &HeaderMap, now: SystemTime) -> bool {
    use crate::header_maps::contains;
    !contains(request, &header::CACHE_CONTROL)
        && !contains(request, &header::PRAGMA)
        && !contains(&stored.headers, &header::VARY)
        && stored.is_fresh_at(now)
}

pub fn reuse(stored: &StoredResponse, req: &PolicyRequest<'_>, now: SystemTime) -> Reuse {
    let normalized = vary_view(req.headers, &stored.headers);
    let vary_req = normalized.as_ref().map(|headers| PolicyRequest {
        method: req.method,
        target: req.target.clone(),
        headers,
    });
    match stored
        .policy
        .before_request(vary_req.as_ref().unwrap_or(req), now)
    {
        BeforeRequest::Fresh(_) if stored.is_fresh_at(now) || client_accepts_stale(req) => {
            Reuse::Fresh
        }
        BeforeRequest::Fresh(_) => Reuse::Revalidate {
            // Soft-purged: fresh to the policy, stale to us.
            revalidation: revalidation_headers(stored, req.headers),
        },
        BeforeRequest::Stale { request, matches } => {
            if !matches {
                return Reuse::NoMatch;
            }
            let wants_fresh = Directives::parse(req.headers.get_all(header::CACHE_CONTROL))
                .requires_validation
                || req.headers.get(header::PRAGMA).is_some_and(|p| {
                    p.to_str()
                        .is_ok_and(|p| p.to_ascii_lowercase().contains("no-cache"))
                });
            let revalidation = if stored.is_fresh_at(now) && vary_req.is_none() {
                request.headers
            } else {
                revalidation_headers(stored, req.headers)
            };
            if !wants_fresh
                && !stored.revalidate_always
                && stored.staleness(now) <= Duration::from_secs(stored.stale_while_revalidate)
                && stored.stale_while_revalidate > 0
            {
                Reuse::StaleWhileRevalidate { revalidation }
            } else {
                Reuse::Revalidate { revalidation }
            }
        }
    }
}

fn client_accepts_stale(req: &PolicyRequest<'_>) -> bool {
    Directives::parse(req.headers.get_all(header::CACHE_CONTROL)).max_stale
}

/// The request head for revalidating `stored`: the client's, with its validators.
pub fn revalidation_headers(stored: &StoredResponse, client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    headers.remove(header::IF_RANGE);
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
    if let Some(etag) = stored.headers.get(header::ETAG) {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.headers.get(header::LAST_MODIFIED) {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
    headers
}

/// Whether a stale entry may answer because the origin failed (`stale-if-error`).
pub fn may_serve_on_error(stored: &StoredResponse, now: SystemTime) -> bool {
    !stored.revalidate_always
        && stored.stale_if_error > 0
        && stored.staleness(now) <= Duration::from_secs(stored.stale_if_error)
}

/// Whether the stale entry may answer because the origin could not be reached at all.
pub fn may_serve_when_unreachable(stored: &StoredResponse, now: SystemTime) -> bool {
    stored.stale_if_unreachable > 0
        && stored.staleness(now) <= Duration::from_secs(stored.stale_if_unreachable)
}

/// Whether a 304 that answered weir's own revalidation of `stored` (sent with the stored
/// validators) is about that stored response (RFC 9111 §4.3.4):
/// - a strong ETag must be the stored one (weir may have weakened the stored tag when it
///   compressed the body, so the stored tag is compared without its `W/`);
/// - a weak ETag must match the stored one weakly;
/// - a Last-Modified alone must equal the stored one, if the stored response has one;
/// - a 304 with no validator of its own (allowed, and common) answers the conditional
///   request weir sent, which named this response and no other: it selects it.
pub fn not_modified_selects(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    fn text(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }
    if let Some(new) = text(not_modified, header::ETAG) {
        let Some(old) = text(stored, header::ETAG) else {
            return false;
        };
        return if new.starts_with("W/") {
            opaque_tag(old) == opaque_tag(new)
        } else {
            opaque_tag(old) == new
        };
    }
    if let Some(new) = text(not_modified, header::LAST_MODIFIED) {
        return text(stored, header::LAST_MODIFIED).is_none_or(|old| old == new);
    }
    true
}

/// After a 304 to a revalidation: the stored response with the 304's fields applied, or
/// `None` if the 304 is not about this response (see [`not_modified_selects`]).
pub fn refresh(
    stored: &StoredResponse,
    req: &PolicyRequest<'_>,
    not_modified: &HeaderMap,
    now: SystemTime,
    lifetimes: &Lifetimes,
) -> Option<StoredResponse> {
    if !not_modified_selects(&stored.headers, not_modified) {
        return None;
    }
    let mut merged = stored.headers.clone();
    for name in not_modified.keys() {
        if NOT_UPDATED_BY_304.contains(&name.as_str()) || name == header::CONNECTION {
            continue;
        }
        // A weak ETag stays weak: weir weakened it when it compressed the stored body, and
        // the origin's 304 names the strong one of the uncompressed representation.
        if name == header::ETAG
            && let (Some(old), Some(new)) = (stored.headers.get(name), not_modified.get(name))
            && old.as_bytes().strip_prefix(b"W/") == Some(new.as_bytes())
        {
            continue;
        }
        merged.remove(name);
        for value in not_modified.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    let mut fresh = storable(req, stored.status, &merged, now, lifetimes)?;
    fresh.body = stored.body.clone();
    Some(fresh)
}

/// The head served from the cache: stored fields, the current `Age`, and `Cache-Status`.
pub fn served_headers(stored: &StoredResponse, now: SystemTime, status: HeaderValue) -> HeaderMap {
    // Built in a spare map with room for what is added on the way out (`Age`,
    // `Cache-Status`, `Via`, the request id…): a clone has none, and grows twice.
    let mut headers = crate::header_maps::take(stored.headers.len() + 8);
    for (name, value) in &stored.headers {
        headers.append(name.clone(), value.clone());
    }
    with_age_and_status(headers, stored, now, status)
}

/// [`served_headers`] for an HTTP/1 client, with the stored fields as their written-out
/// `block` (see [`StoredResponse::field_block`]): four entries at most, however many
/// fields the response has. A HEAD answer has no body for hyper to take the length
/// from, so it carries the stored `Content-Length`.
pub fn served_headers_with_block(
    stored: &StoredResponse,
    block: &FieldBlock,
    now: SystemTime,
    status: HeaderValue,
    head_only: bool,
) -> HeaderMap {
    // Room for the request id too, added on the way out.
    let mut headers = crate::header_maps::take(5);
    block.append_to(&mut headers);
    if head_only && let Some(length) = stored.headers.get(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, length.clone());
    }
    with_age_and_status(headers, stored, now, status)
}

/// What every served head adds to the stored fields: the current `Age` and
/// `Cache-Status` (one place for both forms of the head, map and block).
fn with_age_and_status(
    mut headers: HeaderMap,
    stored: &StoredResponse,
    now: SystemTime,
    status: HeaderValue,
) -> HeaderMap {
    let age = stored.age(now).as_secs();
    headers.insert(header::AGE, seconds_value(age));
    headers.insert(CACHE_STATUS.clone(), status);
    headers
}

/// A number of seconds as a header value, written once (`HeaderValue::from(u64)` goes
/// through a growable buffer and allocates twice).
fn seconds_value(seconds: u64) -> HeaderValue {
    let mut digits = [0; 20];
    let digits = crate::header_maps::decimal(seconds, &mut digits);
    crate::header_maps::memoized(&LAST_AGE, digits).unwrap_or(HeaderValue::from_static("0"))
}

thread_local! {
    /// The last `Age` made on this thread: a hot entry's changes once a second.
    static LAST_AGE: crate::header_maps::LastValue = const { std::cell::RefCell::new(None) };
}

/// Whether the client's own conditional (`If-None-Match`, else `If-Modified-Since`) is
/// satisfied by the stored response, so that it gets a 304 (RFC 9110 §13.2.2).
pub fn client_not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if crate::header_maps::contains(request, &header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let ours = opaque_tag(etag);
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| tag.trim() == "*" || opaque_tag(tag) == ours);
    }
    let Some(since) = crate::header_maps::first(request, &header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        // Checked first: parsing the stored date was a sixth of a plain hit's time.
        return false;
    };
    let modified = stored
        .get(header::LAST_MODIFIED)
        .or_else(|| stored.get(header::DATE))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    modified.is_some_and(|modified| modified <= since)
}

/// An entity tag without its weakness marker, for weak comparison (RFC 9110 §8.8.3.2).
fn opaque_tag(tag: &str) -> &str {
    let tag = tag.trim();
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// The fields a 304 carries (RFC 9110 §15.4.5), from a full served head.
pub fn not_modified_headers(full: &HeaderMap) -> HeaderMap {
    const KEEP: &[HeaderName] = &[
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::AGE,
        header::LAST_MODIFIED,
    ];
    let mut out = HeaderMap::new();
    for name in KEEP.iter().chain(std::iter::once(&CACHE_STATUS)) {
        for value in full.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Cache-Control directives weir reads itself.
#[derive(Debug, Default)]
struct Directives {
    stale_while_revalidate: u64,
    stale_if_error: u64,
    /// Response: must-revalidate, proxy-revalidate or no-cache.
    revalidate_always: bool,
    /// Request: no-cache or max-age=0.
    requires_validation: bool,
    /// Request: max-stale.
    max_stale: bool,
    /// Response: max-age or s-maxage (with `Expires`, explicit freshness).
    explicit_freshness: bool,
    /// Response: s-maxage, which for a shared cache also means proxy-revalidate.
    s_maxage: bool,
    /// Response: must-understand (RFC 9111 §5.2.2.3).
    must_understand: bool,
}

impl Directives {
    fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let mut d = Directives::default();
        for value in values {
            let Ok(value) = value.to_str() else { continue };
            for directive in split_directives(value) {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "stale-while-revalidate" => {
                        d.stale_while_revalidate = secs().unwrap_or(0);
                    }
                    "stale-if-error" => d.stale_if_error = secs().unwrap_or(0),
                    "must-revalidate" | "proxy-revalidate" => d.revalidate_always = true,
                    // `no-cache="field"` limits only the fields (see `policy_view`).
                    "no-cache" if arg.is_none_or(str::is_empty) => {
                        d.revalidate_always = true;
                        d.requires_validation = true;
                    }
                    "max-age" => {
                        d.explicit_freshness = true;
                        d.requires_validation |= secs() == Some(0);
                    }
                    "s-maxage" => {
                        d.explicit_freshness = true;
                        d.s_maxage = true;
                    }
                    "must-understand" => d.must_understand = true,
                    "max-stale" => d.max_stale = true,
                    _ => {}
                }
            }
        }
        d
    }
}

#[cfg(test)]
mod tests;
