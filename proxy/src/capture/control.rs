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

use crate::config::{CaptureConfig, DurabilityConfig, UnsafePolicy};
use crate::registry::{Registry, ENTERING};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_replay::catalog::CatalogCache;
use switchyard_replay::log::{Durability, LogOptions, LogWriter, LogWriterHandle, Marker, Record};
use thiserror::Error;
use tokio::sync::watch;

/// Why capture could not start or stop.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// START while on, or STOP while off.
    #[error("{0}")]
    State(&'static str),
    /// The control connection to the source failed.
    #[error("cannot connect to the source to read its catalog: {0}")]
    Connect(String),
    /// Reading the catalog failed.
    #[error("cannot read the source catalog: {0}")]
    Catalog(String),
    /// The capture log could not be opened or written.
    #[error("capture log: {0}")]
    Log(String),
    /// The control connection has no user.
    #[error("no user to read the source catalog with: set capture.user (or source.user) in the config")]
    NoUser,
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
    /// When CAPTURE START ran.
    pub started: SystemTime,
    /// The log commits are appended to.
    pub log: LogWriterHandle,
    /// The source catalog, refreshed in the background.
    pub catalog: Arc<CatalogCache>,
    /// The capture settings in force.
    pub config: CaptureConfig,
    barrier: OnceLock<SystemTime>,
    unsafe_seen: Mutex<BTreeMap<&'static str, UnsafeSeen>>,
    /// Transactions logged.
    pub commits: AtomicU64,
    /// Keys logged.
    pub keys: AtomicU64,
    /// Transactions whose keys were logged only after their commit (a path
    /// capture did not hold); should stay 0.
    pub late: AtomicU64,
    stop: watch::Sender<bool>,
}

impl Active {
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

    /// Unsafe statements seen, by kind.
    pub fn unsafe_seen(&self) -> BTreeMap<&'static str, UnsafeSeen> {
        self.unsafe_seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The proxy-wide capture switch.
#[derive(Debug)]
pub struct Capture {
    config: CaptureConfig,
    /// The control connection; none without a user to log in as.
    control: Option<tokio_postgres::Config>,
    epoch: AtomicU64,
    active: Mutex<Option<Arc<Active>>>,
    /// The previous capture, until every session has let go of it.
    retired: Mutex<Option<Weak<Active>>>,
    op: tokio::sync::Mutex<()>,
}

impl Capture {
    /// Capture, off.
    pub fn new(config: &crate::config::Config) -> Capture {
        Capture {
            config: config.capture.clone(),
            control: config.source_control("switchyard capture").ok(),
            epoch: AtomicU64::new(0),
            active: Mutex::new(None),
            retired: Mutex::new(None),
            op: tokio::sync::Mutex::new(()),
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

    /// CAPTURE START: reads the source catalog, opens the log, switches
    /// capture on for every session's next transaction, and watches for the
    /// barrier.
    pub async fn start(&self, sessions: &Arc<Registry>) -> Result<Arc<Active>, CaptureError> {
        let _op = self.op.lock().await;
        if self.current().is_some() {
            return Err(CaptureError::State("capture is already on"));
        }
        // Sessions let go of a stopped capture at their next boundary; while
        // one still holds it, its log writer stays open and is reused (two
        // writers must never share a directory).
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let reuse = retired.and_then(|w| w.upgrade()).map(|old| old.log.clone());
        let client = self.control_client().await?;
        let catalog = CatalogCache::load(&client)
            .await
            .map_err(|e| CaptureError::Catalog(e.to_string()))?;
        let catalog = Arc::new(catalog);
        let dir = self.config.log_dir.clone();
        let options = LogOptions {
            durability: match self.config.durability {
                DurabilityConfig::Write => Durability::Write,
                DurabilityConfig::Fsync => Durability::Fsync,
            },
            ..LogOptions::default()
        };
        let log = match reuse {
            Some(log) => log,
            None => open_log(dir, options).await?,
        };
        let started = SystemTime::now();
        log.append(Record::Marker(Marker::CaptureStart {
            time_micros: unix_micros(started),
        }))
        .await
        .map_err(|e| CaptureError::Log(e.to_string()))?;
        let (stop, stopped) = watch::channel(false);
        let epoch = self.epoch.load(SeqCst) + 1;
        let active = Arc::new(Active {
            epoch,
            started,
            log,
            catalog: catalog.clone(),
            config: self.config.clone(),
            barrier: OnceLock::new(),
            unsafe_seen: Mutex::new(BTreeMap::new()),
            commits: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            late: AtomicU64::new(0),
            stop,
        });
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Some(active.clone());
        self.epoch.store(epoch, SeqCst);
        tracing::info!(epoch, log_dir = %self.config.log_dir.display(), "capture started");

        let every = Duration::from_millis(self.config.catalog_refresh_ms);
        let mut until_stop = stopped.clone();
        let pg = self.control.clone();
        tokio::spawn(async move {
            let stop = async move {
                let _ = until_stop.wait_for(|s| *s).await;
            };
            let connect = || connect_control(pg.clone());
            catalog.serve(client, connect, every, stop).await;
        });
        tokio::spawn(watch_barrier(Arc::downgrade(&active), sessions.clone(), stopped));
        Ok(active)
    }

    /// CAPTURE STOP: sessions stop capturing at their next boundary; the log
    /// closes once the last transaction captured under this epoch ends.
    pub async fn stop(&self) -> Result<(), CaptureError> {
        let _op = self.op.lock().await;
        let Some(active) = self.active.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Err(CaptureError::State("capture is not on"));
        };
        self.epoch.fetch_add(1, SeqCst);
        let _ = active.stop.send(true);
        active
            .log
            .append(Record::Marker(Marker::CaptureStop {
                time_micros: unix_micros(SystemTime::now()),
            }))
            .await
            .map_err(|e| CaptureError::Log(e.to_string()))?;
        *self.retired.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(&active));
        tracing::info!(epoch = active.epoch, "capture stopped");
        Ok(())
    }

    /// Sessions whose open transaction began before the current capture.
    pub fn holders(&self, sessions: &Registry) -> Vec<Holder> {
        match self.current() {
            Some(a) => holders(sessions, a.epoch),
            None => Vec::new(),
        }
    }

    /// A connection to the source for catalog reads and pg_stat_activity.
    pub async fn control_client(&self) -> Result<tokio_postgres::Client, CaptureError> {
        let pg = self.control.clone().ok_or(CaptureError::NoUser)?;
        connect_control(Some(pg)).await.map_err(CaptureError::Connect)
    }
}

/// Opens a control connection (none configured: an error saying so).
async fn connect_control(pg: Option<tokio_postgres::Config>) -> Result<tokio_postgres::Client, String> {
    let pg = pg.ok_or_else(|| CaptureError::NoUser.to_string())?;
    let (client, conn) = pg.connect(tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "capture control connection ended");
        }
    });
    Ok(client)
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

/// Sessions whose open transaction began under an epoch before `epoch`.
fn holders(sessions: &Registry, epoch: u64) -> Vec<Holder> {
    sessions
        .snapshot()
        .into_iter()
        .filter(|s| {
            let e = s.tx_epoch();
            e == ENTERING || e < epoch
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
        if holders(&sessions, a.epoch).is_empty() {
            let now = SystemTime::now();
            if a.barrier.set(now).is_ok() {
                if let Err(e) = a
                    .log
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
