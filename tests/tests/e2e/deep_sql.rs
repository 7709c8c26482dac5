//! Statements nested or chained far deeper than any application writes,
//! through the proxy: with capture on they are refused (0A000, kind
//! `too-complex`) and never crash the proxy; with capture off PostgreSQL
//! answers them itself. Either way the session and every other session go
//! on working.

use crate::capture::Fixture;
use crate::support::{expect_sqlstate, within};
use anyhow::{ensure, Result};
use std::time::Duration;
use switchyard_tests::{Cluster, TestProxy};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Generous: a 3 MB statement takes a while to tokenize in a debug build.
const DEEP: Duration = Duration::from_secs(120);

/// Deep statements of several shapes, each about `bytes` long; the last
/// ones write.
fn shapes(bytes: usize) -> Vec<String> {
    let n = |unit: usize| bytes / unit;
    vec![
        format!("select 1{}", "+1".repeat(n(2))),
        format!("select {}1{}", "(".repeat(n(2)), ")".repeat(n(2))),
        format!("select {}true", "not ".repeat(n(4))),
        format!("select '{{}}'::jsonb{}", " -> 'a'".repeat(n(7))),
        vec!["select 1"; n(15)].join(" union all "),
        format!("insert into deep values (1{})", "+1".repeat(n(2))),
        format!("delete from deep where {}", vec!["id = 1"; n(10)].join(" or ")),
    ]
}

async fn one_value(client: &Client, sql: &str) -> Result<String> {
    let rows = client.simple_query(sql).await?;
    match rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    }) {
        Some(v) => Ok(v),
        None => anyhow::bail!("no row from {sql}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_statements_are_refused_under_capture_and_the_proxy_lives() -> Result<()> {
    let f = Fixture::start().await?;
    let direct = f.cluster.connect("postgres").await?;
    direct
        .batch_execute("create table deep (id int primary key); insert into deep values (1)")
        .await?;
    f.capture_start().await?;
    let other = f.proxy.connect("postgres").await?;
    let client = f.proxy.connect("postgres").await?;
    for bytes in [300_000, 3_000_000] {
        for sql in shapes(bytes) {
            let head: String = sql.chars().take(40).collect();
            let result = within(DEEP, "a deep statement", client.simple_query(&sql)).await?;
            let message = expect_sqlstate(result, "0A000")?;
            ensure!(message.contains("too-complex"), "{head}... ({bytes} bytes): {message}");
            both_go_on(&client, &other).await?;
        }
    }
    // The refused writes wrote nothing.
    let n: i64 = direct.query_one("select count(*) from deep", &[]).await?.get(0);
    ensure!(n == 1, "{n} rows in deep");
    // A long flat write is still captured normally.
    let rows: Vec<String> = (2..10_002).map(|i| format!("({i})")).collect();
    client
        .simple_query(&format!("insert into deep values {}", rows.join(", ")))
        .await?;
    let n: i64 = direct.query_one("select count(*) from deep", &[]).await?.get(0);
    ensure!(n == 10_001, "{n} rows in deep");
    let fresh = f.proxy.connect("postgres").await?;
    ensure!(
        one_value(&fresh, "select 'new'").await? == "new",
        "new sessions are served"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_statements_without_capture_get_postgresql_answers() -> Result<()> {
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let other = proxy.connect("postgres").await?;
    for sql in shapes(300_000).into_iter().take(5) {
        // PostgreSQL runs some and refuses others (54001 stack depth limit
        // exceeded, 54000 too many nested operands...): relayed either way.
        let result = within(DEEP, "a deep statement", client.simple_query(&sql)).await?;
        if let Err(e) = result {
            ensure!(e.as_db_error().is_some(), "not a database error: {e:?}");
        }
        both_go_on(&client, &other).await?;
    }
    Ok(())
}

/// The session that sent a deep statement and another one both still work.
async fn both_go_on(client: &Client, other: &Client) -> Result<()> {
    ensure!(one_value(client, "select 41 + 1").await? == "42", "the session goes on");
    ensure!(
        one_value(other, "select 'alive'").await? == "alive",
        "another session goes on"
    );
    Ok(())
}
