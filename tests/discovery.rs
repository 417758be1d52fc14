//! DNS service discovery against a real DNS server whose answers change while weir runs:
//! one endpoint per record, SRV ports and weights, TTL and connection-failure re-resolution,
//! the last good set kept on failure, live state kept across answers and reloads.

mod common;

#[path = "common/dns.rs"]
mod dns_server;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use common::wait::eventually;
use common::*;
use dns_server::{DnsServer, Mode};
use http::Response;
use weir::upstream::{Endpoint, EndpointState};

fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// An upstream on `address` answering with `x-upstream: <its ip>` and the `Host` it got.
async fn upstream_named_by_ip(address: SocketAddr) -> std::io::Result<Upstream> {
    let name = address.ip().to_string();
    upstream_on(address, move |req| {
        let name = name.clone();
        let host = req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        async move {
            Response::builder()
                .header("x-upstream", name)
                .header("x-host", host)
                .body(full("ok"))
                .unwrap()
        }
    })
    .await
}

/// Upstreams on 127.0.0.1 … 127.0.0.`n`, all on one port (as instances behind one name
/// are): the port and the servers.
async fn upstreams_on_one_port(n: u8) -> (u16, Vec<Upstream>) {
    'attempt: for _ in 0..20 {
        let first = upstream_named_by_ip("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let port = first.addr.port();
        let mut servers = vec![first];
        for i in 2..=n {
            match upstream_named_by_ip(SocketAddr::new(loopback(i), port)).await {
                Ok(server) => servers.push(server),
                Err(_) => continue 'attempt,
            }
        }
        return (port, servers);
    }
    panic!("no port free on all of 127.0.0.1-{n}");
}

fn config(dns: &DnsServer, entry: &str, pool_extra: &str, dns_extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[routes]]
pool = "main"

[pools.main]
endpoints = [{entry}]
{pool_extra}

[dns]
servers = ["{}"]
min_ttl = "50ms"
{dns_extra}
"#,
        dns.addr
    )
}

/// The pool's endpoints by address.
fn endpoints(weir: &weir::app::Running) -> BTreeMap<String, Arc<Endpoint>> {
    weir.state().snapshot.load().pools["main"]
        .endpoints()
        .iter()
        .map(|e| (e.address.clone(), Arc::clone(e)))
        .collect()
}

fn addresses(weir: &weir::app::Running) -> Vec<String> {
    endpoints(weir).into_keys().collect()
}

fn source_stats(weir: &weir::app::Running) -> Arc<weir::upstream::discovery::DiscoveryStats> {
    let snapshot = weir.state().snapshot.load();
    Arc::clone(&snapshot.pools["main"].discovery()[0].stats)
}

#[tokio::test]
async fn a_name_becomes_one_endpoint_per_record_and_follows_its_changes() {
    let (port, _servers) = upstreams_on_one_port(3).await;
    let dns = DnsServer::start().await;
    dns.set_addresses("api.test", &[loopback(1), loopback(2)], 1);
    let weir = weir(&config(
        &dns,
        &format!("{{ dns = \"api.test:{port}\" }}"),
        "slow_start = \"30s\"\npreserve_host = false",
        "max_ttl = \"1s\"",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();

    // Resolved before the first request: both records, each with the pool's full share.
    let first = served_by(proxy, 20).await;
    assert_eq!(
        first,
        BTreeMap::from([("127.0.0.1".into(), 10), ("127.0.0.2".into(), 10)])
    );
    let before = endpoints(&weir);
    let staying = Arc::clone(&before[&format!("127.0.0.2:{port}")]);
    assert_eq!(
        staying.discovered_by.as_deref(),
        Some(format!("dns:api.test:{port}").as_str())
    );
    assert_eq!(staying.state(staying.now_ms()), EndpointState::Healthy);
    let reply = get(proxy, "/").await;
    assert_eq!(
        reply.header("x-host"),
        Some(format!("api.test:{port}").as_str()),
        "Host is the name, not the address"
    );

    // The records change: .1 leaves, .3 joins.
    dns.set_addresses("api.test", &[loopback(2), loopback(3)], 1);
    eventually("the pool to follow the new records", async || {
        addresses(&weir) == [format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")]
    })
    .await;
    let after = endpoints(&weir);
    assert!(
        Arc::ptr_eq(&after[&format!("127.0.0.2:{port}")], &staying),
        "an endpoint that stays keeps its live state"
    );
    assert!(staying.stats.requests.load(Relaxed) >= 10);
    let joined = &after[&format!("127.0.0.3:{port}")];
    assert_eq!(
        joined.state(joined.now_ms()),
        EndpointState::SlowStart,
        "a new address ramps up"
    );
    let later = served_by(proxy, 20).await;
    assert!(!later.contains_key("127.0.0.1"), "{later:?}");
    assert_eq!(source_stats(&weir).endpoints.load(Relaxed), 2);
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_of_the_best_priority() {
    let a = upstream_named_by_ip("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let b = upstream_named_by_ip("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let backup = upstream_named_by_ip("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dns = DnsServer::start().await;
    for target in ["a.api.test", "b.api.test", "backup.api.test"] {
        dns.set_addresses(target, &[loopback(1)], 60);
    }
    let service = "_http._tcp.api.test";
    dns.set_srv(
        service,
        &[
            (10, 3, a.addr.port(), "a.api.test"),
            (10, 1, b.addr.port(), "b.api.test"),
            (20, 1, backup.addr.port(), "backup.api.test"),
        ],
        60,
    );
    // Without glue records weir asks for each target's addresses itself.
    dns.set_glue(false);
    let weir = weir(&config(
        &dns,
        &format!("{{ srv = \"{service}\" }}"),
        "strategy = \"weighted\"\npreserve_host = false",
        "max_ttl = \"300ms\"",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();

    let found = endpoints(&weir);
    let weights: BTreeMap<String, u32> =
        found.iter().map(|(a, e)| (a.clone(), e.weight())).collect();
    assert_eq!(
        weights,
        BTreeMap::from([(a.addr.to_string(), 3), (b.addr.to_string(), 1)]),
        "priority 20 is a backup, unused while priority 10 has targets"
    );
    let mut hosts = BTreeMap::new();
    for _ in 0..400 {
        let reply = get(proxy, "/").await;
        assert_eq!(reply.status, 200);
        *hosts
            .entry(reply.header("x-host").unwrap_or("?").to_owned())
            .or_insert(0u32) += 1;
    }
    let to_a = hosts[&format!("a.api.test:{}", a.addr.port())];
    let to_b = hosts[&format!("b.api.test:{}", b.addr.port())];
    assert_eq!(to_a + to_b, 400, "{hosts:?}");
    assert!(
        (280..=320).contains(&to_a),
        "3:1 by the records' weights: {hosts:?}"
    );

    // With glue, and the best priority gone, the backup takes over.
    dns.set_glue(true);
    dns.set_srv(
        service,
        &[(20, 1, backup.addr.port(), "backup.api.test")],
        60,
    );
    eventually("the backup priority to be used", async || {
        addresses(&weir) == [backup.addr.to_string()]
    })
    .await;
}

#[tokio::test]
async fn a_failing_resolver_keeps_the_last_good_endpoints() {
    let (port, _servers) = upstreams_on_one_port(2).await;
    let dns = DnsServer::start().await;
    dns.set_addresses("api.test", &[loopback(1)], 0);
    let weir = weir(&config(
        &dns,
        &format!("{{ dns = \"api.test:{port}\" }}"),
        "",
        "max_ttl = \"200ms\"\ntimeout = \"200ms\"",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    let stats = source_stats(&weir);
    assert_eq!(stats.failures.load(Relaxed), 0);

    for mode in [Mode::Fail, Mode::NoSuchName] {
        dns.set_mode(mode);
        let failures = stats.failures.load(Relaxed);
        eventually(&format!("two failures in mode {mode:?}"), async || {
            stats.failures.load(Relaxed) >= failures + 2
        })
        .await;
        assert_eq!(addresses(&weir), [format!("127.0.0.1:{port}")], "{mode:?}");
        assert_eq!(
            served_by(proxy, 5).await,
            BTreeMap::from([("127.0.0.1".into(), 5)])
        );
        assert!(stats.last_error.lock().unwrap().is_some());
    }
    let metrics = weir::metrics::render(weir::metrics::Sources {
        proxy: weir.state(),
        reloads_ok: 0,
        reloads_failed: 0,
        scalers: &[],
        alerting: &weir::control::AlertingStats::default(),
    });
    assert!(
        metrics.lines().any(|l| l.starts_with(&format!(
            "weir_discovery_failures_total{{pool=\"main\",entry=\"dns:api.test:{port}\"}}"
        ))),
        "{metrics}"
    );

    // An answer again: applied, and the error cleared.
    dns.set_mode(Mode::Answer);
    dns.set_addresses("api.test", &[loopback(2)], 0);
    eventually("the new answer", async || {
        addresses(&weir) == [format!("127.0.0.2:{port}")]
    })
    .await;
    assert!(stats.last_error.lock().unwrap().is_none());
}

#[tokio::test]
async fn a_connection_failure_asks_again_before_the_ttl_ends() {
    let (port, mut servers) = upstreams_on_one_port(2).await;
    let dns = DnsServer::start().await;
    dns.set_addresses("api.test", &[loopback(1)], 3600);
    let weir = weir(&config(
        &dns,
        &format!("{{ dns = \"api.test:{port}\" }}"),
        "",
        "max_ttl = \"1h\"",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    assert_eq!(
        served_by(proxy, 2).await,
        BTreeMap::from([("127.0.0.1".into(), 2)])
    );

    // The instance moves: its old address stops answering, the name points elsewhere, and
    // the hour-long TTL has not run out.
    dns.set_addresses("api.test", &[loopback(2)], 3600);
    drop(servers.remove(0));
    eventually("a request served at the new address", async || {
        get(proxy, "/").await.header("x-upstream") == Some("127.0.0.2")
    })
    .await;
    assert_eq!(addresses(&weir), [format!("127.0.0.2:{port}")]);
}

#[tokio::test]
async fn a_reload_keeps_discovered_endpoints_and_their_state() {
    let (port, _servers) = upstreams_on_one_port(2).await;
    let fixed = named_upstream("fixed").await;
    let dns = DnsServer::start().await;
    dns.set_addresses("api.test", &[loopback(1), loopback(2)], 3600);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    let entry = format!("{{ dns = \"api.test:{port}\" }}");
    std::fs::write(&path, config(&dns, &entry, "", "max_ttl = \"1h\"")).unwrap();
    let weir = start_from_file(&path).await;
    let before = endpoints(&weir);
    assert_eq!(before.len(), 2);
    let queries = dns.queries();

    std::fs::write(
        &path,
        config(
            &dns,
            &entry,
            "response_timeout = \"7s\"",
            "max_ttl = \"1h\"",
        ),
    )
    .unwrap();
    let report = weir.supervisor().reload().await;
    assert!(report.ok, "{report:?}");
    let after = endpoints(&weir);
    assert_eq!(after.len(), 2);
    for (address, endpoint) in &before {
        assert!(Arc::ptr_eq(endpoint, &after[address]), "{address} kept");
    }
    assert_eq!(
        dns.queries(),
        queries,
        "the answer still holds: no new query"
    );

    // The entry gone, its endpoints go with it.
    let replaced = format!("{{ address = \"{}\" }}", fixed.addr);
    std::fs::write(&path, config(&dns, &replaced, "", "")).unwrap();
    assert!(weir.supervisor().reload().await.ok);
    assert_eq!(addresses(&weir), [fixed.addr.to_string()]);
}

#[tokio::test]
async fn a_removed_address_drains_its_requests_in_flight() {
    // An instance that holds its requests until told.
    let release = Arc::new(tokio::sync::Notify::new());
    let held = Arc::clone(&release);
    let slow = upstream_on(SocketAddr::new(loopback(3), 0), move |_req| {
        let held = Arc::clone(&held);
        async move {
            held.notified().await;
            Response::builder().body(full("late")).unwrap()
        }
    })
    .await
    .unwrap();
    let slow_port = slow.addr.port();
    let dns = DnsServer::start().await;
    dns.set_addresses("api.test", &[loopback(3)], 0);
    let weir = weir(&config(
        &dns,
        &format!("{{ dns = \"api.test:{slow_port}\" }}"),
        "",
        "max_ttl = \"100ms\"",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    let in_flight = tokio::spawn(async move { get(proxy, "/").await });
    let draining = Arc::clone(&endpoints(&weir)[&format!("127.0.0.3:{slow_port}")]);
    eventually("the request to be in flight", async || {
        draining.in_flight() == 1
    })
    .await;

    // The name now points elsewhere (a port nothing answers on: only removal matters).
    dns.set_addresses("api.test", &[loopback(4)], 0);
    eventually("the address to leave the pool", async || {
        !addresses(&weir).contains(&format!("127.0.0.3:{slow_port}"))
    })
    .await;
    assert_eq!(draining.in_flight(), 1, "its request is still running");
    assert_eq!(draining.state(draining.now_ms()), EndpointState::Draining);
    // notify_one keeps a permit if the handler is not waiting yet.
    release.notify_one();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "late", "answered by the drained endpoint");
    assert_eq!(draining.in_flight(), 0);
}

#[tokio::test]
async fn a_silent_resolver_at_startup_leaves_the_pool_empty_until_dns_answers() {
    let (port, _servers) = upstreams_on_one_port(1).await;
    let dns = DnsServer::start().await;
    dns.set_addresses("api.test", &[loopback(1)], 0);
    dns.set_mode(Mode::Silent);
    // Startup waits at most twice the query timeout for the first answers.
    let weir = weir(&config(
        &dns,
        &format!("{{ dns = \"api.test:{port}\" }}"),
        "",
        "timeout = \"100ms\"\nmax_ttl = \"200ms\"",
    ))
    .await;
    let proxy = weir.listener_addr("http").unwrap();
    assert!(addresses(&weir).is_empty());
    assert_eq!(get(proxy, "/").await.status, 503, "no endpoint yet");

    dns.set_mode(Mode::Answer);
    eventually("the endpoint once DNS answers", async || {
        get(proxy, "/").await.status == 200
    })
    .await;
    assert_eq!(addresses(&weir), [format!("127.0.0.1:{port}")]);
}
