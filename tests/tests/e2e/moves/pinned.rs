//! Pinned sessions: a temp table, a session advisory lock or a WITH HOLD
//! cursor lives only in its backend, so a session holding one stays where
//! it is on a move to the same database (and moves once it lets go), and
//! is closed, with an error that tells the client to reconnect, on a move
//! to another database.

use super::{
    move_to_target, move_within, raw_backend_pid, raw_column, sessions_on, start, start_with_target, DB, TARGET_DB,
};
use crate::support::{admin, backend_pid, connect_watched, query_msg, RawConn, PROMPT};
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use switchyard_proxy::session::route::MoveReport;
use switchyard_tests::{init_tracing, TestProxy};
use tokio_postgres::Client;

/// How long a move waits on a session that is pinned.
const PINNED_WAIT: Duration = Duration::from_secs(1);

/// The only `SHOW SESSIONS` row on [`DB`].
async fn only_session(admin: &Client) -> Result<BTreeMap<String, String>> {
    let mut rows = sessions_on(admin, DB).await?;
    ensure!(rows.len() == 1, "expected one session on {DB}: {rows:?}");
    Ok(rows.remove(0))
}

/// Waits until the only session on [`DB`] shows move state "pinned".
async fn wait_pinned(admin: &Client) -> Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + PROMPT;
    loop {
        let row = only_session(admin).await?;
        if row["move_state"] == "pinned" {
            return Ok(row);
        }
        if Instant::now() >= deadline {
            bail!("the pinned session never showed move state \"pinned\": {row:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the only session on [`DB`] runs on a backend of `epoch`.
/// A pinned session's move stays due after the order returned, and it
/// takes it at a boundary once nothing pins it; should it not, a second
/// order must move it, and the test says which happened.
async fn wait_moved(proxy: &TestProxy, admin: &Client, epoch: u64) -> Result<()> {
    let deadline = Instant::now() + PROMPT;
    loop {
        let row = only_session(admin).await?;
        if row["route_epoch"].parse::<u64>()? >= epoch {
            return Ok(());
        }
        if Instant::now() >= deadline {
            eprintln!("the unpinned session did not move on its own at its next boundary ({row:?}); ordering again");
            let report = move_within(proxy, PROMPT).await?;
            ensure!(
                report.moved == 1,
                "a second order did not move the unpinned session: {report:?}"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A move that finds the one session pinned.
fn ensure_pinned(report: &MoveReport) -> Result<()> {
    ensure!(
        (report.sessions, report.moved, report.pinned, report.closed) == (1, 0, 1, 0),
        "expected the one session to stay pinned: {report:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_table_pins_until_dropped() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let client = proxy.connect(DB).await?;
    let admin = admin(&proxy).await?;
    client
        .batch_execute(
            "create table kept (v int); insert into kept values (10);
             create temp table scratch (v int); insert into scratch values (1), (2), (3)",
        )
        .await?;
    let pid = backend_pid(&client).await?;

    let report = move_within(&proxy, PINNED_WAIT).await?;
    ensure_pinned(&report)?;
    assert_eq!(backend_pid(&client).await?, pid, "a pinned session moved");
    let sum: i64 = client.query_one("select sum(v) from scratch", &[]).await?.get(0);
    assert_eq!(sum, 6);
    // Each statement of a pinned session ends at a boundary where it looks
    // again whether it can move: "moving" for that moment, then "pinned".
    let row = wait_pinned(&admin).await?;
    ensure!(row["pinned_by"].contains("temp"), "pinned_by: {row:?}");

    client.batch_execute("drop table scratch").await?;
    let one: i32 = client.query_one("select 1::int4", &[]).await?.get(0);
    assert_eq!(one, 1);
    wait_moved(&proxy, &admin, report.epoch).await?;

    let moved = backend_pid(&client).await?;
    ensure!(moved != pid, "the unpinned session is still on backend {pid}");
    let gone: bool = client
        .query_one("select to_regclass('scratch') is null", &[])
        .await?
        .get(0);
    assert!(gone);
    let kept: i32 = client.query_one("select v from kept", &[]).await?.get(0);
    assert_eq!(kept, 10);
    // Checked last, after what the client sees.
    let row = only_session(&admin).await?;
    assert_eq!(
        (row["move_state"].as_str(), row["pinned_by"].as_str()),
        ("current", ""),
        "{row:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_lock_and_hold_cursor_pin_until_released() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let client = proxy.connect(DB).await?;
    let admin = admin(&proxy).await?;

    // A session advisory lock: held across the order, released after.
    client.batch_execute("select pg_advisory_lock(4242)").await?;
    let pid = backend_pid(&client).await?;
    let report = move_within(&proxy, PINNED_WAIT).await?;
    ensure_pinned(&report)?;
    assert_eq!(backend_pid(&client).await?, pid);
    let held: i64 = client
        .query_one(
            "select count(*) from pg_locks where locktype = 'advisory' and objid = 4242 and pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(held, 1, "the lock is gone");
    client.batch_execute("select pg_advisory_unlock(4242)").await?;
    client.query_one("select 1::int4", &[]).await?;
    wait_moved(&proxy, &admin, report.epoch).await?;
    let after_lock = backend_pid(&client).await?;
    ensure!(after_lock != pid, "still on backend {pid} after the unlock");

    // A WITH HOLD cursor: its position survives the order, then CLOSE.
    client
        .batch_execute("declare numbers cursor with hold for select g from generate_series(1, 5) g")
        .await?;
    let first = crate::support::table(&client, "fetch 2 from numbers").await?;
    assert_eq!(first.rows, [[Some("1".to_owned())], [Some("2".to_owned())]]);
    let report = move_within(&proxy, PINNED_WAIT).await?;
    ensure_pinned(&report)?;
    assert_eq!(backend_pid(&client).await?, after_lock);
    let next = crate::support::table(&client, "fetch 2 from numbers").await?;
    assert_eq!(next.rows, [[Some("3".to_owned())], [Some("4".to_owned())]]);
    client.batch_execute("close numbers").await?;
    client.query_one("select 1::int4", &[]).await?;
    wait_moved(&proxy, &admin, report.epoch).await?;
    ensure!(
        backend_pid(&client).await? != after_lock,
        "still on backend {after_lock} after CLOSE"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_sessions_are_closed_on_a_move_to_another_database() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start_with_target().await?;
    let admin = admin(&proxy).await?;
    let (pinned, connection) = connect_watched(&proxy.pg_config(DB)).await?;
    pinned.batch_execute("create temp table scratch (v int)").await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", DB).await?;
    raw_column(&mut raw, "create temp table scratch (v int)").await?;
    let raw_pid = raw_backend_pid(&mut raw).await?;
    let free = proxy.connect(DB).await?;
    free.query_one("select 1::int4", &[]).await?;

    let started = Instant::now();
    let report = move_to_target(&admin, "1s").await?;
    let took = started.elapsed();
    ensure!(took < Duration::from_secs(5), "RECONNECT took {took:?}");
    // Checked last, so that what the clients see is checked either way.
    let counts = ["sessions", "moved", "pinned", "closed", "failed"].map(|c| report[c].clone());
    let counted = (counts == ["3", "1", "0", "2", "0"])
        .then_some(())
        .with_context(|| format!("RECONNECT should report 3 sessions, 1 moved, 2 closed: {report:?}"));
    let db: String = free.query_one("select current_database()::text", &[]).await?.get(0);
    assert_eq!(db, TARGET_DB, "the unpinned session");

    // tokio-postgres: the next query fails. The proxy may have sent the
    // error as the session closed (the connection task ends with it) or in
    // answer to the query.
    let failed = match pinned.simple_query("select 1").await {
        Ok(m) => bail!("a closed pinned session answered: {m:?}"),
        Err(e) => e,
    };
    let mut text = format!("{failed}: {:?}", failed.as_db_error().map(|d| d.message()));
    if let Ok(Ok(Err(e))) = tokio::time::timeout(PROMPT, connection).await {
        text += &format!(" / connection: {e}: {:?}", e.as_db_error().map(|d| d.message()));
    }
    ensure!(
        text.to_lowercase().contains("reconnect"),
        "no word of reconnecting in {text}"
    );

    // The raw protocol: an ErrorResponse that says so, then the end. The
    // error may be waiting already; if not, a query draws it out.
    let mut messages = Vec::new();
    let mut ended = false;
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(500), raw.message()).await {
        match m? {
            Some(m) => messages.push(m),
            None => ended = true,
        }
    }
    if !ended && !messages.iter().any(|m| m.tag == b'E') {
        // A write to a connection the proxy already closed may fail; what
        // it sent before closing is still to be read.
        let _ = raw.send(&query_msg("select 1")).await;
    }
    while !ended {
        match raw.message().await {
            Ok(Some(m)) => messages.push(m),
            Ok(None) => ended = true,
            Err(e) => bail!("raw session {raw_pid}: {e:#}; so far {messages:?}"),
        }
    }
    let (errors, rest): (Vec<_>, Vec<_>) = messages.into_iter().partition(|m| m.tag == b'E');
    let Some(error) = errors.first() else {
        bail!("the raw session {raw_pid} ended without an ErrorResponse: {rest:?}");
    };
    let fields = error.fields();
    let message = fields.get(&'M').cloned().unwrap_or_default();
    ensure!(message.to_lowercase().contains("reconnect"), "{fields:?}");
    ensure!(
        errors.len() == 1 && rest.iter().all(|m| m.tag == b'N' || m.tag == b'S'),
        "the closed session went on: {errors:?} {rest:?}"
    );
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_types_and_functions_pin_too() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    for create in [
        "create type pg_temp.mood as enum ('sad', 'ok')",
        "create domain pg_temp.small as int check (value < 10)",
        "create function pg_temp.twice(i int) returns int language sql as 'select 2 * i'",
    ] {
        let client = proxy.connect(DB).await?;
        client.batch_execute(create).await?;
        let pid = backend_pid(&client).await?;
        let report = move_within(&proxy, Duration::from_secs(5)).await?;
        ensure!(report.pinned == 1 && report.moved == 0, "{create}: {report:?}");
        ensure!(backend_pid(&client).await? == pid, "{create}: the session moved");
        // The object is still there for the client.
        let used = if create.contains("mood") {
            "select 'ok'::pg_temp.mood::text"
        } else if create.contains("small") {
            "select 3::pg_temp.small::text"
        } else {
            "select pg_temp.twice(21)::text"
        };
        let v: String = client.query_one(used, &[]).await?.get(0);
        ensure!(["ok", "3", "42"].contains(&v.as_str()), "{create}: {v}");
    }
    Ok(())
}
