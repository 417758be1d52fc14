//! OTLP trace export against collector stand-ins that decode and keep what they receive
//! (OTLP/HTTP protobuf and OTLP/gRPC): the request, attempt and cache-lookup spans with
//! their parents, the trace the upstream sees, sampling, and a slow or absent collector
//! that never holds a request up.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use common::wait::eventually;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// A span as the collector got it, ids in hex.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    /// 1 internal, 2 server, 3 client.
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attributes: BTreeMap<String, String>,
    /// 2 = error.
    status: i32,
}

type Store = Arc<Mutex<Vec<Received>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn keep(store: &Store, request: ExportTraceServiceRequest) {
    let mut spans = store.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .filter_map(|kv| {
                        let value = match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(s) => s.clone(),
                            Value::IntValue(n) => n.to_string(),
                            other => format!("{other:?}"),
                        };
                        Some((kv.key.clone(), value))
                    })
                    .collect();
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_id: hex(&span.parent_span_id),
                    attributes,
                    status: span.status.map_or(0, |s| s.code),
                });
            }
        }
    }
}

/// An OTLP/HTTP collector: POST /v1/traces with a protobuf body.
async fn http_collector() -> (Upstream, Store) {
    let store = Store::default();
    let kept = Arc::clone(&store);
    let server = upstream(move |req: Request<hyper::body::Incoming>| {
        let kept = Arc::clone(&kept);
        async move {
            assert_eq!(req.uri().path(), "/v1/traces");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            keep(&kept, ExportTraceServiceRequest::decode(body).unwrap());
            Response::builder()
                .header("content-type", "application/x-protobuf")
                .body(full(ExportTraceServiceResponse::default().encode_to_vec()))
                .unwrap()
        }
    })
    .await;
    (server, store)
}

struct GrpcCollector(Store);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on a free port.
async fn grpc_collector() -> (std::net::SocketAddr, Store) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Store::default();
    let service = TraceServiceServer::new(GrpcCollector(Arc::clone(&store)));
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    (addr, store)
}

/// An upstream that answers with the `traceparent` it got, cacheable.
async fn traced_upstream() -> Upstream {
    upstream(|req: Request<hyper::body::Incoming>| async move {
        let traceparent = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Response::builder()
            .header("cache-control", "max-age=60")
            .header("x-traceparent", traceparent)
            .body(full("ok"))
            .unwrap()
    })
    .await
}

fn config(upstream: std::net::SocketAddr, dead: std::net::SocketAddr, export: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[routes]]
name = "cached"
path_prefix = "/cached"
pool = "main"

[[routes]]
name = "down"
path_prefix = "/down"
pool = "down"
cache = {{ enabled = false }}

[[routes]]
name = "api"
pool = "main"
cache = {{ enabled = false }}

[cache]
enabled = true

[pools.main]
endpoints = [{{ address = "{upstream}" }}]

[pools.down]
endpoints = [{{ address = "{dead}" }}]
retry = {{ attempts = 1 }}

[trace_export]
{export}
"#
    )
}

async fn get_with(proxy: std::net::SocketAddr, path: &str, traceparent: Option<&str>) -> Reply {
    let mut request = Request::get(format!("http://{proxy}{path}"));
    if let Some(value) = traceparent {
        request = request.header("traceparent", value);
    }
    send(&http1_client(), request.body(empty()).unwrap()).await
}

fn spans_of(store: &Store, trace_id: &str) -> Vec<Received> {
    store
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .cloned()
        .collect()
}

/// weir in front of a [`traced_upstream`] (and a pool whose only endpoint is down), with
/// `export` as its `[trace_export]` table.
struct Traced {
    weir: weir::app::Running,
    proxy: std::net::SocketAddr,
    upstream: Upstream,
}

async fn traced_weir(export: &str) -> Traced {
    let upstream = traced_upstream().await;
    let dead = closed_port().await;
    let weir = weir(&config(upstream.addr, dead, export)).await;
    let proxy = weir.listener_addr("http").unwrap();
    Traced {
        weir,
        proxy,
        upstream,
    }
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn requests_attempts_and_cache_lookups_reach_an_http_collector() {
    let (collector, store) = http_collector().await;
    let Traced {
        weir,
        proxy,
        upstream: up,
    } = traced_weir(&format!(
            "endpoint = \"http://{}/v1/traces\"\nservice_name = \"edge-test\"\nflush_interval = \"20ms\"",
            collector.addr
        )).await;

    // A cache miss under the client's (sampled) trace.
    let reply = get_with(
        proxy,
        "/cached/a",
        Some(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")),
    )
    .await;
    assert_eq!(reply.status, 200);
    let upstream_saw = reply.header("x-traceparent").unwrap().to_owned();
    eventually("the request's three spans", async || {
        spans_of(&store, CLIENT_TRACE).len() >= 3
    })
    .await;
    let spans = spans_of(&store, CLIENT_TRACE);
    let find = |kind: i32| spans.iter().find(|s| s.kind == kind).unwrap().clone();
    let server = find(2);
    assert_eq!(server.service, "edge-test");
    assert_eq!(
        server.parent_id, CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(server.name, "GET cached");
    assert_eq!(server.attributes["http.response.status_code"], "200");
    assert_eq!(server.attributes["http.route"], "cached");
    assert_eq!(server.attributes["url.path"], "/cached/a");
    let attempt = find(3);
    assert_eq!(attempt.parent_id, server.span_id);
    assert_eq!(attempt.attributes["server.address"], up.addr.to_string());
    assert_eq!(attempt.attributes["weir.attempt"], "1");
    assert_eq!(
        upstream_saw,
        format!("00-{CLIENT_TRACE}-{}-01", attempt.span_id),
        "the upstream's parent is the attempt"
    );
    let lookup = find(1);
    assert_eq!(lookup.parent_id, server.span_id);
    assert_eq!(lookup.attributes["weir.cache.result"], "miss");

    // Attempts that fail are spans in error, and so is the request they fail.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let reply = get_with(
        proxy,
        "/down",
        Some(&format!("00-{trace}-b7ad6b7169203331-01")),
    )
    .await;
    assert_eq!(reply.status, 502);
    eventually("the failed request's spans", async || {
        spans_of(&store, trace).len() >= 3
    })
    .await;
    let spans = spans_of(&store, trace);
    let attempts: Vec<_> = spans.iter().filter(|s| s.kind == 3).collect();
    assert_eq!(attempts.len(), 2, "the first try and its retry: {spans:?}");
    assert!(attempts.iter().all(|s| s.status == 2), "{attempts:?}");
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(server.status, 2);
    assert_eq!(server.attributes["http.response.status_code"], "502");

    let metrics = weir::metrics::render(weir::metrics::Sources {
        proxy: weir.state(),
        reloads_ok: 0,
        reloads_failed: 0,
        scalers: &[],
        alerting: &weir::control::AlertingStats::default(),
    });
    assert!(
        metrics.contains("weir_trace_spans_exported_total"),
        "{metrics}"
    );
    let tracer = weir.state().snapshot.load().tracer.clone().unwrap();
    // Counted when the collector's answer is back, which can be after the store above
    // has the spans.
    eventually("six spans counted as exported", async || {
        tracer.stats.exported.load(Relaxed) >= 6
    })
    .await;
    assert_eq!(tracer.stats.dropped_queue_full.load(Relaxed), 0);
}

#[tokio::test]
async fn the_sampling_ratio_applies_to_traces_weir_starts_and_the_client_decides_its_own() {
    let (collector, store) = http_collector().await;
    let Traced {
        weir: _weir,
        proxy,
        upstream: _up,
    } = traced_weir(&format!(
        "endpoint = \"http://{}/v1/traces\"\nsample_ratio = 0.0\nflush_interval = \"20ms\"",
        collector.addr
    ))
    .await;

    // Not recorded: weir's own trace at ratio 0, and a client's unsampled one.
    let own = get_with(proxy, "/", None).await;
    let unsampled_trace = "11111111111111111111111111111111";
    get_with(
        proxy,
        "/",
        Some(&format!("00-{unsampled_trace}-2222222222222222-00")),
    )
    .await;
    // Recorded: the client's sampled trace. Spans leave in order, so once it has arrived
    // the two before it would have too.
    let sampled_trace = "33333333333333333333333333333333";
    get_with(
        proxy,
        "/",
        Some(&format!("00-{sampled_trace}-4444444444444444-01")),
    )
    .await;
    eventually("the sampled trace's spans", async || {
        spans_of(&store, sampled_trace).len() >= 2
    })
    .await;
    let traces: std::collections::BTreeSet<String> = store
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.trace_id.clone())
        .collect();
    assert_eq!(
        traces,
        [sampled_trace.to_owned()].into(),
        "only the sampled trace"
    );
    // weir's own unsampled trace still propagates, marked unsampled.
    let sent = own.header("x-traceparent").unwrap();
    assert!(sent.ends_with("-00"), "{sent}");
}

#[tokio::test]
async fn spans_reach_a_grpc_collector() {
    let (collector, store) = grpc_collector().await;
    let Traced {
        weir: _weir,
        proxy,
        upstream: _up,
    } = traced_weir(&format!(
        "endpoint = \"http://{collector}\"\nprotocol = \"grpc\"\nflush_interval = \"20ms\""
    ))
    .await;
    let reply = get_with(proxy, "/", None).await;
    let trace_id = reply.header("x-traceparent").unwrap()[3..35].to_owned();
    eventually("the spans over gRPC", async || {
        spans_of(&store, &trace_id).len() >= 2
    })
    .await;
    let spans = spans_of(&store, &trace_id);
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(server.service, "weir");
    assert_eq!(server.parent_id, "", "weir started this trace");
}

#[tokio::test]
async fn a_stuck_or_absent_collector_never_holds_requests_and_drops_are_counted() {
    // Accepts connections and never answers.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((socket, _)) = stuck.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    let absent = closed_port().await;
    for (collector, expect) in [(stuck_addr, "queue_full"), (absent, "export_failed")] {
        let Traced {
            weir,
            proxy,
            upstream: _up,
        } = traced_weir(&format!(
                "endpoint = \"http://{collector}/v1/traces\"\nqueue_spans = 8\nbatch_spans = 4\nflush_interval = \"10ms\"\ntimeout = \"60s\""
            )).await;
        // Every request is answered while the collector is stuck or gone.
        for _ in 0..100 {
            assert_eq!(get_with(proxy, "/", None).await.status, 200);
        }
        let tracer = weir.state().snapshot.load().tracer.clone().unwrap();
        let stats = &tracer.stats;
        match expect {
            // 200 spans, 8 queued and one batch of 4 at the collector: the rest dropped.
            "queue_full" => assert!(
                stats.dropped_queue_full.load(Relaxed) >= 200 - 8 - 4,
                "{stats:?}"
            ),
            _ => {
                eventually("failed exports to be counted", async || {
                    stats.dropped_export_failed.load(Relaxed) > 0
                })
                .await
            }
        }
        assert_eq!(stats.exported.load(Relaxed), 0);
    }
}

#[tokio::test]
async fn shutdown_sends_the_spans_still_queued() {
    let (collector, store) = http_collector().await;
    // A batch would wait a minute: only the flush at shutdown sends it.
    let Traced {
        weir,
        proxy,
        upstream: _up,
    } = traced_weir(&format!(
        "endpoint = \"http://{}/v1/traces\"\nflush_interval = \"60s\"",
        collector.addr
    ))
    .await;
    let reply = get_with(proxy, "/", None).await;
    let trace_id = reply.header("x-traceparent").unwrap()[3..35].to_owned();
    assert!(spans_of(&store, &trace_id).is_empty(), "still queued");
    assert!(weir.shutdown().await.completed);
    assert_eq!(
        spans_of(&store, &trace_id).len(),
        2,
        "the request and its attempt, sent before shutdown returned"
    );
}
