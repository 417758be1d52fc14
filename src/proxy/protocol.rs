//! Which HTTP version a client connection speaks, and hyper's server for each.
//!
//! hyper-util's `auto` server holds the state of both versions in every connection
//! (1.5 KiB, most of it HTTP/2's, where HTTP/1.1 needs 0.6 KiB) and reads through a
//! rewind buffer. Here the version is decided first: by ALPN on TLS, by peeking at the
//! HTTP/2 preface on cleartext (nothing is consumed). HTTP/2 connections are boxed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::listener::ListenerSettings;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    /// From the protocol a TLS handshake agreed on: `h2`, or HTTP/1.1.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Self {
        if alpn == Some(b"h2") {
            Self::Http2
        } else {
            Self::Http1
        }
    }

    /// A cleartext connection is HTTP/2 when it starts with the preface (prior
    /// knowledge, h2c). Peeks without consuming; waits only while what has arrived is a
    /// strict prefix of the preface, so an HTTP/1.1 request is told apart by its first
    /// byte that differs ("GET", "POST"…: the first or second). `None` when the client
    /// sends nothing usable before `timeout` or the connection fails.
    pub async fn sniff(stream: &TcpStream, timeout: Duration) -> Option<Self> {
        tokio::time::timeout(timeout, Self::sniff_unbounded(stream))
            .await
            .ok()?
            .ok()
    }

    async fn sniff_unbounded(stream: &TcpStream) -> io::Result<Self> {
        let mut seen = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut seen).await?;
            if n == 0 || seen[..n] != H2_PREFACE[..n] {
                // EOF, or not the preface: HTTP/1.1 (hyper answers whatever it is).
                return Ok(Self::Http1);
            }
            if n == H2_PREFACE.len() {
                return Ok(Self::Http2);
            }
            // A prefix of the preface: wait for more. Readiness is cleared first, or the
            // next peek would return at once with the same bytes.
            let _ = stream.try_io(Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
            stream.readable().await?;
        }
    }
}

/// hyper's servers for one listener, configured once.
pub struct Builders {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    pub fn new(settings: &ListenerSettings) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(settings.request_header_timeout)
            .max_buf_size(settings.max_request_header_bytes)
            .keep_alive(true);
        // hyper's own bound is the default; setting it moves the header array to the heap.
        if settings.max_request_headers != crate::config::defaults::DEFAULT_MAX_REQUEST_HEADERS {
            http1.max_headers(settings.max_request_headers);
        }
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20))
            // The h2 crate refuses a list that *reaches* the size it advertises; weir's
            // limit is the largest list accepted (RFC 9113 §6.5.2), hence one more.
            .max_header_list_size(
                u32::try_from(settings.max_request_header_bytes)
                    .unwrap_or(u32::MAX - 1)
                    .saturating_add(1),
            );
        Self { http1, http2 }
    }
}

/// A served connection of either version, as one future that can be asked to close
/// gracefully.
pub enum ServerConnection<C1, C2> {
    Http1(C1),
    /// Boxed: only HTTP/2 connections pay for HTTP/2's state.
    Http2(Pin<Box<C2>>),
}

/// What `ServerConnection` needs of hyper's two connection types.
pub trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);

    /// Gives back what an idle connection keeps for its next request (HTTP/1.1: the
    /// header map reused for the next head, the write queue's storage).
    fn release_idle_memory(self: Pin<&mut Self>) {}
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }

    fn release_idle_memory(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::release_idle_memory(self);
    }
}

impl<I, S, B> Graceful for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

impl<C1: Graceful + Unpin, C2: Graceful> ServerConnection<C1, C2> {
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.get_mut() {
            Self::Http1(conn) => Pin::new(conn).graceful_shutdown(),
            Self::Http2(conn) => conn.as_mut().graceful_shutdown(),
        }
    }

    pub fn release_idle_memory(self: Pin<&mut Self>) {
        match self.get_mut() {
            Self::Http1(conn) => Pin::new(conn).release_idle_memory(),
            Self::Http2(conn) => conn.as_mut().release_idle_memory(),
        }
    }
}

impl<C1: Graceful + Unpin, C2: Graceful> Future for ServerConnection<C1, C2> {
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Http1(conn) => Pin::new(conn).poll(cx),
            Self::Http2(conn) => conn.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn sniff_after(pieces: &[&[u8]]) -> Option<Protocol> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        tokio::spawn(async move {
            for piece in pieces {
                client.write_all(&piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let protocol = Protocol::sniff(&server, Duration::from_millis(500)).await;
        // Nothing was consumed: whatever arrived is still there for hyper.
        if protocol.is_some() {
            let mut buf = [0u8; 64];
            let n = server.peek(&mut buf).await.unwrap();
            assert!(n > 0);
        }
        protocol
    }

    #[tokio::test]
    async fn the_preface_decides_even_when_it_arrives_in_pieces() {
        assert_eq!(
            sniff_after(&[b"GET / HTTP/1.1\r\n"]).await,
            Some(Protocol::Http1)
        );
        assert_eq!(
            sniff_after(&[b"POST / HTTP/1.1\r\n"]).await,
            Some(Protocol::Http1)
        );
        assert_eq!(
            sniff_after(&[b"PRI", b" * HTTP/1.1\r\n"]).await,
            Some(Protocol::Http1)
        );
        assert_eq!(sniff_after(&[H2_PREFACE]).await, Some(Protocol::Http2));
        assert_eq!(
            sniff_after(&[b"P", b"RI * HTTP/2", b".0\r\n\r\nSM\r\n\r\n"]).await,
            Some(Protocol::Http2)
        );
        // A client that stops inside the preface is cut at the timeout, not spun on.
        assert_eq!(sniff_after(&[b"PRI * "]).await, None);
        assert_eq!(sniff_after(&[]).await, None);
    }

    #[test]
    fn alpn_h2_is_http2_and_anything_else_http1() {
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::from_alpn(None), Protocol::Http1);
    }
}
