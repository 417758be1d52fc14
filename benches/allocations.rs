//! Heap allocations per proxied request and per cache hit, counted by dhat's allocator
//! around weir started in-process on one thread (as `threads = 1` runs it).
//!
//! The client and the upstream are raw TCP loops on fixed buffers: they allocate nothing
//! per request, so every block counted is weir's (its code, hyper's, tokio's). Each
//! figure is the mean over `WEIR_ALLOC_REQUESTS` (10 000) keep-alive requests after 2 000
//! to warm up; the answer is 1 KiB, as in `benches/compare`.
//!
//! Run: `cargo bench --bench allocations`. `WEIR_ALLOC_PROFILE=dir` also writes dhat's
//! per-call-site profiles (`dir/proxied.json`, `dir/cache-hit.json`, for dhat's viewer or
//! a script) to see where the blocks come from.

use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const BODY_BYTES: usize = 1024;

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to do.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let requests = env_number("WEIR_ALLOC_REQUESTS", 10_000);
    let profile_dir = std::env::var("WEIR_ALLOC_PROFILE").ok();
    for (name, path) in [("proxied", "/"), ("cache-hit", "/cached")] {
        let profiler = profiler(profile_dir.as_deref(), name);
        let runtime = runtime();
        let (blocks, bytes) = runtime.block_on(measure(path, requests as u64));
        println!(
            "{name:<10} {:>6.2} allocations per request, {:>7.0} bytes allocated per request",
            blocks as f64 / requests as f64,
            bytes as f64 / requests as f64
        );
        drop(runtime);
        drop(profiler);
    }
    // Idle keep-alive connections: heap held per connection after one request each, right
    // after it and once the connections have been quiet for a tick of the accept loop's
    // sweeper (which has them give back what they keep for their next request). In
    // profile mode `idle.json`'s end-of-run figures (taken while the connections are
    // still open, after the quiet tick) say which sites hold it.
    let connections = env_number("WEIR_ALLOC_IDLE", 2_000);
    let profiler = profiler(profile_dir.as_deref(), "idle");
    runtime().block_on(async {
        let (blocks, bytes, held) = measure_idle(connections).await;
        println!(
            "idle       {:>6.2} blocks per connection,   {:>7.0} bytes held per connection (right after the request)",
            blocks.just_served as f64 / connections as f64,
            bytes.just_served as f64 / connections as f64
        );
        println!(
            "idle       {:>6.2} blocks per connection,   {:>7.0} bytes held per connection (after a quiet tick)",
            blocks.quiet as f64 / connections as f64,
            bytes.quiet as f64 / connections as f64
        );
        // Written while the connections are open, so that its end figures are theirs.
        drop(profiler);
        drop(held);
    });
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// dhat's profiler: per-site profiles in `dir/{name}.json`, or counts only.
fn profiler(dir: Option<&str>, name: &str) -> dhat::Profiler {
    match dir {
        Some(dir) => dhat::Profiler::builder()
            .file_name(Path::new(dir).join(format!("{name}.json")))
            .trim_backtraces(Some(40))
            .build(),
        None => dhat::Profiler::builder().testing().build(),
    }
}

/// weir runs in-process on this one thread, as `threads = 1` runs it.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A figure right after the connections' requests, and once they have been quiet.
struct Held {
    just_served: i64,
    quiet: i64,
}

/// The longest a connection waits for its sweeper's quiet tick: two periods of at most a
/// second (`src/proxy/sweeper.rs`), and a little more.
const QUIET_TICK: std::time::Duration = std::time::Duration::from_millis(2_100);

/// Heap blocks and bytes that `connections` idle keep-alive connections hold in weir,
/// each after one proxied request; returns them with what keeps them open.
///
/// The client's own socket registers with tokio in this process too: a pair of raw
/// sockets (client and accepted end, nothing else) is measured first, and half of it is
/// taken off per connection.
async fn measure_idle(connections: usize) -> (Held, Held, (weir::app::Running, Vec<TcpStream>)) {
    let (socket_blocks, socket_bytes) = raw_socket_pair_cost(connections).await;
    let weir = start_weir().await;
    let proxy = weir.listener_addr("http").unwrap();
    // One connection warms the pool, the upstream connection and lazily built state.
    let mut clients = vec![idle_client(proxy).await];
    settle().await;
    let before = dhat::HeapStats::get();
    for _ in 0..connections {
        clients.push(idle_client(proxy).await);
    }
    settle().await;
    let after = dhat::HeapStats::get();
    tokio::time::sleep(QUIET_TICK).await;
    settle().await;
    let quiet = dhat::HeapStats::get();
    let n = connections as i64;
    let blocks = |stats: &dhat::HeapStats| {
        stats.curr_blocks as i64 - before.curr_blocks as i64 - socket_blocks * n / 2
    };
    let bytes = |stats: &dhat::HeapStats| {
        stats.curr_bytes as i64 - before.curr_bytes as i64 - socket_bytes * n / 2
    };
    (
        Held {
            just_served: blocks(&after),
            quiet: blocks(&quiet),
        },
        Held {
            just_served: bytes(&after),
            quiet: bytes(&quiet),
        },
        (weir, clients),
    )
}

/// A client connection that has made one request and read its whole answer.
async fn idle_client(proxy: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 4096];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buffer[filled..]).await.unwrap();
        assert!(n > 0, "weir closed the connection");
        filled += n;
        if let Some(end) = find(&buffer[..filled], b"\r\n\r\n")
            && filled >= end + 4 + content_length(&buffer[..end])
        {
            return stream;
        }
    }
}

/// Heap blocks and bytes per connected pair of plain sockets in this process.
async fn raw_socket_pair_cost(pairs: usize) -> (i64, i64) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::with_capacity(2 * pairs);
    // The first pair warms tokio's registration slab.
    held.push(TcpStream::connect(addr).await.unwrap());
    held.push(listener.accept().await.unwrap().0);
    let before = dhat::HeapStats::get();
    let mut more = Vec::with_capacity(2 * pairs);
    for _ in 0..pairs {
        more.push(TcpStream::connect(addr).await.unwrap());
        more.push(listener.accept().await.unwrap().0);
    }
    let after = dhat::HeapStats::get();
    // `more`'s own vector was allocated before `before`.
    let n = pairs as i64;
    (
        (after.curr_blocks as i64 - before.curr_blocks as i64) / n,
        (after.curr_bytes as i64 - before.curr_bytes as i64) / n,
    )
}

/// Lets every task that is ready run (connections finishing their last response).
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// Blocks and bytes allocated while `requests` requests for `path` go through weir.
async fn measure(path: &str, requests: u64) -> (u64, u64) {
    let weir = start_weir().await;
    let proxy = weir.listener_addr("http").unwrap();
    let mut client = Client::connect(proxy, path).await;
    for _ in 0..2_000 {
        client.exchange().await;
    }
    let before = dhat::HeapStats::get();
    for _ in 0..requests {
        client.exchange().await;
    }
    let after = dhat::HeapStats::get();
    weir.shutdown().await;
    (
        after.total_blocks - before.total_blocks,
        after.total_bytes - before.total_bytes,
    )
}

/// weir in front of a [`raw_upstream`]: `/cached` on a caching route, everything else on
/// a route that does not cache.
async fn start_weir() -> weir::app::Running {
    let upstream = raw_upstream().await;
    let config = format!(
        r#"
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[cache]
enabled = true

[[routes]]
path_prefix = "/cached"
pool = "up"

[[routes]]
pool = "up"
cache = {{ enabled = false }}

[pools.up]
endpoints = [{{ address = "{upstream}" }}]
"#
    );
    let config = weir::config::load_str(&config, Path::new("allocations.toml")).unwrap();
    weir::app::start(&config).await.unwrap()
}

/// Answers every request on a connection with the same 1 KiB response (cacheable for an
/// hour), reading into a fixed buffer.
async fn raw_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: max-age=3600\r\nContent-Length: {BODY_BYTES}\r\n\r\n"
    )
    .into_bytes();
    response.resize(response.len() + BODY_BYTES, b'x');
    let response: &'static [u8] = response.leak();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 8192];
                let mut filled = 0;
                loop {
                    match stream.read(&mut buffer[filled..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    // Requests here have no body: each ends at its blank line.
                    while let Some(end) = find(&buffer[..filled], b"\r\n\r\n") {
                        if stream.write_all(response).await.is_err() {
                            return;
                        }
                        buffer.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

/// A keep-alive client sending one fixed request and reading each response whole.
struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    buffer: Box<[u8; 16384]>,
}

impl Client {
    async fn connect(proxy: SocketAddr, path: &str) -> Self {
        let stream = TcpStream::connect(proxy).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            request: format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes(),
            buffer: Box::new([0u8; 16384]),
        }
    }

    async fn exchange(&mut self) {
        self.stream.write_all(&self.request).await.unwrap();
        let mut filled = 0;
        loop {
            let n = self.stream.read(&mut self.buffer[filled..]).await.unwrap();
            assert!(n > 0, "weir closed the connection");
            filled += n;
            if let Some(end) = find(&self.buffer[..filled], b"\r\n\r\n") {
                let head = &self.buffer[..end];
                assert!(head.starts_with(b"HTTP/1.1 200"), "not a 200");
                if filled >= end + 4 + content_length(head) {
                    return;
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> usize {
    head.split(|b| *b == b'\n')
        .find_map(|line| {
            let line = std::str::from_utf8(line).ok()?;
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}
