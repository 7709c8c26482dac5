//! The proxy-overhead scenario: pgbench select-only straight to PostgreSQL,
//! through switchyard and through PgBouncer, each proxy with a TCP and a
//! Unix-socket backend, run in alternating rounds on one cluster so that the
//! ratios compare like with like.

use crate::pgbench::{self, Load, Run, Summary};
use crate::pgbouncer::{self, PgBouncer};
use crate::proxy_thread::ProxyThread;
use crate::report::{self, median, ratio, round, Machine, Table};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use switchyard_proxy::Config;
use switchyard_tests::{Cluster, Endpoint};

/// Where the results go unless `--out` says otherwise.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results/proxy.json");

/// The database pgbench fills and queries.
const DB: &str = "bench";

/// Options of `switchyard-bench proxy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each measured pgbench run lasts (-T).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds; each runs every target once, in an order rotated per round.
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
    /// Seconds of unrecorded pgbench per target before the rounds, to warm
    /// caches and check that every target works.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// The JSON results file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_OUT)]
    out: PathBuf,
}

/// Where pgbench's clients connect. Clients always reach the target over
/// TCP on 127.0.0.1; the proxies reach PostgreSQL over TCP or its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Target {
    /// PostgreSQL itself.
    Direct,
    /// switchyard, backend over TCP.
    ProxyTcp,
    /// switchyard, backend over the Unix socket.
    ProxyUnix,
    /// PgBouncer, backend over TCP.
    PgbouncerTcp,
    /// PgBouncer, backend over the Unix socket.
    PgbouncerUnix,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Direct,
        Target::ProxyTcp,
        Target::ProxyUnix,
        Target::PgbouncerTcp,
        Target::PgbouncerUnix,
    ];

    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::ProxyTcp => "proxy-tcp",
            Target::ProxyUnix => "proxy-unix",
            Target::PgbouncerTcp => "pgbouncer-tcp",
            Target::PgbouncerUnix => "pgbouncer-unix",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Target::Direct => "pgbench -tcp-> postgres",
            Target::ProxyTcp => "pgbench -tcp-> switchyard -tcp-> postgres",
            Target::ProxyUnix => "pgbench -tcp-> switchyard -unix-> postgres",
            Target::PgbouncerTcp => "pgbench -tcp-> pgbouncer -tcp-> postgres",
            Target::PgbouncerUnix => "pgbench -tcp-> pgbouncer -unix-> postgres",
        }
    }
}

/// The proxies in front of the cluster; they stop when this drops.
struct Stack {
    endpoints: Vec<(Target, Endpoint)>,
    proxies: Vec<ProxyThread>,
    bouncers: Vec<(Target, PgBouncer)>,
}

impl Stack {
    fn endpoint(&self, target: Target) -> &Endpoint {
        let found = self.endpoints.iter().find(|(t, _)| *t == target);
        // `start_stack` registers every target.
        &found.expect("every target has an endpoint").1
    }

    /// Stops the PgBouncers and the proxies (dropping does the same).
    fn stop(self) {
        for (_, bouncer) in self.bouncers {
            bouncer.stop();
        }
        for proxy in self.proxies {
            proxy.stop();
        }
    }

    /// Where to look when a run through `target` went wrong.
    fn log_hint(&self, target: Target, cluster: &Cluster) -> String {
        match self.bouncers.iter().find(|(t, _)| *t == target) {
            Some((_, b)) => format!("PgBouncer log: {}", b.log_path().display()),
            None => format!("server log: {}", cluster.log_path().display()),
        }
    }
}

/// Runs the scenario; the exit code is a failure when any pgbench run had
/// failed transactions or aborted clients.
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
        select_only: true,
    };

    println!("starting a PostgreSQL cluster and pgbench -i -s {}", args.scale);
    let cluster = Cluster::builder()
        .database(DB)
        // Idle PgBouncer pools keep their server connections between runs.
        .setting("max_connections", (4 * args.clients + 20).max(200).to_string())
        .start()
        .await
        .context("starting the PostgreSQL cluster")?;
    pgbench::initialize(&cluster.endpoint(), DB, args.scale).await?;
    let stack = start_stack(&cluster, &args)?;

    warm_up(&stack, &cluster, &load, args.warmup).await?;
    let rounds = measure(&stack, &cluster, &load, args.rounds).await?;
    stack.stop();

    let report = Report::build(&args, &load, rounds, machine, (unix_time, timestamp), &cluster);
    print!("\n{}", report.table());
    println!(
        "headline (backend = unix): switchyard {:.3}x direct, PgBouncer {:.3}x direct",
        report.proxy_over_direct, report.pgbouncer_over_direct
    );
    report::write_json(&args.out, &report)?;
    println!("wrote {}", args.out.display());
    if report.failed_transactions > 0 {
        eprintln!(
            "switchyard-bench: {} pgbench failure(s); see the runs in {}",
            report.failed_transactions,
            args.out.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts both switchyard proxies (each on its own thread and runtime) and
/// both PgBouncers.
fn start_stack(cluster: &Cluster, args: &Args) -> Result<Stack> {
    let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let socket_dir = cluster.socket_dir().to_str().context("socket dir is not UTF-8")?;
    let user = cluster.superuser();
    let binaries = cluster.binaries();
    let proxy_tcp = ProxyThread::start("proxy-tcp", Config::trusting(any_port, cluster.host(), cluster.port()))?;
    let proxy_unix = ProxyThread::start("proxy-unix", Config::trusting(any_port, socket_dir, cluster.port()))?;
    let bouncer = |db_host: &str| {
        PgBouncer::start(&pgbouncer::Settings {
            db_host: db_host.to_owned(),
            db_port: cluster.port(),
            user: user.to_owned(),
            pool_size: args.clients,
            max_clients: 2 * args.clients + 10,
        })
    };
    let bouncer_tcp = bouncer(cluster.host())?;
    let bouncer_unix = bouncer(socket_dir)?;
    let endpoints = vec![
        (Target::Direct, cluster.endpoint()),
        (Target::ProxyTcp, proxy_tcp.endpoint(user, binaries)),
        (Target::ProxyUnix, proxy_unix.endpoint(user, binaries)),
        (Target::PgbouncerTcp, bouncer_tcp.endpoint(user, binaries)),
        (Target::PgbouncerUnix, bouncer_unix.endpoint(user, binaries)),
    ];
    for (target, endpoint) in &endpoints {
        println!(
            "  {:<15} 127.0.0.1:{:<5}  {}",
            target.name(),
            endpoint.port,
            target.path()
        );
    }
    Ok(Stack {
        endpoints,
        proxies: vec![proxy_tcp, proxy_unix],
        bouncers: vec![
            (Target::PgbouncerTcp, bouncer_tcp),
            (Target::PgbouncerUnix, bouncer_unix),
        ],
    })
}

/// A short unrecorded run per target; any failure stops the bench, since
/// a target that does not work would only produce meaningless rounds.
async fn warm_up(stack: &Stack, cluster: &Cluster, load: &Load, seconds: u64) -> Result<()> {
    if seconds == 0 {
        return Ok(());
    }
    println!("warming up: {seconds} s per target");
    let warm = Load { seconds, ..*load };
    for target in Target::ALL {
        let run = pgbench::run(stack.endpoint(target), DB, &warm).await?;
        if !run.is_clean() {
            bail!(
                "warm-up through {} failed ({}):\n{}",
                target.name(),
                stack.log_hint(target, cluster),
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
    target: Target,
    #[serde(flatten)]
    summary: Summary,
    /// False when pgbench exited unsuccessfully (a client aborted).
    exit_ok: bool,
}

/// Runs every target once per round, rotating the order each round so that
/// drift over the run (caches, thermal, neighbours) spreads over all.
async fn measure(stack: &Stack, cluster: &Cluster, load: &Load, rounds: usize) -> Result<Vec<RoundReport>> {
    let mut reports = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let mut order = Target::ALL;
        order.rotate_left(r % Target::ALL.len());
        let mut runs = Vec::with_capacity(order.len());
        for target in order {
            let run: Run = pgbench::run(stack.endpoint(target), DB, load).await?;
            println!(
                "round {}/{rounds}  {:<15} {:>10.1} tps  {:>6.3} ms  {} failed",
                r + 1,
                target.name(),
                run.summary.tps,
                run.summary.latency_avg_ms.unwrap_or(0.0),
                run.failures()
            );
            if !run.is_clean() {
                eprintln!(
                    "pgbench through {} was not clean ({}):\n{}",
                    target.name(),
                    stack.log_hint(target, cluster),
                    run.output_tail()
                );
            }
            let mut summary = run.summary.clone();
            summary.failed = run.failures();
            runs.push(RunReport {
                target,
                summary,
                exit_ok: run.exit_ok,
            });
        }
        reports.push(RoundReport { round: r + 1, runs });
    }
    Ok(reports)
}

/// Per-target figures over all rounds.
#[derive(Debug, Serialize)]
struct TargetReport {
    target: Target,
    path: &'static str,
    median_tps: f64,
    over_direct: f64,
    /// TPS per round, in round order.
    tps: Vec<f64>,
    /// Average latency per round, in ms.
    latency_avg_ms: Vec<Option<f64>>,
    /// Failures per round.
    failed: Vec<u64>,
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
    client_transport: &'static str,
    proxy_runtime: &'static str,
    pgbouncer_pool_mode: &'static str,
    pgbouncer_pool_size: usize,
}

/// Versions of what was measured.
#[derive(Debug, Serialize)]
struct Software {
    switchyard: &'static str,
    postgres: Option<String>,
    pgbouncer: Option<String>,
}

/// The results file. The headline fields use the Unix-socket backends
/// (`backend`), the usual deployment next to the database.
#[derive(Debug, Serialize)]
struct Report {
    scenario: &'static str,
    timestamp: String,
    unix_time: u64,
    backend: &'static str,
    direct_tps: f64,
    proxy_tps: f64,
    pgbouncer_tps: f64,
    proxy_over_direct: f64,
    pgbouncer_over_direct: f64,
    proxy_over_pgbouncer: f64,
    proxy_tcp_tps: f64,
    pgbouncer_tcp_tps: f64,
    proxy_tcp_over_direct: f64,
    pgbouncer_tcp_over_direct: f64,
    proxy_tcp_over_pgbouncer_tcp: f64,
    /// Failed transactions plus aborted runs over all measured runs; must be 0.
    failed_transactions: u64,
    targets: Vec<TargetReport>,
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
    ) -> Report {
        let tps = |t| round(median_tps(&rounds, t), 1);
        let over = |a, b| round(ratio(median_tps(&rounds, a), median_tps(&rounds, b)), 4);
        let failed_transactions = rounds.iter().flat_map(|r| &r.runs).map(|r| r.summary.failed).sum();
        let targets = target_reports(&rounds);
        Report {
            scenario: "proxy",
            timestamp,
            unix_time,
            backend: "unix",
            direct_tps: tps(Target::Direct),
            proxy_tps: tps(Target::ProxyUnix),
            pgbouncer_tps: tps(Target::PgbouncerUnix),
            proxy_over_direct: over(Target::ProxyUnix, Target::Direct),
            pgbouncer_over_direct: over(Target::PgbouncerUnix, Target::Direct),
            proxy_over_pgbouncer: over(Target::ProxyUnix, Target::PgbouncerUnix),
            proxy_tcp_tps: tps(Target::ProxyTcp),
            pgbouncer_tcp_tps: tps(Target::PgbouncerTcp),
            proxy_tcp_over_direct: over(Target::ProxyTcp, Target::Direct),
            pgbouncer_tcp_over_direct: over(Target::PgbouncerTcp, Target::Direct),
            proxy_tcp_over_pgbouncer_tcp: over(Target::ProxyTcp, Target::PgbouncerTcp),
            failed_transactions,
            targets,
            rounds,
            parameters: Parameters {
                clients: load.clients,
                threads: load.threads,
                seconds: load.seconds,
                rounds: args.rounds,
                scale: args.scale,
                warmup_seconds: args.warmup,
                pgbench_args: load.args().join(" "),
                client_transport: "tcp 127.0.0.1",
                proxy_runtime: "tokio current_thread on a dedicated OS thread",
                pgbouncer_pool_mode: "session",
                pgbouncer_pool_size: args.clients,
            },
            machine,
            software: Software {
                switchyard: env!("CARGO_PKG_VERSION"),
                postgres: report::postgres_version(cluster),
                pgbouncer: pgbouncer::version(),
            },
        }
    }

    /// The per-target table.
    fn table(&self) -> String {
        let mut table = Table::new(&["target", "median tps", "vs direct", "tps per round", "failed", "path"]);
        for t in &self.targets {
            let per_round: Vec<String> = t.tps.iter().map(|v| format!("{v:.0}")).collect();
            table.row(vec![
                t.target.name().to_owned(),
                format!("{:.1}", t.median_tps),
                format!("{:.3}", t.over_direct),
                per_round.join(" "),
                t.failed.iter().sum::<u64>().to_string(),
                t.path.to_owned(),
            ]);
        }
        table.render()
    }
}

/// The runs through `target`, in round order.
fn runs_of(rounds: &[RoundReport], target: Target) -> Vec<&RunReport> {
    rounds
        .iter()
        .flat_map(|r| r.runs.iter().filter(move |run| run.target == target))
        .collect()
}

/// The median TPS through `target` over all rounds.
fn median_tps(rounds: &[RoundReport], target: Target) -> f64 {
    let tps: Vec<f64> = runs_of(rounds, target).iter().map(|r| r.summary.tps).collect();
    median(&tps)
}

/// Per-target medians, ratios over direct and per-round figures.
fn target_reports(rounds: &[RoundReport]) -> Vec<TargetReport> {
    let direct = median_tps(rounds, Target::Direct);
    Target::ALL
        .iter()
        .map(|&t| {
            let runs = runs_of(rounds, t);
            let median = median_tps(rounds, t);
            TargetReport {
                target: t,
                path: t.path(),
                median_tps: round(median, 1),
                over_direct: round(ratio(median, direct), 4),
                tps: runs.iter().map(|r| round(r.summary.tps, 1)).collect(),
                latency_avg_ms: runs.iter().map(|r| r.summary.latency_avg_ms).collect(),
                failed: runs.iter().map(|r| r.summary.failed).collect(),
            }
        })
        .collect()
}
