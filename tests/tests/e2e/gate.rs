//! PAUSE and RESUME, the freeze gate as DBAs drive it from the admin
//! console: under load nothing fails and nothing commits while paused; PAUSE
//! waits for open transactions, gives up (and reopens) when one stays open
//! past its timeout, and reopens by itself when its time is up.

use crate::support::{admin, expect_sqlstate, query_msg, status, table, within, RawConn, PROMPT};
use anyhow::{ensure, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio_postgres::Client;

/// Waits until `SHOW STATUS` has `key` = `value`.
async fn wait_status(admin: &Client, key: &str, value: &str) -> Result<()> {
    let deadline = Instant::now() + PROMPT;
    loop {
        let s = status(admin).await?;
        if s.get(key).map(String::as_str) == Some(value) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "SHOW STATUS never had {key} = {value}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(direct: &Client) -> Result<i64> {
    Ok(direct.query_one("select count(*) from ledger", &[]).await?.get(0))
}

/// Runs `transactions` transactions of an insert and an update on the
/// `ledger` rows of client `c`, counting each commit in `progress`.
async fn worker(mut client: Client, c: i32, transactions: i32, progress: Arc<AtomicU64>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0..transactions {
        ensure!(Instant::now() < deadline, "client {c} ran out of time at {n}");
        let tx = client.transaction().await?;
        tx.execute("insert into ledger values ($1, $2, 'new')", &[&c, &n])
            .await?;
        tx.execute(
            "update ledger set note = 'done' where client = $1 and n = $2",
            &[&c, &n],
        )
        .await?;
        tx.commit().await?;
        progress.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_under_load_holds_then_completes_everything() -> Result<()> {
    init_tracing();
    const CLIENTS: i32 = 4;
    const TRANSACTIONS: i32 = 120;
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute("create table ledger (client int, n int, note text, primary key (client, n))")
        .await?;
    let admin = admin(&proxy).await?;

    let progress = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for c in 0..CLIENTS {
        let client = proxy.connect("postgres").await?;
        workers.push(tokio::spawn(worker(client, c, TRANSACTIONS, progress.clone())));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress.load(Ordering::SeqCst) < 40 {
        ensure!(Instant::now() < deadline, "the load did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    within(PROMPT, "PAUSE", admin.simple_query("PAUSE 20s")).await??;
    let s = status(&admin).await?;
    assert_eq!(s["state"], "paused", "{s:?}");
    assert_eq!(s["busy_sessions"], "0", "PAUSE returned with a session busy: {s:?}");
    // Nothing commits while paused.
    let (before, seen) = (count(&direct).await?, progress.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(count(&direct).await?, before, "rows were committed while paused");
    assert_eq!(progress.load(Ordering::SeqCst), seen);
    assert!(
        before < i64::from(CLIENTS * TRANSACTIONS),
        "the load finished before PAUSE"
    );
    // Every client waits at the gate with its next BEGIN.
    wait_status(&admin, "held_sessions", &CLIENTS.to_string()).await?;
    let sessions = table(&admin, "SHOW SESSIONS").await?;
    assert_eq!(sessions.rows_where("state", "held at gate").len(), CLIENTS as usize);

    admin.simple_query("RESUME").await?;
    assert_eq!(status(&admin).await?["state"], "serving");
    for w in workers {
        within(Duration::from_secs(60), "worker", w).await???;
    }
    let row = direct
        .query_one(
            "select count(*), count(*) filter (where note = 'done') from ledger",
            &[],
        )
        .await?;
    let total = i64::from(CLIENTS * TRANSACTIONS);
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (total, total));
    let stats = table(&admin, "SHOW STATS").await?.map();
    assert_eq!(stats["server_errors"], "0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_an_open_transaction() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute("create table ledger (n int)").await?;
    let a = proxy.connect("postgres").await?;
    let b = proxy.connect("postgres").await?;
    let watcher = admin(&proxy).await?;
    a.batch_execute("begin; insert into ledger values (1)").await?;

    let pauser = admin(&proxy).await?;
    let pause = tokio::spawn(async move {
        let r = pauser.simple_query("PAUSE 20s").await.map(drop);
        (r, Instant::now(), pauser)
    });
    // PAUSE closes the gate at once but drains only when A's transaction ends.
    wait_status(&watcher, "state", "paused").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pause.is_finished(), "PAUSE returned with a transaction open");
    assert_eq!(status(&watcher).await?["busy_sessions"], "1");
    // A new transaction waits at the gate (it is not failed).
    let held = tokio::spawn(async move {
        let r = b.query_one("select count(*) from ledger", &[]).await;
        (r.map(|row| row.get::<_, i64>(0)), Instant::now())
    });
    wait_status(&watcher, "held_sessions", "1").await?;

    // The open transaction runs to its end, and only then does PAUSE return.
    a.batch_execute("insert into ledger values (2)").await?;
    assert!(!pause.is_finished(), "PAUSE returned with a transaction open");
    // (PAUSE may answer before A reads its own CommandComplete, so the
    // commit is timed from when it is sent.)
    let committing = Instant::now();
    a.batch_execute("commit").await?;
    let (paused, paused_at, pauser) = within(PROMPT, "PAUSE", pause).await??;
    paused?;
    assert!(paused_at >= committing, "PAUSE returned before the commit");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "a query ran while paused");

    let resumed = Instant::now();
    pauser.simple_query("RESUME").await?;
    let (n, ran_at) = within(PROMPT, "held query", held).await??;
    assert!(ran_at >= resumed);
    assert_eq!(n?, 2, "the held query ran after the commit");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_fails_on_a_transaction_left_open_and_reopens() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute("create table ledger (n int)").await?;
    let a = proxy.connect("postgres").await?;
    let b = proxy.connect("postgres").await?;
    let admin = admin(&proxy).await?;
    a.batch_execute("begin; insert into ledger values (1)").await?;

    let started = Instant::now();
    let message = expect_sqlstate(admin.simple_query("PAUSE 300ms").await, "55000")?;
    let waited = started.elapsed();
    assert!(
        message.contains("1 session(s) still in a transaction") && message.contains("reopened"),
        "{message}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "PAUSE 300ms gave up after {waited:?}"
    );
    // The gate is open again: other sessions run at once.
    assert_eq!(status(&admin).await?["state"], "serving");
    let started = Instant::now();
    let row = b.query_one("select 7::int4", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 7);
    assert!(started.elapsed() < Duration::from_secs(1));
    // The transaction left open was not disturbed.
    a.batch_execute("insert into ledger values (2); commit").await?;
    let n: i64 = direct.query_one("select count(*) from ledger", &[]).await?.get(0);
    assert_eq!(n, 2);
    // And a PAUSE with nothing open now succeeds.
    admin.simple_query("PAUSE 5s").await?;
    admin.simple_query("RESUME").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_reopens_by_itself_after_its_timeout() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let admin = admin(&proxy).await?;

    let paused = Instant::now();
    within(PROMPT, "PAUSE", admin.simple_query("PAUSE 700ms")).await??;
    let s = status(&admin).await?;
    assert_eq!(s["state"], "paused");
    let left: u64 = s["resumes_in_ms"].parse()?;
    assert!(left <= 700, "resumes in {left} ms");
    let message = expect_sqlstate(admin.simple_query("PAUSE").await, "55000")?;
    assert!(message.contains("already paused"), "{message}");

    // A query waits for the gate, then runs without an error.
    let row = within(PROMPT, "held query", client.query_one("select 3::int4", &[])).await??;
    let waited = paused.elapsed();
    assert_eq!(row.get::<_, i32>(0), 3);
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "the query ran {waited:?} after PAUSE 700ms"
    );
    wait_status(&admin, "state", "serving").await?;
    let message = expect_sqlstate(admin.simple_query("RESUME").await, "55000")?;
    assert!(message.contains("not paused"), "{message}");
    Ok(())
}

/// While PAUSE drains, every new transaction waits at the gate. If one
/// session keeps its transaction open, traffic stays frozen until the
/// drain timeout (30 s by default), and nothing ends it sooner: RESUME
/// says "not paused", and the console ignores cancel requests. RESUME
/// should abort a draining PAUSE and reopen the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_aborts_a_draining_pause() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let a = proxy.connect("postgres").await?;
    let b = proxy.connect("postgres").await?;
    let watcher = admin(&proxy).await?;
    a.batch_execute("begin").await?;
    let pauser = admin(&proxy).await?;
    let pause = tokio::spawn(async move { pauser.simple_query("PAUSE 3s").await.map(drop) });
    wait_status(&watcher, "state", "paused").await?;

    let resumed = watcher.simple_query("RESUME").await;
    let started = Instant::now();
    let query = tokio::time::timeout(Duration::from_secs(2), b.query_one("select 1::int4", &[])).await;
    let waited = started.elapsed();
    let paused = within(Duration::from_secs(10), "PAUSE", pause).await??;
    ensure!(
        resumed.is_ok() && matches!(query, Ok(Ok(_))) && paused.is_err(),
        "RESUME during the drain gave {:?}; the next query {}; PAUSE gave {:?}",
        resumed.map(drop),
        if query.is_ok() {
            format!("ran after {waited:?}")
        } else {
            format!("was still held after {waited:?}")
        },
        paused
    );
    Ok(())
}

/// PAUSE timeouts are bounded: values past an hour, negative, not a number
/// or not a duration are refused with 22023 (they used to panic the console
/// task, or freeze the applications for millennia), and the console goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_timeouts_are_bounded() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let admin = admin(&proxy).await?;
    for bad in [
        "PAUSE 99999999999999999999",
        "PAUSE 18446744073709551615",
        "PAUSE 99999999999",
        "PAUSE 2h",
        "PAUSE -5s",
        "PAUSE NaN",
        "PAUSE inf",
        "PAUSE 3 fortnights",
    ] {
        let message = expect_sqlstate(within(PROMPT, bad, admin.simple_query(bad)).await?, "22023")?;
        assert!(message.contains("PAUSE"), "{bad}: {message}");
        assert_eq!(status(&admin).await?["state"], "serving", "after {bad}");
    }
    within(PROMPT, "PAUSE 1h", admin.simple_query("PAUSE 1h")).await??;
    assert_eq!(status(&admin).await?["state"], "paused");
    admin.simple_query("RESUME").await?;
    Ok(())
}

/// A PAUSE ends when the console session that paused leaves, so a DBA whose
/// connection drops does not leave the applications frozen until the
/// timeout; `PAUSE ... DETACHED` outlives its session, bounded by its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_ends_with_its_session_unless_detached() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let watcher = admin(&proxy).await?;

    let pauser = admin(&proxy).await?;
    within(PROMPT, "PAUSE", pauser.simple_query("PAUSE 30s")).await??;
    assert_eq!(status(&watcher).await?["state"], "paused");
    let left = Instant::now();
    drop(pauser);
    wait_status(&watcher, "state", "serving").await?;
    let row = within(
        PROMPT,
        "query after the pauser left",
        client.query_one("select 1::int4", &[]),
    )
    .await??;
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(
        left.elapsed() < Duration::from_secs(10),
        "reopened only after {:?}",
        left.elapsed()
    );

    // Also while PAUSE still drains (a transaction is open): the pauser
    // leaving ends the drain and reopens the gate.
    client.batch_execute("begin; select 1").await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", "switchyard").await?;
    raw.send(&query_msg("PAUSE 30s")).await?;
    wait_status(&watcher, "state", "paused").await?;
    drop(raw);
    wait_status(&watcher, "state", "serving").await?;
    client.batch_execute("commit").await?;

    let pauser = admin(&proxy).await?;
    within(PROMPT, "PAUSE DETACHED", pauser.simple_query("PAUSE 1500ms DETACHED")).await??;
    let paused = Instant::now();
    drop(pauser);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status(&watcher).await?["state"],
        "paused",
        "a detached PAUSE outlives its session"
    );
    let row = within(PROMPT, "held query", client.query_one("select 2::int4", &[])).await??;
    assert_eq!(row.get::<_, i32>(0), 2);
    let waited = paused.elapsed();
    assert!(
        waited >= Duration::from_millis(1300),
        "the query ran {waited:?} after PAUSE 1500ms DETACHED"
    );
    wait_status(&watcher, "state", "serving").await?;
    Ok(())
}
