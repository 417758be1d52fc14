//! Request bodies on their way upstream: the client's stream under a pace deadline and a
//! size limit, or bytes held so that a retry can send them again. Here, beside the HTTP
//! client that sends them, so that `upstream` needs nothing from `proxy`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
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
