//! Statements in a client encoding other than UTF-8: a Parse (and a simple
//! Query) whose text is valid LATIN1 but not UTF-8 runs as PostgreSQL runs
//! it, with capture off and on, and with capture on the keys it writes
//! reach the log as the database stores them (non-ASCII keys included).

use super::{wrote, Escape};
use crate::support::{bind_msg, cstr, execute_msg, frontend, query_msg, sync_msg, RawConn, RawMessage};
use anyhow::{ensure, Result};
use switchyard_tests::{Cluster, TestProxy};

/// A Parse of the unnamed statement whose text is `sql`, as raw bytes.
fn parse_bytes(sql: &[u8]) -> Vec<u8> {
    let mut body = cstr("");
    body.extend_from_slice(sql);
    body.push(0);
    body.extend(0i16.to_be_bytes());
    frontend(b'P', &body)
}

/// Runs `sql` with Parse / Bind / Execute / Sync; fails on an error.
async fn extended(c: &mut RawConn, sql: &[u8]) -> Result<Vec<RawMessage>> {
    let mut out = parse_bytes(sql);
    out.extend(bind_msg(""));
    out.extend(execute_msg());
    out.extend(sync_msg());
    c.send(&out).await?;
    answer(c, sql).await
}

/// Reads up to ReadyForQuery, failing on an ErrorResponse.
async fn answer(c: &mut RawConn, sql: &[u8]) -> Result<Vec<RawMessage>> {
    let msgs = c.until_ready().await?;
    let error = msgs.iter().find(|m| m.tag == b'E');
    ensure!(
        error.is_none(),
        "{:?}: {:?}",
        String::from_utf8_lossy(sql),
        error.map(RawMessage::fields)
    );
    Ok(msgs)
}

/// A LATIN1 session through `proxy`.
async fn latin1(proxy: &TestProxy, user: &str) -> Result<RawConn> {
    let mut c = RawConn::start(proxy.addr(), user, "postgres").await?;
    c.send(&query_msg("SET client_encoding = 'LATIN1'")).await?;
    answer(&mut c, b"SET").await?;
    Ok(c)
}

/// The first column of the first DataRow, as bytes.
fn first_value(msgs: &[RawMessage]) -> Option<Vec<u8>> {
    let row = msgs.iter().find(|m| m.tag == b'D')?;
    let len = i32::from_be_bytes(row.body.get(2..6)?.try_into().ok()?);
    Some(row.body.get(6..6 + usize::try_from(len).ok()?)?.to_vec())
}

/// Statements in LATIN1 through `c`: a read and three inserts (two of them
/// with a non-ASCII key) by Parse, one by simple Query.
async fn run_latin1_statements(c: &mut RawConn) -> Result<()> {
    let msgs = extended(c, b"select 'caf\xe9'").await?;
    ensure!(first_value(&msgs).as_deref() == Some(&b"caf\xe9"[..]), "{msgs:?}");
    extended(c, b"insert into t values ('caf\xe9', 1)").await?;
    extended(c, b"insert into t values ('plain', length('\xe9t\xe9'))").await?;
    let msgs = extended(c, b"insert into t values ('cr\xe8me', 4) returning id").await?;
    ensure!(first_value(&msgs).as_deref() == Some(&b"cr\xe8me"[..]), "{msgs:?}");
    c.send(&query_msg_bytes(b"insert into t values ('na\xefve', 5)"))
        .await?;
    answer(c, b"simple query").await?;
    Ok(())
}

/// A simple Query whose text is raw bytes.
fn query_msg_bytes(sql: &[u8]) -> Vec<u8> {
    let mut body = sql.to_vec();
    body.push(0);
    frontend(b'Q', &body)
}

async fn rows(client: &tokio_postgres::Client) -> Result<Vec<(String, i32)>> {
    let rows = client.query("SELECT id, v FROM t ORDER BY v", &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn expected() -> Vec<(String, i32)> {
    [("café", 1), ("plain", 3), ("crème", 4), ("naïve", 5)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}

const SCHEMA: &str = "CREATE TABLE t (id text PRIMARY KEY, v int)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_parse_runs_without_capture() -> Result<()> {
    let cluster = Cluster::start().await?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let proxy = TestProxy::start(&cluster).await?;
    let mut c = latin1(&proxy, cluster.superuser()).await?;
    run_latin1_statements(&mut c).await?;
    ensure!(rows(&direct).await? == expected(), "{:?}", rows(&direct).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_parse_is_captured_with_its_keys() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    let user = e.f.cluster.superuser().to_owned();
    let mut c = latin1(e.proxy(), &user).await?;
    run_latin1_statements(&mut c).await?;
    ensure!(rows(&e.direct).await? == expected(), "{:?}", rows(&e.direct).await?);
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "public.t"));
    Ok(())
}
