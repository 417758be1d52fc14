//! HTTP/1.1 as weir's own upstream client speaks it (see [`super::lean`]): the request
//! head written straight from the proxy's header map, the response head parsed with
//! httparse into an `http` head whose values share the bytes read, and the response
//! body's framing (RFC 9112 §6.3) with a strict chunked decoder. No I/O here, so that
//! every rule is tested byte by byte.
//!
//! The rules are hyper's client rules (weir used hyper's client before), made explicit:
//! 1xx answers other than 101 are skipped, HEAD answers and 204/304 have no body,
//! `Transfer-Encoding` wins over `Content-Length` (which is then removed, and the
//! connection not reused: such a message may be a smuggling attempt), differing or
//! malformed `Content-Length` values fail, and a body with neither ends with the
//! connection.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

/// Largest response head accepted (nginx fails past 4–8 KiB by default; hyper's client
/// took about 400 KiB). A larger one fails the exchange (502).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a response head (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Largest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most trailer fields.
const MAX_TRAILERS: usize = 64;

/// An upstream broke HTTP/1.1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the connection closed in the middle of the response head")]
    IncompleteHead,
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("invalid status code")]
    Status,
    #[error("invalid header field in the response head")]
    Header,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    #[error("malformed trailers")]
    Trailers,
}

/// Writes the head of a request with a body of `body_len` bytes (`0`: none) into `out`:
/// request line, the header fields as they are in `headers` (`Transfer-Encoding` and
/// `Content-Length` left out), then the body's framing.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body_len: usize,
) {
    out.reserve(64 + headers.len() * 32);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in headers {
        if name == TRANSFER_ENCODING {
            continue;
        }
        if name == CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // An empty body keeps the client's explicit `Content-Length: 0` (a POST without a
    // body says so), and adds nothing otherwise, as hyper did.
    if body_len > 0 || had_length {
        out.extend_from_slice(b"content-length: ");
        let mut digits = [0; 20];
        out.extend_from_slice(crate::header_maps::decimal(body_len as u64, &mut digits));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304, `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes the connection.
    UntilClose,
}

/// A response head read off a connection.
#[derive(Debug)]
pub struct ParsedHead {
    pub response: Response<()>,
    pub framing: Framing,
    /// Whether the connection may carry another request once this response has ended.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buffer`, taking its bytes out (skipped 1xx
/// heads too). `None`: the head is not complete yet.
///
/// The head's end is found first, so that its bytes can be split off and shared by the
/// header values while httparse reads them: no table of offsets, and httparse's field
/// array is left uninitialised (zeroing 100 fields cost more than parsing a head).
pub fn parse_response_head(
    buffer: &mut BytesMut,
    method: &Method,
) -> Result<Option<ParsedHead>, ProtocolError> {
    loop {
        let Some(length) = head_length(buffer) else {
            if buffer.len() > MAX_HEAD_BYTES {
                return Err(ProtocolError::HeadTooLarge);
            }
            // Incomplete: httparse still says at once whether what is there is no HTTP.
            if !buffer.is_empty() {
                parse_fields(buffer)?;
            }
            return Ok(None);
        };
        if length > MAX_HEAD_BYTES {
            return Err(ProtocolError::HeadTooLarge);
        }
        let head = buffer.split_to(length).freeze();
        let mut fields =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &head,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(parsed_length)) if parsed_length == length => {}
            Ok(_) => return Err(ProtocolError::Header),
            Err(error) => return Err(ProtocolError::Head(error)),
        }
        let status =
            StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|_| ProtocolError::Status)?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: the final answer follows.
            continue;
        }
        let version = match parsed.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        // Usually the emptied map of a request this thread is done with.
        let mut headers = crate::header_maps::take(parsed.headers.len());
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        let mut fields = FramingFields::default();
        for field in parsed.headers.iter() {
            let name = crate::header_maps::field_name(field.name.as_bytes())
                .map_err(|_| ProtocolError::Header)?;
            let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value))
                .map_err(|_| ProtocolError::Header)?;
            if name == CONNECTION {
                let tokens = ConnectionTokens::of(&value);
                // Once any `Connection` line says close, a later keep-alive does not undo it.
                if saw_close || tokens.close {
                    saw_close = true;
                    keep_alive = false;
                } else if version == Version::HTTP_10 {
                    keep_alive = tokens.keep_alive;
                }
                if !tokens.other {
                    // Only this connection's management, acted on just now: it names no
                    // field, and no proxy passes it on (leaving it out saves the proxy
                    // removing it again, ~1 000 instructions of a proxied request).
                    continue;
                }
            } else if name == CONTENT_LENGTH {
                fields.length = fields.length.and(&value);
            } else if name == TRANSFER_ENCODING {
                fields.transfer_encoding = true;
            }
            headers.append(name, value);
        }
        let framing = framing(
            status,
            method,
            version,
            fields,
            &mut headers,
            &mut keep_alive,
        )?;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(ParsedHead {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// The length of the head at the start of `bytes` (through its empty line, `CRLF` or a
/// bare `LF` as httparse takes it), if it is all there: the first line end followed by
/// `CRLF` or `LF`. Searched with memchr's vectorised finders (a byte-at-a-time scan was
/// 1 100 instructions per response, 3 % of a proxied request).
fn head_length(bytes: &[u8]) -> Option<usize> {
    static CRLF_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\r\n"));
    static LF_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));
    let crlf = CRLF_END.find(bytes);
    // A bare-LF end counts only if it comes first: look for it before the CRLF one.
    let before = crlf.map_or(bytes, |at| &bytes[..at + 1]);
    match LF_END.find(before) {
        Some(at) => Some(at + 2),
        None => crlf.map(|at| at + 3),
    }
}

/// Runs httparse over an incomplete head, for its errors.
fn parse_fields(bytes: &[u8]) -> Result<(), ProtocolError> {
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut parsed, bytes, &mut fields)
        .map(|_| ())
        .map_err(ProtocolError::Head)
}

/// The fields that frame a body, as the head's lines were read: the common head (one
/// `Content-Length`, no `Transfer-Encoding`) needs no lookup in its map afterwards.
#[derive(Debug, Default, Clone, Copy)]
struct FramingFields {
    transfer_encoding: bool,
    length: DeclaredLength,
}

/// What a head's `Content-Length` lines (lists included) say together.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum DeclaredLength {
    #[default]
    Absent,
    /// Every value is this length.
    Agreed(u64),
    /// A value is no length, or two disagree.
    Invalid,
}

impl DeclaredLength {
    /// This and the lengths one more `Content-Length` line lists.
    fn and(self, value: &HeaderValue) -> Self {
        let mut length = match self {
            Self::Absent => None,
            Self::Agreed(length) => Some(length),
            Self::Invalid => return Self::Invalid,
        };
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            // At most 19 digits: no overflow below.
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Self::Invalid;
            }
            let parsed = item
                .iter()
                .fold(0u64, |sum, digit| sum * 10 + u64::from(digit - b'0'));
            match length {
                Some(seen) if seen != parsed => return Self::Invalid,
                _ => length = Some(parsed),
            }
        }
        length.map_or(Self::Invalid, Self::Agreed)
    }
}

/// RFC 9112 §6.3 for a response to `method`, whose head had `fields`.
fn framing(
    status: StatusCode,
    method: &Method,
    version: Version,
    fields: FramingFields,
    headers: &mut HeaderMap,
    keep_alive: &mut bool,
) -> Result<Framing, ProtocolError> {
    match status.as_u16() {
        101 => return Err(ProtocolError::UnaskedUpgrade),
        204 | 304 => return Ok(Framing::Empty),
        _ => {}
    }
    if method == Method::HEAD {
        return Ok(Framing::Empty);
    }
    if fields.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(ProtocolError::TransferEncodingInHttp10);
        }
        if headers.remove(CONTENT_LENGTH).is_some() {
            // Both: the message is suspect. Its body is read as chunked, its length is not
            // passed on, and the connection carries nothing more.
            *keep_alive = false;
        }
        return Ok(if is_chunked_last(headers) {
            Framing::Chunked
        } else {
            *keep_alive = false;
            Framing::UntilClose
        });
    }
    match fields.length {
        DeclaredLength::Agreed(0) => return Ok(Framing::Empty),
        DeclaredLength::Agreed(length) => return Ok(Framing::Length(length)),
        DeclaredLength::Invalid => return Err(ProtocolError::ContentLength),
        DeclaredLength::Absent => {}
    }
    *keep_alive = false;
    Ok(Framing::UntilClose)
}

/// Whether `chunked` is the last transfer coding.
fn is_chunked_last(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|value| value.as_bytes().rsplit(|b| *b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// What one `Connection` line says: its `close` and `keep-alive` tokens (any case), and
/// whether it names anything else (fields to remove, `upgrade`).
#[derive(Debug, Default, PartialEq, Eq)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    other: bool,
}

impl ConnectionTokens {
    fn of(value: &HeaderValue) -> Self {
        let mut tokens = Self::default();
        for item in value.as_bytes().split(|b| *b == b',') {
            let token = item.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                tokens.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                tokens.keep_alive = true;
            } else if !token.is_empty() {
                tokens.other = true;
            }
        }
        tokens
    }
}

/// What the chunked decoder made of the bytes it had.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    /// The trailer section (the body has ended).
    Trailers(HeaderMap),
    /// The last chunk, and no trailers.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Decodes a chunked body as its bytes arrive.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of the next chunk's size.
    Size {
        size: u64,
        digits: u8,
        line: usize,
    },
    /// After the size: optional whitespace, extensions, CR.
    SizeTail {
        size: u64,
        line: usize,
    },
    /// Inside a chunk extension, up to CR.
    Extension {
        size: u64,
        line: usize,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    Trailers,
    Ended,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: ChunkState::Size {
                size: 0,
                digits: 0,
                line: 0,
            },
        }
    }
}

impl ChunkedDecoder {
    /// Takes what it can from the front of `buffer`.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        use ChunkState::*;
        loop {
            if self.state == Ended {
                return Ok(Decoded::End);
            }
            if let Data { left } = self.state {
                if buffer.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = left.min(buffer.len() as u64) as usize;
                let data = buffer.split_to(take).freeze();
                self.state = match left - take as u64 {
                    0 => DataCr,
                    left => Data { left },
                };
                return Ok(Decoded::Data(data));
            }
            if self.state == Trailers {
                return self.trailers(buffer);
            }
            let Some(&byte) = buffer.first() else {
                return Ok(Decoded::NeedMore);
            };
            buffer.advance(1);
            self.state = match self.state {
                Size { size, digits, line } => match hex_value(byte) {
                    Some(_) if digits == 16 => return Err(chunk_error("chunk size too large")),
                    Some(value) => Size {
                        size: size << 4 | u64::from(value),
                        digits: digits + 1,
                        line: line + 1,
                    },
                    None if digits == 0 => return Err(chunk_error("chunk size expected")),
                    None => after_size(byte, size, line + 1)?,
                },
                SizeTail { size, line } => after_size(byte, size, line + 1)?,
                Extension { size, line } => match byte {
                    _ if line + 1 > MAX_CHUNK_LINE => {
                        return Err(chunk_error("chunk extensions too long"));
                    }
                    b'\r' => SizeLf { size },
                    b'\n' => return Err(chunk_error("bare LF in a chunk extension")),
                    _ => Extension {
                        size,
                        line: line + 1,
                    },
                },
                SizeLf { size } => match byte {
                    b'\n' if size == 0 => Trailers,
                    b'\n' => Data { left: size },
                    _ => return Err(chunk_error("CRLF expected after the chunk size")),
                },
                DataCr => match byte {
                    b'\r' => DataLf,
                    _ => return Err(chunk_error("CRLF expected after the chunk data")),
                },
                DataLf => match byte {
                    b'\n' => Size {
                        size: 0,
                        digits: 0,
                        line: 0,
                    },
                    _ => return Err(chunk_error("CRLF expected after the chunk data")),
                },
                Data { .. } | Trailers | Ended => unreachable!("handled above"),
            };
        }
    }

    /// The trailer section after the last chunk: empty (`CRLF`) or fields up to `CRLFCRLF`.
    fn trailers(&mut self, buffer: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        if buffer.len() < 2 {
            return Ok(Decoded::NeedMore);
        }
        if buffer.starts_with(b"\r\n") {
            buffer.advance(2);
            self.state = ChunkState::Ended;
            return Ok(Decoded::End);
        }
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buffer.len() > MAX_TRAILER_BYTES {
                return Err(ProtocolError::Trailers);
            }
            return Ok(Decoded::NeedMore);
        };
        if end + 4 > MAX_TRAILER_BYTES {
            return Err(ProtocolError::Trailers);
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        let parsed = match httparse::parse_headers(&buffer[..end + 4], &mut fields) {
            Ok(httparse::Status::Complete((_, parsed))) => parsed,
            _ => return Err(ProtocolError::Trailers),
        };
        let mut trailers = HeaderMap::with_capacity(parsed.len());
        for field in parsed {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| ProtocolError::Trailers)?;
            let value =
                HeaderValue::from_bytes(field.value).map_err(|_| ProtocolError::Trailers)?;
            trailers.append(name, value);
        }
        buffer.advance(end + 4);
        self.state = ChunkState::Ended;
        Ok(Decoded::Trailers(trailers))
    }

    /// Whether the last chunk and the trailer section have been read.
    #[cfg(test)]
    fn is_ended(&self) -> bool {
        self.state == ChunkState::Ended
    }
}

/// The chunk-size line after its digits: whitespace, `;` extensions, or its CR.
fn after_size(byte: u8, size: u64, line: usize) -> Result<ChunkState, ProtocolError> {
    if line > MAX_CHUNK_LINE {
        return Err(chunk_error("chunk size line too long"));
    }
    match byte {
        b' ' | b'\t' => Ok(ChunkState::SizeTail { size, line }),
        b';' => Ok(ChunkState::Extension { size, line }),
        b'\r' => Ok(ChunkState::SizeLf { size }),
        _ => Err(chunk_error("invalid byte in the chunk size line")),
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

fn chunk_error(why: &'static str) -> ProtocolError {
    ProtocolError::Chunked(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], method: Method) -> Result<Option<ParsedHead>, ProtocolError> {
        let mut buffer = BytesMut::from(bytes);
        parse_response_head(&mut buffer, &method)
    }

    fn framing_of(bytes: &str) -> Result<(Framing, bool), ProtocolError> {
        let parsed = head(bytes.as_bytes(), Method::GET)?.expect("complete head");
        Ok((parsed.framing, parsed.keep_alive))
    }

    /// The head's end as a line-by-line reading finds it: the first line end followed
    /// by `LF` or `CRLF`.
    fn head_length_by_lines(bytes: &[u8]) -> Option<usize> {
        let mut from = 0;
        while let Some(at) = bytes[from..].iter().position(|b| *b == b'\n') {
            let after = from + at + 1;
            match bytes.get(after..) {
                Some([b'\n', ..]) => return Some(after + 1),
                Some([b'\r', b'\n', ..]) => return Some(after + 2),
                _ => from = after,
            }
        }
        None
    }

    #[test]
    fn the_head_ends_where_a_line_by_line_reading_ends_it() {
        let heads: [&[u8]; 7] = [
            b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody\n\nmore\r\n\r\n",
            b"HTTP/1.1 200 OK\nA: b\n\nbody\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\n\r\nbody",
            b"HTTP/1.1 200 OK\nA: b\r\n\nbody\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\nC: \rd\r\n\r\n",
            b"\n\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n\r",
        ];
        for head in heads {
            // Every prefix: incomplete heads too, and ends cut between their bytes.
            for end in 0..=head.len() {
                assert_eq!(
                    head_length(&head[..end]),
                    head_length_by_lines(&head[..end]),
                    "{:?}",
                    String::from_utf8_lossy(&head[..end])
                );
            }
        }
    }

    #[test]
    fn the_request_head_carries_the_map_and_frames_the_body() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("api.internal"));
        headers.append("x-tag", HeaderValue::from_static("a"));
        headers.append("x-tag", HeaderValue::from_static("b"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let mut out = Vec::new();
        encode_request_head(&mut out, &Method::POST, "/v1/items?q=1", &headers, 1234);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/items?q=1 HTTP/1.1\r\nhost: api.internal\r\nx-tag: a\r\nx-tag: b\r\n\
             content-length: 1234\r\n\r\n"
        );
    }

    #[test]
    fn an_empty_body_adds_a_length_only_where_the_client_sent_one() {
        let mut out = Vec::new();
        encode_request_head(&mut out, &Method::GET, "", &HeaderMap::new(), 0);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        out.clear();
        encode_request_head(&mut out, &Method::POST, "/", &headers, 0);
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn a_head_in_pieces_is_parsed_once_whole_and_shares_the_bytes_read() {
        let whole =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello";
        for split in 1..whole.len() - 5 {
            let mut buffer = BytesMut::from(&whole[..split]);
            assert!(
                parse_response_head(&mut buffer, &Method::GET)
                    .unwrap()
                    .is_none()
            );
            buffer.extend_from_slice(&whole[split..]);
            let parsed = parse_response_head(&mut buffer, &Method::GET)
                .unwrap()
                .unwrap();
            assert_eq!(parsed.response.status(), StatusCode::OK);
            assert_eq!(parsed.response.headers()["content-type"], "text/plain");
            assert_eq!(parsed.framing, Framing::Length(5));
            assert!(parsed.keep_alive);
            assert_eq!(&buffer[..], b"hello");
        }
    }

    #[test]
    fn informational_answers_are_skipped_and_101_refused() {
        let parsed = head(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(parsed.response.status(), StatusCode::NO_CONTENT);
        assert!(!parsed.response.headers().contains_key("link"));
        assert_eq!(
            head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", Method::GET).unwrap_err(),
            ProtocolError::UnaskedUpgrade
        );
        // Only a 1xx so far: wait for the final answer.
        assert!(
            head(b"HTTP/1.1 100 Continue\r\n\r\n", Method::GET)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use Framing::*;
        let ok = |s: &str| framing_of(s).unwrap();
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
            (Length(10), true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            (Empty, true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\ncontent-length: 7\r\n\r\n"),
            (Length(7), true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n"),
            (Length(9_999_999_999_999_999_999), true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 007\r\n\r\n"),
            (Length(7), true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            (Chunked, true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"),
            (Chunked, true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            (UntilClose, false)
        );
        assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n"), (UntilClose, false));
        assert_eq!(
            ok("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
            (Empty, true)
        );
        assert_eq!(ok("HTTP/1.1 304 Not Modified\r\n\r\n"), (Empty, true));
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n"),
            (Length(1), false)
        );
        assert_eq!(
            ok(
                "HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n"
            ),
            (Length(1), false)
        );
        assert_eq!(
            ok("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
            (Length(1), false)
        );
        assert_eq!(
            ok("HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 1\r\n\r\n"),
            (Length(1), true)
        );
        // A HEAD answer has no body whatever it announces.
        let parsed = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(parsed.framing, Empty);
    }

    #[test]
    fn a_connection_line_of_only_close_or_keep_alive_is_acted_on_and_left_out() {
        let names = |bytes: &str| {
            let parsed = head(bytes.as_bytes(), Method::GET).unwrap().unwrap();
            let connection: Vec<_> = parsed
                .response
                .headers()
                .get_all(CONNECTION)
                .iter()
                .map(|value| value.to_str().unwrap().to_owned())
                .collect();
            (parsed.keep_alive, connection)
        };
        let none = Vec::<String>::new();
        assert_eq!(
            names("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n"),
            (true, none.clone())
        );
        assert_eq!(
            names("HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 0\r\n\r\n"),
            (false, none.clone())
        );
        assert_eq!(
            names("HTTP/1.1 200 OK\r\nconnection: ,\r\ncontent-length: 0\r\n\r\n"),
            (true, none)
        );
        // A line naming fields stays for the proxy to remove them, whatever else it says;
        // a close on any line still closes.
        assert_eq!(
            names(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive, X-Hop\r\n\
                 content-length: 0\r\n\r\n"
            ),
            (false, vec!["keep-alive, X-Hop".to_owned()])
        );
        assert_eq!(
            names(
                "HTTP/1.0 200 OK\r\nConnection: Keep-Alive, x-trace\r\ncontent-length: 0\r\n\r\n"
            ),
            (true, vec!["Keep-Alive, x-trace".to_owned()])
        );
    }

    #[test]
    fn both_lengths_read_as_chunked_without_the_length_and_close() {
        let parsed = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(parsed.framing, Framing::Chunked);
        assert!(!parsed.keep_alive);
        assert!(!parsed.response.headers().contains_key(CONTENT_LENGTH));
    }

    #[test]
    fn malformed_heads_fail() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5,\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nContent-Length: x\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: a\rb\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(
                head(bad.as_bytes(), Method::GET).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn heads_are_bounded_in_size_and_fields() {
        let mut big = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(
            head(&big, Method::GET).unwrap_err(),
            ProtocolError::HeadTooLarge
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(head(&many, Method::GET).is_err());
    }

    /// Decodes `input` fed in pieces of `step` bytes: the data, the trailers, and whether
    /// the body ended.
    fn decode_all(
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), ProtocolError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buffer = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = None;
        for piece in input.chunks(step) {
            buffer.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buffer)? {
                    Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                    Decoded::Trailers(map) => trailers = Some(map),
                    Decoded::End | Decoded::NeedMore => break,
                }
            }
        }
        Ok((data, trailers, decoder.is_ended()))
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces() {
        let body = b"5\r\nhello\r\n1;name=value\r\n \r\nA \r\n0123456789\r\n0\r\n\r\nnext";
        for step in 1..body.len() {
            let (data, trailers, ended) = decode_all(body, step).unwrap();
            assert_eq!(data, b"hello 0123456789", "step {step}");
            assert!(trailers.is_none());
            assert!(ended);
        }
        let with_trailers = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-sum: 1\r\n\r\n";
        for step in 1..with_trailers.len() {
            let (data, trailers, ended) = decode_all(with_trailers, step).unwrap();
            assert_eq!(data, b"abc");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["grpc-status"], "0");
            assert_eq!(trailers["x-sum"], "1");
            assert!(ended);
        }
        // What follows the body stays in the buffer.
        let mut buffer = BytesMut::from(&b"0\r\n\r\nHTTP/1.1"[..]);
        let mut decoder = ChunkedDecoder::default();
        assert_eq!(decoder.decode(&mut buffer).unwrap(), Decoded::End);
        assert_eq!(&buffer[..], b"HTTP/1.1");
    }

    #[test]
    fn malformed_chunked_bodies_fail() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"11111111111111111\r\n",
            b"5 x\r\n",
            b"5;ext\n",
            b"0\r\nbad trailer\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 1).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"1;".to_vec();
        long.resize(MAX_CHUNK_LINE + 10, b'a');
        assert!(decode_all(&long, 64).is_err());
        let mut trailers = b"0\r\nx: ".to_vec();
        trailers.resize(MAX_TRAILER_BYTES + 10, b'a');
        assert!(decode_all(&trailers, 64).is_err());
    }
}
