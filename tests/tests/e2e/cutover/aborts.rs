//! Every way a cutover is called off before its flip, by fault injection:
//! a transaction open past the drain timeout, the DBA's ABORT mid-freeze,
//! a target row corrupted before the verify, a target backend that cannot
//! be opened, the target down, the proxy shutting down mid-freeze. Each
//! time the gate reopens on the source, no client sees an error it would
//! not have seen without the cutover, the source holds every write, and a
//! cutover afterwards succeeds.

use super::{Cut, PORT};
use crate::support::{expect_sqlstate, table};
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

const SCHEMA: &str = "
    CREATE TABLE item (id serial PRIMARY KEY, qty int NOT NULL, label text);
    INSERT INTO item (qty, label) SELECT g, 'item ' || g FROM generate_series(1, 200) g;
";

/// A proxy with capture on, the target cloned and caught up.
async fn ready(edit: impl FnOnce(&mut switchyard_proxy::Config)) -> Result<Cut> {
    let cut = Cut::start(SCHEMA, "", edit).await?;
    cut.capture().await?;
    let c = cut.proxy.connect("postgres").await?;
    c.batch_execute("UPDATE item SET qty = qty + 1 WHERE id <= 20").await?;
    cut.clone_and_migrate("").await?;
    Ok(cut)
}

/// The gate is open, traffic on the source, and a write through the proxy
/// lands there.
async fn on_source(cut: &Cut, c: &Client) -> Result<()> {
    let status = cut.status().await?;
    ensure!(
        status["state"] == "serving" && status["route"] == "source",
        "{status:?}"
    );
    let port: i32 = c
        .query_one(
            &format!("UPDATE item SET qty = qty + 1 WHERE id = 1 RETURNING {PORT}"),
            &[],
        )
        .await?
        .get(0);
    ensure!(
        port == cut.source.port() as i32,
        "a write after the abort ran on port {port}"
    );
    Ok(())
}

/// Waits until SHOW STATUS says the cutover froze traffic.
async fn frozen(cut: &Cut) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = cut.status().await?;
        if s["state"] == "frozen (cutover)" {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "never frozen: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A cutover that succeeds, and a write after it lands on the target.
async fn succeeds(cut: &Cut, c: &Client) -> Result<()> {
    cut.caught_up(Duration::from_secs(30)).await?;
    let outcome = cut.cutover("").await?;
    let report = outcome.done()?;
    ensure!(report["state"] == "done", "{report:?}");
    let port: i32 = c
        .query_one(
            &format!("UPDATE item SET qty = qty + 1 WHERE id = 2 RETURNING {PORT}"),
            &[],
        )
        .await?
        .get(0);
    ensure!(
        port == cut.target.port() as i32,
        "a write after the cutover ran on port {port}"
    );
    let q = "SELECT id, qty, label FROM item WHERE id <> 2 ORDER BY id";
    let source = table(&cut.source.connect("postgres").await?, q).await?.rows;
    let target = table(&cut.target.connect("postgres").await?, q).await?.rows;
    ensure!(source == target, "the target differs from the source at the flip");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_abort_and_a_corrupt_row_each_call_it_off() -> Result<()> {
    let cut = ready(|_| {}).await?;
    let app = cut.proxy.connect("postgres").await?;
    let holder = cut.proxy.connect("postgres").await?;

    // A transaction open past the drain timeout: aborted, and the
    // transaction commits afterwards on the source.
    holder
        .batch_execute("BEGIN; UPDATE item SET label = 'held' WHERE id = 5")
        .await?;
    let outcome = cut.cutover("DRAIN_TIMEOUT 300ms").await?;
    let why = outcome.refused()?;
    ensure!(
        why.contains("aborted at freeze") && why.contains("drain_timeout"),
        "{why}"
    );
    holder.batch_execute("COMMIT").await?;
    on_source(&cut, &app).await?;
    let held = table(
        &cut.source.connect("postgres").await?,
        "SELECT label FROM item WHERE id = 5",
    )
    .await?;
    ensure!(held.rows[0][0].as_deref() == Some("held"), "{held:?}");
    let shown = table(&cut.admin, "SHOW CUTOVER").await?.map();
    ensure!(shown["state"] == "aborted at freeze", "{shown:?}");

    // ABORT while frozen: the cutover waits on an open transaction, the
    // DBA calls it off.
    holder
        .batch_execute("BEGIN; UPDATE item SET label = 'held again' WHERE id = 6")
        .await?;
    let running = {
        let cut_proxy = cut.proxy.pg_config("switchyard");
        tokio::spawn(async move {
            let (c, _notices) = crate::support::connect_listening(&cut_proxy).await?;
            Ok::<_, anyhow::Error>(c.simple_query("CUTOVER DRAIN_TIMEOUT 8s").await)
        })
    };
    frozen(&cut).await?;
    // A new query waits at the gate rather than failing.
    let waiting = {
        let c = cut.proxy.connect("postgres").await?;
        tokio::spawn(async move {
            c.query_one(&format!("SELECT {PORT}"), &[])
                .await
                .map(|r| r.get::<_, i32>(0))
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    ensure!(!waiting.is_finished(), "a query ran while frozen");
    cut.admin.simple_query("ABORT").await.context("ABORT")?;
    let answer = tokio::time::timeout(Duration::from_secs(5), running).await???;
    let err = answer.err().context("CUTOVER succeeded after ABORT")?;
    let message = err
        .as_db_error()
        .map_or_else(|| err.to_string(), |d| d.message().to_owned());
    ensure!(message.contains("aborted") && message.contains("ABORT"), "{message}");
    let port = tokio::time::timeout(Duration::from_secs(5), waiting).await???;
    ensure!(port == cut.source.port() as i32, "the held query ran on port {port}");
    holder.batch_execute("COMMIT").await?;
    on_source(&cut, &app).await?;

    // A row corrupted on the target before the verify: found, aborted.
    app.batch_execute("UPDATE item SET label = 'checked' WHERE id = 7")
        .await?;
    cut.caught_up(Duration::from_secs(30)).await?;
    let target = cut.target.connect("postgres").await?;
    target
        .batch_execute("UPDATE item SET label = 'corrupt' WHERE id = 7")
        .await?;
    let outcome = cut.cutover("").await?;
    let why = outcome.refused()?;
    ensure!(why.contains("aborted at verify") && why.contains("differ"), "{why}");
    on_source(&cut, &app).await?;

    // Repaired by a write through the proxy: the next cutover goes through.
    app.batch_execute("UPDATE item SET label = 'repaired' WHERE id = 7")
        .await?;
    succeeds(&cut, &app).await?;
    // The sessions that lived through every abort are still usable.
    holder.batch_execute("SELECT 1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_drain_timeout_cancel_cancels_a_long_statement_and_ends_an_idle_transaction() -> Result<()> {
    let cut = ready(|_| {}).await?;
    let app = cut.proxy.connect("postgres").await?;
    let mut long = cut.proxy.connect("postgres").await?;
    let sleeper = tokio::spawn(async move {
        let tx = long.transaction().await?;
        let r = tx.batch_execute("SELECT pg_sleep(30)").await;
        drop(tx);
        Ok::<_, anyhow::Error>((r, long))
    });
    // And one idle in its transaction: nothing runs to cancel, so the
    // proxy ends it (its backend closed, its transaction rolled back) and
    // tells the client why.
    let (idle, idle_conn) = cut.proxy.pg_config("postgres").connect(tokio_postgres::NoTls).await?;
    let idle_conn = tokio::spawn(idle_conn);
    idle.batch_execute("BEGIN; UPDATE item SET label = 'never committed' WHERE id = 7")
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let outcome = cut.cutover("DRAIN_TIMEOUT 300ms ON_DRAIN_TIMEOUT cancel").await?;
    let report = outcome.done()?;
    ensure!(report["state"] == "done", "{report:?}");
    let (r, long) = tokio::time::timeout(Duration::from_secs(5), sleeper).await???;
    expect_sqlstate(r, "57014")?;
    let ended = idle.batch_execute("COMMIT").await;
    ensure!(ended.is_err(), "the idle transaction's session survived the drain");
    // The proxy's word reaches the connection while it is idle.
    let heard = tokio::time::timeout(Duration::from_secs(5), idle_conn).await??;
    expect_sqlstate(heard, "57P01")?;
    for c in [&cut.source, &cut.target] {
        let label: String = c
            .connect("postgres")
            .await?
            .query_one("SELECT label FROM item WHERE id = 7", &[])
            .await?
            .get(0);
        ensure!(
            label == "item 7",
            "the terminated transaction's write is on port {}: {label}",
            c.port()
        );
    }
    // The cancelled session goes on, on the target.
    let port: i32 = long.query_one(&format!("SELECT {PORT}"), &[]).await?.get(0);
    ensure!(port == cut.target.port() as i32, "{port}");
    let port: i32 = app.query_one(&format!("SELECT {PORT}"), &[]).await?.get(0);
    ensure!(port == cut.target.port() as i32, "{port}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_backend_that_cannot_open_or_a_target_down_stops_preflight() -> Result<()> {
    // Backends log in as the client's own user (the proxy's control role
    // is the capture user).
    let cut = ready(|c| {
        if let Some(t) = c.target.as_mut() {
            t.user = None;
        }
    })
    .await?;
    // Applications log in as their own role, on both servers.
    for c in [&cut.source, &cut.target] {
        c.connect("postgres")
            .await?
            .batch_execute("CREATE ROLE app LOGIN; GRANT ALL ON item, item_id_seq TO app")
            .await?;
    }
    let app = cut.proxy.connect_as("app", None, "postgres").await?;
    let target = cut.target.connect("postgres").await?;
    target.batch_execute("ALTER ROLE app NOLOGIN").await?;
    let outcome = cut.cutover("").await?;
    let why = outcome.refused()?;
    ensure!(
        why.contains("aborted at preflight") && why.contains("could not open a backend on the target"),
        "{why}"
    );
    on_source(&cut, &app).await?;
    // A dry run says the same, freezing nothing.
    let dry = cut.cutover("DRY RUN").await?;
    ensure!(dry.refused()?.contains("could not open"), "{dry:?}");
    target.batch_execute("ALTER ROLE app LOGIN").await?;
    let dry = cut.cutover("DRY RUN").await?;
    let report = dry.done()?;
    ensure!(
        report["state"] == "dry run: ready" && report["pause_ms"].is_empty(),
        "{report:?}"
    );
    on_source(&cut, &app).await?;

    // The target down: catch-up cannot follow, the cutover does not start.
    cut.target.stop().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = cut.cutover("").await?;
    let why = outcome.refused()?;
    ensure!(why.contains("aborted at preflight"), "{why}");
    on_source(&cut, &app).await?;
    let ok = app.query_one("SELECT count(*) FROM item", &[]).await?;
    ensure!(ok.get::<_, i64>(0) == 200, "the source lost rows");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_shutting_down_mid_freeze_reopens_on_the_source() -> Result<()> {
    let cut = ready(|_| {}).await?;
    let holder = cut.proxy.connect("postgres").await?;
    holder
        .batch_execute("BEGIN; UPDATE item SET label = 'in flight' WHERE id = 9")
        .await?;
    let running = {
        let console = cut.proxy.pg_config("switchyard");
        tokio::spawn(async move {
            let (c, _notices) = crate::support::connect_listening(&console).await?;
            Ok::<_, anyhow::Error>(c.simple_query("CUTOVER DRAIN_TIMEOUT 8s").await)
        })
    };
    frozen(&cut).await?;
    let shared = cut.proxy.proxy().shared().clone();
    let Cut {
        proxy, source, target, ..
    } = cut;
    // The shutdown waits for the open transaction to end (up to its timeout).
    let down = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let last = shared.cutover.last().context("no cutover report")?;
    ensure!(
        matches!(&last.state, switchyard_proxy::control::cutover::State::Aborted { reason, .. } if reason.contains("shutting down")),
        "{last:?}"
    );
    ensure!(!shared.gate.is_closed(), "the gate stayed closed");
    let _ = holder.batch_execute("COMMIT").await;
    let _ = tokio::time::timeout(Duration::from_secs(20), down).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
    let label = table(
        &source.connect("postgres").await?,
        "SELECT label FROM item WHERE id = 9",
    )
    .await?;
    ensure!(label.rows[0][0].as_deref() == Some("in flight"), "{label:?}");
    // Nothing reached the target but what catch-up copied from the source.
    let q = "SELECT id, qty FROM item ORDER BY id";
    let (s, t) = (
        table(&source.connect("postgres").await?, q).await?.rows,
        table(&target.connect("postgres").await?, q).await?.rows,
    );
    ensure!(s.len() == t.len(), "source {} rows, target {}", s.len(), t.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_backends_lost_while_frozen_are_opened_again_at_the_flip() -> Result<()> {
    let cut = ready(|_| {}).await?;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let c = cut.proxy.connect("postgres").await?;
        c.batch_execute("SET application_name = 'kept'").await?;
        idle.push(c);
    }
    let holder = cut.proxy.connect("postgres").await?;
    holder
        .batch_execute("BEGIN; UPDATE item SET label = 'last' WHERE id = 11")
        .await?;
    let running = {
        let console = cut.proxy.pg_config("switchyard");
        tokio::spawn(async move {
            let (c, _notices) = crate::support::connect_listening(&console).await?;
            Ok::<_, anyhow::Error>(crate::support::table(&c, "CUTOVER DRAIN_TIMEOUT 8s").await)
        })
    };
    frozen(&cut).await?;
    // Every backend the sessions opened ahead on the target is killed.
    let target = cut.target.connect("postgres").await?;
    let killed = target
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
               AND coalesce(application_name, '') NOT LIKE 'switchyard %'",
            &[],
        )
        .await?
        .get::<_, i64>(0);
    ensure!(killed >= 4, "only {killed} target backends were open");
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.batch_execute("COMMIT").await?;
    let answer = tokio::time::timeout(Duration::from_secs(20), running).await???;
    let report = answer.map_err(|e| anyhow::anyhow!("{e}"))?.map();
    ensure!(
        report["state"] == "done" && report["sessions_closed"] == "0",
        "{report:?}"
    );
    for c in idle.iter().chain([&holder]) {
        let row = c
            .query_one(&format!("SELECT {PORT}, current_setting('application_name')"), &[])
            .await?;
        ensure!(
            row.get::<_, i32>(0) == cut.target.port() as i32,
            "a session is not on the target"
        );
    }
    let row = idle[0]
        .query_one("SELECT current_setting('application_name')", &[])
        .await?;
    ensure!(row.get::<_, String>(0) == "kept", "the setting was lost");
    let label = table(&target, "SELECT label FROM item WHERE id = 11").await?;
    ensure!(label.rows[0][0].as_deref() == Some("last"), "{label:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_other_databases_stay_on_the_source() -> Result<()> {
    let cut = ready(|_| {}).await?;
    cut.source
        .connect("postgres")
        .await?
        .batch_execute("CREATE DATABASE reports")
        .await?;
    let reports = cut.proxy.connect("reports").await?;
    let app = cut.proxy.connect("postgres").await?;
    let outcome = cut.cutover("").await?;
    let report = outcome.done()?;
    ensure!(
        report["sessions"] == "1" && report["sessions_moved"] == "1",
        "{report:?}"
    );
    let source_port = cut.source.port() as i32;
    for (c, want, what) in [
        (&reports, source_port, "the reports session"),
        (&app, cut.target.port() as i32, "the migrated database's session"),
    ] {
        let port: i32 = c.query_one(&format!("SELECT {PORT}"), &[]).await?.get(0);
        ensure!(port == want, "{what} is on port {port}");
    }
    let again = cut.proxy.connect("reports").await?;
    let port: i32 = again.query_one(&format!("SELECT {PORT}"), &[]).await?.get(0);
    ensure!(port == source_port, "a new reports session went to port {port}");
    Ok(())
}
