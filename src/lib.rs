//! weir: a layer-7 load-balancing reverse proxy.
//!
//! # Layout
//!
//! ```text
//! main.rs            CLI (clap): serve, check-config, demo, loadtest, report
//! app/               wiring: bind listeners and the admin port, signals, drain
//! supervisor/        reloads (load certificates, build whole, then swap) and instance
//!                    register/drain/weights; `Prepared` = a valid config with its TLS loaded
//!   listeners.rs     the running listener set, changed on reload without touching the rest
//!   workers.rs       the serving runtimes: one single-threaded runtime per core, each with
//!                    its own SO_REUSEPORT socket per listener (or the caller's, threads = 1)
//! config/            the TOML file model, named defaults, loading with precise errors, validation
//! proxy/             the data plane
//!   listener.rs      accept loop, connection limit, TLS handshake, HTTP/1.1 + h2, timeouts, drain
//!   serving.rs       an open connection: hyper's connection driven until it ends or is closed,
//!                    shaped for an idle connection's size
//!   service.rs       one request: route, limit, pick, rewrite, forward with retries, stream back
//!   attempt.rs       one attempt upstream (its request, its wait, its span) and the hedge race
//!   service/cached.rs  the same request on a caching route: look up, serve (ranges too),
//!                    revalidate, coalesce misses, store as it streams, invalidate
//!   service/cache_status.rs  what the cache did, one value rendered into Cache-Status
//!   service/forward.rs the request to its pool: outgoing head, body, attempts (pick,
//!                    send, hedge race, classify: retry or answer), the answer's head
//!   route/           the rule model, one concern per file:
//!     mod.rs           routes and the router: host + path prefix first, first match wins
//!     conditions.rs    exact/regex path, method, header, query, cookie, client conditions
//!     split.rs         one pool or weighted pools, per request or sticky; live weights
//!     answer.rs        redirects and fixed responses
//!     rewrite.rs       path rewrites, request/response header rules with variables
//!     cors.rs          CORS preflights and response headers
//!     mirror.rs        shadow copies to another pool, bounded, never in the way
//!   normalize.rs     dot-segment removal so routing and forwarding see the same path
//!   headers.rs       hop-by-hop removal, X-Forwarded-*/Forwarded/Via, request id
//!   client_address.rs  PROXY protocol v1/v2 headers, the client behind trusted proxies
//!   grpc.rs          gRPC calls: deadlines, statuses in heads and trailers, weir's own errors
//!   access_log.rs    the access line, written at the head or when a gRPC call ends
//!   retry.rs         what may be retried, full-jitter backoff, Retry-After
//!   ratelimit.rs     per-route GCRA limits
//!   trace.rs         W3C traceparent
//!   spans.rs         the request, attempt and cache-lookup spans of recorded requests
//!   body.rs          streamed bodies: in-flight guards, replayable requests, body pace
//!   conn.rs          per-connection activity: requests in flight, the request to close
//!   sweeper.rs       each accept loop's watch over its connections: idle timeout, spare
//!                    memory given back when quiet, drain, abort
//!   deadlines.rs     one timer per client connection for its requests' upstream deadlines
//!   error.rs         failures and the 4xx/5xx responses they become
//!   snapshot.rs      the config-derived view a request runs against, swapped whole
//!   stats.rs         proxy and per-route counters for metrics and control
//! balancer/          endpoint selection, one file per strategy behind `Balancer`
//! upstream/          endpoints (state machine, breaker, signals and latency histograms),
//!                    plain HTTP/1.1 exchanges driven by the request's own task with
//!                    thread-local idle connections (exchange.rs): weir's own client for
//!                    requests it holds whole (lean.rs, on h1.rs: head encoding, response
//!                    parsing, RFC 9112 framing, chunked decoding), hyper's client::conn
//!                    for streamed bodies; TLS, h2, PROXY headers and upgrades use
//!                    hyper-util's pooled client,
//!                    pools (and their stall sweep), active health checks (HTTP or
//!                    grpc.health.v1), DNS service discovery (A/AAAA and SRV, hickory),
//!                    when to hedge (fixed or percentile delay), request bodies on their
//!                    way upstream (with the copy a gRPC retry replays)
//! cache/             two-tier HTTP cache: RFC 9111 policy, byte ranges of stored bodies,
//!                    moka L1, Redis/Cluster L2, coalescing, purge bus, warming
//! control/           the control loop: samples, autoscalers (a dry run follows its own
//!                    decisions), actions, forecasts, USL, capacity reports (JSON + HTML),
//!                    evaluate.rs: scoring against the right count beside an HPA reference;
//!                    slo.rs (budgets, burn rates), rules.rs (observing alert rules),
//!                    alert.rs (pending/firing/resolved, silences), alerting.rs (the
//!                    controller's alerting half), notify.rs (webhooks,
//!                    commands, retries)
//! chart.rs           the SVG chart frame and HTML escaping the report and loadtest pages share
//! tls.rs             rustls (ring): every certificate a config names, loaded once
//!                    (`TlsMaterial`); server certificates by SNI, client configs for upstreams
//! telemetry/         trace export: the span records and bounded queue the data plane
//!                    fills, and the OTLP exporter task (HTTP/protobuf or gRPC)
//! registry.rs        registered instances in an atomically written state file
//! stable_hash.rs     XXH3 with a fixed seed: ring points, sticky ids and sticky split points
//!                    every build agrees on
//! header_maps.rs     spare header maps per thread: a finished request's map becomes the
//!                    next response head's (upstream parsing, cache hits); common field
//!                    names read without lowercasing; absent fields found without hashing
//! clock.rs           one clock reading per poll of a connection's task, shared by the
//!                    request, its attempts, pools (their millisecond clock) and idle
//!                    upstream connections
//! admin/             admin port: probes and the token-protected API (control.rs: scaling,
//!                    reports, instance load; alerts.rs: alerts, silences, SLOs;
//!                    simulate.rs: what weir would do with a request; views.rs: the JSON
//!                    of pools, instances, cache)
//! metrics.rs         Prometheus exposition built at scrape time from `metrics::Sources`
//! loadtest/          `weir loadtest`: plans and scenarios, closed/open engine, output
//! demo/              sample upstreams and the `weir demo` run
//! ```
//!
//! The data plane (`proxy`, `balancer`, `upstream`, `cache`) never imports `admin`,
//! `control` or the demo; they read what it publishes through [`proxy::ProxyState`].
//! Each module's opening comment says what it may import; `tests/layers.rs` checks the
//! rules on the source.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod balancer;
pub mod cache;
pub mod chart;
pub mod clock;
pub mod config;
pub mod control;
pub mod demo;
pub mod header_maps;
pub mod loadtest;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod stable_hash;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod upstream;
