//! The catch-up scenario's results file and tables.

use super::phases::{LagPhase, ThroughputRun};
use super::{Args, Setup, BACKLOG_ROWS_PER_STATEMENT};
use crate::capturing::HISTORY_KEY_SQL;
use crate::report::{median, round, Machine, Software, Table};
use serde::Serialize;
use switchyard_tests::Cluster;

/// Rows per second the backlog replay is held against.
const TARGET_ROWS_PER_SEC: f64 = 50_000.0;

/// The per-commit lag p99 under load is held against, ms.
const TARGET_LAG_P99_MS: f64 = 100.0;

/// The throughput runs over all rounds.
#[derive(Debug, Serialize)]
struct Throughput {
    /// Distinct keys replayed per run.
    rows: u64,
    batch_keys: usize,
    workers_single: usize,
    workers_parallel: usize,
    rounds: usize,
    /// Median rows/s per worker count.
    rows_per_sec_single: f64,
    rows_per_sec_parallel: f64,
    /// Per round, in round order.
    single_per_round: Vec<f64>,
    parallel_per_round: Vec<f64>,
    runs: Vec<ThroughputRun>,
}

/// How the runs were made.
#[derive(Debug, Serialize)]
struct Parameters {
    rows: u64,
    rounds: usize,
    workers: usize,
    /// Replay workers during the lag measurement.
    lag_workers: usize,
    batch_keys: usize,
    duration_seconds: u64,
    warmup_seconds: u64,
    tps_target: u32,
    clients: usize,
    threads: usize,
    scale: u32,
    replay_threads: usize,
    backlog_rows_per_statement: u64,
    pgbench_args: String,
    pgbench_script: &'static str,
    replay_connections: &'static str,
    /// Run on the databases before each throughput run and before the lag
    /// measurement, outside the timing.
    before_each_measurement: &'static str,
    history_key: &'static str,
}

/// The results file.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    scenario: &'static str,
    timestamp: String,
    unix_time: u64,
    /// The better of the single-worker and parallel medians.
    rows_per_sec: f64,
    rows_per_sec_single: f64,
    rows_per_sec_parallel: f64,
    /// The worker count `rows_per_sec` was measured with.
    rows_per_sec_workers: usize,
    target_rows_per_sec: f64,
    rows_per_sec_met: bool,
    /// Per-commit catch-up lag under load, after the warm-up, ms.
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    lag_max_ms: f64,
    target_lag_p99_ms: f64,
    lag_p99_met: bool,
    /// Cross-check: the largest sampled age of the oldest unapplied commit, s.
    lag_seconds_max_sampled: f64,
    tps_target: u32,
    tps_achieved: f64,
    commits_measured: u64,
    /// Row counts and md5 of every pgbench table equal on both sides at the end.
    target_matches_source: bool,
    /// pgbench failures (failed transactions, or an aborted client); must be 0.
    pub(super) failed_transactions: u64,
    /// Unsafe statements capture met; must be 0.
    pub(super) unsafe_statements: u64,
    throughput: Throughput,
    lag: LagPhase,
    setup: Setup,
    parameters: Parameters,
    machine: Machine,
    software: Software,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        args: &Args,
        setup: Setup,
        runs: Vec<ThroughputRun>,
        lag: LagPhase,
        target_matches_source: bool,
        machine: Machine,
        (unix_time, timestamp): (u64, String),
        cluster: &Cluster,
    ) -> Report {
        let per_round = |workers: usize| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.workers == workers)
                .map(|r| r.rows_per_sec)
                .collect()
        };
        // With --workers 1 both series are the same runs.
        let (single_per_round, parallel_per_round) = (per_round(1), per_round(args.workers));
        let single = round(median(&single_per_round), 0);
        let parallel = round(median(&parallel_per_round), 0);
        let (rows_per_sec, rows_per_sec_workers) = if parallel > single {
            (parallel, args.workers)
        } else {
            (single, 1)
        };
        let status = &lag.replayer;
        let unsafe_statements = setup.backlog_captured.unsafe_statements + lag.captured.unsafe_statements;
        Report {
            scenario: "catchup",
            timestamp,
            unix_time,
            rows_per_sec,
            rows_per_sec_single: single,
            rows_per_sec_parallel: parallel,
            rows_per_sec_workers,
            target_rows_per_sec: TARGET_ROWS_PER_SEC,
            rows_per_sec_met: rows_per_sec >= TARGET_ROWS_PER_SEC,
            lag_p50_ms: status.lag_p50_ms,
            lag_p99_ms: status.lag_p99_ms,
            lag_max_ms: status.lag_max_ms,
            target_lag_p99_ms: TARGET_LAG_P99_MS,
            lag_p99_met: status.commits_measured > 0 && status.lag_p99_ms <= TARGET_LAG_P99_MS,
            lag_seconds_max_sampled: lag.lag_seconds_max_sampled,
            tps_target: args.rate,
            tps_achieved: round(lag.pgbench.tps, 1),
            commits_measured: status.commits_measured,
            target_matches_source,
            failed_transactions: lag.pgbench.failed,
            unsafe_statements,
            throughput: Throughput {
                rows: args.rows,
                batch_keys: args.batch_keys,
                workers_single: 1,
                workers_parallel: args.workers,
                rounds: args.rounds,
                rows_per_sec_single: single,
                rows_per_sec_parallel: parallel,
                single_per_round,
                parallel_per_round,
                runs,
            },
            parameters: Parameters {
                rows: args.rows,
                rounds: args.rounds,
                workers: args.workers,
                lag_workers: args.lag_workers(),
                batch_keys: args.batch_keys,
                duration_seconds: args.duration,
                warmup_seconds: args.warmup,
                tps_target: args.rate,
                clients: args.clients,
                threads: args.load().threads,
                scale: setup.scale,
                replay_threads: args.replay_threads,
                backlog_rows_per_statement: BACKLOG_ROWS_PER_STATEMENT,
                pgbench_args: lag.pgbench_args.clone(),
                pgbench_script: "builtin: TPC-B (sort of), through the capturing proxy",
                replay_connections: "tcp 127.0.0.1, straight to PostgreSQL (source and target)",
                before_each_measurement:
                    "VACUUM ANALYZE; CHECKPOINT (and the replay position dropped before each throughput run)",
                history_key: HISTORY_KEY_SQL,
            },
            lag,
            setup,
            machine,
            software: Software::probe(cluster),
        }
    }

    /// One line per throughput run.
    pub(super) fn runs_table(&self) -> String {
        let mut table = Table::new(&["round", "workers", "seconds", "rows", "batches", "rows/s"]);
        for r in &self.throughput.runs {
            table.row(vec![
                r.round.to_string(),
                r.workers.to_string(),
                format!("{:.3}", r.seconds),
                r.rows_applied.to_string(),
                r.batches.to_string(),
                format!("{:.0}", r.rows_per_sec),
            ]);
        }
        table.render()
    }

    /// The headline figures against their targets.
    pub(super) fn table(&self) -> String {
        let met = |ok: bool| if ok { "yes" } else { "NO" }.to_owned();
        let t = &self.throughput;
        let mut table = Table::new(&["measure", "value", "target", "met"]);
        let mut row = |cells: [String; 4]| table.row(cells.to_vec());
        row([
            "replay rows/s, 1 worker (median)".into(),
            format!("{:.0}", t.rows_per_sec_single),
            String::new(),
            String::new(),
        ]);
        row([
            format!("replay rows/s, {} workers (median)", t.workers_parallel),
            format!("{:.0}", t.rows_per_sec_parallel),
            String::new(),
            String::new(),
        ]);
        row([
            "replay rows/s, best".into(),
            format!("{:.0}", self.rows_per_sec),
            format!(">= {TARGET_ROWS_PER_SEC:.0}"),
            met(self.rows_per_sec_met),
        ]);
        let workers = self.parameters.lag_workers;
        for (name, value, target) in [
            ("lag p50 ms", self.lag_p50_ms, None),
            ("lag p99 ms", self.lag_p99_ms, Some(self.lag_p99_met)),
            ("lag max ms", self.lag_max_ms, None),
            (
                "lag_seconds max, sampled (ms)",
                self.lag_seconds_max_sampled * 1000.0,
                None,
            ),
        ] {
            row([
                format!("{name}, {workers} workers"),
                format!("{value:.1}"),
                target.map_or(String::new(), |_| format!("<= {TARGET_LAG_P99_MS:.0}")),
                target.map_or(String::new(), met),
            ]);
        }
        row([
            "pgbench tps achieved".into(),
            format!("{:.1}", self.tps_achieved),
            format!("-R {}", self.tps_target),
            String::new(),
        ]);
        row([
            "pgbench latency avg ms (from schedule)".into(),
            self.lag
                .pgbench
                .latency_avg_ms
                .map_or("?".into(), |l| format!("{l:.1}")),
            String::new(),
            String::new(),
        ]);
        row([
            "commits measured".into(),
            self.commits_measured.to_string(),
            String::new(),
            String::new(),
        ]);
        table.render()
    }
}
