//! Catch-up replay, driven from the proxy (`CATCHUP START`, `CATCHUP STOP`,
//! `SHOW LAG`) or standalone (`switchyard catchup run`): both read the
//! config's `[source]`, `[target]`, `[capture]` log and `[catchup]`
//! settings, check the mapping against both catalogs, and run the replayer.

use crate::config::{Config, ConfigError};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use switchyard_replay::catalog::Catalog;
use switchyard_replay::log::LogBell;
use switchyard_replay::mapping::{Mapping, MappingError, Resolved};
use switchyard_replay::replayer::{self, LagReport, ReplayError, ReplayOptions, ReplayStatus};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why catch-up cannot start.
#[derive(Debug, Error)]
pub enum CatchupError {
    /// The config lacks something catch-up needs.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A database could not be reached or read.
    #[error("{what}: {message}")]
    Database {
        /// Which database, doing what.
        what: String,
        /// The driver's message.
        message: String,
    },
    /// The mapping file could not be read or parsed.
    #[error("{0}")]
    MappingFile(MappingError),
    /// The mapping does not fit the catalogs.
    #[error("the mapping does not fit the databases:\n  {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Mapping(Vec<MappingError>),
    /// Start while running, or stop while stopped.
    #[error("{0}")]
    State(&'static str),
}

/// Everything the replayer needs, checked.
#[derive(Debug)]
pub struct Plan {
    /// Source connection (reads current rows).
    pub source: switchyard_replay::Dsn,
    /// Target connection (applies them).
    pub target: switchyard_replay::Dsn,
    /// The mapping, resolved against both catalogs.
    pub mapping: Arc<Resolved>,
    /// Source catalog.
    pub source_catalog: Arc<Catalog>,
    /// Target catalog.
    pub target_catalog: Arc<Catalog>,
    /// Log directory, workers, batch size.
    pub options: ReplayOptions,
}

impl Plan {
    /// Reads both catalogs and resolves the mapping. Fails, naming table and
    /// column, when the mapping does not fit.
    pub async fn prepare(config: &Config) -> Result<Plan, CatchupError> {
        Plan::prepare_with(config, None).await
    }

    /// [`Plan::prepare`] for a replayer woken by `bell` when the log is
    /// written (the proxy's own capture), instead of polling it.
    pub async fn prepare_with(config: &Config, bell: Option<LogBell>) -> Result<Plan, CatchupError> {
        Plan::prepare_from(config, bell, None).await
    }

    /// [`Plan::prepare_with`], with `source_catalog` as the source's catalog
    /// when the caller has a fresh one (capture's), instead of reading it.
    pub async fn prepare_from(
        config: &Config,
        bell: Option<LogBell>,
        source_catalog: Option<Arc<Catalog>>,
    ) -> Result<Plan, CatchupError> {
        let source = config.source_control("switchyard catchup")?;
        let target = config.target_connection("switchyard catchup")?;
        let source_catalog = match source_catalog {
            Some(c) => c,
            None => Arc::new(load_catalog(&source, "source").await?),
        };
        let target_catalog = load_catalog(&target, "target").await?;
        let mapping = match &config.catchup.mapping {
            Some(path) => Mapping::load(path).map_err(CatchupError::MappingFile)?,
            None => Mapping::parse("", "the default mapping").map_err(CatchupError::MappingFile)?,
        };
        let resolved = mapping
            .resolve(&source_catalog, &target_catalog)
            .map_err(CatchupError::Mapping)?;
        if resolved.has_expressions() {
            check_expressions(&source, &resolved, &source_catalog).await?;
        }
        Ok(Plan {
            source,
            target,
            mapping: Arc::new(resolved),
            source_catalog,
            target_catalog: Arc::new(target_catalog),
            options: ReplayOptions {
                log_dir: config.capture.log_dir.clone(),
                workers: config.catchup.workers,
                batch_keys: config.catchup.batch_keys,
                batch_every: std::time::Duration::from_millis(config.catchup.batch_interval_ms),
                bell,
                ..ReplayOptions::default()
            },
        })
    }

    /// Runs the replayer until `stop` turns true.
    pub async fn run(self, status: Arc<ReplayStatus>, stop: watch::Receiver<bool>) -> Result<(), ReplayError> {
        replayer::run(
            self.source,
            self.target,
            self.mapping,
            self.source_catalog,
            self.target_catalog,
            self.options,
            status,
            stop,
        )
        .await
    }
}

/// Prepares the mapping's expressions on the source (see
/// [`Resolved::check_on_source`]), waiting on no lock for long: a prepare
/// waits behind a pending ALTER of its table.
async fn check_expressions(
    source: &switchyard_replay::Dsn,
    resolved: &switchyard_replay::mapping::Resolved,
    catalog: &Catalog,
) -> Result<(), CatchupError> {
    let database = |e: tokio_postgres::Error| CatchupError::Database {
        what: "cannot check the mapping's expressions on the source".into(),
        message: switchyard_replay::error_text(&e),
    };
    let client = source.connect("catchup check").await.map_err(database)?;
    client
        .batch_execute("SET lock_timeout = '5s'")
        .await
        .map_err(database)?;
    resolved
        .check_on_source(&client, catalog)
        .await
        .map_err(database)?
        .map_err(CatchupError::Mapping)
}

async fn load_catalog(pg: &switchyard_replay::Dsn, what: &str) -> Result<Catalog, CatchupError> {
    let describe = |e: &dyn std::fmt::Display| CatchupError::Database {
        what: format!("cannot read the {what} catalog"),
        message: e.to_string(),
    };
    let client = pg.connect("catalog").await.map_err(|e| CatchupError::Database {
        what: format!("cannot connect to the {what}"),
        message: crate::db_message(&e),
    })?;
    Catalog::load(&client).await.map_err(|e| describe(&e))
}

/// The proxy's catch-up: off, running, or stopped by an error.
#[derive(Debug, Default)]
pub struct Catchup {
    state: Mutex<State>,
    op: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Off,
    Running(Running),
    Failed {
        error: String,
        status: Arc<ReplayStatus>,
    },
}

#[derive(Debug)]
struct Running {
    status: Arc<ReplayStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    started: SystemTime,
    retry: Arc<Retry>,
}

/// Why the replayer last stopped by itself, while it is started again.
#[derive(Debug, Default)]
struct Retry {
    error: Mutex<Option<String>>,
    restarts: std::sync::atomic::AtomicU64,
}

/// Runs the replayer until `stop`; when it fails (a database restarted, a
/// network blip, another replayer holding the target), records why and
/// starts it again after a growing pause, with the catalogs and mapping
/// read afresh, from the position confirmed on the target. Ends only on
/// `stop`.
async fn supervise(
    config: Config,
    bell: Option<LogBell>,
    plan: Plan,
    status: Arc<ReplayStatus>,
    mut stop: watch::Receiver<bool>,
    retry: Arc<Retry>,
) {
    let mut plan = Some(plan);
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        let started = std::time::Instant::now();
        let outcome = match plan.take() {
            Some(p) => p.run(status.clone(), stop.clone()).await.map_err(|e| e.to_string()),
            None => match Plan::prepare_with(&config, bell.clone()).await {
                Ok(p) => p.run(status.clone(), stop.clone()).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        if *stop.borrow() {
            return;
        }
        let error = match outcome {
            Ok(()) => "the replayer stopped".to_owned(),
            Err(e) => e,
        };
        if started.elapsed() > std::time::Duration::from_secs(60) {
            pause = std::time::Duration::from_secs(1);
        }
        tracing::error!(%error, retry_in_ms = pause.as_millis() as u64, "catch-up stopped; starting it again");
        *lock(&retry.error) = Some(error);
        retry.restarts.fetch_add(1, Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        pause = (pause * 2).min(std::time::Duration::from_secs(30));
    }
}

/// Whether catch-up runs, as `SHOW LAG` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchupPhase {
    /// Not started, or stopped.
    Off,
    /// Replaying.
    Running,
    /// It stopped by itself and is started again.
    Retrying,
    /// It stopped and is not started again.
    Failed,
}

impl CatchupPhase {
    /// The name on the console.
    pub fn name(self) -> &'static str {
        match self {
            CatchupPhase::Off => "off",
            CatchupPhase::Running => "running",
            CatchupPhase::Retrying => "retrying",
            CatchupPhase::Failed => "failed",
        }
    }

    /// The phase the console calls `name`.
    pub fn from_name(name: &str) -> Option<CatchupPhase> {
        [
            CatchupPhase::Off,
            CatchupPhase::Running,
            CatchupPhase::Retrying,
            CatchupPhase::Failed,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }
}

impl std::fmt::Display for CatchupPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What `SHOW LAG` shows.
#[derive(Debug, Clone)]
pub struct LagView {
    /// Whether it runs.
    pub state: CatchupPhase,
    /// Why it failed, or last stopped.
    pub error: Option<String>,
    /// Times it was started again after stopping by itself.
    pub restarts: u64,
    /// When it started.
    pub started: Option<SystemTime>,
    /// Progress (zeros when it never ran).
    pub report: LagReport,
}

impl Catchup {
    /// CATCHUP START: checks the mapping and starts the replayer in the
    /// background; it resumes from the position confirmed on the target.
    /// With `bell` (rung when the capture log is written) it wakes on new
    /// records instead of polling for them.
    pub async fn start(&self, config: &Config, bell: Option<LogBell>) -> Result<(), CatchupError> {
        let _op = self.op.lock().await;
        self.reap();
        if matches!(*lock(&self.state), State::Running(_)) {
            return Err(CatchupError::State("catch-up is already running"));
        }
        let plan = Plan::prepare_with(config, bell.clone()).await?;
        let status = Arc::new(ReplayStatus::default());
        let (stop, stop_rx) = watch::channel(false);
        let retry = Arc::new(Retry::default());
        let task = tokio::spawn(supervise(
            config.clone(),
            bell,
            plan,
            status.clone(),
            stop_rx,
            retry.clone(),
        ));
        tracing::info!(workers = config.catchup.workers, "catch-up started");
        *lock(&self.state) = State::Running(Running {
            status,
            stop,
            task,
            started: SystemTime::now(),
            retry,
        });
        Ok(())
    }

    /// Tells a running replayer to stop reading the log, without waiting:
    /// [`Catchup::stop`] then lets the batches in hand commit.
    pub fn request_stop(&self) {
        if let State::Running(r) = &*lock(&self.state) {
            let _ = r.stop.send(true);
        }
    }

    /// CATCHUP STOP: lets the batches in hand commit, then stops.
    pub async fn stop(&self) -> Result<LagReport, CatchupError> {
        let _op = self.op.lock().await;
        let running = match std::mem::take(&mut *lock(&self.state)) {
            State::Running(r) => r,
            other => {
                *lock(&self.state) = other;
                return Err(CatchupError::State("catch-up is not running"));
            }
        };
        let _ = running.stop.send(true);
        match running.task.await {
            Ok(()) => Ok(running.status.report()),
            Err(e) => Err(CatchupError::State(if e.is_panic() {
                "catch-up ended abnormally"
            } else {
                "catch-up was cancelled"
            })),
        }
    }

    /// Moves a supervisor that ended by itself (it ends only on STOP, so it
    /// panicked) to `Failed`.
    fn reap(&self) {
        let mut state = lock(&self.state);
        let finished = matches!(&*state, State::Running(r) if r.task.is_finished());
        if !finished {
            return;
        }
        let State::Running(r) = std::mem::take(&mut *state) else {
            return;
        };
        let error = "the replayer ended abnormally".to_owned();
        tracing::error!(%error, "catch-up stopped");
        *state = State::Failed {
            error,
            status: r.status,
        };
    }

    /// The live progress of a running catch-up (the cutover waits on its
    /// confirmed position); `None` unless it is running.
    pub fn status(&self) -> Option<Arc<ReplayStatus>> {
        self.reap();
        match &*lock(&self.state) {
            State::Running(r) => Some(r.status.clone()),
            _ => None,
        }
    }

    /// Current progress.
    pub fn view(&self) -> LagView {
        self.reap();
        match &*lock(&self.state) {
            State::Off => LagView {
                state: CatchupPhase::Off,
                error: None,
                restarts: 0,
                started: None,
                report: LagReport::default(),
            },
            State::Running(r) => {
                let report = r.status.report();
                let error = lock(&r.retry.error).clone();
                // Retrying until a run has caught up again.
                let retrying = error.is_some() && !report.caught_up;
                LagView {
                    state: if retrying {
                        CatchupPhase::Retrying
                    } else {
                        CatchupPhase::Running
                    },
                    error,
                    restarts: r.retry.restarts.load(Relaxed),
                    started: Some(r.started),
                    report,
                }
            }
            State::Failed { error, status } => LagView {
                state: CatchupPhase::Failed,
                error: Some(error.clone()),
                restarts: 0,
                started: None,
                report: status.report(),
            },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `switchyard catchup run`: catch-up in the foreground, without a proxy,
/// with a status line; stops on SIGINT/SIGTERM, or once caught up when
/// `until_caught_up`. Returns the final progress.
pub async fn run_standalone(
    config: &Config,
    until_caught_up: bool,
    every: std::time::Duration,
) -> anyhow::Result<LagReport> {
    use tokio::signal::unix::{signal, SignalKind};
    let plan = Plan::prepare(config).await?;
    eprintln!(
        "mapping checked against both catalogs: {} table(s); replaying {} with {} worker(s)",
        plan.mapping.tables.len(),
        plan.options.log_dir.display(),
        plan.options.workers
    );
    let status = Arc::new(ReplayStatus::default());
    let (stop, stop_rx) = watch::channel(false);
    let mut task = tokio::spawn(plan.run(status.clone(), stop_rx));
    let mut term = signal(SignalKind::terminate())?;
    let mut line = crate::progress::Status::new(every);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let outcome = loop {
        tokio::select! {
            r = &mut task => break r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopping: the batches in hand are applied first");
                let _ = stop.send(true);
                break (&mut task).await;
            }
            _ = term.recv() => {
                let _ = stop.send(true);
                break (&mut task).await;
            }
            _ = tick.tick() => {
                let r = status.report();
                line.show(&describe(&r), false);
                if until_caught_up && r.caught_up {
                    let _ = stop.send(true);
                    break (&mut task).await;
                }
            }
        }
    };
    let report = status.report();
    line.finish(&describe(&report));
    match outcome {
        Ok(Ok(())) => Ok(report),
        Ok(Err(e)) => Err(anyhow::anyhow!("catch-up stopped: {e}")),
        Err(e) => Err(anyhow::anyhow!("catch-up ended abnormally: {e}")),
    }
}

/// One line of progress.
pub fn describe(r: &LagReport) -> String {
    format!(
        "{} confirmed {} / read {} · {} commit(s), {} key(s) pending · lag {:.3}s · {} rows applied · lag over the last minute p50 {:.1} ms p99 {:.1} ms",
        if r.caught_up { "caught up:" } else { "catching up:" },
        r.confirmed_lsn,
        r.read_lsn,
        r.commits_pending,
        r.keys_pending,
        r.lag_seconds,
        r.rows_applied,
        r.recent_lag_p50_ms,
        r.recent_lag_p99_ms
    )
}
