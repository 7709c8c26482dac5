//! The capture-overhead scenario: pgbench's read-write TPC-B-like script
//! through two switchyard proxies on one cluster, one capturing writes and
//! one not, in alternating rounds and in both the simple and the prepared
//! query protocol, so that the on/off ratios compare like with like.
//!
//! `pgbench -i` leaves `pgbench_history` without a primary key, and capture
//! cannot log the key of a row that has none (the default `reject` policy
//! would refuse every history insert). The scenario therefore gives that
//! table a `bigserial` key before capture starts, and says so in its output.

use crate::capturing::{
    add_history_key, capturing_config, proxy_config, start_capture, CaptureCounters, Console, HISTORY_KEY_SQL,
};
use crate::pgbench::{self, Load, Run, Summary};
use crate::proxy_thread::ProxyThread;
use crate::report::{self, median, ratio, round, Machine, Software, Table};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use switchyard_tests::{Cluster, Endpoint};

/// Where the results go unless `--out` says otherwise.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results/capture.json");

/// The database pgbench fills and writes to.
const DB: &str = "bench";

/// The on/off ratio the headline is held against.
const TARGET_ON_OVER_OFF: f64 = 0.90;

/// Options of `switchyard-bench capture`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each measured pgbench run lasts (-T).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds; each runs capture off and on once per protocol mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// pgbench client sessions (-c).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// pgbench worker threads (-j).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// pgbench scale factor for `pgbench -i -s` (100,000 accounts each).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Seconds of unrecorded pgbench per run kind before the rounds, to warm
    /// caches and check that every path works.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// The JSON results file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_OUT)]
    out: PathBuf,
}

/// pgbench's query protocol (`-M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    /// One Query message per statement.
    Simple,
    /// Parse once per connection, then Bind/Execute.
    Prepared,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Simple, Mode::Prepared];

    fn name(self) -> &'static str {
        match self {
            Mode::Simple => "simple",
            Mode::Prepared => "prepared",
        }
    }
}

/// Which proxy pgbench goes through. Clients always reach the proxy over
/// TCP on 127.0.0.1; both proxies reach PostgreSQL over its Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Target {
    /// switchyard without capture.
    CaptureOff,
    /// switchyard capturing every write.
    CaptureOn,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::CaptureOff => "capture-off",
            Target::CaptureOn => "capture-on",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Target::CaptureOff => "pgbench -tcp-> switchyard -unix-> postgres",
            Target::CaptureOn => "pgbench -tcp-> switchyard (capture on) -unix-> postgres",
        }
    }
}

/// The runs of one round, in order: each mode without and then with
/// capture, so that drift over the round hits both sides alike.
const ORDER: [(Mode, Target); 4] = [
    (Mode::Simple, Target::CaptureOff),
    (Mode::Simple, Target::CaptureOn),
    (Mode::Prepared, Target::CaptureOff),
    (Mode::Prepared, Target::CaptureOn),
];

/// The two proxies in front of the cluster and the capturing one's admin
/// console; [`Stack::stop`] closes the console and stops the proxies.
struct Stack {
    console: Console,
    off: ProxyThread,
    on: ProxyThread,
    off_endpoint: Endpoint,
    on_endpoint: Endpoint,
    /// The capturing proxy's durability and unsafe-statement policy.
    durability: String,
    policy: String,
    /// Holds the capture log; removed after the proxies stop.
    log_dir: tempfile::TempDir,
}

impl Stack {
    fn endpoint(&self, target: Target) -> &Endpoint {
        match target {
            Target::CaptureOff => &self.off_endpoint,
            Target::CaptureOn => &self.on_endpoint,
        }
    }

    /// Closes the console, then stops both proxies and removes the log.
    async fn stop(self) {
        self.console.close().await;
        self.on.stop();
        self.off.stop();
        drop(self.log_dir);
    }

    /// Runs pgbench with `load` in protocol `mode` through `target`; an
    /// error says where to look.
    async fn pgbench(&self, target: Target, mode: Mode, load: &Load, cluster: &Cluster) -> Result<Run> {
        match run_pgbench(self.endpoint(target), load, mode).await {
            Ok(run) => Ok(run),
            Err(e) => {
                let hint = self.diagnose(target, cluster).await;
                Err(e.context(format!(
                    "pgbench ({} protocol) through {} ({hint})",
                    mode.name(),
                    target.name()
                )))
            }
        }
    }

    /// Where to look when a run through `target` went wrong: the server log,
    /// and for the capturing proxy what SHOW CAPTURE says about unsafe
    /// statements.
    async fn diagnose(&self, target: Target, cluster: &Cluster) -> String {
        let mut hint = format!("server log: {}", cluster.log_path().display());
        if target == Target::CaptureOn {
            match self.console.show_capture().await {
                Ok(show) => {
                    hint.push_str(&format!("; capture state: {}", show.get("state").unwrap_or("?")));
                    for line in show.unsafe_lines() {
                        hint.push_str(&format!("\n  {line}"));
                    }
                }
                Err(e) => hint.push_str(&format!("; SHOW CAPTURE failed: {e:#}")),
            }
        }
        hint
    }
}

/// Runs the scenario; the exit code is a failure when any pgbench run had
/// failed transactions or aborted clients, or capture met an unsafe
/// statement.
pub async fn run(args: Args) -> Result<ExitCode> {
    if args.rounds == 0 || args.clients == 0 || args.seconds == 0 || args.jobs == 0 {
        bail!("--rounds, --clients, --seconds and --jobs must be at least 1");
    }
    let machine = Machine::probe();
    let (unix_time, timestamp) = report::now();
    let load = Load {
        clients: args.clients,
        threads: args.jobs.min(args.clients),
        seconds: args.seconds,
        select_only: false,
    };

    println!("starting a PostgreSQL cluster and pgbench -i -s {}", args.scale);
    let cluster = Cluster::builder()
        .database(DB)
        .setting("max_connections", (args.clients + 20).max(200).to_string())
        .start()
        .await
        .context("starting the PostgreSQL cluster")?;
    pgbench::initialize(&cluster.endpoint(), DB, args.scale).await?;
    add_history_key(&cluster, DB).await?;
    println!("added a primary key to pgbench_history ({HISTORY_KEY_SQL}): capture needs a key for every written row");

    let stack = start_stack(&cluster).await?;
    // Whatever happens, the console closes and the proxies stop before the
    // outcome is looked at.
    let outcome = capture_rounds(&stack, &cluster, &load, &args).await;
    stack.stop().await;
    let (rounds, setup) = outcome?;

    let report = Report::build(&args, &load, rounds, machine, (unix_time, timestamp), &cluster, setup);
    print!("\n{}", report.table());
    println!(
        "capture on / off: simple {:.3}, prepared {:.3} (target >= {TARGET_ON_OVER_OFF:.2})",
        report.mode(Mode::Simple).map_or(0.0, |m| m.on_over_off),
        report.mode(Mode::Prepared).map_or(0.0, |m| m.on_over_off),
    );
    println!(
        "captured over the measured runs: {} transactions, {} keys, {} log bytes, {} unsafe statements",
        report.capture.transactions_captured,
        report.capture.keys_captured,
        report.capture.log_bytes,
        report.unsafe_statements
    );
    report::write_json(&args.out, &report)?;
    println!("wrote {}", args.out.display());
    let mut clean = true;
    if report.failed_transactions > 0 {
        eprintln!(
            "switchyard-bench: {} pgbench failure(s); see the runs in {}",
            report.failed_transactions,
            args.out.display()
        );
        clean = false;
    }
    if report.unsafe_statements > 0 {
        eprintln!(
            "switchyard-bench: capture met {} unsafe statement(s); see `capture` in {}",
            report.unsafe_statements,
            args.out.display()
        );
        clean = false;
    }
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Starts capture, warms up and measures; returns the rounds and how capture
/// ran.
async fn capture_rounds(
    stack: &Stack,
    cluster: &Cluster,
    load: &Load,
    args: &Args,
) -> Result<(Vec<RoundReport>, CaptureSetup)> {
    let barrier_wait = start_capture(&stack.console).await?;
    println!(
        "capture started; barrier reached after {:.0} ms (log in {})",
        barrier_wait.as_secs_f64() * 1000.0,
        stack.log_dir.path().join("log").display()
    );
    warm_up(stack, cluster, load, args.warmup).await?;
    let rounds = measure(stack, cluster, load, args.rounds).await?;
    let final_counters = stack.console.show_capture().await.and_then(|s| s.counters()).ok();
    let setup = CaptureSetup {
        durability: stack.durability.clone(),
        policy: stack.policy.clone(),
        barrier_wait,
        final_counters,
    };
    Ok((rounds, setup))
}

/// Starts both proxies (each on its own thread and runtime, Unix-socket
/// backend) and connects to the capturing one's admin console.
async fn start_stack(cluster: &Cluster) -> Result<Stack> {
    let user = cluster.superuser();
    let binaries = cluster.binaries();
    let log_dir = tempfile::Builder::new()
        .prefix("switchyard-capture-bench-")
        .tempdir()
        .context("creating a directory for the capture log")?;

    let off = ProxyThread::start("capture-off", proxy_config(cluster)?)?;
    let config = capturing_config(cluster, log_dir.path(), DB)?;
    let admin_database = config.admin_database.clone();
    let durability = format!("{:?}", config.capture.durability).to_lowercase();
    let policy = config.capture.policy.name().to_owned();
    let on = ProxyThread::start("capture-on", config)?;

    let off_endpoint = off.endpoint(user, binaries);
    let on_endpoint = on.endpoint(user, binaries);
    for (target, endpoint) in [(Target::CaptureOff, &off_endpoint), (Target::CaptureOn, &on_endpoint)] {
        println!(
            "  {:<12} 127.0.0.1:{:<5}  {}",
            target.name(),
            endpoint.port,
            target.path()
        );
    }
    let console = Console::connect(&on_endpoint, &admin_database).await?;
    Ok(Stack {
        console,
        off,
        on,
        off_endpoint,
        on_endpoint,
        durability,
        policy,
        log_dir,
    })
}

/// since a path that does not work would only produce meaningless rounds.
async fn warm_up(stack: &Stack, cluster: &Cluster, load: &Load, seconds: u64) -> Result<()> {
    if seconds == 0 {
        return Ok(());
    }
    println!("warming up: {seconds} s per mode and target");
    let warm = Load { seconds, ..*load };
    for (mode, target) in ORDER {
        let run = stack.pgbench(target, mode, &warm, cluster).await?;
        if !run.is_clean() {
            bail!(
                "warm-up ({} protocol) through {} failed ({}):\n{}",
                mode.name(),
                target.name(),
                stack.diagnose(target, cluster).await,
                run.output_tail()
            );
        }
    }
    Ok(())
}

/// One round's runs, in the order they ran.
#[derive(Debug, Serialize)]
struct RoundReport {
    /// 1-based.
    round: usize,
    runs: Vec<RunReport>,
}

/// One pgbench run.
#[derive(Debug, Serialize)]
struct RunReport {
    mode: Mode,
    target: Target,
    #[serde(flatten)]
    summary: Summary,
    /// False when pgbench exited unsuccessfully (a client aborted).
    exit_ok: bool,
    /// What SHOW CAPTURE's counters gained during the run (capture-on only).
    #[serde(skip_serializing_if = "Option::is_none")]
    capture: Option<CaptureCounters>,
}

/// Runs every mode and target once per round in [`ORDER`], reading SHOW
/// CAPTURE around each capture-on run.
async fn measure(stack: &Stack, cluster: &Cluster, load: &Load, rounds: usize) -> Result<Vec<RoundReport>> {
    let mut reports = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let mut runs = Vec::with_capacity(ORDER.len());
        for (mode, target) in ORDER {
            let before = match target {
                Target::CaptureOn => Some(stack.console.counters().await?),
                Target::CaptureOff => None,
            };
            let run = stack.pgbench(target, mode, load, cluster).await?;
            let capture = match before {
                Some(before) => Some(stack.console.counters().await?.since(&before)),
                None => None,
            };
            let captured = capture.as_ref().map_or(String::new(), |c| {
                format!(
                    "  captured {} txns, {} keys, {} bytes, {} unsafe",
                    c.transactions_captured, c.keys_captured, c.log_bytes, c.unsafe_statements
                )
            });
            println!(
                "round {}/{rounds}  {:<8} {:<12} {:>9.1} tps  {:>6.3} ms  {} failed{captured}",
                r + 1,
                mode.name(),
                target.name(),
                run.summary.tps,
                run.summary.latency_avg_ms.unwrap_or(0.0),
                run.failures()
            );
            if !run.is_clean() {
                eprintln!(
                    "pgbench ({} protocol) through {} was not clean ({}):\n{}",
                    mode.name(),
                    target.name(),
                    stack.diagnose(target, cluster).await,
                    run.output_tail()
                );
            }
            let mut summary = run.summary.clone();
            summary.failed = run.failures();
            runs.push(RunReport {
                mode,
                target,
                summary,
                exit_ok: run.exit_ok,
                capture,
            });
        }
        reports.push(RoundReport { round: r + 1, runs });
    }
    Ok(reports)
}

/// pgbench's arguments for `load` in protocol `mode`.
fn pgbench_args(load: &Load, mode: Mode) -> Vec<String> {
    let mut args = load.args();
    args.push("-M".to_owned());
    args.push(mode.name().to_owned());
    args
}

/// Runs pgbench with `load` in protocol `mode` against the bench database at
/// `endpoint`.
async fn run_pgbench(endpoint: &Endpoint, load: &Load, mode: Mode) -> Result<Run> {
    pgbench::run_args(endpoint, DB, &pgbench_args(load, mode)).await
}

/// Per-mode figures over all rounds.
#[derive(Debug, Serialize)]
struct ModeReport {
    mode: Mode,
    pgbench_args: String,
    capture_off_tps: f64,
    capture_on_tps: f64,
    on_over_off: f64,
    /// TPS per round, in round order.
    off_tps: Vec<f64>,
    on_tps: Vec<f64>,
    /// Average latency per round, in ms.
    off_latency_avg_ms: Vec<Option<f64>>,
    on_latency_avg_ms: Vec<Option<f64>>,
    /// Failures per round.
    off_failed: Vec<u64>,
    on_failed: Vec<u64>,
    /// Failures over all rounds, both sides.
    failed: u64,
    /// Capture counters gained per capture-on round.
    transactions_captured: Vec<u64>,
    keys_captured: Vec<u64>,
    log_bytes: Vec<u64>,
    unsafe_statements: u64,
}

/// How capture ran, for the report.
#[derive(Debug)]
struct CaptureSetup {
    durability: String,
    policy: String,
    /// From CAPTURE START until SHOW CAPTURE said `on`.
    barrier_wait: Duration,
    /// SHOW CAPTURE's counters after the last round.
    final_counters: Option<CaptureCounters>,
}

/// What capture did over the run.
#[derive(Debug, Serialize)]
struct CaptureReport {
    durability: String,
    policy: String,
    /// From CAPTURE START until SHOW CAPTURE said `on`.
    barrier_wait_ms: f64,
    /// Summed over the measured capture-on runs.
    transactions_captured: u64,
    keys_captured: u64,
    log_records: u64,
    log_bytes: u64,
    keys_per_transaction: f64,
    bytes_per_transaction: f64,
    /// SHOW CAPTURE's counters at the end, warm-up included.
    final_counters: Option<CaptureCounters>,
}

/// How the runs were made.
#[derive(Debug, Serialize)]
struct Parameters {
    clients: usize,
    threads: usize,
    seconds: u64,
    rounds: usize,
    scale: u32,
    warmup_seconds: u64,
    pgbench_args: String,
    pgbench_script: &'static str,
    round_order: Vec<String>,
    client_transport: &'static str,
    proxy_backend: &'static str,
    proxy_runtime: &'static str,
    history_key: &'static str,
}

/// The results file. The headline fields are the simple protocol's.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    timestamp: String,
    unix_time: u64,
    headline_mode: Mode,
    capture_off_tps: f64,
    capture_on_tps: f64,
    on_over_off: f64,
    target_on_over_off: f64,
    /// `pgbench_history` got a `bigserial` primary key before capture started.
    history_key_added: bool,
    /// Failed transactions plus aborted runs over all measured runs; must be 0.
    failed_transactions: u64,
    /// Unsafe statements capture met in the measured runs; must be 0.
    unsafe_statements: u64,
    modes: Vec<ModeReport>,
    capture: CaptureReport,
    rounds: Vec<RoundReport>,
    parameters: Parameters,
    machine: Machine,
    software: Software,
}

impl Report {
    fn build(
        args: &Args,
        load: &Load,
        rounds: Vec<RoundReport>,
        machine: Machine,
        (unix_time, timestamp): (u64, String),
        cluster: &Cluster,
        setup: CaptureSetup,
    ) -> Report {
        let modes: Vec<ModeReport> = Mode::ALL.iter().map(|&m| mode_report(&rounds, load, m)).collect();
        let failed_transactions = rounds.iter().flat_map(|r| &r.runs).map(|r| r.summary.failed).sum();
        let mut captured = CaptureCounters::default();
        for c in rounds.iter().flat_map(|r| &r.runs).filter_map(|r| r.capture.as_ref()) {
            captured.add(c);
        }
        let per_txn = |v: u64| round(ratio(v as f64, captured.transactions_captured as f64), 2);
        let headline = |field: fn(&ModeReport) -> f64| {
            let simple = modes.iter().find(|m| m.mode == Mode::Simple);
            simple.map_or(0.0, field)
        };
        Report {
            scenario: "capture",
            timestamp,
            unix_time,
            headline_mode: Mode::Simple,
            capture_off_tps: headline(|m| m.capture_off_tps),
            capture_on_tps: headline(|m| m.capture_on_tps),
            on_over_off: headline(|m| m.on_over_off),
            target_on_over_off: TARGET_ON_OVER_OFF,
            history_key_added: true,
            failed_transactions,
            unsafe_statements: captured.unsafe_statements,
            capture: CaptureReport {
                durability: setup.durability,
                policy: setup.policy,
                barrier_wait_ms: round(setup.barrier_wait.as_secs_f64() * 1000.0, 1),
                transactions_captured: captured.transactions_captured,
                keys_captured: captured.keys_captured,
                log_records: captured.log_records,
                log_bytes: captured.log_bytes,
                keys_per_transaction: per_txn(captured.keys_captured),
                bytes_per_transaction: per_txn(captured.log_bytes),
                final_counters: setup.final_counters,
            },
            modes,
            rounds,
            parameters: Parameters {
                clients: load.clients,
                threads: load.threads,
                seconds: load.seconds,
                rounds: args.rounds,
                scale: args.scale,
                warmup_seconds: args.warmup,
                pgbench_args: load.args().join(" ") + " -M {simple|prepared}",
                pgbench_script: "builtin: TPC-B (sort of)",
                round_order: ORDER
                    .iter()
                    .map(|(m, t)| format!("{}/{}", m.name(), t.name()))
                    .collect(),
                client_transport: "tcp 127.0.0.1",
                proxy_backend: "unix",
                proxy_runtime: "tokio current_thread on a dedicated OS thread",
                history_key: HISTORY_KEY_SQL,
            },
            machine,
            software: Software::probe(cluster),
        }
    }

    fn mode(&self, mode: Mode) -> Option<&ModeReport> {
        self.modes.iter().find(|m| m.mode == mode)
    }

    /// The per-mode, per-target table.
    fn table(&self) -> String {
        let mut table = Table::new(&["mode", "target", "median tps", "vs off", "tps per round", "failed"]);
        for m in &self.modes {
            let sides = [
                (Target::CaptureOff, m.capture_off_tps, 1.0, &m.off_tps, &m.off_failed),
                (
                    Target::CaptureOn,
                    m.capture_on_tps,
                    m.on_over_off,
                    &m.on_tps,
                    &m.on_failed,
                ),
            ];
            for (target, median_tps, over_off, tps, failed) in sides {
                let per_round: Vec<String> = tps.iter().map(|v| format!("{v:.0}")).collect();
                table.row(vec![
                    m.mode.name().to_owned(),
                    target.name().to_owned(),
                    format!("{median_tps:.1}"),
                    format!("{over_off:.3}"),
                    per_round.join(" "),
                    failed.iter().sum::<u64>().to_string(),
                ]);
            }
        }
        table.render()
    }
}

/// The runs in `mode` through `target`, in round order.
fn runs_of(rounds: &[RoundReport], mode: Mode, target: Target) -> Vec<&RunReport> {
    rounds
        .iter()
        .flat_map(|r| {
            r.runs
                .iter()
                .filter(move |run| run.mode == mode && run.target == target)
        })
        .collect()
}

/// Medians, the on/off ratio and per-round figures of one mode.
fn mode_report(rounds: &[RoundReport], load: &Load, mode: Mode) -> ModeReport {
    let off = runs_of(rounds, mode, Target::CaptureOff);
    let on = runs_of(rounds, mode, Target::CaptureOn);
    let tps = |runs: &[&RunReport]| -> Vec<f64> { runs.iter().map(|r| r.summary.tps).collect() };
    let off_median = median(&tps(&off));
    let on_median = median(&tps(&on));
    let captured =
        |f: fn(&CaptureCounters) -> u64| -> Vec<u64> { on.iter().map(|r| r.capture.as_ref().map_or(0, f)).collect() };
    ModeReport {
        mode,
        pgbench_args: pgbench_args(load, mode).join(" "),
        capture_off_tps: round(off_median, 1),
        capture_on_tps: round(on_median, 1),
        on_over_off: round(ratio(on_median, off_median), 4),
        off_tps: off.iter().map(|r| round(r.summary.tps, 1)).collect(),
        on_tps: on.iter().map(|r| round(r.summary.tps, 1)).collect(),
        off_latency_avg_ms: off.iter().map(|r| r.summary.latency_avg_ms).collect(),
        on_latency_avg_ms: on.iter().map(|r| r.summary.latency_avg_ms).collect(),
        off_failed: off.iter().map(|r| r.summary.failed).collect(),
        on_failed: on.iter().map(|r| r.summary.failed).collect(),
        failed: off.iter().chain(&on).map(|r| r.summary.failed).sum(),
        transactions_captured: captured(|c| c.transactions_captured),
        keys_captured: captured(|c| c.keys_captured),
        log_bytes: captured(|c| c.log_bytes),
        unsafe_statements: captured(|c| c.unsafe_statements).iter().sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_arguments_name_the_protocol() {
        let load = Load {
            clients: 8,
            threads: 2,
            seconds: 10,
            select_only: false,
        };
        assert_eq!(
            pgbench_args(&load, Mode::Simple).join(" "),
            "-n -c 8 -j 2 -T 10 -M simple"
        );
        assert_eq!(
            pgbench_args(&load, Mode::Prepared).join(" "),
            "-n -c 8 -j 2 -T 10 -M prepared"
        );
    }
}
