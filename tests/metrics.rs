//! `/metrics` on the admin port: valid exposition format, values that follow traffic.

mod common;

use common::*;

const TOKEN: &str = "metrics-token-0123456789";

async fn scrape(admin: std::net::SocketAddr, token: &str) -> (u16, String) {
    let reply = admin_get(admin, "/metrics", token).await;
    (reply.status.as_u16(), reply.text())
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match &sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        prometheus_parse::Value::Summary(_) => panic!("no summaries"),
    }
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("valid exposition format")
}

#[tokio::test]
async fn metrics_parse_and_follow_traffic() {
    let up = named_upstream("a").await;
    let dead = closed_port().await;
    let config = simple_config(&[up.addr, dead], "retry = { attempts = 0 }")
        + &format!("\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n");
    let weir = weir(&config).await;
    let admin = weir.admin_addr().unwrap();
    let proxy = weir.listener_addr("http").unwrap();

    assert_eq!(scrape(admin, "wrong-token-0123456789").await.0, 401);
    let (status, text) = scrape(admin, TOKEN).await;
    assert_eq!(status, 200);
    let before = parse(&text);
    assert_eq!(value(&before, "weir_requests_total", &[]), 0.0);

    for _ in 0..10 {
        get(proxy, "/").await;
    }
    let (_, text) = scrape(admin, TOKEN).await;
    let after = parse(&text);
    let ep = up.addr.to_string();
    let dead = dead.to_string();
    assert_eq!(value(&after, "weir_requests_total", &[]), 10.0);
    // What a leak would show, for dashboards and the fault suite.
    for (name, at_least) in [
        ("weir_runtime_alive_tasks", 1.0),
        ("process_open_fds", 3.0),
        ("process_resident_memory_bytes", 1e6),
    ] {
        let v = value(&after, name, &[]);
        assert!(v >= at_least, "{name} = {v}");
    }
    assert_eq!(
        value(&after, "weir_responses_total", &[("class", "2xx")]),
        5.0
    );
    assert_eq!(
        value(&after, "weir_responses_total", &[("class", "5xx")]),
        5.0
    );
    assert_eq!(
        value(
            &after,
            "weir_route_responses_total",
            &[("route", "routes[0]"), ("class", "2xx")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &after,
            "weir_route_duration_seconds_count",
            &[("route", "routes[0]")]
        ),
        10.0
    );
    assert_eq!(
        value(
            &after,
            "weir_upstream_responses_total",
            &[("endpoint", &ep), ("class", "2xx")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &after,
            "weir_upstream_duration_seconds_count",
            &[("endpoint", &ep)]
        ),
        5.0
    );
    assert_eq!(
        value(
            &after,
            "weir_upstream_errors_total",
            &[("endpoint", &dead), ("kind", "connect")]
        ),
        5.0
    );
    assert_eq!(
        value(
            &after,
            "weir_endpoint_ejections_total",
            &[("endpoint", &dead)]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "weir_endpoint_state",
            &[("endpoint", &dead), ("state", "ejected")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "weir_endpoint_state",
            &[("endpoint", &ep), ("state", "healthy")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "weir_upstream_in_flight", &[("endpoint", &ep)]),
        0.0
    );
    assert_eq!(
        value(&after, "weir_reloads_total", &[("result", "ok")]),
        0.0
    );
    // Histogram buckets are cumulative and end at the count.
    assert!(text.contains("weir_upstream_duration_seconds_bucket{pool=\"main\",endpoint=\""));
    assert!(text.contains("le=\"0.05\""));
    assert!(text.contains("# TYPE weir_route_duration_seconds histogram"));
    weir.shutdown().await;
}
