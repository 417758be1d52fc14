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
