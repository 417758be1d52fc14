//! Response compression (gzip and brotli, by tower-http) with one choice of coding per
//! request, so that the cache can store each coded variant once and serve it as is.
//!
//! Outside the cache, the listener wraps the whole service in tower-http's layer. On a
//! caching route the request's `Accept-Encoding` is first reduced to the one coding weir
//! would pick ([`normalize_accept_encoding`]); the upstream's response is compressed to it
//! before it is stored, with `Vary: Accept-Encoding`, so a route keeps at most three
//! variants (br, gzip, identity) and a hit costs no compression.

use std::convert::Infallible;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use tower::ServiceExt;
use tower_http::CompressionLevel;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::compression::{Compression, CompressionLayer};

use super::body::ResponseBody;

/// Responses at or below this size are not worth compressing.
pub const MIN_COMPRESS_BYTES: u16 = 1024;

/// brotli's default (11) runs at a few MB/s, too slow for a response on its way to a
/// client; 5 keeps most of its ratio at gzip-like speed (gzip 5 is near its default 6).
const QUALITY: CompressionLevel = CompressionLevel::Precise(5);

/// The codings weir produces, best first.
const CODINGS: [&str; 2] = ["br", "gzip"];

/// What is compressed: tower-http's defaults (not images, gRPC or event streams), over
/// [`MIN_COMPRESS_BYTES`] when the length is known.
pub fn predicate() -> impl Predicate {
    DefaultPredicate::new().and(SizeAbove::new(MIN_COMPRESS_BYTES))
}

/// The listener's layer for routes without a cache.
pub fn layer() -> CompressionLayer<impl Predicate> {
    CompressionLayer::new()
        .quality(QUALITY)
        .compress_when(predicate())
}

/// The coding to use for a request: the acceptable one (q > 0) with the highest q among
/// br and gzip, br on a tie; `identity` when neither is acceptable.
pub fn negotiate(headers: &HeaderMap) -> &'static str {
    let mut best: Option<(&'static str, f32)> = None;
    let mut wildcard = None;
    let mut listed = [None; CODINGS.len()];
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut pieces = item.split(';');
            let coding = pieces.next().unwrap_or_default().trim();
            let q = pieces
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if coding == "*" {
                wildcard = Some(q);
            } else if let Some(i) = CODINGS.iter().position(|c| coding.eq_ignore_ascii_case(c)) {
                listed[i] = Some(q);
            }
        }
    }
    for (coding, q) in CODINGS.iter().zip(listed) {
        let q = q.or(wildcard).unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    best.map_or("identity", |(coding, _)| coding)
}

/// Replaces the request's `Accept-Encoding` with the one coding [`negotiate`] picks (which
/// is also what the upstream is asked for) and returns it.
pub fn normalize_accept_encoding(headers: &mut HeaderMap) -> &'static str {
    let coding = negotiate(headers);
    headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(coding));
    coding
}

/// Compresses `response` to `coding` (from [`negotiate`]) when it is compressible and not
/// coded already. A compressible response gets `Vary: Accept-Encoding` whatever the coding;
/// a compressed one loses `Content-Length` and `Accept-Ranges`, and a strong `ETag` turns
/// weak (the bytes differ from the identity representation's).
pub async fn encode(
    response: Response<ResponseBody>,
    coding: &'static str,
) -> Response<ResponseBody> {
    let compressible = !response.headers().contains_key(header::CONTENT_ENCODING)
        && !response.headers().contains_key(header::CONTENT_RANGE)
        && predicate().should_compress(&response);
    if !compressible {
        return response;
    }
    if coding == "identity" {
        let mut response = response;
        add_vary_accept_encoding(response.headers_mut());
        return response;
    }
    let mut slot = Some(response);
    let service = Compression::new(tower::service_fn(move |_: Request<()>| {
        let response = slot
            .take()
            .unwrap_or_else(|| Response::new(ResponseBody::empty()));
        std::future::ready(Ok::<_, Infallible>(response))
    }))
    .quality(QUALITY)
    .compress_when(predicate());
    let mut request = Request::new(());
    request
        .headers_mut()
        .insert(header::ACCEPT_ENCODING, HeaderValue::from_static(coding));
    let Ok(compressed) = service.oneshot(request).await;
    let (mut head, body) = compressed.into_parts();
    weaken_etag(&mut head.headers);
    Response::from_parts(head, ResponseBody::encoded(body))
}

fn add_vary_accept_encoding(headers: &mut HeaderMap) {
    let present = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|name| {
                name.trim().eq_ignore_ascii_case("accept-encoding") || name.trim() == "*"
            })
        })
    });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(header::ETAG) else {
        return;
    };
    if etag.as_bytes().starts_with(b"\"")
        && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
    {
        headers.insert(header::ETAG, weak);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, value.parse().unwrap());
        headers
    }

    #[test]
    fn negotiation() {
        for (accept_encoding, expected) in [
            ("gzip, deflate, br", "br"),
            ("gzip, deflate", "gzip"),
            ("br;q=0.5, gzip", "gzip"),
            ("br;q=0, gzip;q=0", "identity"),
            ("GZIP", "gzip"),
            ("*", "br"),
            ("*;q=0.2, gzip;q=0.5", "gzip"),
            ("*;q=0", "identity"),
            ("deflate, zstd", "identity"),
            ("identity", "identity"),
            ("", "identity"),
            ("br;q=abc", "br"),
        ] {
            assert_eq!(
                negotiate(&accept(accept_encoding)),
                expected,
                "{accept_encoding:?}"
            );
        }
        assert_eq!(negotiate(&HeaderMap::new()), "identity");
    }

    #[test]
    fn vary_is_added_once() {
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, "Origin, Accept-Encoding".parse().unwrap());
        add_vary_accept_encoding(&mut headers);
        assert_eq!(headers.get_all(header::VARY).iter().count(), 1);
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, "origin".parse().unwrap());
        add_vary_accept_encoding(&mut headers);
        assert_eq!(headers.get_all(header::VARY).iter().count(), 2);
    }

    #[test]
    fn etags_turn_weak_once() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, "\"v1\"".parse().unwrap());
        weaken_etag(&mut headers);
        assert_eq!(headers[header::ETAG], "W/\"v1\"");
        weaken_etag(&mut headers);
        assert_eq!(headers[header::ETAG], "W/\"v1\"");
    }
}
