//! Query cancel through the proxy: the client's cancel token (the key the
//! proxy handed it at startup) reaches the backend running the query, and a
//! key the proxy does not know cancels nothing.

use crate::support::{expect_sqlstate, within, RawConn, PROMPT};
use anyhow::Result;
use std::time::{Duration, Instant};
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_pg_sleep_through_the_proxy() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let token = client.cancel_token();

    let started = Instant::now();
    let (result, cancelled) = tokio::join!(client.simple_query("select pg_sleep(30)"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    cancelled?;
    let message = expect_sqlstate(result, "57014")?;
    assert!(message.contains("canceling statement due to user request"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // The session is usable after, for both protocols.
    assert_eq!(client.query_one("select 41::int4 + 1", &[]).await?.get::<_, i32>(0), 42);

    // Inside a transaction the cancel fails the transaction, which then
    // rolls back normally.
    client.batch_execute("begin; create table t (x int)").await?;
    let (result, cancelled) = tokio::join!(client.query("select pg_sleep(30)", &[]), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    cancelled?;
    expect_sqlstate(result, "57014")?;
    expect_sqlstate(client.simple_query("select 1").await, "25P02")?;
    client.batch_execute("rollback").await?;
    let exists: bool = client
        .query_one("select to_regclass('t') is not null", &[])
        .await?
        .get(0);
    assert!(!exists, "the cancelled transaction's table exists");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_an_unknown_key_cancels_nothing() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let pid: i32 = client.query_one("select pg_backend_pid()", &[]).await?.get(0);

    let (result, sent) = tokio::join!(client.query_one("select pg_sleep(0.6), 5::int4", &[]), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The right pid with a wrong secret, as a guesser would send it.
        let mut raw = RawConn::connect(proxy.addr()).await?;
        let mut request = 16i32.to_be_bytes().to_vec();
        request.extend(80_877_102i32.to_be_bytes());
        request.extend(pid.to_be_bytes());
        request.extend(12345i32.to_be_bytes());
        raw.send(&request).await?;
        // The proxy answers a cancel request by closing the connection.
        let reply = raw.message().await?;
        anyhow::ensure!(reply.is_none(), "cancel request answered with {reply:?}");
        Ok::<_, anyhow::Error>(())
    });
    sent?;
    let row = within(PROMPT, "query", async { result }).await??;
    assert_eq!(row.get::<_, i32>(1), 5);
    Ok(())
}
