//! A corpus of request-smuggling and framing attacks through the real proxy. Every case
//! carries a hidden `GET /smuggled` where a desynchronised parser would see a request.
//! The upstream parses everything it receives strictly (httparse, Content-Length or
//! chunked framing) and answers each request. A case is unsafe when the upstream parses a
//! request weir did not make (one without weir's `Via`: bytes that slipped through inside
//! another request), when it cannot parse its stream, or when a probe sent after the case
//! gets a wrong answer. Refusing (4xx/5xx) is safe; so is weir reading the hidden request
//! as a pipelined request of its own and forwarding it as such (routed, with its own
//! forwarding headers), since weir and the upstream then agree on every boundary.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// What the upstream saw: request targets in order, and any stream it could not parse.
#[derive(Default)]
struct Seen {
    targets: Vec<String>,
    headers: Vec<String>,
    unparseable: Vec<String>,
}

enum Parsed {
    /// A whole request: its target, its header block (lower-cased), bytes used.
    Request(String, String, usize),
    Incomplete,
    Invalid(String),
}

/// Parses one request at the start of `buf`, body included, by RFC 9112 framing.
fn parse_one(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(e) => return Parsed::Invalid(format!("{e}: {:?}", String::from_utf8_lossy(buf))),
    };
    let target = request.path.unwrap_or("").to_owned();
    let mut block = String::new();
    let (mut length, mut chunked, mut lengths) = (0usize, false, 0);
    for h in request.headers.iter() {
        let value = String::from_utf8_lossy(h.value).to_string();
        block.push_str(&format!("{}: {value}\n", h.name.to_ascii_lowercase()));
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.trim().eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else {
                return Parsed::Invalid(format!("transfer-encoding {value:?}"));
            }
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            match value.trim().parse() {
                Ok(n) => length = n,
                Err(_) => return Parsed::Invalid(format!("content-length {value:?}")),
            }
        }
    }
    if chunked && lengths > 0 {
        return Parsed::Invalid("both Content-Length and Transfer-Encoding".into());
    }
    if lengths > 1 {
        return Parsed::Invalid("several Content-Length".into());
    }
    let mut at = head_len;
    if chunked {
        loop {
            let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                return Parsed::Incomplete;
            };
            let line = String::from_utf8_lossy(&buf[at..at + end]).to_string();
            let size_text = line.split(';').next().unwrap_or("");
            let Ok(size) = usize::from_str_radix(size_text, 16) else {
                return Parsed::Invalid(format!("chunk size {line:?}"));
            };
            at += end + 2;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let Some(end) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                        return Parsed::Incomplete;
                    };
                    at += end + 2;
                    if end == 0 {
                        return Parsed::Request(target, block, at);
                    }
                }
            }
            if buf.len() < at + size + 2 {
                return Parsed::Incomplete;
            }
            if &buf[at + size..at + size + 2] != b"\r\n" {
                return Parsed::Invalid("chunk data not followed by CRLF".into());
            }
            at += size + 2;
        }
    }
    if buf.len() < at + length {
        return Parsed::Incomplete;
    }
    Parsed::Request(target, block, at + length)
}

/// An upstream that parses strictly, answers every request `200 ok`, and records it.
async fn strict_upstream() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    loop {
                        match parse_one(&buf) {
                            Parsed::Request(target, block, used) => {
                                {
                                    let mut seen = log.lock().unwrap();
                                    seen.targets.push(target);
                                    seen.headers.push(block);
                                }
                                buf.drain(..used);
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                            Parsed::Incomplete => break,
                            Parsed::Invalid(why) => {
                                log.lock().unwrap().unparseable.push(why);
                                return;
                            }
                        }
                    }
                    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                        .await
                    {
                        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        // Closed mid-request (weir abandons a request whose client body
                        // broke): nothing can follow on this connection, so no desync.
                        _ => return,
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Sends `raw` on a fresh connection; the first final status line weir answers (or
/// "closed"). The write side stays open: hyper treats a half-close as the client leaving.
async fn exchange(proxy: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let _ = stream.write_all(raw).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some(status) = text
            .split("\r\n")
            .find(|l| l.starts_with("HTTP/") && !l.starts_with("HTTP/1.1 100"))
        {
            return status.to_owned();
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&chunk[..n]),
            _ => return "closed".to_owned(),
        }
    }
}

fn cases() -> Vec<(&'static str, String)> {
    let s = SMUGGLED;
    let n = s.len();
    let chunk_of_s = format!("{n:x}\r\n{s}\r\n0\r\n\r\n");
    let post =
        |headers: &str, body: &str| format!("POST / HTTP/1.1\r\nHost: a\r\n{headers}\r\n{body}");
    vec![
        (
            "CL.TE",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE.CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                &chunk_of_s,
            ),
        ),
        (
            "TE space before colon",
            post(
                "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE obs-fold",
            post(
                "Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE tab",
            post(
                "Transfer-Encoding:\tchunked\r\nContent-Length: 5\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE xchunked + CL",
            post(
                "Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE chunked, identity",
            post(
                "Transfer-Encoding: chunked, identity\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE identity, chunked",
            post(
                "Transfer-Encoding: identity, chunked\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE twice",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE quoted",
            post(
                "Transfer-Encoding: \"chunked\"\r\nContent-Length: 5\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE upper case + CL",
            post(
                "Transfer-Encoding: CHUNKED\r\nContent-Length: 5\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE vertical tab",
            post(
                "Transfer-Encoding: chunked\x0b\r\nContent-Length: 5\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "TE name with space",
            post(
                "Transfer Encoding: chunked\r\nContent-Length: 5\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
        ),
        (
            "CL twice, different",
            post(&format!("Content-Length: 0\r\nContent-Length: {n}\r\n"), s),
        ),
        ("CL list", post(&format!("Content-Length: 0, {n}\r\n"), s)),
        (
            "CL plus sign",
            post(&format!("Content-Length: +{n}\r\n"), s),
        ),
        ("CL negative", post("Content-Length: -1\r\n", s)),
        ("CL hex", post(&format!("Content-Length: 0x{n:x}\r\n"), s)),
        (
            "CL decimal point",
            post(&format!("Content-Length: {n}.0\r\n"), s),
        ),
        (
            "CL overflow",
            post("Content-Length: 18446744073709551617\r\n", s),
        ),
        (
            "CL obs-fold",
            post(&format!("Content-Length:\r\n {n}\r\n"), s),
        ),
        (
            "CL space before colon",
            post(&format!("Content-Length : {n}\r\n"), s),
        ),
        (
            "CL leading zeros",
            post(&format!("Content-Length: 000{n}\r\n"), s),
        ),
        (
            "GET with CL body",
            format!("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n{s}"),
        ),
        (
            "chunk size overflow",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("ffffffffffffffff1\r\n{s}\r\n0\r\n\r\n"),
            ),
        ),
        (
            "chunk size 0x",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("0x{n:x}\r\n{s}\r\n0\r\n\r\n"),
            ),
        ),
        (
            "chunk size negative",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("-1\r\n{s}\r\n0\r\n\r\n"),
            ),
        ),
        (
            "chunk size with space",
            post("Transfer-Encoding: chunked\r\n", &format!("0 \r\n\r\n{s}")),
        ),
        (
            "chunk bare LF",
            post("Transfer-Encoding: chunked\r\n", &format!("0\n\n{s}")),
        ),
        (
            "chunk data too long",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("1\r\nab\r\n0\r\n\r\n{s}"),
            ),
        ),
        (
            "chunk extension",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("{n:x};x=\"y\"\r\n{s}\r\n0\r\n\r\n"),
            ),
        ),
        (
            "chunk trailer CL",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("0\r\nContent-Length: {n}\r\n\r\n{s}"),
            ),
        ),
        (
            "HTTP/1.0 chunked",
            format!("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{s}"),
        ),
        (
            "bare LF head",
            format!("POST / HTTP/1.1\nHost: a\nContent-Length: {n}\n\n{s}"),
        ),
        (
            "CR in header value",
            post("X-A: a\rb\r\nContent-Length: 0\r\n", s),
        ),
        (
            "NUL in header value",
            post("X-A: a\0b\r\nContent-Length: 0\r\n", s),
        ),
        (
            "header without colon",
            post("X-A\r\nContent-Length: 0\r\n", s),
        ),
        (
            "two spaces in request line",
            format!("GET  / HTTP/1.1\r\nHost: a\r\n\r\n{s}"),
        ),
        ("HTTP/1.2", format!("GET / HTTP/1.2\r\nHost: a\r\n\r\n{s}")),
        ("HTTP/0.9", format!("GET /\r\n\r\n{s}")),
        (
            "Expect 100-continue",
            post(
                &format!("Expect: 100-continue\r\nContent-Length: {n}\r\n"),
                s,
            ),
        ),
        (
            "h2c upgrade",
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n{s}"
            ),
        ),
        (
            "absolute-form other host",
            format!("GET http://b/ HTTP/1.1\r\nHost: a\r\n\r\n{s}"),
        ),
        (
            "Host twice",
            format!("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n{s}"),
        ),
        (
            "Host with userinfo",
            format!("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n{s}"),
        ),
        ("no Host", format!("GET / HTTP/1.1\r\n\r\n{s}")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_smuggling_vector_desynchronises_the_upstream() {
    let (up, seen) = strict_upstream().await;
    // One serving runtime: several cases pipeline a second, legitimate request behind the
    // first, which weir forwards (with its Via) after answering the first. On two runtimes
    // the probe, on another connection, may overtake it, and "the probe comes last" would
    // fail without any desync. Requests weir did not make are caught by the Via check.
    let config = simple_config(&[up], "retry = { attempts = 0 }") + ONE_RUNTIME;
    let weir = weir(&config).await;
    let proxy = weir.listener_addr("http").unwrap();
    let cases = cases();
    let mut table = Vec::new();
    let mut unsafe_cases = Vec::new();
    for (i, (name, raw)) in cases.iter().enumerate() {
        let (before, unparseable_before) = {
            let seen = seen.lock().unwrap();
            (seen.targets.len(), seen.unparseable.len())
        };
        let status = exchange(proxy, raw.as_bytes()).await;
        // A probe after every case, on a new client connection (weir may reuse its
        // upstream connection): it must get its own answer.
        let probe = format!("/probe-{i}");
        let reply = get(proxy, &probe).await;
        let seen = seen.lock().unwrap();
        let targets = &seen.targets[before..];
        let problem = if seen.unparseable.len() > unparseable_before {
            Some(format!(
                "upstream could not parse: {:?}",
                &seen.unparseable[unparseable_before..]
            ))
        } else if let Some(foreign) = seen.headers[before..]
            .iter()
            .zip(targets)
            .find(|(h, _)| !h.contains("via: 1.1 weir"))
        {
            Some(format!(
                "upstream parsed a request weir did not make: {}",
                foreign.1
            ))
        } else if reply.status != 200 || reply.text() != "ok" {
            Some(format!("probe got {} {:?}", reply.status, reply.text()))
        } else if targets.last().map(String::as_str) != Some(probe.as_str()) {
            Some(format!("probe not last: {targets:?}"))
        } else if name == &"h2c upgrade"
            && seen
                .headers
                .iter()
                .any(|h| h.contains("upgrade: h2c") || h.contains("http2-settings"))
        {
            Some("an h2c upgrade reached the upstream".into())
        } else {
            None
        };
        let forwarded: Vec<&String> = targets.iter().filter(|t| **t != probe).collect();
        table.push(format!("{name:28} {status:32} forwarded {forwarded:?}"));
        if let Some(problem) = problem {
            unsafe_cases.push(format!("{name}: {problem}"));
        }
    }
    eprintln!("{}", table.join("\n"));
    eprintln!("{} cases, {} unsafe", cases.len(), unsafe_cases.len());
    assert!(unsafe_cases.is_empty(), "{unsafe_cases:#?}");
    weir.shutdown().await;
}
