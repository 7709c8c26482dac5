//! The full cycle under load: capture, clone, a migration on the target
//! (a type change, a renamed column, a new NOT NULL column backfilled),
//! catch-up, then CUTOVER while tokio-postgres clients (autocommit and
//! explicit transactions, prepared statements, a SET, a LISTEN) and
//! pgbench keep writing. Every write reports the port of the server that
//! committed it, so the test knows exactly what each side must hold: the
//! target every write any client saw committed, the source exactly those
//! committed before the flip.

use super::{Cut, PORT};
use crate::support::table;
use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const SCHEMA: &str = "
    CREATE TABLE acct (id int PRIMARY KEY, bal int NOT NULL, note text);
    INSERT INTO acct SELECT g, 0, 'seed' FROM generate_series(1, 400) g;
    CREATE TABLE pair (a int, b text, n int NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
    CREATE TABLE events (id bigserial PRIMARY KEY, client int NOT NULL, seq int NOT NULL, payload text);
";

const MIGRATION: &str = "
    ALTER TABLE acct ALTER COLUMN bal TYPE bigint;
    ALTER TABLE acct ADD COLUMN note_len int;
    UPDATE acct SET note_len = length(coalesce(note, ''));
    ALTER TABLE acct ALTER COLUMN note_len SET DEFAULT 0, ALTER COLUMN note_len SET NOT NULL;
    ALTER TABLE pair RENAME COLUMN n TO hits;
";

const MAPPING: &str = r#"
[tables.pair.columns]
hits = "n"

[tables.acct.columns]
note_len = "length(coalesce(note, ''))"
"#;

const CLIENTS: usize = 4;

/// One client's view of what it committed, and where.
#[derive(Debug, Default)]
struct Journal {
    /// acct id -> (bal, note) after every committed write, all servers.
    acct: BTreeMap<i32, (i64, String)>,
    /// The same, counting only writes the source committed.
    acct_source: BTreeMap<i32, (i64, String)>,
    pairs: BTreeSet<(i32, String)>,
    pairs_source: BTreeSet<(i32, String)>,
    /// (id, client, seq, payload, port).
    events: Vec<(i64, i32, i32, String, i32)>,
    /// The port of each committed write, in order.
    ports: Vec<i32>,
    /// Errors (there must be none).
    errors: Vec<String>,
}

async fn client_load(mut c: Client, me: usize, source_port: i32, stop: Arc<AtomicBool>) -> Result<Journal> {
    let mut j = Journal::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(me as u64 + 11);
    let own = |k: i32| (k * CLIENTS as i32 + me as i32) % 400 + 1;
    for k in 0..400 / CLIENTS as i32 {
        j.acct.insert(own(k), (0, "seed".into()));
        j.acct_source.insert(own(k), (0, "seed".into()));
    }
    let update = c
        .prepare(&format!(
            "UPDATE acct SET bal = bal + $1::int, note = $2::text WHERE id = $3::int RETURNING bal::bigint, {PORT}"
        ))
        .await?;
    let insert = c
        .prepare(&format!(
            "INSERT INTO events (client, seq, payload) VALUES ($1::int, $2::int, $3::text) RETURNING id, {PORT}"
        ))
        .await?;
    // Until the test says stop (after the cutover), however long the clone
    // and catch-up take on a busy machine; bounded all the same.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seq = 0;
    while !stop.load(Relaxed) && Instant::now() < deadline && seq < 1_000_000 {
        seq += 1;
        let id = own(rng.random_range(0..400 / CLIENTS as i32));
        let note = format!("c{me}s{seq}");
        let r: Result<()> = async {
            match rng.random_range(0..4) {
                0 => {
                    let delta = rng.random_range(-5..=5);
                    let row = c.query_one(&update, &[&delta, &note, &id]).await?;
                    let (bal, port): (i64, i32) = (row.get(0), row.get(1));
                    j.acct.insert(id, (bal, note.clone()));
                    if port == source_port {
                        j.acct_source.insert(id, (bal, note.clone()));
                    }
                    j.ports.push(port);
                }
                1 => {
                    // A transfer between two of its rows plus an event, in
                    // one explicit transaction.
                    let other = own(rng.random_range(0..400 / CLIENTS as i32));
                    let tx = c.transaction().await?;
                    let a = tx.query_one(&update, &[&-3i32, &note, &id]).await?;
                    let b = tx.query_one(&update, &[&3i32, &note, &other]).await?;
                    let payload = format!("transfer {id}->{other}");
                    let e = tx.query_one(&insert, &[&(me as i32), &seq, &payload]).await?;
                    tx.commit().await?;
                    let port: i32 = e.get(1);
                    ensure!(
                        a.get::<_, i32>(1) == port && b.get::<_, i32>(1) == port,
                        "one transaction, two servers"
                    );
                    for (key, row) in [(id, &a), (other, &b)] {
                        j.acct.insert(key, (row.get(0), note.clone()));
                        if port == source_port {
                            j.acct_source.insert(key, (row.get(0), note.clone()));
                        }
                    }
                    j.events.push((e.get(0), me as i32, seq, payload, port));
                    j.ports.push(port);
                }
                2 => {
                    let a = own(rng.random_range(0..30));
                    let b = format!("k{}", rng.random_range(0..3));
                    let insert = rng.random_bool(0.6);
                    let sql = if insert {
                        format!("INSERT INTO pair (a, b) VALUES ({a}, '{b}') ON CONFLICT DO NOTHING RETURNING {PORT}")
                    } else {
                        format!("DELETE FROM pair WHERE a = {a} AND b = '{b}' RETURNING {PORT}")
                    };
                    let port = super::write_port(&c, &sql).await?;
                    super::track(&mut j.pairs, &mut j.pairs_source, (a, b), insert, port == source_port);
                    j.ports.push(port);
                }
                _ => {
                    let payload = format!("event {seq}");
                    let e = c.query_one(&insert, &[&(me as i32), &seq, &payload]).await?;
                    j.events.push((e.get(0), me as i32, seq, payload, e.get(1)));
                    j.ports.push(e.get(1));
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            j.errors.push(format!("{e:#}"));
            if j.errors.len() > 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..4))).await;
    }
    Ok(j)
}

async fn rows(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    Ok(table(c, sql).await?.rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_under_load_loses_nothing_and_keeps_every_session() -> Result<()> {
    let cut = Cut::start(SCHEMA, MAPPING, |_| {}).await?;
    let source_port = cut.source.port() as i32;
    let target_port = cut.target.port() as i32;
    // pgbench's tables, with the key its history lacks (capture needs one).
    let out = cut.source.pgbench("postgres", &["-i", "-s", "1", "-q"]).await?;
    ensure!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cut.source
        .connect("postgres")
        .await?
        .batch_execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
        .await?;
    cut.capture().await?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for me in 0..CLIENTS {
        let c = cut.proxy.connect("postgres").await?;
        load.push(tokio::spawn(client_load(c, me, source_port, stop.clone())));
    }
    // A session with state of its own: a setting and a LISTEN.
    let (listener, mut heard) = crate::support::connect_listening(&cut.proxy.pg_config("postgres")).await?;
    listener
        .batch_execute("SET search_path = public, pg_catalog; SET application_name = 'cycle listener'; LISTEN cycle")
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut.clone_and_migrate(MIGRATION).await?;
    // pgbench runs across the cutover.
    let pgbench = {
        let ep = cut.proxy.endpoint();
        tokio::spawn(async move {
            ep.command("pgbench", "postgres")
                .args([
                    "-n", "-c", "2", "-j", "1", "-T", "6", "-R", "150", "-M", "prepared", "postgres",
                ])
                .output()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    let outcome = cut.cutover("").await?;
    let report = outcome.done()?.clone();
    println!("cutover notices:\n{}\nreport: {report:#?}", outcome.notices.join("\n"));
    ensure!(report["state"] == "done", "{report:?}");
    let pause: f64 = report["pause_ms"].parse()?;
    ensure!(pause > 0.0, "{report:?}");
    ensure!(report["sessions_closed"] == "0", "{report:?}");
    ensure!(report["sessions_moved"].parse::<usize>()? > CLIENTS, "{report:?}");
    for step in [
        "preflight",
        "freeze",
        "final_sync",
        "sequences",
        "verify",
        "flip",
        "reopen",
    ] {
        ensure!(
            outcome
                .notices
                .iter()
                .any(|n| n.starts_with(&format!("cutover: {step} "))),
            "no notice for {step}: {:?}",
            outcome.notices
        );
    }
    let status = cut.status().await?;
    ensure!(
        status["route"] == "target" && status["state"] == "serving",
        "{status:?}"
    );

    // The session with state kept it, and hears a notification sent on
    // the target by another session.
    let shown = table(&listener, "SHOW search_path").await?;
    ensure!(shown.rows[0][0].as_deref() == Some("public, pg_catalog"), "{shown:?}");
    let port: i32 = listener.query_one(&format!("SELECT {PORT}"), &[]).await?.get(0);
    ensure!(port == target_port, "the listener is on port {port}");
    let sender = cut.proxy.connect("postgres").await?;
    sender.batch_execute("NOTIFY cycle, 'after the flip'").await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = tokio::time::timeout_at(deadline.into(), heard.recv())
            .await
            .context("no notification after the flip")?;
        if let Some(tokio_postgres::AsyncMessage::Notification(n)) = m {
            ensure!(n.payload() == "after the flip", "{n:?}");
            break;
        }
    }
    // Cancel keeps working on the target.
    let token = listener.cancel_token();
    let sleeping = tokio::spawn(async move { listener.batch_execute("SELECT pg_sleep(20)").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    token.cancel_query(tokio_postgres::NoTls).await?;
    let cancelled = tokio::time::timeout(Duration::from_secs(5), sleeping).await??;
    crate::support::expect_sqlstate(cancelled, "57014")?;

    // Writes go on on the target for a moment, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    let mut journals = Vec::new();
    for l in load {
        journals.push(l.await??);
    }
    let bench = pgbench.await??;
    let bench_out = String::from_utf8_lossy(&bench.stdout).to_string() + &String::from_utf8_lossy(&bench.stderr);
    ensure!(
        bench.status.success(),
        "pgbench through the cutover failed:\n{bench_out}"
    );
    ensure!(
        !bench_out.contains("number of failed transactions") || bench_out.contains("number of failed transactions: 0"),
        "{bench_out}"
    );

    let source = cut.source.connect("postgres").await?;
    let target = cut.target.connect("postgres").await?;
    let mut after_flip = 0;
    for (me, j) in journals.iter().enumerate() {
        ensure!(j.errors.is_empty(), "client {me} saw errors: {:?}", j.errors);
        // Once on the target, never back on the source.
        let first_target = j.ports.iter().position(|p| *p == target_port);
        let first = first_target.with_context(|| format!("client {me} never reached the target"))?;
        ensure!(
            j.ports[first..].iter().all(|p| *p == target_port),
            "client {me} wrote to the source after the flip"
        );
        after_flip += j.ports.len() - first;
    }
    ensure!(after_flip > 0, "no write after the flip");

    // acct: the target holds every committed write, the source exactly
    // those before the flip.
    let mut all = BTreeMap::new();
    let mut before = BTreeMap::new();
    for j in &journals {
        all.extend(j.acct.clone());
        before.extend(j.acct_source.clone());
    }
    let as_rows = |m: &BTreeMap<i32, (i64, String)>| -> Vec<Vec<Option<String>>> {
        m.iter()
            .map(|(id, (bal, note))| vec![Some(id.to_string()), Some(bal.to_string()), Some(note.clone())])
            .collect()
    };
    let q = "SELECT id, bal, note FROM acct ORDER BY id";
    ensure!(
        rows(&target, q).await? == as_rows(&all),
        "target acct differs from what clients committed"
    );
    ensure!(
        rows(&source, q).await? == as_rows(&before),
        "source acct differs from what it committed"
    );
    // pair, through the renamed column's table.
    let mut pairs = BTreeSet::new();
    let mut pairs_before = BTreeSet::new();
    for j in &journals {
        pairs.extend(j.pairs.clone());
        pairs_before.extend(j.pairs_source.clone());
    }
    let pair_rows = |s: &BTreeSet<(i32, String)>| -> Vec<Vec<Option<String>>> {
        s.iter()
            .map(|(a, b)| vec![Some(a.to_string()), Some(b.clone())])
            .collect()
    };
    let q = "SELECT a, b FROM pair ORDER BY a, b";
    ensure!(rows(&target, q).await? == pair_rows(&pairs), "target pair differs");
    ensure!(
        rows(&source, q).await? == pair_rows(&pairs_before),
        "source pair differs"
    );
    // events: every insert on its side, no duplicate ids (sequences went on).
    let mut events: Vec<_> = journals.iter().flat_map(|j| j.events.clone()).collect();
    events.sort();
    let event_rows = |only: Option<i32>| -> Vec<Vec<Option<String>>> {
        events
            .iter()
            .filter(|e| only.is_none_or(|p| e.4 == p))
            .map(|e| {
                vec![
                    Some(e.0.to_string()),
                    Some(e.1.to_string()),
                    Some(e.2.to_string()),
                    Some(e.3.clone()),
                ]
            })
            .collect()
    };
    let q = "SELECT id, client, seq, payload FROM events ORDER BY id";
    ensure!(rows(&target, q).await? == event_rows(None), "target events differ");
    ensure!(
        rows(&source, q).await? == event_rows(Some(source_port)),
        "source events differ"
    );
    ensure!(
        events.iter().any(|e| e.4 == target_port),
        "no event inserted on the target after the flip"
    );
    // The backfilled column is right for every row the migration or the
    // catch-up wrote (rows the clients changed on the target keep the
    // value they had).
    let bad = rows(
        &target,
        "SELECT count(*) FROM acct WHERE note = 'seed' AND note_len <> length(note)",
    )
    .await?;
    ensure!(bad[0][0].as_deref() == Some("0"), "{bad:?}");
    // pgbench's own invariant on the target: history explains every balance.
    for t in ["accounts", "tellers", "branches"] {
        let col = &t[..1];
        let check = rows(
            &target,
            &format!(
                "SELECT (SELECT sum({col}balance) FROM pgbench_{t}) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)"
            ),
        )
        .await?;
        ensure!(
            check[0][0].as_deref() == Some("t"),
            "pgbench_{t} balances disagree with the history on the target"
        );
    }
    Ok(())
}
