use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};

use super::*;

fn request(headers: &HeaderMap) -> PolicyRequest<'_> {
    PolicyRequest {
        method: &Method::GET,
        target: "/r".parse().unwrap(),
        headers,
    }
}

fn head(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn lifetimes() -> Lifetimes {
    Lifetimes {
        keep_stale: Duration::from_secs(600),
        heuristic: 0.1,
        ..Lifetimes::default()
    }
}

fn store(res: &[(&str, &str)], now: SystemTime) -> Option<StoredResponse> {
    let req = head(&[("host", "a")]);
    storable(
        &request(&req),
        StatusCode::OK,
        &head(res),
        now,
        &lifetimes(),
    )
}

#[test]
fn storability() {
    let now = SystemTime::now();
    assert!(store(&[("cache-control", "max-age=60")], now).is_some());
    assert!(store(&[("cache-control", "no-store, max-age=60")], now).is_none());
    assert!(store(&[("cache-control", "private, max-age=60")], now).is_none());
    assert!(
        store(
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            now
        )
        .is_none()
    );
    // Nothing to go on and nothing to revalidate with: not worth storing.
    assert!(store(&[], now).is_none());
    // No freshness but a validator: kept for revalidation.
    let kept = store(&[("etag", "\"x\"")], now).unwrap();
    assert!(!kept.is_fresh_at(now));
    // Authorization needs an explicit permission to share.
    let req = head(&[("host", "a"), ("authorization", "Bearer t")]);
    let res = head(&[("cache-control", "max-age=60")]);
    assert!(storable(&request(&req), StatusCode::OK, &res, now, &lifetimes()).is_none());
    let res = head(&[("cache-control", "public, max-age=60")]);
    assert!(storable(&request(&req), StatusCode::OK, &res, now, &lifetimes()).is_some());
}

#[test]
fn freshness_sources() {
    let now = SystemTime::now();
    let s = store(&[("cache-control", "max-age=60, s-maxage=5")], now).unwrap();
    assert!(s.is_fresh_at(now + Duration::from_secs(4)));
    assert!(!s.is_fresh_at(now + Duration::from_secs(6)));
    let date = httpdate::fmt_http_date(now);
    let expires = httpdate::fmt_http_date(now + Duration::from_secs(30));
    let s = store(&[("date", &date), ("expires", &expires)], now).unwrap();
    assert!(s.is_fresh_at(now + Duration::from_secs(25)));
    assert!(!s.is_fresh_at(now + Duration::from_secs(35)));
    // CDN-Cache-Control wins over Cache-Control for this cache, which is still served.
    let s = store(
        &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ],
        now,
    )
    .unwrap();
    assert!(s.is_fresh_at(now + Duration::from_secs(50)));
    assert_eq!(s.headers["cache-control"], "no-store");
    // Age already spent upstream counts.
    let s = store(&[("cache-control", "max-age=60"), ("age", "50")], now).unwrap();
    assert!(!s.is_fresh_at(now + Duration::from_secs(11)));
}

#[test]
fn route_ttl_bounds() {
    let now = SystemTime::now();
    let req = head(&[("host", "a")]);
    let res = head(&[("cache-control", "max-age=600")]);
    let capped = Lifetimes {
        max_ttl: Some(Duration::from_secs(10)),
        ..lifetimes()
    };
    let s = storable(&request(&req), StatusCode::OK, &res, now, &capped).unwrap();
    assert!(!s.is_fresh_at(now + Duration::from_secs(11)));
    let floored = Lifetimes {
        min_ttl: Some(Duration::from_secs(100)),
        ..lifetimes()
    };
    let res = head(&[("cache-control", "max-age=1")]);
    let s = storable(&request(&req), StatusCode::OK, &res, now, &floored).unwrap();
    assert!(s.is_fresh_at(now + Duration::from_secs(90)));
    // A floor never overrides no-cache.
    let res = head(&[("cache-control", "no-cache"), ("etag", "\"e\"")]);
    let s = storable(&request(&req), StatusCode::OK, &res, now, &floored).unwrap();
    assert!(!s.is_fresh_at(now));
}

#[test]
fn stale_windows() {
    let now = SystemTime::now();
    let req = head(&[("host", "a")]);
    let s = store(
        &[
            (
                "cache-control",
                "max-age=1, stale-while-revalidate=30, stale-if-error=60",
            ),
            ("etag", "\"v1\""),
        ],
        now,
    )
    .unwrap();
    let later = now + Duration::from_secs(10);
    assert!(matches!(
        reuse(&s, &request(&req), later),
        Reuse::StaleWhileRevalidate { .. }
    ));
    let much_later = now + Duration::from_secs(45);
    match reuse(&s, &request(&req), much_later) {
        Reuse::Revalidate { revalidation } => {
            assert_eq!(revalidation["if-none-match"], "\"v1\"")
        }
        _ => panic!("past the swr window a stale entry revalidates"),
    }
    assert!(may_serve_on_error(&s, much_later));
    assert!(!may_serve_on_error(&s, now + Duration::from_secs(70)));
    // must-revalidate forbids both.
    let s = store(
        &[
            (
                "cache-control",
                "max-age=1, must-revalidate, stale-while-revalidate=30",
            ),
            ("etag", "\"v1\""),
        ],
        now,
    )
    .unwrap();
    assert!(matches!(
        reuse(&s, &request(&req), later),
        Reuse::Revalidate { .. }
    ));
    assert!(!may_serve_on_error(&s, later));
}

#[test]
fn vary_and_request_directives() {
    let now = SystemTime::now();
    let req = head(&[("host", "a"), ("accept-language", "en")]);
    let res = head(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]);
    let s = storable(&request(&req), StatusCode::OK, &res, now, &lifetimes()).unwrap();
    assert!(matches!(reuse(&s, &request(&req), now), Reuse::Fresh));
    let other = head(&[("host", "a"), ("accept-language", "fr")]);
    assert!(matches!(reuse(&s, &request(&other), now), Reuse::NoMatch));
    let no_cache = head(&[
        ("host", "a"),
        ("accept-language", "en"),
        ("cache-control", "no-cache"),
    ]);
    assert!(matches!(
        reuse(&s, &request(&no_cache), now),
        Reuse::Revalidate { .. }
    ));
}

#[test]
fn conditional_answers_and_304_refresh() {
    let now = SystemTime::now();
    let req = head(&[("host", "a")]);
    let s = store(
        &[
            ("cache-control", "max-age=1"),
            ("etag", "W/\"v1\""),
            ("x-extra", "1"),
            ("x-extra", "2"),
            ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
        ],
        now,
    )
    .unwrap();
    assert!(client_not_modified(
        &head(&[("if-none-match", "\"v1\"")]),
        &s.headers
    ));
    assert!(client_not_modified(
        &head(&[("if-none-match", "\"a\", W/\"v1\"")]),
        &s.headers
    ));
    assert!(!client_not_modified(
        &head(&[("if-none-match", "\"v2\"")]),
        &s.headers
    ));
    assert!(client_not_modified(
        &head(&[("if-modified-since", "Tue, 03 Nov 2026 10:00:00 GMT")]),
        &s.headers
    ));
    assert!(!client_not_modified(
        &head(&[("if-modified-since", "Sun, 01 Nov 2026 10:00:00 GMT")]),
        &s.headers
    ));
    // Both values of a repeated field are served.
    let served = served_headers(&s, now, HeaderValue::from_static("weir-l1; hit"));
    assert_eq!(served.get_all("x-extra").iter().count(), 2);
    assert_eq!(served["cache-status"], "weir-l1; hit");
    // A matching 304 refreshes freshness and replaces the fields it carries.
    let later = now + Duration::from_secs(5);
    let not_modified = head(&[
        ("etag", "W/\"v1\""),
        ("cache-control", "max-age=100"),
        ("x-extra", "3"),
    ]);
    let fresh = refresh(&s, &request(&req), &not_modified, later, &lifetimes()).unwrap();
    assert!(fresh.is_fresh_at(later + Duration::from_secs(90)));
    assert_eq!(fresh.headers.get_all("x-extra").iter().count(), 1);
    let other = head(&[("etag", "\"v9\""), ("cache-control", "max-age=100")]);
    assert!(refresh(&s, &request(&req), &other, later, &lifetimes()).is_none());
}

#[test]
fn surrogate_keys_become_tags() {
    let now = SystemTime::now();
    let s = store(
        &[
            ("cache-control", "max-age=60"),
            ("surrogate-key", "product-1 catalog"),
            ("cache-tag", "blue, catalog"),
        ],
        now,
    )
    .unwrap();
    assert_eq!(s.tags, vec!["blue", "catalog", "product-1"]);
}

#[test]
fn directives_split_outside_quotes() {
    let split: Vec<&str> =
        super::split_directives(" max-age=60, no-cache=\"a, b\" ,,private ").collect();
    assert_eq!(split, ["max-age=60", "no-cache=\"a, b\"", "private"]);
}

#[test]
fn seconds_are_written_as_digits() {
    for n in [0u64, 7, 10, 3599, 86_400, u64::MAX] {
        assert_eq!(super::seconds_value(n), n.to_string().as_str());
    }
}

/// What is stored (the served head and the policy's copies of both heads) holds bytes of
/// its own: a value that was a slice of a connection's read buffer would keep all of it.
#[test]
fn a_stored_response_does_not_keep_the_read_buffers() {
    fn sliced(buffer: &bytes::Bytes, fields: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            let at = buffer
                .windows(value.len())
                .position(|w| w == value.as_bytes())
                .unwrap();
            let value =
                http::HeaderValue::from_maybe_shared(buffer.slice(at..at + value.len())).unwrap();
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value,
            );
        }
        headers
    }
    let mut text = b"max-age=60 \"v1\" a text/plain 1024 gzip".to_vec();
    text.resize(16 * 1024, b' ');
    let client_buffer = bytes::Bytes::from(text.clone());
    let upstream_buffer = bytes::Bytes::from(text);
    let req = sliced(
        &client_buffer,
        &[("host", "a"), ("accept-encoding", "gzip")],
    );
    let res = sliced(
        &upstream_buffer,
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("content-type", "text/plain"),
            ("content-length", "1024"),
        ],
    );
    let stored = storable(
        &request(&req),
        StatusCode::OK,
        &res,
        SystemTime::now(),
        &lifetimes(),
    )
    .unwrap();
    drop((req, res));
    assert_eq!(stored.headers.get("etag").unwrap(), "\"v1\"");
    assert!(
        client_buffer.is_unique(),
        "the client's read buffer is still shared"
    );
    assert!(
        upstream_buffer.is_unique(),
        "the upstream's read buffer is still shared"
    );
}

/// `plainly_fresh` trusts `fresh_until_ms` without asking the policy: it must never say
/// fresh where the policy says stale, whatever set the freshness (max-age, s-maxage,
/// Expires, an `Age` already spent, the heuristic, a route's bounds), and it must end
/// with the policy's, to the millisecond.
#[test]
fn weirs_freshness_ends_with_the_policys() {
    let now = SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let expires = httpdate::fmt_http_date(now + Duration::from_secs(90));
    let modified = httpdate::fmt_http_date(now - Duration::from_secs(1000));
    let heads: Vec<Vec<(&str, &str)>> = vec![
        vec![("cache-control", "max-age=60")],
        vec![("cache-control", "max-age=60, s-maxage=30")],
        vec![("cache-control", "max-age=60"), ("age", "20")],
        vec![("date", &date), ("expires", &expires)],
        vec![("date", &date), ("last-modified", &modified)],
    ];
    let bounds = [
        lifetimes(),
        Lifetimes {
            max_ttl: Some(Duration::from_secs(10)),
            ..lifetimes()
        },
        Lifetimes {
            min_ttl: Some(Duration::from_secs(200)),
            ..lifetimes()
        },
    ];
    let req = head(&[("host", "a")]);
    for res in &heads {
        for bound in &bounds {
            let stored = storable(&request(&req), StatusCode::OK, &head(res), now, bound)
                .unwrap_or_else(|| panic!("{res:?} not stored"));
            let ttl = stored.policy.time_to_live(now);
            assert!(!ttl.is_zero(), "{res:?}");
            for offset_ms in [0, 1, 500] {
                let before = now + ttl - Duration::from_millis(offset_ms + 1);
                assert!(stored.is_fresh_at(before), "{res:?} {bound:?} {offset_ms}");
                assert!(!stored.policy.is_stale(before), "{res:?}");
                let after = now + ttl + Duration::from_millis(offset_ms);
                assert!(stored.policy.is_stale(after), "{res:?}");
                assert!(!stored.is_fresh_at(after), "{res:?}");
            }
        }
    }
}

#[test]
fn a_stored_head_is_written_out_once_for_http1_hits() {
    let now = SystemTime::now();
    let s = store(
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
            ("content-length", "6"),
            ("x-extra", "1"),
            ("x-extra", "2"),
        ],
        now,
    )
    .unwrap();
    let block = s.field_block.as_ref().expect("a block");
    // Four fields in it; the length stays out (hyper writes the body's).
    assert!(!block.is_empty());
    let status = HeaderValue::from_static("weir-l1; hit");
    let served = served_headers_with_block(&s, block, now, status.clone(), false);
    let names: Vec<_> = served.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["hyper-field-block", "age", "cache-status"]);
    assert_eq!(served.len(), 3);
    // A HEAD answer has no body to take the length from: it says the stored one.
    let head_only = served_headers_with_block(&s, block, now, status, true);
    assert_eq!(head_only["content-length"], "6");
    assert!(s.weight() > block.len() as u32 + s.body.len() as u32);

    // Read back from Redis, an entry has its block again; a refreshed one has a new one.
    let entry = crate::cache::object::Entry::Response(std::sync::Arc::new(s.clone()));
    let crate::cache::object::Entry::Response(decoded) =
        crate::cache::object::Entry::decode(&entry.encode()).unwrap()
    else {
        panic!("a response")
    };
    assert_eq!(
        decoded.field_block.as_ref().map(|b| b.len()),
        Some(block.len())
    );
    let not_modified = head(&[("cache-control", "max-age=100"), ("x-new", "yes")]);
    let req = head(&[("host", "a")]);
    let fresh = refresh(&s, &request(&req), &not_modified, now, &lifetimes()).unwrap();
    let grown = fresh.field_block.as_ref().expect("a block");
    // Three length digits, the line, room for its CRLF; and `max-age=100` is one longer.
    let added = 3 + "x-new: yes".len() + 2 + 1;
    assert_eq!(grown.len(), block.len() + added);

    // Fields hyper must frame the message by stay in the map: no block.
    let mut framed = s.headers.clone();
    framed.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    assert!(served_field_block(&framed).is_none());
    assert!(served_field_block(&s.headers).is_some());
}

#[test]
fn a_stored_response_says_the_age_its_policy_says() {
    let now = SystemTime::now();
    for age in [None, Some("0"), Some("30"), Some("oops")] {
        // A validator keeps the entry whose odd `Age` makes it stale at once.
        let mut fields = vec![("cache-control", "max-age=600"), ("etag", "\"v\"")];
        fields.extend(age.map(|a| ("age", a)));
        let s = store(&fields, now).unwrap();
        // Read back from Redis a little later, the origin is found again.
        let entry = crate::cache::object::Entry::Response(std::sync::Arc::new(s.clone()));
        let crate::cache::object::Entry::Response(decoded) =
            crate::cache::object::Entry::decode(&entry.encode()).unwrap()
        else {
            panic!("a response")
        };
        for later in [0, 1, 999, 1_000, 61_500, 3_600_000] {
            let at = now + Duration::from_millis(later);
            assert_eq!(s.age(at), s.policy.age(at), "{age:?} +{later} ms");
            assert_eq!(
                decoded.age(at),
                s.policy.age(at),
                "{age:?} +{later} ms, decoded"
            );
        }
        let served = served_headers(&s, now + Duration::from_secs(7), "hit".parse().unwrap());
        let expected = s.policy.age(now + Duration::from_secs(7)).as_secs();
        assert_eq!(served["age"], expected.to_string().as_str(), "{age:?}");
    }
    // Before its response time (a clock set back) an entry is no younger than zero.
    let s = store(&[("cache-control", "max-age=600")], now).unwrap();
    assert_eq!(s.age(now - Duration::from_secs(5)), Duration::ZERO);
}
