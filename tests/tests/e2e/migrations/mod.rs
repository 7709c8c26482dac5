//! Migration scenarios for catch-up, one test each: added, renamed, retyped,
//! split, backfilled and dropped columns, cascading foreign keys, composite
//! keys and renamed tables. A random workload runs through a capturing proxy
//! while the source is cloned (pg_dump after the barrier), the clone is
//! migrated and the replayer catches up while the workload still runs; once
//! the source is quiet and the log is drained, every target table equals the
//! mapped source, row for row. Then the replayer is crashed mid-batch again
//! and again: it resumes from its stored position without divergence, and
//! that position never goes back. Races between workers and between capture
//! and replay are staged deterministically by holding a worker's commit.

use crate::capture::Fixture;
use crate::support::within;
use anyhow::{anyhow, bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_replay::catalog::Catalog;
use switchyard_replay::mapping::{Mapping, Resolved};
use switchyard_replay::replayer::{self, ReplayError, ReplayOptions, ReplayStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Makes one workload statement (or a transaction block) from the RNG.
type Gen = fn(&mut StdRng) -> String;

/// Application name of the replayer's connections, so a crash can end them.
const REPLAYER_APP: &str = "switchyard-replay";

/// Pause between one connection's statements, so the load spans the clone.
const PACE: Duration = Duration::from_millis(1);

/// One migration: what the source looks like, what the target becomes, how
/// rows map, what the clients do meanwhile and how to check the result.
struct Scenario {
    /// Seeds the workload RNGs (printed, so a failure can be replayed).
    seed: u64,
    /// The source schema, created before capture starts.
    schema: &'static str,
    /// Rows present before capture starts; they reach the target by the clone.
    rows: &'static str,
    /// Applied to the clone.
    migration: &'static str,
    /// The mapping file.
    mapping: &'static str,
    /// When set, resolving an empty mapping must fail naming this.
    needs_mapping: Option<&'static str>,
    /// The workload.
    load: Gen,
    /// Pairs of ordered queries: the source one spells out the mapping.
    compare: &'static [(&'static str, &'static str)],
}

/// The source cluster behind a capturing proxy, with schema and rows, an
/// empty `target` database, and capture on.
async fn start(schema: &str, rows: &str) -> Result<(Fixture, Client)> {
    let f = Fixture::start().await?;
    let source = f.cluster.connect("postgres").await?;
    source.batch_execute(schema).await.context("source schema")?;
    source.batch_execute(rows).await.context("source rows")?;
    source.batch_execute("CREATE DATABASE target").await?;
    f.capture_start().await?;
    Ok((f, source))
}

/// A concurrent workload through the proxy: each connection runs `before`
/// statements, waits for the replayer to start, then at most `after` more
/// (fewer if stopped). Statements that fail on constraints or deadlocks are
/// rolled back and counted; any other error fails the load.
struct Load {
    tasks: Vec<JoinHandle<Result<(usize, usize)>>>,
    go: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    done: Arc<AtomicUsize>,
}

impl Load {
    async fn start(f: &Fixture, gen: Gen, seed: u64, conns: u64, before: usize, after: usize) -> Result<Load> {
        let (go, go_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..conns {
            let c = f.proxy.connect("postgres").await?;
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(i));
            let (mut go, stop, done) = (go_rx.clone(), stop_rx.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut counts = (0, 0);
                for _ in 0..before {
                    statement(&c, &gen(&mut rng), &mut counts, &done).await?;
                    tokio::time::sleep(PACE).await;
                }
                within(Duration::from_secs(60), "replayer start", go.wait_for(|g| *g)).await??;
                for _ in 0..after {
                    if *stop.borrow() {
                        break;
                    }
                    statement(&c, &gen(&mut rng), &mut counts, &done).await?;
                    tokio::time::sleep(PACE).await;
                }
                Ok(counts)
            }));
        }
        Ok(Load { tasks, go, stop, done })
    }

    /// Statements committed so far.
    fn done(&self) -> usize {
        self.done.load(Relaxed)
    }

    /// The replayer runs: start the second phase.
    fn replaying(&self) {
        self.go.send_replace(true);
    }

    /// Ends the second phase early.
    fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits for every connection; returns (committed, rolled back).
    async fn finish(self) -> Result<(usize, usize)> {
        self.replaying();
        let mut total = (0, 0);
        for t in self.tasks {
            let (ok, failed) = within(Duration::from_secs(60), "workload", t).await???;
            total = (total.0 + ok, total.1 + failed);
        }
        ensure!(total.0 > total.1, "most statements failed: {total:?}");
        Ok(total)
    }
}

async fn statement(c: &Client, sql: &str, counts: &mut (usize, usize), done: &AtomicUsize) -> Result<()> {
    match c.batch_execute(sql).await {
        Ok(()) => {
            counts.0 += 1;
            done.fetch_add(1, Relaxed);
        }
        Err(e) => {
            let expected = [
                SqlState::FOREIGN_KEY_VIOLATION,
                SqlState::UNIQUE_VIOLATION,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::T_R_SERIALIZATION_FAILURE,
            ];
            ensure!(
                e.code().is_some_and(|c| expected.contains(c)),
                "workload statement failed unexpectedly: {sql}: {e:?}"
            );
            counts.1 += 1;
            c.batch_execute("ROLLBACK").await?;
        }
    }
    Ok(())
}

/// Clones the source into `target` with pg_dump/pg_restore and migrates it.
/// The returned connection to the target is not one of the replayer's.
async fn clone_and_migrate(f: &Fixture, migration: &str) -> Result<Client> {
    let target = f.clone_into("target").await?;
    target.batch_execute(migration).await.context("migration")?;
    Ok(target)
}

/// A mapping resolved against both catalogs, ready for the replayer.
#[derive(Clone)]
struct Plan {
    mapping: Arc<Resolved>,
    source: Arc<Catalog>,
    target: Arc<Catalog>,
}

async fn resolve(source: &Client, target: &Client, mapping: &str) -> Result<Plan> {
    let (src, dst) = (Catalog::load(source).await?, Catalog::load(target).await?);
    let resolved = Mapping::parse(mapping, "mapping.toml")?
        .resolve(&src, &dst)
        .map_err(|e| anyhow!("mapping does not resolve: {e:?}"))?;
    Ok(Plan {
        mapping: Arc::new(resolved),
        source: Arc::new(src),
        target: Arc::new(dst),
    })
}

/// Resolving an empty mapping fails, and the errors mention `what`.
async fn empty_mapping_fails(source: &Client, target: &Client, what: &str) -> Result<()> {
    let (src, dst) = (Catalog::load(source).await?, Catalog::load(target).await?);
    match Mapping::default().resolve(&src, &dst) {
        Ok(_) => bail!("an empty mapping resolved, but the migration needs one"),
        Err(errors) => {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            ensure!(all.iter().any(|e| e.contains(what)), "expected {what:?} in {all:?}");
            Ok(())
        }
    }
}

/// A running replayer.
struct Replay {
    task: JoinHandle<Result<(), ReplayError>>,
    status: Arc<ReplayStatus>,
    stop: watch::Sender<bool>,
}

impl Replay {
    fn spawn(f: &Fixture, plan: &Plan, workers: usize, batch_keys: usize) -> Replay {
        let config = |db: &str| {
            let mut c = f.cluster.pg_config(f.cluster.superuser(), db);
            c.application_name(REPLAYER_APP);
            c
        };
        let status = Arc::new(ReplayStatus::default());
        let (stop, stop_rx) = watch::channel(false);
        let options = ReplayOptions {
            log_dir: f.log_path(),
            workers,
            batch_keys,
            idle: Duration::from_millis(2),
            bell: None,
            ..ReplayOptions::default()
        };
        let task = tokio::spawn(replayer::run(
            config("postgres"),
            config("target"),
            plan.mapping.clone(),
            plan.source.clone(),
            plan.target.clone(),
            options,
            status.clone(),
            stop_rx,
        ));
        Replay { task, status, stop }
    }

    /// Once the source is quiet: waits until everything logged is applied,
    /// then stops the replayer.
    async fn drain(self, f: &Fixture) -> Result<Arc<ReplayStatus>> {
        let last: u64 = f.show_capture().await?.get("last_lsn").context("last_lsn")?.parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.status.confirmed_lsn.load(Relaxed) < last {
            ensure!(!self.task.is_finished(), "the replayer stopped: {:?}", self.task.await);
            ensure!(
                Instant::now() < deadline,
                "catch-up did not finish: {} of {last}",
                self.status.confirmed_lsn.load(Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.send_replace(true);
        within(Duration::from_secs(30), "replayer stop", self.task).await???;
        Ok(self.status)
    }
}

/// Every row of `sql`, in order, each as one line.
async fn rows(c: &Client, sql: &str) -> Result<Vec<String>> {
    let messages = c.simple_query(sql).await.with_context(|| sql.to_owned())?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).map_or("NULL".to_owned(), |v| format!("{v:?}")))
                    .collect::<Vec<_>>()
                    .join(" | "),
            ),
            _ => None,
        })
        .collect())
}

/// Each source query's rows equal its target query's rows, in order; on a
/// mismatch the error shows where they part and what is missing or extra.
async fn compare(source: &Client, target: &Client, pairs: &[(&str, &str)]) -> Result<()> {
    for (src_sql, dst_sql) in pairs {
        let (a, b) = (rows(source, src_sql).await?, rows(target, dst_sql).await?);
        ensure!(
            !a.is_empty(),
            "the source has no rows for {src_sql}; the scenario checks nothing"
        );
        if a == b {
            println!("{} rows equal: {dst_sql}", a.len());
            continue;
        }
        let first = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        let (sa, sb): (HashSet<&String>, HashSet<&String>) = (a.iter().collect(), b.iter().collect());
        let missing: Vec<_> = a.iter().filter(|r| !sb.contains(r)).collect();
        let extra: Vec<_> = b.iter().filter(|r| !sa.contains(r)).collect();
        bail!(
            "target differs from the mapped source\n  source: {src_sql}\n  target: {dst_sql}\n  \
             {} source rows, {} target rows; first difference at row {first}: source {:?}, target {:?}\n  \
             {} missing on the target, first: {:?}\n  {} extra on the target, first: {:?}",
            a.len(),
            b.len(),
            a.get(first),
            b.get(first),
            missing.len(),
            &missing[..missing.len().min(8)],
            extra.len(),
            &extra[..extra.len().min(8)],
        );
    }
    Ok(())
}

/// Runs a scenario: clone while the load runs, migrate, replay while the load
/// still runs, drain, compare.
async fn run(s: Scenario) -> Result<()> {
    let started = Instant::now();
    println!("seed {}", s.seed);
    let (f, source) = start(s.schema, s.rows).await?;
    let load = Load::start(&f, s.load, s.seed, 3, 250, 150).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before_clone = load.done();
    let target = clone_and_migrate(&f, s.migration).await?;
    ensure!(
        load.done() > before_clone,
        "no write committed while the clone was taken"
    );
    if let Some(what) = s.needs_mapping {
        empty_mapping_fails(&source, &target, what).await?;
    }
    let plan = resolve(&source, &target, s.mapping).await?;
    // Two workers, so keys followed through foreign keys cross between
    // workers; more mostly add lock waits that end in deadlock detection.
    let replay = Replay::spawn(&f, &plan, 2, 200);
    load.replaying();
    let replaying = started.elapsed();
    let (ok, failed) = load.finish().await?;
    let quiet = started.elapsed();
    let status = replay.drain(&f).await?;
    println!(
        "{ok} statements committed, {failed} rolled back; {} batches, {} rows applied; replay started at \
         {replaying:?}, load ended at {quiet:?}, drained at {:?}",
        status.batches.load(Relaxed),
        status.rows_applied.load(Relaxed),
        started.elapsed()
    );
    compare(&source, &target, s.compare).await
}

/// A random id in `1..n`.
fn id(rng: &mut StdRng, n: i32) -> i32 {
    rng.random_range(1..n)
}

mod crashes;
mod scenarios;
