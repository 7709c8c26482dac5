//! Session moves: a client session switched to a fresh backend at a
//! transaction boundary, by `reconnect()` (a fresh backend of the same
//! database) or by `RECONNECT TO target FORCE` on the console (another
//! database of the same cluster, whose catalog, and so whose user type
//! OIDs, differ). What the client built up on its old backend (prepared
//! statements, settings, LISTEN channels, its cancel key) must still work
//! on the new one, and a move under load must neither lose nor repeat a
//! request.

mod cancel;
mod cli;
mod load;
mod notify;
mod pinned;
mod prepared;
mod state;
mod terminated;

use crate::support::{table, trusting_config, Table, PROMPT};
use anyhow::{bail, ensure, Context, Result};
use bytes::Buf;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use switchyard_proxy::config::DatabaseConfig;
use switchyard_proxy::session::route::{reconnect, Destination, MoveReport, MoveRequest};
use switchyard_tests::{Cluster, TestProxy};
use tokio_postgres::Client;

/// The database clients log in to.
pub const DB: &str = "app";

/// The second database of the same cluster that `[target]` names.
pub const TARGET_DB: &str = "app_target";

/// A cluster with [`DB`] and a proxy in front of it.
pub async fn start() -> Result<(Cluster, TestProxy)> {
    let cluster = Cluster::builder().database(DB).start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    Ok((cluster, proxy))
}

/// A cluster with [`DB`] and [`TARGET_DB`], and a proxy whose `[target]`
/// is [`TARGET_DB`]. Sessions log in to [`DB`] on the source side.
pub async fn start_with_target() -> Result<(Cluster, TestProxy)> {
    let cluster = Cluster::builder().database(DB).database(TARGET_DB).start().await?;
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.target = Some(DatabaseConfig {
        host: cluster.host().to_owned(),
        port: cluster.port(),
        database: Some(TARGET_DB.to_owned()),
        user: None,
        password: None,
        ..Default::default()
    });
    let proxy = TestProxy::start_with(config)
        .await?
        .with_login(cluster.superuser(), None)
        .with_binaries(cluster.binaries().clone());
    Ok((cluster, proxy))
}

/// Moves every client session to a fresh backend of the database it is on,
/// waiting up to `timeout` for them.
pub async fn move_within(proxy: &TestProxy, timeout: Duration) -> Result<MoveReport> {
    let request = MoveRequest {
        to: Destination::Source,
        timeout,
        pinned: None,
        open_at_once: None,
    };
    let report = tokio::time::timeout(timeout + PROMPT, reconnect(proxy.proxy().shared(), request))
        .await
        .context("reconnect() overran its own timeout")??;
    Ok(report)
}

/// [`move_within`] with the usual timeout.
pub async fn move_sessions(proxy: &TestProxy) -> Result<MoveReport> {
    move_within(proxy, PROMPT).await
}

/// Checks that a move order found `sessions` client sessions and moved
/// every one of them.
pub fn ensure_all_moved(report: &MoveReport, sessions: usize) -> Result<()> {
    ensure!(
        report.sessions == sessions && report.moved == sessions,
        "expected {sessions} session(s) found and moved, got {report:?}"
    );
    Ok(())
}

/// `RECONNECT TO target TIMEOUT <timeout> FORCE` on the console; its one
/// row as a map from column to value.
pub async fn move_to_target(admin: &Client, timeout: &str) -> Result<BTreeMap<String, String>> {
    let sql = format!("RECONNECT TO target TIMEOUT {timeout} FORCE");
    let t = crate::support::within(Duration::from_secs(60), "RECONNECT", table(admin, &sql))
        .await?
        .with_context(|| format!("{sql} failed"))?;
    let row = row_map(&t, 0).with_context(|| format!("{sql} returned no row: {t:?}"))?;
    Ok(row)
}

/// Row `i` of `t` as a map from column to value (NULL as empty).
pub fn row_map(t: &Table, i: usize) -> Option<BTreeMap<String, String>> {
    let row = t.rows.get(i)?;
    Some(
        t.columns
            .iter()
            .zip(row)
            .map(|(c, v)| (c.clone(), v.clone().unwrap_or_default()))
            .collect(),
    )
}

/// The `SHOW SESSIONS` rows of client sessions on database `db` (the name
/// they logged in with).
pub async fn sessions_on(admin: &Client, db: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let t = table(admin, "SHOW SESSIONS").await?;
    Ok(t.rows_where("database", db)
        .into_iter()
        .filter_map(|i| row_map(&t, i))
        .collect())
}

/// Waits until `SHOW SESSIONS` lists `n` sessions on `db` that have a
/// backend; returns their rows.
pub async fn wait_sessions(
    admin: &Client,
    db: &str,
    n: usize,
    limit: Duration,
) -> Result<Vec<BTreeMap<String, String>>> {
    let deadline = Instant::now() + limit;
    loop {
        let rows: Vec<_> = sessions_on(admin, db)
            .await?
            .into_iter()
            .filter(|r| !r["backend_pid"].is_empty())
            .collect();
        if rows.len() == n {
            return Ok(rows);
        }
        if Instant::now() >= deadline {
            bail!("{n} sessions on {db} never showed up within {limit:?}; last {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Wire-protocol pieces the shared raw client does not build.

/// Parse of statement `name` with explicit parameter type OIDs.
pub fn parse_typed(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut body = crate::support::cstr(name);
    body.extend(crate::support::cstr(sql));
    body.extend((types.len() as i16).to_be_bytes());
    for oid in types {
        body.extend(oid.to_be_bytes());
    }
    crate::support::frontend(b'P', &body)
}

/// Bind of statement `stmt` to the unnamed portal with text parameters
/// and text results.
pub fn bind_text(stmt: &str, params: &[&str]) -> Vec<u8> {
    let mut body = crate::support::cstr("");
    body.extend(crate::support::cstr(stmt));
    body.extend(0i16.to_be_bytes());
    body.extend((params.len() as i16).to_be_bytes());
    for p in params {
        body.extend((p.len() as i32).to_be_bytes());
        body.extend(p.as_bytes());
    }
    body.extend(0i16.to_be_bytes());
    crate::support::frontend(b'B', &body)
}

/// The message tags of a reply, without the ParameterStatus and notice
/// messages a proxy may slip in after a move.
pub fn tags(messages: &[crate::support::RawMessage]) -> String {
    messages
        .iter()
        .map(|m| m.tag)
        .filter(|t| !matches!(t, b'S' | b'N'))
        .map(char::from)
        .collect()
}

/// A NotificationResponse's pid, channel and payload.
pub fn notification(m: &crate::support::RawMessage) -> Result<(i32, String, String)> {
    ensure!(m.tag == b'A', "not a NotificationResponse: {m:?}");
    let mut b = &m.body[..];
    let pid = b.get_i32();
    let mut parts = b.split(|&c| c == 0).map(|s| String::from_utf8_lossy(s).into_owned());
    let channel = parts.next().context("channel")?;
    let payload = parts.next().context("payload")?;
    Ok((pid, channel, payload))
}

/// Runs a simple query on a raw connection and returns its first column.
pub async fn raw_column(raw: &mut crate::support::RawConn, sql: &str) -> Result<Vec<Option<String>>> {
    raw.send(&crate::support::query_msg(sql)).await?;
    let reply = raw.until_ready().await?;
    if let Some(e) = reply.iter().find(|m| m.tag == b'E') {
        bail!("{sql}: {:?}", e.fields());
    }
    Ok(crate::support::first_column(&reply))
}

/// The backend pid a raw connection's session runs on now.
pub async fn raw_backend_pid(raw: &mut crate::support::RawConn) -> Result<i32> {
    let col = raw_column(raw, "select pg_backend_pid()").await?;
    let pid = col.first().cloned().flatten().context("no pid row")?;
    Ok(pid.parse()?)
}
