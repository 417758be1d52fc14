//! Named defaults for every optional setting, so the example config, the docs and the
//! code agree on one value.

use std::time::Duration;

/// Connections one listener accepts at once; above it new connections are refused fast.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Time a client has to send a complete request head (slowloris guard). On HTTP/1 this also
/// bounds how long a keep-alive connection may sit idle between requests.
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A client connection with no request in flight and no bytes moving is closed after this.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shutdown waits for in-flight requests before it gives up on them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Time allowed to open a TCP connection to an endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time from sending the request to receiving the upstream's response head.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle keep-alive connections to an endpoint are closed after this.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections kept per endpoint.
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: usize = 128;
/// Weight of an endpoint that does not name one.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest weight accepted, so weighted sums cannot overflow.
pub const MAX_WEIGHT: u32 = 10_000;

/// Header carrying the request id, kept when the client sends one.
pub const DEFAULT_REQUEST_ID_HEADER: &str = "x-request-id";
/// Token sent in `Via` and `Forwarded: by=`.
pub const DEFAULT_PROXY_NAME: &str = "weir";

/// Admin listener address: loopback only unless the operator says otherwise.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";
/// Environment variable read for the admin bearer token when the file names none.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "WEIR_ADMIN_TOKEN";

/// In-memory cache size when the cache is enabled without a size.
pub const DEFAULT_CACHE_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
