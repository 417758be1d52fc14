//! The admin port: open probes, token-protected API.

mod common;

use common::*;
use http::Request;

fn config_with_admin(upstream: std::net::SocketAddr, token_line: &str) -> String {
    simple_config(&[upstream], "")
        + &format!("\n[admin]\naddress = \"127.0.0.1:0\"\n{token_line}\n")
}

#[tokio::test]
async fn probes_are_open_and_the_api_needs_the_token() {
    let up = named_upstream("a").await;
    let weir = weir(&config_with_admin(
        up.addr,
        "token = \"0123456789abcdef0123\"",
    ))
    .await;
    let admin = weir.admin_addr().unwrap();
    let proxy = weir.listener_addr("http").unwrap();
    assert_eq!(get(admin, "/healthz").await.status, 200);
    assert_eq!(get(admin, "/readyz").await.text(), "ready\n");

    assert_eq!(get(admin, "/api/v1/pools").await.status, 401);
    let wrong = Request::get(format!("http://{admin}/api/v1/pools"))
        .header("authorization", "Bearer 0123456789abcdef0124")
        .body(empty())
        .unwrap();
    assert_eq!(send(&http1_client(), wrong).await.status, 401);

    assert_eq!(get(proxy, "/").await.status, 200);
    let right = Request::get(format!("http://{admin}/api/v1/pools"))
        .header("authorization", "Bearer 0123456789abcdef0123")
        .body(empty())
        .unwrap();
    let reply = send(&http1_client(), right).await;
    assert_eq!(reply.status, 200);
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let endpoint = &json["pools"][0]["endpoints"][0];
    assert_eq!(json["pools"][0]["name"], "main");
    assert_eq!(json["pools"][0]["strategy"], "round_robin");
    assert_eq!(endpoint["address"], up.addr.to_string());
    assert_eq!(endpoint["requests"], 1);
    assert_eq!(endpoint["responses"]["2xx"], 1);
    assert_eq!(endpoint["in_flight"], 0);
    weir.shutdown().await;
}

#[tokio::test]
async fn without_a_token_the_api_is_closed() {
    let up = named_upstream("a").await;
    let weir = weir(&config_with_admin(
        up.addr,
        "token_env = \"WEIR_TEST_TOKEN_THAT_IS_NOT_SET\"",
    ))
    .await;
    let admin = weir.admin_addr().unwrap();
    let request = Request::get(format!("http://{admin}/api/v1/pools"))
        .header("authorization", "Bearer ")
        .body(empty())
        .unwrap();
    assert_eq!(send(&http1_client(), request).await.status, 401);
    weir.shutdown().await;
}

#[tokio::test]
async fn readyz_reports_draining_while_requests_finish() {
    let arrived = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = arrived.clone();
    let up = upstream(move |_req| {
        let signal = signal.clone();
        async move {
            signal.notify_one();
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            http::Response::new(full("done"))
        }
    })
    .await;
    let weir = weir(&config_with_admin(up.addr, "")).await;
    let admin = weir.admin_addr().unwrap();
    let proxy = weir.listener_addr("http").unwrap();
    let in_flight = tokio::spawn(async move { get(proxy, "/").await });
    arrived.notified().await;
    let shutdown = tokio::spawn(weir.shutdown());
    // The drain starts on another task; poll (bounded) until readiness flips.
    let mut ready = get(admin, "/readyz").await;
    for _ in 0..40 {
        if ready.status == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        ready = get(admin, "/readyz").await;
    }
    assert_eq!(ready.status, 503);
    assert_eq!(ready.text(), "draining\n");
    assert_eq!(in_flight.await.unwrap().status, 200);
    assert!(shutdown.await.unwrap().completed);
}

#[tokio::test]
async fn admin_bodies_are_bounded_and_the_port_is_loopback_by_default() {
    let up = named_upstream("a").await;
    let token = "0123456789abcdef0123";
    let weir = weir(&config_with_admin(up.addr, &format!("token = \"{token}\""))).await;
    let admin = weir.admin_addr().unwrap();
    let post = |body: Vec<u8>, auth: bool| {
        let mut request = Request::post(format!("http://{admin}/api/v1/instances/register"))
            .header("content-type", "application/json");
        if auth {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.body(full(body)).unwrap()
    };
    // 100 KiB of JSON: refused, with or without the token, and nothing registered.
    let mut big = br#"{"pool":"main","address":"127.0.0.1:9","pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 100 * 1024));
    big.extend(br#""}"#);
    assert_eq!(
        send(&http1_client(), post(big.clone(), false)).await.status,
        401
    );
    assert_eq!(send(&http1_client(), post(big, true)).await.status, 413);
    assert_eq!(
        weir.state().snapshot.load().pools["main"].endpoints().len(),
        1
    );
    weir.shutdown().await;

    // Without an address the admin port listens on loopback only.
    let text = simple_config(&[up.addr], "") + "\n[admin]\n";
    let config = weir::config::load_str(&text, std::path::Path::new("w.toml")).unwrap();
    assert!(config.admin.unwrap().address.ip().is_loopback());
}
