//! The move scenario: what moving every session to a fresh backend costs.
//! N client sessions (100 and 1,000 by default) are open through the proxy,
//! either idle or busy (each running `SELECT pg_backend_pid()` in a loop),
//! in the simple protocol or through a prepared statement, and the console's
//! `RECONNECT` moves them all to new backends of the same database.
//!
//! Two figures per run. `move_ms` and `open_ms` are the proxy's own, from
//! the RECONNECT row (`MoveReport`): opening every next backend first, then
//! the route flip to the last session moved. First-query latency is each
//! client's first query on its new backend (its `pg_backend_pid()` changed)
//! against that client's queries before the move: a moved session's first
//! query pays for whatever the move left to do (a prepared statement is
//! re-prepared on first use, a fresh backend's caches are cold).
//!
//! Idle sessions query one after another in waves, so that a latency is one
//! query's and not a queue's: warm-up waves, measured waves, the move, and
//! one wave after it. Busy sessions all loop at once; the queries that
//! ended before RECONNECT was sent (after a warm-up) are the baseline.

use crate::capturing::{proxy_config, Console};
use crate::proxy_thread::ProxyThread;
use crate::report::{self, ratio, round, Machine, Software, Table};
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_tests::{Cluster, Endpoint};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

/// Where the results go unless `--out` says otherwise.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results/move.json");

/// The database the sessions use.
const DB: &str = "bench";

/// What every session runs: cheap, and it tells which backend answered.
const QUERY: &str = "SELECT pg_backend_pid()";

/// How long RECONNECT may wait for the sessions. Under the console's own
/// 30 s answer limit.
const RECONNECT_TIMEOUT: &str = "20s";

/// How long the old backends may take to go away between runs.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// Options of `switchyard-bench move`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Session counts; each is measured idle and busy, with and without a
    /// prepared statement.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000])]
    sessions: Vec<usize>,
    /// Waves of idle queries before the move whose latency is discarded.
    #[arg(long, default_value_t = 1)]
    idle_warmup_waves: usize,
    /// Waves of idle queries before the move that are the baseline.
    #[arg(long, default_value_t = 3)]
    idle_waves: usize,
    /// Seconds busy sessions loop before the move whose queries are
    /// discarded.
    #[arg(long, default_value_t = 0.5)]
    busy_warmup: f64,
    /// Seconds busy sessions loop after the warm-up and before the move:
    /// the baseline.
    #[arg(long, default_value_t = 1.5)]
    busy_before: f64,
    /// Seconds busy sessions go on looping once RECONNECT has answered.
    #[arg(long, default_value_t = 0.5)]
    busy_after: f64,
    /// Logins in flight at once while the sessions are opened.
    #[arg(long, default_value_t = 32)]
    connect_parallel: usize,
    /// The JSON results file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_OUT)]
    out: PathBuf,
}

/// One client session through the proxy.
struct Session {
    client: Client,
    /// `QUERY` prepared, for the runs with a prepared statement.
    statement: Option<Statement>,
}

impl Session {
    /// Runs `QUERY` once; returns the pid of the backend that answered.
    /// [`Self::query`] and how long it took.
    async fn timed_query(&self) -> (Result<i32>, Duration) {
        let started = Instant::now();
        let answer = self.query().await;
        (answer, started.elapsed())
    }

    async fn query(&self) -> Result<i32> {
        match &self.statement {
            Some(statement) => Ok(self.client.query_one(statement, &[]).await?.try_get(0)?),
            None => {
                let messages = self.client.simple_query(QUERY).await?;
                let pid = messages.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                });
                Ok(pid.context("no row")?.parse()?)
            }
        }
    }
}

/// One query as a busy session saw it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// When it was sent, since the run's start.
    sent: Duration,
    latency: Duration,
    pid: i32,
}

/// RECONNECT's row.
#[derive(Debug, Clone, Default, Serialize)]
struct Moved {
    sessions: u64,
    moved: u64,
    waiting: u64,
    pinned: u64,
    closed: u64,
    failed: u64,
    open_ms: f64,
    move_ms: f64,
    /// RECONNECT sent to its answer, as the console's client saw it.
    reconnect_ms: f64,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
struct RunReport {
    sessions: usize,
    busy: bool,
    prepared: bool,
    /// The proxy's route flip to the last session moved, ms.
    move_ms: f64,
    /// The proxy's time to open every session's next backend, ms.
    open_ms: f64,
    /// Sessions on a new backend after the move, as the proxy counted them.
    moved: u64,
    first_query_p50_ms: f64,
    first_query_p99_ms: f64,
    first_query_max_ms: f64,
    before_p50_ms: f64,
    before_p99_ms: f64,
    /// first_query_p50_ms / before_p50_ms.
    first_over_before_p50: f64,
    /// first_query_p99_ms / before_p99_ms.
    first_over_before_p99: f64,
    /// The median over sessions of its first query over its own median
    /// before.
    per_session_ratio_p50: f64,
    /// Busy runs: p99 of the queries sent between RECONNECT and a session's
    /// first query on its new backend (they ran while the proxy opened the
    /// new backends).
    during_move_p99_ms: Option<f64>,
    /// Queries run, all phases.
    queries: u64,
    /// Failed queries plus `not_moved`. Must be 0.
    errors: u64,
    /// Sessions whose queries after RECONNECT answered (busy: until the run
    /// ended) all from the old backend.
    not_moved: u64,
    reconnect: Moved,
    /// Opening the sessions, seconds.
    connect_seconds: f64,
}

/// The results file.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    timestamp: String,
    unix_time: u64,
    errors: u64,
    runs: Vec<RunReport>,
    parameters: Parameters,
    machine: Machine,
    software: Software,
}

#[derive(Debug, Serialize)]
struct Parameters {
    query: &'static str,
    max_connections: usize,
    idle_warmup_waves: usize,
    idle_waves: usize,
    busy_warmup_seconds: f64,
    busy_before_seconds: f64,
    busy_after_seconds: f64,
    reconnect_timeout: &'static str,
}

/// Runs the scenario; the exit code is a failure when any query failed or
/// any session did not move.
pub async fn run(args: Args) -> Result<ExitCode> {
    if args.sessions.is_empty() || args.sessions.contains(&0) || args.idle_waves == 0 || args.connect_parallel == 0 {
        bail!("--sessions must list counts of at least 1, and --idle-waves and --connect-parallel must be at least 1");
    }
    if !(args.busy_before > 0.0 && args.busy_warmup >= 0.0 && args.busy_after >= 0.0) {
        bail!("--busy-before must be above 0, --busy-warmup and --busy-after at least 0");
    }
    let machine = Machine::probe();
    let now = report::now();
    let most = args.sessions.iter().copied().max().unwrap_or(0);
    // During a move every session holds its old backend and its new one.
    let max_connections = 2 * most + 100;
    raise_open_files(4 * most + 256);

    println!("starting a PostgreSQL cluster with max_connections {max_connections}");
    let cluster = Cluster::builder()
        .database(DB)
        .setting("max_connections", max_connections.to_string())
        .start()
        .await
        .context("starting the PostgreSQL cluster")?;
    let mut config = proxy_config(&cluster)?;
    config.limits.max_clients = most + 16;
    let admin_database = config.admin_database.clone();
    let proxy = ProxyThread::start("move", config)?;
    let endpoint = proxy.endpoint(cluster.superuser(), cluster.binaries());
    println!("proxy at {}", proxy.addr());
    let console = Console::connect(&endpoint, &admin_database).await?;

    let mut runs = Vec::new();
    let outcome = async {
        for &n in &args.sessions {
            for busy in [false, true] {
                for prepared in [false, true] {
                    let run = measure(&args, &cluster, &endpoint, &console, n, busy, prepared).await?;
                    println!(
                        "  {n:>5} {:<4} {:<8}: move {:>7.1} ms (open {:>7.1} ms), first query p50 {:.2} ms p99 {:.2} ms \
                         (before p50 {:.2} ms), {} errors",
                        if busy { "busy" } else { "idle" },
                        if prepared { "prepared" } else { "simple" },
                        run.move_ms,
                        run.open_ms,
                        run.first_query_p50_ms,
                        run.first_query_p99_ms,
                        run.before_p50_ms,
                        run.errors
                    );
                    runs.push(run);
                }
            }
        }
        anyhow::Ok(())
    }
    .await;
    console.close().await;
    proxy.stop();
    outcome?;

    let errors = runs.iter().map(|r| r.errors).sum();
    let report = Report {
        scenario: "move",
        timestamp: now.1,
        unix_time: now.0,
        errors,
        runs,
        parameters: Parameters {
            query: QUERY,
            max_connections,
            idle_warmup_waves: args.idle_warmup_waves,
            idle_waves: args.idle_waves,
            busy_warmup_seconds: args.busy_warmup,
            busy_before_seconds: args.busy_before,
            busy_after_seconds: args.busy_after,
            reconnect_timeout: RECONNECT_TIMEOUT,
        },
        machine,
        software: Software::probe(&cluster),
    };
    print!("\n{}", table(&report.runs).render());
    report::write_json(&args.out, &report)?;
    println!("wrote {}", args.out.display());
    if errors > 0 {
        eprintln!(
            "switchyard-bench: {errors} failed queries or unmoved sessions; see {}",
            args.out.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The one-screen summary.
fn table(runs: &[RunReport]) -> Table {
    let mut t = Table::new(&[
        "sessions",
        "load",
        "protocol",
        "open ms",
        "move ms",
        "before p50",
        "before p99",
        "first p50",
        "first p99",
        "p50 ratio",
        "p99 ratio",
        "errors",
    ]);
    for r in runs {
        t.row(vec![
            r.sessions.to_string(),
            if r.busy { "busy" } else { "idle" }.to_owned(),
            if r.prepared { "prepared" } else { "simple" }.to_owned(),
            format!("{:.1}", r.open_ms),
            format!("{:.1}", r.move_ms),
            format!("{:.3}", r.before_p50_ms),
            format!("{:.3}", r.before_p99_ms),
            format!("{:.3}", r.first_query_p50_ms),
            format!("{:.3}", r.first_query_p99_ms),
            format!("{:.2}", r.first_over_before_p50),
            format!("{:.2}", r.first_over_before_p99),
            r.errors.to_string(),
        ]);
    }
    t
}

/// One run: open `n` sessions, measure them before, move them, measure
/// their first queries, close them, and wait for their backends to go.
async fn measure(
    args: &Args,
    cluster: &Cluster,
    endpoint: &Endpoint,
    console: &Console,
    n: usize,
    busy: bool,
    prepared: bool,
) -> Result<RunReport> {
    let connecting = Instant::now();
    let sessions = open_sessions(endpoint, n, prepared, args.connect_parallel).await?;
    let connect_seconds = connecting.elapsed().as_secs_f64();
    let measured = if busy {
        busy_run(args, console, sessions).await?
    } else {
        idle_run(args, console, sessions).await?
    };
    settle(cluster).await?;
    let Measured {
        before,
        first,
        per_session_ratios,
        during_move,
        queries,
        errors,
        not_moved,
        moved,
    } = measured;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let before_ms: Vec<f64> = before.iter().copied().map(ms).collect();
    let first_ms: Vec<f64> = first.iter().copied().map(ms).collect();
    let (before_p50, before_p99) = (percentile(&before_ms, 50.0), percentile(&before_ms, 99.0));
    let (first_p50, first_p99) = (percentile(&first_ms, 50.0), percentile(&first_ms, 99.0));
    let during: Vec<f64> = during_move.iter().copied().map(ms).collect();
    Ok(RunReport {
        sessions: n,
        busy,
        prepared,
        move_ms: moved.move_ms,
        open_ms: moved.open_ms,
        moved: moved.moved,
        first_query_p50_ms: round(first_p50, 3),
        first_query_p99_ms: round(first_p99, 3),
        first_query_max_ms: round(percentile(&first_ms, 100.0), 3),
        before_p50_ms: round(before_p50, 3),
        before_p99_ms: round(before_p99, 3),
        first_over_before_p50: round(ratio(first_p50, before_p50), 2),
        first_over_before_p99: round(ratio(first_p99, before_p99), 2),
        per_session_ratio_p50: round(percentile(&per_session_ratios, 50.0), 2),
        during_move_p99_ms: busy.then(|| round(percentile(&during, 99.0), 3)),
        queries,
        errors: errors + not_moved,
        not_moved,
        reconnect: moved,
        connect_seconds: round(connect_seconds, 2),
    })
}

/// What a run measured, before it is summarised.
struct Measured {
    /// Baseline latencies, all sessions.
    before: Vec<Duration>,
    /// Each moved session's first query on its new backend.
    first: Vec<Duration>,
    /// Each moved session's first query over its own median before.
    per_session_ratios: Vec<f64>,
    /// Busy: the queries between RECONNECT and each session's move.
    during_move: Vec<Duration>,
    queries: u64,
    /// Failed queries.
    errors: u64,
    /// Sessions that answered after the move, but from the old backend.
    not_moved: u64,
    moved: Moved,
}

/// Opens `n` sessions through the proxy, `parallel` logins at a time, each
/// with `QUERY` prepared if asked.
async fn open_sessions(endpoint: &Endpoint, n: usize, prepared: bool, parallel: usize) -> Result<Vec<Session>> {
    let gate = Arc::new(Semaphore::new(parallel));
    let mut set = JoinSet::new();
    for i in 0..n {
        let gate = Arc::clone(&gate);
        let endpoint = endpoint.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let client = endpoint
                .connect(DB)
                .await
                .with_context(|| format!("opening session {i} through the proxy"))?;
            let statement = match prepared {
                true => Some(client.prepare(QUERY).await.context("preparing the query")?),
                false => None,
            };
            anyhow::Ok((i, Session { client, statement }))
        });
    }
    let mut sessions: Vec<Option<Session>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, session) = joined.context("a login task panicked")??;
        sessions[i] = Some(session);
    }
    Ok(sessions.into_iter().flatten().collect())
}

/// RECONNECT on the console, and its row.
async fn reconnect(console: &Console) -> Result<Moved> {
    let started = Instant::now();
    let rows = console.rows(&format!("RECONNECT TIMEOUT {RECONNECT_TIMEOUT}")).await?;
    let reconnect_ms = started.elapsed().as_secs_f64() * 1e3;
    let row = rows.first().context("RECONNECT returned no row")?;
    // By name: the row gains columns now and then.
    let field = |name: &str| -> Result<&str> {
        row.try_get(name)
            .ok()
            .flatten()
            .with_context(|| format!("RECONNECT's row has no column {name}"))
    };
    let count = |name: &str| -> Result<u64> { Ok(field(name)?.parse()?) };
    let ms = |name: &str| -> Result<f64> { Ok(field(name)?.parse()?) };
    Ok(Moved {
        sessions: count("sessions")?,
        moved: count("moved")?,
        waiting: count("waiting")?,
        pinned: count("pinned")?,
        closed: count("closed")?,
        failed: count("failed")?,
        open_ms: ms("open_ms")?,
        move_ms: ms("move_ms")?,
        reconnect_ms: round(reconnect_ms, 2),
    })
}

/// Idle sessions: waves of one query per session, one session at a time,
/// then the move, then one more wave.
async fn idle_run(args: &Args, console: &Console, sessions: Vec<Session>) -> Result<Measured> {
    let n = sessions.len();
    let mut errors = 0;
    let mut not_moved = 0;
    let mut queries = 0;
    let mut own: Vec<Vec<Duration>> = vec![Vec::new(); n];
    let mut pids: Vec<Option<i32>> = vec![None; n];
    for wave in 0..args.idle_warmup_waves + args.idle_waves {
        for (i, s) in sessions.iter().enumerate() {
            let (answer, latency) = s.timed_query().await;
            queries += 1;
            match answer {
                Ok(pid) => {
                    pids[i] = Some(pid);
                    if wave >= args.idle_warmup_waves {
                        own[i].push(latency);
                    }
                }
                Err(_) => errors += 1,
            }
        }
    }
    let moved = reconnect(console).await?;
    let mut first = Vec::new();
    let mut ratios = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        let (answer, latency) = s.timed_query().await;
        queries += 1;
        match answer {
            Ok(pid) if pids[i].is_some_and(|old| old != pid) => {
                first.push(latency);
                ratios.push(ratio(latency.as_secs_f64(), median_of(&own[i])));
            }
            Ok(_) => not_moved += 1,
            Err(_) => errors += 1,
        }
    }
    Ok(Measured {
        before: own.into_iter().flatten().collect(),
        first,
        per_session_ratios: ratios,
        during_move: Vec::new(),
        queries,
        errors,
        not_moved,
        moved,
    })
}

/// Busy sessions: all loop at once; RECONNECT after the warm-up and the
/// baseline; they stop a little after it answered.
async fn busy_run(args: &Args, console: &Console, sessions: Vec<Session>) -> Result<Measured> {
    let stop = Arc::new(AtomicBool::new(false));
    let zero = Instant::now();
    let mut set = JoinSet::new();
    for (i, s) in sessions.into_iter().enumerate() {
        let stop = Arc::clone(&stop);
        set.spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match s.query().await {
                    Ok(pid) => samples.push(Sample {
                        sent: started - zero,
                        latency: started.elapsed(),
                        pid,
                    }),
                    Err(_) => {
                        // A broken session would fail at once from then on.
                        errors += 1;
                        break;
                    }
                }
            }
            (i, samples, errors)
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(args.busy_warmup + args.busy_before)).await;
    let order = zero.elapsed();
    let moved = reconnect(console).await;
    tokio::time::sleep(Duration::from_secs_f64(args.busy_after)).await;
    stop.store(true, Ordering::Relaxed);
    let mut per_session = Vec::new();
    while let Some(joined) = set.join_next().await {
        per_session.push(joined.context("a session task panicked")?);
    }
    let moved = moved?;
    let warm = Duration::from_secs_f64(args.busy_warmup);
    let mut m = Measured {
        before: Vec::new(),
        first: Vec::new(),
        per_session_ratios: Vec::new(),
        during_move: Vec::new(),
        queries: 0,
        errors: 0,
        not_moved: 0,
        moved,
    };
    for (_, samples, errors) in per_session {
        m.errors += errors;
        m.queries += samples.len() as u64 + errors;
        let Some(old) = samples.first().map(|s| s.pid) else {
            continue;
        };
        let own: Vec<Duration> = samples
            .iter()
            .filter(|s| s.pid == old && s.sent >= warm && s.sent + s.latency <= order)
            .map(|s| s.latency)
            .collect();
        let Some(at) = samples.iter().position(|s| s.pid != old) else {
            m.not_moved += u64::from(errors == 0);
            continue;
        };
        m.during_move.extend(
            samples[..at]
                .iter()
                .filter(|s| s.sent + s.latency > order)
                .map(|s| s.latency),
        );
        let latency = samples[at].latency;
        m.first.push(latency);
        if !own.is_empty() {
            m.per_session_ratios.push(ratio(latency.as_secs_f64(), median_of(&own)));
        }
        m.before.extend(own);
    }
    Ok(m)
}

/// Waits until the run's backends, old and new, have gone, so that the
/// next run starts on an idle server.
async fn settle(cluster: &Cluster) -> Result<()> {
    let client = cluster.connect("postgres").await.context("connecting to the cluster")?;
    let started = Instant::now();
    loop {
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&DB],
            )
            .await?
            .get(0);
        if left == 0 {
            return Ok(());
        }
        ensure!(
            started.elapsed() < SETTLE_LIMIT,
            "{left} backends of the run were still there {} s after it",
            SETTLE_LIMIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The median of `values`, seconds.
fn median_of(values: &[Duration]) -> f64 {
    let secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    report::median(&secs)
}

/// The nearest-rank `p`th percentile of `values`; 0 for none.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Raises the soft open-files limit towards `want` (each session holds a
/// client socket on each side of the proxy and, during a move, two
/// backend sockets), within the hard limit.
fn raise_open_files(want: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = (want as u64).min(hard);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
