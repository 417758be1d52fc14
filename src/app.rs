//! Wiring: build the state from config, bind listeners, run until told to stop, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::Config;
use crate::proxy::listener::{self, ListenerSettings, Shutdown};
use crate::proxy::{ProxyState, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listeners[{index}] {name:?}: cannot listen on {address}: {source}")]
    Bind {
        index: usize,
        name: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("admin.address: cannot listen on {address}: {source}")]
    AdminBind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running weir: its bound addresses, its state, and the handles to stop it.
#[derive(Debug)]
pub struct Running {
    listeners: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    state: Arc<ProxyState>,
    shutdown: Shutdown,
    tracker: TaskTracker,
    drain_timeout: Duration,
    admin_stop: CancellationToken,
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// All connections finished before the drain deadline.
    pub completed: bool,
    /// Connections still open at the deadline, closed forcibly.
    pub aborted_connections: u64,
}

/// Binds every listener (all or nothing) and starts serving.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for (index, listener) in config.listeners.iter().enumerate() {
        let socket = TcpListener::bind(listener.address)
            .await
            .map_err(|source| StartError::Bind {
                index,
                name: listener.name.clone(),
                address: listener.address,
                source,
            })?;
        bound.push((listener, socket));
    }
    let admin_listener = match &config.admin {
        Some(admin) => Some(TcpListener::bind(admin.address).await.map_err(|source| {
            StartError::AdminBind {
                address: admin.address,
                source,
            }
        })?),
        None => None,
    };

    let state = Arc::new(ProxyState::new(Snapshot::build(config)));
    let shutdown = Shutdown {
        drain: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    let tracker = TaskTracker::new();
    let mut listeners = Vec::new();
    for (listener_config, socket) in bound {
        let address = socket.local_addr().unwrap_or(listener_config.address);
        let settings = ListenerSettings {
            name: listener_config.name.clone(),
            max_connections: listener_config.max_connections,
            request_header_timeout: config.server.request_header_timeout,
            client_idle_timeout: config.server.client_idle_timeout,
        };
        tracing::info!(listener = %settings.name, %address, "listening");
        listeners.push((settings.name.clone(), address));
        tracker.spawn(listener::serve(
            socket,
            settings,
            Arc::clone(&state),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    // The admin port and health checks outlive the drain (so /readyz can report it and
    // endpoints keep their health); they stop last.
    let admin_stop = CancellationToken::new();
    for pool in state.snapshot.load().pools.values() {
        if let Some(check) = &pool.health_check {
            tokio::spawn(crate::upstream::health::run(
                Arc::clone(pool),
                check.clone(),
                admin_stop.clone(),
            ));
        }
    }
    let (admin, admin_task) = match (admin_listener, &config.admin) {
        (Some(socket), Some(admin_config)) => {
            let address = socket.local_addr().unwrap_or(admin_config.address);
            tracing::info!(%address, "admin listening");
            let context =
                admin::AdminContext::new(Arc::clone(&state), admin_config, shutdown.drain.clone());
            let task = tokio::spawn(admin::serve(socket, context, admin_stop.clone()));
            (Some(address), Some(task))
        }
        _ => (None, None),
    };
    Ok(Running {
        listeners,
        admin,
        state,
        shutdown,
        tracker,
        drain_timeout: config.server.drain_timeout,
        admin_stop,
        admin_task,
    })
}

impl Running {
    /// The bound address of the listener named `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    pub fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }

    /// A token that starts the drain when cancelled (e.g. from a signal handler).
    pub fn drain_token(&self) -> CancellationToken {
        self.shutdown.drain.clone()
    }

    /// Stops accepting, lets in-flight requests finish until the drain deadline, then
    /// closes whatever is left.
    pub async fn shutdown(self) -> DrainReport {
        self.shutdown.drain.cancel();
        self.tracker.close();
        let completed = tokio::time::timeout(self.drain_timeout, self.tracker.wait())
            .await
            .is_ok();
        let mut aborted_connections = 0;
        if !completed {
            aborted_connections = self
                .state
                .stats
                .connections_active
                .load(std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                aborted_connections,
                "drain deadline passed; closing remaining connections"
            );
            self.shutdown.abort.cancel();
            self.tracker.wait().await;
        }
        self.admin_stop.cancel();
        if let Some(task) = self.admin_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        DrainReport {
            completed,
            aborted_connections,
        }
    }

    /// Serves until SIGTERM or SIGINT (or the drain token is cancelled), then drains.
    pub async fn run_until_signal(self) -> std::io::Result<DrainReport> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let drain = self.drain_token();
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
                _ = drain.cancelled() => break,
                _ = hup.recv() => {
                    tracing::warn!("SIGHUP: configuration reload is not available in this build; keeping the current configuration");
                }
            }
        }
        Ok(self.shutdown().await)
    }
}
