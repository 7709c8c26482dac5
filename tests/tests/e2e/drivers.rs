//! Client drivers' own test suites, run against a cluster directly, then
//! through the proxy, then through the same proxy while it moves every
//! session to a fresh backend of the same database every 100 ms: the proxy
//! passes when the same tests pass, fail and skip all three ways, apart from
//! the differences each suite's `KNOWN` list (any proxy) and `KNOWN_MOVING`
//! list (sessions that move) name and justify. psycopg2's and asyncpg's
//! suites come from their sdists, tokio-postgres's from its crate source;
//! node-postgres ships none, so tests/drivers/node/conformance.js stands in
//! for it.
//!
//! The drivers and suites are what tests/drivers/setup.sh installs. Without
//! them a test prints why and passes, unless SWITCHYARD_DRIVERS_REQUIRED is
//! set. The suites run as child processes awaited on the test's
//! multi-threaded runtime, so the in-process proxy keeps serving them.

use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_proxy::server::Shared;
use switchyard_proxy::session::route::{reconnect, Destination, MoveReport, MoveRequest};
use switchyard_proxy::{AuthMethod, Config, UserConfig};
use switchyard_tests::{init_tracing, Cluster, TestProxy};

/// The longest one full run of a suite may take. A run past it is killed,
/// and the test it was in counts as failed. The slowest suites (psycopg2,
/// asyncpg) take about a minute a run on an idle machine.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The longest a suite's runs may take together: the re-runs of differing
/// tests get what the three full runs left of it. Under nextest's 600 s
/// kill, with room for the cluster and the proxies.
const SUITE_LIMIT: Duration = Duration::from_secs(480);

/// The pause between two move orders of the moving run.
const MOVE_EVERY: Duration = Duration::from_millis(100);

/// How long one move order waits for sessions to reach a boundary; one
/// still in a transaction then moves at its next boundary anyway.
const MOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Move orders that moved at least one session, fewer of which fail a full
/// moving run: it would have compared a proxy that hardly moved anything.
/// A suite that ends sooner (tokio-postgres's and node's take a second or
/// two, mostly with no session open) runs again, in the same moving run,
/// until it got them.
const MIN_MOVES: usize = 20;

/// The most rounds of a suite one moving run makes.
const MOVING_ROUNDS_MAX: usize = 30;

/// Differences up to this many are re-run, both ways, before they count:
/// a few of the suites' tests time things and flake on a loaded machine.
const RERUN_MAX: usize = 30;

/// libpq's environment variables; cleared for every child so that only what
/// a suite is given decides where it connects.
const PG_ENV: [&str; 9] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGSERVICE",
    "PGOPTIONS",
    "PGSSLMODE",
];

/// One test's result, coarsened so that drivers compare alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Pass,
    Skip,
    /// Failed, errored, passed unexpectedly, or never finished.
    Fail,
}

/// What one run of a suite reported.
#[derive(Debug, Default)]
struct Run {
    outcomes: BTreeMap<String, Outcome>,
    /// Failure text by test, for the report.
    details: BTreeMap<String, String>,
    /// Where the run's output is.
    log: PathBuf,
}

impl Run {
    /// Records `outcome` for `test`; a test reported twice keeps the worse.
    fn record(&mut self, test: &str, outcome: Outcome, detail: &str) {
        let slot = self.outcomes.entry(test.to_owned()).or_insert(outcome);
        *slot = (*slot).max(outcome);
        if outcome == Outcome::Fail && !detail.is_empty() {
            self.details.insert(test.to_owned(), tail(detail, 1500));
        }
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.outcomes.values().filter(|o| **o == outcome).count()
    }

    /// Adds what `other` reported, keeping the worse outcome of a test in
    /// both.
    fn merge(&mut self, other: Run) {
        for (test, outcome) in other.outcomes {
            let detail = other.details.get(&test).map(String::as_str).unwrap_or("");
            self.record(&test, outcome, detail);
        }
    }

    fn summary(&self) -> String {
        use Outcome::*;
        let [p, f, s] = [Pass, Fail, Skip].map(|o| self.count(o));
        format!("{p} passed, {f} failed, {s} skipped")
    }
}

/// A test whose outcome through the proxy may differ from the direct one.
struct Known {
    test: &'static str,
    why: Why,
}

/// Why a test may differ through the proxy.
enum Why {
    /// The test is flaky against the server itself.
    Flaky(&'static str),
    /// The test times or sizes something that any hop in between changes
    /// (latency, buffering), not something the proxy does wrong.
    Hop(&'static str),
    /// The test checks something a move to a fresh backend changes by
    /// design (what the session documents as not carried over).
    Moved(&'static str),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Flaky(why) => write!(f, "flaky against the server too: {why}"),
            Why::Hop(why) => write!(f, "changed by any hop in between: {why}"),
            Why::Moved(why) => write!(f, "changed by moving the session to a fresh backend: {why}"),
        }
    }
}

/// Where a run sends its clients.
struct Target {
    host: String,
    port: u16,
    /// Where a suite's client-authentication tests go instead, when they
    /// need another configuration (tokio-postgres through the proxy).
    auth_port: Option<u16>,
}

/// A driver's suite: runs all its tests, or only the named ones, at a target.
trait Suite {
    /// Runs into files under `dir`, killing the run after `limit`.
    async fn run(&self, target: &Target, only: &[String], dir: &Path, limit: Duration) -> Result<Run>;
}

/// tests/drivers, where setup.sh puts everything.
fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers")
}

/// The entry of `dir` whose name starts with `prefix` (the last in name
/// order, should setup.sh have left several versions).
fn find_prefixed(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .collect();
    found.sort();
    found.pop()
}

/// Prints why a driver test does not run and passes, unless the drivers
/// were required.
fn skip(driver: &str, missing: &Path) -> Result<()> {
    let why = format!(
        "{} is missing; run tests/drivers/setup.sh to install the driver suites",
        missing.display()
    );
    if std::env::var_os("SWITCHYARD_DRIVERS_REQUIRED").is_some() {
        bail!("{why} (SWITCHYARD_DRIVERS_REQUIRED is set)");
    }
    eprintln!("SKIPPED drivers::{driver}: {why}");
    Ok(())
}

/// `program` as found on `PATH`.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The first of `paths` that does not exist.
fn first_missing(paths: &[&Path]) -> Option<PathBuf> {
    paths.iter().find(|p| !p.exists()).map(|p| p.to_path_buf())
}

/// A child process with libpq's variables cleared.
fn command(program: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    for var in PG_ENV {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Runs `cmd` with its output going to `log`, for at most `limit`. Returns
/// whether it was killed at the limit; its exit status is not judged, the
/// parsed results are.
async fn run_logged(mut cmd: tokio::process::Command, log: &Path, limit: Duration) -> Result<bool> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdout(out.try_clone()?).stderr(out);
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => {
            status.context("waiting for the suite")?;
            Ok(false)
        }
        Err(_) => {
            let _ = child.kill().await;
            Ok(true)
        }
    }
}

/// The last `n` characters of `text`.
fn tail(text: &str, n: usize) -> String {
    let start = text.len().saturating_sub(n);
    let start = (start..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    text[start..].to_owned()
}

/// Tests whose outcome differs between two runs; a test one run lacks
/// counts as failed there.
fn differences(direct: &Run, proxied: &Run) -> BTreeSet<String> {
    let names: BTreeSet<&String> = direct.outcomes.keys().chain(proxied.outcomes.keys()).collect();
    let get = |run: &Run, t: &str| run.outcomes.get(t).copied().unwrap_or(Outcome::Fail);
    names
        .into_iter()
        .filter(|t| get(direct, t) != get(proxied, t))
        .cloned()
        .collect()
}

/// What the move orders of one moving run did, added up.
#[derive(Debug, Default)]
struct MoveStats {
    /// Rounds of the suite the run made.
    rounds: usize,
    /// Move orders given.
    orders: usize,
    /// Orders that moved at least one session.
    effective: usize,
    /// Sessions moved, over all orders.
    moved: usize,
    /// Sessions left waiting for a boundary at an order's timeout.
    waiting: usize,
    pinned: usize,
    closed: usize,
    failed: usize,
    /// The longest route flip to last session moved, ms.
    longest_ms: f64,
    /// Orders `reconnect` refused, with the last reason.
    refused: usize,
    last_refusal: Option<String>,
}

impl MoveStats {
    fn add(&mut self, r: &MoveReport) {
        self.orders += 1;
        self.effective += usize::from(r.moved > 0);
        self.moved += r.moved;
        self.waiting += r.waiting;
        self.pinned += r.pinned;
        self.closed += r.closed + r.left;
        self.failed += r.failed;
        self.longest_ms = self.longest_ms.max(r.move_ms);
    }

    fn summary(&self) -> String {
        let mut text = format!(
            "{} round(s), {} move orders, {} of them moved sessions ({} session moves; left waiting {}, \
             pinned {}, ended during the order {}, failed {}; longest {:.1} ms)",
            self.rounds,
            self.orders,
            self.effective,
            self.moved,
            self.waiting,
            self.pinned,
            self.closed,
            self.failed,
            self.longest_ms
        );
        if let Some(why) = &self.last_refusal {
            let _ = write!(text, "; {} refused, last: {why}", self.refused);
        }
        text
    }
}

/// Moves every session of some proxies to a fresh backend of the same
/// database, one order every [`MOVE_EVERY`], until stopped.
struct Mover {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<MoveStats>,
    /// [`MoveStats::effective`] so far.
    effective: Arc<AtomicUsize>,
}

impl Mover {
    fn start(proxies: &[Arc<Shared>]) -> Mover {
        let proxies = proxies.to_vec();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let effective = Arc::new(AtomicUsize::new(0));
        let so_far = Arc::clone(&effective);
        let task = tokio::spawn(async move {
            let mut stats = MoveStats::default();
            loop {
                for shared in &proxies {
                    let order = MoveRequest {
                        to: Destination::Source,
                        timeout: MOVE_TIMEOUT,
                        pinned: None,
                        open_at_once: None,
                    };
                    match reconnect(shared, order).await {
                        Ok(report) => {
                            stats.add(&report);
                            so_far.store(stats.effective, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stats.refused += 1;
                            stats.last_refusal = Some(e.to_string());
                        }
                    }
                }
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep(MOVE_EVERY) => {}
                }
            }
            stats
        });
        Mover { stop, task, effective }
    }

    fn effective(&self) -> usize {
        self.effective.load(Ordering::Relaxed)
    }

    async fn stop(self) -> Result<MoveStats> {
        let _ = self.stop.send(true);
        self.task.await.context("the move task panicked")
    }
}

/// One way of reaching the server that a suite's runs are compared with
/// the direct run for.
struct Way<'a> {
    label: &'static str,
    target: &'a Target,
    /// The proxies whose sessions move during the run, for the moving way.
    moving: Option<&'a [Arc<Shared>]>,
    /// Differences accepted on this way.
    known: Vec<&'a Known>,
    /// The differences that belong to this way, reported when absent.
    own: &'a [Known],
}

impl Way<'_> {
    /// Runs `suite` this way. The moving way moves sessions all along, and
    /// runs the suite again (each round into its own directory, outcomes
    /// merged worst first) until [`MIN_MOVES`] orders moved sessions, while
    /// another round fits in `limit`.
    async fn run(
        &self,
        suite: &impl Suite,
        only: &[String],
        dir: &Path,
        limit: Duration,
    ) -> Result<(Run, Option<MoveStats>)> {
        let Some(proxies) = self.moving else {
            return Ok((suite.run(self.target, only, dir, limit).await?, None));
        };
        let mover = Mover::start(proxies);
        let started = Instant::now();
        let mut merged = Run {
            log: dir.to_owned(),
            ..Run::default()
        };
        let mut rounds = 0;
        let outcome = loop {
            let left = limit.saturating_sub(started.elapsed());
            let round = suite
                .run(self.target, only, &dir.join(format!("round-{rounds}")), left)
                .await;
            rounds += 1;
            match round {
                Ok(run) => merged.merge(run),
                Err(e) => break Err(e),
            }
            let next_ends = started.elapsed() + started.elapsed() / rounds as u32;
            if mover.effective() >= MIN_MOVES || rounds >= MOVING_ROUNDS_MAX || next_ends > limit {
                break Ok(());
            }
        };
        let mut stats = mover.stop().await?;
        stats.rounds = rounds;
        outcome?;
        Ok((merged, Some(stats)))
    }
}

/// The moving run's proxies and the differences moving may cause.
struct Moving<'a> {
    /// Every proxy the proxied target's connections go through.
    proxies: Vec<Arc<Shared>>,
    known: &'a [Known],
}

/// Runs `suite` directly, through the proxy, and (given `moving`) through
/// the proxy while it moves every session, re-runs what differs, and fails
/// on any difference the lists do not name: `known` for every proxied run,
/// `moving.known` for the moving one besides. `min_passed` guards against a
/// suite that quietly ran nothing, [`MIN_MOVES`] against a moving run that
/// moved nothing.
async fn compare(
    name: &str,
    suite: &impl Suite,
    direct: &Target,
    proxied: &Target,
    known: &[Known],
    moving: Option<Moving<'_>>,
    min_passed: usize,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("switchyard-{name}-"))
        .tempdir()?;
    let mut ways = vec![Way {
        label: "proxy",
        target: proxied,
        moving: None,
        known: known.iter().collect(),
        own: known,
    }];
    if let Some(m) = &moving {
        ways.push(Way {
            label: "moving",
            target: proxied,
            moving: Some(&m.proxies),
            known: known.iter().chain(m.known).collect(),
            own: m.known,
        });
    }

    let started = Instant::now();
    let d = suite.run(direct, &[], &dir.path().join("direct"), RUN_LIMIT).await?;
    let mut report = format!("{name}: direct {} ({:.0?})", d.summary(), started.elapsed());
    let mut runs = Vec::new();
    let mut too_few_moves = None;
    for way in &ways {
        let began = Instant::now();
        let (run, stats) = way.run(suite, &[], &dir.path().join(way.label), RUN_LIMIT).await?;
        write!(report, " | {} {} ({:.0?})", way.label, run.summary(), began.elapsed())?;
        if let Some(stats) = stats {
            write!(report, "\n  {}: {}", way.label, stats.summary())?;
            if stats.effective < MIN_MOVES {
                too_few_moves = Some(stats.effective);
            }
        }
        runs.push(run);
    }
    report.push('\n');
    let passed = d.count(Outcome::Pass);
    if passed < min_passed {
        let _kept = dir.keep();
        bail!(
            "{report}{name} passed only {passed} tests directly (expected at least {min_passed}); see {}",
            d.log.display()
        );
    }

    let mut diffs: Vec<BTreeSet<String>> = runs.iter().map(|r| differences(&d, r)).collect();
    let all: BTreeSet<String> = diffs.iter().flatten().cloned().collect();
    let reruns = 1 + diffs.iter().filter(|d| !d.is_empty()).count() as u32;
    let left = SUITE_LIMIT.saturating_sub(started.elapsed()) / reruns;
    if !all.is_empty() && all.len() <= RERUN_MAX && !left.is_zero() {
        // Only a difference that comes back when its tests run again counts.
        let only: Vec<String> = all.iter().cloned().collect();
        let d2 = suite.run(direct, &only, &dir.path().join("direct-rerun"), left).await?;
        for ((way, run), diffs) in ways.iter().zip(&runs).zip(&mut diffs) {
            if diffs.is_empty() {
                continue;
            }
            let only: Vec<String> = diffs.iter().cloned().collect();
            let rerun_dir = dir.path().join(format!("{}-rerun", way.label));
            let (r2, stats) = way.run(suite, &only, &rerun_dir, left).await?;
            if let Some(stats) = stats {
                writeln!(report, "  {} re-run: {}", way.label, stats.summary())?;
            }
            // It must come back the same way round: a test that fails directly
            // on the re-run and passes through the proxy is flaky, not broken.
            let pair = |a: &Run, b: &Run, t: &str| (a.outcomes.get(t).copied(), b.outcomes.get(t).copied());
            let flaky: Vec<String> = diffs
                .iter()
                .filter(|t| {
                    let again = pair(&d2, &r2, t);
                    again != (None, None) && again != pair(&d, run, t)
                })
                .cloned()
                .collect();
            for t in &flaky {
                writeln!(report, "  did not repeat on a re-run (flaky, {}): {t}", way.label)?;
                // What failed, since the logs go with a passing comparison.
                for (label, failed) in [("direct", &d), (way.label, run)] {
                    if let Some(detail) = failed.details.get(t) {
                        writeln!(report, "    --- {label} ---\n{}", indent(&tail(detail, 600)))?;
                    }
                }
                diffs.remove(t);
            }
        }
    }
    let show = |run: &Run, t: &str| format!("{:?}", run.outcomes.get(t).copied().unwrap_or(Outcome::Fail));
    let mut unexplained = Vec::new();
    for ((way, run), diffs) in ways.iter().zip(&runs).zip(&diffs) {
        for t in diffs {
            let line = format!("{t}: direct {} / {} {}", show(&d, t), way.label, show(run, t));
            match way.known.iter().find(|k| k.test == t) {
                Some(k) => writeln!(report, "  known difference {line}: {}", k.why)?,
                None => unexplained.push((line, t.clone(), way.label, run)),
            }
        }
        for k in way.own.iter().filter(|k| !diffs.contains(k.test)) {
            writeln!(report, "  known difference did not occur ({}): {}", way.label, k.test)?;
        }
    }
    if let Some(effective) = too_few_moves {
        writeln!(
            report,
            "  TOO FEW MOVES: only {effective} move orders moved a session during the moving run (expected at \
             least {MIN_MOVES}); it did not test sessions that move"
        )?;
    }
    if unexplained.is_empty() && too_few_moves.is_none() {
        eprint!("{report}");
        return Ok(());
    }
    for (line, t, label, run) in &unexplained {
        writeln!(report, "  UNEXPLAINED {line}")?;
        for (label, run) in [("direct", &d), (*label, *run)] {
            if let Some(detail) = run.details.get(t) {
                writeln!(report, "    --- {label} ---\n{}", indent(detail))?;
            }
        }
    }
    let kept = dir.keep();
    bail!("{report}logs: {}", kept.display())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

/// Undoes run_unittest.py's escaping of `\`, tab and newline.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('n') => '\n',
            Some('t') => '\t',
            Some(other) => other,
            None => '\\',
        });
    }
    out
}

/// A unittest suite from an sdist, run by tests/drivers/python/run_unittest.py.
struct PythonSuite {
    python: PathBuf,
    /// The unpacked sdist, holding the suite's `tests` package.
    root: PathBuf,
    /// How run_unittest.py finds the tests (`--entry ...` or `--discover ...`).
    load: [&'static str; 2],
    /// The environment that points the suite at a target.
    env: fn(&Target) -> Vec<(&'static str, String)>,
}

impl Suite for PythonSuite {
    async fn run(&self, target: &Target, only: &[String], dir: &Path, limit: Duration) -> Result<Run> {
        std::fs::create_dir_all(dir)?;
        let results = dir.join("results.tsv");
        let mut cmd = command(&self.python);
        cmd.arg(drivers_dir().join("python/run_unittest.py"))
            .arg("--root")
            .arg(&self.root)
            .args(self.load)
            .arg("--results")
            .arg(&results)
            .envs((self.env)(target))
            .current_dir(&self.root);
        for test in only {
            cmd.args(["--only", test]);
        }
        let log = dir.join("output.log");
        let timed_out = run_logged(cmd, &log, limit).await?;
        let text = std::fs::read_to_string(&results).unwrap_or_default();
        let mut run = Run { log, ..Run::default() };
        parse_unittest(&text, timed_out, &mut run);
        Ok(run)
    }
}

/// Reads run_unittest.py's records; a test that started and never ended
/// failed (it hung until the time limit, or the runner died).
fn parse_unittest(text: &str, timed_out: bool, run: &mut Run) {
    let mut running = BTreeSet::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["start", test, ..] => {
                running.insert(test.to_string());
            }
            ["end", test, outcome, _seconds, detail @ ..] => {
                running.remove(*test);
                let outcome = match *outcome {
                    "pass" | "xfail" => Outcome::Pass,
                    "skip" => Outcome::Skip,
                    _ => Outcome::Fail,
                };
                run.record(test, outcome, &unescape(&detail.join("\t")));
            }
            _ => {}
        }
    }
    for test in running {
        let why = if timed_out {
            "still running when the run hit its time limit"
        } else {
            "started but never finished (the runner died)"
        };
        run.record(&test, Outcome::Fail, why);
    }
}

/// tokio-postgres's own tests, built by setup.sh with the port taken from
/// `SWITCHYARD_PG_PORT` (tests/drivers/rust/prepare_suite.py).
struct TokioPostgresSuite {
    binary: PathBuf,
}

/// The suite's client-authentication tests (`plain_password_ok`, ...).
const TOKIO_POSTGRES_AUTH_TESTS: &str = "_password_";

impl TokioPostgresSuite {
    async fn run_at(&self, port: u16, filter: &[&str], log: PathBuf, limit: Duration, run: &mut Run) -> Result<()> {
        let mut cmd = command(&self.binary);
        cmd.env("SWITCHYARD_PG_PORT", port.to_string())
            .env("RUST_BACKTRACE", "0")
            .args(["--test-threads", "4", "--color", "never"])
            .args(filter);
        let timed_out = run_logged(cmd, &log, limit).await?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        parse_libtest(&text, timed_out, run);
        run.log = log;
        Ok(())
    }
}

impl Suite for TokioPostgresSuite {
    async fn run(&self, target: &Target, only: &[String], dir: &Path, limit: Duration) -> Result<Run> {
        std::fs::create_dir_all(dir)?;
        let mut run = Run::default();
        let is_auth = |t: &str| t.contains(TOKIO_POSTGRES_AUTH_TESTS);
        let (auth, rest): (Vec<&str>, Vec<&str>) = only.iter().map(String::as_str).partition(|t| is_auth(t));
        let Some(auth_port) = target.auth_port else {
            let filter: Vec<&str> = if only.is_empty() {
                vec![]
            } else {
                [&["--exact"][..], &rest, &auth].concat()
            };
            self.run_at(target.port, &filter, dir.join("output.log"), limit, &mut run)
                .await?;
            return Ok(run);
        };
        if only.is_empty() || !rest.is_empty() {
            let filter = if only.is_empty() {
                vec!["--skip", TOKIO_POSTGRES_AUTH_TESTS]
            } else {
                [&["--exact"][..], &rest].concat()
            };
            self.run_at(target.port, &filter, dir.join("output.log"), limit, &mut run)
                .await?;
        }
        if only.is_empty() || !auth.is_empty() {
            let filter = if only.is_empty() {
                vec![TOKIO_POSTGRES_AUTH_TESTS]
            } else {
                [&["--exact"][..], &auth].concat()
            };
            self.run_at(auth_port, &filter, dir.join("auth-output.log"), limit, &mut run)
                .await?;
        }
        Ok(run)
    }
}

/// Reads libtest's `test NAME ... ok|FAILED|ignored` lines and the
/// `---- NAME stdout ----` sections that explain failures.
fn parse_libtest(text: &str, timed_out: bool, run: &mut Run) {
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
            current = Some(name.to_owned());
            continue;
        }
        if line == "failures:" || line.starts_with("test result:") {
            current = None;
        }
        if let Some(name) = &current {
            let section = sections.entry(name.clone()).or_default();
            section.push_str(line);
            section.push('\n');
        }
    }
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        let Some((name, result)) = line.strip_prefix("test ").and_then(|l| l.split_once(" ... ")) else {
            continue;
        };
        let outcome = match result.split([' ', ',']).next() {
            Some("ok") => Outcome::Pass,
            Some("ignored") => Outcome::Skip,
            Some("FAILED") => Outcome::Fail,
            _ => continue,
        };
        seen.insert(name.to_owned());
        run.record(name, outcome, sections.get(name).map(String::as_str).unwrap_or(""));
    }
    if timed_out {
        // libtest names a test only when it ends; the hung one is unnamed.
        run.record("<run hit its time limit>", Outcome::Fail, "");
    }
}

/// tests/drivers/node/conformance.js under node's test runner (TAP output).
struct NodeSuite {
    node: PathBuf,
    /// tests/drivers/node.
    dir: PathBuf,
}

impl Suite for NodeSuite {
    async fn run(&self, target: &Target, only: &[String], dir: &Path, limit: Duration) -> Result<Run> {
        std::fs::create_dir_all(dir)?;
        let mut cmd = command(&self.node);
        cmd.args(["--test", "--test-reporter=tap"])
            .current_dir(&self.dir)
            .env("PGHOST", &target.host)
            .env("PGPORT", target.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres");
        // Options go before the script: node takes every argument after the
        // first file name for another file to run.
        for test in only {
            cmd.arg(format!("--test-name-pattern=^{}$", regex_escape(test)));
        }
        cmd.arg("conformance.js");
        let log = dir.join("output.log");
        let timed_out = run_logged(cmd, &log, limit).await?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut run = Run { log, ..Run::default() };
        parse_tap(&text, &mut run);
        if timed_out {
            run.record("<run hit its time limit>", Outcome::Fail, "");
        }
        Ok(run)
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\^$.|?*+()[]{}/".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// Reads top-level TAP results (`ok 3 - name`, `not ok 4 - name`, with
/// `# SKIP`) and the indented YAML block after a failure.
fn parse_tap(text: &str, run: &mut Run) {
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let (failed, rest) = match (line.strip_prefix("not ok "), line.strip_prefix("ok ")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => continue,
        };
        let Some((_, name)) = rest.split_once(" - ") else {
            continue;
        };
        let (name, directive) = name.split_once(" # ").unwrap_or((name, ""));
        let outcome = match (failed, directive.to_ascii_uppercase().starts_with("SKIP")) {
            (_, true) => Outcome::Skip,
            (true, false) => Outcome::Fail,
            (false, false) => Outcome::Pass,
        };
        let detail: String = lines[i + 1..]
            .iter()
            .take_while(|l| l.starts_with("  "))
            .map(|l| format!("{l}\n"))
            .collect();
        run.record(name.trim(), outcome, &detail);
    }
}

/// The cluster itself, as a target.
fn direct(cluster: &Cluster) -> Target {
    Target {
        host: cluster.host().to_owned(),
        port: cluster.port(),
        auth_port: None,
    }
}

/// The proxy, as a target.
fn via(proxy: &TestProxy) -> Target {
    Target {
        host: proxy.host(),
        port: proxy.port(),
        auth_port: None,
    }
}

/// A moving run through `proxies`, allowed the differences `known`.
fn moving<'a>(proxies: &[&TestProxy], known: &'a [Known]) -> Moving<'a> {
    Moving {
        proxies: proxies.iter().map(|p| Arc::clone(p.proxy().shared())).collect(),
        known,
    }
}

/// psycopg2's differences through the proxy, each justified.
const PSYCOPG2_KNOWN: &[Known] = &[];

/// Why a backend pid read before a move may differ from the one after
/// (documented: the client keeps its startup key, the server names the
/// backend the session is on now). Shared by every suite's moving run.
const PID_AT_STARTUP: &str = "compares the pid the connection got at startup (BackendKeyData) with \
             pg_backend_pid(); a session that moved in between is on another backend";

/// Why a kill by a pid read before a move may miss the session.
const KILL_BY_EARLIER_PID: &str = "terminates a session's backend by a pid read earlier (pg_backend_pid(), or \
             the BackendKeyData's: get_server_pid(), processID) and expects its connection or \
             query to end; a move in between puts the session on a new backend, so the kill hits \
             the backend it left and the session rightly goes on";

/// Why a notification's pid may differ from the notifier's startup pid.
const PID_IN_NOTIFICATION: &str = "compares a notification's sender pid with the pid the notifier's connection was \
             given at startup (BackendKeyData); a notifier that moved in between sends from its \
             new backend, whose pid the notification carries (documented: the client keeps its \
             startup key, the server names the backend the session is on now)";

/// psycopg2's further differences when its sessions move, each justified.
const PSYCOPG2_KNOWN_MOVING: &[Known] = &[
    Known {
        test: "tests.test_notify.NotifiesTests.test_notifies_received_on_poll",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "tests.test_notify.NotifiesTests.test_notifies_received_on_execute",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "tests.test_notify.NotifiesTests.test_notifies_received_on_commit",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "tests.test_notify.NotifiesTests.test_notifies_received_on_rollback",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "tests.test_notify.NotifiesTests.test_notifies_received_on_reset",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "tests.test_notify.NotifiesTests.test_notify_attributes",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "tests.test_notify.NotifiesTests.test_notify_payload",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "tests.test_connection.ConnectionTests.test_backend_pid",
        why: Why::Moved(PID_AT_STARTUP),
    },
    Known {
        test: "tests.test_cursor.CursorTests.test_external_close_async",
        why: Why::Moved(KILL_BY_EARLIER_PID),
    },
    Known {
        test: "tests.test_cursor.CursorTests.test_external_close_sync",
        why: Why::Moved(KILL_BY_EARLIER_PID),
    },
];

/// psycopg2 2.9's suite (its sdist's tests/, about 750 tests) under
/// psycopg2-binary. The replication tests skip every way: they need
/// `PSYCOPG2_TEST_REPL_DSN`, and the proxy refuses replication connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_suite() -> Result<()> {
    init_tracing();
    let drivers = drivers_dir();
    let python = drivers.join(".venv/bin/python");
    let Some(root) = find_prefixed(&drivers.join(".suites"), "psycopg2-") else {
        return skip("psycopg2", &drivers.join(".suites/psycopg2-*"));
    };
    if let Some(missing) = first_missing(&[&python, &root.join("tests/testconfig.py")]) {
        return skip("psycopg2", &missing);
    }
    let cluster = Cluster::builder()
        // The two-phase-commit tests skip unless prepared transactions are on.
        .setting("max_prepared_transactions", "10")
        .database("psycopg2_test")
        .start()
        .await?;
    let proxy = TestProxy::start(&cluster).await?;
    let suite = PythonSuite {
        python,
        root,
        load: ["--entry", "tests:test_suite"],
        env: |t| {
            vec![
                ("PSYCOPG2_TESTDB", "psycopg2_test".into()),
                ("PSYCOPG2_TESTDB_HOST", t.host.clone()),
                ("PSYCOPG2_TESTDB_PORT", t.port.to_string()),
                ("PSYCOPG2_TESTDB_USER", "postgres".into()),
            ]
        },
    };
    compare(
        "psycopg2",
        &suite,
        &direct(&cluster),
        &via(&proxy),
        PSYCOPG2_KNOWN,
        Some(moving(&[&proxy], PSYCOPG2_KNOWN_MOVING)),
        600,
    )
    .await?;
    proxy.shutdown().await;
    Ok(())
}

/// psycopg2's suite again, through a proxy with write capture on (policy
/// `warn`, so the suite's DDL and keyless tables run uncaptured): capture
/// must not change what a client sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_suite_with_capture_on() -> Result<()> {
    init_tracing();
    let drivers = drivers_dir();
    let python = drivers.join(".venv/bin/python");
    let Some(root) = find_prefixed(&drivers.join(".suites"), "psycopg2-") else {
        return skip("psycopg2", &drivers.join(".suites/psycopg2-*"));
    };
    if let Some(missing) = first_missing(&[&python, &root.join("tests/testconfig.py")]) {
        return skip("psycopg2", &missing);
    }
    let cluster = Cluster::builder()
        .setting("max_prepared_transactions", "10")
        .database("psycopg2_test")
        .start()
        .await?;
    let (proxy, admin, _log) = capturing_proxy(&cluster, "psycopg2_test").await?;
    let suite = PythonSuite {
        python,
        root,
        load: ["--entry", "tests:test_suite"],
        env: |t| {
            vec![
                ("PSYCOPG2_TESTDB", "psycopg2_test".into()),
                ("PSYCOPG2_TESTDB_HOST", t.host.clone()),
                ("PSYCOPG2_TESTDB_PORT", t.port.to_string()),
                ("PSYCOPG2_TESTDB_USER", "postgres".into()),
            ]
        },
    };
    compare(
        "psycopg2+capture",
        &suite,
        &direct(&cluster),
        &via(&proxy),
        PSYCOPG2_KNOWN,
        None,
        600,
    )
    .await?;
    no_late_commits(&admin).await?;
    proxy.shutdown().await;
    Ok(())
}

/// A proxy in front of `cluster` with write capture on (policy `warn`, so
/// the suites' DDL and keyless tables run uncaptured), its admin console,
/// and the log's directory.
async fn capturing_proxy(
    cluster: &Cluster,
    db: &str,
) -> Result<(TestProxy, tokio_postgres::Client, tempfile::TempDir)> {
    let log = tempfile::tempdir()?;
    let mut config = switchyard_proxy::Config::trusting(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        cluster.host(),
        cluster.port(),
    );
    config.source.password = cluster.auth().password().map(str::to_owned);
    config.capture.log_dir = log.path().join("log");
    config.capture.user = Some(cluster.superuser().to_owned());
    config.capture.database = Some(db.into());
    config.capture.policy = switchyard_proxy::UnsafePolicy::Warn;
    let proxy = TestProxy::start_with(config)
        .await?
        .with_login(cluster.superuser(), None);
    let admin = proxy.connect("switchyard").await?;
    admin.simple_query("CAPTURE START").await?;
    Ok((proxy, admin, log))
}

/// Fails if capture had to log any transaction after its commit.
async fn no_late_commits(admin: &tokio_postgres::Client) -> Result<()> {
    let shown = admin.simple_query("SHOW CAPTURE").await?;
    let late = shown.iter().any(|m| {
        matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("late_logged") && r.get(1) != Some("0"))
    });
    anyhow::ensure!(!late, "a commit path was not held: {shown:?}");
    Ok(())
}

/// asyncpg's suite (extended protocol throughout) through a capturing proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_suite_with_capture_on() -> Result<()> {
    init_tracing();
    let drivers = drivers_dir();
    let python = drivers.join(".venv/bin/python");
    let Some(root) = find_prefixed(&drivers.join(".suites"), "asyncpg-") else {
        return skip("asyncpg", &drivers.join(".suites/asyncpg-*"));
    };
    if let Some(missing) = first_missing(&[&python, &root.join("tests/__init__.py")]) {
        return skip("asyncpg", &missing);
    }
    let cluster = Cluster::start().await?;
    let (proxy, admin, _log) = capturing_proxy(&cluster, "postgres").await?;
    let suite = PythonSuite {
        python,
        root,
        load: ["--discover", "tests"],
        env: |t| {
            vec![
                ("PGHOST", t.host.clone()),
                ("PGPORT", t.port.to_string()),
                ("PGUSER", "postgres".into()),
                ("PGDATABASE", "postgres".into()),
            ]
        },
    };
    compare(
        "asyncpg+capture",
        &suite,
        &direct(&cluster),
        &via(&proxy),
        ASYNCPG_KNOWN,
        None,
        250,
    )
    .await?;
    no_late_commits(&admin).await?;
    proxy.shutdown().await;
    Ok(())
}

/// asyncpg's further differences when its sessions move, each justified.
const ASYNCPG_KNOWN_MOVING: &[Known] = &[
    Known {
        test: "tests.test_listeners.TestListeners.test_listen_01",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "tests.test_listeners.TestListeners.test_listen_02",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "tests.test_listeners.TestListeners.test_listen_notletters",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "tests.test_execute.TestExecuteScript.test_execute_script_interrupted_by_server",
        why: Why::Moved(KILL_BY_EARLIER_PID),
    },
    Known {
        test: "tests.test_pool.TestPool.test_pool_min_size_restored_after_idle_connection_loss",
        why: Why::Moved(KILL_BY_EARLIER_PID),
    },
    Known {
        test: "tests.test_pool.TestPool.test_pool_remote_close",
        why: Why::Moved(KILL_BY_EARLIER_PID),
    },
];

/// asyncpg's differences through the proxy, each justified.
const ASYNCPG_KNOWN: &[Known] = &[
    Known {
        test: "tests.test_pool.TestPool.test_pool_config_persistence",
        why: Why::Flaky(
            "fails about half the time either way: with \
             max_queries=1 the pool closes connections under the test's feet and \
             asyncpg reports an unretrieved 'unexpected connection_lost()' future",
        ),
    },
    Known {
        test: "tests.test_execute.TestExecuteMany.test_executemany_server_failure_during_writes",
        why: Why::Hop(
            "asserts that executemany stops writing its 128 rows of 32 kB once the \
             server's unique violation comes back; a proxy adds buffers (its 256 kB \
             high-water mark and a second pair of socket buffers) and latency, so \
             now and then all 4 MB are written before the error arrives",
        ),
    },
];

/// asyncpg's suite (its sdist's tests/) against an existing server, which it
/// uses when `PGHOST` is set; the tests that need a cluster of their own
/// (custom pg_hba, standbys, restarts) then skip or fail every way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_suite() -> Result<()> {
    init_tracing();
    let drivers = drivers_dir();
    let python = drivers.join(".venv/bin/python");
    let Some(root) = find_prefixed(&drivers.join(".suites"), "asyncpg-") else {
        return skip("asyncpg", &drivers.join(".suites/asyncpg-*"));
    };
    if let Some(missing) = first_missing(&[&python, &root.join("tests/__init__.py")]) {
        return skip("asyncpg", &missing);
    }
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let suite = PythonSuite {
        python,
        root,
        load: ["--discover", "tests"],
        env: |t| {
            vec![
                ("PGHOST", t.host.clone()),
                ("PGPORT", t.port.to_string()),
                ("PGUSER", "postgres".into()),
                ("PGDATABASE", "postgres".into()),
            ]
        },
    };
    compare(
        "asyncpg",
        &suite,
        &direct(&cluster),
        &via(&proxy),
        ASYNCPG_KNOWN,
        Some(moving(&[&proxy], ASYNCPG_KNOWN_MOVING)),
        250,
    )
    .await?;
    proxy.shutdown().await;
    Ok(())
}

/// tokio-postgres's differences through the proxy, each justified.
const TOKIO_POSTGRES_KNOWN: &[Known] = &[];

/// tokio-postgres's further differences when its sessions move, each
/// justified.
const TOKIO_POSTGRES_KNOWN_MOVING: &[Known] = &[];

/// The password every role of tokio-postgres's suite has.
const TOKIO_POSTGRES_PASSWORD: &str = "password";

/// tokio-postgres's own suite (tests/test of the crate the workspace locks).
/// The server is set up as the suite's docker image sets it up: roles
/// pass_user, md5_user and scram_user, each with its own pg_hba method, and
/// the hstore, citext and ltree extensions.
///
/// The proxy authenticates clients itself, with one method for all users,
/// so its run is split: the `*_password_*` tests go to a proxy that asks for
/// SCRAM passwords (a missing or wrong password must fail there with 28P01,
/// as the server's own methods do), the rest to one that trusts clients, as
/// the suite's `postgres` user connects without a password. Both log in to
/// the server as the client's user with the password configured for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_suite() -> Result<()> {
    init_tracing();
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/drivers/tokio-postgres");
    let listed = crate_dir.join("test-binary");
    let binary = PathBuf::from(std::fs::read_to_string(&listed).unwrap_or_default().trim());
    if !binary.is_file() {
        return skip("tokio_postgres", &listed);
    }
    let cluster = Cluster::start().await?;
    prepare_tokio_postgres_cluster(&cluster).await?;

    let users: Vec<UserConfig> = ["pass_user", "md5_user", "scram_user"]
        .into_iter()
        .map(|name| UserConfig {
            name: name.into(),
            password: Some(TOKIO_POSTGRES_PASSWORD.into()),
            admin: false,
        })
        .collect();
    let local = "127.0.0.1:0".parse()?;
    let mut trusting = Config::trusting(local, cluster.host(), cluster.port());
    trusting.users = users.clone();
    let mut scram = trusting.clone();
    scram.auth.method = AuthMethod::ScramSha256;
    scram.users = users;
    let proxy = TestProxy::start_with(trusting).await?;
    let auth_proxy = TestProxy::start_with(scram).await?;

    let suite = TokioPostgresSuite { binary };
    let proxied = Target {
        auth_port: Some(auth_proxy.port()),
        ..via(&proxy)
    };
    compare(
        "tokio-postgres",
        &suite,
        &direct(&cluster),
        &proxied,
        TOKIO_POSTGRES_KNOWN,
        Some(moving(&[&proxy, &auth_proxy], TOKIO_POSTGRES_KNOWN_MOVING)),
        80,
    )
    .await?;
    proxy.shutdown().await;
    auth_proxy.shutdown().await;
    Ok(())
}

/// Roles, pg_hba.conf and extensions as in rust-postgres's docker setup.
async fn prepare_tokio_postgres_cluster(cluster: &Cluster) -> Result<()> {
    let client = cluster.connect("postgres").await?;
    let pw = TOKIO_POSTGRES_PASSWORD;
    client
        .batch_execute(&format!(
            "SET password_encryption = 'md5';
             CREATE ROLE md5_user PASSWORD '{pw}' LOGIN;
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE pass_user PASSWORD '{pw}' LOGIN;
             CREATE ROLE scram_user PASSWORD '{pw}' LOGIN;
             CREATE EXTENSION hstore;
             CREATE EXTENSION citext;
             CREATE EXTENSION ltree;"
        ))
        .await?;
    // The testkit's own connections are the trusted superuser's.
    let hba = "# written by e2e/drivers.rs, after rust-postgres's docker setup\n\
               host  all pass_user  127.0.0.1/32 password\n\
               host  all md5_user   127.0.0.1/32 md5\n\
               host  all scram_user 127.0.0.1/32 scram-sha-256\n\
               host  all all        127.0.0.1/32 trust\n\
               local all all                     trust\n";
    std::fs::write(cluster.data_dir().join("pg_hba.conf"), hba).context("writing pg_hba.conf")?;
    let reloaded: bool = client.query_one("SELECT pg_reload_conf()", &[]).await?.get(0);
    ensure!(reloaded, "pg_reload_conf() failed");
    Ok(())
}

/// Differences of the node-postgres conformance script through the proxy.
const NODE_KNOWN: &[Known] = &[];

/// The conformance script's further differences when its sessions move.
const NODE_KNOWN_MOVING: &[Known] = &[
    Known {
        test: "startup reports the backend and its parameters",
        why: Why::Moved(PID_AT_STARTUP),
    },
    Known {
        test: "LISTEN/NOTIFY between sessions",
        why: Why::Moved(PID_IN_NOTIFICATION),
    },
    Known {
        test: "pg_cancel_backend from another session",
        why: Why::Moved(
            "cancels by the pid of the client's BackendKeyData through pg_cancel_backend(), which \
             the server resolves, not the proxy; a session that moved runs its query on another \
             backend, so the cancel hits the one it left (a CancelRequest, which the proxy \
             routes, is covered by 'cancel request stops a running query')",
        ),
    },
    Known {
        test: "terminated backend surfaces as an error",
        why: Why::Moved(KILL_BY_EARLIER_PID),
    },
    Known {
        test: "pool: concurrent queries across several connections",
        why: Why::Moved(
            "asserts that 40 queries over a pool of 4 connections see at most 4 distinct \
         pg_backend_pid() values; a connection that moves gets a new backend, and \
         pg_backend_pid() returns the new backend's pid (documented), so a move during \
         the test shows up to 8",
        ),
    },
];

/// node-postgres (pg, pg-copy-streams, pg-cursor, pg-query-stream) through
/// tests/drivers/node/conformance.js: the pg package ships no test suite, so
/// this script exercises what its suite would (queries, types, prepared
/// statements, pipelining, errors, COPY, notifications, cancel, pools).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_conformance() -> Result<()> {
    init_tracing();
    let dir = drivers_dir().join("node");
    let Some(node) = on_path("node") else {
        return skip("node_postgres", Path::new("node (on PATH)"));
    };
    if let Some(missing) = first_missing(&[&dir.join("node_modules/pg/package.json")]) {
        return skip("node_postgres", &missing);
    }
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let suite = NodeSuite { node, dir };
    compare(
        "node-postgres",
        &suite,
        &direct(&cluster),
        &via(&proxy),
        NODE_KNOWN,
        Some(moving(&[&proxy], NODE_KNOWN_MOVING)),
        20,
    )
    .await?;
    proxy.shutdown().await;
    Ok(())
}

/// The harness's own parsers, on output captured from the real runners.
mod parsers {
    use super::*;

    #[test]
    fn libtest_lines_and_failure_sections() {
        let out = "running 3 tests\n\
                   test a ... ok\n\
                   test m::b ... FAILED\n\
                   test c ... ignored, needs docker\n\n\
                   failures:\n\n\
                   ---- m::b stdout ----\n\
                   thread 'm::b' panicked at main.rs:9:5:\nboom\n\n\
                   failures:\n    m::b\n\n\
                   test result: FAILED. 1 passed; 1 failed; 1 ignored\n";
        let mut run = Run::default();
        parse_libtest(out, false, &mut run);
        assert_eq!(run.outcomes["a"], Outcome::Pass);
        assert_eq!(run.outcomes["m::b"], Outcome::Fail);
        assert_eq!(run.outcomes["c"], Outcome::Skip);
        assert!(run.details["m::b"].contains("boom"), "{:?}", run.details);
    }

    #[test]
    fn tap_top_level_results() {
        let out = "TAP version 13\n# Subtest: one\nok 1 - one\n  ---\n  duration_ms: 1\n  ...\n\
                   not ok 2 - two: a/b\n  ---\n  error: 'expected 1'\n  ...\n\
                   ok 3 - three # SKIP test name does not match pattern\n";
        let mut run = Run::default();
        parse_tap(out, &mut run);
        assert_eq!(run.outcomes["one"], Outcome::Pass);
        assert_eq!(run.outcomes["two: a/b"], Outcome::Fail);
        assert_eq!(run.outcomes["three"], Outcome::Skip);
        assert!(run.details["two: a/b"].contains("expected 1"));
    }

    #[test]
    fn unittest_records_and_hung_test() {
        let out = "start\tt.A.ok\t1.0\nend\tt.A.ok\tpass\t0.1\t\n\
                   start\tt.A.bad\t1.1\nend\tt.A.bad\terror\t0.2\tTraceback\\n\\tline\\\\x\n\
                   start\tt.A.skip\t1.2\nend\tt.A.skip\tskip\t0.0\tno server\n\
                   start\tt.A.hangs\t1.3\n";
        let mut run = Run::default();
        parse_unittest(out, true, &mut run);
        assert_eq!(run.outcomes["t.A.ok"], Outcome::Pass);
        assert_eq!(run.details["t.A.bad"], "Traceback\n\tline\\x");
        assert_eq!(run.outcomes["t.A.skip"], Outcome::Skip);
        assert_eq!(run.outcomes["t.A.hangs"], Outcome::Fail);
    }

    #[test]
    fn differences_count_a_missing_test_as_failed() {
        let mut direct = Run::default();
        let mut proxied = Run::default();
        for (t, o) in [
            ("same", Outcome::Pass),
            ("gone", Outcome::Pass),
            ("skips", Outcome::Pass),
        ] {
            direct.record(t, o, "");
        }
        proxied.record("same", Outcome::Pass, "");
        proxied.record("skips", Outcome::Skip, "");
        let diffs: Vec<String> = differences(&direct, &proxied).into_iter().collect();
        assert_eq!(diffs, ["gone", "skips"]);
    }
}
