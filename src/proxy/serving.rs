//! A client connection once it is open: hyper's connection with weir's request service,
//! driven until it ends or its accept loop asks it to close.
//!
//! This is what an idle keep-alive connection costs, so its shape is chosen for size.
//! A connection's task is one allocation of the task's size for the connection's whole
//! life. Written as `async fn`s, that task also kept what opening the connection needed
//! (the socket, the PROXY header's listener name, timeouts, weir's connection record),
//! every moved value keeping its slot, and was as large as the largest way to serve
//! (TLS, the compression layer): 2 048 bytes. Here the opening is a boxed future freed
//! once the connection is open, and the task holds one [`Serving`]: a plain-TCP
//! connection without compression (the common one) inline, any other boxed (768 bytes
//! with [`ProxyService`]'s listener settings shared and hyper's connection state trimmed,
//! see `vendor/hyper/WEIR-PATCH.md`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::ProxyState;
use super::body::ResponseBody;
use super::conn::{Closing, ConnActivity};
use super::deadlines::{ConnectionTimer, watch_scope};
use super::protocol::{Graceful, ServerConnection};
use super::service::ProxyService;

/// A connection's task: opened, then served. Written by hand rather than as an `async`
/// block, which would keep the opened [`Serving`] twice (the value and the future it is
/// polled as).
pub struct ConnectionTask {
    phase: Phase,
    /// The connection's place under the listener's `max_connections`.
    _permit: OwnedSemaphorePermit,
    /// Counts the connection as active while the task lives.
    state: Arc<ProxyState>,
}

/// Opening a connection: PROXY header, protocol sniff or TLS handshake; `None` when the
/// connection is to be closed instead.
pub type Opening = Pin<Box<dyn Future<Output = Option<Serving>> + Send>>;

#[expect(
    clippy::large_enum_variant,
    reason = "serving inline is the point: boxing it would be a second allocation per connection"
)]
enum Phase {
    Opening(Opening),
    Serving(Serving),
    Ended,
}

impl ConnectionTask {
    pub fn new(opening: Opening, permit: OwnedSemaphorePermit, state: Arc<ProxyState>) -> Self {
        state.stats.connections_active.fetch_add(1, Relaxed);
        Self {
            phase: Phase::Opening(opening),
            _permit: permit,
            state,
        }
    }
}

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.state.stats.connections_active.fetch_sub(1, Relaxed);
    }
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Whatever this poll does (a request's start, its attempts, its answer) asks the
        // clock once.
        let _clock = crate::clock::poll_scope();
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Opening(opening) => match opening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(serving)) => this.phase = Phase::Serving(serving),
                    Poll::Ready(None) => this.phase = Phase::Ended,
                },
                Phase::Serving(serving) => {
                    std::task::ready!(Pin::new(serving).poll(cx));
                    this.phase = Phase::Ended;
                }
                Phase::Ended => return Poll::Ready(()),
            }
        }
    }
}

/// A request's handling, boxed so that it lives only while its request does. Unboxed, it
/// would sit in hyper's per-connection slot (weir patch: allocated with the first
/// request, given back when the connection goes quiet) from a request to the next quiet
/// tick: one allocation less per request, but 10 000 connections that each made a
/// request held 0.7 KiB more RSS apiece (the allocator keeps the freed slots' pages).
pub type Handling =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

/// hyper's service for one connection: weir's request service, one boxed
/// [`Handling`] per request.
#[derive(Clone)]
pub struct Handler(pub ProxyService);

impl Handler {
    pub fn handle(&self, req: Request<Incoming>) -> Handling {
        // The box first, the future made in it: `Box::pin(future)` made the future on
        // the stack and copied all of its 2.4 KiB into the box, twice as compiled,
        // though a new future holds only its captured values (~400 bytes).
        let slot = Box::new_uninit();
        let handling = Box::write(slot, self.0.clone().handle(req));
        Box::into_pin(handling)
    }
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Handling;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.handle(req)
    }
}

/// hyper's connection of either version over `I`, serving with `S`.
pub type HyperConnection<I, S> = ServerConnection<
    http1::UpgradeableConnection<TokioIo<I>, S>,
    http2::Connection<TokioIo<I>, S, TokioExecutor>,
>;

/// An open connection being served.
#[expect(
    clippy::large_enum_variant,
    reason = "the common connection inline is the point: boxed, it would be a second allocation"
)]
pub enum Serving {
    /// Plain TCP, no compression layer: held in the connection's task itself.
    Plain(Driven<HyperConnection<TcpStream, Handler>>),
    /// TLS or the compression layer: boxed, so that the plain connection's task is not
    /// sized for them.
    Other(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl Future for Serving {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Self::Plain(driven) => Pin::new(driven).poll(cx),
            Self::Other(driven) => driven.as_mut().poll(cx),
        }
    }
}

/// hyper's connection, with the accept loop's requests to close it (idle timeout, drain,
/// abort: [`ConnActivity::closing`]) and to give back what it keeps for its next request
/// ([`ConnActivity::take_trim`]); the loop wakes the task to read them.
pub struct Driven<C> {
    conn: C,
    activity: Arc<ConnActivity>,
    /// Wakes the task by the deadlines its requests ask for while it is polled.
    timer: ConnectionTimer,
    /// A graceful close was asked of hyper already.
    closing: bool,
}

impl<C> Driven<C> {
    pub fn new(conn: C, activity: Arc<ConnActivity>) -> Self {
        Self {
            conn,
            activity,
            timer: ConnectionTimer::default(),
            closing: false,
        }
    }
}

impl<C1: Graceful + Unpin, C2: Graceful> Future for Driven<ServerConnection<C1, C2>> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut conn = Pin::new(&mut this.conn);
        match this.activity.closing(cx) {
            Closing::Now => return Poll::Ready(()),
            Closing::Gracefully if !this.closing => {
                conn.as_mut().graceful_shutdown();
                this.closing = true;
            }
            Closing::Gracefully | Closing::No => {}
        }
        if this.activity.take_trim() {
            conn.as_mut().release_idle_memory();
            this.timer.release();
        }
        let deadlines = watch_scope();
        let polled = conn.poll(cx);
        if polled.is_pending() {
            this.timer.arm(deadlines.earliest(), cx);
        }
        polled.map(|result| {
            if let Err(err) = result {
                let peer = this.activity.ends().0;
                tracing::debug!(%peer, error = %err, "client connection ended with an error");
            }
        })
    }
}
