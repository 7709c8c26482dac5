//! The proxy's side towards the database: a Unix-socket backend, a database
//! that is not there (08006, and the proxy keeps serving), and one that goes
//! away and comes back.

use crate::support::{admin, connect_watched, expect_sqlstate, status, table, trusting_config, within, PROMPT};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use switchyard_tests::{free_port, init_tracing, Cluster, TestProxy};
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_backend() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let dir = cluster.socket_dir().to_str().context("socket dir is UTF-8")?;
    let proxy = TestProxy::start_with(trusting_config(dir, cluster.port())).await?;
    let client = proxy.connect("postgres").await?;
    let direct = cluster.connect("postgres").await?;

    // Over a Unix socket the server has no address of its own.
    let sql = "select inet_server_addr()::text, current_setting('port')::int4";
    let via = client.query_one(sql, &[]).await?;
    assert_eq!(
        via.get::<_, Option<String>>(0),
        None,
        "the proxy did not use the socket"
    );
    assert_eq!(via.get::<_, i32>(1), i32::from(cluster.port()));
    let tcp = direct.query_one(sql, &[]).await?;
    assert_eq!(tcp.get::<_, Option<String>>(0).as_deref(), Some("127.0.0.1/32"));

    client
        .batch_execute("create table t (v int); insert into t select generate_series(1, 1000)")
        .await?;
    let sum: i64 = direct.query_one("select sum(v) from t", &[]).await?.get(0);
    assert_eq!(sum, 500_500);

    // Cancel is routed to the backend through the socket too.
    let token = client.cancel_token();
    let started = Instant::now();
    let (result, cancelled) = tokio::join!(client.simple_query("select pg_sleep(30)"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    cancelled?;
    expect_sqlstate(result, "57014")?;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        client.query_one("select count(*) from t", &[]).await?.get::<_, i64>(0),
        1000
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_database_gives_08006_and_the_proxy_keeps_serving() -> Result<()> {
    init_tracing();
    // Nothing listens on this port.
    let port = free_port()?;
    let mut config = trusting_config("127.0.0.1", port);
    config.limits.connect_timeout_ms = 2000;
    let proxy = TestProxy::start_with(config).await?;

    for _ in 0..3 {
        let started = Instant::now();
        let message = expect_sqlstate(proxy.connect("postgres").await, "08006")?;
        assert!(
            message.contains("could not connect to the database") && message.contains(&format!("127.0.0.1:{port}")),
            "{message}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // The console still answers, and counted the refusals.
    let admin = admin(&proxy).await?;
    assert_eq!(status(&admin).await?["state"], "serving");
    let stats = table(&admin, "SHOW STATS").await?.map();
    assert_eq!(stats["connections_refused"], "3");
    assert_eq!(stats["connections_open"], "1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_is_survived() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let (client, connection) = connect_watched(&proxy.pg_config("postgres")).await?;
    client
        .batch_execute("create table kept (v int); insert into kept values (42)")
        .await?;

    cluster.stop().await?;
    // The server's own goodbye reaches the client.
    let ended = within(PROMPT, "connection end", connection).await??;
    let message = expect_sqlstate(ended, "57P01")?;
    assert!(message.contains("terminating connection"), "{message}");
    let message = expect_sqlstate(proxy.connect("postgres").await, "08006")?;
    assert!(message.contains("could not connect"), "{message}");
    let admin = admin(&proxy).await?;
    assert_eq!(status(&admin).await?["state"], "serving");

    // The same proxy serves again once the database is back.
    cluster.start_again().await?;
    let client = proxy.connect("postgres").await?;
    let v: i32 = client.query_one("select v from kept", &[]).await?.get(0);
    assert_eq!(v, 42);
    Ok(())
}
