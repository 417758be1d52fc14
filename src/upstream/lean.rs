//! weir's own HTTP/1.1 client, for the requests of plain pools that weir holds whole: no
//! body, or a body buffered for retries (most API calls). Streamed bodies and upgrades
//! keep hyper's client (see [`super::exchange`]).
//!
//! Why not hyper's `client::conn`: it moves the request through a channel to the
//! connection's state machine and the answer back through a oneshot, feeds the body
//! through another channel, and consumes the request's header map; a retry then needs a
//! copy made before every first attempt. Here the request head is written into the
//! connection's own buffer straight from the map at the moment the request is sent, the
//! map goes back to the caller, and the response head and body are read by the request's
//! task off the same socket, into one read buffer per connection that is reused once the
//! previous response's bytes have been dropped. Four to six allocations fewer per
//! request (`benches/allocations`).
//!
//! Connections wait, idle, in lists of the thread they last finished on, as hyper's
//! in-task connections do ([`super::exchange::IdleLists`]); one found closed or holding
//! stray bytes when taken is dropped.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::exchange::{
    BodyError, IdleConnection, IdleLists, IdleTag, InTaskClient, ListKey, SendError, UpstreamBody,
    park,
};
use super::h1::{self, ChunkedDecoder, Decoded, Framing};

/// A read asks for at least this much room, and up to [`MAX_READ`] while reads fill it.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;
/// A buffered body up to this size goes out in the head's write.
const BODY_IN_HEAD_WRITE: usize = 16 * 1024;

thread_local! {
    static IDLE: RefCell<IdleLists<LeanConnection>> = RefCell::new(IdleLists::new());
}

/// One upstream connection. Boxed, so that a response body and an idle list hold a
/// pointer.
pub(super) struct LeanConnection(Box<LeanState>);

struct LeanState {
    stream: TcpStream,
    /// What the upstream sent and was not yet handed on.
    read: BytesMut,
    /// Room the next read asks for.
    read_size: usize,
    /// The request head being written (kept for the next one).
    write: Vec<u8>,
    tag: IdleTag,
}

impl IdleConnection for LeanConnection {
    fn tag(&self) -> &IdleTag {
        &self.0.tag
    }

    fn tag_mut(&mut self) -> &mut IdleTag {
        &mut self.0.tag
    }

    /// Nothing buffered and nothing to read: neither closed by the upstream nor sent
    /// bytes no request asked for.
    fn is_reusable(&mut self) -> bool {
        if !self.0.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.0.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl LeanConnection {
    fn new(stream: TcpStream, key: ListKey, client: Arc<InTaskClient>) -> Self {
        Self(Box::new(LeanState {
            stream,
            read: BytesMut::new(),
            read_size: FIRST_READ,
            write: Vec::new(),
            tag: IdleTag::new(key, client),
        }))
    }

    /// Reads more of the response; `Ok(0)` at the end of the stream.
    async fn read_more(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let state = &mut *self.0;
        make_room(&mut state.read, state.read_size);
        let room = state.read.capacity() - state.read.len();
        let polled = tokio_util::io::poll_read_buf(
            std::pin::Pin::new(&mut state.stream),
            cx,
            &mut state.read,
        );
        if let Poll::Ready(Ok(read)) = polled {
            grow_after(&mut state.read_size, read, room);
        }
        polled
    }

    /// The response has ended: back to this thread's idle list unless the upstream sent
    /// more than the response (whether it has closed meanwhile is seen when the
    /// connection is taken again: see [`IdleConnection::is_reusable`]).
    fn release(self) {
        if self.0.read.is_empty() {
            park(&IDLE, self);
        }
    }
}

/// Room for a read of `size` bytes. Once the previous response's bytes are all dropped,
/// `reserve` takes the buffer's allocation back instead of making another.
fn make_room(read: &mut BytesMut, size: usize) {
    if read.capacity() - read.len() < size / 2 {
        read.reserve(size);
    }
}

/// Reads that fill their room ask for twice as much next time (large bodies).
fn grow_after(read_size: &mut usize, read: usize, room: usize) {
    if read >= room {
        *read_size = (*read_size * 2).min(MAX_READ);
    }
}

/// A request made ready to go: its head written out, its connection taken if one idles.
pub(super) struct Prepared {
    method: Method,
    head: Vec<u8>,
    body: Option<Bytes>,
    idle: Option<LeanConnection>,
}

/// Writes `request`'s head (an idle connection's buffer if one is there to take) and gives
/// the header map back.
pub(super) fn prepare(key: ListKey, request: Request<Option<Bytes>>) -> (Prepared, HeaderMap) {
    let mut idle = IDLE
        .try_with(|idle| idle.borrow_mut().take(key))
        .ok()
        .flatten();
    let mut head = idle
        .as_mut()
        .map(|connection| std::mem::take(&mut connection.0.write))
        .unwrap_or_default();
    head.clear();
    let (parts, body) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let body_len = body.as_ref().map_or(0, Bytes::len);
    h1::encode_request_head(&mut head, &parts.method, target, &parts.headers, body_len);
    let prepared = Prepared {
        method: parts.method,
        head,
        body,
        idle,
    };
    (prepared, parts.headers)
}

/// Sends a prepared request and reads its response head.
pub(super) async fn exchange(
    client: Arc<InTaskClient>,
    key: ListKey,
    authority: Authority,
    prepared: Prepared,
) -> Result<Response<UpstreamBody>, SendError> {
    let Prepared {
        method,
        mut head,
        body,
        idle,
    } = prepared;
    let body = match body {
        Some(body) if body.len() <= BODY_IN_HEAD_WRITE => {
            head.extend_from_slice(&body);
            None
        }
        body => body,
    };
    let (mut connection, mut reused) = match idle {
        Some(connection) => (connection, true),
        None => (connect(&client, &authority, key).await?, false),
    };
    connection.0.write = head;
    loop {
        match write_request(&mut connection, body.as_ref()).await {
            Ok(()) => break,
            // Nothing reached an upstream that closed the idle connection: another one.
            Err(Unsent) if reused => {
                let head = std::mem::take(&mut connection.0.write);
                connection = connect(&client, &authority, key).await?;
                connection.0.write = head;
                reused = false;
            }
            Err(Unsent) => return Err(SendError::Closed),
        }
    }
    let parsed = loop {
        match h1::parse_response_head(&mut connection.0.read, &method) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) => {}
            Err(error) => return Err(SendError::Protocol(error)),
        }
        match connection.read_more().await {
            Ok(0) if connection.0.read.is_empty() => return Err(SendError::Closed),
            Ok(0) => return Err(SendError::Protocol(h1::ProtocolError::IncompleteHead)),
            Ok(_) => {}
            Err(error) => return Err(SendError::Io(error)),
        }
    };
    let body = LeanBody::new(connection, parsed.framing, parsed.keep_alive);
    Ok(parsed.response.map(|()| UpstreamBody::lean(body)))
}

/// The request could not be written (or only partly).
struct Unsent;

/// Writes the request head (and the body, when it did not fit in the head's write). A
/// failure before the first byte is [`Unsent`]; after it, the request may have reached
/// the upstream, and the failure is a failed exchange (the caller's retry rules decide).
async fn write_request(
    connection: &mut LeanConnection,
    body: Option<&Bytes>,
) -> Result<(), Unsent> {
    let state = &mut *connection.0;
    let written = match state.stream.write(&state.write).await {
        Ok(0) | Err(_) => return Err(Unsent),
        Ok(written) => written,
    };
    let rest = async {
        state.stream.write_all(&state.write[written..]).await?;
        if let Some(body) = body {
            state.stream.write_all(body).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    // Past the first byte the request may have been seen: no silent resend. The
    // response read that follows reports the closed connection.
    let _ = rest.await;
    state.write.clear();
    Ok(())
}

async fn connect(
    client: &Arc<InTaskClient>,
    authority: &Authority,
    key: ListKey,
) -> Result<LeanConnection, SendError> {
    let stream = client.connect_tcp(authority).await?;
    Ok(LeanConnection::new(stream, key, Arc::clone(client)))
}

/// A response body read off its connection by the task that polls it; the connection
/// goes back to the idle list when the body has ended.
pub(super) struct LeanBody {
    /// Until the body ends (or fails).
    connection: Option<LeanConnection>,
    framing: BodyFraming,
    keep_alive: bool,
}

/// What a poll of the body found in the bytes it had.
enum Step {
    /// Data, and whether it is the body's last.
    Data(Bytes, bool),
    Trailers(HeaderMap),
    End,
    Fail(BodyError),
    /// More bytes are needed.
    Read,
}

#[derive(Debug)]
enum BodyFraming {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Ended,
}

impl LeanBody {
    fn new(connection: LeanConnection, framing: Framing, keep_alive: bool) -> Self {
        let framing = match framing {
            Framing::Empty => BodyFraming::Ended,
            Framing::Length(length) => BodyFraming::Length(length),
            Framing::Chunked => BodyFraming::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => BodyFraming::UntilClose,
        };
        let mut body = Self {
            connection: Some(connection),
            framing,
            keep_alive,
        };
        if matches!(body.framing, BodyFraming::Ended) {
            body.end();
        }
        body
    }

    /// The body has been read to its end: the connection may take another request.
    fn end(&mut self) {
        self.framing = BodyFraming::Ended;
        if let Some(connection) = self.connection.take()
            && self.keep_alive
        {
            connection.release();
        }
    }

    /// The body failed: its connection closes.
    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.framing = BodyFraming::Ended;
        self.connection = None;
        Poll::Ready(Some(Err(error)))
    }

    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let read = &mut connection.0.read;
            let step = match &mut self.framing {
                BodyFraming::Ended => return Poll::Ready(None),
                BodyFraming::Length(left) if !read.is_empty() => {
                    let take = (*left).min(read.len() as u64) as usize;
                    let data = read.split_to(take).freeze();
                    *left -= take as u64;
                    Step::Data(data, *left == 0)
                }
                BodyFraming::Chunked(decoder) => match decoder.decode(read) {
                    Ok(Decoded::Data(data)) => Step::Data(data, false),
                    Ok(Decoded::Trailers(trailers)) => Step::Trailers(trailers),
                    Ok(Decoded::End) => Step::End,
                    Ok(Decoded::NeedMore) => Step::Read,
                    Err(error) => Step::Fail(BodyError::Protocol(error)),
                },
                BodyFraming::UntilClose if !read.is_empty() => {
                    Step::Data(read.split().freeze(), false)
                }
                BodyFraming::Length(_) | BodyFraming::UntilClose => Step::Read,
            };
            match step {
                Step::Data(data, last) => {
                    if last {
                        self.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(trailers) => {
                    self.end();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Step::End => {
                    self.end();
                    return Poll::Ready(None);
                }
                Step::Fail(error) => return self.fail(error),
                Step::Read => {}
            }
            match std::task::ready!(connection.poll_read_more(cx)) {
                Ok(0) if matches!(self.framing, BodyFraming::UntilClose) => {
                    // The end of the stream is the end of this body.
                    self.framing = BodyFraming::Ended;
                    self.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return self.fail(BodyError::Incomplete),
                Ok(_) => {}
                Err(error) => return self.fail(BodyError::Read(error)),
            }
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        matches!(self.framing, BodyFraming::Ended | BodyFraming::Length(0))
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Ended => SizeHint::with_exact(0),
            BodyFraming::Length(left) => SizeHint::with_exact(left),
            BodyFraming::Chunked(_) | BodyFraming::UntilClose => SizeHint::default(),
        }
    }
}
