//! The catch-up scenario: how fast the replayer applies a backlog of
//! captured keys to a clone, and how far behind the source it stays while
//! pgbench's TPC-B-like script runs at a steady rate through a capturing
//! proxy.
//!
//! One cluster holds the source database and `target`, a pg_dump/pg_restore
//! clone taken after CAPTURE START's barrier, the way a migration starts.
//! The backlog is `--rows` accounts updated through the proxy in multi-row
//! UPDATEs (capture logs one key per row); with the source quiet, it is
//! replayed from the start of the log with one worker and with `--workers`,
//! in alternating rounds, against the same target with its replay position
//! dropped and its tables vacuumed in between. Then pgbench runs
//! rate-limited through the proxy while the replayer follows with
//! `--lag-workers` (`--workers` by default), and the per-commit lag (the
//! proxy's commit on the source to the batch commit on the target) is read
//! from the replayer's own histogram after a warm-up. At the end every
//! pgbench table must be equal on both sides.

mod phases;
mod report;

use crate::capturing::{add_history_key, capturing_config, start_capture, CaptureCounters, Console, HISTORY_KEY_SQL};
use crate::pgbench::{self, Load};
use crate::proxy_thread::ProxyThread;
use crate::report::Machine;
use anyhow::{anyhow, bail, ensure, Context, Result};
use phases::{LagPhase, ReplayRuntime, ReplaySetup, ThroughputRun};
use report::Report;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_replay::catalog::Catalog;
use switchyard_replay::mapping::Mapping;
use switchyard_tests::{Cluster, Endpoint};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Where the results go unless `--out` says otherwise.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results/catchup.json");

/// The source database pgbench fills and writes to.
const DB: &str = "bench";

/// The clone the replayer keeps caught up.
const TARGET_DB: &str = "target";

/// Accounts `pgbench -i` creates per unit of scale.
const ACCOUNTS_PER_SCALE: u64 = 100_000;

/// Rows each backlog UPDATE statement (and so each captured commit) writes.
const BACKLOG_ROWS_PER_STATEMENT: u64 = 1_000;

/// The tables the scenario compares between source and target at the end,
/// each with the key it orders by.
const CHECKED_TABLES: [(&str, &str); 4] = [
    ("pgbench_accounts", "aid"),
    ("pgbench_branches", "bid"),
    ("pgbench_tellers", "tid"),
    ("pgbench_history", "hid"),
];

/// Options of `switchyard-bench catchup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Distinct keys in the backlog replayed for throughput: rows of
    /// pgbench_accounts updated through the capturing proxy.
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    /// Throughput rounds; each replays the backlog with one worker and with
    /// --workers, the order alternating from round to round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Parallel replay workers, for the parallel throughput runs and the lag
    /// measurement.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Replay workers during the lag measurement; --workers unless given.
    #[arg(long)]
    lag_workers: Option<usize>,
    /// Keys per replay dispatch (ReplayOptions::batch_keys), shared out over
    /// the workers.
    #[arg(long, default_value_t = 5_000)]
    batch_keys: usize,
    /// Seconds pgbench runs during the lag measurement (-T).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// pgbench's rate limit during the lag measurement, transactions per
    /// second over all clients (-R).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds at the start of the lag measurement whose lag is discarded.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// pgbench client sessions during the lag measurement (-c).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// pgbench worker threads (-j).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// pgbench scale factor (100,000 accounts each); raised to hold --rows.
    #[arg(long, default_value_t = 4)]
    scale: u32,
    /// Threads of the replayer's own tokio runtime.
    #[arg(long, default_value_t = 2)]
    replay_threads: usize,
    /// The JSON results file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_OUT)]
    out: PathBuf,
}

impl Args {
    /// The replay workers that follow pgbench in the lag measurement.
    fn lag_workers(&self) -> usize {
        self.lag_workers.unwrap_or(self.workers)
    }

    /// The scale factor: `--scale`, or more when `--rows` needs more accounts.
    fn scale(&self) -> u32 {
        let needed = self.rows.div_ceil(ACCOUNTS_PER_SCALE);
        self.scale.max(u32::try_from(needed).unwrap_or(u32::MAX))
    }

    /// The steady load of the lag measurement.
    fn load(&self) -> Load {
        Load {
            clients: self.clients,
            threads: self.jobs.min(self.clients),
            seconds: self.duration,
            select_only: false,
        }
    }

    /// pgbench's arguments for the lag measurement: [`Args::load`], rate-limited.
    fn pgbench_args(&self) -> Vec<String> {
        let mut args = self.load().args();
        args.push("-R".to_owned());
        args.push(self.rate.to_string());
        args
    }
}

/// How the source, the clone and the backlog were made.
#[derive(Debug, Clone, serde::Serialize)]
struct Setup {
    scale: u32,
    /// From CAPTURE START until SHOW CAPTURE said `on`, ms.
    barrier_wait_ms: f64,
    /// pg_dump plus pg_restore into the target, seconds.
    clone_seconds: f64,
    /// Writing the backlog through the proxy, seconds.
    backlog_seconds: f64,
    backlog_statements: u64,
    /// What capture logged for the backlog.
    backlog_captured: CaptureCounters,
    /// The log position the throughput runs replay up to.
    backlog_last_lsn: u64,
}

/// The capturing proxy in front of the source and its admin console.
struct Stack {
    console: Console,
    proxy: ProxyThread,
    endpoint: Endpoint,
    /// Holds the capture log and the dump; removed after the proxy stops.
    dir: tempfile::TempDir,
}

impl Stack {
    async fn start(cluster: &Cluster) -> Result<Stack> {
        let dir = tempfile::Builder::new()
            .prefix("switchyard-catchup-bench-")
            .tempdir()
            .context("creating a directory for the capture log")?;
        let config = capturing_config(cluster, dir.path(), DB)?;
        let admin_database = config.admin_database.clone();
        let proxy = ProxyThread::start("capture", config)?;
        let endpoint = proxy.endpoint(cluster.superuser(), cluster.binaries());
        println!("  capturing proxy at 127.0.0.1:{}", endpoint.port);
        let console = Console::connect(&endpoint, &admin_database).await?;
        Ok(Stack {
            console,
            proxy,
            endpoint,
            dir,
        })
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    async fn stop(self) {
        self.console.close().await;
        self.proxy.stop();
        drop(self.dir);
    }
}

/// Runs the scenario; the exit code is a failure when pgbench had failed
/// transactions or aborted clients, capture met an unsafe statement, or the
/// target did not end up equal to the source.
pub async fn run(args: Args) -> Result<ExitCode> {
    if args.rows == 0 || args.rounds == 0 || args.workers == 0 || args.lag_workers() == 0 || args.batch_keys == 0 {
        bail!("--rows, --rounds, --workers, --lag-workers and --batch-keys must be at least 1");
    }
    if args.duration <= args.warmup || args.rate == 0 || args.clients == 0 || args.jobs == 0 {
        bail!("--duration must exceed --warmup, and --rate, --clients and --jobs must be at least 1");
    }
    let machine = Machine::probe();
    let now = crate::report::now();
    let scale = args.scale();

    println!("starting a PostgreSQL cluster and pgbench -i -s {scale}");
    let cluster = Cluster::builder()
        .database(DB)
        .setting("max_connections", "200")
        .start()
        .await
        .context("starting the PostgreSQL cluster")?;
    pgbench::initialize(&cluster.endpoint(), DB, scale).await?;
    add_history_key(&cluster, DB).await?;
    println!("added a primary key to pgbench_history ({HISTORY_KEY_SQL}): capture needs a key for every written row");

    let stack = Stack::start(&cluster).await?;
    let runtime = ReplayRuntime::new(args.replay_threads)?;
    let outcome = measure(&args, &cluster, &stack, &runtime).await;
    drop(runtime);
    stack.stop().await;
    let (setup, runs, lag, matches) = outcome?;

    let report = Report::build(&args, setup, runs, lag, matches, machine, now, &cluster);
    print!("\n{}", report.runs_table());
    print!("\n{}", report.table());
    crate::report::write_json(&args.out, &report)?;
    println!("wrote {}", args.out.display());
    let mut clean = true;
    if report.failed_transactions > 0 || report.unsafe_statements > 0 {
        eprintln!(
            "switchyard-bench: {} pgbench failure(s), {} unsafe statement(s); see {}",
            report.failed_transactions,
            report.unsafe_statements,
            args.out.display()
        );
        clean = false;
    }
    if !matches {
        eprintln!("switchyard-bench: the target does not equal the source after catch-up");
        clean = false;
    }
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Every phase after the proxy is up: capture, clone, backlog, throughput
/// rounds, lag under load, and the final comparison.
async fn measure(
    args: &Args,
    cluster: &Cluster,
    stack: &Stack,
    runtime: &ReplayRuntime,
) -> Result<(Setup, Vec<ThroughputRun>, LagPhase, bool)> {
    let barrier_wait = start_capture(&stack.console).await?;
    println!(
        "capture started; barrier reached after {:.0} ms",
        barrier_wait.as_secs_f64() * 1000.0
    );
    let clone_seconds = clone_source(cluster, &stack.dir.path().join("source.dump")).await?;
    println!("cloned {DB} into {TARGET_DB} with pg_dump/pg_restore in {clone_seconds:.1} s");
    let setup = write_backlog(args, stack, barrier_wait, clone_seconds).await?;

    let source = cluster.connect(DB).await.context("connecting to the source")?;
    let target = cluster.connect(TARGET_DB).await.context("connecting to the target")?;
    let replay = replay_setup(cluster, stack, &source, &target, args.batch_keys).await?;
    println!(
        "replaying the backlog: {} rounds of 1 and {} workers, batch_keys {}",
        args.rounds, args.workers, args.batch_keys
    );
    let runs = phases::throughput(runtime, &replay, &target, args, setup.backlog_last_lsn).await?;
    println!(
        "lag under load: pgbench {} through the proxy, {} replay workers, first {} s discarded",
        args.pgbench_args().join(" "),
        args.lag_workers(),
        args.warmup
    );
    phases::settle(&source, "source").await?;
    phases::settle(&target, "target").await?;
    let lag = phases::lag(runtime, &replay, stack, args).await?;
    let matches = compare(&source, &target).await?;
    Ok((setup, runs, lag, matches))
}

/// Dumps the source and restores it into the target database.
async fn clone_source(cluster: &Cluster, dump: &Path) -> Result<f64> {
    let started = Instant::now();
    let admin = cluster.connect("postgres").await.context("connecting to the cluster")?;
    admin
        .batch_execute(&format!("CREATE DATABASE {TARGET_DB}"))
        .await
        .context("creating the target database")?;
    let endpoint = cluster.endpoint();
    let out = endpoint
        .command("pg_dump", DB)
        .args(["-Fc", "-f"])
        .arg(dump)
        .output()
        .await
        .context("running pg_dump")?;
    ensure!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = endpoint
        .command("pg_restore", TARGET_DB)
        .args(["-d", TARGET_DB, "--no-owner"])
        .arg(dump)
        .output()
        .await
        .context("running pg_restore")?;
    ensure!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(started.elapsed().as_secs_f64())
}

/// Updates `--rows` accounts through the capturing proxy in multi-row
/// UPDATEs, one commit each, and checks that capture logged every key.
async fn write_backlog(args: &Args, stack: &Stack, barrier_wait: Duration, clone_seconds: f64) -> Result<Setup> {
    let client = stack
        .endpoint
        .connect(DB)
        .await
        .context("connecting through the proxy")?;
    let before = stack.console.counters().await?;
    let started = Instant::now();
    let mut statements = 0;
    let mut first = 1;
    while first <= args.rows {
        let last = (first + BACKLOG_ROWS_PER_STATEMENT - 1).min(args.rows);
        client
            .batch_execute(&format!(
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {first} AND {last}"
            ))
            .await
            .with_context(|| format!("updating accounts {first} to {last} through the proxy"))?;
        statements += 1;
        first = last + 1;
    }
    let backlog_seconds = started.elapsed().as_secs_f64();
    let show = stack.console.show_capture().await?;
    let captured = show.counters()?.since(&before);
    ensure!(
        captured.keys_captured == args.rows && captured.unsafe_statements == 0,
        "capture logged {} keys ({} unsafe statements) for {} updated rows; SHOW CAPTURE says:\n{}",
        captured.keys_captured,
        captured.unsafe_statements,
        args.rows,
        show.describe()
    );
    println!(
        "backlog: {} rows in {statements} UPDATEs through the proxy in {backlog_seconds:.1} s ({} log bytes)",
        args.rows, captured.log_bytes
    );
    Ok(Setup {
        scale: args.scale(),
        barrier_wait_ms: crate::report::round(barrier_wait.as_secs_f64() * 1000.0, 1),
        clone_seconds: crate::report::round(clone_seconds, 2),
        backlog_seconds: crate::report::round(backlog_seconds, 2),
        backlog_statements: statements,
        backlog_captured: captured,
        backlog_last_lsn: show.last_lsn()?,
    })
}

/// The identity mapping resolved against both catalogs, and where the
/// replayer connects.
async fn replay_setup(
    cluster: &Cluster,
    stack: &Stack,
    source: &Client,
    target: &Client,
    batch_keys: usize,
) -> Result<ReplaySetup> {
    let source_catalog = Catalog::load(source).await.context("reading the source catalog")?;
    let target_catalog = Catalog::load(target).await.context("reading the target catalog")?;
    let mapping = Mapping::parse("", "identity mapping")?
        .resolve(&source_catalog, &target_catalog)
        .map_err(|errors| anyhow!("resolving the identity mapping: {errors:?}"))?;
    let user = cluster.superuser();
    Ok(ReplaySetup {
        source: cluster.pg_config(user, DB),
        target: cluster.pg_config(user, TARGET_DB),
        mapping: Arc::new(mapping),
        source_catalog: Arc::new(source_catalog),
        target_catalog: Arc::new(target_catalog),
        log_dir: stack.log_dir(),
        batch_keys,
    })
}

/// Whether every pgbench table holds the same rows on both sides; prints
/// the tables that differ.
async fn compare(source: &Client, target: &Client) -> Result<bool> {
    let mut equal = true;
    for (table, key) in CHECKED_TABLES {
        let sql = format!("SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t.{key})) FROM {table} t");
        let (a, b) = (fingerprint(source, &sql).await?, fingerprint(target, &sql).await?);
        if a != b {
            println!("{table} differs: source {a}, target {b}");
            println!(
                "  first differing rows: {}",
                first_differences(source, target, table, key).await?
            );
            equal = false;
        }
    }
    println!(
        "target {} the source (row count and md5 of every pgbench table)",
        if equal { "equals" } else { "DOES NOT equal" }
    );
    Ok(equal)
}

/// The first few keys of `table` whose rows differ, with both sides' rows.
async fn first_differences(source: &Client, target: &Client, table: &str, key: &str) -> Result<String> {
    let sql = format!("SELECT t.{key}::text, t::text FROM {table} t");
    let (a, b) = (rows_by_key(source, &sql).await?, rows_by_key(target, &sql).await?);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .take(5)
        .map(|k| format!("{key}={k}: source {:?}, target {:?}", a.get(k), b.get(k)))
        .collect();
    Ok(diffs.join("; "))
}

/// `sql`'s rows as key (first column) to row (second column).
async fn rows_by_key(client: &Client, sql: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let messages = client.simple_query(sql).await.with_context(|| format!("`{sql}`"))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((row.get(0)?.to_owned(), row.get(1)?.to_owned())),
            _ => None,
        })
        .collect())
}

/// The first row of `sql`'s result as one text.
async fn fingerprint(client: &Client, sql: &str) -> Result<String> {
    let messages = client.simple_query(sql).await.with_context(|| format!("`{sql}`"))?;
    let row = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let row = row.with_context(|| format!("`{sql}` returned no row"))?;
    Ok((0..row.len())
        .map(|i| row.get(i).unwrap_or("null"))
        .collect::<Vec<_>>()
        .join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        Cli::parse_from(std::iter::once("catchup").chain(argv.iter().copied())).args
    }

    #[test]
    fn scale_holds_the_backlog() {
        assert_eq!(parse(&[]).scale(), 4);
        assert_eq!(parse(&["--rows", "450001"]).scale(), 5);
        assert_eq!(parse(&["--rows", "1000", "--scale", "1"]).scale(), 1);
    }

    #[test]
    fn lag_load_is_rate_limited() {
        let args = parse(&["--rate", "500", "--clients", "1", "--duration", "12"]);
        assert_eq!(args.pgbench_args().join(" "), "-n -c 1 -j 1 -T 12 -R 500");
        assert_eq!(parse(&[]).pgbench_args().join(" "), "-n -c 4 -j 2 -T 30 -R 1000");
    }
}
