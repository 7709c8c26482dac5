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
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_replay::catalog::QualifiedName;
use switchyard_replay::log::Key;
use switchyard_replay::log::{Lsn, Marker, Record};
use switchyard_replay::mapping::Resolved;
use switchyard_replay::replayer::ReplayStatus;
use switchyard_replay::sequences::SequencePlan;
use switchyard_replay::verify::Mapped;
use tokio::sync::watch;
use tokio_postgres::Client;

use super::fence;

/// Why a step failed.
struct Failure {
    step: Step,
    reason: String,
}

/// With `ON_DRAIN_TIMEOUT cancel`, how long after the cancel the sessions
/// still in a transaction are terminated.
const TERMINATE_AFTER: Duration = Duration::from_secs(1);

/// What preflight prepared for the freeze.
struct Ready {
    source: Client,
    target: Client,
    mapping: Arc<Resolved>,
    source_catalog: Arc<switchyard_replay::catalog::Catalog>,
    target_catalog: Arc<switchyard_replay::catalog::Catalog>,
    sequences: SequencePlan,
    sample: TableKeys,
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
                tracing::info!(id = self.report.id, state = %state.name(), pause_ms = ?self.report.pause_ms, "cutover finished");
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
        self.end(format!(
            "{} session(s) opened their target backend in {:.1} ms; {} sequence(s) mapped; {} sample key(s); {}",
            ready.order.report().sessions,
            ready.order.report().open_ms,
            ready.sequences.sequences().len(),
            keys::count(&ready.sample),
            capture_on_target_plan(&ready, &self.report)
        ));

        self.begin(Step::Freeze);
        let closed = self.shared.gate.close_now().map_err(|e| self.fail(format!("{e}")))?;
        let frozen = Instant::now();
        let limit = frozen + self.report.options.max_pause;
        self.drain(&closed, limit, &ready.source).await?;
        self.end(format!(
            "every session at a transaction boundary after {:.1} ms",
            ms(frozen.elapsed())
        ));

        self.begin(Step::FinalSync);
        let before = ready.status.confirmed_lsn.load(Relaxed);
        let freeze = Record::Marker(Marker::Freeze {
            time_micros: crate::capture::control::unix_micros(std::time::SystemTime::now()),
        });
        let append = ready.active.log().append(freeze);
        let lsn = self
            .within(limit, append)
            .await?
            .map_err(|e| self.fail(format!("cannot write the freeze marker to the capture log: {e}")))?;
        self.report.freeze_lsn = Some(lsn.0);
        let confirmed = wait_confirmed(&self.shared, &ready.status, lsn);
        self.within(limit, confirmed).await?.map_err(|e| self.fail(e))?;
        let dir = ready.active.config.log_dir.clone();
        let (synced, logged) = tokio::task::spawn_blocking(move || keys::between(&dir, Lsn(before), lsn))
            .await
            .map_err(|e| self.fail(format!("reading the final keys failed: {e}")))?
            .map_err(|e| self.fail(format!("cannot read the capture log: {e}")))?;
        self.report.keys_synced = keys::count(&synced);
        self.end(format!(
            "the replayer confirmed the freeze marker at {lsn}: {logged} key(s) logged since position {before}, {} distinct",
            self.report.keys_synced
        ));

        self.begin(Step::Sequences);
        let sync = ready.sequences.sync(&ready.source, &ready.target);
        let seq = self.within(limit, sync).await?.map_err(|e| self.fail(format!("{e}")))?;
        self.report.sequences_set = seq.set.len();
        self.end(format!("{} sequence(s) set on the target", seq.set.len()));

        self.begin(Step::Verify);
        let mut compare = synced;
        if self.report.options.verify == VerifyMode::Sample {
            keys::merge(&mut compare, ready.sample.clone());
        }
        if self.report.options.verify == VerifyMode::None {
            self.end("skipped (verify none)".to_owned());
        } else {
            let mapped = Mapped {
                mapping: &ready.mapping,
                source: &ready.source_catalog,
                target: &ready.target_catalog,
            };
            let verify = verify_keys(&ready.source, &ready.target, mapped, &compare);
            let (rows, differing) = self.within(limit, verify).await?.map_err(|e| self.fail(e))?;
            self.report.rows_verified = rows;
            if !differing.is_empty() {
                return Err(self.fail(format!(
                    "{} row(s) differ between the source and the target: {}; the target is not in sync, so \
                     traffic stays on the source (VERIFY compares whole tables and lists the differences)",
                    differing.len(),
                    differing.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            self.end(format!("{rows} row(s) equal on both sides"));
        }
        // Capture on the target is in its log directory's record before the
        // route is: a proxy restarted after the flip resumes it before
        // admitting anyone. (Called off from here, the record stays
        // behind, unread: the capture directory in use is the source's.)
        let mut ready = ready;
        let marked = match ready.target_capture.take() {
            Some(parts) => {
                let mark = self.shared.capture.mark_on_target(parts);
                Some(self.within(limit, mark).await?.map_err(|e| {
                    self.fail(format!(
                        "cannot start capture on the target ({e}); CAPTURE_ON_TARGET off cuts over without it \
                         (a rollback then has no log to replay)"
                    ))
                })?)
            }
            None => None,
        };
        // A proxy started again must not send the applications back: the
        // route is recorded before the flip, and a cutover that cannot
        // record it does not flip. (Should the proxy stop between the two,
        // the target is in sync and the source was not written since the
        // freeze.)
        if let Some(target) = &self.shared.config.target {
            crate::control::route_file::record(&self.shared.config, target).map_err(|e| {
                self.fail(format!(
                    "cannot record that traffic moves to the target ({e}); a restarted proxy would send it back"
                ))
            })?;
        }
        if let Some(reason) = self.shared.cutover.past_flip(&self.abort) {
            crate::control::route_file::forget(&self.shared.config);
            return Err(self.fail(format!("aborted: {reason}")));
        }

        // From here on the cutover finishes whatever happens: the target is
        // in sync and the source is no longer written.
        self.begin(Step::Flip);
        let Ready {
            source,
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
            "{} of {} session(s) moved in {:.1} ms, {} closed, {} still to move at their boundary",
            moved.moved,
            moved.sessions,
            moved.move_ms,
            moved.closed,
            moved.waiting + moved.failed + moved.pinned
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
        if let Err(e) = capture_stopped.await {
            detail.push_str(&format!("; capture: {e}"));
        }
        if let Err(e) = self.shared.catchup.stop().await {
            detail.push_str(&format!("; catch-up: {e}"));
        }
        match fence::apply(&self.shared, &source, self.report.options.fence).await {
            Ok(Some(done)) => detail.push_str(&format!("; {done}")),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "fencing the old source failed");
                detail.push_str(&format!("; fencing the source failed: {e}"));
            }
        }
        self.end(detail);
        Ok(())
    }

    async fn preflight(&mut self) -> Result<Ready, Failure> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let options = self.report.options.clone();
        if config.target.is_none() {
            return Err(self.fail("no [target] is configured: add one to the config file".to_owned()));
        }
        if shared.router.current().for_login().1 == Destination::Target {
            return Err(self.fail(
                "traffic is already on [target] since a cutover; for another migration, name that database as \
                 [source] in the config (and the next one as [target]) and restart the proxy"
                    .to_owned(),
            ));
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
            .filter(|_| view.state == "running" || view.report.caught_up)
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
        let plan = self
            .within_open(crate::catchup::Plan::prepare(config))
            .await?
            .map_err(|e| self.fail(format!("{e}")))?;
        let (source, target) = self
            .within_open(connect_both(config))
            .await?
            .map_err(|e| self.fail(e))?;
        let bypass = self
            .within_open(shared.capture.bypassing(&shared.sessions))
            .await?
            .map_err(|e| self.fail(format!("cannot list the sessions on the source: {e}")))?;
        if !bypass.is_empty() && !options.allow_bypass {
            let list: Vec<String> = bypass.iter().map(|(pid, d)| format!("pid {pid} ({d})")).collect();
            return Err(self.fail(format!(
                "{} session(s) on the source bypass the proxy; their writes are not captured and they would \
                 stay on the old source: {}; stop them, or add ALLOW_BYPASS once you are sure they do not write",
                bypass.len(),
                list.join(", ")
            )));
        }
        let sequences = self
            .within_open(SequencePlan::prepare(&source, &target, &plan.mapping))
            .await?
            .map_err(|e| self.fail(format!("{e}")))?;
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
        let request = MoveRequest {
            to: Destination::Target,
            // The flip sets its own deadline for pinned sessions.
            timeout: options.open_timeout * 2 + options.max_pause,
            pinned: Some(PinnedPolicy::Close),
        };
        let order = Order::open(&shared, request, options.open_timeout)
            .await
            .map_err(|e| self.fail(format!("{e}")))?;
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
            let gather = shared.capture.prepare_on_target();
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
        self.report.reverse_mapping_errors = plan.mapping.reverse_errors().iter().map(|e| e.to_string()).collect();
        if let Some(reason) = self.abort.borrow().clone() {
            return Err(self.fail(format!("aborted: {reason}")));
        }
        Ok(Ready {
            source,
            target,
            mapping: plan.mapping,
            source_catalog: plan.source_catalog,
            target_catalog: plan.target_catalog,
            sequences,
            sample,
            active,
            status,
            order,
            target_capture,
        })
    }

    /// Waits for the sessions to drain; at the drain timeout, aborts or
    /// cancels what still runs, as the options say.
    async fn drain(&mut self, closed: &Closed, limit: Instant, source: &Client) -> Result<(), Failure> {
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
            Err(e) => return Err(self.fail(format!("{e}"))),
        }
        // Cancelled statements end their transactions once the clients roll
        // back, which takes them a round trip.
        let grace = TERMINATE_AFTER.min(limit.saturating_duration_since(Instant::now()));
        match self.within(limit, closed.drain(grace)).await? {
            Ok(()) => return Ok(()),
            Err(GateError::DrainTimeout { .. }) => {}
            Err(e) => return Err(self.fail(format!("{e}"))),
        }
        // A session idle in its transaction has nothing to cancel, and a
        // client may not roll back: their backends are terminated, as
        // PostgreSQL's idle_in_transaction_session_timeout would. The
        // transaction is rolled back and the client told so (57P01); it
        // committed nothing, so nothing is lost.
        let who = busy_sessions(&self.shared);
        let pids: Vec<i32> = who.iter().map(|s| s.backend_pid()).filter(|p| *p != 0).collect();
        tracing::warn!(sessions = %describe(&who), "terminating sessions still in a transaction after the cancel");
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&pids];
        let terminate = source.execute("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p", &params);
        if let Err(e) = self.within(limit, terminate).await? {
            return Err(self.fail(format!(
                "cannot end the transactions still open after the cancel ({}): {}",
                crate::db_message(&e),
                describe(&who)
            )));
        }
        let rest = limit.saturating_duration_since(Instant::now());
        match self.within(limit, closed.drain(rest)).await? {
            Ok(()) => Ok(()),
            Err(GateError::DrainTimeout { busy, .. }) => Err(self.fail(format!(
                "{busy} session(s) still in a transaction at the pause limit after their statements were cancelled \
                 and their backends terminated: {}",
                describe(&busy_sessions(&self.shared))
            ))),
            Err(e) => Err(self.fail(format!("{e}"))),
        }
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
        tokio::select! {
            r = fut => Ok(r),
            _ = tokio::time::sleep_until(limit.into()) => Err(self.fail(passed)),
            r = abort.wait_for(|a| a.is_some()) => {
                let reason = r.map(|a| a.clone().unwrap_or_default()).unwrap_or_default();
                Err(self.fail(format!("aborted: {reason}")))
            }
            _ = shutdown.wait_for(|down| *down) => Err(self.fail("the proxy is shutting down".to_owned())),
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
    let Some(parts) = &ready.target_capture else {
        return "capture on the target: off".to_owned();
    };
    let mut line = format!("capture on the target ready (log in {})", parts.place().dir.display());
    if !report.reverse_mapping_errors.is_empty() {
        line.push_str(&format!(
            "; the reverse mapping cannot rebuild source rows for a rollback: {}",
            report.reverse_mapping_errors.join("; ")
        ));
    }
    line
}

/// Waits until the replayer has applied everything up to `lsn`; fails if
/// catch-up stops meanwhile.
async fn wait_confirmed(shared: &Shared, status: &ReplayStatus, lsn: Lsn) -> Result<(), String> {
    loop {
        if status.confirmed_lsn.load(Relaxed) >= lsn.0 {
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
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Compares `keys` through the mapping: rows compared, and the keys that
/// differ (as `table key: how`).
async fn verify_keys(
    source: &Client,
    target: &Client,
    mapped: Mapped<'_>,
    keys: &TableKeys,
) -> Result<(u64, Vec<String>), String> {
    let keys: BTreeMap<QualifiedName, Vec<Key>> = keys
        .iter()
        .map(|(table, k)| (QualifiedName::from_logged(table), k.iter().cloned().collect()))
        .collect();
    let report = switchyard_replay::verify::verify_keys(source, target, mapped, &keys)
        .await
        .map_err(|e| e.to_string())?;
    let differing = report
        .tables
        .iter()
        .flat_map(|(table, t)| {
            t.mismatches.iter().map(move |m| {
                let key: Vec<&str> = m.key.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
                format!("{table} ({}): {}", key.join(", "), m.kind)
            })
        })
        .collect();
    Ok((report.keys_checked(), differing))
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
