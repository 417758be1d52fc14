//! The HTTP cache (memory tier) through the proxy, against real origin servers: each
//! RFC 9111 behaviour, coalescing, purge and warming.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::*;
use http::{HeaderMap, Request, Response, StatusCode};

/// An origin answering every request with `headers` and a body naming the request
/// number; it answers 304 when the request's If-None-Match matches the ETag it sends.
struct Origin {
    upstream: Upstream,
    hits: Arc<AtomicUsize>,
    conditional: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
}

async fn origin(headers: &'static [(&'static str, &'static str)]) -> Origin {
    origin_with_delay(headers, Duration::ZERO).await
}

async fn origin_with_delay(
    headers: &'static [(&'static str, &'static str)],
    delay: Duration,
) -> Origin {
    let hits = Arc::new(AtomicUsize::new(0));
    let conditional = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (h, c, f) = (hits.clone(), conditional.clone(), failing.clone());
    let upstream = upstream(move |req| {
        let (h, c, f) = (h.clone(), c.clone(), f.clone());
        async move {
            let n = h.fetch_add(1, SeqCst) + 1;
            tokio::time::sleep(delay).await;
            if f.load(SeqCst) {
                return Response::builder().status(500).body(full("down")).unwrap();
            }
            let etag = headers.iter().find(|(k, _)| *k == "etag").map(|(_, v)| *v);
            if let (Some(inm), Some(etag)) = (req.headers().get("if-none-match"), etag) {
                c.fetch_add(1, SeqCst);
                if inm.to_str().unwrap_or("").contains(etag) {
                    let mut b = Response::builder().status(304);
                    for (k, v) in headers {
                        b = b.header(*k, *v);
                    }
                    return b.body(empty()).unwrap();
                }
            }
            let lang = req
                .headers()
                .get("accept-language")
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .unwrap_or_default();
            let mut b = Response::builder().status(200);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(full(format!("{} #{n} {lang}", req.uri().path())))
                .unwrap()
        }
    })
    .await;
    Origin {
        upstream,
        hits,
        conditional,
        failing,
    }
}

fn cache_config(origin: &Origin, extra: &str) -> String {
    format!(
        "{}\n[cache]\nenabled = true\n{extra}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"test-token-0123456789\"\n",
        simple_config(&[origin.upstream.addr], "")
    )
}

async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&http1_client(), b.body(empty()).unwrap()).await
}

fn status(reply: &Reply) -> &str {
    reply.header("cache-status").unwrap_or("-")
}

#[tokio::test]
async fn fresh_responses_are_served_from_memory_with_age() {
    let origin = origin(&[
        ("cache-control", "max-age=60"),
        ("x-multi", "a"),
        ("x-multi", "b"),
    ])
    .await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    let first = get(addr, "/a").await;
    assert_eq!(first.text(), "/a #1 ");
    assert_eq!(status(&first), "weir-l1; fwd=miss; stored");
    tokio::time::sleep(Duration::from_millis(50)).await; // the store runs after the body
    let second = get(addr, "/a").await;
    assert_eq!(second.text(), "/a #1 ");
    assert!(
        status(&second).starts_with("weir-l1; hit; ttl="),
        "{}",
        status(&second)
    );
    assert!(second.header("age").is_some());
    assert_eq!(second.headers.get_all("x-multi").iter().count(), 2);
    // HEAD is answered from the GET entry, without a body.
    let head = send(
        &http1_client(),
        Request::head(format!("http://{addr}/a"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert!(status(&head).contains("hit"));
    assert!(head.body.is_empty());
    assert_eq!(origin.hits.load(SeqCst), 1);
    // Other paths and other query strings are other resources.
    assert_eq!(get(addr, "/a?x=1").await.text(), "/a #2 ");
}

#[tokio::test]
async fn what_must_not_be_stored_is_not() {
    for headers in [
        &[("cache-control", "no-store, max-age=60")][..],
        &[("cache-control", "private, max-age=60")][..],
        &[("cache-control", "max-age=60"), ("set-cookie", "s=1")][..],
        &[][..], // no freshness, no validator
    ] {
        let headers: &'static [(&'static str, &'static str)] =
            Box::leak(headers.to_vec().into_boxed_slice());
        let origin = origin(headers).await;
        let weir = weir(&cache_config(&origin, "")).await;
        let addr = weir.listener_addr("http").unwrap();
        for _ in 0..3 {
            let reply = get(addr, "/p").await;
            assert_eq!(status(&reply), "weir-l1; fwd=miss", "{headers:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(origin.hits.load(SeqCst), 3, "{headers:?}");
    }
    // A request with Authorization is not shared unless the response says public.
    let origin = origin(&[("cache-control", "max-age=60")]).await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    for _ in 0..2 {
        get_with(addr, "/me", &[("authorization", "Bearer x")]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.hits.load(SeqCst), 2);
    // A request's no-store keeps it out too.
    get_with(addr, "/n", &[("cache-control", "no-store")]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    get(addr, "/n").await;
    assert_eq!(origin.hits.load(SeqCst), 4);
}

#[tokio::test]
async fn vary_keeps_one_variant_per_header_value() {
    let origin = origin(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]).await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    let mut texts = Vec::new();
    for lang in ["en", "fr", "en", "fr", "de"] {
        texts.push(
            get_with(addr, "/v", &[("accept-language", lang)])
                .await
                .text(),
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(
        texts,
        ["/v #1 en", "/v #2 fr", "/v #1 en", "/v #2 fr", "/v #3 de"]
    );
    assert_eq!(origin.hits.load(SeqCst), 3);
}

#[tokio::test]
async fn stale_entries_revalidate_with_their_etag_and_refresh_on_304() {
    let origin = origin(&[("cache-control", "max-age=0"), ("etag", "\"v1\"")]).await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    assert_eq!(get(addr, "/r").await.text(), "/r #1 ");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let again = get(addr, "/r").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.text(),
        "/r #1 ",
        "the cached body, confirmed by a 304"
    );
    assert_eq!(status(&again), "weir-l1; fwd=stale; fwd-status=304");
    assert_eq!(origin.hits.load(SeqCst), 2);
    assert_eq!(origin.conditional.load(SeqCst), 1);
}

#[tokio::test]
async fn clients_conditional_requests_get_304_from_the_cache() {
    let origin = origin(&[
        ("cache-control", "max-age=60"),
        ("etag", "\"v1\""),
        ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
    ])
    .await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    // On a miss weir fetches the whole response (to store it) and answers the 304 itself.
    let first = get_with(addr, "/c", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(first.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.conditional.load(SeqCst), 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hit = get_with(addr, "/c", &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!(hit.status, StatusCode::NOT_MODIFIED);
    assert_eq!(hit.header("etag"), Some("\"v1\""));
    let by_date = get_with(
        addr,
        "/c",
        &[("if-modified-since", "Tue, 03 Nov 2026 10:00:00 GMT")],
    )
    .await;
    assert_eq!(by_date.status, StatusCode::NOT_MODIFIED);
    let changed = get_with(addr, "/c", &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.text(), "/c #1 ");
    assert_eq!(origin.hits.load(SeqCst), 1);
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    // The origin takes 300 ms, so the five stale answers all come while one refresh is
    // under way (with a fast origin, each could start a refresh of its own after the last).
    let origin = origin_with_delay(
        &[
            ("cache-control", "max-age=0, stale-while-revalidate=60"),
            ("etag", "\"v1\""),
        ],
        Duration::from_millis(300),
    )
    .await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    get(addr, "/s").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    for _ in 0..5 {
        let stale = get(addr, "/s").await;
        assert_eq!(stale.text(), "/s #1 ");
        assert!(
            status(&stale).contains("stale-while-revalidate"),
            "{}",
            status(&stale)
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One request to fill, then one background refresh for the five stale answers.
    assert_eq!(origin.hits.load(SeqCst), 2);
    assert_eq!(origin.conditional.load(SeqCst), 1);
}

#[tokio::test]
async fn stale_if_error_covers_an_origin_that_fails() {
    let strict = origin(&[(
        "cache-control",
        "max-age=0, must-revalidate, stale-if-error=60",
    )])
    .await;
    let lenient = origin(&[("cache-control", "max-age=0, stale-if-error=60")]).await;
    let proxy = weir(&cache_config(&lenient, "")).await;
    let addr = proxy.listener_addr("http").unwrap();
    assert_eq!(get(addr, "/e").await.text(), "/e #1 ");
    tokio::time::sleep(Duration::from_millis(30)).await;
    lenient.failing.store(true, SeqCst);
    let covered = get(addr, "/e").await;
    assert_eq!(covered.status, StatusCode::OK);
    assert_eq!(covered.text(), "/e #1 ");
    assert!(
        status(&covered).contains("detail=stale-if-error"),
        "{}",
        status(&covered)
    );
    // Without stale-if-error the origin's 500 goes to the client.
    let weir2 = weir(&cache_config(&strict, "")).await;
    let addr2 = weir2.listener_addr("http").unwrap();
    get(addr2, "/e").await;
    strict.failing.store(true, SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        get(addr2, "/e").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_uri_and_its_location() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let upstream = upstream(move |req| {
        let h = h.clone();
        async move {
            let n = h.fetch_add(1, SeqCst);
            let mut b = Response::builder().header("cache-control", "max-age=60");
            if req.method() == http::Method::POST {
                b = b.status(201).header("location", "/items/7");
            }
            b.body(full(format!("{n}"))).unwrap()
        }
    })
    .await;
    let config = format!(
        "{}\n[cache]\nenabled = true\n",
        simple_config(&[upstream.addr], "")
    );
    let weir = weir(&config).await;
    let addr = weir.listener_addr("http").unwrap();
    let list = get(addr, "/items").await.text();
    let item = get(addr, "/items/7").await.text();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(get(addr, "/items").await.text(), list);
    assert_eq!(get(addr, "/items/7").await.text(), item);
    let post = send(
        &http1_client(),
        Request::post(format!("http://{addr}/items"))
            .body(full("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, StatusCode::CREATED);
    assert_ne!(get(addr, "/items").await.text(), list);
    assert_ne!(get(addr, "/items/7").await.text(), item);
}

#[tokio::test]
async fn one_hundred_concurrent_misses_make_one_upstream_request() {
    let origin = origin_with_delay(
        &[("cache-control", "max-age=60")],
        Duration::from_millis(300),
    )
    .await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        tasks.push(tokio::spawn(async move { get(addr, "/hot").await }));
    }
    let mut coalesced = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "/hot #1 ");
        coalesced += usize::from(status(&reply).contains("coalesced"));
    }
    assert_eq!(origin.hits.load(SeqCst), 1);
    assert_eq!(coalesced, 99);
}

#[tokio::test]
async fn large_objects_stream_through_uncached() {
    let big = "x".repeat(300_000);
    let body: &'static str = Box::leak(big.into_boxed_str());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let upstream = upstream(move |_req| {
        h.fetch_add(1, SeqCst);
        async move {
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(full(body))
                .unwrap()
        }
    })
    .await;
    let config = format!(
        "{}\n[cache]\nenabled = true\nmax_object_bytes = 100000\n",
        simple_config(&[upstream.addr], "")
    );
    let weir = weir(&config).await;
    let addr = weir.listener_addr("http").unwrap();
    for _ in 0..2 {
        let reply = get(addr, "/big").await;
        assert_eq!(reply.body.len(), 300_000);
        assert_eq!(status(&reply), "weir-l1; fwd=miss");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(hits.load(SeqCst), 2);
}

#[tokio::test]
async fn cdn_cache_control_and_route_ttl_override_the_origin() {
    let short = origin(&[("cache-control", "max-age=0")]).await;
    let origin = origin(&[
        ("cache-control", "no-cache"),
        ("cdn-cache-control", "max-age=60"),
    ])
    .await;
    let first = weir(&cache_config(&origin, "")).await;
    let addr = first.listener_addr("http").unwrap();
    get(addr, "/cdn").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let hit = get(addr, "/cdn").await;
    assert!(status(&hit).contains("hit"), "{}", status(&hit));
    assert_eq!(
        hit.header("cache-control"),
        Some("no-cache"),
        "clients still see the origin's"
    );
    assert_eq!(origin.hits.load(SeqCst), 1);

    // A route TTL makes an origin's 1 s freshness an hour; query order does not matter.
    let config = cache_config(&short, "").replace(
        "[[routes]]",
        "[[routes]]\ncache = { ttl = \"1h\", query = \"sorted\" }",
    );
    let proxy = weir(&config).await;
    let addr = proxy.listener_addr("http").unwrap();
    get(addr, "/t?a=1&b=2").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let hit = get(addr, "/t?b=2&a=1").await;
    assert!(status(&hit).contains("hit"), "{}", status(&hit));
    assert_eq!(short.hits.load(SeqCst), 1);
}

#[tokio::test]
async fn purge_by_key_prefix_and_tag_through_the_admin_api() {
    let origin = origin(&[
        ("cache-control", "max-age=60"),
        ("surrogate-key", "catalog"),
    ])
    .await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    let admin = weir.admin_addr().unwrap();
    let host = format!("{addr}");
    let fill = || async {
        for path in ["/p/1", "/p/2", "/q/1"] {
            get(addr, path).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let purge = |body: String| async move {
        let reply = send(
            &http1_client(),
            Request::post(format!("http://{admin}/api/v1/cache/purge"))
                .header("authorization", "Bearer test-token-0123456789")
                .body(full(body))
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap()
    };
    fill().await;
    assert_eq!(origin.hits.load(SeqCst), 3);
    let report = purge(format!(r#"{{"key": "{host}/p/1"}}"#)).await;
    assert_eq!(report["report"]["memory"], 1);
    assert!(status(&get(addr, "/p/1").await).contains("miss"));
    assert!(status(&get(addr, "/p/2").await).contains("hit"));
    let report = purge(r#"{"prefix": "/p/"}"#.to_owned()).await;
    assert_eq!(report["report"]["memory"], 2, "{report}");
    assert!(status(&get(addr, "/q/1").await).contains("hit"));
    let report = purge(r#"{"tag": "catalog"}"#.to_owned()).await;
    assert!(
        report["report"]["memory"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(status(&get(addr, "/q/1").await).contains("miss"));
    // Soft purge: the entry stays but counts as stale, so the next request revalidates.
    tokio::time::sleep(Duration::from_millis(50)).await;
    purge(r#"{"prefix": "/q/", "soft": true}"#.to_owned()).await;
    let after = get(addr, "/q/1").await;
    assert!(status(&after).contains("fwd=stale"), "{}", status(&after));
    // Bad requests are explained.
    let bad = send(
        &http1_client(),
        Request::post(format!("http://{admin}/api/v1/cache/purge"))
            .header("authorization", "Bearer test-token-0123456789")
            .body(full(r#"{"key": "a", "tag": "b"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn warming_fills_the_cache_before_clients_ask() {
    let origin = origin(&[("cache-control", "max-age=60")]).await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    let admin = weir.admin_addr().unwrap();
    let urls: Vec<String> = (0..20)
        .map(|i| format!("\"http://{addr}/w/{i}\""))
        .collect();
    let reply = send(
        &http1_client(),
        Request::post(format!("http://{admin}/api/v1/cache/warm"))
            .header("authorization", "Bearer test-token-0123456789")
            .body(full(format!(r#"{{"urls": [{}]}}"#, urls.join(","))))
            .unwrap(),
    )
    .await;
    let report: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(report["ok"], 20, "{report}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 0..20 {
        assert!(status(&get(addr, &format!("/w/{i}")).await).contains("hit"));
    }
    assert_eq!(origin.hits.load(SeqCst), 20);
    let stats = send(
        &http1_client(),
        Request::get(format!("http://{admin}/api/v1/cache"))
            .header("authorization", "Bearer test-token-0123456789")
            .body(empty())
            .unwrap(),
    )
    .await;
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["hits"]["l1"], 20, "{stats}");
    assert_eq!(stats["hit_ratio"], 0.5, "{stats}");
    let _ = HeaderMap::new();
}

#[tokio::test]
async fn hot_entries_are_refreshed_before_they_expire() {
    let origin = origin(&[("cache-control", "max-age=2"), ("etag", "\"v1\"")]).await;
    let weir = weir(&cache_config(&origin, "rewarm_hot = true")).await;
    let addr = weir.listener_addr("http").unwrap();
    get(addr, "/hot").await;
    // Early in its freshness: a plain hit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(status(&get(addr, "/hot").await).contains("hit"));
    assert_eq!(origin.hits.load(SeqCst), 1);
    // In its last second: still a hit for the client, and a refresh goes out behind it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(status(&get(addr, "/hot").await).contains("hit"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(origin.hits.load(SeqCst), 2);
    assert_eq!(
        origin.conditional.load(SeqCst),
        1,
        "refreshed with its ETag"
    );
    // Past the original expiry the refreshed entry still answers.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let later = get(addr, "/hot").await;
    assert!(status(&later).contains("hit"), "{}", status(&later));
}

/// An origin that builds its answer from URL-shaping headers, like frameworks that make
/// absolute redirects and links from `X-Forwarded-Host` and `X-Forwarded-Proto`.
async fn url_building_origin() -> Upstream {
    upstream(|req| async move {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map_or("-".to_owned(), |v| v.to_str().unwrap_or("?").to_owned())
        };
        let forwarded_host = header("x-forwarded-host");
        let host = match forwarded_host.as_str() {
            "-" => header("host"),
            _ => forwarded_host,
        };
        let link = format!("{}://{host}/login", header("x-forwarded-proto"));
        let seen = format!(
            "link={link} original-url={} forwarded={}",
            header("x-original-url"),
            header("forwarded")
        );
        Response::builder()
            .header("cache-control", "max-age=60")
            .header("location", link)
            .body(full(seen))
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn unkeyed_headers_cannot_poison_the_cache() {
    let origin = url_building_origin().await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
path_prefix = "/keyed"
pool = "main"
cache = {{ key_headers = ["x-forwarded-host"] }}
[[routes]]
pool = "main"
[pools.main]
endpoints = [{{ address = "{}" }}]
[cache]
enabled = true
"#,
        origin.addr
    );
    let weir = weir(&config).await;
    let addr = weir.listener_addr("http").unwrap();

    // The attacker's request fills the cache…
    let attack = [
        ("host", "shop.example"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-original-url", "/admin"),
        ("forwarded", "host=evil.example;proto=https"),
    ];
    let poisoned = get_with(addr, "/page", &attack).await;
    assert_eq!(
        poisoned.text(),
        "link=http://shop.example/login original-url=- forwarded=-",
        "the upstream never saw the attacker's URL headers"
    );
    // …and what everyone else gets from it names the real host.
    let victim = get_with(addr, "/page", &[("host", "shop.example")]).await;
    assert!(status(&victim).contains("hit"), "{}", status(&victim));
    assert_eq!(victim.header("location"), Some("http://shop.example/login"));

    // A route that keys on X-Forwarded-Host passes it on: each value is its own entry.
    let keyed = get_with(
        addr,
        "/keyed",
        &[
            ("host", "shop.example"),
            ("x-forwarded-host", "cdn.example"),
        ],
    )
    .await;
    assert!(
        keyed.text().starts_with("link=http://cdn.example/login"),
        "{}",
        keyed.text()
    );
    let plain = get_with(addr, "/keyed", &[("host", "shop.example")]).await;
    assert!(status(&plain).contains("fwd=miss"), "{}", status(&plain));
    assert!(plain.text().starts_with("link=http://shop.example/login"));
    weir.shutdown().await;
}
