//! weir: a layer-7 load-balancing reverse proxy.
//!
//! # Layout
//!
//! ```text
//! main.rs            CLI (clap): serve, check-config, demo
//! app.rs             wiring: bind listeners, start the admin port, signals, drain
//! config/            the TOML file model, named defaults, loading with precise errors, validation
//! proxy/             the data plane
//!   listener.rs      accept loop, connection limit, HTTP/1.1 + h2c, header/idle timeouts, drain
//!   service.rs       one request: route, pick, rewrite, forward, stream back
//!   route.rs         host + path-prefix matching
//!   headers.rs       hop-by-hop removal, X-Forwarded-*/Forwarded/Via, request id
//!   body.rs          streamed response bodies that release in-flight counts when done
//!   conn.rs          per-connection activity (idle timeout)
//!   error.rs         failures and the 4xx/5xx responses they become
//!   snapshot.rs      the config-derived view a request runs against, swapped whole
//!   stats.rs         counters published for admin, metrics and the control loop
//! balancer/          endpoint selection, one file per strategy behind `Balancer`
//! upstream/          endpoints with live state; pools with their connection client
//! tls.rs             TLS termination: certificates by SNI, ALPN, rustls with ring
//! admin.rs           admin port: probes and the token-protected API
//! loadtest.rs        bounded closed-loop load generator with HDR latency histograms
//! demo/              sample upstreams and the `weir demo` run
//! ```
//!
//! The data plane (`proxy`, `balancer`, `upstream`) never imports `admin` or the demo; they
//! read what it publishes through [`proxy::ProxyState`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod balancer;
pub mod config;
pub mod demo;
pub mod loadtest;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod tls;
pub mod upstream;
