//! A real gRPC service for tests: tonic over h2c on 127.0.0.1:0, with the standard health
//! service beside it. The echo service is wired by hand (as tonic's generated code is),
//! so no protoc is needed; its messages are prost structs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio_stream::{Stream, StreamExt};
use tonic::codec::Streaming;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

/// The one message of the echo service, both ways.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Echo {
    #[prost(bytes = "vec", tag = "1")]
    pub payload: Vec<u8>,
    #[prost(string, tag = "2")]
    pub text: String,
    /// The handler waits this long before it answers.
    #[prost(uint32, tag = "3")]
    pub delay_ms: u32,
    /// Non-zero: the handler fails with this gRPC code, `text` as message.
    #[prost(int32, tag = "4")]
    pub fail_code: i32,
    /// Server streaming: how many replies.
    #[prost(uint32, tag = "5")]
    pub count: u32,
}

/// Largest message either side takes (1 MiB messages and then some).
const MAX_MESSAGE: usize = 8 << 20;

/// What the upstream counts, shared with the test.
#[derive(Debug, Default)]
pub struct EchoStats {
    /// Calls of any kind that reached a handler.
    pub calls: AtomicUsize,
    /// `te` header values seen on requests ("" when none).
    pub te: std::sync::Mutex<Vec<String>>,
}

#[derive(Clone)]
struct EchoServer {
    name: &'static str,
    stats: Arc<EchoStats>,
    /// Unary calls fail with UNAVAILABLE while this is above zero (it counts down).
    unavailable: Arc<AtomicUsize>,
}

impl NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type EchoStream = Pin<Box<dyn Stream<Item = Result<Echo, Status>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        this.stats.calls.fetch_add(1, SeqCst);
        let te = request
            .headers()
            .get("te")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        this.stats.te.lock().unwrap().push(te);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Echo, Echo>::default())
                .apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE));
            let response = match request.uri().path() {
                "/test.Echo/Unary" => {
                    let handler = tower::service_fn(move |r| this.clone().unary(r));
                    grpc.unary(handler, request).await
                }
                "/test.Echo/ServerStream" => {
                    let handler = tower::service_fn(server_stream);
                    grpc.server_streaming(handler, request).await
                }
                "/test.Echo/ClientStream" => {
                    let handler = tower::service_fn(client_stream);
                    grpc.client_streaming(handler, request).await
                }
                "/test.Echo/Bidi" => {
                    let handler = tower::service_fn(bidi);
                    grpc.streaming(handler, request).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

impl EchoServer {
    async fn unary(self, request: Request<Echo>) -> Result<Response<Echo>, Status> {
        let forwarded_meta = request.metadata().get("x-meta").cloned();
        let message = request.into_inner();
        if message.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(message.delay_ms))).await;
        }
        if self
            .unavailable
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("warming up"));
        }
        if message.fail_code != 0 {
            let mut status = Status::with_details(
                Code::from(message.fail_code),
                message.text.clone(),
                Bytes::from_static(b"\x08\x2a detail bytes"),
            );
            status
                .metadata_mut()
                .insert("x-trailer", MetadataValue::from_static("kept"));
            return Err(status);
        }
        let mut response = Response::new(Echo {
            text: format!("{}: {}", self.name, message.text),
            ..message
        });
        if let Some(meta) = forwarded_meta {
            response.metadata_mut().insert("x-meta-echo", meta);
        }
        Ok(response)
    }
}

async fn server_stream(request: Request<Echo>) -> Result<Response<EchoStream>, Status> {
    let message = request.into_inner();
    let count = message.count;
    // `delay_ms` apart, the first at once.
    let pause = Duration::from_millis(u64::from(message.delay_ms));
    let stream = tokio_stream::iter(0..count).then(move |i| {
        let reply = Echo {
            text: format!("#{i}"),
            ..message.clone()
        };
        async move {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            Ok(reply)
        }
    });
    Ok(Response::new(Box::pin(stream)))
}

async fn client_stream(request: Request<Streaming<Echo>>) -> Result<Response<Echo>, Status> {
    let mut stream = request.into_inner();
    let (mut messages, mut bytes) = (0usize, 0usize);
    while let Some(message) = stream.next().await {
        let message = message?;
        messages += 1;
        bytes += message.payload.len();
    }
    Ok(Response::new(Echo {
        text: format!("{messages} messages, {bytes} bytes"),
        ..Echo::default()
    }))
}

async fn bidi(request: Request<Streaming<Echo>>) -> Result<Response<EchoStream>, Status> {
    let stream = request.into_inner().map(|message| {
        message.map(|m| Echo {
            text: format!("echo {}", m.text),
            ..m
        })
    });
    Ok(Response::new(Box::pin(stream)))
}

/// A running gRPC upstream.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    pub stats: Arc<EchoStats>,
    /// The next this-many unary calls fail with UNAVAILABLE.
    pub unavailable: Arc<AtomicUsize>,
    /// The standard health service's statuses (`grpc.health.v1.Health`).
    pub health: tonic_health::server::HealthReporter,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl GrpcUpstream {
    /// Stops serving (and closes the listener).
    pub fn stop(self) {
        let _ = self.stop.send(());
    }
}

/// Starts the echo and health services on h2c; answers from it name `name`.
pub async fn grpc_upstream(name: &'static str) -> GrpcUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(EchoStats::default());
    let unavailable = Arc::new(AtomicUsize::new(0));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EchoServer>().await;
    let echo = EchoServer {
        name,
        stats: Arc::clone(&stats),
        unavailable: Arc::clone(&unavailable),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(echo)
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
    });
    GrpcUpstream {
        addr,
        stats,
        unavailable,
        health,
        stop,
    }
}

/// The echo service over TLS (HTTP/2 by ALPN) with `tls`, for `protocol = "h2"` pools.
pub async fn grpc_tls_upstream(name: &'static str, tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = EchoServer {
        name,
        stats: Arc::default(),
        unavailable: Arc::default(),
    };
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, echo) = (acceptor.clone(), echo.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = tower::ServiceBuilder::new()
                    .map_request(|r: http::Request<hyper::body::Incoming>| {
                        r.map(tonic::body::Body::new)
                    })
                    .service(echo);
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper_util::service::TowerToHyperService::new(service),
                        )
                        .await;
            });
        }
    });
    addr
}

/// A client of the echo service through `addr` (weir's listener), on one HTTP/2
/// connection (h2c, prior knowledge).
#[derive(Clone)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Self { grpc }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))
    }

    pub async fn unary(&mut self, request: Request<Echo>) -> Result<Response<Echo>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/Unary");
        self.grpc.unary(request, path, ProstCodec::default()).await
    }

    pub async fn server_stream(
        &mut self,
        request: Request<Echo>,
    ) -> Result<Response<Streaming<Echo>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/ServerStream");
        self.grpc
            .server_streaming(request, path, ProstCodec::default())
            .await
    }

    pub async fn client_stream(
        &mut self,
        messages: impl Stream<Item = Echo> + Send + 'static,
    ) -> Result<Response<Echo>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/ClientStream");
        self.grpc
            .client_streaming(Request::new(messages), path, ProstCodec::default())
            .await
    }

    pub async fn bidi(
        &mut self,
        messages: impl Stream<Item = Echo> + Send + 'static,
    ) -> Result<Response<Streaming<Echo>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static("/test.Echo/Bidi");
        self.grpc
            .streaming(Request::new(messages), path, ProstCodec::default())
            .await
    }
}

/// An echo request with `text`.
pub fn echo(text: &str) -> Echo {
    Echo {
        text: text.to_owned(),
        ..Echo::default()
    }
}
