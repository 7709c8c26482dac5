//! Capture's shared control: whether capture is on, the log it writes to,
//! the source catalog keys are resolved with, the barrier, and the counters
//! SHOW CAPTURE reports.
//!
//! Sessions poll one atomic, the capture *epoch*, each time they leave a
//! transaction boundary ([`crate::registry::SessionInfo::enter_tx`]); when
//! it changed they pick up the [`Active`] capture of that epoch (or none).
//! So a session starts and stops capturing only between transactions, and
//! the barrier is reached once no session runs a transaction begun under an
//! older epoch.

use super::state_file::{self, CaptureRecord};
use crate::config::{CaptureConfig, DurabilityConfig, UnsafePolicy};
use crate::registry::{Registry, SessionInfo, ENTERING};
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_replay::catalog::{Catalog, CatalogCache, QualifiedName};
use switchyard_replay::log::{Durability, LogBell, LogError, LogOptions, LogWriter, LogWriterHandle, Marker, Record};
use thiserror::Error;
use tokio::sync::watch;

mod begin;
mod resume;
pub use begin::{Marked, Parts, Place};
pub use resume::{CaptureState, ResumePending};

/// Why capture could not start or stop.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// START while on, or STOP while off.
    #[error("{0}")]
    State(&'static str),
    /// The control connection to the captured server failed.
    #[error("cannot connect to the {0} to read its catalog: {1}")]
    Connect(&'static str, String),
    /// Reading the catalog failed.
    #[error("cannot read the {0}'s catalog: {1}")]
    Catalog(&'static str, String),
    /// The capture log could not be opened or written.
    #[error("capture log: {0}")]
    Log(String),
    /// The control connection has no user.
    #[error(
        "no user to read the catalog with: set capture.user (or source.user; target.user for the target) in the config"
    )]
    NoUser,
    /// No database is named to capture.
    #[error("no database to capture: name it (CAPTURE START <database>, or capture.database in the config)")]
    NoDatabase,
    /// CAPTURE START named another database than the config (or the
    /// capture to resume).
    #[error("CAPTURE START names database `{asked}`, but capture concerns `{named}` ({by}); name that one or none")]
    OtherDatabase {
        /// The database CAPTURE START named.
        asked: String,
        /// The one configured or recorded.
        named: String,
        /// Where `named` comes from.
        by: &'static str,
    },
    /// The log directory records a capture of another database than the
    /// config names.
    #[error("the log directory records a capture of database `{recorded}`, but the config names `{configured}`; CAPTURE STOP gives the recorded capture up")]
    RecordedOther {
        /// The database of the recorded capture.
        recorded: String,
        /// The one the config names.
        configured: String,
    },
    /// Capture on the target would log to the directory capture on the
    /// source logs to (after a config rotation, say).
    #[error(
        "capture on the target would log to {}, where capture on the source logs: set cutover.target_log_dir to another directory",
        .0.display()
    )]
    SameDirectory(std::path::PathBuf),
    /// The capture-state file could not be written or removed.
    #[error(transparent)]
    StateFile(#[from] state_file::StateFileError),
}

/// One kind of unsafe statement seen while capture is on.
#[derive(Debug, Clone, Default)]
pub struct UnsafeSeen {
    /// Statements of this kind seen.
    pub count: u64,
    /// How many of them were rejected.
    pub rejected: u64,
    /// The latest such statement (shortened).
    pub last: String,
    /// Of those let through (not rejected), how many a DBA acknowledged
    /// with `CAPTURE ACK` after inspecting them.
    pub acknowledged: u64,
}

impl UnsafeSeen {
    /// Statements let through uncaptured that nobody acknowledged yet: a
    /// cutover refuses while there are any (the target may miss their writes).
    pub fn unacknowledged(&self) -> u64 {
        (self.count - self.rejected).saturating_sub(self.acknowledged)
    }
}

/// A session holding the barrier back.
#[derive(Debug, Clone)]
pub struct Holder {
    /// Proxy session id.
    pub session: u64,
    /// Its user.
    pub user: String,
    /// Its backend's pid.
    pub backend_pid: i32,
}

/// A capture that is on.
#[derive(Debug)]
pub struct Active {
    /// The epoch sessions adopt it under.
    pub epoch: u64,
    /// When CAPTURE START ran (before any restart of the proxy).
    pub started: SystemTime,
    /// The one database captured, as `[source]` names it.
    pub database: String,
    /// The server whose sessions it covers: `[source]`, or `[target]`
    /// after a cutover.
    pub server: crate::session::route::Destination,
    /// The log commits are appended to; replaced when a failed log is
    /// writable again.
    log: RwLock<LogWriterHandle>,
    /// Set while the log cannot be written: commits are refused meanwhile.
    failure: Mutex<Option<LogFailure>>,
    /// What the log directory records about this capture.
    record: Mutex<CaptureRecord>,
    /// The source catalog, refreshed in the background.
    pub catalog: Arc<CatalogCache>,
    /// The capture settings in force; `log_dir` is the directory this
    /// capture writes to (`cutover.target_log_dir` on the target).
    pub config: CaptureConfig,
    /// `config.read_only_functions`, as catalog names.
    pub read_only: HashSet<QualifiedName>,
    /// Those the catalog did not know at CAPTURE START (a typo, or not yet
    /// created): listed by SHOW CAPTURE.
    pub read_only_unknown: Vec<String>,
    barrier: OnceLock<SystemTime>,
    unsafe_seen: Mutex<BTreeMap<&'static str, UnsafeSeen>>,
    /// Transactions logged.
    pub commits: AtomicU64,
    /// Keys logged.
    pub keys: AtomicU64,
    /// Transactions whose keys were logged only after their commit (a path
    /// capture did not hold); should stay 0.
    pub late: AtomicU64,
    /// The log directory as retention last saw it (size, holds, disk).
    log_watch: super::retention::LogWatch,
    stop: watch::Sender<bool>,
}

/// A capture log that cannot be written.
#[derive(Debug, Clone)]
pub struct LogFailure {
    /// The first error (the OS error and the file).
    pub error: String,
    /// When it was first met.
    pub since: SystemTime,
}

impl Active {
    /// The log to append to now.
    pub fn log(&self) -> LogWriterHandle {
        self.log.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records that an append failed; commits are refused until a probe
    /// finds the log writable again.
    pub fn log_failed(&self, error: &LogError) {
        if matches!(error, LogError::Closed) && self.log().failure().is_none() {
            // The failed writer closed by a probe that then found the log
            // writable: not a new failure.
            return;
        }
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!(error = %error, "capture log write failed; commits are refused until it is writable again");
            *f = Some(LogFailure {
                error: error.to_string(),
                since: SystemTime::now(),
            });
        }
    }

    /// A writable log in place of the failed one; commits go through again.
    pub(crate) fn replace_log(&self, log: LogWriterHandle) {
        *self.log.write().unwrap_or_else(|p| p.into_inner()) = log;
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The log failure in force, if any.
    pub fn failure(&self) -> Option<LogFailure> {
        if let Some(f) = self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(f);
        }
        // A writer can fail on an append nobody waited for (a marker).
        let e = self.log().failure()?;
        self.log_failed(&e);
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The log's size, oldest position, holds and disk space, as of the
    /// last retention pass (once a second).
    pub fn log_watch(&self) -> &super::retention::LogWatch {
        &self.log_watch
    }

    /// How many times a restarted proxy resumed this capture.
    pub fn resumes(&self) -> u64 {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).resumes
    }

    /// Whether a session is captured: its backend is on the captured
    /// database of the captured server.
    pub fn covers(&self, session: &SessionInfo) -> bool {
        session.backend_server() == self.server && session.backend_database() == Some(self.database.as_str())
    }

    /// When the barrier was reached, if it has been.
    pub fn barrier(&self) -> Option<SystemTime> {
        self.barrier.get().copied()
    }

    /// Records an unsafe statement and returns the policy to apply.
    pub fn saw_unsafe(&self, kind: &'static str, statement: &str) -> UnsafePolicy {
        let policy = self.config.policy_for(kind);
        let mut seen = self.unsafe_seen.lock().unwrap_or_else(|p| p.into_inner());
        let e = seen.entry(kind).or_default();
        e.count += 1;
        if policy == UnsafePolicy::Reject {
            e.rejected += 1;
        }
        e.last = shorten(statement, 200);
        policy
    }

    /// `CAPTURE ACK`: every unsafe statement let through so far is
    /// acknowledged. Returns how many were.
    pub fn acknowledge_unsafe(&self) -> u64 {
        let mut seen = self.unsafe_seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for e in seen.values_mut() {
            n += e.unacknowledged();
            e.acknowledged = e.count - e.rejected;
        }
        n
    }

    /// Unsafe statements seen, by kind.
    pub fn unsafe_seen(&self) -> BTreeMap<&'static str, UnsafeSeen> {
        self.unsafe_seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The configured read-only functions as catalog names, and those the
/// catalog does not know (warned about: the DBA may have mistyped one, and
/// statements reaching the real function stay refused).
fn read_only_functions(config: &CaptureConfig, catalog: &Catalog) -> (HashSet<QualifiedName>, Vec<String>) {
    let mut known = HashSet::new();
    let mut unknown = Vec::new();
    for (schema, name) in config.read_only_function_names() {
        let f = QualifiedName::new(schema, name);
        if !catalog.has_function(&f) {
            tracing::warn!(function = %f, "capture.read_only_functions names a function the source catalog does not have");
            unknown.push(format!("{}.{}", f.schema, f.name));
        }
        known.insert(f);
    }
    (known, unknown)
}

/// The proxy-wide capture switch.
#[derive(Debug)]
pub struct Capture {
    config: CaptureConfig,
    /// The proxy's config, for control connections to the captured database.
    proxy: crate::config::Config,
    epoch: AtomicU64,
    /// Where capture runs now; the cutover's flip moves it to the target.
    place: Mutex<Place>,
    active: Mutex<Option<Arc<Active>>>,
    /// The previous capture, until every session has let go of it.
    retired: Mutex<Option<Weak<Active>>>,
    pending: Mutex<Option<ResumePending>>,
    op: tokio::sync::Mutex<()>,
    /// Rung whenever a capture log of this proxy is written: catch-up,
    /// tailing the log, wakes on it instead of polling.
    bell: LogBell,
}

impl Capture {
    /// The bell every capture log of this proxy rings when written.
    pub fn bell(&self) -> LogBell {
        self.bell.clone()
    }

    /// Capture, off, on the server traffic goes to.
    pub fn new(config: &crate::config::Config, serving: crate::session::route::Destination) -> Capture {
        Capture {
            config: config.capture.clone(),
            proxy: config.clone(),
            epoch: AtomicU64::new(0),
            place: Mutex::new(Place::serving(config, serving)),
            active: Mutex::new(None),
            retired: Mutex::new(None),
            pending: Mutex::new(None),
            op: tokio::sync::Mutex::new(()),
            bell: LogBell::new(),
        }
    }

    /// The epoch atomic sessions read when leaving a boundary.
    pub fn epoch(&self) -> &AtomicU64 {
        &self.epoch
    }

    /// The capture sessions must use for transactions begun under `epoch`.
    pub fn active_for(&self, epoch: u64) -> Option<Arc<Active>> {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.as_ref().filter(|a| a.epoch == epoch).cloned()
    }

    /// The capture that is on, if any.
    pub fn current(&self) -> Option<Arc<Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The capture settings.
    pub fn config(&self) -> &CaptureConfig {
        &self.config
    }

    /// Where capture runs (or would run, when off).
    pub fn place(&self) -> Place {
        self.place.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// CAPTURE START [database]: reads the source catalog, opens the log,
    /// switches capture on for the next transaction of every session of the
    /// captured database, and watches for the barrier. With a capture
    /// pending resume, resumes it.
    pub async fn start(&self, sessions: &Arc<Registry>, database: Option<&str>) -> Result<Arc<Active>, CaptureError> {
        let _op = self.op.lock().await;
        if self.current().is_some() {
            return Err(CaptureError::State("capture is already on"));
        }
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(p) = pending {
            check_named(database, &p.record.database, "the capture to resume")?;
            if let Some(configured) = self.proxy.capture_database().filter(|n| *n != p.record.database) {
                return Err(CaptureError::RecordedOther {
                    recorded: p.record.database,
                    configured: configured.to_owned(),
                });
            }
            let a = self.begin(sessions, p.record.database.clone(), Some(p.record)).await?;
            *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(a);
        }
        let database = match (database, self.proxy.capture_database()) {
            (Some(asked), Some(named)) => {
                check_named(Some(asked), named, "capture.database / source.database")?;
                named
            }
            (Some(asked), None) => asked,
            (None, Some(named)) => named,
            (None, None) => return Err(CaptureError::NoDatabase),
        };
        self.begin(sessions, database.to_owned(), None).await
    }

    fn log_options(&self) -> LogOptions {
        LogOptions {
            durability: match self.config.durability {
                DurabilityConfig::Write => Durability::Write,
                DurabilityConfig::Fsync => Durability::Fsync,
            },
            segment_size: self.config.segment_bytes,
            ..LogOptions::default()
        }
    }

    /// CAPTURE STOP: sessions stop capturing at their next boundary; the log
    /// closes once the last transaction captured under this epoch ends. The
    /// log directory's record of capture is removed. With a capture pending
    /// resume, gives it up.
    pub async fn stop(&self) -> Result<(), CaptureError> {
        let _op = self.op.lock().await;
        self.stop_locked().await
    }

    /// Takes the capture that is on off: sessions stop adopting it at their
    /// next transaction. The caller holds `op`.
    fn retire_current(&self) -> Option<Arc<Active>> {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(a) = &active {
            self.epoch.fetch_add(1, SeqCst);
            let _ = a.stop.send(true);
            *self.retired.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(a));
        }
        active
    }

    async fn finish_stop(&self, active: &Arc<Active>) -> Result<(), CaptureError> {
        let cleared = clear_record(&active.config.log_dir).await;
        let marked = active
            .log()
            .append(Record::Marker(Marker::CaptureStop {
                time_micros: unix_micros(SystemTime::now()),
            }))
            .await
            .map_err(|e| CaptureError::Log(e.to_string()));
        tracing::info!(epoch = active.epoch, "capture stopped");
        cleared.and(marked.map(|_| ()))
    }

    async fn stop_locked(&self) -> Result<(), CaptureError> {
        let Some(active) = self.retire_current() else {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner()).take();
            let Some(p) = pending else {
                return Err(CaptureError::State("capture is not on"));
            };
            tracing::warn!(database = %p.record.database, "capture pending resume given up by CAPTURE STOP");
            return clear_record(&self.place().dir).await;
        };
        self.finish_stop(&active).await
    }

    /// Sessions whose open transaction began before the current capture.
    pub fn holders(&self, sessions: &Registry) -> Vec<Holder> {
        match self.current() {
            Some(a) => holders(sessions, &a),
            None => Vec::new(),
        }
    }

    /// Client sessions on the captured server that are not the proxy's:
    /// their writes would not be captured.
    pub async fn bypassing(&self, sessions: &Registry) -> Result<Vec<(i32, String)>, String> {
        let client = self.control_client().await.map_err(|e| e.to_string())?;
        let server = self.place().server;
        let ours: Vec<i32> = sessions
            .snapshot()
            .iter()
            .filter(|s| s.backend_server() == server)
            .map(|s| s.backend_pid())
            .filter(|p| *p != 0)
            .collect();
        foreign_sessions(&client, &ours).await.map_err(|e| e.to_string())
    }

    /// A connection to the captured server for pg_stat_activity: on the
    /// captured database (any database shows the whole cluster's activity).
    pub async fn control_client(&self) -> Result<tokio_postgres::Client, CaptureError> {
        let database = match self.state() {
            CaptureState::On(a) => a.database.clone(),
            CaptureState::ResumePending(p) => p.record.database,
            CaptureState::Off => self
                .proxy
                .capture_database()
                .ok_or(CaptureError::NoDatabase)?
                .to_owned(),
        };
        self.control_client_at(self.place().server, &database).await
    }

    /// A connection to `database` (as `[source]` names it) on `server`.
    async fn control_client_at(
        &self,
        server: crate::session::route::Destination,
        database: &str,
    ) -> Result<tokio_postgres::Client, CaptureError> {
        let pg = self.control_config_at(server, database)?;
        connect_control(Some(pg))
            .await
            .map_err(|e| CaptureError::Connect(server.name(), e))
    }

    /// The settings of [`Capture::control_client_at`]'s connection.
    fn control_config_at(
        &self,
        server: crate::session::route::Destination,
        database: &str,
    ) -> Result<switchyard_replay::Dsn, CaptureError> {
        let application = "switchyard capture";
        match server {
            crate::session::route::Destination::Source => self.proxy.source_control_on(application, database),
            // The target's database is the one the route moves sessions to.
            crate::session::route::Destination::Target => self.proxy.target_connection(application),
        }
        .map_err(|_| CaptureError::NoUser)
    }
}

/// Opens a control connection (none configured: an error saying so).
async fn connect_control(pg: Option<switchyard_replay::Dsn>) -> Result<tokio_postgres::Client, String> {
    let pg = pg.ok_or_else(|| CaptureError::NoUser.to_string())?;
    pg.connect("capture control").await.map_err(|e| e.to_string())
}

/// Fails when CAPTURE START named another database than `named`.
fn check_named(asked: Option<&str>, named: &str, by: &'static str) -> Result<(), CaptureError> {
    match asked {
        Some(a) if a != named => Err(CaptureError::OtherDatabase {
            asked: a.to_owned(),
            named: named.to_owned(),
            by,
        }),
        _ => Ok(()),
    }
}

async fn write_record(dir: &std::path::Path, record: &CaptureRecord) -> Result<(), CaptureError> {
    let (d, r) = (dir.to_owned(), record.clone());
    tokio::task::spawn_blocking(move || state_file::write(&d, &r))
        .await
        .map_err(|e| CaptureError::Log(e.to_string()))?
        .map_err(CaptureError::from)
}

async fn clear_record(dir: &std::path::Path) -> Result<(), CaptureError> {
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || state_file::clear(&d))
        .await
        .map_err(|e| CaptureError::Log(e.to_string()))?
        .map_err(CaptureError::from)
}

/// The client sessions on `client`'s server that are neither the proxy's
/// (`ours`: its sessions' backends there) nor its own connections (their
/// `application_name` starts `switchyard `), as `(pid, description)`.
pub(crate) async fn foreign_sessions(
    client: &tokio_postgres::Client,
    ours: &[i32],
) -> Result<Vec<(i32, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pid, coalesce(usename, ''), coalesce(datname, ''), coalesce(application_name, ''), \
                    coalesce(client_addr::text, 'local') \
             FROM pg_catalog.pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid() \
               AND NOT (pid = ANY($1)) AND coalesce(application_name, '') NOT LIKE 'switchyard %' \
             ORDER BY pid",
            &[&ours],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let desc = format!(
                "user {} database {} application '{}' from {}",
                row.get::<_, String>(1),
                row.get::<_, String>(2),
                row.get::<_, String>(3),
                row.get::<_, String>(4)
            );
            (row.get(0), desc)
        })
        .collect())
}

/// A time from Unix microseconds.
fn from_micros(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(t.max(0) as u64)
}

/// Opens the log. A session whose last commit is not settled yet keeps the
/// previous capture's writer open (its `Settled` marker goes there), for
/// milliseconds, or a few seconds after its client left mid-commit: wait
/// for it rather than fail.
async fn open_log(dir: std::path::PathBuf, options: LogOptions) -> Result<LogWriterHandle, CaptureError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(7);
    loop {
        let (d, o) = (dir.clone(), options.clone());
        let opened = tokio::task::spawn_blocking(move || LogWriter::open(&d, o))
            .await
            .map_err(|e| CaptureError::Log(e.to_string()))?;
        match opened {
            Err(switchyard_replay::LogError::Locked { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other.map_err(|e| CaptureError::Log(e.to_string())),
        }
    }
}

/// Sessions of the captured database whose open transaction began under
/// an epoch before the capture's.
fn holders(sessions: &Registry, active: &Active) -> Vec<Holder> {
    sessions
        .snapshot()
        .into_iter()
        .filter(|s| active.covers(s))
        .filter(|s| {
            let e = s.tx_epoch();
            e == ENTERING || e < active.epoch
        })
        .map(|s| Holder {
            session: s.id,
            user: s.user.clone(),
            backend_pid: s.backend_pid(),
        })
        .collect()
}

/// Waits until no session holds the barrier back, then records it.
async fn watch_barrier(active: Weak<Active>, sessions: Arc<Registry>, mut stopped: watch::Receiver<bool>) {
    loop {
        let Some(a) = active.upgrade() else { return };
        if holders(&sessions, &a).is_empty() {
            let now = SystemTime::now();
            if a.barrier.set(now).is_ok() {
                let record = {
                    let mut r = a.record.lock().unwrap_or_else(|p| p.into_inner());
                    r.barrier_micros = Some(unix_micros(now));
                    r.clone()
                };
                // CAPTURE STOP removes the record; do not bring it back.
                let stopping = *stopped.borrow();
                if stopping {
                    return;
                }
                if let Err(e) = write_record(&a.config.log_dir, &record).await {
                    tracing::error!(error = %e, "cannot record the capture barrier in the log directory");
                }
                if let Err(e) = a
                    .log()
                    .append(Record::Marker(Marker::Barrier {
                        time_micros: unix_micros(now),
                    }))
                    .await
                {
                    tracing::error!(error = %e, "cannot log the capture barrier");
                }
                tracing::info!("capture barrier reached");
            }
            return;
        }
        drop(a);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// At most `max` bytes of `s`, cut at a character boundary, with `…` if cut.
pub fn shorten(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Counts a commit logged.
pub(crate) fn count_commit(active: &Active, keys: usize) {
    active.commits.fetch_add(1, Relaxed);
    active.keys.fetch_add(keys as u64, Relaxed);
}
