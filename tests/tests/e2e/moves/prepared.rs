//! Prepared statements across a move: named ones from a driver, the
//! unnamed one and a pipeline of named ones over the raw protocol, SQL
//! PREPARE, a statement whose result type is not the same on the new
//! database (PostgreSQL's 0A000, then recovery by tokio-postgres and by
//! asyncpg), and a parameter of a user enum type named by its source OID.

use super::{
    bind_text, ensure_all_moved, move_sessions, move_to_target, parse_typed, raw_backend_pid, start, start_with_target,
    tags, DB, TARGET_DB,
};
use crate::support::{
    admin, backend_pid, bind_msg, execute_msg, expect_sqlstate, first_column, parse_msg, query_msg, sync_msg, table,
    within, RawConn,
};
use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use switchyard_tests::init_tracing;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_postgres::Client;

/// Twenty rows, `item <id>`.
async fn items(client: &Client) -> Result<()> {
    client
        .batch_execute(
            "create table items (id int primary key, name text not null);
             insert into items select g, 'item ' || g from generate_series(1, 20) g",
        )
        .await?;
    Ok(())
}

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some((*v).to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_work_before_and_after_moves() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let client = proxy.connect(DB).await?;
    items(&client).await?;
    let by_id = client.prepare("select name from items where id = $1").await?;
    let range = client
        .prepare("select id, name from items where id between $1 and $2 order by id")
        .await?;
    assert_eq!(client.query_one(&by_id, &[&3i32]).await?.get::<_, String>(0), "item 3");

    let mut pids = vec![backend_pid(&client).await?];
    // Twice: the second move re-prepares what the first move re-prepared.
    for round in 0..2i32 {
        ensure_all_moved(&move_sessions(&proxy).await?, 1)?;
        let pid = backend_pid(&client).await?;
        ensure!(!pids.contains(&pid), "move {round}: still on backend {pid} ({pids:?})");
        pids.push(pid);

        let id = 7 + round;
        assert_eq!(
            client.query_one(&by_id, &[&id]).await?.get::<_, String>(0),
            format!("item {id}")
        );
        let rows: Vec<(i32, String)> = client
            .query(&range, &[&4i32, &6i32])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            rows,
            [(4, "item 4".into()), (5, "item 5".into()), (6, "item 6".into())],
            "move {round}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_parsed_before_a_move_binds_after_it() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start().await?;
    items(&cluster.connect(DB).await?).await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", DB).await?;
    let key_pid = raw.key.context("BackendKeyData")?.0;

    // Parse alone: the statement exists only on the first backend.
    let mut batch = parse_msg("", "select name from items where id in (2, 5) order by id");
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(tags(&reply), "1Z", "{reply:?}");

    ensure_all_moved(&move_sessions(&proxy).await?, 1)?;

    let mut batch = bind_msg("");
    batch.extend(execute_msg());
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(tags(&reply), "2DDCZ", "{reply:?}");
    assert_eq!(first_column(&reply), some(&["item 2", "item 5"]));

    // A simple query ends the unnamed statement; only then is it safe to
    // ask where the session runs.
    let pid = raw_backend_pid(&mut raw).await?;
    ensure!(pid != key_pid, "the session never left backend {key_pid}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_of_named_statements_right_after_a_move() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", DB).await?;
    raw.send(&query_msg(
        "create table items (id int primary key, name text not null);
         insert into items select g, 'item ' || g from generate_series(1, 20) g",
    ))
    .await?;
    raw.until_ready().await?;

    // Two statements made on the first backend...
    let mut batch = parse_msg("five", "select count(*) from items where id <= 5");
    batch.extend(parse_msg("ten", "select count(*) from items where id <= 10"));
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    assert_eq!(tags(&raw.until_ready().await?), "11Z");

    ensure_all_moved(&move_sessions(&proxy).await?, 1)?;

    // ...and, as the first thing after the move, one pipeline that uses
    // them, makes two more and uses those, then a simple query behind the
    // Sync: every answer comes back, in order.
    let mut batch = Vec::new();
    for part in [
        bind_msg("five"),
        execute_msg(),
        parse_msg(
            "three",
            "select string_agg(name, ',' order by id) from items where id <= 3",
        ),
        bind_msg("three"),
        execute_msg(),
        bind_msg("ten"),
        execute_msg(),
        parse_msg("last", "select max(name) from items"),
        bind_msg("last"),
        execute_msg(),
        bind_msg("five"),
        execute_msg(),
        bind_msg("three"),
        execute_msg(),
        sync_msg(),
        query_msg("select 'behind the sync'"),
    ] {
        batch.extend(part);
    }
    raw.send(&batch).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(tags(&reply), "2DC12DC2DC12DC2DC2DCZ", "{reply:?}");
    assert_eq!(
        first_column(&reply),
        some(&["5", "item 1,item 2,item 3", "10", "item 9", "5", "item 1,item 2,item 3"])
    );
    let reply = raw.until_ready().await?;
    assert_eq!(first_column(&reply), some(&["behind the sync"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_survives_a_move_and_deallocate_is_remembered() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let client = proxy.connect(DB).await?;
    items(&client).await?;
    client
        .batch_execute(
            "PREPARE by_id(int) AS SELECT name FROM items WHERE id = $1;
             PREPARE gone(int) AS SELECT $1 + 1;
             DEALLOCATE gone",
        )
        .await?;
    let name = |t: crate::support::Table| t.rows.first().and_then(|r| r[0].clone());
    assert_eq!(
        name(table(&client, "EXECUTE by_id(4)").await?).as_deref(),
        Some("item 4")
    );
    let before = backend_pid(&client).await?;

    ensure_all_moved(&move_sessions(&proxy).await?, 1)?;
    ensure!(backend_pid(&client).await? != before, "the session did not move");

    assert_eq!(
        name(table(&client, "EXECUTE by_id(9)").await?).as_deref(),
        Some("item 9")
    );
    // From the extended protocol too.
    let row = client.query_one("EXECUTE by_id(11)", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "item 11");
    // What was deallocated before the move stays deallocated.
    expect_sqlstate(client.simple_query("EXECUTE gone(1)").await, "26000")?;
    Ok(())
}

/// `t(v int)` with 1 on the source database, `t(v text)` with 'one' on
/// the target.
async fn changed_result_type(cluster: &switchyard_tests::Cluster) -> Result<()> {
    cluster
        .connect(DB)
        .await?
        .batch_execute("create table t (v int); insert into t values (1)")
        .await?;
    cluster
        .connect(TARGET_DB)
        .await?
        .batch_execute("create table t (v text); insert into t values ('one')")
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_result_type_fails_like_postgres_then_prepares_afresh() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start_with_target().await?;
    changed_result_type(&cluster).await?;
    let client = proxy.connect(DB).await?;
    let admin = admin(&proxy).await?;
    let stmt = client.prepare("select v from t").await?;
    assert_eq!(client.query_one(&stmt, &[]).await?.get::<_, i32>(0), 1);

    let report = move_to_target(&admin, "5s").await?;
    assert_eq!(
        (
            report["to"].as_str(),
            report["sessions"].as_str(),
            report["moved"].as_str()
        ),
        ("target", "1", "1"),
        "{report:?}"
    );

    let result = client.query(&stmt, &[]).await;
    // asyncpg tells this error from other 0A000s by the routine PostgreSQL
    // raises it in, not by the (localizable) message.
    let routine = result
        .as_ref()
        .err()
        .and_then(|e| e.as_db_error()?.routine().map(str::to_owned));
    let message = expect_sqlstate(result, "0A000")?;
    assert_eq!(message, "cached plan must not change result type");
    // The failed Bind left the session usable: a new statement sees text.
    let fresh = client.prepare("select v from t").await?;
    assert_eq!(client.query_one(&fresh, &[]).await?.get::<_, String>(0), "one");
    let db: String = client.query_one("select current_database()::text", &[]).await?.get(0);
    assert_eq!(db, TARGET_DB);
    assert_eq!(routine.as_deref(), Some("RevalidateCachedQuery"));
    Ok(())
}

/// asyncpg caches a prepared statement per query text. On 0A000 "cached
/// plan must not change result type" outside a transaction it drops the
/// cache and retries once, so the application sees the new row.
const ASYNCPG_SCRIPT: &str = r#"
import asyncio, sys
import asyncpg

async def main():
    host, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    conn = await asyncpg.connect(host=host, port=port, user='postgres', database=db, ssl=False)
    rows = await conn.fetch('select v from t')
    print('before', repr([r['v'] for r in rows]), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != 'go':
        sys.exit('no go: %r' % line)
    rows = await conn.fetch('select v from t')
    db = await conn.fetchval('select current_database()')
    print('after', repr([r['v'] for r in rows]), db, flush=True)
    await conn.close()

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_recovers_from_a_changed_result_type() -> Result<()> {
    init_tracing();
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers/.venv/bin/python");
    if !python.is_file() {
        let why = format!(
            "{} is missing; run tests/drivers/setup.sh to install the drivers",
            python.display()
        );
        if std::env::var_os("SWITCHYARD_DRIVERS_REQUIRED").is_some() {
            bail!("{why} (SWITCHYARD_DRIVERS_REQUIRED is set)");
        }
        eprintln!("SKIPPED moves::prepared::asyncpg_recovers_from_a_changed_result_type: {why}");
        return Ok(());
    }
    let (cluster, proxy) = start_with_target().await?;
    changed_result_type(&cluster).await?;
    let admin = admin(&proxy).await?;

    let mut child = tokio::process::Command::new(&python)
        .args(["-c", ASYNCPG_SCRIPT, &proxy.host(), &proxy.port().to_string(), DB])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let limit = Duration::from_secs(30);

    let before = within(limit, "asyncpg's first fetch", lines.next_line()).await??;
    assert_eq!(before.as_deref(), Some("before [1]"));

    let report = move_to_target(&admin, "5s").await?;
    assert_eq!(
        (report["sessions"].as_str(), report["moved"].as_str()),
        ("1", "1"),
        "{report:?}"
    );

    stdin.write_all(b"go\n").await?;
    stdin.flush().await?;
    let after = within(limit, "asyncpg's fetch after the move", lines.next_line()).await??;
    let output = within(limit, "asyncpg's exit", child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        after.as_deref(),
        Some(format!("after ['one'] {TARGET_DB}").as_str()),
        "asyncpg stderr: {stderr}"
    );
    ensure!(output.status.success(), "asyncpg exited {}: {stderr}", output.status);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enum_parameter_named_by_its_source_oid_works_on_the_target() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start_with_target().await?;
    let source = cluster.connect(DB).await?;
    source
        .batch_execute(
            "create type mood as enum ('sad', 'ok', 'happy');
             create table feelings (id int primary key, m mood not null);
             insert into feelings values (1, 'happy'), (2, 'sad'), (3, 'happy')",
        )
        .await?;
    let target = cluster.connect(TARGET_DB).await?;
    target
        .batch_execute(
            "create type filler as enum ('x');
             create type mood as enum ('sad', 'ok', 'happy');
             create table feelings (id int primary key, m mood not null);
             insert into feelings values (1, 'happy'), (2, 'happy'), (3, 'happy'), (4, 'ok')",
        )
        .await?;
    let source_oid: u32 = source.query_one("select 'mood'::regtype::oid", &[]).await?.get(0);
    let target_oid: u32 = target.query_one("select 'mood'::regtype::oid", &[]).await?.get(0);
    ensure!(source_oid != target_oid, "both databases gave mood OID {source_oid}");

    let admin = admin(&proxy).await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", DB).await?;
    let count = "select count(*) from feelings where m = $1";
    let ids = "select string_agg(id::text, ',' order by id) from feelings where m = $1";
    let mut batch = parse_typed("by_mood", count, &[source_oid]);
    batch.extend(parse_typed("", ids, &[source_oid]));
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(tags(&reply), "11Z", "{reply:?}");

    let run = |stmt: &str, value: &str| {
        let mut batch = bind_text(stmt, &[value]);
        batch.extend(execute_msg());
        batch.extend(sync_msg());
        batch
    };
    raw.send(&run("by_mood", "happy")).await?;
    assert_eq!(first_column(&raw.until_ready().await?), some(&["2"]));
    raw.send(&run("", "happy")).await?;
    assert_eq!(first_column(&raw.until_ready().await?), some(&["1,3"]));

    let report = move_to_target(&admin, "5s").await?;
    assert_eq!(
        (report["sessions"].as_str(), report["moved"].as_str()),
        ("1", "1"),
        "{report:?}"
    );

    // The same statements, re-prepared on the target, read the target's rows.
    raw.send(&run("by_mood", "happy")).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(tags(&reply), "2DCZ", "{reply:?}");
    assert_eq!(first_column(&reply), some(&["3"]));
    raw.send(&run("", "ok")).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(tags(&reply), "2DCZ", "{reply:?}");
    assert_eq!(first_column(&reply), some(&["4"]));
    raw.send(&run("by_mood", "sad")).await?;
    assert_eq!(first_column(&raw.until_ready().await?), some(&["0"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_session_that_stays_keeps_its_unnamed_statement() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start().await?;
    items(&cluster.connect(DB).await?).await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", DB).await?;
    // A temp table pins the session; the move's probe runs a query on its
    // backend, which replaces the unnamed statement there.
    raw.send(&query_msg("create temp table scratch (i int)")).await?;
    raw.until_ready().await?;
    let mut batch = parse_msg("", "select name from items where id = 4");
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    assert_eq!(tags(&raw.until_ready().await?), "1Z");
    let report = move_sessions(&proxy).await?;
    ensure!(report.pinned == 1 && report.moved == 0, "{report:?}");

    let mut batch = bind_msg("");
    batch.extend(execute_msg());
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(tags(&reply), "2DCZ", "{reply:?}");
    assert_eq!(first_column(&reply), some(&["item 4"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reprepare_skipped_after_an_error_is_made_at_the_next_use() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let client = proxy.connect(DB).await?;
    items(&client).await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", DB).await?;
    let mut batch = parse_msg("boom", "select 1 / (id - id) from items where id = 1");
    batch.extend(parse_msg("fine", "select name from items where id = 9"));
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    assert_eq!(tags(&raw.until_ready().await?), "11Z");
    ensure_all_moved(&move_sessions(&proxy).await?, 2)?;

    // "boom" fails (division by zero), so the server skips the rest of the
    // batch, the re-prepare of "fine" with it.
    let mut batch = bind_msg("boom");
    batch.extend(execute_msg());
    batch.extend(bind_msg("fine"));
    batch.extend(execute_msg());
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(tags(&reply), "2EZ", "{reply:?}");

    let mut batch = bind_msg("fine");
    batch.extend(execute_msg());
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(tags(&reply), "2DCZ", "{reply:?}");
    assert_eq!(first_column(&reply), some(&["item 9"]));
    Ok(())
}

/// `notes(id, body)` on the source database only: a statement prepared on
/// it cannot be re-prepared on the target.
async fn notes_on_the_source_only(cluster: &switchyard_tests::Cluster) -> Result<()> {
    cluster
        .connect(DB)
        .await?
        .batch_execute("create table notes (id bigserial primary key, body text)")
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_cannot_be_reprepared_fails_its_bind_and_the_session_goes_on() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start_with_target().await?;
    notes_on_the_source_only(&cluster).await?;
    let client = proxy.connect(DB).await?;
    let admin = admin(&proxy).await?;
    // Described when prepared: after the move its types are re-checked
    // before the client's Bind goes on.
    let stmt = client
        .prepare("insert into notes (body) values ('after the move') returning id")
        .await?;
    let report = move_to_target(&admin, "5s").await?;
    ensure!(report["moved"] == "1", "{report:?}");

    // The re-prepare fails (no such table there): the server then skips the
    // batch to its Sync, so the Bind must not wait for the re-check.
    let result = within(
        Duration::from_secs(20),
        "a Bind after a failed re-prepare",
        client.query_one(&stmt, &[]),
    )
    .await?;
    let message = expect_sqlstate(result, "42P01")?;
    ensure!(message.contains("notes"), "{message}");
    // The session goes on, on the target.
    let db: String = within(
        Duration::from_secs(20),
        "a query after it",
        client.query_one("select current_database()::text", &[]),
    )
    .await??
    .get(0);
    assert_eq!(db, TARGET_DB);
    // Tried again at the next use (the server may know the table by then).
    cluster
        .connect(TARGET_DB)
        .await?
        .batch_execute("create table notes (id bigserial primary key, body text)")
        .await?;
    let id: i64 = within(
        Duration::from_secs(20),
        "the statement once the table exists",
        client.query_one(&stmt, &[]),
    )
    .await??
    .get(0);
    let stored: String = cluster
        .connect(TARGET_DB)
        .await?
        .query_one("select body from notes where id = $1", &[&id])
        .await?
        .get(0);
    assert_eq!(stored, "after the move");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_describe_whose_reprepare_fails_gets_the_error_and_ready() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start_with_target().await?;
    notes_on_the_source_only(&cluster).await?;
    let admin = admin(&proxy).await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", DB).await?;
    let mut batch = parse_msg("ins", "insert into notes (body) values ('x') returning id");
    batch.extend(describe_statement_msg("ins"));
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    assert_eq!(tags(&raw.until_ready().await?), "1tTZ");
    let report = move_to_target(&admin, "5s").await?;
    ensure!(report["moved"] == "1", "{report:?}");

    // Describe, then Bind/Execute of the same statement, in one batch.
    let mut batch = describe_statement_msg("ins");
    batch.extend(bind_msg("ins"));
    batch.extend(execute_msg());
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    let reply = within(Duration::from_secs(20), "the batch's answer", raw.until_ready()).await??;
    assert_eq!(tags(&reply), "EZ", "{reply:?}");
    let code = reply.iter().find(|m| m.tag == b'E').and_then(|m| m.code());
    assert_eq!(code.as_deref(), Some("42P01"), "{reply:?}");
    // The next batch is answered as usual.
    raw.send(&query_msg("select current_database()")).await?;
    let reply = within(Duration::from_secs(20), "a query after it", raw.until_ready()).await??;
    assert_eq!(first_column(&reply), some(&[TARGET_DB]));
    Ok(())
}

/// Describe of statement `name`.
fn describe_statement_msg(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend(crate::support::cstr(name));
    crate::support::frontend(b'D', &body)
}
