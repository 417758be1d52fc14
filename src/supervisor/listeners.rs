//! The set of running proxy listeners, changed on reload without touching the listeners
//! that stay: new sockets are bound first (all or nothing), then removed ones drain.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ListenerConfig, ServerConfig};
use crate::proxy::ProxyState;
use crate::proxy::body::BodyPace;
use crate::proxy::listener::{self, ListenerSettings, Shutdown};
use crate::tls::TlsMaterial;

use super::workers::{self, Workers};

/// A proxy listener whose socket cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("listeners[{index}] {name:?}: cannot listen on {address}: {source}")]
pub struct BindError {
    pub index: usize,
    pub name: String,
    pub address: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// What listeners share: where they publish, and the process-wide stop signals.
#[derive(Debug, Clone)]
pub(crate) struct ListenerContext {
    pub state: Arc<ProxyState>,
    pub tracker: TaskTracker,
    pub shutdown: Shutdown,
    /// Where listeners accept: one socket per serving runtime.
    pub workers: Arc<Workers>,
}

type TlsHolder = Arc<ArcSwap<rustls::ServerConfig>>;

#[derive(Debug)]
struct RunningListener {
    config: ListenerConfig,
    address: SocketAddr,
    /// Stops this listener only (a child of the process-wide drain).
    stop: CancellationToken,
    tls: Option<TlsHolder>,
}

#[derive(Debug, Default)]
pub(crate) struct ListenerSet {
    running: Vec<RunningListener>,
}

/// Sockets bound for a change, not yet serving.
pub(crate) struct Plan {
    /// Each new listener with its sockets (one per serving runtime).
    start: Vec<(
        ListenerConfig,
        Vec<std::net::TcpListener>,
        Option<Arc<rustls::ServerConfig>>,
    )>,
    /// New certificates for listeners that keep running.
    tls_updates: Vec<(String, Arc<rustls::ServerConfig>)>,
    stop: Vec<String>,
    notes: Vec<String>,
}

impl ListenerSet {
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.running
            .iter()
            .map(|l| (l.config.name.clone(), l.address))
            .collect()
    }

    /// Binds what `wanted` adds or moves; fails (binding nothing) if any socket cannot be
    /// bound.
    pub fn plan(
        &self,
        wanted: &[ListenerConfig],
        tls: &TlsMaterial,
        sockets_each: usize,
    ) -> Result<Plan, BindError> {
        let mut plan = Plan {
            start: Vec::new(),
            tls_updates: Vec::new(),
            stop: Vec::new(),
            notes: Vec::new(),
        };
        for (index, config) in wanted.iter().enumerate() {
            let tls = tls.listener(&config.name).cloned();
            match self.running.iter().find(|r| r.config.name == config.name) {
                Some(current) if current.config.address == config.address => {
                    match (&current.tls, tls) {
                        (Some(_), Some(fresh)) => {
                            plan.tls_updates.push((config.name.clone(), fresh));
                        }
                        (None, None) => {}
                        _ => plan.notes.push(format!(
                            "listener {:?}: turning TLS on or off needs a restart",
                            config.name
                        )),
                    }
                    let header = |l: &ListenerConfig| {
                        l.tls
                            .as_ref()
                            .and_then(|t| t.client_auth.as_ref()?.header.clone())
                    };
                    if current.config.proxy_protocol != config.proxy_protocol
                        || current.config.trusted_proxies != config.trusted_proxies
                        || header(&current.config) != header(config)
                    {
                        plan.notes.push(format!(
                            "listener {:?}: proxy_protocol, trusted_proxies and client_auth.header change when it restarts",
                            config.name
                        ));
                    }
                    if current.config.max_connections != config.max_connections {
                        plan.notes.push(format!(
                            "listener {:?}: max_connections changes when it restarts",
                            config.name
                        ));
                    }
                }
                found => {
                    let socket = workers::bind(config.address, sockets_each).map_err(|source| {
                        BindError {
                            index,
                            name: config.name.clone(),
                            address: config.address,
                            source,
                        }
                    })?;
                    if found.is_some() {
                        plan.stop.push(config.name.clone());
                        plan.notes.push(format!(
                            "listener {:?} moved to {}",
                            config.name, config.address
                        ));
                    } else {
                        plan.notes.push(format!(
                            "listener {:?} added on {}",
                            config.name, config.address
                        ));
                    }
                    plan.start.push((config.clone(), socket, tls));
                }
            }
        }
        for current in &self.running {
            if wanted.iter().all(|w| w.name != current.config.name) {
                plan.stop.push(current.config.name.clone());
                plan.notes.push(format!(
                    "listener {:?} removed; it drains",
                    current.config.name
                ));
            }
        }
        Ok(plan)
    }

    /// Starts the planned listeners and stops the replaced or removed ones (their open
    /// connections finish their requests).
    pub fn apply(
        &mut self,
        plan: Plan,
        server: &ServerConfig,
        ctx: &ListenerContext,
    ) -> Vec<String> {
        for name in &plan.stop {
            if let Some(position) = self.running.iter().position(|r| &r.config.name == name) {
                let old = self.running.remove(position);
                old.stop.cancel();
            }
        }
        for (name, fresh) in plan.tls_updates {
            if let Some(holder) = self
                .running
                .iter()
                .find(|r| r.config.name == name)
                .and_then(|r| r.tls.as_ref())
            {
                // New handshakes use the new certificates; open connections keep theirs.
                holder.store(fresh);
            }
        }
        for (config, socket, tls) in plan.start {
            self.start(config, socket, tls, server, ctx);
        }
        plan.notes
    }

    pub fn start(
        &mut self,
        config: ListenerConfig,
        sockets: Vec<std::net::TcpListener>,
        tls: Option<Arc<rustls::ServerConfig>>,
        server: &ServerConfig,
        ctx: &ListenerContext,
    ) {
        let tls: Option<TlsHolder> = tls.map(|c| Arc::new(ArcSwap::new(c)));
        let address = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(config.address);
        let settings = ListenerSettings {
            name: config.name.clone(),
            connection_limit: Arc::new(Semaphore::new(config.max_connections)),
            runtime: 0,
            request_header_timeout: server.request_header_timeout,
            client_idle_timeout: server.client_idle_timeout,
            max_request_header_bytes: server.max_request_header_bytes,
            max_request_headers: server.max_request_headers,
            body_pace: BodyPace {
                timeout: server.request_body_timeout,
                min_rate: server.min_request_body_rate,
            },
            tls: tls.clone(),
            proxy_protocol: config.proxy_protocol,
            trusted_proxies: config.trusted_proxies.iter().copied().collect(),
            client_cert_header: config
                .tls
                .as_ref()
                .and_then(|tls| tls.client_auth.as_ref()?.header.as_ref())
                .and_then(|name| http::HeaderName::from_bytes(name.as_bytes()).ok()),
        };
        let stop = ctx.shutdown.drain.child_token();
        let shutdown = Shutdown {
            drain: stop.clone(),
            abort: ctx.shutdown.abort.clone(),
        };
        tracing::info!(
            listener = %settings.name,
            %address,
            runtimes = sockets.len(),
            "listening"
        );
        for (index, (socket, runtime)) in sockets.into_iter().zip(ctx.workers.handles()).enumerate()
        {
            let settings = ListenerSettings {
                runtime: index,
                ..settings.clone()
            };
            let state = Arc::clone(&ctx.state);
            let shutdown = shutdown.clone();
            let tracker = ctx.tracker.clone();
            // Registered with the reactor of the runtime it accepts on.
            let serving = async move {
                match TcpListener::from_std(socket) {
                    Ok(socket) => listener::serve(socket, settings, state, shutdown, tracker).await,
                    Err(error) => {
                        tracing::error!(listener = %settings.name, %error, "cannot accept");
                    }
                }
            };
            ctx.tracker.spawn_on(serving, runtime);
        }
        self.running.push(RunningListener {
            config,
            address,
            stop,
            tls,
        });
    }
}
