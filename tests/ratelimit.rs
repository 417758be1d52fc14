//! Rate limits through the real proxy: 429 with Retry-After after the burst.

mod common;

use common::*;
use http::Request;

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_per_api_key() {
    let up = named_upstream("a").await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"
[[routes]]
pool = "main"
rate_limit = {{ requests_per_second = 1, burst = 3, key = "header:x-api-key" }}
[pools.main]
endpoints = [{{ address = "{}" }}]
"#,
        up.addr
    );
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let with_key = |key: &'static str| {
        Request::get(format!("http://{proxy}/"))
            .header("x-api-key", key)
            .body(empty())
            .unwrap()
    };
    let client = http1_client();
    for _ in 0..3 {
        assert_eq!(send(&client, with_key("alpha")).await.status, 200);
    }
    let limited = send(&client, with_key("alpha")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(
        limited.text(),
        "429 Too Many Requests: rate limit exceeded\n"
    );
    assert_eq!(
        send(&client, with_key("beta")).await.status,
        200,
        "other keys are unaffected"
    );
    let snapshot = weir.state().snapshot.load();
    let route = &snapshot.router.routes()[0];
    assert_eq!(
        route
            .rate_limit
            .as_ref()
            .unwrap()
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(snapshot);
    weir.shutdown().await;
}

#[test]
fn bad_rate_limits_are_config_errors() {
    let base = "[[listeners]]\nname = \"h\"\naddress = \"127.0.0.1:1\"\n[[routes]]\npool = \"p\"\nrate_limit = RL\n[pools.p]\n";
    for (limit, expected) in [
        (
            "{ requests_per_second = 0 }",
            "routes[0].rate_limit: requests_per_second and burst must be at least 1",
        ),
        (
            "{ requests_per_second = 5, key = \"cookie:x\" }",
            "routes[0].rate_limit.key: \"cookie:x\": expected",
        ),
    ] {
        let text = base.replace("RL", limit);
        let err = weir::config::load_str(&text, std::path::Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
    }
}
