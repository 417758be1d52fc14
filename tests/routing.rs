//! Routing by host and path prefix through the real proxy.

mod common;

use common::*;
use http::{Request, Version};

async fn reply_from(proxy: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
    let request = Request::get(format!("http://{proxy}{path}"))
        .header("host", host)
        .body(empty())
        .unwrap();
    let reply = send(&http1_client(), request).await;
    (
        reply.status.as_u16(),
        reply.header("x-upstream").unwrap_or("-").to_owned(),
    )
}

#[tokio::test]
async fn routes_by_host_and_path_in_file_order() {
    let api = named_upstream("api").await;
    let admin = named_upstream("admin").await;
    let tenant = named_upstream("tenant").await;
    let web = named_upstream("web").await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[routes]]
host = "api.example.com"
path_prefix = "/admin"
pool = "admin"

[[routes]]
host = "api.example.com"
pool = "api"

[[routes]]
host = "*.tenants.example.com"
pool = "tenant"

[[routes]]
path_prefix = "/"
pool = "web"

[pools.api]
endpoints = [{{ address = "{}" }}]
[pools.admin]
endpoints = [{{ address = "{}" }}]
[pools.tenant]
endpoints = [{{ address = "{}" }}]
[pools.web]
endpoints = [{{ address = "{}" }}]
"#,
        api.addr, admin.addr, tenant.addr, web.addr
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();

    let cases = [
        ("api.example.com", "/admin", "admin"),
        ("api.example.com", "/admin/users", "admin"),
        ("API.Example.COM:8080", "/admin/x", "admin"),
        // Segment-aware prefix: /administrator is not under /admin.
        ("api.example.com", "/administrator", "api"),
        ("api.example.com", "/v1/orders", "api"),
        ("acme.tenants.example.com", "/", "tenant"),
        // The wildcard covers exactly one label.
        ("a.b.tenants.example.com", "/", "web"),
        ("tenants.example.com", "/", "web"),
        ("other.example.org", "/anything", "web"),
    ];
    for (host, path, expected) in cases {
        let (status, served_by) = reply_from(proxy, host, path).await;
        assert_eq!(status, 200, "{host}{path}");
        assert_eq!(served_by, expected, "{host}{path}");
    }
    weir.shutdown().await;
}

#[tokio::test]
async fn http2_authority_is_used_for_host_routing() {
    let api = named_upstream("api").await;
    let web = named_upstream("web").await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
host = "127.0.0.1"
pool = "api"
[[routes]]
pool = "web"
[pools.api]
endpoints = [{{ address = "{}" }}]
[pools.web]
endpoints = [{{ address = "{}" }}]
"#,
        api.addr, web.addr
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let request = Request::get(format!("http://{proxy}/x"))
        .version(Version::HTTP_2)
        .body(empty())
        .unwrap();
    let reply = send(&h2c_client(), request).await;
    assert_eq!(reply.header("x-upstream"), Some("api"));
    weir.shutdown().await;
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let c = named_upstream("c").await;
    let weir = weir(&simple_config(&[a.addr, b.addr, c.addr], "")).await;
    let proxy = weir.listener_addr("http").unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let reply = get(proxy, "/").await;
        *counts
            .entry(reply.header("x-upstream").unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10]);
    weir.shutdown().await;
}

#[tokio::test]
async fn preserve_host_false_sends_the_endpoint_address() {
    let up = upstream(|req| async move {
        let host = req.headers()["host"].to_str().unwrap().to_owned();
        http::Response::new(full(host))
    })
    .await;
    let weir = weir(&simple_config(&[up.addr], "preserve_host = false")).await;
    let reply = get(weir.listener_addr("http").unwrap(), "/").await;
    assert_eq!(reply.text(), up.addr.to_string());
    weir.shutdown().await;
}

#[tokio::test]
async fn absolute_form_target_wins_over_the_host_header() {
    let internal = named_upstream("internal").await;
    let public = upstream(|req| async move {
        let host = req.headers()["host"].to_str().unwrap().to_owned();
        http::Response::builder()
            .header("x-upstream", "public")
            .body(full(host))
            .unwrap()
    })
    .await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
host = "internal.example"
pool = "internal"
[[routes]]
pool = "public"
[pools.internal]
endpoints = [{{ address = "{}" }}]
[pools.public]
endpoints = [{{ address = "{}" }}]
"#,
        internal.addr, public.addr
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    // Routed by the target (public), so the upstream must not see the other Host.
    let reply = raw_exchange(
        proxy,
        b"GET http://public.example/x HTTP/1.1\r\nHost: internal.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("x-upstream: public"), "{reply}");
    assert!(reply.ends_with("public.example"), "{reply}");
    weir.shutdown().await;
}
