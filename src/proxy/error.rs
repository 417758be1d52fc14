//! Why a request could not be proxied, and the response the client gets for it.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use super::body::ResponseBody;
use crate::config::GrpcCode;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("CONNECT is not supported")]
    ConnectNotSupported,
    #[error("transfer coding other than chunked")]
    UnsupportedTransferEncoding,
    #[error("the client's request body was malformed or cut short")]
    ClientBody(#[source] BoxError),
    #[error("the client's request body arrived too slowly")]
    ClientBodyTimeout,
    #[error("the request body is over the route's limit of {0} bytes")]
    BodyTooLarge(u64),
    #[error("more than {0} request header fields")]
    TooManyHeaders(usize),
    #[error("no route matches")]
    NoRoute,
    #[error("rate limited for {0:?}")]
    RateLimited(Duration),
    #[error("the client's address may not use this route")]
    Forbidden,
    #[error("no endpoint available in pool {0:?}")]
    NoEndpoint(String),
    #[error("pool {0:?} is at its in-flight limit")]
    AtCapacity(String),
    #[error("upstream connect timed out")]
    ConnectTimeout(#[source] BoxError),
    #[error("upstream connect failed")]
    Connect(#[source] BoxError),
    #[error("upstream did not answer within {0:?}")]
    ResponseTimeout(Duration),
    #[error("the call's deadline ({0:?}, grpc-timeout) passed")]
    Deadline(Duration),
    #[error("upstream request failed")]
    Upstream(#[source] BoxError),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::TooManyHeaders(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::NoEndpoint(_) | ProxyError::AtCapacity(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ConnectTimeout(_)
            | ProxyError::ResponseTimeout(_)
            | ProxyError::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The short text clients see; it names no internal address.
    fn public_reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) => why,
            ProxyError::ConnectNotSupported => "CONNECT is not supported",
            ProxyError::UnsupportedTransferEncoding => {
                "only the chunked transfer coding is supported"
            }
            ProxyError::ClientBody(_) => "request body malformed or incomplete",
            ProxyError::ClientBodyTimeout => "request body too slow",
            ProxyError::BodyTooLarge(_) => "request body too large",
            ProxyError::TooManyHeaders(_) => "too many header fields",
            ProxyError::NoRoute => "no route for this host and path",
            ProxyError::RateLimited(_) => "rate limit exceeded",
            ProxyError::Forbidden => "not allowed from this address",
            ProxyError::NoEndpoint(_) => "no upstream endpoint available",
            ProxyError::AtCapacity(_) => "upstream at capacity",
            ProxyError::ConnectTimeout(_) => "upstream connect timed out",
            ProxyError::Connect(_) => "upstream connect failed",
            ProxyError::ResponseTimeout(_) => "upstream timed out",
            ProxyError::Deadline(_) => "deadline exceeded",
            ProxyError::Upstream(_) => "upstream request failed",
        }
    }

    /// Classifies a client error from the upstream connection pool. A failure of the
    /// request body being streamed is the client's (400), not the upstream's.
    pub fn from_client(err: crate::upstream::SendError) -> Self {
        if source_chain_has::<super::body::BodyTooSlow>(&err) {
            return ProxyError::ClientBodyTimeout;
        }
        if let Some(limit) = find_in_chain::<super::body::BodyTooLarge>(&err) {
            return ProxyError::BodyTooLarge(limit.0);
        }
        if source_chain_has_body_error(&err) {
            return ProxyError::ClientBody(err.into());
        }
        if err.is_connect() {
            if source_chain_has_timeout(&err) {
                ProxyError::ConnectTimeout(err.into())
            } else {
                ProxyError::Connect(err.into())
            }
        } else {
            ProxyError::Upstream(err.into())
        }
    }

    pub fn to_response(&self) -> Response<ResponseBody> {
        let status = self.status();
        let text = format!(
            "{} {}: {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.public_reason()
        );
        let mut response = Response::new(ResponseBody::full(text));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ProxyError::RateLimited(wait) = self {
            // Whole seconds, rounded up: a client that waits this long gets through.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::ClientBody(_)
                | ProxyError::ClientBodyTimeout
                | ProxyError::BodyTooLarge(_)
                | ProxyError::UnsupportedTransferEncoding
        ) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The gRPC status a gRPC client gets for this failure: the gRPC spec's mapping of
    /// HTTP statuses, made precise where weir knows more (a rate limit is
    /// RESOURCE_EXHAUSTED, a passed deadline DEADLINE_EXCEEDED).
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::ClientBody(_)
            | ProxyError::UnsupportedTransferEncoding
            | ProxyError::TooManyHeaders(_) => GrpcCode::Internal,
            ProxyError::ConnectNotSupported | ProxyError::NoRoute => GrpcCode::Unimplemented,
            ProxyError::BodyTooLarge(_) | ProxyError::RateLimited(_) => GrpcCode::ResourceExhausted,
            ProxyError::Forbidden => GrpcCode::PermissionDenied,
            ProxyError::ClientBodyTimeout
            | ProxyError::ResponseTimeout(_)
            | ProxyError::Deadline(_) => GrpcCode::DeadlineExceeded,
            ProxyError::NoEndpoint(_)
            | ProxyError::AtCapacity(_)
            | ProxyError::ConnectTimeout(_)
            | ProxyError::Connect(_)
            | ProxyError::Upstream(_) => GrpcCode::Unavailable,
        }
    }

    /// The answer to a gRPC client: HTTP 200 with the status alone (no message), as gRPC
    /// clients read weir's failures; the HTTP status would only be mapped back roughly.
    pub fn to_grpc_response(&self) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::empty());
        *response.headers_mut() =
            super::grpc::status_response_headers(self.grpc_code(), self.public_reason());
        if let ProxyError::RateLimited(wait) = self {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }

    /// Full cause chain for logs.
    pub fn detail(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(err) = source {
            out.push_str(": ");
            out.push_str(&err.to_string());
            source = err.source();
        }
        out
    }
}

fn source_chain_has<T: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
) -> bool {
    find_in_chain::<T>(err).is_some()
}

fn find_in_chain<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

fn source_chain_has_body_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(hyper_error) = e.downcast_ref::<hyper::Error>()
            && hyper_error.is_user()
        {
            return true;
        }
        current = e.source();
    }
    false
}

fn source_chain_has_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        current = e.source();
    }
    false
}
