//! The two measured phases of the catch-up scenario: replaying the backlog
//! for throughput, and following pgbench for lag; and the replayer they
//! start, on a runtime of its own.

use super::{Args, Stack, DB};
use crate::pgbench::{self, Summary};
use crate::report::round;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_replay::catalog::Catalog;
use switchyard_replay::mapping::Resolved;
use switchyard_replay::replayer::{self, LagReport, ReplayError, ReplayOptions, ReplayStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// How often the driver looks at the replayer's progress while timing it.
const PROGRESS_POLL: Duration = Duration::from_millis(2);

/// How often `lag_seconds` is sampled under load.
const LAG_SAMPLE: Duration = Duration::from_millis(50);

/// How long one backlog replay, or the catch-up after pgbench, may take.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the replayer waits when the log has nothing new.
const IDLE: Duration = Duration::from_millis(2);

/// Dropped on the target before each throughput run, so that the replayer
/// starts again from the beginning of the log.
const RESET_POSITION: &str = "DROP SCHEMA IF EXISTS switchyard CASCADE";

/// Run before each measured replay, outside the timing: the dead rows the
/// backlog and earlier runs left are vacuumed, so that every run meets the
/// same tables and autovacuum does not clean up after an earlier phase in
/// the middle of this one. One statement each: VACUUM refuses to run in the
/// implicit transaction of a multi-statement query.
const SETTLE: [&str; 2] = ["VACUUM ANALYZE", "CHECKPOINT"];

/// Runs [`SETTLE`] on the database of `client`, named `what` in errors.
pub(super) async fn settle(client: &Client, what: &str) -> Result<()> {
    for sql in SETTLE {
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("{sql} on the {what}"))?;
    }
    Ok(())
}

/// Everything a replayer run needs but the worker count.
pub(super) struct ReplaySetup {
    pub(super) source: tokio_postgres::Config,
    pub(super) target: tokio_postgres::Config,
    pub(super) mapping: Arc<Resolved>,
    pub(super) source_catalog: Arc<Catalog>,
    pub(super) target_catalog: Arc<Catalog>,
    pub(super) log_dir: PathBuf,
    pub(super) batch_keys: usize,
}

/// The replayer's multi-threaded tokio runtime, apart from the driver's
/// single thread so that timing and sampling never wait on replay work,
/// as the proxy has its own thread. Shut down without waiting when dropped.
pub(super) struct ReplayRuntime(Option<tokio::runtime::Runtime>);

impl ReplayRuntime {
    pub(super) fn new(threads: usize) -> Result<ReplayRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("replay")
            .enable_all()
            .build()
            .context("building the replayer's runtime")?;
        Ok(ReplayRuntime(Some(runtime)))
    }

    /// Starts `replayer::run` with `workers` workers; it resumes after the
    /// target's confirmed position.
    fn start(&self, setup: &ReplaySetup, workers: usize) -> Result<Replay> {
        let runtime = self.0.as_ref().context("the replayer's runtime is shut down")?;
        let status = Arc::new(ReplayStatus::default());
        let (stop, stopped) = watch::channel(false);
        let options = ReplayOptions {
            log_dir: setup.log_dir.clone(),
            workers,
            batch_keys: setup.batch_keys,
            idle: IDLE,
            bell: None,
            ..ReplayOptions::default()
        };
        let task = runtime.spawn(replayer::run(
            setup.source.clone(),
            setup.target.clone(),
            setup.mapping.clone(),
            setup.source_catalog.clone(),
            setup.target_catalog.clone(),
            options,
            status.clone(),
            stopped,
        ));
        Ok(Replay { status, stop, task })
    }
}

impl Drop for ReplayRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which the driver's runtime forbids.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A running replayer.
struct Replay {
    status: Arc<ReplayStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ReplayError>>,
}

impl Replay {
    /// Waits until everything up to `lsn` is confirmed on the target; an
    /// error when the replayer stops or `CATCH_UP_TIMEOUT` passes first.
    async fn wait_for(&mut self, lsn: u64) -> Result<()> {
        let started = Instant::now();
        while self.status.confirmed_lsn.load(Relaxed) < lsn {
            if self.task.is_finished() {
                let outcome = (&mut self.task).await;
                bail!("the replayer stopped before catching up: {outcome:?}");
            }
            if started.elapsed() > CATCH_UP_TIMEOUT {
                bail!(
                    "the replayer confirmed {} of {lsn} after {} s",
                    self.status.confirmed_lsn.load(Relaxed),
                    CATCH_UP_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(PROGRESS_POLL).await;
        }
        Ok(())
    }

    /// Asks the replayer to stop and waits for it; its error, if any.
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| anyhow!("the replayer task failed: {e}"))?
            .context("the replayer")
    }
}

/// One replay of the whole backlog.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ThroughputRun {
    /// 1-based.
    pub(super) round: usize,
    pub(super) workers: usize,
    /// From starting the replayer until it confirmed the backlog's last position.
    pub(super) seconds: f64,
    pub(super) rows_applied: u64,
    pub(super) batches: u64,
    pub(super) rows_per_sec: f64,
}

/// Replays the backlog (up to `last_lsn`) `--rounds` times with one worker
/// and with `--workers`, alternating which goes first.
pub(super) async fn throughput(
    runtime: &ReplayRuntime,
    setup: &ReplaySetup,
    target: &Client,
    args: &Args,
    last_lsn: u64,
) -> Result<Vec<ThroughputRun>> {
    let mut runs = Vec::with_capacity(args.rounds * 2);
    for r in 1..=args.rounds {
        let order = if r % 2 == 1 {
            [1, args.workers]
        } else {
            [args.workers, 1]
        };
        for workers in order {
            target
                .batch_execute(RESET_POSITION)
                .await
                .context("dropping the target's replay position")?;
            settle(target, "target").await?;
            let started = Instant::now();
            let mut replay = runtime.start(setup, workers)?;
            replay.wait_for(last_lsn).await?;
            let seconds = started.elapsed().as_secs_f64();
            let status = replay.status.report();
            replay.stop().await?;
            if status.rows_applied != args.rows {
                bail!(
                    "replaying the backlog applied {} rows, not {}; the log holds other writes",
                    status.rows_applied,
                    args.rows
                );
            }
            let run = ThroughputRun {
                round: r,
                workers,
                seconds: round(seconds, 3),
                rows_applied: status.rows_applied,
                batches: status.batches,
                rows_per_sec: round(status.rows_applied as f64 / seconds, 0),
            };
            println!(
                "round {r}/{}  {workers} worker(s)  {:>8.3} s  {:>9.0} rows/s  {} batches",
                args.rounds, run.seconds, run.rows_per_sec, run.batches
            );
            runs.push(run);
        }
    }
    Ok(runs)
}

/// What the lag measurement found.
#[derive(Debug, Clone, Serialize)]
pub(super) struct LagPhase {
    pub(super) pgbench_args: String,
    /// pgbench's summary (tps over the whole run, warm-up included).
    pub(super) pgbench: Summary,
    pub(super) pgbench_exit_ok: bool,
    /// The replayer's report after catching up (lag percentiles over the
    /// commits after the warm-up).
    pub(super) replayer: LagStatus,
    /// 99.9th percentile and mean of the same per-commit lag, ms.
    pub(super) lag_p999_ms: f64,
    pub(super) lag_mean_ms: f64,
    /// The largest `lag_seconds` (age of the oldest unapplied commit) seen
    /// in samples every 50 ms after the warm-up.
    pub(super) lag_seconds_max_sampled: f64,
    pub(super) lag_seconds_samples: u64,
    /// From pgbench's end until the replayer confirmed the last commit, ms.
    pub(super) drain_ms: f64,
    /// What capture logged during the run.
    pub(super) captured: crate::capturing::CaptureCounters,
}

/// The replayer's [`LagReport`] as written to the results.
#[derive(Debug, Clone, Serialize)]
pub(super) struct LagStatus {
    pub(super) rows_applied: u64,
    pub(super) batches: u64,
    pub(super) commits_measured: u64,
    pub(super) lag_p50_ms: f64,
    pub(super) lag_p99_ms: f64,
    pub(super) lag_max_ms: f64,
}

impl LagStatus {
    /// Counts since `before` (the replayer's counters run from its start).
    fn from_lag(report: &LagReport, before: &LagReport) -> LagStatus {
        LagStatus {
            rows_applied: report.rows_applied - before.rows_applied,
            batches: report.batches - before.batches,
            commits_measured: report.commits_applied,
            lag_p50_ms: round(report.lag_p50_ms, 3),
            lag_p99_ms: round(report.lag_p99_ms, 3),
            lag_max_ms: round(report.lag_max_ms, 3),
        }
    }
}

/// Runs pgbench rate-limited through the proxy while a replayer with
/// `--lag-workers` follows; lag counts from the end of the warm-up until the
/// replayer has confirmed pgbench's last commit.
pub(super) async fn lag(runtime: &ReplayRuntime, setup: &ReplaySetup, stack: &Stack, args: &Args) -> Result<LagPhase> {
    let before = stack.console.counters().await?;
    let mut replay = runtime.start(setup, args.lag_workers())?;
    let pgbench_args = args.pgbench_args();
    let endpoint = stack.endpoint.clone();
    let run_args = pgbench_args.clone();
    let pgbench = tokio::spawn(async move { pgbench::run_args(&endpoint, DB, &run_args).await });
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    replay.status.reset_lag();
    let at_warmup = replay.status.report();
    let (mut max_sampled, mut samples) = (0f64, 0u64);
    while !pgbench.is_finished() {
        max_sampled = max_sampled.max(replay.status.report().lag_seconds);
        samples += 1;
        if started.elapsed() > Duration::from_secs(args.duration) + CATCH_UP_TIMEOUT {
            bail!("pgbench did not finish");
        }
        tokio::time::sleep(LAG_SAMPLE).await;
    }
    let run = pgbench.await.context("the pgbench task")??;
    let ended = Instant::now();
    let show = stack.console.show_capture().await?;
    replay.wait_for(show.last_lsn()?).await?;
    let drain_ms = ended.elapsed().as_secs_f64() * 1000.0;
    let report = replay.status.report();
    let histogram = replay.status.lag_histogram();
    replay.stop().await?;
    let mut summary = run.summary.clone();
    summary.failed = run.failures();
    if !run.is_clean() {
        eprintln!(
            "pgbench through the capturing proxy was not clean:\n{}",
            run.output_tail()
        );
    }
    Ok(LagPhase {
        pgbench_args: pgbench_args.join(" "),
        pgbench: summary,
        pgbench_exit_ok: run.exit_ok,
        replayer: LagStatus::from_lag(&report, &at_warmup),
        lag_p999_ms: round(histogram.value_at_quantile(0.999) as f64 / 1000.0, 3),
        lag_mean_ms: round(histogram.mean() / 1000.0, 3),
        lag_seconds_max_sampled: round(max_sampled, 3),
        lag_seconds_samples: samples,
        drain_ms: round(drain_ms, 1),
        captured: show.counters()?.since(&before),
    })
}
