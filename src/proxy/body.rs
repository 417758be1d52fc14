//! Response bodies sent to clients: streamed from an upstream, or a short one weir made.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::conn::ConnRequestGuard;
use crate::upstream::{InFlightGuard, PoolSlot};

/// What stays alive until the client has the whole response (or went away).
#[derive(Debug)]
pub struct RequestGuards {
    pub endpoint: InFlightGuard,
    pub pool: PoolSlot,
    pub connection: ConnRequestGuard,
}

pin_project! {
    /// A request body on its way upstream: the client's stream as it arrives, or bytes
    /// weir holds (empty or buffered) so that the request can be sent again on a retry.
    #[project = UpstreamRequestBodyProj]
    pub enum UpstreamRequestBody {
        Streaming {
            #[pin]
            inner: Incoming,
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
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            UpstreamRequestBodyProj::Streaming { inner } => inner.poll_frame(cx),
            UpstreamRequestBodyProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamRequestBody::Streaming { inner } => inner.is_end_stream(),
            UpstreamRequestBody::Buffered { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamRequestBody::Streaming { inner } => inner.size_hint(),
            UpstreamRequestBody::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

pin_project! {
    /// Streams frames as they arrive; nothing is collected.
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Upstream {
            #[pin]
            inner: Incoming,
            guards: Option<RequestGuards>,
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
        }
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

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ResponseBodyProj::Upstream { inner, guards } => {
                let polled = inner.poll_frame(cx);
                match &polled {
                    // End or failure: the request is over for the endpoint and connection.
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                        guards.take();
                    }
                    _ => {}
                }
                polled
            }
            ResponseBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
            ResponseBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
            ResponseBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
