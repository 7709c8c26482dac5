//! COPY through the proxy: 10^5 rows in with `copy_in` and out with
//! `copy_out`, checked against what was generated and against the same COPY
//! run directly; a COPY that fails midway; and the session state after a
//! COPY, which the gate depends on.

use crate::support::{
    admin, backend_pid, cstr, first_column, frontend, query_msg, session_by_pid, wait_session_state, within, RawConn,
    PROMPT,
};
use anyhow::{ensure, Result};
use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, TryStreamExt};
use std::time::{Duration, Instant};
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio_postgres::Client;

const ROWS: i64 = 100_000;

/// Row `i` of the generated data, as a COPY text line.
fn line(i: i64) -> String {
    format!("{i}\tname {i} \\\\ tab\\there\t{}.{:02}\n", i * 3, i % 100)
}

/// Sends all rows with `copy_in`, in chunks of about 64 KiB.
async fn copy_rows_in(client: &Client, sql: &str) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    pin_mut!(sink);
    let mut chunk = String::new();
    for i in 1..=ROWS {
        chunk.push_str(&line(i));
        if chunk.len() > 64 << 10 {
            sink.send(Bytes::from(std::mem::take(&mut chunk))).await?;
        }
    }
    sink.send(Bytes::from(chunk)).await?;
    sink.finish().await
}

async fn copy_out_bytes(client: &Client, sql: &str) -> Result<Vec<u8>> {
    let stream = client.copy_out(sql).await?;
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.try_next().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_100k_rows() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let direct = cluster.connect("postgres").await?;
    client
        .batch_execute("create table items (id int8 primary key, name text, amount numeric(12,2))")
        .await?;

    let n = within(
        Duration::from_secs(60),
        "copy in",
        copy_rows_in(&client, "copy items from stdin"),
    )
    .await??;
    assert_eq!(n, ROWS as u64);

    let row = direct
        .query_one(
            "select count(*), sum(id)::int8, sum(amount)::text, sum(length(name))::int8 from items",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0), ROWS);
    assert_eq!(row.get::<_, i64>(1), ROWS * (ROWS + 1) / 2);
    let cents: i64 = (1..=ROWS).map(|i| i * 300 + i % 100).sum();
    assert_eq!(row.get::<_, String>(2), format!("{}.{:02}", cents / 100, cents % 100));
    let name_chars: i64 = (1..=ROWS)
        .map(|i| format!("name {i} \\ tab\there").chars().count() as i64)
        .sum();
    assert_eq!(row.get::<_, i64>(3), name_chars);
    // A sample of rows, escapes decoded.
    for id in [1i64, 4_242, ROWS] {
        let r = direct
            .query_one("select name, amount::text from items where id = $1", &[&id])
            .await?;
        assert_eq!(r.get::<_, String>(0), format!("name {id} \\ tab\there"));
        assert_eq!(r.get::<_, String>(1), format!("{}.{:02}", id * 3, id % 100));
    }
    // The session goes on after the COPY.
    let count: i64 = client.query_one("select count(*) from items", &[]).await?.get(0);
    assert_eq!(count, ROWS);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_out_100k_rows_is_identical_to_direct() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let direct = cluster.connect("postgres").await?;

    let sql = "copy (select g, 'row ' || g, g * 1.5, case when g % 10 = 0 then null else md5(g::text) end
                      from generate_series(1, 100000) g) to stdout";
    let via = within(Duration::from_secs(60), "copy out", copy_out_bytes(&client, sql)).await??;
    let want = copy_out_bytes(&direct, sql).await?;
    assert!(via == want, "COPY TO STDOUT through the proxy differs from direct");
    let text = String::from_utf8(via)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as i64, ROWS);
    let sum: i64 = lines
        .iter()
        .map(|l| l.split('\t').next().unwrap_or("0").parse::<i64>().unwrap_or(0))
        .sum();
    assert_eq!(sum, ROWS * (ROWS + 1) / 2);
    assert!(lines[9].ends_with("\\N"), "row 10 has a NULL: {}", lines[9]);
    assert!(lines[0].starts_with("1\trow 1\t1.5\t"), "{}", lines[0]);

    // Binary COPY too.
    let sql = "copy (select g, g::text from generate_series(1, 1000) g) to stdout (format binary)";
    let via = copy_out_bytes(&client, sql).await?;
    assert!(via.starts_with(b"PGCOPY\n\xff\r\n\0"));
    assert!(via == copy_out_bytes(&direct, sql).await?);
    Ok(())
}

/// Spoken with the simple protocol (as psql does), byte by byte: a COPY the
/// server fails midway and one the client abandons with CopyFail.
#[tokio::test]
async fn failed_copy_in_leaves_the_session_usable() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let admin = admin(&proxy).await?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute("create table nums (n int)").await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", "postgres").await?;
    let pid = raw.key.expect("BackendKeyData").0;

    // A bad value midway: the server fails the COPY with 22P02.
    raw.send(&query_msg("copy nums from stdin")).await?;
    assert_eq!(raw.expect_message().await?.tag, b'G');
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("{i}\n"));
    }
    data.push_str("not-a-number\n");
    let mut bytes = frontend(b'd', data.as_bytes());
    bytes.extend(frontend(b'c', b""));
    raw.send(&bytes).await?;
    let reply = raw.until_ready().await?;
    let tags: Vec<u8> = reply.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"EZ", "{reply:?}");
    assert_eq!(reply[0].code().as_deref(), Some("22P02"));
    assert_eq!(&reply[1].body[..], b"I");

    // The client gives up: CopyFail.
    raw.send(&query_msg("copy nums from stdin")).await?;
    assert_eq!(raw.expect_message().await?.tag, b'G');
    let mut bytes = frontend(b'd', b"1\n2\n");
    bytes.extend(frontend(b'f', &cstr("client gave up")));
    raw.send(&bytes).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(reply[0].code().as_deref(), Some("57014"), "{reply:?}");
    assert!(reply[0].fields()[&'M'].contains("client gave up"));

    // Nothing was inserted, the session answers, and the proxy sees it idle.
    raw.send(&query_msg("select count(*) from nums")).await?;
    assert_eq!(first_column(&raw.until_ready().await?), [Some("0".to_owned())]);
    wait_session_state(&admin, pid, "idle").await?;
    let n: i64 = direct.query_one("select count(*) from nums", &[]).await?.get(0);
    assert_eq!(n, 0);
    Ok(())
}

/// tokio-postgres sends Bind, Execute, Sync, then the COPY data, CopyDone
/// and another Sync. The server ignores Syncs while in copy-in mode, so
/// only one ReadyForQuery comes back: the proxy must not wait for a second
/// one, or the session never returns to a transaction boundary and PAUSE
/// (and graceful shutdown) can never drain it.
#[tokio::test]
async fn session_is_idle_after_extended_copy_in() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let admin = admin(&proxy).await?;
    client.batch_execute("create table nums (n int)").await?;
    let pid = backend_pid(&client).await?;

    let sink = client.copy_in::<_, Bytes>("copy nums from stdin").await?;
    pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\n2\n3\n")).await?;
    assert_eq!(sink.finish().await?, 3);
    let row = client.query_one("select sum(n)::int4 from nums", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 6);

    // The session is idle: PAUSE drains at once, and the console says so.
    let started = Instant::now();
    let paused = within(PROMPT, "PAUSE", admin.simple_query("PAUSE 1s")).await?;
    let waited = started.elapsed();
    let row = session_by_pid(&admin, pid).await?;
    let state = row.as_ref().map(|r| r["state"].clone());
    ensure!(
        paused.is_ok() && state.as_deref() == Some("idle"),
        "after COPY FROM STDIN the proxy still counts the session as busy: \
         PAUSE gave {:?} after {waited:?}; SHOW SESSIONS state {state:?}",
        paused.as_ref().err().and_then(|e| e.as_db_error()).map(|e| e.message())
    );
    admin.simple_query("RESUME").await?;
    Ok(())
}
