//! gRPC through weir: a tonic client in front, a tonic server behind (h2c), every call
//! kind, trailers and statuses, deadlines, weir's own errors, retries, health checks.

mod common;
#[path = "common/grpc.rs"]
mod grpc_harness;

use std::time::Duration;

use common::*;
use grpc_harness::*;
use tokio_stream::StreamExt;
use tonic::{Code, Request};

fn grpc_config(upstreams: &[std::net::SocketAddr], pool_extra: &str) -> String {
    simple_config(upstreams, &format!("protocol = \"h2c\"\n{pool_extra}"))
}

#[tokio::test]
async fn unary_calls_pass_with_metadata_and_te_trailers() {
    let up = grpc_upstream("a").await;
    let weir = weir(&grpc_config(&[up.addr], "")).await;
    let mut client = EchoClient::connect(weir.listener_addr("http").unwrap()).await;
    let mut request = Request::new(echo("hello"));
    request
        .metadata_mut()
        .insert("x-meta", "42".parse().unwrap());
    let response = client.unary(request).await.expect("the call succeeds");
    assert_eq!(response.get_ref().text, "a: hello");
    assert_eq!(
        response.metadata().get("x-meta-echo").unwrap(),
        "42",
        "request and response metadata pass"
    );
    assert_eq!(*up.stats.te.lock().unwrap(), ["trailers"]);
}

#[tokio::test]
async fn every_call_kind_streams_through_with_megabyte_messages() {
    let up = grpc_upstream("a").await;
    let weir = weir(&grpc_config(&[up.addr], "")).await;
    let mut client = EchoClient::connect(weir.listener_addr("http").unwrap()).await;
    let mib = vec![7u8; 1 << 20];

    // Unary, 1 MiB each way.
    let reply = client
        .unary(Request::new(Echo {
            payload: mib.clone(),
            ..echo("big")
        }))
        .await
        .expect("unary");
    assert_eq!(reply.get_ref().payload.len(), 1 << 20);

    // Server streaming: five 1 MiB replies.
    let mut stream = client
        .server_stream(Request::new(Echo {
            payload: mib.clone(),
            count: 5,
            ..echo("s")
        }))
        .await
        .expect("server streaming")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(message) = stream.next().await {
        let message = message.expect("a message");
        assert_eq!(message.payload.len(), 1 << 20);
        seen.push(message.text);
    }
    assert_eq!(seen, ["#0", "#1", "#2", "#3", "#4"]);

    // Client streaming: four 1 MiB messages in, one summary out.
    let upload = tokio_stream::iter((0..4).map({
        let mib = mib.clone();
        move |_| Echo {
            payload: mib.clone(),
            ..Echo::default()
        }
    }));
    let summary = client
        .client_stream(upload)
        .await
        .expect("client streaming");
    assert_eq!(summary.get_ref().text, "4 messages, 4194304 bytes");

    // Bidirectional: each reply arrives before the next message is sent, so nothing on
    // the way holds the stream back until it ends.
    let (tx, rx) = tokio::sync::mpsc::channel::<Echo>(1);
    let mut replies = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("bidi")
        .into_inner();
    for i in 0..5 {
        tx.send(Echo {
            payload: mib[..1000 * (i + 1)].to_vec(),
            ..echo(&format!("{i}"))
        })
        .await
        .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .expect("the reply comes while the stream is open")
            .expect("a reply")
            .expect("not an error");
        assert_eq!(reply.text, format!("echo {i}"));
        assert_eq!(reply.payload.len(), 1000 * (i + 1));
    }
    drop(tx);
    assert!(replies.next().await.is_none(), "the stream ends with OK");
}

#[tokio::test]
async fn error_statuses_keep_message_details_and_trailing_metadata() {
    let up = grpc_upstream("a").await;
    let weir = weir(&grpc_config(&[up.addr], "")).await;
    let mut client = EchoClient::connect(weir.listener_addr("http").unwrap()).await;
    let status = client
        .unary(Request::new(Echo {
            fail_code: Code::FailedPrecondition as i32,
            ..echo("not yet: ünïcode ok")
        }))
        .await
        .expect_err("the handler fails");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "not yet: ünïcode ok");
    assert_eq!(status.details(), b"\x08\x2a detail bytes");
    assert_eq!(status.metadata().get("x-trailer").unwrap(), "kept");
}

#[tokio::test]
async fn two_hundred_concurrent_calls_share_one_connection() {
    let up = grpc_upstream("a").await;
    let weir = weir(&grpc_config(&[up.addr], "")).await;
    let client = EchoClient::connect(weir.listener_addr("http").unwrap()).await;
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .unary(Request::new(Echo {
                        delay_ms: 50,
                        ..echo(&format!("{i}"))
                    }))
                    .await
                    .map(|r| r.into_inner().text)
            })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(
            call.await.unwrap().expect("each call succeeds"),
            format!("a: {i}")
        );
    }
    assert_eq!(
        weir.state()
            .stats
            .connections_accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// One listener, a route for `/test.Echo/` only (with `route_extra`) to a pool of
/// `upstreams` speaking h2c (with `pool_extra`).
fn echo_route_config(
    upstreams: &[std::net::SocketAddr],
    route_extra: &str,
    pool_extra: &str,
) -> String {
    let endpoints: Vec<String> = upstreams
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n\
         [[routes]]\npath_prefix = \"/test.Echo/\"\npool = \"main\"\n{route_extra}\n\
         [pools.main]\nprotocol = \"h2c\"\nendpoints = [{}]\n{pool_extra}\n",
        endpoints.join(", ")
    )
}

#[tokio::test]
async fn weirs_own_errors_are_grpc_statuses() {
    let up = grpc_upstream("a").await;
    let down = closed_port().await;

    // No route: the health service's path is not routed.
    let weir_a = weir(&echo_route_config(&[up.addr], "", "")).await;
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        weir_a.listener_addr("http").unwrap()
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("no route");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(status.message(), "no route for this host and path");

    // Upstream down (connect refused, retries exhausted).
    let weir_b = weir(&echo_route_config(&[down], "", "")).await;
    let mut client = EchoClient::connect(weir_b.listener_addr("http").unwrap()).await;
    let status = client
        .unary(Request::new(echo("x")))
        .await
        .expect_err("down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "upstream connect failed");

    // Rate limited.
    let weir_c = weir(&echo_route_config(
        &[up.addr],
        "rate_limit = { requests_per_second = 1, burst = 1 }",
        "",
    ))
    .await;
    let mut client = EchoClient::connect(weir_c.listener_addr("http").unwrap()).await;
    client
        .unary(Request::new(echo("first")))
        .await
        .expect("within the limit");
    let status = client
        .unary(Request::new(echo("second")))
        .await
        .expect_err("limited");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "rate limit exceeded");
}

#[tokio::test]
async fn a_deadline_shorter_than_the_handler_is_deadline_exceeded_from_weir() {
    // A handler that ignores the deadline, and a raw HTTP/2 client: tonic's client and
    // server each enforce `grpc-timeout` themselves, which would race weir's timer.
    let told = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = told.clone();
    let slow = upstream(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            *seen.lock().unwrap() = req.headers()["grpc-timeout"].to_str().unwrap().to_owned();
            // Never answers: only weir's timer can end the call.
            std::future::pending::<()>().await;
            http::Response::new(full("late"))
        }
    })
    .await;
    let weir = weir(&grpc_config(&[slow.addr], "response_timeout = \"30s\"")).await;
    let request = http::Request::post(format!(
        "http://{}/test.Echo/Unary",
        weir.listener_addr("http").unwrap()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", "200m")
    .body(full(&b"\0\0\0\0\0"[..]))
    .unwrap();
    let started = std::time::Instant::now();
    let reply = send(&h2c_client(), request).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "weir answered at the deadline, not after the handler: {:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, 200, "a gRPC status, not an HTTP 504");
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(reply.header("grpc-status"), Some("4"), "DEADLINE_EXCEEDED");
    assert_eq!(reply.header("grpc-message"), Some("deadline exceeded"));
    // The upstream was told what was left of the 200 ms, in milliseconds.
    let told = told.lock().unwrap().clone();
    let millis: u64 = told.strip_suffix('m').unwrap().parse().unwrap();
    assert!((1..=200).contains(&millis), "grpc-timeout upstream: {told}");
    // The endpoint is not blamed for the caller's deadline.
    let snapshot = weir.state().snapshot.load();
    let endpoint = &snapshot.pools["main"].endpoints()[0];
    assert_eq!(
        endpoint
            .stats
            .timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // tonic's client sees the same status when its own timer is not first.
    let up = grpc_upstream("a").await;
    let weir = weir_with(&grpc_config(&[up.addr], "")).await;
    let mut client = EchoClient::connect(weir.listener_addr("http").unwrap()).await;
    let mut request = Request::new(echo("quick"));
    request.set_timeout(Duration::from_secs(5));
    client
        .unary(request)
        .await
        .expect("well within its deadline");
}

#[tokio::test]
async fn unavailable_is_retried_on_another_endpoint() {
    let first = grpc_upstream("first").await;
    let second = grpc_upstream("second").await;
    first
        .unavailable
        .store(1_000, std::sync::atomic::Ordering::SeqCst);
    let weir = weir(&grpc_config(&[first.addr, second.addr], "")).await;
    let mut client = EchoClient::connect(weir.listener_addr("http").unwrap()).await;
    for i in 0..6 {
        let reply = client
            .unary(Request::new(Echo {
                payload: vec![1; 10_000],
                ..echo(&format!("{i}"))
            }))
            .await
            .expect("retried on the healthy endpoint");
        assert_eq!(reply.get_ref().text, format!("second: {i}"));
        assert_eq!(
            reply.get_ref().payload.len(),
            10_000,
            "the body was sent again whole"
        );
    }
    assert_eq!(
        second.stats.calls.load(std::sync::atomic::Ordering::SeqCst),
        6
    );
    assert!(first.stats.calls.load(std::sync::atomic::Ordering::SeqCst) >= 3);

    // Without gRPC statuses to retry, UNAVAILABLE reaches the client.
    let strict = weir_with(&grpc_config(
        &[first.addr],
        "retry = { grpc_statuses = [] }",
    ))
    .await;
    let mut client = EchoClient::connect(strict.listener_addr("http").unwrap()).await;
    let status = client
        .unary(Request::new(echo("x")))
        .await
        .expect_err("not retried");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "warming up");
}

async fn weir_with(config: &str) -> weir::app::Running {
    weir(config).await
}

#[tokio::test]
async fn grpc_health_checks_follow_the_standard_health_service() {
    let a = grpc_upstream("a").await;
    let mut b = grpc_upstream("b").await;
    let weir = weir(&grpc_config(
        &[a.addr, b.addr],
        "health_check = { grpc_service = \"test.Echo\", interval = \"50ms\", rise = 1, fall = 1 }",
    ))
    .await;
    let snapshot = weir.state().snapshot.load_full();
    let endpoints = snapshot.pools["main"].endpoints().clone();
    let healthy = |i: usize| endpoints[i].is_healthy_by_checks();
    wait::eventually("both SERVING", async || healthy(0) && healthy(1)).await;

    a.health
        .set_service_status("test.Echo", tonic_health::ServingStatus::NotServing)
        .await;
    wait::eventually("a NOT_SERVING is taken out", async || {
        !healthy(0) && healthy(1)
    })
    .await;
    assert!(
        endpoints[0]
            .last_transition()
            .reason
            .contains("NOT_SERVING"),
        "{}",
        endpoints[0].last_transition().reason
    );
    let mut client = EchoClient::connect(weir.listener_addr("http").unwrap()).await;
    for i in 0..4 {
        let reply = client
            .unary(Request::new(echo(&format!("{i}"))))
            .await
            .unwrap();
        assert_eq!(reply.get_ref().text, format!("b: {i}"));
    }

    a.health
        .set_service_status("test.Echo", tonic_health::ServingStatus::Serving)
        .await;
    wait::eventually("a SERVING again", async || healthy(0)).await;

    // An unknown service is NOT_FOUND from the health service: a failed check.
    b.health.clear_service_status("test.Echo").await;
    wait::eventually("b's unknown service fails", async || !healthy(1)).await;
    assert!(
        endpoints[1]
            .last_transition()
            .reason
            .contains("grpc-status 5"),
        "{}",
        endpoints[1].last_transition().reason
    );
    a.stop();
}

#[test]
fn grpc_health_checks_need_http2() {
    let err = weir::config::load_str(
        &simple_config(
            &["127.0.0.1:9".parse().unwrap()],
            "health_check = { grpc_service = \"\" }",
        ),
        std::path::Path::new("w.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("pools.main.health_check.grpc_service: gRPC health checks need protocol"),
        "{err}"
    );
}

#[tokio::test]
async fn metrics_and_the_access_log_show_the_grpc_status() {
    let up = grpc_upstream("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        grpc_config(&[up.addr], "")
            + "\n[server]\naccess_log = true\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"grpc-test-token-0123456789\"\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(event);
            }
        }
    });
    let (mut proxy, mut admin) = (None, None);
    while proxy.is_none() || admin.is_none() {
        let event = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let address = event["address"]
            .as_str()
            .map(|a| a.parse::<std::net::SocketAddr>().unwrap());
        match event["message"].as_str() {
            Some("listening") => proxy = address,
            Some("admin listening") => admin = address,
            _ => {}
        }
    }
    let mut client = EchoClient::connect(proxy.unwrap()).await;
    client.unary(Request::new(echo("fine"))).await.unwrap();
    client
        .unary(Request::new(Echo {
            fail_code: Code::FailedPrecondition as i32,
            ..echo("no")
        }))
        .await
        .unwrap_err();
    let mut stream = client
        .server_stream(Request::new(Echo {
            count: 3,
            ..echo("s")
        }))
        .await
        .unwrap()
        .into_inner();
    while stream.next().await.is_some() {}

    let mut lines = Vec::new();
    while lines.len() < 3 {
        let event = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        if event["message"] == "access" {
            lines.push(event);
        }
    }
    let statuses: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap(),
                l["grpc_status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("/test.Echo/Unary", "0"),
            ("/test.Echo/Unary", "9"),
            ("/test.Echo/ServerStream", "0")
        ]
    );

    let metrics = admin_get(admin.unwrap(), "/metrics", "grpc-test-token-0123456789")
        .await
        .text();
    for expected in [
        "weir_route_grpc_calls_total{route=\"routes[0]\",pool=\"main\",code=\"OK\"} 2",
        "weir_route_grpc_calls_total{route=\"routes[0]\",pool=\"main\",code=\"FAILED_PRECONDITION\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == expected),
            "missing {expected}:\n{metrics}"
        );
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    // Waited for off the runtime: the client's connection task must stay live to answer
    // the drain's GOAWAY ping, or the drain waits for its deadline.
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    drop((client, stream));
}

#[tokio::test]
async fn grpc_to_an_upstream_over_tls() {
    let ca = common::tls::ca();
    let dir = tempfile::tempdir().unwrap();
    let server = common::tls::upstream_server_config(&ca, dir.path(), "backend.test", &[b"h2"]);
    let up = grpc_tls_upstream("tls", server).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let weir = weir(&simple_config(
        &[up],
        &format!(
            "protocol = \"h2\"\ntls = {{ ca_file = {:?}, server_name = \"backend.test\" }}",
            ca_file.display().to_string()
        ),
    ))
    .await;
    let mut client = EchoClient::connect(weir.listener_addr("http").unwrap()).await;
    let reply = client.unary(Request::new(echo("secure"))).await.unwrap();
    assert_eq!(reply.get_ref().text, "tls: secure");
    let status = client
        .unary(Request::new(Echo {
            fail_code: Code::NotFound as i32,
            ..echo("gone")
        }))
        .await
        .unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::NotFound, "gone"));
    let upload = tokio_stream::iter((0..3).map(|_| Echo {
        payload: vec![0; 100_000],
        ..Echo::default()
    }));
    let summary = client.client_stream(upload).await.unwrap();
    assert_eq!(summary.get_ref().text, "3 messages, 300000 bytes");
}

#[tokio::test]
async fn request_trailers_reach_the_upstream() {
    let up = upstream(|req: http::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let collected = req.into_body().collect().await.unwrap();
        let trailer = collected
            .trailers()
            .and_then(|t| t.get("x-checksum"))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = collected.to_bytes();
        http::Response::builder()
            .header("x-got-trailer", trailer)
            .header("x-got-bytes", body.len())
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let weir = weir(&grpc_config(&[up.addr], "")).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let frames = tokio_stream::iter(vec![
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from_static(
            b"payload",
        ))),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frames));
    let request = http::Request::post(format!(
        "http://{}/upload",
        weir.listener_addr("http").unwrap()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(body)
    .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.headers()["x-got-trailer"], "abc123");
    assert_eq!(response.headers()["x-got-bytes"], "7");
}

#[tokio::test]
async fn a_stream_does_not_outlive_its_deadline() {
    let up = grpc_upstream("a").await;
    let weir = weir(&grpc_config(&[up.addr], "")).await;
    let mut client = EchoClient::connect(weir.listener_addr("http").unwrap()).await;
    let mut request = Request::new(Echo {
        count: 20,
        delay_ms: 100,
        ..echo("tick")
    });
    request.set_timeout(Duration::from_millis(350));
    let started = std::time::Instant::now();
    let mut stream = client.server_stream(request).await.unwrap().into_inner();
    let mut received = 0;
    let status = loop {
        match stream.next().await {
            Some(Ok(_)) => received += 1,
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status after {received} messages"),
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "deadline exceeded");
    assert!(
        (2..=5).contains(&received),
        "{received} messages before the deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let snapshot = weir.state().snapshot.load();
    let route = &snapshot.router.routes()[0];
    wait::eventually("the call counted as DEADLINE_EXCEEDED", async || {
        route.stats.grpc[4].load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
}
