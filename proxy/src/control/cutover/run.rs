//! One cutover, step by step, on its own task. Every step before the flip
//! runs under [`Run::within`]: the DBA's ABORT, the proxy's shutdown and
//! the pause limit each end it with a failure of that step, and the
//! guards it holds (the closed gate, the open move order) undo the freeze
//! as they drop.

use super::keys::{self, TableKeys};
use super::{Report, State, Step, StepRecord};
use crate::capture::control::Active;
use crate::config::{OnDrainTimeout, VerifyMode};
use crate::gate::{Closed, GateError};
use crate::registry::Shown;
use crate::server::Shared;
use crate::session::route::{Destination, MoveRequest, Order, PinnedPolicy};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_replay::log::Lsn;
use switchyard_replay::mapping::Resolved;
use switchyard_replay::replayer::ReplayStatus;
use switchyard_replay::sequences::SequencePlan;
use tokio::sync::watch;
use tokio_postgres::Client;

use super::fence;

mod final_pass;

/// Why a step failed.
struct Failure {
    step: Step,
    reason: String,
}

/// With `ON_DRAIN_TIMEOUT cancel`, how long after the cancel the sessions
/// still in a transaction are asked to end it (their client hears 57P01).
const TERMINATE_AFTER: Duration = Duration::from_secs(1);

/// How many sessions open their target backend at once in preflight: one
/// up to 25 sessions, since every backend's start and warm-up takes CPU
/// from the busy source's transactions (sixteen at once stalled them for
/// 50-80 ms on two cores; two at a time, each turn resting as long as its
/// opening took, still left a few such stalls), and more with more
/// sessions, so that they all open in about 25 waves: within the open
/// timeout even when each open costs a distant target several round
/// trips (25 waves of 300 ms and their 50 ms rests take under 9 s).
fn open_at_once(sessions: usize) -> usize {
    sessions.div_ceil(25).max(1)
}

/// What preflight prepared for the freeze.
struct Ready {
    source: Client,
    target: Client,
    mapping: Arc<Resolved>,
    source_catalog: Arc<switchyard_replay::catalog::Catalog>,
    target_catalog: Arc<switchyard_replay::catalog::Catalog>,
    sequences: SequencePlan,
    sample: TableKeys,
    /// The log followed up to the end of preflight (taken by the final pass).
    tail: Option<keys::Tail>,
    active: Arc<Active>,
    status: Arc<ReplayStatus>,
    order: Order,
    /// Capture on the target, gathered (none when the options leave it off).
    target_capture: Option<crate::capture::control::Parts>,
}

pub(super) struct Run {
    shared: Arc<Shared>,
    report: Report,
    abort: watch::Receiver<Option<String>>,
    started: Instant,
    step: Step,
    step_started: Instant,
    /// Preflight's parts so far, each with its time in ms, for its report.
    parts: Vec<(&'static str, f64)>,
    part_started: Instant,
}

impl Run {
    pub(super) fn new(shared: Arc<Shared>, report: Report, abort: watch::Receiver<Option<String>>) -> Run {
        Run {
            shared,
            report,
            abort,
            started: Instant::now(),
            step: Step::Preflight,
            step_started: Instant::now(),
            parts: Vec::new(),
            part_started: Instant::now(),
        }
    }

    /// Runs the cutover to its end and publishes the outcome.
    pub(super) async fn go(mut self) {
        tracing::info!(id = self.report.id, dry_run = self.report.dry_run, options = %self.report.options.describe(), "cutover started");
        let outcome = self.steps().await;
        self.report.state = match outcome {
            Ok(()) if self.report.dry_run => State::Ready,
            Ok(()) => State::Done,
            Err(f) => {
                if let Some(last) = self
                    .report
                    .steps
                    .last_mut()
                    .filter(|s| s.step == f.step && s.ms.is_none())
                {
                    last.ms = Some(ms(self.step_started.elapsed()));
                    last.detail = format!("failed: {}", f.reason);
                }
                State::Aborted {
                    step: f.step,
                    reason: f.reason,
                }
            }
        };
        match &self.report.state {
            State::Aborted { step, reason } => {
                tracing::warn!(id = self.report.id, step = step.name(), %reason, "cutover aborted; traffic stays on the source");
                crate::stats::Stats::bump(&self.shared.stats.cutovers_aborted);
            }
            state => {
                tracing::info!(id = self.report.id, state = %state.name(), pause_ms = self.report.pause_ms, "cutover finished");
                if *state == State::Done {
                    crate::stats::Stats::bump(&self.shared.stats.cutovers_done);
                }
            }
        }
        self.publish();
    }

    async fn steps(&mut self) -> Result<(), Failure> {
        self.begin(Step::Preflight);
        let ready = self.preflight().await?;
        if self.report.dry_run {
            self.end(format!(
                "ready: {} session(s) have their target backend open (released again: dry run)",
                ready.order.report().sessions
            ));
            return Ok(());
        }
        let parts: Vec<String> = self.parts.iter().map(|(p, ms)| format!("{p} {ms:.1}")).collect();
        self.end(format!(
            "{} session(s) opened their target backend in {:.1} ms; {} sequence(s) mapped; {} sample key(s); {}; \
             ms spent on: {}",
            ready.order.report().sessions,
            ready.order.report().open_ms,
            ready.sequences.sequences().len(),
            keys::count(&ready.sample),
            capture_on_target_plan(&ready, &self.report),
            parts.join(", ")
        ));

        self.begin(Step::Freeze);
        let closed = self.shared.gate.close_now().map_err(|e| self.fail(format!("{e}")))?;
        let frozen = Instant::now();
        let limit = frozen + self.report.options.max_pause;
        self.drain(&closed, limit).await?;
        self.end(format!(
            "every session at a transaction boundary after {:.1} ms",
            ms(frozen.elapsed())
        ));

        // Capture on the target is in its log directory's record before the
        // route is: a proxy restarted after the flip resumes it before
        // admitting anyone. The mark is written on its own task while the
        // final pass runs (every session is at a boundary from here on), so
        // that its write is off the pause's path, and a cutover called off
        // meanwhile waits for it and undoes it.
        let mut ready = ready;
        let mark = ready.target_capture.take().map(|parts| {
            let shared = self.shared.clone();
            tokio::spawn(async move { shared.capture.mark_on_target(parts).await })
        });
        let tail = ready.tail.take();
        if let Err(failure) = self.final_pass(&ready, tail, limit).await {
            if let Some(mark) = mark {
                if let Ok(Ok(m)) = mark.await {
                    self.unmark(m).await;
                }
            }
            return Err(failure);
        }
        let verified = Instant::now();
        let marked = match mark {
            Some(mut mark) => {
                let done = match self.within(limit, &mut mark).await {
                    Ok(done) => done,
                    Err(failure) => {
                        if let Ok(Ok(m)) = mark.await {
                            self.unmark(m).await;
                        }
                        return Err(failure);
                    }
                };
                let marked = done
                    .map_err(|e| self.fail(format!("starting capture on the target failed: {e}")))?
                    .map_err(|e| {
                        self.fail(format!(
                            "cannot start capture on the target ({e}); CAPTURE_ON_TARGET off cuts over without it \
                             (a rollback then has no log to replay)"
                        ))
                    })?;
                Some(marked)
            }
            None => None,
        };
        // A proxy started again must not send the applications back: the
        // route is recorded before the flip, and a cutover that cannot
        // record it does not flip. (Should the proxy stop between the two,
        // the target is in sync and the source was not written since the
        // freeze.)
        let mark_wait = verified.elapsed();
        if let Some(target) = self.shared.config.target.clone() {
            // On a blocking thread: its fsync must not stall the runtime's.
            let shared = self.shared.clone();
            let recorded = tokio::task::spawn_blocking(move || {
                crate::control::route_file::record(&shared.config, &target).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(e) = recorded {
                let failure = self.fail(format!(
                    "cannot record that traffic moves to the target ({e}); a restarted proxy would send it back"
                ));
                if let Some(m) = marked {
                    self.unmark(m).await;
                }
                return Err(failure);
            }
        }
        let recorded = verified.elapsed().saturating_sub(mark_wait);
        if let Some(reason) = self.shared.cutover.past_flip(&self.abort) {
            crate::control::route_file::forget(&self.shared.config);
            if let Some(m) = marked {
                self.unmark(m).await;
            }
            return Err(self.fail(format!("aborted: {reason}")));
        }

        // From here on the cutover finishes whatever happens: the target is
        // in sync and the source is no longer written.
        self.begin(Step::Flip);
        let source_log_dir = ready.active.config.log_dir.clone();
        let Ready {
            source,
            target,
            mut order,
            status: _,
            ..
        } = ready;
        // Pinned sessions cannot unpin while frozen: they are closed at once.
        order.close_pinned_at(Instant::now());
        let moved = order.go().await;
        self.report.sessions = moved.sessions;
        self.report.sessions_moved = moved.moved;
        self.report.sessions_closed = moved
            .closed_why
            .iter()
            .map(|(id, why)| format!("session {id}: {why}"))
            .collect();
        let detail = format!(
            "{} of {} session(s) moved in {:.1} ms, {} closed, {} still to move at their boundary; \
             before it, {:.1} ms waiting for capture on the target's start to be recorded and {:.1} ms recording \
             the route",
            moved.moved,
            moved.sessions,
            moved.move_ms,
            moved.closed,
            moved.waiting + moved.failed + moved.pinned,
            ms(mark_wait),
            ms(recorded),
        );
        // Sessions on the target must not adopt the source's capture, and
        // nothing may copy a source row over a target write once the gate
        // opens: capture moves to the target (every session is at a
        // boundary, so its barrier is reached at once), and catch-up is told
        // to read no further (everything up to the freeze marker is applied;
        // it stops fully after the reopen).
        self.shared.catchup.request_stop();
        let shared = self.shared.clone();
        let (on_target, capture_stopped) = shared.capture.hand_over(&shared.sessions, marked).await;
        self.report.capture_on_target = Some(match &on_target {
            Some(a) => format!("on, logging to {}", a.config.log_dir.display()),
            None => "off (CAPTURE START starts it on the target)".to_owned(),
        });
        self.end(detail);

        self.begin(Step::Reopen);
        drop(closed);
        let pause = frozen.elapsed();
        self.report.pause_ms = Some(ms(pause));
        let mut detail = format!("the gate is open on the target; the pause was {:.1} ms", ms(pause));
        // What follows runs with traffic flowing again; each part's time is
        // in the detail, since it competes with the first queries on the
        // target.
        let part = Instant::now();
        match capture_stopped.await {
            Ok(()) => detail.push_str(&format!(
                "; the source's capture stopped in {:.1} ms",
                ms(part.elapsed())
            )),
            Err(e) => detail.push_str(&format!("; capture: {e}")),
        }
        detail.push_str(&self.hold_from_freeze(source_log_dir).await);
        let part = Instant::now();
        match self.shared.catchup.stop().await {
            Ok(_) => detail.push_str(&format!("; catch-up stopped in {:.1} ms", ms(part.elapsed()))),
            Err(e) => detail.push_str(&format!("; catch-up: {e}")),
        }
        match fence::apply(&self.shared, &source, self.report.options.fence).await {
            Ok(Some(done)) => detail.push_str(&format!("; {done}")),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "fencing the old source failed");
                detail.push_str(&format!("; fencing the source failed: {e}"));
            }
        }
        // Their backends' exits wait until the first queries on the target
        // are served (see `linger`).
        switchyard_replay::linger::close_later(source);
        switchyard_replay::linger::close_later(target);
        self.end(detail);
        Ok(())
    }

    /// After the flip: the source's log is kept from the freeze marker on
    /// (a hold named after this cutover) until the DBA removes the hold, so
    /// that what a rollback may need is not deleted if capture runs there
    /// again. Returns a note for the step's detail.
    async fn hold_from_freeze(&self, dir: std::path::PathBuf) -> String {
        let Some(freeze) = self.report.freeze_lsn else {
            return String::new();
        };
        let name = format!("cutover-{}", self.report.id);
        let what = format!("cutover {}: its freeze marker and everything after it", self.report.id);
        let hold = name.clone();
        let written = tokio::task::spawn_blocking(move || {
            switchyard_replay::log::write_hold(&dir, &hold, Lsn(freeze.saturating_sub(1)), &what)
        })
        .await;
        match written {
            Ok(Ok(())) => format!("; the source's capture log is kept from the freeze marker on (hold {name})"),
            Ok(Err(e)) => format!("; cannot hold the source's capture log from the freeze marker: {e}"),
            Err(e) => format!("; cannot hold the source's capture log from the freeze marker: {e}"),
        }
    }

    async fn preflight(&mut self) -> Result<Ready, Failure> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let options = self.report.options.clone();
        if config.target.is_none() {
            return Err(self.fail("no [target] is configured: add one to the config file".to_owned()));
        }
        if shared.router.on_target() {
            return Err(self.fail(format!(
                "traffic is already on [target] since a cutover; {}",
                crate::session::route::NEXT_MIGRATION
            )));
        }
        if options.fence == crate::config::Fence::ReadOnly && config.capture.user.is_none() {
            return Err(self.fail(
                "fence read-only exempts the proxy's control role, which is source.user here, likely the \
                 applications' role too: set capture.user to a role of its own (or fence none / terminate-bypass)"
                    .to_owned(),
            ));
        }
        if shared.gate.is_closed() {
            return Err(self.fail("the gate is closed (a PAUSE is in force); RESUME first".to_owned()));
        }
        let Some(active) = shared.capture.current() else {
            return Err(
                self.fail("write capture is not on: CAPTURE START, clone, and catch up before cutting over".to_owned())
            );
        };
        if let Some(f) = active.failure() {
            return Err(self.fail(format!("the capture log cannot be written ({}); SHOW CAPTURE", f.error)));
        }
        if active.barrier().is_none() {
            return Err(self.fail(
                "capture has not reached its barrier yet (a transaction older than capture is still open); \
                 SHOW CAPTURE lists it"
                    .to_owned(),
            ));
        }
        let view = shared.catchup.view();
        let Some(status) = shared
            .catchup
            .status()
            .filter(|_| view.state == crate::catchup::CatchupPhase::Running || view.report.caught_up)
        else {
            return Err(self.fail(format!(
                "catch-up is {}{}: CATCHUP START, and cut over once SHOW LAG shows it caught up",
                view.state,
                view.error.map(|e| format!(" ({e})")).unwrap_or_default()
            )));
        };
        let lag = Duration::from_secs_f64(view.report.lag_seconds.max(0.0));
        if lag > options.max_lag {
            return Err(self.fail(format!(
                "catch-up lags {:.0} ms behind, above the {} ms allowed (max_lag); wait for SHOW LAG to drop",
                ms(lag),
                options.max_lag.as_millis()
            )));
        }
        let unacked: Vec<String> = active
            .unsafe_seen()
            .into_iter()
            .filter(|(_, u)| u.unacknowledged() > 0)
            .map(|(kind, u)| format!("{} {kind} (last: {})", u.unacknowledged(), u.last))
            .collect();
        if !unacked.is_empty() {
            return Err(self.fail(format!(
                "statements capture could not follow ran while it was on, and the target may miss their writes: {}; \
                 check the target, then CAPTURE ACK to acknowledge them",
                unacked.join("; ")
            )));
        }
        self.part_done("checks");
        // The source's catalog as capture keeps it (re-read every
        // capture.catalog_refresh_ms): reading it again costs the busy
        // source a few hundred ms of catalog queries at the highest rates.
        // A snapshot older than two refreshes (its refreshes failing) is not
        // trusted: the catalog is read then.
        let fresh_for = Duration::from_millis(config.capture.catalog_refresh_ms.saturating_mul(2));
        let snapshot = match active.catalog.health() {
            switchyard_replay::catalog::CatalogHealth::Ok { loaded_at }
                if loaded_at.elapsed().is_ok_and(|age| age <= fresh_for) =>
            {
                Some(active.catalog.current())
            }
            _ => None,
        };
        let plan = self
            .within_open(crate::catchup::Plan::prepare_from(config, None, snapshot))
            .await?
            .map_err(|e| self.fail(format!("{e}")))?;
        self.part_done("catalogs and mapping");
        let (source, target) = self
            .within_open(connect_both(config))
            .await?
            .map_err(|e| self.fail(e))?;
        self.part_done("connections");
        let bypass = self
            .within_open(shared.capture.bypassing(&shared.sessions))
            .await?
            .map_err(|e| self.fail(format!("cannot list the sessions on the source: {e}")))?;
        if !bypass.is_empty() && !options.allow_bypass {
            let list: Vec<String> = bypass.iter().map(|(pid, d)| format!("pid {pid} ({d})")).collect();
            return Err(self.fail(format!(
                "{} session(s) on the source bypass the proxy; their writes are not captured and they would \
                 stay on the old source: {}; stop them, or add ALLOW_BYPASS (switchyard cutover --allow-bypass) once you are sure they do not write",
                bypass.len(),
                list.join(", ")
            )));
        }
        {
            let direct = self
                .within_open(direct_sessions(&target))
                .await?
                .map_err(|e| self.fail(format!("cannot list the sessions on the target: {e}")))?;
            if !direct.is_empty() {
                tracing::warn!(sessions = %direct.join("; "), "sessions connected to the target directly: their writes after the flip escape capture on the target");
            }
            self.report.target_direct_sessions = direct;
        }
        self.part_done("sessions on both");
        let sequences = self
            .within_open(SequencePlan::prepare(&source, &target, &plan.mapping))
            .await?
            .map_err(|e| self.fail(format!("{e}")))?;
        self.part_done("sequences");
        if !sequences.unmapped().is_empty() && !options.allow_unmapped_sequences {
            return Err(self.fail(format!(
                "source sequence(s) with no counterpart on the target: {}; create them on the target, or set \
                 cutover.allow_unmapped_sequences = true to leave them",
                sequences
                    .unmapped()
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let sample = if options.verify == VerifyMode::Sample {
            let dir = active.config.log_dir.clone();
            let upto = Lsn(status.confirmed_lsn.load(Relaxed));
            let n = options.verify_sample;
            tokio::task::spawn_blocking(move || keys::sample(&dir, upto, n))
                .await
                .map_err(|e| self.fail(format!("reading the sample failed: {e}")))?
                .map_err(|e| self.fail(format!("cannot read the capture log: {e}")))?
        } else {
            TableKeys::new()
        };
        self.part_done("sample");
        let request = MoveRequest {
            to: Destination::Target,
            // The flip sets its own deadline for pinned sessions.
            timeout: options.open_timeout * 2 + options.max_pause,
            pinned: Some(PinnedPolicy::Close),
            open_at_once: Some(open_at_once(shared.sessions.snapshot().len())),
        };
        let order = Order::open(&shared, request, options.open_timeout)
            .await
            .map_err(|e| self.fail(format!("{e}")))?;
        self.part_done("backends");
        let failed = order.failed_to_open();
        if !failed.is_empty() {
            let list: Vec<String> = failed
                .iter()
                .take(5)
                .map(|(id, why)| format!("session {id}: {why}"))
                .collect();
            return Err(self.fail(format!(
                "{} session(s) could not open a backend on the target: {}",
                failed.len(),
                list.join("; ")
            )));
        }
        let target_capture = if options.capture_on_target {
            // The target's catalog was just loaded for the mapping.
            let gather = shared.capture.prepare_on_target(Some((*plan.target_catalog).clone()));
            let parts = self.within_open(gather).await?.map_err(|e| {
                self.fail(format!(
                    "capture on the target cannot start: {e}; fix that, or CAPTURE_ON_TARGET off to cut over \
                     without it (a rollback then has no log to replay)"
                ))
            })?;
            Some(parts)
        } else {
            None
        };
        self.part_done("capture on the target");
        self.report.reverse_mapping_errors = plan.mapping.reverse_errors().iter().map(|e| e.to_string()).collect();
        if let Some(reason) = self.abort.borrow().clone() {
            return Err(self.fail(format!("aborted: {reason}")));
        }
        let mut ready = Ready {
            source,
            target,
            mapping: plan.mapping,
            source_catalog: plan.source_catalog,
            target_catalog: plan.target_catalog,
            sequences,
            sample,
            tail: None,
            active,
            status,
            order,
            target_capture,
        };
        if options.verify != VerifyMode::None {
            self.within_open(final_pass::rehearse_verify(&ready))
                .await?
                .map_err(|e| self.fail(format!("the verify cannot run: {e}")))?;
            self.part_done("verify rehearsal");
        }
        let dir = ready.active.config.log_dir.clone();
        let confirmed = Lsn(ready.status.confirmed_lsn.load(Relaxed));
        let tail = tokio::task::spawn_blocking(move || keys::Tail::open(&dir, confirmed))
            .await
            .map_err(|e| self.fail(format!("reading the capture log failed: {e}")))?
            .map_err(|e| self.fail(format!("cannot read the capture log: {e}")))?;
        ready.tail = Some(tail);
        self.part_done("log tail");
        Ok(ready)
    }

    /// Records the preflight part that just ended.
    fn part_done(&mut self, part: &'static str) {
        let now = Instant::now();
        self.parts.push((part, ms(now - self.part_started)));
        self.part_started = now;
    }

    /// Waits for the sessions to drain; at the drain timeout, aborts or
    /// cancels what still runs, as the options say.
    async fn drain(&mut self, closed: &Closed, limit: Instant) -> Result<(), Failure> {
        let options = self.report.options.clone();
        let first = closed.drain(options.drain_timeout);
        match self.within(limit, first).await? {
            Ok(()) => return Ok(()),
            Err(GateError::DrainTimeout { busy, waited_ms }) => {
                let who = busy_sessions(&self.shared);
                if options.on_drain_timeout == OnDrainTimeout::Abort {
                    return Err(self.fail(format!(
                        "{busy} session(s) still in a transaction after {waited_ms} ms (drain_timeout): {}; \
                         they were left to finish; cut over again once they are done, or with ON_DRAIN_TIMEOUT cancel",
                        describe(&who)
                    )));
                }
                let pids: Vec<i32> = who.iter().map(|s| s.backend_pid()).collect();
                tracing::warn!(sessions = %describe(&who), "cancelling what still runs at the drain timeout");
                let cancel = &self.shared.cancel;
                let all = futures_util::future::join_all(
                    cancel
                        .keys_on(&pids)
                        .into_iter()
                        .map(|key| cancel.cancel(key, Duration::from_secs(2))),
                );
                self.within(limit, all).await?;
            }
            Err(e) => return Err(self.gate_failed(e)),
        }
        // Cancelled statements end their transactions once the clients roll
        // back, which takes them a round trip.
        let grace = TERMINATE_AFTER.min(limit.saturating_duration_since(Instant::now()));
        match self.within(limit, closed.drain(grace)).await? {
            Ok(()) => return Ok(()),
            Err(GateError::DrainTimeout { .. }) => {}
            Err(e) => return Err(self.gate_failed(e)),
        }
        // A session idle in its transaction has nothing to cancel, and a
        // client may not roll back: each such session closes its backend
        // (the transaction rolls back, as PostgreSQL's
        // idle_in_transaction_session_timeout would) and tells its client
        // so with 57P01. It committed nothing, so nothing is lost. A
        // session whose COMMIT is in flight finishes it first.
        let who = busy_sessions(&self.shared);
        tracing::warn!(sessions = %describe(&who), "ending the transactions still open after the cancel");
        for s in &who {
            s.end_transaction();
        }
        let rest = limit.saturating_duration_since(Instant::now());
        match self.within(limit, closed.drain(rest)).await? {
            Ok(()) => Ok(()),
            Err(GateError::DrainTimeout { busy, .. }) => Err(self.fail(format!(
                "{busy} session(s) still in a transaction at the pause limit after their statements were cancelled \
                 and their transactions asked to end: {}",
                describe(&busy_sessions(&self.shared))
            ))),
            Err(e) => Err(self.gate_failed(e)),
        }
    }

    /// A drain the gate ended. The proxy's shutdown reopens the gate: a
    /// drain woken by that in the same poll that found the shutdown not
    /// yet sent still names the shutdown as the cause.
    fn gate_failed(&self, e: GateError) -> Failure {
        if e == GateError::Aborted && *self.shared.shutdown.borrow() {
            return self.fail("the proxy is shutting down".to_owned());
        }
        self.fail(format!("{e}"))
    }

    /// Runs `fut` unless the DBA aborts, the proxy shuts down, or `limit`
    /// (the pause limit) passes first.
    async fn within<T>(&self, limit: Instant, fut: impl Future<Output = T>) -> Result<T, Failure> {
        let passed = format!(
            "the gate would stay closed longer than max_pause ({} ms)",
            self.report.options.max_pause.as_millis()
        );
        self.race(limit, passed, fut).await
    }

    /// [`Self::within`] for preflight, bounded by the open timeout.
    async fn within_open<T>(&self, fut: impl Future<Output = T>) -> Result<T, Failure> {
        let limit = Instant::now() + self.report.options.open_timeout;
        let passed = "a preflight check took longer than open_timeout".to_owned();
        self.race(limit, passed, fut).await
    }

    /// Runs `fut` unless the DBA aborts, the proxy shuts down, or `limit`
    /// passes first (failing with `passed`).
    async fn race<T>(&self, limit: Instant, passed: String, fut: impl Future<Output = T>) -> Result<T, Failure> {
        let mut shutdown = self.shared.shutdown.clone();
        let mut abort = self.abort.clone();
        // Biased: the shutdown reopens the gate, which ends a drain with an
        // error of its own; the cause is named first.
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => Err(self.fail("the proxy is shutting down".to_owned())),
            r = abort.wait_for(|a| a.is_some()) => {
                let reason = r.map(|a| a.clone().unwrap_or_default()).unwrap_or_default();
                Err(self.fail(format!("aborted: {reason}")))
            }
            _ = tokio::time::sleep_until(limit.into()) => Err(self.fail(passed)),
            r = fut => Ok(r),
        }
    }

    /// Undoes the start of capture on the target for a cutover called off
    /// before its flip. A failure here is logged: the record it leaves is
    /// removed by the next cutover's preflight, and a restarted proxy
    /// whose route is on the source never reads it.
    async fn unmark(&self, marked: crate::capture::control::Marked) {
        if let Err(e) = self.shared.capture.unmark(marked).await {
            tracing::warn!(error = %e, "undoing the start of capture on the target failed");
        }
    }

    fn fail(&self, reason: String) -> Failure {
        Failure {
            step: self.step,
            reason,
        }
    }

    fn begin(&mut self, step: Step) {
        self.step = step;
        self.step_started = Instant::now();
        self.report.state = State::Running(step);
        self.report.steps.push(StepRecord {
            step,
            at_ms: ms(self.started.elapsed()),
            ms: None,
            detail: String::new(),
        });
        self.publish();
    }

    fn end(&mut self, detail: String) {
        let took = ms(self.step_started.elapsed());
        if let Some(last) = self.report.steps.last_mut() {
            last.ms = Some(took);
            last.detail = detail;
        }
        tracing::info!(
            id = self.report.id,
            step = self.step.name(),
            ms = took,
            "cutover step done"
        );
        self.publish();
    }

    fn publish(&self) {
        self.shared.cutover.publish(&self.report);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What preflight found about capture on the target, for its step's line.
fn capture_on_target_plan(ready: &Ready, report: &Report) -> String {
    let mut line = match &ready.target_capture {
        Some(parts) => format!("capture on the target ready (log in {})", parts.place().dir.display()),
        None => "capture on the target: off".to_owned(),
    };
    if !report.target_direct_sessions.is_empty() {
        line.push_str(&format!(
            "; {} session(s) connected to the target directly, whose writes after the flip no capture logs: {}",
            report.target_direct_sessions.len(),
            report.target_direct_sessions.join("; ")
        ));
    }
    if !report.reverse_mapping_errors.is_empty() {
        line.push_str(&format!(
            "; the reverse mapping cannot rebuild source rows for a rollback: {}",
            report.reverse_mapping_errors.join("; ")
        ));
    }
    line
}

/// Waits until the replayer has applied everything up to `lsn` (woken as
/// its confirmed position moves); fails if catch-up stops meanwhile.
async fn wait_confirmed(shared: &Shared, status: &ReplayStatus, lsn: Lsn) -> Result<(), String> {
    loop {
        if status.confirmed_by(lsn, CATCHUP_CHECK_EVERY).await {
            return Ok(());
        }
        // A replayer that restarts by itself resumes from its confirmed
        // position; one that was stopped does not come back.
        if !shared
            .catchup
            .status()
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(&s), status))
        {
            let view = shared.catchup.view();
            return Err(format!(
                "catch-up stopped during the final sync{}",
                view.error.map(|e| format!(": {e}")).unwrap_or_default()
            ));
        }
    }
}

/// How often the final sync looks whether catch-up is still running.
const CATCHUP_CHECK_EVERY: Duration = Duration::from_millis(20);

/// Client sessions on the target's server that are not the proxy's (its
/// sessions have no backend there yet; its own connections name themselves
/// `switchyard ...`), as descriptions.
async fn direct_sessions(target: &Client) -> Result<Vec<String>, String> {
    let found = crate::capture::control::foreign_sessions(target, &[])
        .await
        .map_err(|e| crate::db_message(&e))?;
    Ok(found
        .into_iter()
        .map(|(pid, desc)| format!("pid {pid} ({desc})"))
        .collect())
}

async fn connect_both(config: &crate::config::Config) -> Result<(Client, Client), String> {
    let source = config.source_control("switchyard cutover").map_err(|e| e.to_string())?;
    let target = config
        .target_connection("switchyard cutover")
        .map_err(|e| e.to_string())?;
    let s = connect(&source, "source").await?;
    let t = connect(&target, "target").await?;
    Ok((s, t))
}

async fn connect(pg: &switchyard_replay::Dsn, what: &str) -> Result<Client, String> {
    pg.connect("cutover")
        .await
        .map_err(|e| format!("cannot connect to the {what}: {}", crate::db_message(&e)))
}

/// Client sessions not at a transaction boundary.
fn busy_sessions(shared: &Shared) -> Vec<Arc<crate::registry::SessionInfo>> {
    shared
        .sessions
        .snapshot()
        .into_iter()
        .filter(|s| crate::session::route::is_client(shared, s))
        .filter(|s| {
            !matches!(
                s.state(),
                Shown::Relay(crate::session::state::Phase::Idle) | Shown::Held | Shown::Startup
            )
        })
        .collect()
}

fn describe(sessions: &[Arc<crate::registry::SessionInfo>]) -> String {
    let mut parts: Vec<String> = sessions
        .iter()
        .take(5)
        .map(|s| {
            format!(
                "session {} ({}@{}, {}, backend pid {})",
                s.id,
                s.user,
                s.database,
                s.state().name(),
                s.backend_pid()
            )
        })
        .collect();
    if sessions.len() > 5 {
        parts.push(format!("and {} more", sessions.len() - 5));
    }
    parts.join(", ")
}
