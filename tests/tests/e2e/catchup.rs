//! Catch-up: a random workload through a capturing proxy, a clone taken
//! after the barrier with pg_dump/pg_restore, a migration on the clone
//! (type change, added column with a default, renamed column), then the
//! replayer; once the source is quiet and the replayer has caught up, every
//! target table equals the mapped source, row for row.

use crate::capture::Fixture;
use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_replay::catalog::Catalog;
use switchyard_replay::mapping::Mapping;
use switchyard_replay::replayer::{self, ReplayOptions, ReplayStatus};
use tokio_postgres::Client;

const SCHEMA: &str = "
    CREATE TABLE acct (id int PRIMARY KEY, bal int NOT NULL DEFAULT 0, note text);
    CREATE TABLE pair (a int, b text, n int NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
    CREATE TABLE parent (id int PRIMARY KEY, name text);
    CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent (id) ON DELETE CASCADE, v int);
";

const MIGRATION: &str = "
    ALTER TABLE acct ALTER COLUMN bal TYPE bigint;
    ALTER TABLE acct ADD COLUMN flag text NOT NULL DEFAULT 'new';
    ALTER TABLE pair RENAME COLUMN n TO hits;
";

const MAPPING: &str = r#"
    [tables.pair.columns]
    hits = "n"
"#;

async fn workload(c: Client, seed: u64, n: usize) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let id = rng.random_range(1..300);
        let p = rng.random_range(1..60);
        let sql = match rng.random_range(0..8) {
            0 => format!("INSERT INTO acct VALUES ({id}, 1, 'n') ON CONFLICT (id) DO UPDATE SET bal = acct.bal + 1"),
            1 => format!("UPDATE acct SET bal = bal - 2, note = 'u{p}' WHERE id = {id}"),
            2 => format!("DELETE FROM acct WHERE id = {id}"),
            3 => format!("INSERT INTO pair VALUES ({p}, 'k{}', 1) ON CONFLICT (a, b) DO UPDATE SET n = pair.n + 1", id % 5),
            4 => format!("BEGIN; INSERT INTO parent VALUES ({p}, 'p') ON CONFLICT DO NOTHING; INSERT INTO child VALUES ({id}, {p}, 1) ON CONFLICT (id) DO UPDATE SET v = child.v + 1; COMMIT"),
            5 => format!("DELETE FROM parent WHERE id = {p}"),
            6 => format!("DELETE FROM pair WHERE a = {p}"),
            _ => format!("UPDATE child SET v = v * 2 WHERE parent = {p}"),
        };
        if let Err(e) = c.batch_execute(&sql).await {
            ensure!(e.as_db_error().is_some(), "{e:?}");
            let _ = c.batch_execute("ROLLBACK").await;
        }
    }
    Ok(())
}

async fn rows(c: &Client, sql: &str) -> Result<Vec<String>> {
    Ok(c.simple_query(sql)
        .await?
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| format!("{:?}", r.get(i)))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect())
}

/// The replayer from database `postgres` to `target` of the fixture's
/// cluster through `mapping`, on a task of its own, with its status and
/// the sender that stops it.
async fn start_replayer(
    f: &Fixture,
    (source, target): (&Client, &Client),
    mapping: Mapping,
    options: ReplayOptions,
) -> Result<(
    tokio::task::JoinHandle<Result<(), replayer::ReplayError>>,
    Arc<ReplayStatus>,
    tokio::sync::watch::Sender<bool>,
)> {
    let (src_cat, dst_cat) = (Catalog::load(source).await?, Catalog::load(target).await?);
    let resolved = mapping
        .resolve(&src_cat, &dst_cat)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let status = Arc::new(ReplayStatus::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(replayer::run(
        f.cluster.pg_config(f.cluster.superuser(), "postgres"),
        f.cluster.pg_config(f.cluster.superuser(), "target"),
        Arc::new(resolved),
        Arc::new(src_cat),
        Arc::new(dst_cat),
        options,
        status.clone(),
        stop,
    ));
    Ok((task, status, stop_tx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_converges_through_clone_and_migration() -> Result<()> {
    let f = Fixture::start().await?;
    let direct = f.cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    direct.batch_execute("CREATE DATABASE target").await?;
    f.capture_start().await?;
    let mut load = Vec::new();
    for w in 0..3u64 {
        let c = f.proxy.connect("postgres").await?;
        load.push(tokio::spawn(workload(c, 100 + w, 1500)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Clone after the barrier, while writes go on.
    let target = f.clone_into("target").await?;
    target.batch_execute(MIGRATION).await?;

    let options = ReplayOptions {
        log_dir: f.log_path(),
        workers: 3,
        batch_keys: 500,
        idle: Duration::from_millis(2),
        bell: None,
        ..ReplayOptions::default()
    };
    let mapping = Mapping::parse(MAPPING, "mapping.toml")?;
    let (replay, status, stop_tx) = start_replayer(&f, (&direct, &target), mapping, options).await?;
    for l in load {
        l.await??;
    }
    // Quiet source: wait until everything logged is applied.
    let last: u64 = f.show_capture().await?.get("last_lsn").context("last_lsn")?.parse()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while status.confirmed_lsn.load(Relaxed) < last {
        ensure!(!replay.is_finished(), "the replayer stopped: {:?}", replay.await);
        ensure!(
            Instant::now() < deadline,
            "catch-up did not finish: {} of {last}",
            status.confirmed_lsn.load(Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true)?;
    replay.await??;
    println!(
        "catch-up: {} batches, {} rows applied, confirmed {}",
        status.batches.load(Relaxed),
        status.rows_applied.load(Relaxed),
        status.confirmed_lsn.load(Relaxed)
    );
    for (src_sql, dst_sql) in [
        (
            "SELECT id, bal::bigint, note, 'new' FROM acct ORDER BY id",
            "SELECT id, bal, note, flag FROM acct ORDER BY id",
        ),
        (
            "SELECT a, b, n FROM pair ORDER BY a, b",
            "SELECT a, b, hits FROM pair ORDER BY a, b",
        ),
        ("SELECT * FROM parent ORDER BY id", "SELECT * FROM parent ORDER BY id"),
        ("SELECT * FROM child ORDER BY id", "SELECT * FROM child ORDER BY id"),
    ] {
        let (a, b) = (rows(&direct, src_sql).await?, rows(&target, dst_sql).await?);
        ensure!(!a.is_empty() || dst_sql.contains("child"), "no rows in {src_sql}");
        if a != b {
            let diff: Vec<_> = a.iter().filter(|r| !b.contains(r)).take(5).collect();
            let extra: Vec<_> = b.iter().filter(|r| !a.contains(r)).take(5).collect();
            anyhow::bail!(
                "{dst_sql}: source {} rows, target {} rows; missing {diff:?}; extra {extra:?}",
                a.len(),
                b.len()
            );
        }
    }
    Ok(())
}

/// A live replayer gathers keys for `batch_every` between batches: writes
/// that commit one by one on the source reach the target in far fewer
/// target transactions, all of them. Once stopped, its connections close
/// (a little later, not never).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replayer_commits_a_batch_per_interval_not_per_source_commit() -> Result<()> {
    const WRITES: i32 = 150;
    let f = Fixture::start().await?;
    let direct = f.cluster.connect("postgres").await?;
    direct
        .batch_execute("CREATE TABLE tick (id int PRIMARY KEY, v int NOT NULL)")
        .await?;
    direct.batch_execute("CREATE DATABASE target").await?;
    f.capture_start().await?;
    let target = f.clone_into("target").await?;
    let options = ReplayOptions {
        log_dir: f.log_path(),
        workers: 1,
        batch_every: Duration::from_millis(100),
        ..ReplayOptions::default()
    };
    let (replay, status, stop_tx) = start_replayer(&f, (&direct, &target), Mapping::default(), options).await?;
    // One autocommit write every 5 ms for about 0.75 s: a batch per
    // commit would be 150 target transactions, one per 100 ms about 8.
    let app = f.proxy.connect("postgres").await?;
    for i in 0..WRITES {
        app.execute("INSERT INTO tick VALUES ($1, $1 * 2)", &[&i]).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last: u64 = f.show_capture().await?.get("last_lsn").context("last_lsn")?.parse()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while status.confirmed_lsn.load(Relaxed) < last {
        ensure!(!replay.is_finished(), "the replayer stopped: {:?}", replay.await);
        ensure!(Instant::now() < deadline, "catch-up did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let batches = status.batches.load(Relaxed);
    stop_tx.send(true)?;
    replay.await??;
    let (a, b) = (
        rows(&direct, "SELECT id, v FROM tick ORDER BY id").await?,
        rows(&target, "SELECT id, v FROM tick ORDER BY id").await?,
    );
    ensure!(
        a.len() == WRITES as usize && a == b,
        "target {} rows of the source's {}",
        b.len(),
        a.len()
    );
    ensure!(
        batches <= WRITES as u64 / 4,
        "{batches} target transactions for {WRITES} source commits: keys were not gathered"
    );
    // Its connections to the target close after a short linger.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: i64 = target
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'target' AND pid <> pg_backend_pid()",
                &[],
            )
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{left} replayer connection(s) still open 5 s after it stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
