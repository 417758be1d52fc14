//! Response bodies sent to clients: streamed from an upstream, or a short one weir made.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::conn::ConnRequestGuard;
use super::error::BoxError;
use crate::upstream::{InFlightGuard, Outcome, PoolSlot};

/// What stays alive until the client has the whole response (or went away).
#[derive(Debug)]
pub struct RequestGuards {
    pub endpoint: InFlightGuard,
    pub pool: PoolSlot,
    /// Absent for requests weir makes itself (cache refreshes).
    pub connection: Option<ConnRequestGuard>,
    /// The breaker's verdict on the attempt, given when the body ends (counters and
    /// latency were recorded at the head): a response whose body the upstream breaks off
    /// counts as a failure, so an endpoint that resets mid-body gets ejected like one that
    /// resets before the head.
    pub pending: Option<PendingVerdict>,
}

#[derive(Debug)]
pub struct PendingVerdict {
    /// What the head said (false for a 5xx).
    pub head_ok: bool,
    /// Time to the response head.
    pub elapsed: std::time::Duration,
    /// The upstream broke the body off.
    pub body_failed: bool,
}

impl Drop for RequestGuards {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            // A client that leaves early is not the endpoint's failure.
            if pending.body_failed {
                self.endpoint
                    .endpoint()
                    .observe(Outcome::Failed, pending.elapsed);
            }
            self.pool
                .pool()
                .judge(&mut self.endpoint, pending.head_ok && !pending.body_failed);
        }
    }
}

/// A client's request body was too slow: see [`BodyPace`].
#[derive(Debug, thiserror::Error)]
#[error("request body arrived too slowly")]
pub struct BodyTooSlow;

/// A client's request body grew past the route's limit (its value).
#[derive(Debug, thiserror::Error)]
#[error("request body over {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The body's deadline, mod_reqtimeout style: `timeout` from the start, extended by one
/// second per `min_rate` bytes received. A trickle (slowloris on the body) runs out of
/// time; a slow but steady upload does not.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    pub timeout: std::time::Duration,
    pub min_rate: u64,
}

impl BodyPace {
    /// The deadline after `received` bytes of a body that started at `start`.
    pub fn deadline(&self, start: tokio::time::Instant, received: u64) -> tokio::time::Instant {
        let earned = if self.min_rate == 0 {
            std::time::Duration::MAX / 4
        } else {
            std::time::Duration::from_secs_f64(received as f64 / self.min_rate as f64)
        };
        start + self.timeout.saturating_add(earned)
    }
}

pin_project! {
    /// A request body on its way upstream: the client's stream as it arrives (under a
    /// pace deadline), or bytes weir holds (empty or buffered) so that the request can be
    /// sent again on a retry.
    #[project = UpstreamRequestBodyProj]
    pub enum UpstreamRequestBody {
        Streaming {
            #[pin]
            inner: Incoming,
            pace: BodyPace,
            start: tokio::time::Instant,
            received: u64,
            // Largest body allowed (0 = no limit).
            limit: u64,
            timer: Pin<Box<tokio::time::Sleep>>,
        },
        Buffered {
            data: Option<Bytes>,
        },
    }
}

impl UpstreamRequestBody {
    pub fn buffered(data: Bytes) -> Self {
        UpstreamRequestBody::Buffered {
            data: (!data.is_empty()).then_some(data),
        }
    }

    pub fn streaming(inner: Incoming, pace: BodyPace, limit: u64) -> Self {
        let start = tokio::time::Instant::now();
        UpstreamRequestBody::Streaming {
            inner,
            pace,
            start,
            received: 0,
            limit,
            timer: Box::pin(tokio::time::sleep_until(pace.deadline(start, 0))),
        }
    }
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            UpstreamRequestBodyProj::Streaming {
                inner,
                pace,
                start,
                received,
                limit,
                timer,
            } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        *received += data.len() as u64;
                        if *limit > 0 && *received > *limit {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*limit)))));
                        }
                        timer.as_mut().reset(pace.deadline(*start, *received));
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(BoxError::from))),
                Poll::Pending => match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow)))),
                    Poll::Pending => Poll::Pending,
                },
            },
            UpstreamRequestBodyProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamRequestBody::Streaming { inner, .. } => inner.is_end_stream(),
            UpstreamRequestBody::Buffered { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamRequestBody::Streaming { inner, .. } => inner.size_hint(),
            UpstreamRequestBody::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// A response body compressed on its way (see [`super::compress`]).
pub type EncodedBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

pin_project! {
    /// Streams frames as they arrive; nothing is collected.
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Upstream {
            #[pin]
            inner: Incoming,
            guards: Option<RequestGuards>,
            tee: Option<Box<Tee>>,
        },
        Encoded {
            inner: EncodedBody,
            tee: Option<Box<Tee>>,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

impl ResponseBody {
    pub fn upstream(inner: Incoming, guards: RequestGuards) -> Self {
        ResponseBody::Upstream {
            inner,
            guards: Some(guards),
            tee: None,
        }
    }

    /// Any body with our frame type, e.g. a compressed one.
    pub fn encoded<B>(inner: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ResponseBody::Encoded {
            inner: Box::pin(inner.map_err(Into::into)),
            tee: None,
        }
    }

    /// Copies the body for the cache as it streams (streamed bodies only). A body that has
    /// already ended (a 204, an empty 200) is never polled by hyper, so its copy is handed
    /// over at once.
    pub fn with_tee(mut self, new: Tee) -> Self {
        if self.is_end_stream() {
            new.finish();
            return self;
        }
        if let ResponseBody::Upstream { tee, .. } | ResponseBody::Encoded { tee, .. } = &mut self {
            *tee = Some(Box::new(new));
        }
        self
    }

    /// Whether the cache is still copying this body (it gives up past its size limit).
    pub fn is_teeing(&self) -> bool {
        matches!(
            self,
            ResponseBody::Upstream { tee: Some(_), .. }
                | ResponseBody::Encoded { tee: Some(_), .. }
        )
    }

    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ResponseBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }

    pub fn empty() -> Self {
        ResponseBody::Full { data: None }
    }
}

/// Feeds the cache's copy from a polled frame; finishes it at the end of the body and
/// drops it on a failure.
fn feed_tee<E>(
    tee: &mut Option<Box<Tee>>,
    polled: &Poll<Option<Result<Frame<Bytes>, E>>>,
    ended: impl FnOnce() -> bool,
) {
    match polled {
        Poll::Ready(None) => {
            if let Some(tee) = tee.take() {
                tee.finish();
            }
        }
        Poll::Ready(Some(Err(_))) => {
            tee.take();
        }
        Poll::Ready(Some(Ok(frame))) => {
            if let (Some(data), Some(copy)) = (frame.data_ref(), tee.as_mut())
                && !copy.push(data)
            {
                tee.take();
            }
            // hyper stops polling a body that says it has ended.
            if tee.is_some()
                && ended()
                && let Some(tee) = tee.take()
            {
                tee.finish();
            }
        }
        Poll::Pending => {}
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ResponseBodyProj::Upstream {
                mut inner,
                guards,
                tee,
            } => {
                let polled = inner.as_mut().poll_frame(cx);
                feed_tee(tee, &polled, || inner.is_end_stream());
                // End or failure: the request is over for the endpoint and connection.
                if let Poll::Ready(Some(Err(_))) = &polled
                    && let Some(pending) = guards.as_mut().and_then(|g| g.pending.as_mut())
                {
                    pending.body_failed = true;
                }
                if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    guards.take();
                }
                polled.map(|frame| frame.map(|r| r.map_err(BoxError::from)))
            }
            ResponseBodyProj::Encoded { inner, tee } => {
                let polled = inner.as_mut().poll_frame(cx);
                feed_tee(tee, &polled, || inner.is_end_stream());
                polled
            }
            ResponseBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
            ResponseBody::Encoded { inner, .. } => inner.is_end_stream(),
            ResponseBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
            ResponseBody::Encoded { inner, .. } => inner.size_hint(),
            ResponseBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// The cache's copy of a response body: collected as it streams to the client and
/// handed over whole when the body ends normally. Dropped (nothing stored) when the body
/// fails, the client goes away, or it grows past `limit`.
pub struct Tee {
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    on_complete: Box<dyn FnOnce(Bytes) + Send + Sync>,
}

impl Tee {
    pub fn new(limit: usize, on_complete: impl FnOnce(Bytes) + Send + Sync + 'static) -> Self {
        Self {
            chunks: Vec::new(),
            size: 0,
            limit,
            on_complete: Box::new(on_complete),
        }
    }

    /// Keeps a copy of `data`; `false` once the body is too large to keep.
    fn push(&mut self, data: &Bytes) -> bool {
        self.size += data.len();
        if self.size > self.limit {
            return false;
        }
        self.chunks.push(data.clone());
        true
    }

    fn finish(self) {
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut whole = bytes::BytesMut::with_capacity(self.size);
                for chunk in self.chunks {
                    whole.extend_from_slice(&chunk);
                }
                whole.freeze()
            }
        };
        (self.on_complete)(body);
    }
}
