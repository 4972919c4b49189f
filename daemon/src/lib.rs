//! secateur's daemon (DESIGN.md §9): the actor system as a long-lived service. Runs are
//! submitted over an HTTP JSON API, queued, executed `daemon.concurrency` at a time
//! (each a Supervisor with its six actors, see `actors`), observed as status, history
//! and a live SSE stream, cancelled, and resumed from their last committed iteration
//! after a restart or a crash.
//!
//! [`run`] is the whole daemon as a library function (mini-redis style): the binary's
//! `secateur daemon` only parses arguments, sets up tracing ([`telemetry`]) and passes a
//! bound listener and a shutdown future, and tests start it on `127.0.0.1:0`.
//!
//! | module | job |
//! |---|---|
//! | [`api`] | routes, bearer-token check, body limit, JSON errors |
//! | [`submit`] | config validation, file confinement to the allowed roots |
//! | [`policy`] | which API-key variables and base-URL hosts a submitted config may use |
//! | [`registry`] | runs, their records on disk, live state and event channels |
//! | [`scheduler`] | the queue: concurrency, resume after restart, shutdown |
//! | [`events`] | the SSE stream of one run |
//! | [`types`] | the JSON the API speaks (shared with [`client`]) |
//! | [`client`] | the HTTP client `secateur runs` uses |
//! | [`telemetry`] | logs to stderr and, when configured, spans over OTLP/HTTP |
//! | [`lock`] | one daemon per data folder |
//! | `server` | the accept loop: header/body read timeouts, connection cap |

pub mod api;
pub mod client;
pub mod events;
pub mod lock;
pub mod policy;
pub mod registry;
pub mod scheduler;
mod server;
pub mod submit;
pub mod telemetry;
pub mod types;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use config::DaemonConfig;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::registry::Registry;
use crate::submit::Roots;

/// Test hooks applied to every run of this daemon (all off by default).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Injected faults ([`actors::faults`]); each fires once per daemon (the flag set
    /// is shared).
    pub faults: actors::Faults,
}

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error("data folder {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Locked(String),
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// State every handler and the scheduler share.
pub(crate) struct Shared {
    pub cfg: DaemonConfig,
    pub registry: Registry,
    pub roots: Roots,
    /// The bearer token every request must carry, when set.
    pub token: Option<String>,
    pub hooks: Hooks,
    /// Wakes the scheduler: a run was queued, cancelled or ended.
    pub wake: Notify,
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
}

/// The bearer token from the environment variable `daemon.token_env` names, and whether
/// `addr` may be served with it: a non-loopback address requires a token.
pub fn token_for(cfg: &DaemonConfig, addr: SocketAddr) -> Result<Option<String>, DaemonError> {
    let token = std::env::var(&cfg.daemon.token_env)
        .ok()
        .filter(|t| !t.trim().is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(DaemonError::Config(format!(
            "refusing to listen on {addr} without a bearer token: set the environment variable {} \
             (daemon.token_env), or listen on a loopback address",
            cfg.daemon.token_env
        )));
    }
    Ok(token)
}

/// Serve the daemon on `listener` until `shutdown` resolves, then stop gracefully: no
/// new connections, event streams closed, running runs asked to stop after their
/// current iteration (up to `daemon.shutdown_grace_secs`), every record on disk.
/// The token comes from the environment (see [`token_for`]).
pub async fn run(
    listener: TcpListener,
    config: DaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let addr = listener.local_addr().map_err(DaemonError::Serve)?;
    let token = token_for(&config, addr)?;
    run_with(listener, config, token, Hooks::default(), shutdown).await
}

/// [`run`] with the token given explicitly and test hooks.
pub async fn run_with(
    listener: TcpListener,
    config: DaemonConfig,
    token: Option<String>,
    hooks: Hooks,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    Daemon::open(config, token, hooks)
        .await?
        .serve(listener, shutdown)
        .await
}

/// A daemon that owns its data folder (locked, registry loaded) but serves nothing
/// yet: everything that can refuse to start has been checked, so the binary says
/// `listening on …` only for a daemon that will serve.
pub struct Daemon {
    config: DaemonConfig,
    token: Option<String>,
    hooks: Hooks,
    registry: Registry,
    roots: Roots,
    lock: lock::DataDirLock,
}

impl Daemon {
    /// Validate `config`, create and lock the data folder, load the run records.
    pub async fn open(
        config: DaemonConfig,
        token: Option<String>,
        hooks: Hooks,
    ) -> Result<Self, DaemonError> {
        config
            .validate()
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        let data = config.daemon.data_dir.clone();
        let data_err = |source| DaemonError::DataDir {
            path: data.display().to_string(),
            source,
        };
        std::fs::create_dir_all(data.join("runs")).map_err(data_err)?;
        let lock = lock::DataDirLock::acquire(&data).map_err(DaemonError::Locked)?;
        let (registry, roots) = {
            let (reg_dir, d) = (data.join("registry"), config.daemon.clone());
            tokio::task::spawn_blocking(move || {
                let roots = Roots::new(&d.model_roots, &d.data_roots);
                Registry::load(&reg_dir).map(|r| (r, roots))
            })
            .await
            .map_err(|e| DaemonError::Config(e.to_string()))?
            .map_err(data_err)?
        };
        Ok(Self {
            config,
            token,
            hooks,
            registry,
            roots,
            lock,
        })
    }

    /// Serve on `listener` until `shutdown` resolves, then stop gracefully (see [`run`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DaemonError> {
        let addr = listener.local_addr().map_err(DaemonError::Serve)?;
        if self.token.is_none() && !addr.ip().is_loopback() {
            return Err(DaemonError::Config(format!(
                "refusing to listen on {addr} without a bearer token"
            )));
        }
        let Self {
            config,
            token,
            hooks,
            registry,
            roots,
            lock: _lock,
        } = self;
        let limits = server::Limits::of(&config.daemon);
        let data = config.daemon.data_dir.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg: config,
            registry,
            roots,
            token,
            hooks,
            wake: Notify::new(),
            shutdown: stop_rx.clone(),
            started: Instant::now(),
        });
        let scheduler = tokio::spawn(scheduler::schedule(shared.clone()));
        tokio::spawn(load_histories(shared.clone()));
        let app = api::router(shared.clone());
        tracing::info!(%addr, data = %data.display(), "daemon serving");
        let server = tokio::spawn(server::serve(listener, app, limits, stop_rx));
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        let _ = server.await;
        let _ = scheduler.await;
        tracing::info!("daemon stopped");
        Ok(())
    }
}

/// Read the iteration history of every ended run back from its checkpoint database, in
/// the background (runs to resume are read by the scheduler, which opens their
/// databases anyway).
async fn load_histories(shared: Arc<Shared>) {
    let runs = shared.cfg.daemon.data_dir.join("runs");
    for id in shared.registry.ended_ids() {
        let db = actors::folder::db_dir(&runs.join(&id));
        if !db.exists() {
            continue;
        }
        let id2 = id.clone();
        let loaded =
            tokio::task::spawn_blocking(move || actors::checkpointer::load_run(&db, &id2)).await;
        if let Ok(Ok(run)) = loaded {
            let history = run
                .iterations
                .iter()
                .map(|s| {
                    types::HistoryItem::new(
                        s.record.clone(),
                        s.timings,
                        s.delta_bytes,
                        &s.candidates,
                    )
                })
                .collect();
            shared.registry.set_history(&id, history, false);
        }
    }
}
