//! Response bodies sent to clients: streamed from an upstream, or a short one weir made.
//! (Request bodies going upstream live in `upstream::request_body`, where the client that
//! sends them is; they are re-exported here.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use pin_project_lite::pin_project;

use super::conn::ConnRequestGuard;
use super::error::BoxError;
use super::grpc::{CallEnd, head_status, status_trailers};
use crate::config::GrpcCode;
pub use crate::upstream::request_body::{BodyPace, BodyTooLarge, BodyTooSlow, UpstreamRequestBody};
use crate::upstream::{InFlightGuard, Outcome, PoolSlot, UpstreamBody};

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

/// A response body compressed on its way (see [`super::compress`]).
pub type EncodedBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

pin_project! {
    /// Streams frames as they arrive; nothing is collected.
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Upstream {
            #[pin]
            inner: UpstreamBody,
            guards: Option<RequestGuards>,
            tee: Option<Box<Tee>>,
            // A gRPC call's end, told by the trailers' status.
            call_end: Option<Box<CallEnd>>,
            // A gRPC call's deadline, which a stream must not outlive.
            deadline: Option<Box<StreamDeadline>>,
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
    pub fn upstream(inner: UpstreamBody, guards: RequestGuards) -> Self {
        ResponseBody::Upstream {
            inner,
            guards: Some(guards),
            tee: None,
            call_end: None,
            deadline: None,
        }
    }

    /// Ends the stream at `at` with a DEADLINE_EXCEEDED status in its trailers, if the
    /// upstream has not ended it by then (gRPC calls with a `grpc-timeout`).
    pub fn with_deadline(mut self, at: tokio::time::Instant) -> Self {
        if let ResponseBody::Upstream { deadline, .. } = &mut self {
            *deadline = Some(Box::new(StreamDeadline {
                timer: Box::pin(tokio::time::sleep_until(at)),
                passed: false,
            }));
        }
        self
    }

    /// Hands `end` the call's status when the trailers bring it; a body that cannot
    /// (weir's own, or one that has ended) gives `end` back beside itself.
    pub fn with_call_end(mut self, end: CallEnd) -> (Self, Option<CallEnd>) {
        if self.is_end_stream() {
            return (self, Some(end));
        }
        match &mut self {
            ResponseBody::Upstream { call_end, .. } => {
                *call_end = Some(Box::new(end));
                (self, None)
            }
            _ => (self, Some(end)),
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
                call_end,
                deadline,
            } => {
                if deadline.as_ref().is_some_and(|d| d.passed) {
                    return Poll::Ready(None);
                }
                let polled = inner.as_mut().poll_frame(cx);
                if polled.is_pending()
                    && let Some(stream_deadline) = deadline.as_mut()
                    && stream_deadline.poll_passed(cx)
                {
                    // The endpoint is not to blame: the verdict stays what the head said.
                    guards.take();
                    tee.take();
                    if let Some(end) = call_end.take() {
                        end.finish(Some(GrpcCode::DeadlineExceeded.number()));
                    }
                    let trailers = status_trailers(GrpcCode::DeadlineExceeded, "deadline exceeded");
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                feed_tee(tee, &polled, || inner.is_end_stream());
                if call_end.is_some() {
                    match &polled {
                        Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                            let status = frame.trailers_ref().and_then(head_status);
                            if let Some(end) = call_end.take() {
                                end.finish(status);
                            }
                        }
                        Poll::Ready(None | Some(Err(_))) => {
                            if let Some(end) = call_end.take() {
                                end.finish(None);
                            }
                        }
                        _ => {}
                    }
                }
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
            ResponseBody::Upstream {
                deadline: Some(d), ..
            } if d.passed => true,
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

/// A stream's deadline: once passed, the body ends with the status in trailers.
pub struct StreamDeadline {
    timer: Pin<Box<tokio::time::Sleep>>,
    passed: bool,
}

impl StreamDeadline {
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timer.as_mut().poll(cx).is_ready() {
            self.passed = true;
        }
        self.passed
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
        // Copied even when it came in one chunk: a chunk is a slice of the connection's
        // read buffer and would keep all of it (see `cache::object::owned_body`).
        let mut whole = bytes::BytesMut::with_capacity(self.size);
        for chunk in self.chunks {
            whole.extend_from_slice(&chunk);
        }
        (self.on_complete)(whole.freeze());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::{ResponseBody, Tee};

    /// The cache's copy of a body that arrived as one slice of a connection's read buffer
    /// holds bytes of its own, not the buffer.
    #[tokio::test]
    async fn the_cache_copy_does_not_keep_the_read_buffer() {
        let read_buffer = Bytes::from(vec![b'x'; 16 * 1024]);
        let chunk = read_buffer.slice(100..1124);
        let kept = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&kept);
        let tee = Tee::new(1 << 20, move |body| {
            *sink.lock().unwrap() = Some(body);
        });
        let body = ResponseBody::encoded(Full::new(chunk)).with_tee(tee);
        let served = body.collect().await.unwrap().to_bytes();
        assert_eq!(served.len(), 1024);
        drop(served);
        let copy = kept
            .lock()
            .unwrap()
            .take()
            .expect("the body was handed to the cache");
        assert_eq!(copy, read_buffer.slice(100..1124));
        assert!(
            read_buffer.is_unique(),
            "the cache's copy still shares the read buffer"
        );
    }
}
