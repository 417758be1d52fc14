//! Changes to a running weir: configuration reloads (SIGHUP or admin), and instances
//! registered, drained, reweighted or removed through the admin API. Reloads build the new
//! state whole and swap it in; on any error the old one keeps serving.
//!
//! May import: the data plane, `config`, `tls`, `registry`, `control` (reconfigured on
//! reload); never `app`, `admin` or `metrics`, which sit above it.

pub(crate) mod listeners;
pub(crate) mod workers;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigError};
use crate::proxy::{ProxyState, Snapshot};
use crate::registry::{Registration, Registry, RegistryError};
use crate::tls::TlsMaterial;
use crate::upstream::{Endpoint, Pool};
use listeners::{ListenerContext, ListenerSet};

/// A config ready to run: valid, with every certificate it names loaded.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub config: Config,
    pub tls: TlsMaterial,
}

impl Prepared {
    /// Reads and validates `path`, then loads its certificates: all `weir check-config`
    /// checks, and what `serve` starts from.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::new(config::load_file(path)?, path)
    }

    /// Loads the certificates of a validated config; `origin` names it in errors.
    pub fn new(config: Config, origin: &Path) -> Result<Self, ConfigError> {
        match TlsMaterial::load(&config) {
            Ok(tls) => Ok(Self { config, tls }),
            Err(problems) => Err(ConfigError::Invalid {
                origin: origin.to_path_buf(),
                problems,
            }),
        }
    }
}

/// What a supervisor takes over once the listeners run.
#[derive(Debug)]
pub(crate) struct SupervisorParts {
    pub state: Arc<ProxyState>,
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub registry: Registry,
    pub listeners: ListenerSet,
    pub ctx: ListenerContext,
    /// Stops background work (health checks, control loop) after the drain.
    pub background_stop: CancellationToken,
}

/// How a reload went, for the log, the admin API and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub notes: Vec<String>,
    pub at: String,
}

/// Why an instance operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    #[error("no instance with id {0:?}")]
    UnknownInstance(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    State(#[from] RegistryError),
}

/// Why a route's split weights were not changed.
#[derive(Debug, thiserror::Error)]
pub enum SplitChangeError {
    #[error("no route named {0:?}")]
    UnknownRoute(String),
    #[error("route {0:?} does not split between pools")]
    NotSplit(String),
    #[error(transparent)]
    Weights(#[from] crate::proxy::route::split::WeightError),
}

#[derive(Debug)]
struct Inner {
    config: Config,
    listeners: ListenerSet,
    pool_tasks_stop: CancellationToken,
}

#[derive(Debug)]
pub struct Supervisor {
    state: Arc<ProxyState>,
    config_path: Option<PathBuf>,
    registry: Registry,
    ctx: ListenerContext,
    /// Stops background work (health checks) after the drain.
    background_stop: CancellationToken,
    inner: tokio::sync::Mutex<Inner>,
    /// Bound listener addresses, republished after every change.
    addresses: arc_swap::ArcSwap<Vec<(String, std::net::SocketAddr)>>,
    /// The control loop (statistics, autoscalers, reports); reconfigured on reload.
    control: Arc<crate::control::Controller>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    last_reload: Mutex<Option<ReloadReport>>,
    /// Held while pool membership changes: by a registration or deregistration (registry
    /// and live pool together), and by a reload from reading the registry to swapping the
    /// snapshot in. Without it, a registration landing between the two went into the
    /// snapshot being replaced, and the live pool lost it while the registry kept it.
    /// Never held across an await.
    membership: Mutex<()>,
}

impl Supervisor {
    pub(crate) fn new(parts: SupervisorParts) -> Self {
        let SupervisorParts {
            state,
            config,
            config_path,
            registry,
            listeners,
            ctx,
            background_stop,
        } = parts;
        let pool_tasks_stop = background_stop.child_token();
        spawn_pool_tasks(&state.snapshot.load(), &config.dns, &pool_tasks_stop);
        let addresses = arc_swap::ArcSwap::from_pointee(listeners.addresses());
        let control = crate::control::Controller::new(Arc::clone(&state), &config.control);
        Self {
            control,
            addresses,
            state,
            config_path,
            registry,
            ctx,
            background_stop,
            inner: tokio::sync::Mutex::new(Inner {
                config,
                listeners,
                pool_tasks_stop,
            }),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload: Mutex::new(None),
            membership: Mutex::new(()),
        }
    }

    fn membership(&self) -> std::sync::MutexGuard<'_, ()> {
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> &Arc<ProxyState> {
        &self.state
    }

    pub fn control(&self) -> &Arc<crate::control::Controller> {
        &self.control
    }

    pub fn listener_addresses(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.addresses.load().as_ref().clone()
    }

    /// The first listener without TLS: where cache warming sends its requests.
    pub async fn plain_listener(&self) -> Option<std::net::SocketAddr> {
        let name = {
            let inner = self.inner.lock().await;
            inner
                .config
                .listeners
                .iter()
                .find(|l| l.tls.is_none())
                .map(|l| l.name.clone())?
        };
        self.listener_addresses()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, addr)| addr)
    }

    /// Fetches `urls` into the cache through this instance's own listener.
    pub async fn warm_cache(&self, urls: &[String]) -> Option<crate::cache::warm::WarmReport> {
        self.state.snapshot.load().cache.as_ref()?;
        let concurrency = self.inner.lock().await.config.cache.warm_concurrency;
        let proxy = self.plain_listener().await?;
        Some(crate::cache::warm::warm(urls, proxy, concurrency).await)
    }

    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the config file and applies it (what SIGHUP does).
    pub async fn reload(&self) -> ReloadReport {
        let result = match &self.config_path {
            None => Err("weir was started without a config file; nothing to reload".to_owned()),
            Some(path) => config::load_file(path).map_err(|e| e.to_string()),
        };
        match result {
            Ok(config) => self.apply(config).await,
            Err(error) => self.finish(Err(error)),
        }
    }

    /// Applies an already validated config, loading its certificates first.
    pub async fn apply(&self, config: Config) -> ReloadReport {
        let origin = self
            .config_path
            .clone()
            .unwrap_or_else(|| "(config)".into());
        let Prepared { config, tls } = match Prepared::new(config, &origin) {
            Ok(prepared) => prepared,
            Err(error) => return self.finish(Err(error.to_string())),
        };
        let mut inner = self.inner.lock().await;
        let sockets_each = self.ctx.workers.count();
        let plan = match inner.listeners.plan(&config.listeners, &tls, sockets_each) {
            Ok(plan) => plan,
            Err(error) => return self.finish(Err(error.to_string())),
        };
        let membership = self.membership();
        let previous = self.state.snapshot.load_full();
        let snapshot = Snapshot::build(&config, &tls, Some(&previous));
        let mut notes = apply_registrations(&snapshot, Some(&previous), &self.registry.list());
        notes.extend(describe_pool_changes(&previous, &snapshot));
        if inner.config.server.threads != config.server.threads {
            notes.push("[server] threads applies after a restart".into());
        }
        if inner.config.server != config.server {
            notes.push("[server] timeouts apply to listeners started from now on".into());
        }
        if inner.config.admin != config.admin {
            notes.push("[admin] changes apply after a restart".into());
        }
        // Swap: requests in flight keep the snapshot they started with.
        self.state.snapshot.store(Arc::new(snapshot));
        drop(membership);
        inner.pool_tasks_stop.cancel();
        inner.pool_tasks_stop = self.background_stop.child_token();
        spawn_pool_tasks(
            &self.state.snapshot.load(),
            &config.dns,
            &inner.pool_tasks_stop,
        );
        notes.extend(inner.listeners.apply(plan, &config.server, &self.ctx));
        self.control.reconfigure(&config.control);
        self.addresses.store(Arc::new(inner.listeners.addresses()));
        inner.config = config;
        self.finish(Ok(notes))
    }

    fn finish(&self, result: Result<Vec<String>, String>) -> ReloadReport {
        let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let report = match result {
            Ok(notes) => {
                self.reloads_ok.fetch_add(1, Relaxed);
                tracing::info!(notes = ?notes, "configuration reloaded");
                ReloadReport {
                    ok: true,
                    error: None,
                    notes,
                    at,
                }
            }
            Err(error) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                tracing::error!(%error, "reload failed; the previous configuration keeps serving");
                ReloadReport {
                    ok: false,
                    error: Some(error),
                    notes: Vec::new(),
                    at,
                }
            }
        };
        let summary = match &report.error {
            None => format!("reload at {}: {}", report.at, report.notes.join("; ")),
            Some(error) => format!("failed reload at {}: {error}", report.at),
        };
        self.control.note_reload(summary);
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        report
    }

    /// The pool and endpoint with instance id `id`.
    pub fn find(&self, id: &str) -> Option<(Arc<Pool>, Arc<Endpoint>)> {
        let snapshot = self.state.snapshot.load();
        snapshot.pools.values().find_map(|pool| {
            let endpoints = pool.endpoints();
            let endpoint = endpoints.iter().find(|e| e.id == id)?;
            Some((Arc::clone(pool), Arc::clone(endpoint)))
        })
    }

    /// The registered instances, as the state file holds them.
    pub fn registrations(&self) -> Vec<Registration> {
        self.registry.list()
    }

    /// Registers an instance (or updates its weight if it is registered already), persists
    /// it, and puts it in rotation (ramping up over the pool's slow start).
    pub fn register(&self, registration: Registration) -> Result<Arc<Endpoint>, InstanceError> {
        config::Weight::new(registration.weight)
            .map_err(|reason| InstanceError::Invalid(format!("weight {reason}")))?;
        config::parse_endpoint_address(&registration.address).map_err(InstanceError::Invalid)?;
        let _membership = self.membership();
        let snapshot = self.state.snapshot.load();
        let pool = snapshot
            .pools
            .get(&registration.pool)
            .ok_or_else(|| InstanceError::UnknownPool(registration.pool.clone()))?;
        self.registry.upsert(registration.clone())?;
        if let Some(existing) = pool.endpoint(&registration.address) {
            pool.set_weight(&registration.address, registration.weight);
            if existing.is_draining() {
                existing.set_draining(false, "registered again");
            }
            return Ok(existing);
        }
        let endpoint = pool
            .add_endpoint(&registration.address, registration.weight)
            .map_err(InstanceError::Invalid)?;
        endpoint.record_transition(format!(
            "registered through the admin API{}",
            registration
                .zone
                .as_deref()
                .map(|z| format!(" (zone {z})"))
                .unwrap_or_default()
        ));
        Ok(endpoint)
    }

    /// Takes an instance out of its pool: no new requests; those in flight finish.
    pub fn deregister(&self, id: &str) -> Result<(Arc<Endpoint>, bool), InstanceError> {
        let _membership = self.membership();
        let (pool, endpoint) = self
            .find(id)
            .ok_or_else(|| InstanceError::UnknownInstance(id.to_owned()))?;
        let was_registered = self.registry.remove(&pool.name, &endpoint.address)?;
        endpoint.set_draining(true, "deregistered through the admin API");
        pool.remove_endpoint(&endpoint.address);
        Ok((endpoint, was_registered))
    }

    /// Stops new requests to an instance; it stays listed until removed.
    pub fn drain(&self, id: &str) -> Result<Arc<Endpoint>, InstanceError> {
        let (_, endpoint) = self
            .find(id)
            .ok_or_else(|| InstanceError::UnknownInstance(id.to_owned()))?;
        endpoint.set_draining(true, "drained through the admin API");
        Ok(endpoint)
    }

    /// Sets split weights of a route in the running snapshot (all or nothing); requests
    /// already on their way keep their pool. The next reload applies the file's weights.
    pub fn set_split_weights(
        &self,
        route: &str,
        weights: &[(String, u32)],
    ) -> Result<(), SplitChangeError> {
        let snapshot = self.state.snapshot.load();
        let found = snapshot
            .router
            .routes()
            .iter()
            .find(|r| &*r.name == route)
            .ok_or_else(|| SplitChangeError::UnknownRoute(route.to_owned()))?;
        match &found.action {
            crate::proxy::route::Action::Forward(split) if split.sides().len() > 1 => {
                split.set_weights(weights)?;
                tracing::info!(
                    route,
                    ?weights,
                    "split weights changed through the admin API"
                );
                Ok(())
            }
            _ => Err(SplitChangeError::NotSplit(route.to_owned())),
        }
    }

    pub fn set_weight(&self, id: &str, weight: u32) -> Result<Arc<Endpoint>, InstanceError> {
        config::Weight::new(weight)
            .map_err(|reason| InstanceError::Invalid(format!("weight {reason}")))?;
        let _membership = self.membership();
        let (pool, endpoint) = self
            .find(id)
            .ok_or_else(|| InstanceError::UnknownInstance(id.to_owned()))?;
        self.registry
            .set_weight(&pool.name, &endpoint.address, weight)?;
        pool.set_weight(&endpoint.address, weight);
        Ok(endpoint)
    }
}

/// Puts registered instances into `snapshot`'s pools, carrying live endpoints over from
/// `previous`. An address that the config file also lists is the file's: the registration
/// is ignored and a note says so.
pub(crate) fn apply_registrations(
    snapshot: &Snapshot,
    previous: Option<&Snapshot>,
    registrations: &[Registration],
) -> Vec<String> {
    let mut notes = Vec::new();
    for r in registrations {
        let Some(pool) = snapshot.pools.get(&r.pool) else {
            notes.push(format!(
                "registered instance {} is for pool {:?}, which the config no longer has; kept in the state file, not serving",
                r.address, r.pool
            ));
            continue;
        };
        if pool.endpoint(&r.address).is_some() {
            notes.push(format!(
                "{} in pool {:?} is in the config file, which wins over its registration",
                r.address, r.pool
            ));
            continue;
        }
        let live = previous
            .and_then(|p| p.pools.get(&r.pool))
            .and_then(|p| p.endpoint(&r.address));
        match live {
            Some(endpoint) => pool.adopt(endpoint),
            None => {
                if let Err(error) = pool.add_endpoint(&r.address, r.weight) {
                    notes.push(format!("registered instance {}: {error}", r.address));
                }
            }
        }
    }
    notes
}

fn describe_pool_changes(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut notes = Vec::new();
    for (name, pool) in &old.pools {
        let Some(new_pool) = new.pools.get(name) else {
            notes.push(format!("pool {name:?} removed; its endpoints drain"));
            continue;
        };
        for endpoint in pool.endpoints().iter() {
            if new_pool.endpoint(&endpoint.address).is_none() {
                endpoint.set_draining(true, "removed from the config by a reload");
                notes.push(format!(
                    "pool {name:?}: {} removed; it drains",
                    endpoint.address
                ));
            }
        }
        for endpoint in new_pool.endpoints().iter() {
            if pool.endpoint(&endpoint.address).is_none() {
                notes.push(format!("pool {name:?}: {} added", endpoint.address));
            }
        }
    }
    for name in new.pools.keys().filter(|n| !old.pools.contains_key(*n)) {
        notes.push(format!("pool {name:?} added"));
    }
    notes
}

/// Starts each pool's background work: active health checks and DNS discovery. `stop`
/// ends them when the snapshot is replaced.
pub(crate) fn spawn_pool_tasks(
    snapshot: &Snapshot,
    dns: &crate::config::DnsConfig,
    stop: &CancellationToken,
) {
    for pool in snapshot.pools.values() {
        for index in 0..pool.discovery().len() {
            tokio::spawn(crate::upstream::discovery::run(
                Arc::clone(pool),
                index,
                dns.clone(),
                stop.clone(),
            ));
        }
        tokio::spawn(crate::upstream::run_stall_sweep(
            Arc::clone(pool),
            stop.clone(),
        ));
        if let Some(check) = &pool.health_check {
            tokio::spawn(crate::upstream::health::run(
                Arc::clone(pool),
                check.clone(),
                stop.clone(),
            ));
        }
    }
}
