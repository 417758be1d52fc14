//! Request bodies on their way upstream: the client's stream under a pace deadline and a
//! size limit, or bytes held so that a retry can send them again. Here, beside the HTTP
//! client that sends them, so that `upstream` needs nothing from `proxy`.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// Where a streamed body's copy lands once the body has ended: complete bytes for a
/// retry to send again. Empty while the body streams, and for good when the body outgrew
/// the copy's limit or carried trailers.
pub type ReplayCopy = Arc<OnceLock<Bytes>>;

/// A copy being made of a streamed body, up to `limit` bytes.
#[derive(Debug)]
pub struct CopyInProgress {
    buffer: BytesMut,
    limit: u64,
    target: ReplayCopy,
}

impl CopyInProgress {
    pub fn new(limit: u64, target: ReplayCopy) -> Self {
        Self {
            buffer: BytesMut::new(),
            limit,
            target,
        }
    }

    /// Adds `data`; `false` once the copy is over its limit (it is then dropped).
    fn add(&mut self, data: &Bytes) -> bool {
        if (self.buffer.len() + data.len()) as u64 > self.limit {
            return false;
        }
        self.buffer.extend_from_slice(data);
        true
    }

    fn finish(self) {
        let _ = self.target.set(self.buffer.freeze());
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
            // A copy kept for a retry (gRPC calls), if one is wanted.
            copy: Option<CopyInProgress>,
        },
        Buffered {
            data: Option<Bytes>,
        },
    }
}

impl UpstreamRequestBody {
    /// The whole body when weir holds it (`Some(None)`: no body), `None` when it streams.
    pub fn held(&self) -> Option<Option<&Bytes>> {
        match self {
            UpstreamRequestBody::Buffered { data } => Some(data.as_ref()),
            UpstreamRequestBody::Streaming { .. } => None,
        }
    }

    pub fn buffered(data: Bytes) -> Self {
        UpstreamRequestBody::Buffered {
            data: (!data.is_empty()).then_some(data),
        }
    }

    pub fn streaming(inner: Incoming, pace: BodyPace, limit: u64) -> Self {
        Self::streaming_with_copy(inner, pace, limit, None)
    }

    /// As [`Self::streaming`], keeping a copy that `copy` receives if the body ends
    /// within the copy's limit.
    pub fn streaming_with_copy(
        inner: Incoming,
        pace: BodyPace,
        limit: u64,
        copy: Option<CopyInProgress>,
    ) -> Self {
        let start = tokio::time::Instant::now();
        UpstreamRequestBody::Streaming {
            inner,
            pace,
            start,
            received: 0,
            limit,
            timer: Box::pin(tokio::time::sleep_until(pace.deadline(start, 0))),
            copy,
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
                mut inner,
                pace,
                start,
                received,
                limit,
                timer,
                copy,
            } => match inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        *received += data.len() as u64;
                        if *limit > 0 && *received > *limit {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*limit)))));
                        }
                        timer.as_mut().reset(pace.deadline(*start, *received));
                        if copy.as_mut().is_some_and(|c| !c.add(data)) {
                            *copy = None;
                        }
                    } else {
                        // Trailers are not kept: such a body is not replayed.
                        *copy = None;
                    }
                    // The client (hyper) stops polling once the body says it has ended.
                    if inner.is_end_stream()
                        && let Some(done) = copy.take()
                    {
                        done.finish();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => {
                    if let Some(done) = copy.take() {
                        done.finish();
                    }
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(error))) => {
                    *copy = None;
                    Poll::Ready(Some(Err(BoxError::from(error))))
                }
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
