//! The upstream exchange of one request: the request sent and its response read on a
//! connection driven by the request's own task.
//!
//! Plain HTTP/1.1 pools (no TLS, no PROXY header) do not go through hyper-util's pooled
//! client, which spawns a task per connection and another per request (to hand the
//! connection back once the response ends), guards its pool with a mutex and wakes the
//! request through channels. Here a connection is a `hyper::client::conn::http1` pair
//! (the request sender and the connection's state machine) owned by one request at a
//! time: the request's future polls the state machine while it waits for the head, the
//! response body polls it while the body streams, and when the body ends the pair goes
//! back to an idle list of the thread it finished on. The idle lists are thread-local
//! (nginx keeps one idle-connection cache per worker): no lock, no atomic, nothing
//! shared. TLS, HTTP/2, PROXY headers and upgrades keep hyper-util's client (see
//! [`super::Pool::send`]). Requests whose body weir holds whole (none, or buffered for
//! retries) go through weir's own client on the same terms ([`super::lean`]); hyper's
//! `client::conn` carries the ones that stream a client's body.
//!
//! An idle connection is not polled while it waits. One the upstream closed meanwhile is
//! noticed when it is taken (its state machine, polled once, reads the end of stream)
//! and dropped; one taken in the instant the upstream closes it gives the request back
//! unsent, and the request goes on a new connection. Idle connections older than the
//! pool's `idle_timeout` are closed when their list is next used, and every list on the
//! thread is swept at most once a second.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::ServiceExt;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use super::h1::ProtocolError;
use super::lean::{self, LeanBody};
use super::request_body::UpstreamRequestBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an exchange gave no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// hyper-util's pooled client failed (TLS, HTTP/2, PROXY-header pools).
    #[error("upstream request failed")]
    Pooled(#[source] hyper_util::client::legacy::Error),
    /// No connection could be opened.
    #[error("upstream connect failed")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or its head awaited.
    #[error("upstream exchange failed")]
    Exchange(#[source] hyper::Error),
    /// The connection ended without a word about the request.
    #[error("the upstream connection closed before answering")]
    Closed,
    /// Reading the response head failed (weir's own client).
    #[error("upstream read failed")]
    Io(#[source] std::io::Error),
    /// The upstream broke HTTP/1.1 in its response head (weir's own client).
    #[error("upstream response malformed")]
    Protocol(#[source] ProtocolError),
}

/// Why a response body stopped short.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// From hyper's clients.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("upstream body read failed")]
    Read(#[source] std::io::Error),
    #[error("the upstream closed the connection before the body's end")]
    Incomplete,
    #[error("upstream body malformed")]
    Protocol(#[source] ProtocolError),
}

impl SendError {
    /// Whether the request never left weir because no connection could be made: safe to
    /// send again whatever its method.
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Pooled(error) => error.is_connect(),
            SendError::Connect(_) => true,
            SendError::Exchange(_)
            | SendError::Closed
            | SendError::Io(_)
            | SendError::Protocol(_) => false,
        }
    }
}

/// A response head on its way, from either client.
pub enum ResponseFuture {
    Pooled(hyper_util::client::legacy::ResponseFuture),
    InTask(Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, SendError>> + Send>>),
}

impl Future for ResponseFuture {
    type Output = Result<Response<UpstreamBody>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ResponseFuture::Pooled(pooled) => Pin::new(pooled)
                .poll(cx)
                .map_ok(|response| response.map(UpstreamBody::pooled))
                .map_err(SendError::Pooled),
            ResponseFuture::InTask(in_task) => in_task.as_mut().poll(cx),
        }
    }
}

/// A request on its way: its response to come, and its header map back when the caller
/// asked to keep it for another attempt.
pub struct Dispatched {
    pub response: ResponseFuture,
    pub headers: Option<HeaderMap>,
}

/// Identifies one pool's connections to one endpoint across the thread-local idle lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ListKey {
    client: u64,
    endpoint: u64,
}

/// Settings of a pool's in-task connections; kept across a reload while they are the
/// same, so the idle connections stay usable.
#[derive(Debug)]
pub struct InTaskClient {
    /// Unique per client: connections of an earlier client (other settings) are never
    /// taken by this one.
    id: u64,
    connector: HttpConnector,
    http1: http1::Builder,
    pub(super) idle_timeout: Duration,
    /// Idle connections kept per endpoint, on each thread.
    pub(super) max_idle: usize,
}

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

impl InTaskClient {
    pub fn new(connector: HttpConnector, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            id: NEXT_CLIENT_ID.fetch_add(1, Relaxed),
            connector,
            http1: http1::Builder::new(),
            idle_timeout,
            max_idle,
        }
    }

    /// Sends `request` (origin-form target, `Host` set) to the endpoint at `authority`
    /// (`endpoint` is its [`super::Endpoint::serial`]). With `keep_headers`, the request's
    /// header map comes back: as it was, from weir's own client, which writes the head at
    /// once; copied first for hyper's.
    pub fn send(
        self: &Arc<Self>,
        endpoint: u64,
        authority: &Authority,
        request: Request<UpstreamRequestBody>,
        keep_headers: bool,
    ) -> Dispatched {
        let client = Arc::clone(self);
        let authority = authority.clone();
        let key = self.list_key(endpoint);
        let request = match request.body().held() {
            Some(held) => {
                let held = held.cloned();
                let (parts, _) = request.into_parts();
                let (prepared, headers) = lean::prepare(key, Request::from_parts(parts, held));
                // The box first, the future made in it (as `serving::Handler::handle`
                // does): `Box::pin(future)` built it on the stack and copied it in.
                let slot = Box::new_uninit();
                let in_task = Box::write(slot, lean::exchange(client, key, authority, prepared));
                return Dispatched {
                    response: ResponseFuture::InTask(Box::into_pin(in_task)),
                    headers: if keep_headers {
                        Some(headers)
                    } else {
                        // Written out: the map becomes the next response head's.
                        crate::header_maps::recycle(headers);
                        None
                    },
                };
            }
            None => request,
        };
        let headers = keep_headers.then(|| request.headers().clone());
        let slot = Box::new_uninit();
        let in_task = Box::write(slot, exchange(client, key, authority, request));
        Dispatched {
            response: ResponseFuture::InTask(Box::into_pin(in_task)),
            headers,
        }
    }

    /// Opens a TCP connection with the pool's connect timeout, nodelay and keepalive.
    pub(super) async fn connect_tcp(&self, authority: &Authority) -> Result<TcpStream, SendError> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|error| SendError::Connect(error.into()))?;
        let io: TokioIo<TcpStream> = self
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(|error| SendError::Connect(error.into()))?;
        Ok(io.into_inner())
    }

    /// Opens a connection for hyper's `client::conn`.
    async fn connect(
        self: &Arc<Self>,
        authority: &Authority,
        key: ListKey,
    ) -> Result<Connection, SendError> {
        let io = TokioIo::new(self.connect_tcp(authority).await?);
        let (sender, driver) = self
            .http1
            .handshake(io)
            .await
            .map_err(SendError::Exchange)?;
        Ok(Connection(Box::new(ConnectionState {
            sender,
            driver,
            tag: IdleTag::new(key, Arc::clone(self)),
        })))
    }

    pub(super) fn list_key(&self, endpoint: u64) -> ListKey {
        ListKey {
            client: self.id,
            endpoint,
        }
    }
}

/// One upstream connection: the request sender and the state machine that does its I/O.
/// Boxed, so that a response body and an idle list hold a pointer.
struct Connection(Box<ConnectionState>);

struct ConnectionState {
    sender: http1::SendRequest<UpstreamRequestBody>,
    driver: http1::Connection<TokioIo<TcpStream>, UpstreamRequestBody>,
    tag: IdleTag,
}

impl IdleConnection for Connection {
    fn tag(&self) -> &IdleTag {
        &self.0.tag
    }

    fn tag_mut(&mut self) -> &mut IdleTag {
        &mut self.0.tag
    }

    /// Polls the state machine once without a waker to keep: whether it can take a
    /// request (it has not ended, and it is waiting for one).
    fn is_reusable(&mut self) -> bool {
        let mut context = Context::from_waker(Waker::noop());
        Pin::new(&mut self.0.driver).poll(&mut context).is_pending() && self.0.sender.is_ready()
    }
}

impl Connection {
    /// Polls the state machine: whether the connection has ended.
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.0.driver).poll(cx).is_ready()
    }

    /// The response has ended: back to this thread's idle list if it can take another
    /// request.
    fn release(mut self) {
        if self.is_reusable() {
            park(&IDLE, self);
        }
    }
}

async fn exchange(
    client: Arc<InTaskClient>,
    key: ListKey,
    authority: Authority,
    mut request: Request<UpstreamRequestBody>,
) -> Result<Response<UpstreamBody>, SendError> {
    loop {
        let taken = IDLE
            .try_with(|idle| idle.borrow_mut().take(key))
            .ok()
            .flatten();
        let (mut connection, reused) = match taken {
            Some(connection) => (connection, true),
            None => (client.connect(&authority, key).await?, false),
        };
        let sending = connection.0.sender.try_send_request(request);
        match drive(&mut connection, sending).await {
            Ok(Ok(response)) => {
                return Ok(response.map(|body| {
                    UpstreamBody::in_task(InTaskBody {
                        body,
                        connection: Some(connection),
                    })
                }));
            }
            Ok(Err(mut error)) => match error.take_message() {
                // Not written: the idle connection closed as it was taken. Another one.
                Some(unsent) if reused => request = unsent,
                _ => return Err(SendError::Exchange(error.into_error())),
            },
            Err(Closed) => return Err(SendError::Closed),
        }
    }
}

/// The connection ended and the request's answer will not come.
struct Closed;

/// Polls the connection's state machine alongside `sending` until the response head (or
/// the failure) arrives.
async fn drive<T>(
    connection: &mut Connection,
    sending: impl Future<Output = T>,
) -> Result<T, Closed> {
    let mut sending = std::pin::pin!(sending);
    let mut ended = false;
    poll_fn(|cx| {
        if !ended && connection.poll_ended(cx) {
            ended = true;
        }
        match sending.as_mut().poll(cx) {
            Poll::Ready(result) => Poll::Ready(Ok(result)),
            // hyper answers every request it was given before its connection ends; this
            // only guards against waiting forever if it did not.
            Poll::Pending if ended => Poll::Ready(Err(Closed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// A response body from an upstream: through hyper-util's client, or read from a
/// connection this body drives and gives back when it ends.
pub struct UpstreamBody {
    kind: Kind,
}

enum Kind {
    Pooled(Incoming),
    InTask(InTaskBody),
    Lean(LeanBody),
}

struct InTaskBody {
    body: Incoming,
    /// Until the body ends (or fails).
    connection: Option<Connection>,
}

impl InTaskBody {
    /// The body has ended: its connection may take another request.
    fn release(&mut self) {
        if let Some(connection) = self.connection.take() {
            connection.release();
        }
    }
}

impl UpstreamBody {
    /// A body from hyper-util's client.
    fn pooled(body: Incoming) -> Self {
        Self {
            kind: Kind::Pooled(body),
        }
    }

    fn in_task(body: InTaskBody) -> Self {
        Self {
            kind: Kind::InTask(body),
        }
    }

    pub(super) fn lean(body: LeanBody) -> Self {
        Self {
            kind: Kind::Lean(body),
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Pooled(_) => "pooled",
            Kind::InTask(_) => "in-task",
            Kind::Lean(_) => "lean",
        };
        f.debug_struct("UpstreamBody").field("kind", &kind).finish()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().kind {
            Kind::Pooled(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::Hyper),
            Kind::Lean(body) => body.poll_frame(cx),
            Kind::InTask(in_task) => {
                // The state machine reads what the body is waiting for.
                if let Some(connection) = &mut in_task.connection
                    && connection.poll_ended(cx)
                {
                    // Ended (closed after this response, or failed: the body hears of it).
                    in_task.connection = None;
                }
                let frame = std::task::ready!(Pin::new(&mut in_task.body).poll_frame(cx));
                match &frame {
                    None => in_task.release(),
                    Some(Ok(_)) if in_task.body.is_end_stream() => in_task.release(),
                    Some(Err(_)) => in_task.connection = None,
                    Some(Ok(_)) => {}
                }
                Poll::Ready(frame.map(|frame| frame.map_err(BodyError::Hyper)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Pooled(body) => body.is_end_stream(),
            Kind::InTask(in_task) => in_task.body.is_end_stream(),
            Kind::Lean(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Pooled(body) => body.size_hint(),
            Kind::InTask(in_task) => in_task.body.size_hint(),
            Kind::Lean(body) => body.size_hint(),
        }
    }
}

impl Drop for InTaskBody {
    fn drop(&mut self) {
        // A body that was never read because it has nothing in it (HEAD, 204, 304,
        // `Content-Length: 0`) still leaves its connection reusable. One dropped part way
        // closes its connection: the rest of the response would be in the way.
        if self.connection.is_some() && self.body.is_end_stream() {
            self.release();
        }
    }
}

/// How often at most a thread sweeps all its idle lists.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What every pooled connection carries for the idle lists, whatever its kind.
pub(super) struct IdleTag {
    /// The idle list it belongs to.
    key: ListKey,
    /// Its client's settings (idle timeout, connections kept).
    client: Arc<InTaskClient>,
    /// When it is closed if still idle (set as it goes idle).
    expires: Instant,
}

impl IdleTag {
    pub(super) fn new(key: ListKey, client: Arc<InTaskClient>) -> Self {
        Self {
            key,
            client,
            expires: Instant::now(),
        }
    }
}

/// What an idle list needs of a connection.
pub(super) trait IdleConnection {
    fn tag(&self) -> &IdleTag;
    fn tag_mut(&mut self) -> &mut IdleTag;
    /// Whether it can take a request (its upstream has not closed it).
    fn is_reusable(&mut self) -> bool;
}

/// Puts `connection`, which has just finished a response, on this thread's idle list of
/// its kind, to expire after its pool's `idle_timeout`.
pub(super) fn park<C: IdleConnection>(
    lists: &'static std::thread::LocalKey<RefCell<IdleLists<C>>>,
    mut connection: C,
) {
    let tag = connection.tag_mut();
    tag.expires = crate::clock::now_std() + tag.client.idle_timeout;
    // During the thread's teardown there is no list: the connection just closes.
    let _ = lists.try_with(|idle| idle.borrow_mut().put(connection));
}

/// A thread's idle connections of one kind, by pool client and endpoint.
pub(super) struct IdleLists<C> {
    lists: HashMap<ListKey, Vec<C>, Xxh3DefaultBuilder>,
    /// When the next take sweeps the lists.
    next_sweep: Instant,
}

thread_local! {
    static IDLE: RefCell<IdleLists<Connection>> = RefCell::new(IdleLists::new());
}

impl<C: IdleConnection> IdleLists<C> {
    pub(super) fn new() -> Self {
        Self {
            lists: HashMap::default(),
            next_sweep: Instant::now() + SWEEP_EVERY,
        }
    }

    /// The most recently used idle connection for `key` that can take a request; older
    /// ones past their pool's `idle_timeout` are closed on the way.
    pub(super) fn take(&mut self, key: ListKey) -> Option<C> {
        let now = crate::clock::now_std();
        self.sweep_if_due(now);
        let list = self.lists.get_mut(&key)?;
        while let Some(mut connection) = list.pop() {
            if now >= connection.tag().expires {
                // The rest are older still.
                list.clear();
                return None;
            }
            if connection.is_reusable() {
                return Some(connection);
            }
        }
        None
    }

    pub(super) fn put(&mut self, connection: C) {
        let max_idle = connection.tag().client.max_idle;
        if max_idle == 0 {
            return;
        }
        let list = self.lists.entry(connection.tag().key).or_default();
        if list.len() >= max_idle {
            // The oldest goes: the most recently used are the likeliest to be alive.
            list.remove(0);
        }
        list.push(connection);
    }

    /// Sweeps if the last sweep is [`SWEEP_EVERY`] old (a comparison of instants, not a
    /// subtraction, on every take).
    pub(super) fn sweep_if_due(&mut self, now: Instant) {
        if now >= self.next_sweep {
            self.sweep(now);
        }
    }

    /// Closes connections idle past their pool's `idle_timeout` or closed by their
    /// upstream, in every list (those of endpoints or pools that are gone included), and
    /// drops empty lists.
    fn sweep(&mut self, now: Instant) {
        self.next_sweep = now + SWEEP_EVERY;
        self.lists.retain(|_, list| {
            list.retain_mut(|connection| {
                now < connection.tag().expires && connection.is_reusable()
            });
            !list.is_empty()
        });
    }
}
