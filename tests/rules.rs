//! Traffic rules through the real proxy: conditions, splits (per request, sticky, moved
//! through the admin API), redirects and fixed answers, rewrites, CORS, and mirrors that
//! are slow or down while the real pool serves.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use common::wait::eventually;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;

/// An upstream that names itself in `x-upstream` and tells what it received: the request
/// target in `x-seen-target`, `Host` in `x-seen-host`, `X-Forwarded-Prefix` in
/// `x-seen-prefix`, and the body echoed. Counts its requests.
async fn echo_upstream(name: &'static str) -> (Upstream, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&count);
    let up = upstream(move |req: Request<hyper::body::Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            seen.fetch_add(1, Relaxed);
            let header = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            let target = req.uri().to_string();
            let (host, prefix) = (header("host"), header("x-forwarded-prefix"));
            let (client, env, debug, trail) = (
                header("x-client"),
                header("x-env"),
                header("x-debug"),
                header("x-trail"),
            );
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::builder()
                .header("x-upstream", name)
                .header("x-seen-target", target)
                .header("x-seen-host", host)
                .header("x-seen-prefix", prefix)
                .header("x-seen-client", client)
                .header("x-seen-env", env)
                .header("x-seen-debug", debug)
                .header("x-seen-trail", trail)
                .header("server", "upstream/1.0")
                .header("access-control-allow-origin", "https://stale.example")
                .body(full(body))
                .unwrap()
        }
    })
    .await;
    (up, count)
}

fn listener(extra: &str) -> String {
    format!("[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n{extra}\n")
}

fn pool(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("\n[pools.{name}]\nendpoints = [{{ address = \"{addr}\" }}]\n{extra}\n")
}

async fn ask(request: http::request::Builder, body: &'static str) -> Reply {
    send(&http1_client(), request.body(full(body)).unwrap()).await
}

fn request(proxy: SocketAddr, method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", "api.example.com")
}

async fn upstream_of(builder: http::request::Builder) -> String {
    let reply = send(&http1_client(), builder.body(empty()).unwrap()).await;
    reply.header("x-upstream").unwrap_or("-").to_owned()
}

#[tokio::test]
async fn every_condition_kind_picks_its_route_and_the_first_match_wins() {
    let names = [
        "users", "writes", "canary", "beta", "debug", "gold", "internal", "plain", "web",
    ];
    let mut upstreams = Vec::new();
    let mut pools = String::new();
    for name in names {
        let (up, _) = echo_upstream(name).await;
        pools += &pool(name, up.addr, "");
        upstreams.push(up);
    }
    let config = listener("trusted_proxies = [\"127.0.0.1\"]")
        + r#"
[[routes]]
path = "/healthz"
respond = { status = 200, body = "ok" }

[[routes]]
path_regex = "/users/[0-9]+"
pool = "users"

[[routes]]
methods = ["POST", "PUT"]
pool = "writes"

[[routes]]
headers = [{ name = "x-canary", value = "1" }]
pool = "canary"

[[routes]]
headers = [{ name = "x-user", regex = "beta-[a-z]+" }]
pool = "beta"

[[routes]]
query = [{ name = "debug", value = "on now" }]
pool = "debug"

[[routes]]
cookies = [{ name = "tier", value = "gold" }]
pool = "gold"

[[routes]]
clients = ["10.0.0.0/8"]
pool = "internal"

[[routes]]
path_prefix = "/plain"
headers = [{ name = "x-canary", absent = true }]
pool = "plain"

[[routes]]
pool = "web"
"# + &pools;
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let get = |path: &str| request(proxy, "GET", path);

    let health = send(&http1_client(), get("/healthz").body(empty()).unwrap()).await;
    assert_eq!(
        (health.status.as_u16(), health.text().as_str()),
        (200, "ok")
    );
    assert_eq!(
        upstream_of(get("/healthz/deep")).await,
        "web",
        "exact, not prefix"
    );
    assert_eq!(upstream_of(get("/users/42")).await, "users");
    assert_eq!(
        upstream_of(get("/users/42/x")).await,
        "web",
        "the whole path"
    );
    assert_eq!(
        upstream_of(request(proxy, "POST", "/users/x")).await,
        "writes"
    );
    assert_eq!(
        upstream_of(request(proxy, "POST", "/users/7")).await,
        "users",
        "first match wins"
    );
    assert_eq!(
        upstream_of(get("/").header("x-canary", "1")).await,
        "canary"
    );
    assert_eq!(upstream_of(get("/").header("x-canary", "2")).await, "web");
    assert_eq!(
        upstream_of(get("/").header("x-user", "beta-anna")).await,
        "beta"
    );
    assert_eq!(
        upstream_of(get("/").header("x-user", "beta-42")).await,
        "web"
    );
    assert_eq!(
        upstream_of(get("/?a=1&debug=on+now")).await,
        "debug",
        "decoded"
    );
    assert_eq!(upstream_of(get("/?debug=on%20now")).await, "debug");
    assert_eq!(upstream_of(get("/?debug=off")).await, "web");
    assert_eq!(
        upstream_of(get("/").header("cookie", "a=b; tier=gold")).await,
        "gold"
    );
    assert_eq!(
        upstream_of(get("/").header("x-forwarded-for", "10.9.8.7")).await,
        "internal",
        "the resolved client, through a trusted proxy"
    );
    assert_eq!(
        upstream_of(get("/").header("x-forwarded-for", "192.0.2.1")).await,
        "web"
    );
    assert_eq!(upstream_of(get("/plain/x")).await, "plain");
    assert_eq!(
        upstream_of(get("/plain/x").header("x-canary", "2")).await,
        "web",
        "absent holds only without the header"
    );
    weir.shutdown().await;
}

/// Sends `count` GETs from `workers` concurrent clients; counts answers by upstream.
async fn tally(
    proxy: SocketAddr,
    count: usize,
    workers: usize,
    header: impl Fn(usize) -> Option<(String, String)> + Send + Sync + 'static,
) -> BTreeMap<String, usize> {
    let header = Arc::new(header);
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let header = Arc::clone(&header);
        tasks.push(tokio::spawn(async move {
            let client = http1_client();
            let mut seen = BTreeMap::<String, usize>::new();
            for i in (worker..count).step_by(workers) {
                let mut builder = request(proxy, "GET", "/");
                if let Some((name, value)) = header(i) {
                    builder = builder.header(name, value);
                }
                let reply = send(&client, builder.body(empty()).unwrap()).await;
                assert_eq!(reply.status, 200);
                *seen
                    .entry(reply.header("x-upstream").unwrap_or("-").to_owned())
                    .or_default() += 1;
            }
            seen
        }));
    }
    let mut all = BTreeMap::new();
    for task in tasks {
        for (name, n) in task.await.unwrap() {
            *all.entry(name).or_default() += n;
        }
    }
    all
}

#[tokio::test]
async fn a_five_percent_split_holds_within_one_point_over_ten_thousand_requests() {
    let (stable, _) = echo_upstream("stable").await;
    let (canary, _) = echo_upstream("canary").await;
    let config = listener("")
        + "\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef0123\"\n"
        + r#"
[[routes]]
name = "api"
pools = [{ pool = "stable", weight = 95 }, { pool = "canary", weight = 5 }]
"# + &pool("stable", stable.addr, "")
        + &pool("canary", canary.addr, "");
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let seen = tally(proxy, 10_000, 8, |_| None).await;
    let share = seen["canary"] as f64 / 10_000.0;
    assert!(
        (0.04..=0.06).contains(&share),
        "canary share {share}: {seen:?}"
    );
    assert_eq!(seen.values().sum::<usize>(), 10_000);

    let admin = weir.admin_addr().unwrap();
    let metrics = admin_get(admin, "/metrics", "0123456789abcdef0123")
        .await
        .text();
    let line = format!(
        "weir_route_split_requests_total{{route=\"api\",pool=\"canary\"}} {}",
        seen["canary"]
    );
    assert!(metrics.contains(&line), "no {line:?} in metrics");
    assert!(metrics.contains("weir_route_split_weight{route=\"api\",pool=\"stable\"} 95"));
    weir.shutdown().await;
}

async fn admin_put(admin: SocketAddr, path: &str, body: &'static str) -> Reply {
    let request = Request::put(format!("http://{admin}{path}"))
        .header("authorization", "Bearer 0123456789abcdef0123")
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap();
    send(&http1_client(), request).await
}

#[tokio::test]
async fn sticky_splits_keep_users_on_their_side_as_the_admin_api_grows_the_canary() {
    let (stable, _) = echo_upstream("stable").await;
    let (canary, _) = echo_upstream("canary").await;
    let config = listener("")
        + "\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef0123\"\n"
        + r#"
[[routes]]
name = "api"
pools = [{ pool = "stable", weight = 90 }, { pool = "canary", weight = 10 }]
sticky = "header:x-user"
"# + &pool("stable", stable.addr, "")
        + &pool("canary", canary.addr, "");
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let admin = weir.admin_addr().unwrap();

    // 400 users, three requests each: every user sees one side only.
    let side_of = async |users: std::ops::Range<usize>| {
        let mut sides = BTreeMap::new();
        for user in users {
            let mut seen = BTreeSet::new();
            for _ in 0..3 {
                let builder = request(proxy, "GET", "/").header("x-user", format!("user-{user}"));
                seen.insert(upstream_of(builder).await);
            }
            assert_eq!(seen.len(), 1, "user-{user} saw {seen:?}");
            sides.insert(user, seen.into_iter().next().unwrap());
        }
        sides
    };
    let before = side_of(0..400).await;
    let on_canary: BTreeSet<usize> = before
        .iter()
        .filter(|(_, side)| *side == "canary")
        .map(|(user, _)| *user)
        .collect();
    assert!(
        (20..=60).contains(&on_canary.len()),
        "{} of 400 users on a 10 % canary",
        on_canary.len()
    );

    let moved = admin_put(
        admin,
        "/api/v1/routes/api/split",
        r#"{"weights": {"stable": 50, "canary": 50}}"#,
    )
    .await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    let json: serde_json::Value = serde_json::from_slice(&moved.body).unwrap();
    assert_eq!(json["pools"][1]["weight"], 50);
    let after = side_of(0..400).await;
    for user in &on_canary {
        assert_eq!(
            after[user], "canary",
            "user-{user} left the canary as it grew"
        );
    }
    let now_on_canary = after.values().filter(|s| *s == "canary").count();
    assert!(
        (160..=240).contains(&now_on_canary),
        "{now_on_canary} of 400 users on a 50 % canary"
    );
    // Without the key, requests are split one by one.
    let anonymous = tally(proxy, 400, 4, |_| None).await;
    assert!(anonymous.len() == 2, "{anonymous:?}");

    for (body, status) in [
        (r#"{"weights": {"stable": 0, "canary": 0}}"#, 400),
        (r#"{"weights": {"nope": 1}}"#, 400),
        (r#"{"weights": 5}"#, 400),
    ] {
        let refused = admin_put(admin, "/api/v1/routes/api/split", body).await;
        assert_eq!(refused.status, status, "{body}: {}", refused.text());
    }
    let unknown = admin_put(admin, "/api/v1/routes/nope/split", r#"{"weights": {}}"#).await;
    assert_eq!(unknown.status, 404);
    let listed = admin_get(admin, "/api/v1/routes", "0123456789abcdef0123").await;
    let json: serde_json::Value = serde_json::from_slice(&listed.body).unwrap();
    assert_eq!(
        json["routes"][0]["pools"][0]["weight"], 50,
        "refusals changed nothing"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn redirects_and_fixed_answers_come_from_weir() {
    let (web, count) = echo_upstream("web").await;
    let config = listener("")
        + r#"
[[routes]]
host = "old.example.com"
path_prefix = "/docs"
redirect = { host = "docs.example.com", prefix = "/v2", status = 302 }

[[routes]]
host = "plain.example.com"
redirect = { scheme = "https" }

[[routes]]
path_prefix = "/maintenance"
respond = { status = 503, body = "back soon\n" }
response_headers = { set = { "retry-after" = "120" } }

[[routes]]
pool = "web"
"# + &pool("web", web.addr, "");
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let with_host = |method: &str, host: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(format!("http://{proxy}{path}"))
            .header("host", host)
    };

    let moved = ask(
        with_host("GET", "old.example.com", "/docs/guide?lang=en"),
        "",
    )
    .await;
    assert_eq!(moved.status, 302);
    assert_eq!(
        moved.header("location"),
        Some("http://docs.example.com/v2/guide?lang=en")
    );
    let secure = ask(with_host("GET", "plain.example.com:8080", "/a?b=c"), "").await;
    assert_eq!(secure.status, 301);
    assert_eq!(
        secure.header("location"),
        Some("https://plain.example.com/a?b=c")
    );
    let post = ask(with_host("POST", "plain.example.com", "/form"), "x=1").await;
    assert_eq!(post.status, 308, "a redirected POST keeps its method");

    let down = ask(with_host("GET", "any.example.com", "/maintenance/x"), "").await;
    assert_eq!(down.status, 503);
    assert_eq!(down.text(), "back soon\n");
    assert_eq!(
        down.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(down.header("retry-after"), Some("120"));
    let head = ask(with_host("HEAD", "any.example.com", "/maintenance"), "").await;
    assert_eq!((head.status.as_u16(), head.body.len()), (503, 0));
    assert_eq!(count.load(Relaxed), 0, "no answer went upstream");
    weir.shutdown().await;
}

#[tokio::test]
async fn paths_and_headers_are_rewritten_both_ways() {
    let (api, _) = echo_upstream("api").await;
    let (legacy, _) = echo_upstream("legacy").await;
    let config = listener("")
        + r#"
[[routes]]
name = "api"
path_prefix = "/api"
pool = "api"
rewrite = { strip_prefix = true }
request_headers = { remove = ["x-debug"], set = { "x-env" = "prod", "x-client" = "${client_ip}" }, add = { "x-trail" = "${route}@${pool}" } }
response_headers = { remove = ["server"], set = { "x-served-by" = "${route}/${pool}" } }

[[routes]]
path_regex = "/users/[0-9]+/profile"
pool = "legacy"
rewrite = { regex = "^/users/(?P<id>[0-9]+)/profile$", replacement = "/profile.php?id=${id}" }

[[routes]]
path_prefix = "/v1"
pool = "api"
rewrite = { replace_prefix = "/internal/v1" }
"# + &pool("api", api.addr, "")
        + &pool("legacy", legacy.addr, "");
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();

    let stripped = send(
        &http1_client(),
        request(proxy, "GET", "/api/users/7?page=2")
            .header("x-debug", "1")
            .header("x-env", "dev")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(stripped.header("x-seen-target"), Some("/users/7?page=2"));
    assert_eq!(stripped.header("x-seen-prefix"), Some("/api"));
    assert_eq!(stripped.header("x-seen-debug"), Some("-"));
    assert_eq!(stripped.header("x-seen-env"), Some("prod"));
    assert_eq!(stripped.header("x-seen-client"), Some("127.0.0.1"));
    assert_eq!(stripped.header("x-seen-trail"), Some("api@api"));
    assert_eq!(stripped.header("server"), None);
    assert_eq!(stripped.header("x-served-by"), Some("api/api"));
    let root = send(
        &http1_client(),
        request(proxy, "GET", "/api").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(root.header("x-seen-target"), Some("/"));

    let regex = send(
        &http1_client(),
        request(proxy, "GET", "/users/42/profile?tab=2")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(regex.header("x-upstream"), Some("legacy"));
    assert_eq!(
        regex.header("x-seen-target"),
        Some("/profile.php?id=42&tab=2"),
        "the replacement's query first, then the request's"
    );

    let replaced = send(
        &http1_client(),
        request(proxy, "GET", "/v1/items?q=1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        replaced.header("x-seen-target"),
        Some("/internal/v1/items?q=1")
    );
    assert_eq!(replaced.header("x-seen-prefix"), Some("/v1"));
    assert_eq!(
        replaced.header("server"),
        Some("upstream/1.0"),
        "only the api route drops it"
    );
    weir.shutdown().await;
}

#[tokio::test]
async fn cors_preflights_are_answered_and_responses_carry_the_policy() {
    let (api, count) = echo_upstream("api").await;
    let config = listener("")
        + r#"
[[routes]]
pool = "api"
rate_limit = { requests_per_second = 1, burst = 3 }
cors = { origins = ["https://app.example.com"], methods = ["GET", "PUT"], headers = ["content-type"], expose_headers = ["x-upstream"], credentials = true, max_age = "5m" }
"# + &pool("api", api.addr, "");
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let preflight = |origin: &str, method: &str| {
        request(proxy, "OPTIONS", "/items")
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "content-type")
            .body(empty())
            .unwrap()
    };
    let ok = send(&http1_client(), preflight("https://app.example.com", "PUT")).await;
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        ok.header("access-control-allow-headers"),
        Some("content-type")
    );
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-max-age"), Some("300"));
    let refused = send(&http1_client(), preflight("https://evil.example", "PUT")).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("access-control-allow-origin"), None);
    assert_eq!(
        count.load(Relaxed),
        0,
        "preflights never reach the upstream"
    );

    let from = |origin: &str| {
        request(proxy, "GET", "/items")
            .header("origin", origin)
            .body(empty())
            .unwrap()
    };
    let allowed = send(&http1_client(), from("https://app.example.com")).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com"),
        "the upstream's own value is replaced"
    );
    assert_eq!(
        allowed.header("access-control-expose-headers"),
        Some("x-upstream")
    );
    assert_eq!(allowed.header("vary"), Some("Origin"));
    let other = send(&http1_client(), from("https://evil.example")).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);
    // weir's own answers carry the policy too, so a page can read a 429.
    let mut limited = None;
    for _ in 0..10 {
        let reply = send(&http1_client(), from("https://app.example.com")).await;
        if reply.status == 429 {
            limited = Some(reply);
            break;
        }
    }
    let limited = limited.expect("the rate limit answers 429");
    assert_eq!(
        limited.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    weir.shutdown().await;
}

/// The mirror pool's copies: what they carried.
#[derive(Default)]
struct Copies {
    hosts: std::sync::Mutex<Vec<String>>,
    bodies: std::sync::Mutex<Vec<Vec<u8>>>,
}

#[tokio::test]
async fn mirrors_copy_a_share_with_a_shadow_host_and_bounded_bodies() {
    let (real, real_count) = echo_upstream("real").await;
    let copies = Arc::new(Copies::default());
    let seen = Arc::clone(&copies);
    let candidate = upstream(move |req: Request<hyper::body::Incoming>| {
        let seen = Arc::clone(&seen);
        async move {
            let host = req
                .headers()
                .get("host")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen.hosts.lock().unwrap().push(host);
            seen.bodies.lock().unwrap().push(body.to_vec());
            Response::builder()
                .status(500)
                .body(full("candidate"))
                .unwrap()
        }
    })
    .await;
    let config = listener("")
        + r#"
[[routes]]
name = "api"
pool = "real"
mirror = { pool = "candidate", percent = 50, max_body_bytes = 16 }
"# + &pool("real", real.addr, "preserve_host = true")
        + &pool("candidate", candidate.addr, "preserve_host = true");
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    for i in 0..400 {
        let body = if i % 2 == 0 {
            "small body"
        } else {
            "a body longer than sixteen bytes"
        };
        let reply = send(
            &http1_client(),
            request(proxy, "POST", "/orders").body(full(body)).unwrap(),
        )
        .await;
        assert_eq!(
            reply.status, 200,
            "the candidate's 500s never reach clients"
        );
        assert_eq!(reply.text(), body);
    }
    assert_eq!(real_count.load(Relaxed), 400);
    let snapshot = weir.state().snapshot.load_full();
    let stats = Arc::clone(&snapshot.router.routes()[0].mirror.as_ref().unwrap().stats);
    eventually("copies to be answered", async || {
        stats.responses[4].load(Relaxed) == stats.sent.load(Relaxed)
    })
    .await;
    let sent = stats.sent.load(Relaxed);
    let skipped = stats.skipped_body.load(Relaxed);
    // Half of 400 chosen; of those, the long bodies (half) are not copied.
    assert!(
        (150..=250).contains(&(sent + skipped)),
        "chosen {sent} + {skipped}"
    );
    assert!((60..=140).contains(&sent), "sent {sent}");
    assert_eq!(copies.hosts.lock().unwrap().len() as u64, sent);
    assert!(
        copies
            .hosts
            .lock()
            .unwrap()
            .iter()
            .all(|h| h == "api.example.com-shadow")
    );
    assert!(
        copies
            .bodies
            .lock()
            .unwrap()
            .iter()
            .all(|b| b == b"small body")
    );
    assert_eq!(stats.failed.load(Relaxed), 0);
    weir.shutdown().await;
}

#[tokio::test]
async fn a_hung_or_dead_mirror_never_slows_or_fails_the_real_requests() {
    let (real, _) = echo_upstream("real").await;
    let hung = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(empty())
    })
    .await;
    let dead = closed_port().await;
    let config = listener("")
        + r#"
[[routes]]
name = "hung"
path_prefix = "/hung"
pool = "real"
mirror = { pool = "hung", max_in_flight = 4 }

[[routes]]
name = "dead"
pool = "real"
mirror = { pool = "dead" }
"# + &pool("real", real.addr, "")
        + &pool("hung", hung.addr, "response_timeout = \"20s\"")
        + &pool("dead", dead, "");
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let client = http1_client();
    let mut slowest = Duration::ZERO;
    for path in ["/hung/a", "/other"] {
        for _ in 0..100 {
            let started = Instant::now();
            let reply = send(&client, request(proxy, "GET", path).body(empty()).unwrap()).await;
            slowest = slowest.max(started.elapsed());
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("x-upstream"), Some("real"));
        }
    }
    // A copy waits up to 20 s; the real requests never waited on one.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest real request {slowest:?}"
    );
    let snapshot = weir.state().snapshot.load_full();
    let routes = snapshot.router.routes();
    let hung_stats = &routes[0].mirror.as_ref().unwrap().stats;
    assert_eq!(
        hung_stats.sent.load(Relaxed),
        4,
        "four copies in flight at most"
    );
    assert_eq!(hung_stats.dropped_busy.load(Relaxed), 96);
    let dead_stats = Arc::clone(&routes[1].mirror.as_ref().unwrap().stats);
    eventually("copies to the dead pool to fail", async || {
        let failed = dead_stats.failed.load(Relaxed) + dead_stats.dropped_busy.load(Relaxed);
        failed == 100
    })
    .await;
    weir.shutdown().await;
}

#[tokio::test]
async fn a_reload_switches_blue_to_green_without_losing_the_request_in_flight() {
    let (release, released) = tokio::sync::watch::channel(false);
    let blue = upstream(move |req: Request<hyper::body::Incoming>| {
        let mut released = released.clone();
        async move {
            if req.uri().path() == "/slow" {
                let _ = released.wait_for(|r| *r).await;
            }
            Response::builder()
                .header("x-upstream", "blue")
                .body(full("blue"))
                .unwrap()
        }
    })
    .await;
    let (green, _) = echo_upstream("green").await;
    let file = |blue_weight: u32, green_weight: u32| {
        listener("")
            + &format!(
                "\n[[routes]]\nname = \"app\"\npools = [{{ pool = \"blue\", weight = {blue_weight} }}, {{ pool = \"green\", weight = {green_weight} }}]\n"
            )
            + &pool("blue", blue.addr, "")
            + &pool("green", green.addr, "")
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, file(1, 0)).unwrap();
    let weir = start_from_file(&path).await;
    let proxy = weir.listener_addr("http").unwrap();
    let in_flight = tokio::spawn(async move {
        send(
            &http1_client(),
            request(proxy, "GET", "/slow").body(empty()).unwrap(),
        )
        .await
    });
    let state = Arc::clone(weir.state());
    eventually("the slow request to reach blue", async || {
        let snapshot = state.snapshot.load();
        snapshot.pools["blue"].stats.in_flight.load(Relaxed) == 1
    })
    .await;

    std::fs::write(&path, file(0, 1)).unwrap();
    let report = weir.supervisor().reload().await;
    assert!(report.ok, "{report:?}");
    let after = tally(proxy, 50, 2, |_| None).await;
    assert_eq!(after.get("green"), Some(&50), "{after:?}");
    release.send(true).unwrap();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.text(),
        "blue",
        "the request in flight finished where it began"
    );
    weir.shutdown().await;
}
