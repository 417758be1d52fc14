//! Accept loop and per-connection serving: connection limit, HTTP/1.1 + h2c, header and
//! idle timeouts, graceful drain.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ProxyState;
use super::body::BodyPace;
use super::conn::ConnActivity;
use super::service::ProxyService;

/// Settings of one listener, fixed while it runs.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub name: String,
    pub max_connections: usize,
    pub request_header_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub max_request_header_bytes: usize,
    pub body_pace: BodyPace,
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
pub async fn serve(
    listener: TcpListener,
    settings: ListenerSettings,
    state: Arc<ProxyState>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(settings.max_connections));
    let builder = Arc::new(http_builder(&settings));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.drain.cancelled() => break,
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
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            state.stats.connections_refused.fetch_add(1, Relaxed);
            tracker.spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        let shutdown = shutdown.clone();
        let idle_timeout = settings.client_idle_timeout;
        let body_pace = settings.body_pace;
        tracker.spawn(async move {
            state.stats.connections_active.fetch_add(1, Relaxed);
            let activity = Arc::new(ConnActivity::default());
            let service = ProxyService::new(
                Arc::clone(&state),
                peer,
                "http",
                Arc::clone(&activity),
                body_pace,
            );
            let service = service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, std::convert::Infallible>(service.handle(req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let idle = activity.idle(idle_timeout);
            tokio::pin!(idle);
            let mut closing = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(err) = result {
                            tracing::debug!(%peer, error = %err, "client connection ended with an error");
                        }
                        break;
                    }
                    _ = shutdown.drain.cancelled(), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = &mut idle, if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = shutdown.abort.cancelled() => break,
                }
            }
            state.stats.connections_active.fetch_sub(1, Relaxed);
            drop(permit);
        });
    }
}

fn http_builder(settings: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.request_header_timeout)
        .max_buf_size(settings.max_request_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(settings.max_request_header_bytes as u32);
    builder
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
