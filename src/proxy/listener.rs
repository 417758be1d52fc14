//! Accept loop and per-connection serving: connection limit, HTTP/1.1 + h2c, header and
//! idle timeouts, graceful drain.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;

use super::ProxyState;
use super::body::BodyPace;
use super::client_address::read_proxy_header;
use super::conn::{Closing, ConnActivity};
use super::protocol::{Builders, Protocol, ServerConnection};
use super::service::{ListenerShared, ProxyService};
use super::serving::{ConnectionTask, Driven, Handler, HyperConnection, Opening, Serving};
use super::sweeper::Sweeper;
use crate::config::IpBlock;

/// Settings of one listener, fixed while it runs.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub name: String,
    /// `max_connections` permits, shared by the listener's sockets on every runtime.
    pub connection_limit: Arc<Semaphore>,
    /// The serving runtime this socket accepts on (its index, for the counters).
    pub runtime: usize,
    pub request_header_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub max_request_header_bytes: usize,
    pub max_request_headers: usize,
    pub body_pace: BodyPace,
    /// TLS termination; swapped in place when a reload brings new certificates.
    pub tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// Each connection starts with a PROXY protocol header naming the client.
    pub proxy_protocol: bool,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<[IpBlock]>,
    /// The header that tells upstreams of a verified client certificate (mutual TLS).
    pub client_cert_header: Option<http::HeaderName>,
}

/// How a running listener is told to stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Stop accepting and let connections finish their requests.
    pub drain: CancellationToken,
    /// Drop whatever is still open (the drain deadline passed).
    pub abort: CancellationToken,
}

/// Accepts until `shutdown.drain` fires; each connection runs as a task on `tracker`.
/// The loop also watches the connections it accepted (idle timeout, drain, abort) and
/// returns once they have all ended or the drain deadline has passed.
pub async fn serve(
    listener: TcpListener,
    settings: ListenerSettings,
    state: Arc<ProxyState>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) {
    let limit = Arc::clone(&settings.connection_limit);
    let builders = Arc::new(Builders::new(&settings));
    let proto = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let shared = Arc::new(ListenerShared {
        proto,
        trusted_proxies: Arc::clone(&settings.trusted_proxies),
        body_pace: settings.body_pace,
        tunnels: Some((tracker.clone(), shutdown.abort.clone())),
    });
    let mut sweeper = Sweeper::new(settings.client_idle_timeout);
    // This loop's own connections (also on `tracker`), so that it knows when they are
    // all gone after a drain.
    let connections = TaskTracker::new();
    let mut sweeps = tokio::time::interval(sweeper.period());
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.drain.cancelled() => break,
            _ = sweeps.tick() => {
                sweeper.tick();
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Usually EMFILE/ENFILE: back off instead of spinning on the error.
                tracing::warn!(listener = %settings.name, error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        state.stats.connections_accepted.fetch_add(1, Relaxed);
        let slot = settings.runtime.min(super::stats::COUNTED_RUNTIMES - 1);
        state.stats.connections_by_runtime[slot].fetch_add(1, Relaxed);
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            state.stats.connections_refused.fetch_add(1, Relaxed);
            tracker.spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Where the client reached weir: the destination a PROXY header sent upstream names.
        let local = stream.local_addr().unwrap_or(peer);
        let activity = Arc::new(ConnActivity::new(peer, local));
        sweeper.watch(Arc::clone(&activity));
        let connection = Connection {
            activity,
            state: Arc::clone(&state),
            builders: Arc::clone(&builders),
            listener: Arc::clone(&shared),
            shutdown: shutdown.clone(),
            peer,
            client_cert_header: settings.client_cert_header.clone(),
        };
        let open_settings = OpenSettings {
            tls: settings.tls.clone(),
            handshake_timeout: settings.request_header_timeout,
            proxy_protocol: settings.proxy_protocol.then(|| settings.name.clone()),
        };
        // Opening (PROXY header, protocol sniff, TLS handshake) is boxed and freed once
        // the connection is open: the task itself holds only what serving needs (see
        // `serving`), which is what an idle connection costs.
        let opening: Opening = Box::pin(connection.open(stream, open_settings));
        tracker.spawn(connections.track_future(ConnectionTask::new(
            opening,
            permit,
            Arc::clone(&state),
        )));
    }
    // No more accepting. The connections finish their requests, or are cut when the
    // drain deadline passes.
    drop(listener);
    connections.close();
    sweeper.close_all(Closing::Gracefully);
    tokio::select! {
        _ = connections.wait() => {}
        _ = shutdown.abort.cancelled() => sweeper.close_all(Closing::Now),
    }
}

/// What one accepted connection needs to be served.
struct Connection {
    /// Its requests, and the accept loop's requests to close it.
    activity: Arc<ConnActivity>,
    state: Arc<ProxyState>,
    builders: Arc<Builders>,
    /// What the listener's request services share (its scheme, trusted proxies, body
    /// pace, where tunnels run).
    listener: Arc<ListenerShared>,
    shutdown: Shutdown,
    /// The client: the TCP peer, or the source its PROXY header names.
    peer: std::net::SocketAddr,
    client_cert_header: Option<http::HeaderName>,
}

impl Connection {
    /// Reads the connection's PROXY header (bounded by `timeout`) and takes the client
    /// address from it; `false` (the connection is to be closed) when there is none.
    async fn read_proxy_header(
        &mut self,
        stream: &mut TcpStream,
        listener: &str,
        timeout: Duration,
    ) -> bool {
        let read = tokio::select! {
            read = tokio::time::timeout(timeout, read_proxy_header(stream)) => read,
            _ = self.shutdown.abort.cancelled() => return false,
        };
        match read {
            Ok(Ok(Some(source))) => {
                self.peer = source;
                self.activity.set_client(source);
                true
            }
            // LOCAL or UNKNOWN: the balancer's own connection (a health check).
            Ok(Ok(None)) => true,
            Ok(Err(error)) => {
                self.state.stats.proxy_header_refused.fetch_add(1, Relaxed);
                tracing::warn!(listener, peer = %self.peer, %error, "PROXY protocol header refused; connection closed");
                false
            }
            Err(_) => {
                self.state.stats.proxy_header_refused.fetch_add(1, Relaxed);
                tracing::warn!(listener, peer = %self.peer, "no PROXY protocol header within the header timeout; connection closed");
                false
            }
        }
    }

    /// Opens the connection: its PROXY header when the listener expects one, then the
    /// protocol (plain) or the TLS handshake, each bounded by the header timeout. `None`
    /// when it is to be closed instead.
    async fn open(mut self, mut stream: TcpStream, opening: OpenSettings) -> Option<Serving> {
        let timeout = opening.handshake_timeout;
        if let Some(listener) = &opening.proxy_protocol
            && !self.read_proxy_header(&mut stream, listener, timeout).await
        {
            return None;
        }
        match &opening.tls {
            None => self.open_plain(stream, timeout).await,
            // Boxed: the TLS state machine is several times the plain one's size, and
            // every plain connection's opening would otherwise be allocated at that size.
            Some(tls) => Box::pin(self.open_tls(stream, tls, timeout)).await,
        }
    }

    /// Tells HTTP/1.1 from HTTP/2 by the first bytes (bounded by `sniff_timeout`).
    async fn open_plain(self, stream: TcpStream, sniff_timeout: Duration) -> Option<Serving> {
        let protocol = tokio::select! {
            protocol = Protocol::sniff(&stream, sniff_timeout) => protocol,
            _ = self.shutdown.abort.cancelled() => None,
        };
        let Some(protocol) = protocol else {
            tracing::debug!(
                peer = %self.peer,
                "closed before its HTTP version was seen (header timeout, error or shutdown)"
            );
            return None;
        };
        let io = TokioIo::new(stream);
        let service = self.service(None);
        if self.state.snapshot.load().compression {
            return Some(self.serving_compressed(io, service, protocol));
        }
        let conn = self.connection(io, Handler(service), protocol);
        Some(Serving::Plain(Driven::new(conn, self.activity)))
    }

    /// Completes the TLS handshake (bounded by `handshake_timeout`).
    async fn open_tls(
        self,
        stream: TcpStream,
        tls: &ArcSwap<rustls::ServerConfig>,
        handshake_timeout: Duration,
    ) -> Option<Serving> {
        let peer = self.peer;
        let acceptor = TlsAcceptor::from(tls.load_full());
        let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
        let accepted = tokio::select! {
            result = handshake => result,
            _ = self.shutdown.abort.cancelled() => Ok(Err(std::io::ErrorKind::Interrupted.into())),
        };
        let stream = match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return None;
            }
        };
        let session = stream.get_ref().1;
        let protocol = Protocol::from_alpn(session.alpn_protocol());
        // Verified by the handshake; described once for the connection's requests.
        let client_cert = self.client_cert_header.clone().and_then(|name| {
            let der = session.peer_certificates()?.first()?;
            let value = crate::tls::describe_client_certificate(der);
            Some(Arc::new((name, http::HeaderValue::try_from(value).ok()?)))
        });
        let io = TokioIo::new(stream);
        let service = self.service(client_cert);
        if self.state.snapshot.load().compression {
            return Some(self.serving_compressed(io, service, protocol));
        }
        let conn = self.connection(io, Handler(service), protocol);
        Some(Serving::Other(Box::pin(Driven::new(conn, self.activity))))
    }

    /// The request service for this connection's requests.
    fn service(
        &self,
        client_cert: Option<Arc<(http::HeaderName, http::HeaderValue)>>,
    ) -> ProxyService {
        ProxyService::new(
            Arc::clone(&self.state),
            self.peer,
            Arc::clone(&self.activity),
            Arc::clone(&self.listener),
        )
        .with_client_certificate(client_cert)
    }

    /// Serving through the compression layer. Compression is chosen per connection from
    /// the current snapshot (a reload applies to new connections), so that, when off, the
    /// request path carries no extra layer.
    fn serving_compressed<I>(
        self,
        io: TokioIo<I>,
        service: ProxyService,
        protocol: Protocol,
    ) -> Serving
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.activity.set_behind_compression();
        let handler = Handler(service);
        let service = tower::ServiceBuilder::new()
            .layer(super::compress::layer())
            .service(tower::service_fn(move |req| handler.handle(req)));
        let conn = self.connection(io, TowerToHyperService::new(service), protocol);
        Serving::Other(Box::pin(Driven::new(conn, self.activity)))
    }

    /// hyper's connection for `protocol` on `io`.
    fn connection<I, S, B>(
        &self,
        io: TokioIo<I>,
        service: S,
        protocol: Protocol,
    ) -> HyperConnection<I, S>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<B>,
                Error = std::convert::Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match protocol {
            Protocol::Http1 => ServerConnection::Http1(
                self.builders
                    .http1
                    .serve_connection(io, service)
                    .with_upgrades(),
            ),
            Protocol::Http2 => {
                ServerConnection::Http2(Box::pin(self.builders.http2.serve_connection(io, service)))
            }
        }
    }
}

/// What opening an accepted connection takes, beside the [`Connection`].
struct OpenSettings {
    tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// Bounds the PROXY header, the protocol sniff and the TLS handshake.
    handshake_timeout: Duration,
    /// The listener's name when each connection starts with a PROXY header.
    proxy_protocol: Option<String>,
}

/// Over the connection limit: answer at once rather than queue, so clients and load
/// balancers in front can go elsewhere.
async fn refuse(mut stream: TcpStream) {
    const RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
        content-type: text/plain\r\ncontent-length: 37\r\nretry-after: 1\r\nconnection: close\r\n\r\n\
        503 Service Unavailable: at capacity\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(RESPONSE).await?;
        stream.shutdown().await
    })
    .await;
}
