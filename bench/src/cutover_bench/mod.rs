//! The cutover scenario: pgbench's TPC-B-like transaction at a steady rate
//! (500, 1,000 and 2,000 TPS, and as fast as the clients go), with a
//! cutover from the source to the target in the middle of each run; once
//! through switchyard (capture, clone, catch-up, then `CUTOVER` on the
//! console) and once with the usual recipe (logical replication, PgBouncer
//! PAUSE / RELOAD / RESUME), at the same rate with the same transactions,
//! one after the other on fresh clusters, which goes first alternating
//! from rate to rate.
//!
//! What the clients saw comes from the load generator's record of every
//! transaction (load.rs, stats.rs): the longest latency and the p99 in the
//! cutover window. What the target holds afterwards is checked against the
//! source at the switch and against every transaction seen committed
//! (verify.rs). Results go to `bench/results/cutover.json`, the latency
//! around each cutover to `bench/results/cutover.png`.

mod bouncer;
mod load;
mod ours;
pub(crate) mod plot;
mod recipe;
mod report;
mod stats;
mod switch;
mod txlog;
mod verify;

use crate::capturing::add_history_key;
use crate::pgbench;
use crate::report::{Machine, Software};
use anyhow::{bail, Context, Result};
use load::{LoadRuntime, Outcome, Spec};
use ours::Ours;
use recipe::Recipe;
use report::{Parameters, Phase, Report, RunReport};
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;
use switch::Switch;
use switchyard_tests::Cluster;

/// Where the results go unless `--out` and `--plot` say otherwise.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results/cutover.json");
const DEFAULT_PLOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results/cutover.png");

/// The database on both sides.
pub(super) const DB: &str = "bench";

/// How long after the schedule's end a client may still be waiting.
const FINISH_GRACE: Duration = Duration::from_secs(60);

/// Seed of the load's keys: the same transactions on both sides.
const SEED: u64 = 0x5eed_c07e;

/// A rate of the schedule: transactions per second, or `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// This many transactions per second over all clients.
    Fixed(u32),
    /// As fast as the clients go (pgbench without `-R`).
    Max,
}

impl Rate {
    fn tps(self) -> Option<u32> {
        match self {
            Rate::Fixed(r) => Some(r),
            Rate::Max => None,
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        match s.trim() {
            "max" | "MAX" => Ok(Rate::Max),
            n => match n.parse::<u32>() {
                Ok(r) if r > 0 => Ok(Rate::Fixed(r)),
                _ => Err(format!(
                    "`{n}` is not a rate: give transactions per second (above 0) or `max`"
                )),
            },
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Fixed(r) => write!(f, "{r}"),
            Rate::Max => f.write_str("max"),
        }
    }
}

/// Options of `switchyard-bench cutover`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rates to run, transactions per second or `max`; one run each, with
    /// switchyard and the recipe.
    #[arg(long, value_delimiter = ',', default_values_t = [Rate::Fixed(500), Rate::Fixed(1000), Rate::Fixed(2000), Rate::Max])]
    rates: Vec<Rate>,
    /// Seconds of load per run; the cutover starts halfway.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Client sessions (pgbench -c).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// pgbench scale factor (100,000 accounts each).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    load_threads: usize,
    /// Catch-up workers of the proxy.
    #[arg(long, default_value_t = 2)]
    catchup_workers: usize,
    /// Options appended to the console's CUTOVER command.
    #[arg(long, default_value = "")]
    cutover_options: String,
    /// Measure switchyard only (for a quick look; the JSON then has no
    /// recipe figures).
    #[arg(long)]
    skip_recipe: bool,
    /// The JSON results file.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_OUT)]
    out: PathBuf,
    /// The PNG plot.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PLOT)]
    plot: PathBuf,
    /// Also write a CSV of every transaction in each cutover window: its
    /// times relative to the pause's start and each statement's duration.
    #[arg(long, value_name = "PATH")]
    tx_log: Option<PathBuf>,
}

impl Args {
    fn spec(&self, rate: Rate) -> Spec {
        Spec {
            clients: self.clients,
            rate: rate.tps(),
            duration: Duration::from_secs_f64(self.seconds),
            scale: self.scale,
            seed: SEED,
        }
    }

    fn cutover_at(&self) -> Duration {
        Duration::from_secs_f64(self.seconds / 2.0)
    }
}

/// Runs the scenario; the exit code is a failure when a run missed a target
/// (client errors, rows differing, a committed transaction missing, a stall
/// over its bound).
pub async fn run(args: Args) -> Result<ExitCode> {
    if args.rates.is_empty() || args.clients == 0 || args.scale == 0 || args.load_threads == 0 {
        bail!("--rates must list at least one rate, and --clients, --scale and --load-threads must be at least 1");
    }
    if !(args.seconds >= 4.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be from 4 to 3600 (the cutover starts halfway and is measured for 1 s around it)");
    }
    let machine = Machine::probe();
    let now = crate::report::now();
    let pgbouncer = if args.skip_recipe {
        "not run".to_owned()
    } else {
        bouncer::ensure_installed()?
    };
    let runtime = LoadRuntime::new(args.load_threads)?;
    let mut runs = Vec::new();
    let mut panels = Vec::new();
    let mut software = None;
    let mut tx_log = txlog::TxLog::default();
    for (i, &rate) in args.rates.iter().enumerate() {
        println!(
            "\nrate {rate}: {} clients, {} s, cutover at {} s",
            args.clients,
            args.seconds,
            args.seconds / 2.0
        );
        let recipe_first = i % 2 == 0 && !args.skip_recipe;
        let mut recipe = None;
        if recipe_first {
            recipe = Some(measure_recipe(&args, rate, &runtime, &mut tx_log).await?);
        }
        let (ours, ours_points, cluster_software) = measure_ours(&args, rate, &runtime, &mut tx_log).await?;
        software.get_or_insert(cluster_software);
        if !recipe_first && !args.skip_recipe {
            recipe = Some(measure_recipe(&args, rate, &runtime, &mut tx_log).await?);
        }
        let (recipe, recipe_points) = recipe.unwrap_or_else(|| (empty_phase(), Vec::new()));
        panels.push(plot::Panel {
            title: format!("{rate} TPS, {} clients", args.clients).replace("max TPS", "max rate"),
            ours_span: ours.switch.pause_ms.unwrap_or(0.0) / 1000.0,
            recipe_span: recipe.switch.pause_ms.unwrap_or(0.0) / 1000.0,
            ours: ours_points,
            recipe: recipe_points,
        });
        let run = RunReport::new(rate.tps(), ours, recipe);
        print!("{}", report::table(std::slice::from_ref(&run)).render());
        runs.push(run);
    }
    drop(runtime);
    let all_targets_met = runs.iter().all(|r| r.target_met);
    let report = Report {
        scenario: "cutover",
        timestamp: now.1,
        unix_time: now.0,
        all_targets_met,
        parameters: parameters(&args),
        runs,
        machine,
        software: software.context("no run was made")?,
        pgbouncer,
    };
    print!("\n{}", report::table(&report.runs).render());
    crate::report::write_json(&args.out, &report)?;
    println!("wrote {}", args.out.display());
    plot::draw(&args.plot, &panels)?;
    println!("wrote {}", args.plot.display());
    if let Some(path) = &args.tx_log {
        tx_log.write(path)?;
        println!("wrote {}", path.display());
    }
    if !all_targets_met {
        eprintln!(
            "switchyard-bench: a cutover run missed its target; see {}",
            args.out.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A recipe phase that was not run.
fn empty_phase() -> Phase {
    Phase {
        switch: Switch {
            state: "not run".to_owned(),
            ..Switch::default()
        },
        clients: stats::ClientStats::default(),
        verdict: verify::Verdict::default(),
        errors: 0,
        error_messages: Vec::new(),
        reconnects: 0,
        clients_lost: 0,
        loadavg_at_start: None,
        unknown_outcome: 0,
        timeline_50ms: Vec::new(),
        per_second: Vec::new(),
    }
}

/// One run through switchyard; also the software versions of its clusters.
async fn measure_ours(
    args: &Args,
    rate: Rate,
    runtime: &LoadRuntime,
    tx_log: &mut txlog::TxLog,
) -> Result<(Phase, Vec<(f64, f64)>, Software)> {
    println!("  switchyard: source, target, capture, clone, catch-up");
    let loadavg = Machine::probe().loadavg_at_start;
    let stack = Ours::setup(args.scale, args.catchup_workers).await?;
    let software = Software::probe(&stack.source);
    let outcome = async {
        let running = runtime.start(&args.spec(rate), &stack.endpoint(), DB).await?;
        tokio::time::sleep_until((running.zero + args.cutover_at()).into()).await;
        let switch = stack.cutover(&running, &args.cutover_options).await?;
        println!(
            "    CUTOVER: {} (pause {:?} ms, answered after {:.1} ms)",
            switch.state, switch.pause_ms, switch.command_ms
        );
        let recorded = running.finish(args.spec(rate).duration, FINISH_GRACE).await?;
        // Where the writes went last: the target after a flip, else the source.
        let last = if switch.done { &stack.target } else { &stack.source };
        tx_log.add("switchyard", &rate.to_string(), &recorded.txs, &switch);
        finish_phase(args, loadavg, &stack.source, last, switch, recorded).await
    }
    .await;
    let hint = stack.log_hint();
    stack.stop().await;
    let (phase, points) = outcome.with_context(|| format!("the switchyard run at rate {rate} ({hint})"))?;
    report_phase("switchyard", &phase);
    Ok((phase, points, software))
}

/// One run with the usual recipe.
async fn measure_recipe(
    args: &Args,
    rate: Rate,
    runtime: &LoadRuntime,
    tx_log: &mut txlog::TxLog,
) -> Result<(Phase, Vec<(f64, f64)>)> {
    println!("  recipe: logical source, target, subscription, PgBouncer (transaction pooling)");
    let loadavg = Machine::probe().loadavg_at_start;
    let stack = Recipe::setup(args.scale, args.clients + 4).await?;
    let outcome = async {
        let running = runtime.start(&args.spec(rate), &stack.endpoint(), DB).await?;
        tokio::time::sleep_until((running.zero + args.cutover_at()).into()).await;
        let switch = stack.cutover(&running).await?;
        println!("    recipe: {} (pause {:?} ms)", switch.state, switch.pause_ms);
        let recorded = running.finish(args.spec(rate).duration, FINISH_GRACE).await?;
        let last = if switch.done { &stack.target } else { &stack.source };
        tx_log.add("recipe", &rate.to_string(), &recorded.txs, &switch);
        finish_phase(args, loadavg, &stack.source, last, switch, recorded).await
    }
    .await;
    let hint = stack.log_hint();
    drop(stack);
    let (phase, points) = outcome.with_context(|| format!("the recipe run at rate {rate} ({hint})"))?;
    report_phase("recipe", &phase);
    Ok((phase, points))
}

/// The check of the data and the clients' figures, once the load is done.
async fn finish_phase(
    args: &Args,
    loadavg_at_start: Option<[f64; 3]>,
    source: &Cluster,
    last: &Cluster,
    switch: Switch,
    recorded: load::Recorded,
) -> Result<(Phase, Vec<(f64, f64)>)> {
    let src = source.connect(DB).await.context("connecting to the source")?;
    let dst = last.connect(DB).await.context("connecting to the target")?;
    let verdict = verify::verify(&src, &dst, &recorded.txs).await?;
    let pause_us = switch.pause_ms.map_or(0, |p| (p * 1000.0) as u64);
    let span = stats::Span {
        sent_us: switch.sent_us,
        answered_us: switch.answered_us,
        pause_start_us: switch.pause_started_us,
        pause_end_us: switch.pause_started_us + pause_us,
    };
    let clients = stats::client_stats(&recorded.txs, span, args.seconds);
    let points = stats::plot_points(&recorded.txs, switch.pause_started_us);
    let phase = Phase {
        timeline_50ms: stats::timeline(&points, 50.0),
        per_second: stats::per_second(&recorded.txs),
        unknown_outcome: recorded.txs.iter().filter(|t| t.outcome == Outcome::Unknown).count() as u64,
        switch,
        clients,
        verdict,
        errors: recorded.errors,
        error_messages: recorded.error_messages,
        reconnects: recorded.reconnects,
        clients_lost: recorded.clients_lost,
        loadavg_at_start,
    };
    Ok((phase, points))
}

fn report_phase(name: &str, p: &Phase) {
    println!(
        "    {name}: {:.0} TPS; in the window: max stall {:.1} ms, p99 {:.1} ms (before: p99 {:.1} ms), \
         from the schedule max {:.1} ms (before: p99 {:.1} ms); {} errors, {} rows differing, \
         {} of {} committed missing",
        p.clients.achieved_tps,
        p.clients.max_stall_ms,
        p.clients.p99_ms,
        p.clients.baseline_p99_ms,
        p.clients.max_latency_ms,
        p.clients.baseline_p99_latency_ms,
        p.errors,
        p.verdict.rows_differing + p.verdict.invariant_violations,
        p.verdict.committed_missing,
        p.verdict.committed
    );
    for m in p.error_messages.iter().take(5) {
        println!("      error: {m}");
    }
    for e in p.verdict.examples.iter().take(5) {
        println!("      differs: {e}");
    }
}

/// A source cluster with `bench` filled by `pgbench -i` and a key on
/// `pgbench_history` (capture needs one on every written table; the
/// recipe's target gets the same schema). `logical` sets `wal_level`.
pub(super) async fn start_source(scale: u32, logical: bool) -> Result<Cluster> {
    let mut builder = Cluster::builder().database(DB);
    if logical {
        builder = builder.setting("wal_level", "logical");
    }
    let cluster = builder.start().await.context("starting the source cluster")?;
    pgbench::initialize(&cluster.endpoint(), DB, scale).await?;
    add_history_key(&cluster, DB).await?;
    Ok(cluster)
}

/// An empty target cluster with database `bench`.
pub(super) async fn start_target() -> Result<Cluster> {
    Cluster::builder()
        .database(DB)
        .start()
        .await
        .context("starting the target cluster")
}

fn parameters(args: &Args) -> Parameters {
    Parameters {
        seconds: args.seconds,
        cutover_at_seconds: args.cutover_at().as_secs_f64(),
        clients: args.clients,
        scale: args.scale,
        load_threads: args.load_threads,
        catchup_workers: args.catchup_workers,
        cutover_command: format!("CUTOVER {}", args.cutover_options).trim().to_owned(),
        transaction: "pgbench's built-in TPC-B-like script, one simple query per statement, \
                      the history row's filler tagged with client and sequence number",
        latency: "from the transaction's due time on the schedule to its COMMIT's answer (pgbench -R's way); \
                  at max rate from its start",
        window: "transactions overlapping the span from 1 s before the cutover's first command \
                 to 1 s after its last answer",
        rows_differing: "target vs the source at the switch plus the later writes: history rows, \
                         every account, teller and branch balance, row counts; plus balances \
                         that are not the sum of their history deltas",
        recipe: "publication/subscription, PgBouncer 1.18 transaction pooling; PAUSE, wait for the \
                 walsender's replay_lsn to reach pg_current_wal_lsn (polled every 1 ms), setval of \
                 every sequence, ini pointed at the target, RELOAD, RESUME",
        order: "the recipe first at the 1st, 3rd... rate, switchyard first at the others; fresh clusters each",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("500".parse::<Rate>(), Ok(Rate::Fixed(500)));
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().unwrap_err().contains("max"));
        assert_eq!(Rate::Max.to_string(), "max");
    }
}
