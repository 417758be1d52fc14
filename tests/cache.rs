//! The HTTP cache (memory tier) through the proxy, against real origin servers: each
//! RFC 9111 behaviour, coalescing, purge and warming.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::wait::{eventually, settled, stored};
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
    stored(&weir, 1).await;
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
            settled(&weir).await;
        }
        assert_eq!(origin.hits.load(SeqCst), 3, "{headers:?}");
    }
    // A request with Authorization is not shared unless the response says public.
    let origin = origin(&[("cache-control", "max-age=60")]).await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    for _ in 0..2 {
        get_with(addr, "/me", &[("authorization", "Bearer x")]).await;
        settled(&weir).await;
    }
    assert_eq!(origin.hits.load(SeqCst), 2);
    // A request's no-store keeps it out too.
    get_with(addr, "/n", &[("cache-control", "no-store")]).await;
    settled(&weir).await;
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
        settled(&weir).await;
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
    stored(&weir, 1).await;
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
    stored(&weir, 1).await;
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
    stored(&weir, 1).await;
    for _ in 0..5 {
        let stale = get(addr, "/s").await;
        assert_eq!(stale.text(), "/s #1 ");
        assert!(
            status(&stale).contains("stale-while-revalidate"),
            "{}",
            status(&stale)
        );
    }
    settled(&weir).await;
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
    stored(&proxy, 1).await;
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
    settled(&weir2).await;
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
    stored(&weir, 2).await;
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
        settled(&weir).await;
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
    stored(&first, 1).await;
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
    stored(&proxy, 1).await;
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
        stored(&weir, 3).await;
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
    // The miss is stored again in the background (maybe on another runtime): wait for
    // it, or the prefix purge may run before it lands.
    stored(&weir, 4).await;
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
    // (Stores so far: the three filled, /p/1 and /q/1 again after their purges.)
    stored(&weir, 5).await;
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
    stored(&weir, 20).await;
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
    // The copy is stored behind the response, as the other tests here wait for.
    stored(&weir, 1).await;
    // Early in its freshness: a plain hit.
    assert!(status(&get(addr, "/hot").await).contains("hit"));
    assert_eq!(origin.hits.load(SeqCst), 1);
    // In its last second (the age must pass, not a state): still a hit for the client,
    // and a refresh goes out behind it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(status(&get(addr, "/hot").await).contains("hit"));
    settled(&weir).await;
    assert_eq!(origin.hits.load(SeqCst), 2);
    assert_eq!(
        origin.conditional.load(SeqCst),
        1,
        "refreshed with its ETag"
    );
    // Past the original expiry (time, again) the refreshed entry still answers.
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

/// Requests an origin saw: the If-None-Match each carried (empty when none), the Range
/// each carried, and the method.
#[derive(Clone, Default)]
struct Seen(Arc<std::sync::Mutex<Vec<(String, String, String)>>>);

impl Seen {
    fn record(&self, req: &Request<hyper::body::Incoming>) -> usize {
        let header = |name| {
            req.headers()
                .get(name)
                .map(|v: &http::HeaderValue| v.to_str().unwrap_or("?").to_owned())
                .unwrap_or_default()
        };
        let mut seen = self.0.lock().unwrap();
        seen.push((
            header("if-none-match"),
            header("range"),
            req.method().to_string(),
        ));
        seen.len()
    }
    fn column(&self, pick: impl Fn(&(String, String, String)) -> &String) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|s| pick(s).clone())
            .collect()
    }
    fn conditionals(&self) -> Vec<String> {
        self.column(|(c, _, _)| c)
    }
    fn ranges(&self) -> Vec<String> {
        self.column(|(_, r, _)| r)
    }
    fn methods(&self) -> Vec<String> {
        self.column(|(_, _, m)| m)
    }
}

/// An origin whose 200s are immediately stale (`max-age=0`, ETag "v1") and whose answer
/// to a conditional request is `not_modified`'s headers on a 304.
async fn revalidating_origin(
    not_modified: &'static [(&'static str, &'static str)],
) -> (Upstream, Seen) {
    let seen = Seen::default();
    let recorder = seen.clone();
    let upstream = upstream(move |req| {
        let n = recorder.record(&req);
        async move {
            if req.headers().contains_key("if-none-match") {
                let mut b = Response::builder().status(304);
                for (k, v) in not_modified {
                    b = b.header(*k, *v);
                }
                return b.body(empty()).unwrap();
            }
            Response::builder()
                .header("cache-control", "max-age=0")
                .header("etag", "\"v1\"")
                .body(full(format!("body #{n}")))
                .unwrap()
        }
    })
    .await;
    (upstream, seen)
}

fn config_for(addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "{}\n[cache]\nenabled = true\n{extra}\n",
        simple_config(&[addr], "")
    )
}

#[tokio::test]
async fn a_304_without_validators_refreshes_the_entry_and_clients_get_the_body() {
    // Allowed, and common: the origin's 304 repeats no ETag. It answers weir's own
    // conditional request, which named the stored response and no other.
    let (origin, seen) = revalidating_origin(&[("cache-control", "max-age=60")]).await;
    let weir = weir(&config_for(origin.addr, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    assert_eq!(get(addr, "/r").await.text(), "body #1");
    stored(&weir, 1).await;

    // An unconditional client gets the stored body, never the 304.
    let second = get(addr, "/r").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.text(), "body #1");
    assert_eq!(status(&second), "weir-l1; fwd=stale; fwd-status=304");
    assert_eq!(seen.conditionals(), ["", "\"v1\""]);

    // The 304's max-age refreshed the entry: the next one is a hit, no origin request.
    stored(&weir, 2).await;
    let third = get(addr, "/r").await;
    assert_eq!(third.text(), "body #1");
    assert!(status(&third).contains("hit"), "{}", status(&third));
    // A client whose own validator matches gets its 304.
    let conditional = get_with(addr, "/r", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
    assert_eq!(seen.conditionals().len(), 2);
}

#[tokio::test]
async fn a_304_about_another_response_is_followed_by_a_whole_fetch() {
    // The origin's 304 names a strong ETag the stored response does not have: it cannot
    // be matched, so weir fetches the response again without conditions.
    let (origin, seen) =
        revalidating_origin(&[("etag", "\"other\""), ("cache-control", "max-age=60")]).await;
    let weir = weir(&config_for(origin.addr, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    get(addr, "/r").await;
    stored(&weir, 1).await;
    let second = get(addr, "/r").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.text(), "body #3");
    assert_eq!(seen.conditionals(), ["", "\"v1\"", ""]);
    // The same for a client that asked conditionally with the stored tag: its validator
    // is judged against the response fetched whole.
    stored(&weir, 2).await;
    let conditional = get_with(addr, "/r", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
    assert_eq!(seen.conditionals(), ["", "\"v1\"", "", "\"v1\"", ""]);
    // A HEAD is revalidated and, after such a 304, fetched again as a HEAD.
    let head = send(
        &http1_client(),
        Request::head(format!("http://{addr}/r"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(seen.methods()[5..], ["HEAD", "HEAD"]);
    assert_eq!(seen.conditionals()[5..], ["\"v1\"", ""]);
}

#[tokio::test]
async fn responses_with_explicit_freshness_are_stored_whatever_their_status() {
    // (status, Cache-Control, Last-Modified, stored?)
    let cases: &[(u16, &str, bool, bool)] = &[
        (204, "max-age=60", false, true),
        (299, "max-age=60", false, true),
        (400, "max-age=60", false, true),
        (404, "max-age=60", false, true),
        (410, "max-age=60", false, true),
        (499, "max-age=60", false, true),
        (500, "max-age=60", false, true),
        (502, "s-maxage=60", false, true),
        (503, "max-age=60", false, true),
        (504, "max-age=60", false, true),
        (599, "max-age=60", false, true),
        // must-understand: only a cache that knows the status may store it.
        (599, "max-age=60, must-understand", false, false),
        (404, "max-age=60, must-understand, no-store", false, true),
        // Heuristic freshness only for the heuristically cacheable statuses.
        (204, "", true, true),
        (500, "", true, false),
        (599, "", true, false),
    ];
    for &(code, cc, last_modified, expect_stored) in cases {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let origin = upstream(move |_req| {
            let n = counter.fetch_add(1, SeqCst) + 1;
            async move {
                let mut b = Response::builder().status(code);
                if !cc.is_empty() {
                    b = b.header("cache-control", cc);
                }
                if last_modified {
                    b = b
                        .header(
                            "date",
                            httpdate::fmt_http_date(std::time::SystemTime::now()),
                        )
                        .header("last-modified", "Tue, 01 Jan 2019 00:00:00 GMT");
                }
                let body = if code == 204 {
                    String::new()
                } else {
                    format!("#{n}")
                };
                b.body(full(body)).unwrap()
            }
        })
        .await;
        // The default retry policy: 502-504 must not be asked twice of the one endpoint.
        let weir = weir(&config_for(origin.addr, "")).await;
        let addr = weir.listener_addr("http").unwrap();
        let first = get(addr, "/s").await;
        assert_eq!(first.status.as_u16(), code);
        assert_eq!(
            hits.load(SeqCst),
            1,
            "{code} {cc}: one origin request, no retry"
        );
        if expect_stored {
            stored(&weir, 1).await;
        }
        let second = get(addr, "/s").await;
        assert_eq!(second.status.as_u16(), code, "{code} {cc}");
        let from_cache = hits.load(SeqCst) == 1;
        assert_eq!(
            from_cache, expect_stored,
            "{code} {cc} (last-modified {last_modified})"
        );
        if expect_stored {
            assert!(
                status(&second).contains("hit"),
                "{code}: {}",
                status(&second)
            );
            assert_eq!(second.body, first.body);
        }
    }
}

#[tokio::test]
async fn ranges_are_cut_from_a_complete_stored_response() {
    let seen = Seen::default();
    let recorder = seen.clone();
    let origin = upstream(move |req| {
        recorder.record(&req);
        async move {
            Response::builder()
                .header("cache-control", "max-age=60")
                .header("etag", "\"r1\"")
                .header("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")
                .header("accept-ranges", "bytes")
                .body(full("0123456789A"))
                .unwrap()
        }
    })
    .await;
    let weir = weir(&config_for(origin.addr, "")).await;
    let addr = weir.listener_addr("http").unwrap();

    // A range on a miss goes to the origin as sent; nothing is stored from it.
    get_with(addr, "/f", &[("range", "bytes=0-1")]).await;
    assert_eq!(seen.ranges(), ["bytes=0-1"]);

    get(addr, "/f").await;
    stored(&weir, 1).await;
    let range = |value: &'static str, extra: Option<(&'static str, &'static str)>| async move {
        let mut headers = vec![("range", value)];
        headers.extend(extra);
        get_with(addr, "/f", &headers).await
    };
    for (asked, body, content_range) in [
        ("bytes=0-1", "01", "bytes 0-1/11"),
        ("bytes=1-", "123456789A", "bytes 1-10/11"),
        ("bytes=-1", "A", "bytes 10-10/11"),
        ("bytes=-50", "0123456789A", "bytes 0-10/11"),
        ("bytes=9-20", "9A", "bytes 9-10/11"),
    ] {
        let reply = range(asked, None).await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT, "{asked}");
        assert_eq!(reply.text(), body, "{asked}");
        assert_eq!(
            reply.header("content-range"),
            Some(content_range),
            "{asked}"
        );
        assert_eq!(
            reply.header("content-length"),
            Some(&*body.len().to_string())
        );
        assert!(status(&reply).contains("hit"), "{asked}");
    }
    let past_the_end = range("bytes=11-", None).await;
    assert_eq!(past_the_end.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past_the_end.header("content-range"), Some("bytes */11"));
    assert!(past_the_end.body.is_empty());
    // If-Range: the stored validator lets the range through, another gets it all.
    let same = range("bytes=0-1", Some(("if-range", "\"r1\""))).await;
    assert_eq!(
        (same.status, same.text().as_str()),
        (StatusCode::PARTIAL_CONTENT, "01")
    );
    let dated = range(
        "bytes=0-1",
        Some(("if-range", "Tue, 01 Dec 2026 10:00:00 GMT")),
    )
    .await;
    assert_eq!(dated.status, StatusCode::PARTIAL_CONTENT);
    for changed in ["\"r0\"", "W/\"r1\"", "Mon, 30 Nov 2026 10:00:00 GMT"] {
        let whole = range("bytes=0-1", Some(("if-range", changed))).await;
        assert_eq!(whole.status, StatusCode::OK, "If-Range {changed}");
        assert_eq!(whole.text(), "0123456789A");
    }
    // Several ranges in one request get the whole response (RFC 9110 §14.2 allows it).
    let several = range("bytes=0-1,4-5", None).await;
    assert_eq!(
        (several.status, several.text().as_str()),
        (StatusCode::OK, "0123456789A")
    );
    // A conditional that matches wins over the range.
    let not_modified = range("bytes=0-1", Some(("if-none-match", "\"r1\""))).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        seen.ranges(),
        ["bytes=0-1", ""],
        "only the miss and the full fetch went upstream"
    );
}

/// An origin that answers `headers` and can then be taken away (its port closed).
async fn vanishing_origin(cc: &'static str) -> Upstream {
    upstream(move |_req| async move {
        Response::builder()
            .header("cache-control", cc)
            .body(full("kept"))
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn stale_entries_answer_while_the_origin_is_unreachable_unless_forbidden() {
    // (Cache-Control, stored at all, may answer stale while the origin is away)
    for (cc, is_stored, may_serve_stale) in [
        ("max-age=1", true, true),
        ("max-age=1, must-revalidate", true, false),
        // A shared cache treats proxy-revalidate as never fresh (http-cache-semantics).
        ("max-age=1, proxy-revalidate", false, false),
        ("max-age=1, no-cache", false, false),
        ("s-maxage=1", true, false),
    ] {
        let origin = vanishing_origin(cc).await;
        let weir = weir(&config_for(origin.addr, "stale_if_unreachable = \"30s\"")).await;
        let addr = weir.listener_addr("http").unwrap();
        get(addr, "/o").await;
        if is_stored {
            stored(&weir, 1).await;
        }
        drop(origin); // connections refused from now on
        // Poll until the entry is no longer fresh; then the answer shows the policy.
        let mut answer = None;
        eventually(&format!("{cc}: the entry goes stale"), async || {
            let reply = get(addr, "/o").await;
            let fresh_hit = reply.status == StatusCode::OK && status(&reply).contains("hit; ttl");
            if !fresh_hit {
                answer = Some(reply);
            }
            !fresh_hit
        })
        .await;
        let answer = answer.unwrap();
        if may_serve_stale {
            assert_eq!(answer.status, StatusCode::OK, "{cc}");
            assert_eq!(answer.text(), "kept");
            assert_eq!(
                status(&answer),
                "weir-l1; fwd=stale; detail=origin-unreachable"
            );
        } else {
            assert!(
                answer.status.is_server_error(),
                "{cc}: {} {}",
                answer.status,
                status(&answer)
            );
        }
    }
    // Off: the error reaches the client.
    let origin = vanishing_origin("max-age=1").await;
    let weir = weir(&config_for(origin.addr, "stale_if_unreachable = \"0s\"")).await;
    let addr = weir.listener_addr("http").unwrap();
    get(addr, "/o").await;
    stored(&weir, 1).await;
    drop(origin);
    let mut answer = None;
    eventually("the entry goes stale", async || {
        let reply = get(addr, "/o").await;
        let fresh_hit = status(&reply).contains("hit; ttl");
        if !fresh_hit {
            answer = Some(reply.status);
        }
        !fresh_hit
    })
    .await;
    assert!(answer.unwrap().is_server_error());
}

#[tokio::test]
async fn surrogate_control_targeted_at_weir_is_obeyed() {
    let capability = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = capability.clone();
    let origin = upstream(move |req| {
        seen.lock().unwrap().push(
            req.headers()
                .get("surrogate-capability")
                .map(|v| v.to_str().unwrap().to_owned()),
        );
        let path = req.uri().path().to_owned();
        async move {
            let sc = match path.as_str() {
                "/mine" => "max-age=3600;weir",
                "/other" => "max-age=3600;othercdn",
                _ => "no-store;othercdn, max-age=3600",
            };
            Response::builder()
                .header("cache-control", "no-store")
                .header("surrogate-control", sc)
                .body(full(path))
                .unwrap()
        }
    })
    .await;
    let weir = weir(&config_for(origin.addr, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    for path in ["/mine", "/other", "/untargeted"] {
        get(addr, path).await;
    }
    stored(&weir, 2).await;
    assert!(status(&get(addr, "/mine").await).contains("hit"));
    assert!(status(&get(addr, "/untargeted").await).contains("hit"));
    assert_eq!(status(&get(addr, "/other").await), "weir-l1; fwd=miss");
    let capability = capability.lock().unwrap();
    assert_eq!(capability.len(), 4);
    assert!(
        capability
            .iter()
            .all(|c| c.as_deref() == Some("weir=\"Surrogate/1.0\""))
    );
}

#[tokio::test]
async fn a_client_304_leaves_no_unbounded_work_behind() {
    // The client's validator matches the fresh 200; the origin's body is far larger than
    // anything the cache keeps and keeps coming. weir answers 304 at once and stops
    // reading the rest within its bounds; the task doing so is tracked and ends.
    let origin = streaming_upstream(
        4096,
        &[("cache-control", "max-age=60"), ("etag", "\"big\"")],
    )
    .await;
    let weir = weir(&config_for(origin.addr, "max_object_bytes = 1048576")).await;
    let addr = weir.listener_addr("http").unwrap();
    let reply = get_with(addr, "/big", &[("if-none-match", "\"big\"")]).await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    let cache = weir.state().snapshot.load().cache.clone().unwrap();
    eventually("the drain ends", async || cache.background_tasks() == 0).await;
    assert_eq!(
        cache.stats.stores.load(SeqCst),
        0,
        "past max_object_bytes: not stored"
    );
}

#[tokio::test]
async fn vary_compares_normalised_selecting_headers() {
    let origin = origin(&[
        ("cache-control", "max-age=60"),
        ("vary", "Foo, Accept-Language"),
    ])
    .await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    get_with(
        addr,
        "/v",
        &[("foo", "1, 2"), ("accept-language", "en, de")],
    )
    .await;
    stored(&weir, 1).await;
    let send_lines = |lines: &'static [(&'static str, &'static str)]| async move {
        let mut b = Request::get(format!("http://{addr}/v"));
        for (k, v) in lines {
            b = b.header(*k, *v);
        }
        send(&http1_client(), b.body(empty()).unwrap()).await
    };
    // The same selection however it is spelled: lines combined, whitespace, tag case.
    for lines in [
        &[("foo", "1"), ("foo", "2"), ("accept-language", "en, de")][..],
        &[("foo", " 1 ,2 "), ("accept-language", " en ,   de")][..],
        &[("foo", "1,2"), ("accept-language", "EN, De")][..],
    ] {
        let reply = send_lines(lines).await;
        assert!(
            status(&reply).contains("hit"),
            "{lines:?}: {}",
            status(&reply)
        );
    }
    assert_eq!(origin.hits.load(SeqCst), 1);
    // Another order is another preference, and another value another variant.
    let reordered = send_lines(&[("foo", "1, 2"), ("accept-language", "de, en")]).await;
    assert_eq!(status(&reordered), "weir-l1; fwd=miss; stored");
    let other = send_lines(&[("foo", "2, 1"), ("accept-language", "en, de")]).await;
    assert_eq!(status(&other), "weir-l1; fwd=miss; stored");
    assert_eq!(origin.hits.load(SeqCst), 3);
}

#[tokio::test]
async fn fields_named_by_no_cache_or_private_are_withheld_not_the_response() {
    let origin = origin(&[
        (
            "cache-control",
            "max-age=60, no-cache=\"x-secret, x-token\", private=\"x-user\"",
        ),
        ("x-secret", "s"),
        ("x-token", "t"),
        ("x-user", "u"),
        ("x-other", "o"),
    ])
    .await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    let first = get(addr, "/w").await;
    assert_eq!(
        first.header("x-secret"),
        Some("s"),
        "the origin's own answer is whole"
    );
    stored(&weir, 1).await;
    let second = get(addr, "/w").await;
    assert!(status(&second).contains("hit"), "{}", status(&second));
    assert_eq!(origin.hits.load(SeqCst), 1);
    for withheld in ["x-secret", "x-token", "x-user"] {
        assert_eq!(second.header(withheld), None, "{withheld}");
    }
    assert_eq!(second.header("x-other"), Some("o"));
}

/// The stored fields of a hit: what it sent less what each answer makes anew.
fn stored_fields(fields: &[(String, String)]) -> Vec<(String, String)> {
    let mut kept: Vec<_> = fields
        .iter()
        .filter(|(n, _)| {
            !["age", "cache-status", "x-request-id", "connection"].contains(&n.as_str())
        })
        .cloned()
        .collect();
    kept.sort();
    kept
}

#[tokio::test]
async fn hits_send_the_stored_head_field_for_field_whatever_the_client() {
    // Repeated fields, an ETag, the origin's Date, and a field named like the block
    // hyper writes stored heads with: from an upstream it is an ordinary field.
    let origin = origin(&[
        ("cache-control", "max-age=60"),
        ("content-type", "text/plain"),
        ("etag", "\"v1\""),
        ("x-multi", "a"),
        ("x-multi", "b"),
        (
            "hyper-field-block",
            "0000000000000000-010011content-length: 0",
        ),
    ])
    .await;
    let weir = weir(&cache_config(&origin, "")).await;
    let addr = weir.listener_addr("http").unwrap();
    let request = |method: &str, version: &str| {
        format!("{method} /h {version}\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
    };
    let (_, miss, miss_body) =
        raw_parts(&raw_exchange(addr, request("GET", "HTTP/1.1").as_bytes()).await);
    assert_eq!(values(&miss, "cache-status"), ["weir-l1; fwd=miss; stored"]);
    stored(&weir, 1).await;

    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let raw = raw_exchange(addr, request("GET", version).as_bytes()).await;
        let (status, hit, body) = raw_parts(&raw);
        assert!(status.ends_with(" 200 OK"), "{version}: {status}");
        assert!(
            values(&hit, "cache-status")[0].starts_with("weir-l1; hit"),
            "{raw}"
        );
        assert_eq!(values(&hit, "age").len(), 1, "{raw}");
        assert_eq!(
            stored_fields(&hit),
            stored_fields(&miss),
            "{version}: {raw}"
        );
        // One Date (the origin's), one length (the body's), and no block left as such.
        assert_eq!(values(&hit, "date"), values(&miss, "date"));
        assert_eq!(
            values(&hit, "content-length"),
            [miss_body.len().to_string()]
        );
        assert_eq!(
            values(&hit, "hyper-field-block"),
            ["0000000000000000-010011content-length: 0"]
        );
        assert_eq!(body, miss_body);
    }

    // HEAD: the stored length, no body.
    let raw = raw_exchange(addr, request("HEAD", "HTTP/1.1").as_bytes()).await;
    let (_, head, body) = raw_parts(&raw);
    assert!(
        values(&head, "cache-status")[0].starts_with("weir-l1; hit"),
        "{raw}"
    );
    assert_eq!(stored_fields(&head), stored_fields(&miss), "{raw}");
    assert!(body.is_empty());

    // HTTP/2: the same fields.
    let reply = send(
        &h2c_client(),
        Request::get(format!("http://{addr}/h"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert!(
        status(&reply).starts_with("weir-l1; hit"),
        "{}",
        status(&reply)
    );
    let h2: Vec<(String, String)> = reply
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    assert_eq!(stored_fields(&h2), stored_fields(&miss));
    assert_eq!(reply.text(), miss_body);
    assert_eq!(origin.hits.load(SeqCst), 1);
}

#[tokio::test]
async fn route_response_rules_apply_to_hits() {
    let origin = origin(&[
        ("cache-control", "max-age=60"),
        ("x-multi", "a"),
        ("x-multi", "b"),
        ("server", "origin"),
    ])
    .await;
    let config = cache_config(&origin, "").replace(
        "pool = \"main\"",
        "pool = \"main\"\nresponse_headers = { remove = [\"x-multi\"], set = { \"server\" = \"weir\" } }",
    );
    let weir = weir(&config).await;
    let addr = weir.listener_addr("http").unwrap();
    let first = get(addr, "/r").await;
    assert!(first.header("x-multi").is_none());
    stored(&weir, 1).await;
    let request = format!("GET /r HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let raw = raw_exchange(addr, request.as_bytes()).await;
    let (_, hit, _) = raw_parts(&raw);
    assert!(
        values(&hit, "cache-status")[0].starts_with("weir-l1; hit"),
        "{raw}"
    );
    assert!(values(&hit, "x-multi").is_empty(), "{raw}");
    assert_eq!(values(&hit, "server"), ["weir"], "{raw}");
}
