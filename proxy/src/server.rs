//! The listener: binds the proxy's port, accepts clients, runs one session
//! task per connection, and shuts down gracefully: stop accepting, let open
//! transactions finish (up to `limits.shutdown_timeout_ms`), close the rest.

use crate::auth::Users;
use crate::cancel::CancelMap;
use crate::config::Config;
use crate::gate::Gate;
use crate::metrics::{self, Metrics};
use crate::net::Acceptor;
use crate::registry::Registry;
use crate::session;
use crate::slots::Slots;
use crate::stats::Stats;
use crate::wire::backend::Severity;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why the proxy could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A cutover recorded a database the config does not name.
    #[error("{0}")]
    Route(String),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::config::ConfigError),
    /// The metrics address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A PAUSE in force: which close of the gate, and until when at the latest.
#[derive(Debug, Clone, Copy)]
pub struct PauseState {
    /// The gate generation the PAUSE closed.
    pub generation: u64,
    /// When the PAUSE started.
    pub since: Instant,
    /// When the gate reopens by itself.
    pub until: Instant,
    /// Who the pause belongs to.
    pub owner: PauseOwner,
}

/// What a PAUSE is tied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseOwner {
    /// The console session with this id: the pause ends when it leaves.
    Session(u64),
    /// `PAUSE ... DETACHED`: only RESUME or the timeout end it.
    Detached,
}

/// Everything the sessions and the admin console share.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: Config,
    /// The address actually bound (the config may say port 0).
    pub local_addr: SocketAddr,
    /// Users with their verifiers.
    pub users: Users,
    /// The freeze gate.
    pub gate: Arc<Gate>,
    /// Cancel-key routing.
    pub cancel: Arc<CancelMap>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Live sessions.
    pub sessions: Arc<Registry>,
    /// Write capture.
    pub capture: crate::capture::control::Capture,
    /// Catch-up replay onto the target.
    pub catchup: crate::catchup::Catchup,
    /// Becomes true when the proxy shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// When the proxy started.
    pub started_at: SystemTime,
    /// The PAUSE in force, if any.
    pub pause: Mutex<Option<PauseState>>,
    /// Which database serves sessions, and the move orders.
    pub router: crate::session::route::Router,
    /// The cutover controller.
    pub cutover: crate::control::cutover::Cutovers,
    /// TLS with clients (`[tls]`), loaded at start.
    pub tls: Option<crate::net::ServerTls>,
}

impl Shared {
    /// Resolves once the proxy starts shutting down (at once if it has).
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        // The guard `wait_for` returns must not live across an await.
        let _ = rx.wait_for(|down| *down).await.map(|_| ());
    }
}

/// A running proxy.
pub struct Proxy {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Binds the listen (and metrics) addresses and starts serving.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let destination = crate::control::route_file::starting_route(&config).map_err(StartError::Route)?;
        if destination == crate::session::route::Destination::Target {
            tracing::warn!("a cutover moved traffic to [target]: new sessions go there");
        }
        let tls = config.tls.as_ref().map(|t| t.load()).transpose()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            tls,
            users: Users::new(&config),
            gate: Gate::new(),
            cancel: CancelMap::new(),
            stats: Arc::new(Stats::default()),
            metrics: Arc::new(Metrics::new()),
            sessions: Arc::new(Registry::default()),
            shutdown: shutdown_rx,
            started_at: SystemTime::now(),
            pause: Mutex::new(None),
            router: crate::session::route::Router::starting_at(
                destination,
                (destination == crate::session::route::Destination::Target)
                    .then(|| config.capture_database().map(str::to_owned))
                    .flatten(),
            ),
            cutover: crate::control::cutover::Cutovers::default(),
            capture: crate::capture::control::Capture::new(&config, destination),
            catchup: crate::catchup::Catchup::default(),
            local_addr: addr,
            config,
        });
        let mut metrics_addr = None;
        let mut side_tasks = Vec::new();
        if let Some(maddr) = shared.config.metrics.listen {
            let l = metrics::bind(maddr)
                .await
                .map_err(|source| StartError::MetricsBind { addr: maddr, source })?;
            metrics_addr = l.local_addr().ok();
            side_tasks.push(tokio::spawn(metrics::serve(l, shared.clone())));
        }
        // Capture recorded on before a crash resumes before any client is
        // accepted (clients wait in the listen backlog meanwhile), so every
        // session's first transaction is captured. If it cannot, sessions of
        // its database are refused until a DBA decides (SHOW CAPTURE).
        match shared.capture.resume_recorded(&shared.sessions).await {
            Ok(Some(a)) => tracing::info!(database = %a.database, "capture resumed after a restart"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "capture could not be resumed after a restart"),
        }
        let metrics = metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
        let source = &shared.config.source;
        tracing::info!(%addr, %metrics, source_host = %source.host, source_port = source.port, "switchyard proxy listening");
        let task = tokio::spawn(serve(listener, shared.clone(), side_tasks));
        Ok(Proxy {
            addr,
            metrics_addr,
            shared,
            shutdown: shutdown_tx,
            task,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics endpoint's address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The shared state (gate, stats, sessions).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Asks the proxy to shut down and waits until every session has ended.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Waits for SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        self.shutdown().await;
        Ok(())
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, side_tasks: Vec<tokio::task::JoinHandle<()>>) {
    let mut sessions = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    let mut listener = Acceptor::new(listener, "clients", shared.stats.clone());
    // Counted here, before the first byte is read, so that simultaneous
    // logins cannot all pass a check made later.
    let slots = Slots::new(&shared.config.limits);
    loop {
        tokio::select! {
            (socket, peer) = listener.accept() => match slots.acquire() {
                Some(permit) => {
                    sessions.spawn(session::run(shared.clone(), socket, peer, permit));
                }
                None => {
                    // Even the refusals are at their bound: say so without
                    // reading (as PostgreSQL's postmaster does when it cannot
                    // start a backend), never waiting on this socket.
                    tracing::debug!(%peer, "no slot left, not even to refuse; closing");
                    Stats::bump(&shared.stats.connections_refused);
                    let mut out = bytes::BytesMut::new();
                    let message = "sorry, too many clients already (limits.max_clients)";
                    crate::wire::backend::error_response(&mut out, Severity::Fatal, "53300", message);
                    let _ = socket.try_write(&out);
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    // Held sessions must not wait for a RESUME that will never come.
    shared.gate.open();
    let grace = shared.config.limits.shutdown_timeout();
    let drained = tokio::time::timeout(grace, async { while sessions.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(left = sessions.len(), "shutdown grace period over; closing sessions");
        sessions.shutdown().await;
    }
    for t in side_tasks {
        t.abort();
    }
    tracing::info!("switchyard proxy stopped");
}
