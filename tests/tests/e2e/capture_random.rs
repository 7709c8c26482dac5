//! Randomized concurrent workloads through a capturing proxy, checked
//! against the WAL: every key a committed transaction wrote after the
//! barrier must be in the capture log. Also: a seeded single-client
//! sequence gives the client identical results with capture on and off.
//!
//! `SWITCHYARD_CAPTURE_TXS` sets the number of transactions of the
//! concurrent run (default 10,000).

use crate::capture::Fixture;
use crate::oracle::{logged_keys, written_keys, WalOracle};
use crate::support::trusting_config;
use anyhow::{ensure, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard_tests::{Cluster, TestProxy};
use tokio_postgres::{Client, SimpleQueryMessage};

const SCHEMA: &str = "
    CREATE TABLE acct (id int PRIMARY KEY, bal bigint NOT NULL DEFAULT 0, note text);
    CREATE TABLE pair (a int, b text, n int NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
    CREATE TABLE tag (code text NOT NULL UNIQUE, hits int NOT NULL DEFAULT 0);
    CREATE TABLE ev (id bigserial PRIMARY KEY, acct int, at date DEFAULT '2026-01-01');
";

fn key_columns(table: &str) -> Option<Vec<String>> {
    match table {
        "public.acct" | "public.ev" => Some(vec!["id".into()]),
        "public.pair" => Some(vec!["a".into(), "b".into()]),
        "public.tag" => Some(vec!["code".into()]),
        _ => None,
    }
}

const IDS: i32 = 400;

/// One random write statement (simple-protocol text).
fn write(rng: &mut StdRng) -> String {
    let id = rng.random_range(1..=IDS);
    let a = rng.random_range(1..=40);
    let b = ["x", "y", "it's", "Z z"][rng.random_range(0..4)].replace('\'', "''");
    match rng.random_range(0..11) {
        0 => format!("INSERT INTO acct (id, bal) VALUES ({id}, 1) ON CONFLICT (id) DO UPDATE SET bal = acct.bal + 1"),
        1 => format!("UPDATE acct SET bal = bal - 1, note = 'u' WHERE id = {id}"),
        2 => format!("DELETE FROM acct WHERE id = {id}"),
        3 => format!("INSERT INTO pair (a, b) VALUES ({a}, '{b}') ON CONFLICT DO NOTHING"),
        4 => format!("UPDATE pair SET n = n + 1 WHERE a = {a}"),
        5 => format!("DELETE FROM pair WHERE a = {a} AND b = '{b}'"),
        6 => format!("INSERT INTO tag (code) VALUES ('c{a}') ON CONFLICT (code) DO UPDATE SET hits = tag.hits + 1"),
        7 => format!("UPDATE acct SET bal = acct.bal + p.n FROM pair p WHERE p.a = {a} AND acct.id = p.a * 7"),
        8 => format!("DELETE FROM pair USING acct WHERE pair.a = {a} AND acct.id = pair.a AND acct.bal < 0"),
        9 => format!("INSERT INTO ev (acct) VALUES ({id})"),
        _ => format!("INSERT INTO acct (id) VALUES ({id})"), // may fail: duplicate key
    }
}

/// Runs one random transaction; errors from the database are expected
/// (duplicate keys) and ignored, anything else fails the test.
async fn transaction(c: &Client, rng: &mut StdRng) -> Result<()> {
    let shape = rng.random_range(0..10);
    let r: Result<(), tokio_postgres::Error> = async {
        match shape {
            // Autocommit, simple protocol.
            0 => c.batch_execute(&write(rng)).await,
            // Explicit block, statement per message, maybe a savepoint rolled back.
            1 => {
                c.batch_execute("BEGIN").await?;
                for _ in 0..rng.random_range(1..4) {
                    c.batch_execute(&write(rng)).await?;
                }
                if rng.random_bool(0.4) {
                    c.batch_execute("SAVEPOINT s1").await?;
                    c.batch_execute(&write(rng)).await?;
                    if rng.random_bool(0.5) {
                        c.batch_execute("ROLLBACK TO SAVEPOINT s1").await?;
                    } else {
                        c.batch_execute("RELEASE s1").await?;
                    }
                    c.batch_execute(&write(rng)).await?;
                }
                c.batch_execute(if rng.random_bool(0.85) { "COMMIT" } else { "ROLLBACK" })
                    .await
            }
            // A whole block in one query.
            2 => {
                let sql = format!("BEGIN; {}; {}; COMMIT", write(rng), write(rng));
                c.batch_execute(&sql).await
            }
            // Multi-statement autocommit (one implicit transaction).
            3 => {
                let sql = format!("{}; {}", write(rng), write(rng));
                c.batch_execute(&sql).await
            }
            // Extended protocol, autocommit, with and without RETURNING.
            4 => {
                let id = rng.random_range(1..=IDS);
                c.execute(
                    "INSERT INTO acct (id, bal) VALUES ($1, 5) ON CONFLICT (id) DO UPDATE SET bal = excluded.bal",
                    &[&id],
                )
                .await?;
                let rows = c
                    .query("UPDATE acct SET note = $2 WHERE id = $1 RETURNING bal", &[&id, &"r"])
                    .await?;
                // Another client may have deleted it in between; never twice.
                if rows.len() > 1 || rows.iter().any(|r| r.len() != 1) {
                    panic!("RETURNING bal must give at most one row of one column: {rows:?}");
                }
                Ok(())
            }
            // Extended protocol inside a transaction (simple BEGIN/COMMIT from tokio-postgres).
            5 => {
                c.batch_execute("BEGIN").await?;
                let a = rng.random_range(1..=40);
                c.execute(
                    "INSERT INTO pair (a, b, n) VALUES ($1, 'e', 1) ON CONFLICT (a, b) DO UPDATE SET n = pair.n + 1",
                    &[&a],
                )
                .await?;
                c.execute("DELETE FROM acct WHERE id = $1", &[&rng.random_range(1..=IDS)])
                    .await?;
                c.batch_execute("COMMIT").await
            }
            // Pipelined autocommit writes.
            6 => {
                let (x, y) = (rng.random_range(1..=IDS), rng.random_range(1..=IDS));
                let (px, py): (
                    [&(dyn tokio_postgres::types::ToSql + Sync); 1],
                    [&(dyn tokio_postgres::types::ToSql + Sync); 1],
                ) = ([&x], [&y]);
                let (r1, r2) = tokio::join!(
                    c.execute("UPDATE acct SET bal = bal + 1 WHERE id = $1", &px),
                    c.execute("INSERT INTO ev (acct) VALUES ($1)", &py)
                );
                r1?;
                r2?;
                Ok(())
            }
            // A failed block: error, then ROLLBACK.
            7 => {
                c.batch_execute("BEGIN").await?;
                c.batch_execute(&write(rng)).await?;
                let _ = c.batch_execute("INSERT INTO acct (id) VALUES (NULL)").await; // not-null violation
                c.batch_execute("ROLLBACK").await
            }
            // COPY FROM STDIN: keys read from the data (duplicates fail the COPY).
            8 => {
                use futures_util::SinkExt;
                let a = rng.random_range(1..=40);
                let rows = format!(
                    "{a}\tcopy{}\t1\n{a}\tcopy{}\t2\n",
                    rng.random_range(0..1000),
                    rng.random_range(0..1000)
                );
                let sink = c.copy_in("COPY pair (a, b, n) FROM STDIN").await?;
                futures_util::pin_mut!(sink);
                sink.send(bytes::Bytes::from(rows)).await?;
                sink.finish().await.map(|_| ())
            }
            _ => c
                .query("SELECT count(*) FROM acct WHERE bal > $1", &[&0i64])
                .await
                .map(|_| ()),
        }
    }
    .await;
    if let Err(e) = r {
        ensure!(e.as_db_error().is_some(), "non-database error: {e:?}");
        // Leave no block open for the next transaction.
        c.batch_execute("ROLLBACK").await.ok();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_concurrent_workload_loses_no_committed_key() -> Result<()> {
    let total: usize = std::env::var("SWITCHYARD_CAPTURE_TXS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let f = Fixture::start().await?;
    let direct = f.cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    // Traffic before capture starts, and a session mid-transaction across it.
    let c0 = f.proxy.connect("postgres").await?;
    c0.batch_execute("INSERT INTO acct (id) SELECT g FROM generate_series(1, 100) g")
        .await?;
    let oracle = WalOracle::create(&direct, "capture_random").await?;
    f.capture_start().await?;

    const CLIENTS: usize = 4;
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let c = f.proxy.connect("postgres").await?;
        let n = total / CLIENTS;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(0x5eed + w as u64);
            for _ in 0..n {
                transaction(&c, &mut rng).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let wal = oracle.drain(&direct).await?;
    oracle.drop_slot(&direct).await?;
    let shown = f.show_capture().await?;
    f.admin.simple_query("CAPTURE STOP").await?;
    let truth = written_keys(&wal, key_columns);
    let logged = logged_keys(&f.log_path())?;
    let missing: Vec<_> = truth.difference(&logged).take(20).collect();
    let extra = logged.difference(&truth).count();
    println!(
        "capture oracle: {} WAL transactions, {} keys written, {} keys logged, {} missing, {} logged but not written ({:.2}% false positives); capture: {:?}",
        wal.len(),
        truth.len(),
        logged.len(),
        missing.len(),
        extra,
        100.0 * extra as f64 / logged.len().max(1) as f64,
        shown
    );
    ensure!(
        missing.is_empty(),
        "committed keys missing from the capture log: {missing:?}"
    );
    ensure!(shown.get("late_logged").map(String::as_str) == Some("0"), "{shown:?}");
    ensure!(truth.len() > 100, "the workload wrote too little to mean anything");
    Ok(())
}

/// Renders everything a client gets back from a simple query.
fn render(r: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>) -> String {
    match r {
        Err(e) => format!("error {:?}", e.code().map(|c| c.code())),
        Ok(ms) => ms
            .iter()
            .map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    let cols: Vec<String> = (0..r.len()).map(|i| format!("{:?}", r.get(i))).collect();
                    format!("row[{}]", cols.join(","))
                }
                SimpleQueryMessage::CommandComplete(n) => format!("done {n}"),
                SimpleQueryMessage::RowDescription(d) => {
                    let names: Vec<&str> = d.iter().map(|c| c.name()).collect();
                    format!("cols[{}]", names.join(","))
                }
                _ => "other".into(),
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

async fn run_sequence(c: &Client, seed: u64, n: usize) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let sql = match rng.random_range(0..6) {
            0 => format!("{} RETURNING *", write(&mut rng).replace(" ON CONFLICT DO NOTHING", "")),
            1 => format!("BEGIN; {}; {}; COMMIT", write(&mut rng), write(&mut rng)),
            2 => "SELECT id, bal, note FROM acct ORDER BY id LIMIT 5".to_owned(),
            _ => write(&mut rng),
        };
        out.push(format!("{sql} => {}", render(c.simple_query(&sql).await)));
        let _ = c.batch_execute("ROLLBACK").await;
        let id = rng.random_range(1..=IDS);
        let r = c
            .query("UPDATE acct SET bal = bal * 2 WHERE id = $1 RETURNING id, bal", &[&id])
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| format!("{}:{}", r.get::<_, i32>(0), r.get::<_, i64>(1)))
                    .collect::<Vec<_>>()
            });
        out.push(format!("ext {id} => {r:?}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_the_same_results_with_capture_on_and_off() -> Result<()> {
    let off_cluster = Cluster::start().await?;
    let mut config = trusting_config(off_cluster.host(), off_cluster.port());
    config.source.password = off_cluster.auth().password().map(str::to_owned);
    let off_proxy = TestProxy::start_with(config)
        .await?
        .with_login(off_cluster.superuser(), None);
    let on = Fixture::in_front_of(Cluster::start().await?).await?;
    for cluster in [&off_cluster, &on.cluster] {
        cluster.connect("postgres").await?.batch_execute(SCHEMA).await?;
    }
    on.capture_start().await?;
    let off_client = off_proxy.connect("postgres").await?;
    let on_client = on.proxy.connect("postgres").await?;
    let off = run_sequence(&off_client, 7, 300).await;
    let on_results = run_sequence(&on_client, 7, 300).await;
    for (i, (a, b)) in off.iter().zip(&on_results).enumerate() {
        ensure!(a == b, "result {i} differs:\n  capture off: {a}\n  capture on:  {b}");
    }
    Ok(())
}
