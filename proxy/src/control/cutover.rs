//! The cutover: move all traffic from the source to the migrated target
//! with a pause of milliseconds, no failed query and no reconnect, or call
//! it off cleanly.
//!
//! Steps, each recorded with its start and duration:
//! 1. **preflight** (nothing frozen): capture and catch-up are running
//!    with the lag under the limit, no uncaptured unsafe statement is
//!    unacknowledged, the mapping resolves against both catalogs, the
//!    sequences map, no session bypasses the proxy (unless allowed), and
//!    every session has opened its target backend in advance;
//! 2. **freeze**: the gate closes (new queries and logins wait) and open
//!    transactions finish, up to the drain timeout;
//! 3. **final_sync**: a freeze marker goes into the log; the replayer
//!    applies everything up to it and confirms;
//! 4. **sequences**: every sequence's real state read from the source and
//!    set on the target;
//! 5. **verify**: the rows the final pass synced, plus a sample of earlier
//!    ones, compared through the mapping;
//! 6. **flip**: the route turns to the target and every session moves at
//!    the boundary it waits at; catch-up and capture of the old source
//!    stop; the source is fenced as configured;
//! 7. **reopen**: the gate opens, now in front of the target.
//!
//! Anything that fails before the flip aborts: the open order is called
//! off, the gate reopens on the source, and capture and catch-up go on.
//! Past the start of the flip there is no way back that keeps every
//! session on one database, so the flip always finishes: sessions that
//! cannot move are closed with an error telling the client to reconnect.

mod fence;
mod keys;
mod options;
mod run;

pub use options::CutoverOptions;

use crate::server::Shared;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use thiserror::Error;
use tokio::sync::watch;

/// A step of the cutover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Checks and preparation, nothing frozen.
    Preflight,
    /// The gate closed, open transactions draining.
    Freeze,
    /// The replayer applying the last keys.
    FinalSync,
    /// Sequences set on the target.
    Sequences,
    /// Rows compared.
    Verify,
    /// Sessions moving to the target.
    Flip,
    /// The gate reopening.
    Reopen,
}

impl Step {
    /// The name shown on the console.
    pub fn name(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::Freeze => "freeze",
            Step::FinalSync => "final_sync",
            Step::Sequences => "sequences",
            Step::Verify => "verify",
            Step::Flip => "flip",
            Step::Reopen => "reopen",
        }
    }
}

/// Where a cutover is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Running this step.
    Running(Step),
    /// Traffic is on the target.
    Done,
    /// A dry run found everything ready (nothing was frozen).
    Ready,
    /// Called off at `step`: traffic stays on the source.
    Aborted {
        /// The step that failed.
        step: Step,
        /// Why, and what to do.
        reason: String,
    },
}

impl State {
    /// The name shown in SHOW STATUS.
    pub fn name(&self) -> String {
        match self {
            State::Running(Step::Freeze) => "frozen (draining)".to_owned(),
            State::Running(Step::Flip) => "flipping".to_owned(),
            State::Running(s) => s.name().to_owned(),
            State::Done => "done".to_owned(),
            State::Ready => "dry run: ready".to_owned(),
            State::Aborted { step, .. } => format!("aborted at {}", step.name()),
        }
    }

    /// Whether the cutover has ended.
    pub fn finished(&self) -> bool {
        !matches!(self, State::Running(_))
    }
}

/// One step as it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// Which.
    pub step: Step,
    /// When it started, ms after the cutover started.
    pub at_ms: f64,
    /// How long it took (`None` while it runs).
    pub ms: Option<f64>,
    /// What it did, or why it failed.
    pub detail: String,
}

/// The current or last cutover, as SHOW CUTOVER shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Counts cutovers since the proxy started.
    pub id: u64,
    /// Only preflight runs; nothing is frozen.
    pub dry_run: bool,
    /// The options it ran with.
    pub options: CutoverOptions,
    /// When it started.
    pub started: SystemTime,
    /// Where it is.
    pub state: State,
    /// Each step so far.
    pub steps: Vec<StepRecord>,
    /// Gate closed to gate reopened, ms (once the gate was closed).
    pub pause_ms: Option<f64>,
    /// Client sessions when the flip started.
    pub sessions: usize,
    /// Sessions moved to the target.
    pub sessions_moved: usize,
    /// Sessions closed by the flip, with why.
    pub sessions_closed: Vec<String>,
    /// Keys the final pass synced.
    pub keys_synced: u64,
    /// Rows compared in the verify step.
    pub rows_verified: u64,
    /// Sequences set on the target.
    pub sequences_set: usize,
    /// The freeze marker's log position.
    pub freeze_lsn: Option<u64>,
    /// Capture on the target after the flip: where it logs, or why it is
    /// off.
    pub capture_on_target: Option<String>,
    /// Tables the reverse mapping cannot rebuild source rows for (a
    /// rollback would need them), as `table: why`.
    pub reverse_mapping_errors: Vec<String>,
    /// Sessions connected to the target directly (not through the proxy)
    /// at preflight: what they write after the flip escapes capture on the
    /// target, so a rollback would miss it.
    pub target_direct_sessions: Vec<String>,
}

impl Report {
    fn new(id: u64, dry_run: bool, options: CutoverOptions) -> Report {
        Report {
            id,
            dry_run,
            options,
            started: SystemTime::now(),
            state: State::Running(Step::Preflight),
            steps: Vec::new(),
            pause_ms: None,
            sessions: 0,
            sessions_moved: 0,
            sessions_closed: Vec::new(),
            keys_synced: 0,
            rows_verified: 0,
            sequences_set: 0,
            freeze_lsn: None,
            capture_on_target: None,
            reverse_mapping_errors: Vec::new(),
            target_direct_sessions: Vec::new(),
        }
    }
}

/// Why a cutover cannot start.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StartError {
    /// One is running.
    #[error("a cutover is already running (SHOW CUTOVER shows it; ABORT calls it off)")]
    Running,
}

/// The proxy's cutover controller: at most one cutover at a time.
#[derive(Debug)]
pub struct Cutovers {
    report: watch::Sender<Option<Report>>,
    /// Set while one runs: sending a reason asks it to abort; `None` inside
    /// once it is past the point of no return (its flip).
    abort: Mutex<Option<Option<watch::Sender<Option<String>>>>>,
    next_id: AtomicU64,
}

/// What ABORT found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortOutcome {
    /// The running cutover was asked to abort.
    Asked,
    /// None runs.
    NotRunning,
    /// It is past its flip: it finishes on the target.
    TooLate,
}

/// Clears the running slot however the cutover task ends (a panic too),
/// publishing an abort if it ended without saying how.
struct Finished {
    shared: Arc<Shared>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let c = &self.shared.cutover;
        *lock(&c.abort) = None;
        let last = c.report.borrow().clone();
        if let Some(mut r) = last.filter(|r| !r.state.finished()) {
            let step = match r.state {
                State::Running(s) => s,
                _ => Step::Preflight,
            };
            r.state = State::Aborted {
                step,
                reason: "the cutover task ended abnormally; see the proxy's log".to_owned(),
            };
            c.report.send_replace(Some(r));
        }
    }
}

impl Default for Cutovers {
    fn default() -> Self {
        Cutovers {
            report: watch::channel(None).0,
            abort: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }
}

impl Cutovers {
    /// Starts a cutover (or a dry run) on its own task; the receiver sees
    /// each step as it happens.
    pub fn start(
        &self,
        shared: &Arc<Shared>,
        options: CutoverOptions,
        dry_run: bool,
    ) -> Result<watch::Receiver<Option<Report>>, StartError> {
        let mut abort = lock(&self.abort);
        if abort.is_some() {
            return Err(StartError::Running);
        }
        let (abort_tx, abort_rx) = watch::channel(None);
        *abort = Some(Some(abort_tx));
        let id = self.next_id.fetch_add(1, Relaxed);
        let report = Report::new(id, dry_run, options);
        self.report.send_replace(Some(report.clone()));
        let rx = self.report.subscribe();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _finished = Finished { shared: shared.clone() };
            run::Run::new(shared.clone(), report, abort_rx).go().await;
        });
        Ok(rx)
    }

    /// Asks the running cutover to abort. A cutover past the start of its
    /// flip finishes it regardless, and says so.
    pub fn abort(&self, reason: &str) -> AbortOutcome {
        match &*lock(&self.abort) {
            Some(Some(tx)) => {
                tx.send_replace(Some(reason.to_owned()));
                AbortOutcome::Asked
            }
            Some(None) => AbortOutcome::TooLate,
            None => AbortOutcome::NotRunning,
        }
    }

    /// The point of no return: from now on ABORT is refused. Returns the
    /// abort reason given before it, if any (then the cutover must abort).
    pub(crate) fn past_flip(&self, abort: &watch::Receiver<Option<String>>) -> Option<String> {
        let mut slot = lock(&self.abort);
        let reason = abort.borrow().clone();
        if reason.is_none() {
            if let Some(inner) = slot.as_mut() {
                *inner = None;
            }
        }
        reason
    }

    /// Whether one runs now.
    pub fn running(&self) -> bool {
        lock(&self.abort).is_some()
    }

    /// The current or last cutover.
    pub fn last(&self) -> Option<Report> {
        self.report.borrow().clone()
    }

    fn publish(&self, report: &Report) {
        self.report.send_replace(Some(report.clone()));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
