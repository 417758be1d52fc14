//! Wiring: build the state from config, bind listeners and the admin port, run until told
//! to stop, drain. [`Supervisor`] applies reloads and instance changes while running.
//!
//! May import: every other module; nothing imports `app` but `main.rs` and `demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::supervisor::{InstanceError, Prepared, ReloadReport, Supervisor};

use crate::admin;
use crate::config::{Config, ConfigError};
use crate::proxy::listener::Shutdown;
use crate::proxy::{ProxyState, Snapshot};
use crate::registry::{Registry, RegistryError};
use crate::supervisor::listeners::{BindError, ListenerContext, ListenerSet};
use crate::supervisor::workers::Workers;
use crate::supervisor::{SupervisorParts, apply_registrations};

/// How long shutdown waits for queued spans to reach the collector.
const TRACE_FLUSH_AT_EXIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("admin.address: cannot listen on {address}: {source}")]
    AdminBind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server.threads: cannot start the serving runtimes: {0}")]
    Workers(#[source] std::io::Error),
    #[error("admin.state_file: {0}")]
    State(#[from] RegistryError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A running weir: its bound addresses, its state, and the handles to change and stop it.
#[derive(Debug)]
pub struct Running {
    admin: Option<SocketAddr>,
    supervisor: Arc<Supervisor>,
    shutdown: Shutdown,
    tracker: TaskTracker,
    drain_timeout: Duration,
    background_stop: CancellationToken,
    admin_task: Option<tokio::task::JoinHandle<()>>,
    /// The serving runtimes, ended once the drain is over.
    workers: Arc<Workers>,
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// All connections finished before the drain deadline.
    pub completed: bool,
    /// Connections still open at the deadline, closed forcibly.
    pub aborted_connections: u64,
}

/// Starts from a config that was not read from a file (it cannot be reloaded).
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let prepared = Prepared::new(config.clone(), Path::new("(config)"))?;
    start_with(prepared, None).await
}

/// Binds every listener (all or nothing) and starts serving; `config_path` is what SIGHUP
/// and the admin reload re-read.
pub async fn start_with(
    prepared: Prepared,
    config_path: Option<PathBuf>,
) -> Result<Running, StartError> {
    let Prepared { config, tls } = prepared;
    let registry = Registry::load(config.admin.as_ref().and_then(|a| a.state_file.clone()))?;
    let state = Arc::new(ProxyState::new(Snapshot::build(&config, &tls, None)));
    for note in apply_registrations(&state.snapshot.load(), None, &registry.list()) {
        tracing::warn!("{note}");
    }
    let shutdown = Shutdown {
        drain: CancellationToken::new(),
        abort: CancellationToken::new(),
    };
    let tracker = TaskTracker::new();
    let workers = Arc::new(Workers::start(config.server.threads).map_err(StartError::Workers)?);
    let ctx = ListenerContext {
        state: Arc::clone(&state),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        workers: Arc::clone(&workers),
    };
    let mut listeners = ListenerSet::default();
    let plan = listeners.plan(&config.listeners, &tls, workers.count())?;
    let admin_listener = match &config.admin {
        Some(admin) => Some(TcpListener::bind(admin.address).await.map_err(|source| {
            StartError::AdminBind {
                address: admin.address,
                source,
            }
        })?),
        None => None,
    };
    // Endpoints found by DNS are there before the first request is taken.
    crate::upstream::discovery::first_answers(state.snapshot.load().pools.values(), &config.dns)
        .await;
    listeners.apply(plan, &config.server, &ctx);

    // The admin port and health checks outlive the drain (so /readyz can report it and
    // endpoints keep their health); they stop last.
    let background_stop = CancellationToken::new();
    let drain_timeout = config.server.drain_timeout;
    let admin_config = config.admin.clone();
    let warm_urls = if config.cache.enabled {
        config.cache.warm_urls.clone()
    } else {
        Vec::new()
    };
    let supervisor = Arc::new(Supervisor::new(SupervisorParts {
        state: Arc::clone(&state),
        config,
        config_path,
        registry,
        listeners,
        ctx,
        background_stop: background_stop.clone(),
    }));
    tokio::spawn(Arc::clone(supervisor.control()).run(background_stop.clone()));
    if !warm_urls.is_empty() {
        let supervisor = Arc::clone(&supervisor);
        let stop = background_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = supervisor.warm_cache(&warm_urls) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
    let (admin, admin_task) = match (admin_listener, admin_config) {
        (Some(socket), Some(admin_config)) => {
            let address = socket.local_addr().unwrap_or(admin_config.address);
            tracing::info!(%address, "admin listening");
            let context = admin::AdminContext::new(
                Arc::clone(&supervisor),
                &admin_config,
                shutdown.drain.clone(),
            );
            let task = tokio::spawn(admin::serve(socket, context, background_stop.clone()));
            (Some(address), Some(task))
        }
        _ => (None, None),
    };
    Ok(Running {
        admin,
        supervisor,
        shutdown,
        tracker,
        drain_timeout,
        background_stop,
        admin_task,
        workers,
    })
}

impl Running {
    /// The bound address of the listener named `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// The running listeners and their bound addresses.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.supervisor.listener_addresses()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    pub fn state(&self) -> &Arc<ProxyState> {
        self.supervisor.state()
    }

    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
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
                .state()
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
        // The last requests' spans go out before the process does.
        let tracer = self.state().snapshot.load().tracer.clone();
        if let Some(tracer) = tracer {
            tracer.flush(TRACE_FLUSH_AT_EXIT).await;
        }
        self.background_stop.cancel();
        if let Some(task) = self.admin_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        // Nothing is served any more: the worker threads end (joined off this runtime,
        // which may be one thread for everything).
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
        DrainReport {
            completed,
            aborted_connections,
        }
    }

    /// Serves until SIGTERM or SIGINT (or the drain token is cancelled), reloading on
    /// SIGHUP, then drains. `signals` are registered before the listeners open (see
    /// [`Signals::register`]).
    pub async fn run_until_signal(self, mut signals: Signals) -> std::io::Result<DrainReport> {
        let drain = self.drain_token();
        loop {
            tokio::select! {
                _ = signals.term.recv() => { tracing::info!("SIGTERM: draining"); break; }
                _ = signals.int.recv() => { tracing::info!("SIGINT: draining"); break; }
                _ = drain.cancelled() => break,
                _ = signals.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    self.supervisor.reload().await;
                }
            }
        }
        Ok(self.shutdown().await)
    }
}

/// The process signals weir acts on. Registered before anything listens: until a handler
/// is installed, SIGHUP's default action ends the process, so a reload sent as soon as the
/// port answers (by a deploy tool, say) would otherwise kill it.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}
