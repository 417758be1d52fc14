//! Sample upstream servers for the demo: JSON API responses after a configurable delay,
//! cacheable static responses, and a POST echo.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running sample upstream; stops when [`SampleUpstream::stop`] is awaited or on drop.
pub struct SampleUpstream {
    pub name: Arc<str>,
    pub address: SocketAddr,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl SampleUpstream {
    /// Binds a free loopback port and serves; `/api/*` answers after `delay`.
    pub async fn start(name: &str, delay: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let name: Arc<str> = name.into();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(
            listener,
            Arc::clone(&name),
            delay,
            stop.clone(),
            tracker.clone(),
        ));
        Ok(Self {
            name,
            address,
            stop,
            tracker,
        })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for SampleUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    delay: Duration,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let name = Arc::clone(&name);
        let stop = stop.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let name = Arc::clone(&name);
                async move { Ok::<_, Infallible>(respond(&name, delay, req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn respond(name: &str, delay: Duration, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let builder = Response::builder().header("x-served-by", name);
    let response = if path.starts_with("/static/") {
        builder
            .header(header::CONTENT_TYPE, "image/svg+xml")
            .header(header::CACHE_CONTROL, "public, max-age=300")
            .header(header::ETAG, "\"logo-v1\"")
            .body(Full::new(Bytes::from_static(
                b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"8\" height=\"8\"/>\n",
            )))
    } else if req.method() == Method::POST {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        builder
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(body))
    } else {
        tokio::time::sleep(delay).await;
        let json = format!("{{\"upstream\":\"{name}\",\"path\":{path:?}}}\n");
        builder
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from(json)))
    };
    response.unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}
