//! Switching capture on, in three parts: [`Parts`] gathers what capture
//! needs (the catalog, the log writer), [`Marked`] writes its start to the
//! log and the log directory's record, and [`Capture::install`] makes
//! sessions adopt it. `CAPTURE START` runs the three at once; the cutover
//! gathers capture on the target before its freeze, marks it just before
//! the flip is recorded, and installs it at the flip (see
//! [`Capture::hand_over`]), so the pause costs no connection or catalog
//! read.

use super::{
    clear_record, connect_control, from_micros, open_log, read_only_functions, unix_micros, watch_barrier,
    write_record, Active, Capture, CaptureError,
};
use crate::capture::state_file::CaptureRecord;
use crate::registry::Registry;
use crate::session::route::Destination;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};
use switchyard_replay::catalog::{CatalogCache, QualifiedName};
use switchyard_replay::log::{LogWriterHandle, Marker, Record};
use tokio::sync::watch;

/// Where capture runs: the server whose sessions it covers, and the
/// directory its log and its record live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// `[source]` before a cutover, `[target]` after it.
    pub server: Destination,
    /// `capture.log_dir` on the source; `cutover.target_log_dir` on the
    /// target.
    pub dir: PathBuf,
}

impl Place {
    /// Where capture runs while traffic goes to `server`.
    pub fn serving(config: &crate::config::Config, server: Destination) -> Place {
        let dir = match server {
            Destination::Source => config.capture.log_dir.clone(),
            Destination::Target => config.target_log_dir(),
        };
        Place { server, dir }
    }
}

/// What a capture needs before it can start: a connection to its server
/// with the catalog read through it, and its log open.
pub struct Parts {
    place: Place,
    database: String,
    client: tokio_postgres::Client,
    catalog: Arc<CatalogCache>,
    read_only: HashSet<QualifiedName>,
    read_only_unknown: Vec<String>,
    log: LogWriterHandle,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("place", &self.place)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl Parts {
    /// Where the capture will run.
    pub fn place(&self) -> &Place {
        &self.place
    }
}

/// A capture whose start is in its log and its directory's record: a proxy
/// restarted from here resumes it, if traffic goes to its server.
#[derive(Debug)]
pub struct Marked {
    parts: Parts,
    record: CaptureRecord,
    resumed: bool,
}

impl Capture {
    /// Gathers what a capture of `database` at `place` needs.
    pub(super) async fn gather(&self, place: Place, database: String) -> Result<Parts, CaptureError> {
        self.gather_with(place, database, None).await
    }

    /// [`Capture::gather`], starting from `catalog` when one was just loaded
    /// from the same database (a cutover's preflight has the target's).
    async fn gather_with(
        &self,
        place: Place,
        database: String,
        catalog: Option<switchyard_replay::catalog::Catalog>,
    ) -> Result<Parts, CaptureError> {
        // Sessions let go of a stopped capture at their next boundary; while
        // one still holds it, its log writer stays open and is reused (two
        // writers must never share a directory).
        let retired = self.retired.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let reuse = retired
            .and_then(|w| w.upgrade())
            .filter(|old| old.config.log_dir == place.dir)
            .map(|old| old.log());
        let client = self.control_client_at(place.server, &database).await?;
        let catalog = match catalog {
            Some(catalog) => CatalogCache::new(catalog),
            None => CatalogCache::load(&client)
                .await
                .map_err(|e| CaptureError::Catalog(place.server.name(), e.to_string()))?,
        };
        let catalog = Arc::new(catalog);
        let (read_only, read_only_unknown) = read_only_functions(&self.config, &catalog.current());
        let log = match reuse {
            Some(log) => log,
            None => open_log(place.dir.clone(), self.log_options()).await?,
        };
        log.ring_on_write(self.bell());
        Ok(Parts {
            place,
            database,
            client,
            catalog,
            read_only,
            read_only_unknown,
            log,
        })
    }

    /// Writes the start of the capture (new, or `resume` of a recorded one)
    /// to its log and its directory's record.
    pub(super) async fn mark(&self, parts: Parts, resume: Option<CaptureRecord>) -> Result<Marked, CaptureError> {
        let now = SystemTime::now();
        let marker = match resume {
            Some(_) => Marker::CaptureResume {
                time_micros: unix_micros(now),
            },
            None => Marker::CaptureStart {
                time_micros: unix_micros(now),
            },
        };
        let lsn = parts
            .log
            .append(Record::Marker(marker))
            .await
            .map_err(|e| CaptureError::Log(e.to_string()))?;
        // The epoch written is a floor for a resumed capture's; the one in
        // force is taken when it is installed.
        let epoch = self.epoch.load(SeqCst).max(resume.as_ref().map_or(0, |r| r.epoch)) + 1;
        let resumed = resume.is_some();
        let record = match resume {
            Some(r) => CaptureRecord {
                epoch,
                resumes: r.resumes + 1,
                ..r
            },
            None => CaptureRecord {
                database: parts.database.clone(),
                epoch,
                start_lsn: lsn.0,
                started_micros: unix_micros(now),
                barrier_micros: None,
                resumes: 0,
            },
        };
        write_record(&parts.place.dir, &record).await?;
        Ok(Marked { parts, record, resumed })
    }

    /// Switches the marked capture on: every session it covers adopts it
    /// at its next transaction. The caller holds `op`.
    pub(super) fn install(&self, sessions: &Arc<Registry>, marked: Marked) -> Arc<Active> {
        let Marked {
            parts,
            mut record,
            resumed,
        } = marked;
        let epoch = self.epoch.load(SeqCst).max(record.epoch.saturating_sub(1)) + 1;
        record.epoch = epoch;
        let barrier = OnceLock::new();
        if let Some(t) = record.barrier_micros {
            let _ = barrier.set(from_micros(t));
        }
        let mut config = self.config.clone();
        config.log_dir = parts.place.dir.clone();
        let (stop, stopped) = watch::channel(false);
        let active = Arc::new(Active {
            epoch,
            started: from_micros(record.started_micros),
            database: parts.database,
            server: parts.place.server,
            log: RwLock::new(parts.log),
            failure: Mutex::new(None),
            record: Mutex::new(record),
            catalog: parts.catalog.clone(),
            config,
            read_only: parts.read_only,
            read_only_unknown: parts.read_only_unknown,
            barrier,
            unsafe_seen: Mutex::new(BTreeMap::new()),
            commits: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            late: AtomicU64::new(0),
            log_watch: Default::default(),
            stop,
        });
        *self.place.lock().unwrap_or_else(|p| p.into_inner()) = parts.place.clone();
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = Some(active.clone());
        self.epoch.store(epoch, SeqCst);
        tracing::info!(
            epoch,
            database = %active.database,
            server = active.server.name(),
            resumed,
            log_dir = %parts.place.dir.display(),
            "capture started"
        );

        let every = Duration::from_millis(self.config.catalog_refresh_ms);
        let mut until_stop = stopped.clone();
        let pg = self.control_config_at(parts.place.server, &active.database).ok();
        let (catalog, client) = (parts.catalog, parts.client);
        tokio::spawn(async move {
            let stop = async move {
                let _ = until_stop.wait_for(|s| *s).await;
            };
            let connect = || connect_control(pg.clone());
            catalog.serve(client, connect, every, stop).await;
        });
        tokio::spawn(watch_barrier(
            Arc::downgrade(&active),
            sessions.clone(),
            stopped.clone(),
        ));
        tokio::spawn(crate::capture::retention::watch_log_dir(
            Arc::downgrade(&active),
            parts.place.dir.clone(),
            stopped.clone(),
        ));
        tokio::spawn(crate::capture::log_health::watch_log(
            Arc::downgrade(&active),
            parts.place.dir,
            self.log_options(),
            stopped,
        ));
        active
    }

    /// Switches capture on where it runs now (new, or `resume` of a
    /// recorded one).
    pub(super) async fn begin(
        &self,
        sessions: &Arc<Registry>,
        database: String,
        resume: Option<CaptureRecord>,
    ) -> Result<Arc<Active>, CaptureError> {
        let parts = self.gather(self.place(), database).await?;
        let marked = self.mark(parts, resume).await?;
        Ok(self.install(sessions, marked))
    }

    /// Before a cutover's freeze: what capture on the target needs, so that
    /// the flip costs no connection or catalog read. `catalog` is the
    /// target's, when the caller has just loaded it (it is read otherwise).
    /// Fails when the target's catalog cannot be read or its log directory
    /// cannot be written.
    pub async fn prepare_on_target(
        &self,
        catalog: Option<switchyard_replay::catalog::Catalog>,
    ) -> Result<Parts, CaptureError> {
        let database = self
            .proxy
            .capture_database()
            .ok_or(CaptureError::NoDatabase)?
            .to_owned();
        let place = Place::serving(&self.proxy, Destination::Target);
        if place.dir == self.place().dir {
            return Err(CaptureError::SameDirectory(place.dir));
        }
        // Traffic is on the source, so a record there is a cutover's that
        // was called off before its flip: that capture never ran.
        if stale_record(&place.dir).await {
            tracing::warn!(log_dir = %place.dir.display(), "removing the record of a capture on the target that never ran");
            clear_record(&place.dir).await?;
        }
        self.gather_with(place, database, catalog).await
    }

    /// Just before a cutover records its flip: the start of capture on the
    /// target goes to its log and record, so that a proxy restarted after
    /// the flip resumes it before admitting anyone.
    pub async fn mark_on_target(&self, parts: Parts) -> Result<Marked, CaptureError> {
        self.mark(parts, None).await
    }

    /// A cutover called off after [`Capture::mark_on_target`]: the start
    /// written is undone (a stop marker in that log, the record removed),
    /// so that no later start resumes a capture that never ran.
    pub async fn unmark(&self, marked: Marked) -> Result<(), CaptureError> {
        let Marked { parts, .. } = marked;
        let stopped = parts
            .log
            .append(Record::Marker(Marker::CaptureStop {
                time_micros: unix_micros(SystemTime::now()),
            }))
            .await
            .map_err(|e| CaptureError::Log(e.to_string()));
        let cleared = clear_record(&parts.place.dir).await;
        tracing::info!(log_dir = %parts.place.dir.display(), "capture on the target called off with the cutover");
        cleared.and(stopped.map(|_| ()))
    }

    /// The cutover's flip: sessions stop adopting the capture of the
    /// source, capture runs on the target from now on (`next` is switched on
    /// at once; none leaves it off until a CAPTURE START). Returns capture
    /// on the target, and a future that finishes stopping the source's (its
    /// record removed, its stop logged), which may run after the reopen.
    pub async fn hand_over(
        &self,
        sessions: &Arc<Registry>,
        next: Option<Marked>,
    ) -> (
        Option<Arc<Active>>,
        impl std::future::Future<Output = Result<(), CaptureError>> + '_,
    ) {
        let op = self.op.lock().await;
        let previous = self.retire_current();
        *self.place.lock().unwrap_or_else(|p| p.into_inner()) = Place::serving(&self.proxy, Destination::Target);
        let off = next.is_none().then(|| self.place().dir);
        let started = next.map(|m| self.install(sessions, m));
        let finish = async move {
            let _op = op;
            // Left off: no record of an earlier cutover's may resume it.
            let cleared = match off {
                Some(dir) if stale_record(&dir).await => clear_record(&dir).await,
                _ => Ok(()),
            };
            let stopped = match previous {
                Some(p) => self.finish_stop(&p).await,
                None => Ok(()),
            };
            stopped.and(cleared)
        };
        (started, finish)
    }
}

/// Whether `dir` holds a capture record (one that cannot be read counts:
/// clearing it is what the caller wants either way).
async fn stale_record(dir: &std::path::Path) -> bool {
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || !matches!(crate::capture::state_file::read(&d), Ok(None)))
        .await
        .unwrap_or(false)
}
