//! Catch-up replay (key sync): tails the capture log, groups and
//! de-duplicates keys per table, reads the current source rows for them,
//! maps them, and applies them to the target — upserting rows that exist,
//! deleting keys that no longer do — in one target transaction per batch
//! that also records the confirmed log position (schema `switchyard`).
//!
//! A commit record is written before its COMMIT reaches the source, so its
//! keys are read from the source only once the log says the transaction
//! has settled (`Marker::Settled`, written when the COMMIT is answered);
//! reading earlier could copy the rows as they were before the commit.
//!
//! Keys are hash-partitioned over workers, so one key is always handled by
//! the same worker and per-key order holds. Workers apply with
//! `session_replication_role = replica` and follow foreign keys themselves:
//! children of a deleted parent are re-synced, so ON DELETE CASCADE / SET
//! NULL converge. A restart resumes after the lowest confirmed position
//! (re-applying a key is harmless: rows are re-read, not replayed). That
//! position is also kept as the replayer's hold in the log directory (see
//! `hold`), so that capture deletes only segments it will never read again.

use crate::catalog::{Catalog, FkAction, QualifiedName};
use crate::log::{LogBell, LogReader, Lsn, Marker, Record};
use crate::mapping::rows::{key_arrays, key_match, q, read_by_keys_sql, text_arrays, type_of, unnest_keys, KeyText};
use crate::mapping::{ColumnSource, Resolved, TableMap};
use futures_util::future::try_join_all;
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

mod hold;

/// Why replay stopped.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// A database call failed.
    #[error("{what}: {}", crate::error_text(error))]
    Db {
        /// What was being done.
        what: String,
        /// The driver's error, rendered in the message (not a `source`:
        /// a chain printed with `{:#}` would say it twice).
        error: tokio_postgres::Error,
    },
    /// The log could not be read.
    #[error("capture log: {0}")]
    Log(#[from] crate::log::LogError),
    /// A logged table has no mapping.
    #[error("the log names table {0}, which the mapping does not know; re-resolve the mapping with the current source catalog")]
    Unmapped(String),
    /// A worker ended.
    #[error("replay worker {0} stopped")]
    Worker(usize),
    /// Another replayer is applying to the same target.
    #[error(
        "another replayer is applying to this target (CATCHUP in a proxy, or `switchyard catchup run`); stop it first"
    )]
    Busy,
}

fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ReplayError {
    let what = what.into();
    move |error| ReplayError::Db { what, error }
}

/// Replay settings.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The capture log.
    pub log_dir: PathBuf,
    /// Parallel workers (each with its own source and target connection).
    pub workers: usize,
    /// Keys per batch (per dispatch), at most.
    pub batch_keys: usize,
    /// How long to wait when the log has nothing new (without a bell).
    pub idle: Duration,
    /// How long keys gather after a dispatch before the next one (unless
    /// `batch_keys` are in hand, or a freeze marker was read): each worker
    /// then commits about once per interval, not once per source commit,
    /// for at most this much more lag.
    pub batch_every: Duration,
    /// Rung by the log's writer when records are written (a writer in the
    /// same process): the replayer then waits for it rather than polling
    /// every `idle`, and reads a new record as soon as it is written.
    pub bell: Option<LogBell>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            log_dir: PathBuf::from("switchyard-log"),
            workers: 4,
            batch_keys: 5_000,
            idle: Duration::from_millis(2),
            batch_every: Duration::from_millis(10),
            bell: None,
        }
    }
}

/// Live progress, shared with whoever reports lag.
#[derive(Debug)]
pub struct ReplayStatus {
    /// Highest log position read.
    pub read_lsn: AtomicU64,
    /// Highest position every worker has applied and committed.
    pub confirmed_lsn: AtomicU64,
    /// Keys read and not yet applied.
    pub keys_pending: AtomicU64,
    /// Rows upserted or deleted on the target.
    pub rows_applied: AtomicU64,
    /// Batches committed on the target.
    pub batches: AtomicU64,
    /// The last look at the log found nothing new.
    pub at_log_end: AtomicBool,
    /// Commits read and not yet confirmed: (position, commit time µs).
    unconfirmed: Mutex<VecDeque<(u64, i64)>>,
    /// Catch-up lag of each confirmed commit: from its commit on the source
    /// (as the proxy logged it) to its batch committing on the target, µs.
    lag: Mutex<Histogram<u64>>,
    /// Woken each time `confirmed_lsn` moves.
    confirmed_moved: tokio::sync::Notify,
    /// The same over the last minute.
    recent: Mutex<crate::lag_window::RecentLag>,
}

impl Default for ReplayStatus {
    fn default() -> Self {
        ReplayStatus {
            read_lsn: AtomicU64::new(0),
            confirmed_lsn: AtomicU64::new(0),
            keys_pending: AtomicU64::new(0),
            rows_applied: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            at_log_end: AtomicBool::new(false),
            unconfirmed: Mutex::new(VecDeque::new()),
            lag: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")),
            confirmed_moved: tokio::sync::Notify::new(),
            recent: Mutex::new(crate::lag_window::RecentLag::default()),
        }
    }
}

/// A point-in-time view of replay progress, for `SHOW LAG`, metrics and the CLI.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LagReport {
    /// Highest log position read.
    pub read_lsn: u64,
    /// Highest position applied on the target by every worker.
    pub confirmed_lsn: u64,
    /// Keys read and not yet applied.
    pub keys_pending: u64,
    /// Commits read and not yet applied.
    pub commits_pending: u64,
    /// Age of the oldest commit not yet applied, seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Rows upserted or deleted so far.
    pub rows_applied: u64,
    /// Target transactions committed so far.
    pub batches: u64,
    /// Per-commit catch-up lag percentiles since start, milliseconds.
    pub lag_p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub lag_p99_ms: f64,
    /// Largest, milliseconds.
    pub lag_max_ms: f64,
    /// Commits measured.
    pub commits_applied: u64,
    /// Per-commit catch-up lag over the last minute
    /// ([`crate::lag_window::WINDOW_SECS`]), 50th percentile, milliseconds.
    pub recent_lag_p50_ms: f64,
    /// 99th percentile over the last minute, milliseconds.
    pub recent_lag_p99_ms: f64,
    /// Largest over the last minute, milliseconds.
    pub recent_lag_max_ms: f64,
    /// Commits measured over the last minute.
    pub recent_commits_applied: u64,
    /// Everything in the log when last looked at is applied.
    pub caught_up: bool,
}

impl ReplayStatus {
    /// Commits just read, in log order.
    fn read(&self, commits: &[(u64, i64)]) {
        if !commits.is_empty() {
            lock(&self.unconfirmed).extend(commits.iter().copied());
        }
    }

    /// Every position up to `upto` is applied: measure the commits it covers.
    fn confirm(&self, upto: u64) {
        let now = unix_micros_now();
        let mut pending = lock(&self.unconfirmed);
        let mut lag = lock(&self.lag);
        let mut recent = lock(&self.recent);
        while let Some(&(lsn, commit)) = pending.front() {
            if lsn > upto {
                break;
            }
            pending.pop_front();
            let took = (now - commit).max(1) as u64;
            lag.saturating_record(took);
            recent.record(now, took);
        }
    }

    /// Waits until everything up to `lsn` is confirmed (true), or at most
    /// `timeout` (false): woken as the position moves, not polling it.
    pub async fn confirmed_by(&self, lsn: Lsn, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let moved = self.confirmed_moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if self.confirmed_lsn.load(Relaxed) >= lsn.0 {
                return true;
            }
            tokio::select! {
                _ = moved => {}
                _ = tokio::time::sleep_until(deadline) => return self.confirmed_lsn.load(Relaxed) >= lsn.0,
            }
        }
    }

    /// Forgets the lag measured so far (e.g. after a warm-up).
    pub fn reset_lag(&self) {
        lock(&self.lag).reset();
        lock(&self.recent).reset();
    }

    /// The per-commit lag histogram, µs.
    pub fn lag_histogram(&self) -> Histogram<u64> {
        lock(&self.lag).clone()
    }

    /// Progress as of now.
    pub fn report(&self) -> LagReport {
        let now = unix_micros_now();
        let (commits_pending, oldest) = {
            let pending = lock(&self.unconfirmed);
            (pending.len() as u64, pending.front().map(|&(_, c)| c))
        };
        let lag = lock(&self.lag);
        let recent = lock(&self.recent).merged(now);
        let ms = |v: u64| v as f64 / 1000.0;
        let read_lsn = self.read_lsn.load(Relaxed);
        let confirmed_lsn = self.confirmed_lsn.load(Relaxed);
        let keys_pending = self.keys_pending.load(Relaxed);
        LagReport {
            read_lsn,
            confirmed_lsn,
            keys_pending,
            caught_up: self.at_log_end.load(Relaxed)
                && commits_pending == 0
                && keys_pending == 0
                && confirmed_lsn >= read_lsn,
            commits_pending,
            lag_seconds: oldest.map_or(0.0, |c| (now - c).max(0) as f64 / 1e6),
            rows_applied: self.rows_applied.load(Relaxed),
            batches: self.batches.load(Relaxed),
            lag_p50_ms: ms(lag.value_at_quantile(0.5)),
            lag_p99_ms: ms(lag.value_at_quantile(0.99)),
            lag_max_ms: ms(lag.max()),
            commits_applied: lag.len(),
            recent_lag_p50_ms: ms(recent.value_at_quantile(0.5)),
            recent_lag_p99_ms: ms(recent.value_at_quantile(0.99)),
            recent_lag_max_ms: ms(recent.max()),
            recent_commits_applied: recent.len(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The position table on the target.
const SETUP: &str = "CREATE SCHEMA IF NOT EXISTS switchyard; \
    CREATE TABLE IF NOT EXISTS switchyard.replay_position (worker int PRIMARY KEY, lsn bigint NOT NULL, \
    updated_at timestamptz NOT NULL DEFAULT now())";

/// Creates the position table on the target and returns the position to
/// resume after (0 when nothing was applied yet).
pub async fn prepare_target(target: &Client) -> Result<Lsn, ReplayError> {
    target
        .batch_execute(SETUP)
        .await
        .map_err(db("create the switchyard schema on the target"))?;
    let row = target
        .query_one("SELECT coalesce(min(lsn), 0) FROM switchyard.replay_position", &[])
        .await
        .map_err(db("read the confirmed position"))?;
    Ok(Lsn(row.get::<_, i64>(0) as u64))
}

/// Every worker starts from `resume`, the lowest position any worker had
/// confirmed: one row per worker of this run (rows of workers of an earlier
/// run with more workers go), so a crash before a worker's first batch
/// still resumes from `resume`.
async fn reset_positions(target: &Client, resume: Lsn, workers: usize) -> Result<(), ReplayError> {
    target
        .batch_execute(&format!(
            "BEGIN; DELETE FROM switchyard.replay_position; \
             INSERT INTO switchyard.replay_position (worker, lsn) SELECT w, {} FROM generate_series(0, {}) AS w; \
             COMMIT",
            resume.0 as i64,
            workers as i64 - 1
        ))
        .await
        .map_err(db("reset the workers' positions"))
}

/// Holds the whole capture log at `log_dir` for the replayer onto `target`
/// before it first runs (a copy just made, which replays from the start):
/// without it, retention could delete what that replayer will need once
/// another replayer has confirmed. Returns the hold's name.
pub fn hold_log_for_new_copy(
    log_dir: &std::path::Path,
    target: &tokio_postgres::Config,
) -> Result<String, ReplayError> {
    let hold = hold::LogHold::new(log_dir.to_path_buf(), target);
    hold.write_blocking(Lsn(0))?;
    Ok(hold.name().to_owned())
}

/// One replayer per target: a session advisory lock held on the control
/// connection for the replayer's life (a crashed one's goes with its
/// connection; a few seconds are allowed for the server to notice).
async fn lock_target(control: &Client) -> Result<(), ReplayError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got: bool = control
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('switchyard replay')::bigint)",
                &[],
            )
            .await
            .map_err(db("lock the target for this replayer"))?
            .get(0);
        if got {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReplayError::Busy);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a worker gets: keys per table, and the position they run up to.
struct Batch {
    upto: Lsn,
    keys: BTreeMap<String, BTreeSet<KeyText>>,
}

/// Runs catch-up until `stop` turns true (finishing the batch in hand).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    source: impl Into<crate::Dsn>,
    target: impl Into<crate::Dsn>,
    mapping: Arc<Resolved>,
    source_catalog: Arc<Catalog>,
    target_catalog: Arc<Catalog>,
    options: ReplayOptions,
    status: Arc<ReplayStatus>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ReplayError> {
    let (source, target): (crate::Dsn, crate::Dsn) = (source.into(), target.into());
    let control = connect(&target, "target").await?;
    lock_target(&control).await?;
    let resume = prepare_target(&control).await?;
    let workers = options.workers.max(1);
    reset_positions(&control, resume, workers).await?;
    // The hold goes before the first read, so that the proxy's capture
    // keeps every segment from `resume` on from here.
    let hold = hold::LogHold::new(options.log_dir.clone(), &target.pg);
    hold.write(resume).await?;
    status.confirmed_lsn.store(resume.0, Relaxed);
    status.read_lsn.store(resume.0, Relaxed);
    // A status carried over from an earlier run: what it had in flight is
    // read again from `resume`.
    status.keys_pending.store(0, Relaxed);
    status.at_log_end.store(false, Relaxed);
    lock(&status.unconfirmed).clear();
    let mut senders = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    let confirmed: Arc<Vec<AtomicU64>> = Arc::new((0..workers).map(|_| AtomicU64::new(resume.0)).collect());
    // What each worker committed on the target with its position (behind
    // `confirmed` while idle positions are only in memory).
    let committed: Arc<Vec<AtomicU64>> = Arc::new((0..workers).map(|_| AtomicU64::new(resume.0)).collect());
    for w in 0..workers {
        let (tx, rx) = mpsc::channel::<Batch>(4);
        senders.push(tx);
        let worker = Worker {
            id: w,
            source: connect(&source, "source").await?,
            target: connect(&target, "target").await?,
            mapping: mapping.clone(),
            source_catalog: source_catalog.clone(),
            target_catalog: target_catalog.clone(),
            status: status.clone(),
            confirmed: confirmed.clone(),
            committed: committed.clone(),
        };
        handles.push(tokio::spawn(worker.run(rx)));
    }
    let keeper = tokio::spawn(hold.clone().keep(committed.clone(), resume));
    // Dropping this future (an aborted task) stops the workers with it, so
    // a restarted replayer never overlaps with the old one's batches.
    let mut aborts: Vec<_> = handles.iter().map(|h| h.abort_handle()).collect();
    aborts.push(keeper.abort_handle());
    let _workers = crate::AbortOnDrop(aborts);
    let mut reader = match LogReader::open(&options.log_dir, resume.next()) {
        Ok(reader) => reader,
        Err(e @ crate::log::LogError::LsnUnavailable { .. }) => {
            // What this replayer needs is gone: its hold would only stop
            // the log from being trimmed, for nothing.
            hold.release().await;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    // Commits read whose COMMIT may not be answered yet: their rows are read
    // from the source only once settled (see `Marker::Settled`).
    let mut waiting: BTreeMap<u64, Unsettled> = BTreeMap::new();
    let mut read_upto = resume;
    let mut dispatched_upto = resume;
    let checker = connect(&source, "source").await?;
    let mut last_check = Instant::now();
    let mut bell = options.bell.as_ref().map(LogBell::subscribe);
    // With a bell, the poll is only a safety net (a record written by a
    // writer that does not ring it).
    let idle = match bell {
        Some(_) => options.idle.max(BELL_FALLBACK_POLL),
        None => options.idle,
    };
    // Keys read and not yet dispatched: they gather for up to
    // `batch_every` after the last dispatch, so that the workers commit a
    // batch per interval rather than per source commit.
    let mut per = empty_batches(workers);
    let mut n = 0usize;
    let mut next_dispatch = Instant::now();
    // After a freeze marker every dispatch goes at once: the cutover's
    // final sync waits for it.
    let mut eager_until: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        // Seen before reading: a ring from here on means records the
        // reads below may have missed.
        if let Some(b) = bell.as_mut() {
            b.borrow_and_update();
        }
        let mut commits: Vec<(u64, i64)> = Vec::new();
        let mut read_any = false;
        while n < options.batch_keys {
            let Some(entry) = reader.next()? else { break };
            read_any = true;
            read_upto = entry.lsn;
            match entry.record {
                Record::Commit(c) => {
                    commits.push((entry.lsn.0, c.commit_time_micros));
                    for t in &c.tables {
                        if mapping.table(&QualifiedName::from_logged(&t.table)).is_none() {
                            return Err(ReplayError::Unmapped(t.table.clone()));
                        }
                    }
                    waiting.insert(
                        entry.lsn.0,
                        Unsettled {
                            since: Instant::now(),
                            tables: c.tables,
                            backend_pid: c.backend_pid,
                            commit_micros: c.commit_time_micros,
                        },
                    );
                }
                Record::Marker(Marker::Settled { commit }) => {
                    if let Some(u) = waiting.remove(&commit.0) {
                        n += assign(&mut per, u.tables, workers);
                    }
                }
                Record::Marker(Marker::CaptureStart { .. } | Marker::CaptureResume { .. }) => {
                    // A new capture: the sessions of an earlier one that never
                    // settled went away with their proxy. Look at their
                    // backends now rather than after the usual wait.
                    let overdue = Instant::now().checked_sub(SETTLE_TIMEOUT).unwrap_or_else(Instant::now);
                    for u in waiting.values_mut() {
                        u.since = overdue;
                    }
                    last_check = overdue;
                }
                Record::Marker(Marker::Freeze { .. }) => {
                    // Traffic froze with every session at a boundary: a
                    // commit before the marker not settled yet is one whose
                    // client went away mid-commit. Its backend is looked at
                    // now rather than after the usual wait, so the final
                    // sync does not sit out the timeout (and one still
                    // committing is waited for, never read too early).
                    let overdue = Instant::now().checked_sub(SETTLE_TIMEOUT).unwrap_or_else(Instant::now);
                    for u in waiting.values_mut() {
                        u.since = overdue;
                    }
                    last_check = overdue;
                    eager_until = Some(Instant::now() + EAGER_AFTER_FREEZE);
                }
                Record::Marker(_) => {}
            }
        }
        // A commit not settled for a while (its client or its proxy went
        // away mid-commit): settled once its backend on the source is no
        // longer in that transaction.
        if last_check.elapsed() >= SETTLE_CHECK_EVERY {
            let overdue: Vec<(u64, i32, i64)> = waiting
                .iter()
                .filter(|(_, u)| u.since.elapsed() >= SETTLE_TIMEOUT)
                .map(|(lsn, u)| (*lsn, u.backend_pid, u.commit_micros))
                .collect();
            if !overdue.is_empty() {
                last_check = Instant::now();
                for lsn in ended_on_source(&checker, &overdue).await? {
                    if let Some(u) = waiting.remove(&lsn) {
                        tracing::warn!(
                            lsn,
                            backend = u.backend_pid,
                            "commit never marked settled; its backend has moved on, replaying its keys"
                        );
                        n += assign(&mut per, u.tables, workers);
                    }
                }
            }
        }
        // Restart must re-read every commit not yet applied.
        let upto = match waiting.first_key_value() {
            Some((&first, _)) => Lsn(first - 1),
            None => read_upto,
        };
        if read_any {
            status.at_log_end.store(false, Relaxed);
            status.read_lsn.store(read_upto.0, Relaxed);
            status.read(&commits);
        }
        let nothing = n == 0 && upto == dispatched_upto;
        let now = Instant::now();
        let due = n >= options.batch_keys || now >= next_dispatch || eager_until.is_some_and(|e| now < e);
        if nothing || !due {
            // The log read to its end (or more is due before the dispatch):
            // wait for a ring, the next dispatch, or the poll.
            if !read_any || !due {
                if nothing && !read_any {
                    status.at_log_end.store(true, Relaxed);
                }
                if let Some(w) = handles.iter().position(|h| h.is_finished()) {
                    drop(senders);
                    return Err(join_failure(handles, w).await);
                }
                let rung = async {
                    let alive = match bell.as_mut() {
                        Some(b) => b.changed().await.is_ok(),
                        None => false,
                    };
                    if !alive {
                        std::future::pending::<()>().await;
                    }
                };
                let wake = if nothing {
                    now + idle
                } else {
                    next_dispatch.min(now + idle)
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(wake.into()) => {}
                    _ = rung => {}
                    _ = stop.changed() => {}
                }
            }
            continue;
        }
        next_dispatch = now + options.batch_every;
        dispatched_upto = upto;
        status.keys_pending.fetch_add(n as u64, Relaxed);
        n = 0;
        for (w, mut b) in std::mem::replace(&mut per, empty_batches(workers))
            .into_iter()
            .enumerate()
        {
            b.upto = upto;
            if senders[w].send(b).await.is_err() {
                // Close every queue first, so the healthy workers finish.
                drop(senders);
                return Err(join_failure(handles, w).await);
            }
        }
    }
    drop(senders);
    for (w, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(r) => r?,
            Err(_) => return Err(ReplayError::Worker(w)),
        }
    }
    keeper.abort();
    crate::linger::close_later(checker);
    hold.finish(&committed).await
}

/// One empty batch per worker.
fn empty_batches(workers: usize) -> Vec<Batch> {
    (0..workers)
        .map(|_| Batch {
            upto: Lsn(0),
            keys: BTreeMap::new(),
        })
        .collect()
}

/// How long after reading a freeze marker the replayer dispatches at once,
/// without gathering keys for `batch_every`: the cutover's final sync waits
/// on it (and on any commit settled just after the marker).
const EAGER_AFTER_FREEZE: Duration = Duration::from_secs(1);

async fn join_failure(handles: Vec<tokio::task::JoinHandle<Result<(), ReplayError>>>, w: usize) -> ReplayError {
    for h in handles {
        if let Ok(Err(e)) = h.await {
            return e;
        }
    }
    ReplayError::Worker(w)
}

/// Each batch's target transaction: no triggers or FK checks mid-catch-up,
/// and a lock wait short enough that a deadlock between workers costs
/// little (the batch is retried).
const LOCAL_SETTINGS: &str = "SET LOCAL session_replication_role = replica; SET LOCAL lock_timeout = '100ms'";

/// How often the log is looked at when a bell says when it grows.
const BELL_FALLBACK_POLL: Duration = Duration::from_millis(50);

/// How often a worker with nothing to apply records its position anyway.
const PERSIST_IDLE_POSITION: Duration = Duration::from_secs(1);

/// How long a commit may go unsettled before its backend is looked at.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often overdue commits' backends are looked at.
const SETTLE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A commit read, waiting for its `Settled` marker.
struct Unsettled {
    since: Instant,
    tables: Vec<crate::log::TableKeys>,
    /// The source backend that ran it (0: unknown) and the commit's time.
    backend_pid: i32,
    commit_micros: i64,
}

/// Which of `candidates` (lsn, backend pid, commit time µs) have surely
/// ended on the source: their backend is gone, idle, or in a transaction
/// that began after the commit was logged (a second's leeway for clocks).
/// A backend whose state this user may not see counts as busy; a pid of 0
/// (unknown) as ended.
async fn ended_on_source(source: &Client, candidates: &[(u64, i32, i64)]) -> Result<Vec<u64>, ReplayError> {
    let pids: Vec<i32> = candidates.iter().map(|c| c.1).filter(|p| *p != 0).collect();
    let rows = source
        .query(
            "SELECT pid, state IS NOT NULL, (extract(epoch FROM xact_start) * 1e6)::bigint \
             FROM pg_stat_activity WHERE pid = ANY($1)",
            &[&pids],
        )
        .await
        .map_err(db("check unsettled commits' backends on the source"))?;
    let seen: HashMap<i32, (bool, Option<i64>)> = rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect();
    Ok(candidates
        .iter()
        .filter(|(_, pid, commit)| match seen.get(pid) {
            None => true,
            Some((false, _)) => false,
            Some((true, None)) => true,
            Some((true, Some(started))) => *started > commit + 1_000_000,
        })
        .map(|(lsn, _, _)| *lsn)
        .collect())
}

/// Adds a commit's keys to the workers' batches; returns the keys new to them.
fn assign(per: &mut [Batch], tables: Vec<crate::log::TableKeys>, workers: usize) -> usize {
    let mut n = 0;
    for t in tables {
        for k in t.keys {
            let w = worker_of(&t.table, &k, workers);
            if per[w].keys.entry(t.table.clone()).or_default().insert(k) {
                n += 1;
            }
        }
    }
    n
}

fn worker_of(table: &str, key: &KeyText, workers: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.hash(&mut h);
    key.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

async fn connect(config: &crate::Dsn, what: &str) -> Result<Client, ReplayError> {
    config
        .connect("replay")
        .await
        .map_err(db(format!("connect to the {what}")))
}

struct Worker {
    id: usize,
    source: Client,
    target: Client,
    mapping: Arc<Resolved>,
    source_catalog: Arc<Catalog>,
    target_catalog: Arc<Catalog>,
    status: Arc<ReplayStatus>,
    confirmed: Arc<Vec<AtomicU64>>,
    committed: Arc<Vec<AtomicU64>>,
}

impl Worker {
    async fn run(mut self, rx: mpsc::Receiver<Batch>) -> Result<(), ReplayError> {
        let result = self.apply_batches(rx).await;
        // Catch-up stops at a cutover's flip: the backends' exits wait
        // until the sessions' first queries on the target are served.
        crate::linger::close_later(self.source);
        crate::linger::close_later(self.target);
        result
    }

    async fn apply_batches(&mut self, mut rx: mpsc::Receiver<Batch>) -> Result<(), ReplayError> {
        let mut persisted = Instant::now();
        while let Some(mut batch) = rx.recv().await {
            let mut n: usize = batch.keys.values().map(BTreeSet::len).sum();
            // Batches queued behind this one go in the same transaction: a
            // key is re-read, not replayed, so merging loses nothing and a
            // worker that falls behind catches up in fewer commits.
            while let Ok(more) = rx.try_recv() {
                n += more.keys.values().map(BTreeSet::len).sum::<usize>();
                batch.upto = more.upto;
                for (table, keys) in more.keys {
                    batch.keys.entry(table).or_default().extend(keys);
                }
            }
            // Nothing to apply: the position moves on in memory, and on the
            // target now and then (a restart from an older position only
            // re-reads keys).
            if n == 0 && persisted.elapsed() < PERSIST_IDLE_POSITION {
                self.confirm(batch.upto);
                continue;
            }
            persisted = Instant::now();
            // Following foreign keys can reach keys another worker owns;
            // their key locks may then deadlock. A lock wait gives up after
            // LOCK_TIMEOUT (rather than the server's deadlock_timeout, 1 s by
            // default): the batch rolls back and runs again (it re-reads the
            // source, so it converges).
            let mut attempt = 0u64;
            loop {
                match self.apply(&batch).await {
                    Ok(()) => {
                        self.committed[self.id].store(batch.upto.0, Relaxed);
                        break;
                    }
                    Err(ReplayError::Db { error, .. })
                        if attempt < 1_000
                            && error.code().is_some_and(|c| {
                                use tokio_postgres::error::SqlState;
                                *c == SqlState::T_R_DEADLOCK_DETECTED
                                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                                    || *c == SqlState::LOCK_NOT_AVAILABLE
                            }) =>
                    {
                        attempt += 1;
                        let backoff = (1 + attempt * (self.id as u64 + 1)).min(50);
                        tokio::time::sleep(Duration::from_millis(backoff)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
            self.status.keys_pending.fetch_sub(n as u64, Relaxed);
            self.status.batches.fetch_add(1, Relaxed);
            self.confirm(batch.upto);
        }
        Ok(())
    }

    /// This worker has applied everything up to `upto`.
    fn confirm(&self, upto: Lsn) {
        self.confirmed[self.id].store(upto.0, Relaxed);
        let min = self.confirmed.iter().map(|c| c.load(Relaxed)).min().unwrap_or(0);
        if self.status.confirmed_lsn.fetch_max(min, Relaxed) < min {
            self.status.confirm(min);
            self.status.confirmed_moved.notify_waiters();
        }
    }

    /// One batch in one target transaction, with the position.
    async fn apply(&mut self, batch: &Batch) -> Result<(), ReplayError> {
        let tx = self.target.transaction().await.map_err(db("begin on the target"))?;
        let mut queue: Vec<(QualifiedName, BTreeSet<KeyText>)> = Vec::new();
        let mut plain: Vec<(TableMap, &BTreeSet<KeyText>)> = Vec::new();
        for (t, k) in &batch.keys {
            let table = QualifiedName::from_logged(t);
            if k.is_empty() {
                continue;
            }
            if reached_by_followed_keys(&self.source_catalog, &table) {
                queue.push((table, k.clone()));
            } else {
                let map = self
                    .mapping
                    .table(&table)
                    .ok_or_else(|| ReplayError::Unmapped(table.to_string()))?;
                plain.push((map.clone(), k));
            }
        }
        // Tables that no followed foreign key reaches take no key locks and
        // lead to no other table: every one's source read goes out at once
        // (pipelined on the source connection, beside the settings on the
        // target), then every one's writes, instead of a round trip or two
        // per table.
        let settings = async {
            tx.batch_execute(LOCAL_SETTINGS)
                .await
                .map_err(db("set session_replication_role on the target"))
        };
        let reads = try_join_all(
            plain
                .iter()
                .map(|(map, keys)| read_rows(&self.source, map, &self.source_catalog, keys, &[])),
        );
        let (settings, found) = futures_util::future::join(settings, reads).await;
        settings?;
        let found = found?;
        let writes = try_join_all(
            plain
                .iter()
                .zip(&found)
                .map(|((map, keys), found)| write_rows(&tx, map, &self.target_catalog, keys, found)),
        );
        let mut rows: u64 = writes.await?.iter().map(|(touched, _)| touched).sum();
        let mut rounds = 0;
        while let Some((table, keys)) = queue.pop() {
            if keys.is_empty() {
                continue;
            }
            rounds += 1;
            let map = self
                .mapping
                .table(&table)
                .ok_or_else(|| ReplayError::Unmapped(table.to_string()))?
                .clone();
            let (applied, _deleted) = sync_keys(
                &self.source,
                &tx,
                &map,
                &self.source_catalog,
                &self.target_catalog,
                &keys,
            )
            .await?;
            rows += applied;
            // Children of parents written here: a delete on the source
            // cascaded to them (or nulled them) without capture seeing it —
            // also when the parent was deleted and created again since, which
            // de-duplication folds into one upsert. Re-sync them from the source.
            if rounds < 10_000 {
                for fk in self.source_catalog.referencing(&table) {
                    if matches!(fk.on_delete, FkAction::NoAction | FkAction::Restrict) {
                        continue;
                    }
                    let Some(child) = self.mapping.table(&fk.child) else {
                        continue;
                    };
                    let child_keys = referencing_keys(&tx, child, &map, fk, &keys, &self.target_catalog).await?;
                    if !child_keys.is_empty() {
                        queue.push((fk.child.clone(), child_keys));
                    }
                }
            }
        }
        tx.execute(
            "INSERT INTO switchyard.replay_position (worker, lsn) VALUES ($1, $2) \
             ON CONFLICT (worker) DO UPDATE SET lsn = excluded.lsn, updated_at = now()",
            &[&(self.id as i32), &(batch.upto.0 as i64)],
        )
        .await
        .map_err(db("record the confirmed position"))?;
        tx.commit().await.map_err(db("commit a batch on the target"))?;
        self.status.rows_applied.fetch_add(rows, Relaxed);
        Ok(())
    }
}

/// Rounds of locking referenced parents and reading again, at most; each
/// further round needs a row to move to another parent between two reads.
const PARENT_LOCK_ROUNDS: usize = 8;

/// The advisory lock of one key, named by the source table: a child row's
/// reference (known from the source catalog alone) then names the same lock
/// as its parent's own sync.
fn key_lock(table: &QualifiedName, key: &KeyText) -> i64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.hash(&mut h);
    key.hash(&mut h);
    h.finish() as i64
}

/// Takes `locks` (sorted, so that two workers take shared ones in one order)
/// until the target transaction ends.
async fn lock_keys(
    target: &tokio_postgres::Transaction<'_>,
    locks: &BTreeSet<i64>,
    table: &QualifiedName,
) -> Result<(), ReplayError> {
    let locks: Vec<i64> = locks.iter().copied().collect();
    target
        .execute_typed(
            "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k",
            &[(&locks, Type::INT8_ARRAY)],
        )
        .await
        .map_err(db(format!("lock keys of {table}")))?;
    Ok(())
}

/// Whether a foreign key that workers follow (not NO ACTION or RESTRICT)
/// has `table` as its child or its parent: then another worker may sync, or
/// lock, keys of `table` that hash to this one, and a batch may write keys
/// of it that were never logged (a parent's delete reaching its children).
pub fn reached_by_followed_keys(catalog: &Catalog, table: &QualifiedName) -> bool {
    let followed = |fk: &&crate::catalog::ForeignKey| !matches!(fk.on_delete, FkAction::NoAction | FkAction::Restrict);
    catalog.foreign_keys_of(table).iter().any(followed) || catalog.referencing(table).iter().any(followed)
}

/// Parent table and, per parent key column in key order, the referencing
/// column and the parent column's type.
type ParentRef = (QualifiedName, Vec<(String, String)>);

/// The foreign keys of `table` whose parent deletes reach it without capture
/// seeing it (the ones workers follow: not NO ACTION or RESTRICT), when they
/// reference the parent's key.
fn cascading_parents(catalog: &Catalog, table: &QualifiedName) -> Vec<ParentRef> {
    catalog
        .foreign_keys_of(table)
        .into_iter()
        .filter(|fk| !matches!(fk.on_delete, FkAction::NoAction | FkAction::Restrict))
        .filter_map(|fk| {
            let key = catalog.table_exact(&fk.parent.schema, &fk.parent.name)?.key.as_ref()?;
            if key.columns.len() != fk.parent_columns.len() {
                return None;
            }
            let cols = key
                .columns
                .iter()
                .map(|k| {
                    let i = fk.parent_columns.iter().position(|p| p == k)?;
                    Some((fk.child_columns.get(i)?.clone(), type_of(catalog, &fk.parent, k)))
                })
                .collect::<Option<Vec<_>>>()?;
            Some((fk.parent.clone(), cols))
        })
        .collect()
}

/// The locks of the parent keys `rows` reference; their parent key columns
/// start at `first`, in the order of `parents`.
fn parent_locks(rows: &[tokio_postgres::Row], parents: &[ParentRef], first: usize) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for row in rows {
        let mut at = first;
        for (parent, cols) in parents {
            let key: KeyText = (at..at + cols.len()).map(|i| row.get::<_, Option<String>>(i)).collect();
            at += cols.len();
            if key.iter().all(Option::is_some) {
                out.insert(key_lock(parent, &key));
            }
        }
    }
    out
}

/// Reads `keys` of one table from the source and applies them to the
/// target: upsert found rows, delete the rest. Returns the rows touched and
/// the keys deleted.
async fn sync_keys(
    source: &Client,
    target: &tokio_postgres::Transaction<'_>,
    map: &TableMap,
    source_catalog: &Catalog,
    target_catalog: &Catalog,
    keys: &BTreeSet<KeyText>,
) -> Result<(u64, BTreeSet<KeyText>), ReplayError> {
    let width = map.source_key.len();
    // Per-key locks on the target, taken before the source is read: two
    // workers syncing one key (a foreign key followed into another worker's
    // keys) then read and write it one after the other, never crosswise.
    // Keys of a table that no followed foreign key reaches, from either end,
    // are only ever synced by the worker they hash to and need no lock.
    let mut held: BTreeSet<i64> = BTreeSet::new();
    if reached_by_followed_keys(source_catalog, &map.source) {
        held = keys.iter().map(|k| key_lock(&map.source, k)).collect();
        lock_keys(target, &held, &map.target).await?;
    }
    let parents = cascading_parents(source_catalog, &map.source);
    let mut found = read_rows(source, map, source_catalog, keys, &parents).await?;
    // A row read here may reference a parent another worker is syncing right
    // now: if that parent was deleted on the source (cascading to this row),
    // the other worker looks for the parent's children on the target before
    // this transaction commits, cannot see this row, and nobody would remove
    // it. So lock the referenced parents' keys too and read again: either the
    // parent's sync committed before the lock was granted (and the second read
    // sees the cascade), or it waits for this commit and then finds the row.
    // A row that moves to yet another parent in between needs one more round.
    let ncols = map.columns.len();
    for _ in 0..PARENT_LOCK_ROUNDS {
        let wanted: BTreeSet<i64> = parent_locks(&found, &parents, ncols + width)
            .difference(&held)
            .copied()
            .collect();
        if wanted.is_empty() {
            break;
        }
        lock_keys(target, &wanted, &map.target).await?;
        held.extend(wanted);
        found = read_rows(source, map, source_catalog, keys, &parents).await?;
    }
    write_rows(target, map, target_catalog, keys, &found).await
}

/// The source rows of `keys`: the mapped values, the key, then the keys of
/// the `parents` each row references (as the parent's key text).
async fn read_rows(
    source: &Client,
    map: &TableMap,
    source_catalog: &Catalog,
    keys: &BTreeSet<KeyText>,
    parents: &[ParentRef],
) -> Result<Vec<tokio_postgres::Row>, ReplayError> {
    let arrays = key_arrays(keys, map.source_key.len());
    let parents_out = parents
        .iter()
        .flat_map(|(_, cols)| cols.iter().map(|(c, ty)| format!("s.{}::{ty}::text", q(c))));
    let select = read_by_keys_sql(map, source_catalog, parents_out);
    source
        .query_typed(&select, &text_arrays(&arrays))
        .await
        .map_err(db(format!("read {} from the source", map.source)))
}

/// Applies what the source holds of `keys` (`found`, as [`read_rows`]
/// returns it) to the target: upserts the rows found, deletes the other
/// keys. Returns the rows touched and the keys deleted.
async fn write_rows(
    target: &tokio_postgres::Transaction<'_>,
    map: &TableMap,
    target_catalog: &Catalog,
    keys: &BTreeSet<KeyText>,
    found: &[tokio_postgres::Row],
) -> Result<(u64, BTreeSet<KeyText>), ReplayError> {
    let width = map.source_key.len();
    let ncols = map.columns.len();
    let mut present: BTreeSet<KeyText> = BTreeSet::new();
    let mut cols: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(found.len()); ncols];
    for row in found {
        for (i, c) in cols.iter_mut().enumerate() {
            c.push(row.get::<_, Option<String>>(i));
        }
        present.insert((0..width).map(|i| row.get::<_, Option<String>>(ncols + i)).collect());
    }
    let mut touched = 0;
    if !found.is_empty() {
        let names: Vec<String> = map.columns.iter().map(|(t, _)| q(t)).collect();
        let casts: Vec<String> = map
            .columns
            .iter()
            .enumerate()
            .map(|(i, (t, _))| format!("u.c{i}::{}", type_of(target_catalog, &map.target, t)))
            .collect();
        let un: Vec<String> = (1..=ncols).map(|i| format!("${i}::text[]")).collect();
        let cn: Vec<String> = (0..ncols).map(|i| format!("c{i}")).collect();
        let updates: Vec<String> = map
            .columns
            .iter()
            .filter(|(t, _)| !map.target_key.contains(t))
            .map(|(t, _)| format!("{} = excluded.{}", q(t), q(t)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let target_key: Vec<String> = map.target_key.iter().map(|c| q(c)).collect();
        let upsert = format!(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM unnest({}) AS u({}) ON CONFLICT ({}) {}",
            map.target.qualified(),
            names.join(", "),
            casts.join(", "),
            un.join(", "),
            cn.join(", "),
            target_key.join(", "),
            on_conflict
        );
        touched += target
            .execute_typed(&upsert, &text_arrays(&cols))
            .await
            .map_err(db(format!("upsert into {}", map.target)))?;
    }
    let deleted: BTreeSet<KeyText> = keys.iter().filter(|k| !present.contains(*k)).cloned().collect();
    if !deleted.is_empty() {
        touched += delete_keys(target, map, target_catalog, &deleted).await?;
    }
    Ok((touched, deleted))
}

async fn delete_keys(
    target: &tokio_postgres::Transaction<'_>,
    map: &TableMap,
    target_catalog: &Catalog,
    keys: &BTreeSet<KeyText>,
) -> Result<u64, ReplayError> {
    let width = map.target_key.len();
    let arrays = key_arrays(keys, width);
    let sql = format!(
        "DELETE FROM {} t USING {} WHERE {}",
        map.target.qualified(),
        unnest_keys(width, 1),
        key_match("t", &map.target_key, target_catalog, &map.target)
    );
    target
        .execute_typed(&sql, &text_arrays(&arrays))
        .await
        .map_err(db(format!("delete from {}", map.target)))
}

/// Source keys of the target rows of `child` that reference the deleted
/// `parent` keys through `fk`.
async fn referencing_keys(
    target: &tokio_postgres::Transaction<'_>,
    child: &TableMap,
    parent: &TableMap,
    fk: &crate::catalog::ForeignKey,
    deleted: &BTreeSet<KeyText>,
    target_catalog: &Catalog,
) -> Result<BTreeSet<KeyText>, ReplayError> {
    // The deleted parent keys, reordered to the FK's parent columns.
    let order: Option<Vec<usize>> = fk
        .parent_columns
        .iter()
        .map(|c| parent.source_key.iter().position(|k| k == c))
        .collect();
    // The child's FK columns as target columns (plain copies only).
    let child_cols: Option<Vec<String>> = fk
        .child_columns
        .iter()
        .map(|c| {
            child
                .columns
                .iter()
                .find(|(_, s)| s == &ColumnSource::Column(c.clone()))
                .map(|(t, _)| t.clone())
        })
        .collect();
    let (Some(order), Some(child_cols)) = (order, child_cols) else {
        return Ok(BTreeSet::new());
    };
    let values: BTreeSet<KeyText> = deleted
        .iter()
        .map(|k| order.iter().map(|&i| k.get(i).cloned().flatten()).collect())
        .collect();
    let arrays = key_arrays(&values, order.len());
    let out: Vec<String> = child.target_key.iter().map(|c| format!("t.{}::text", q(c))).collect();
    let sql = format!(
        "SELECT {} FROM {} t JOIN {} ON {}",
        out.join(", "),
        child.target.qualified(),
        unnest_keys(order.len(), 1),
        key_match("t", &child_cols, target_catalog, &child.target)
    );
    let rows = target
        .query_typed(&sql, &text_arrays(&arrays))
        .await
        .map_err(db(format!("find rows of {} referencing deleted keys", child.target)))?;
    // Target key i was copied from source key i: the same values.
    Ok(rows
        .iter()
        .map(|r| (0..out.len()).map(|i| r.get::<_, Option<String>>(i)).collect())
        .collect())
}

/// Positions per worker, for reports.
pub async fn positions(target: &Client) -> Result<HashMap<i32, i64>, ReplayError> {
    let rows = target
        .query("SELECT worker, lsn FROM switchyard.replay_position", &[])
        .await
        .map_err(db("read replay positions"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
