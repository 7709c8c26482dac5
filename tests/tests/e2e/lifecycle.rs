//! A connection's and the proxy's life at their edges: clients that stall
//! during startup are dropped after `limits.startup_timeout_ms`, and a
//! graceful shutdown closes idle sessions with 57P01 while letting open
//! transactions finish.

use crate::support::{
    auth_config, connect_watched, expect_sqlstate, startup_message, trusting_config, user, within, RawConn, PROMPT,
};
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use switchyard_proxy::AuthMethod;
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio::net::TcpStream;
use tokio_postgres::SimpleQueryMessage;

/// Expects the proxy to drop `raw` with 08P01 about 300 ms after `since`.
async fn expect_timeout(raw: &mut RawConn, since: Instant, what: &str) -> Result<()> {
    let fields = raw.expect_error_and_close("08P01").await.context(what.to_owned())?;
    let waited = since.elapsed();
    assert!(fields[&'M'].contains("did not complete in time"), "{what}: {fields:?}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{what}: dropped after {waited:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_dropped_after_the_startup_timeout() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder().user("app", "app-pw").start().await?;
    let mut config = auth_config(
        cluster.host(),
        cluster.port(),
        AuthMethod::Md5,
        vec![user("app", Some("app-pw"), false)],
    );
    config.limits.startup_timeout_ms = 300;
    let proxy = TestProxy::start_with(config).await?;

    // Connects and says nothing.
    let since = Instant::now();
    let mut silent = RawConn::connect(proxy.addr()).await?;
    expect_timeout(&mut silent, since, "silent client").await?;
    // Sends half a startup packet.
    let since = Instant::now();
    let mut partial = RawConn::connect(proxy.addr()).await?;
    partial.send(&startup_message(&[("user", "app")])[..6]).await?;
    expect_timeout(&mut partial, since, "partial startup packet").await?;
    // Starts up, is asked for a password, and never answers.
    let since = Instant::now();
    let mut mute = RawConn::connect(proxy.addr()).await?;
    mute.send(&startup_message(&[("user", "app"), ("database", "postgres")]))
        .await?;
    let challenge = mute.expect_message().await?;
    assert_eq!(challenge.tag, b'R');
    assert_eq!(&challenge.body[..4], &5i32.to_be_bytes(), "AuthenticationMD5Password");
    expect_timeout(&mut mute, since, "client silent during authentication").await?;

    // Meanwhile a real client logs in well within the limit.
    let client = proxy.connect_as("app", Some("app-pw"), "postgres").await?;
    let who: String = client.query_one("select current_user::text", &[]).await?.get(0);
    assert_eq!(who, "app");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_sessions_with_57p01() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let addr = proxy.addr();
    let (client, connection) = connect_watched(&proxy.pg_config("postgres")).await?;
    // The simple protocol leaves nothing behind: tokio-postgres closes the
    // statement of an extended query in the background, and a Close racing
    // the shutdown would take the 57P01 as its own answer.
    let rows = client.simple_query("select 1").await?;
    assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("1")));

    let started = Instant::now();
    within(PROMPT, "shutdown", proxy.shutdown()).await?;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    let ended = within(PROMPT, "connection end", connection).await??;
    let message = expect_sqlstate(ended, "57P01")?;
    assert!(message.contains("shutting down"), "{message}");
    assert!(client.simple_query("select 1").await.is_err());
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_open_transaction_finish() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let addr = proxy.addr();
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute("create table t (v int)").await?;
    let (client, connection) = connect_watched(&proxy.pg_config("postgres")).await?;
    client.batch_execute("begin; insert into t values (1)").await?;

    let shutdown = tokio::spawn(proxy.shutdown());
    // New clients are turned away at once, the open transaction is not.
    let deadline = Instant::now() + PROMPT;
    while TcpStream::connect(addr).await.is_ok() {
        ensure!(Instant::now() < deadline, "the proxy still accepts clients");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!shutdown.is_finished(), "shutdown did not wait for the transaction");
    client.batch_execute("insert into t values (2)").await?;
    let row = client.query_one("select count(*) from t", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), 2);
    client.batch_execute("commit").await?;

    // At the transaction's end the session is closed and shutdown completes.
    let ended = within(PROMPT, "connection end", connection).await??;
    expect_sqlstate(ended, "57P01")?;
    within(PROMPT, "shutdown", shutdown).await??;
    let values: Vec<i32> = direct
        .query("select v from t order by v", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(values, [1, 2]);
    Ok(())
}

/// An admin console session holds no transaction, so shutdown should close
/// it at once, as it does idle client sessions, rather than wait out
/// `limits.shutdown_timeout_ms` and then drop it without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_an_idle_admin_session() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.limits.shutdown_timeout_ms = 4000;
    let proxy = TestProxy::start_with(config).await?;
    let (console, connection) = connect_watched(&proxy.pg_config("switchyard")).await?;
    console.simple_query("SHOW VERSION").await?;

    let started = Instant::now();
    within(Duration::from_secs(10), "shutdown", proxy.shutdown()).await?;
    let took = started.elapsed();
    let ended = within(PROMPT, "console connection end", connection).await??;
    ensure!(
        took < Duration::from_secs(2) && ended.as_ref().err().and_then(|e| e.code()).map(|c| c.code()) == Some("57P01"),
        "shutdown took {took:?} with an idle admin session open, which ended with {ended:?}"
    );
    Ok(())
}

#[tokio::test]
async fn too_many_clients_get_53300() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.limits.max_clients = 2;
    let proxy = TestProxy::start_with(config).await?;
    let a = proxy.connect("postgres").await?;
    let b = proxy.connect("postgres").await?;
    let message = expect_sqlstate(proxy.connect("postgres").await, "53300")?;
    assert!(message.contains("too many clients"), "{message}");
    // The two sessions are unaffected, and a place frees up when one leaves.
    assert_eq!(b.query_one("select 2::int4", &[]).await?.get::<_, i32>(0), 2);
    drop(a);
    let deadline = Instant::now() + PROMPT;
    let c = loop {
        match proxy.connect("postgres").await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                ensure!(e.code().map(|c| c.code()) == Some("53300"), "{e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(c.query_one("select 3::int4", &[]).await?.get::<_, i32>(0), 3);
    Ok(())
}

/// Same as for the admin console: a connection still in its startup phase
/// (here one that has sent nothing yet) does not watch for shutdown, so
/// shutdown waits for it until `limits.shutdown_timeout_ms`.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_in_startup() -> Result<()> {
    init_tracing();
    // No database is needed: the client never gets that far.
    let mut config = trusting_config("127.0.0.1", 9);
    config.limits.shutdown_timeout_ms = 3000;
    let proxy = TestProxy::start_with(config).await?;
    let mut silent = RawConn::connect(proxy.addr()).await?;
    // Let the proxy accept it before shutting down.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    within(Duration::from_secs(10), "shutdown", proxy.shutdown()).await?;
    let took = started.elapsed();
    let reply = silent.message().await?;
    ensure!(
        took < Duration::from_secs(2),
        "shutdown took {took:?} with a client in startup; the client got {reply:?}"
    );
    Ok(())
}
