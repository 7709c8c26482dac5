//! LISTEN/NOTIFY through the proxy: notifications reach an idle listener
//! whether the notifier is another proxied session or a direct one, NOTIFY
//! in a transaction arrives only on commit, and the proxy counts the
//! listener's channels.

use crate::support::{
    admin, backend_pid, connect_listening, session_by_pid, wait_session, wait_session_state, within, PROMPT,
};
use anyhow::Result;
use std::time::Duration;
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, Notification};

/// The next notification (notices are skipped).
async fn next(rx: &mut UnboundedReceiver<AsyncMessage>) -> Result<Notification> {
    loop {
        match within(PROMPT, "notification", rx.recv()).await? {
            Some(AsyncMessage::Notification(n)) => return Ok(n),
            Some(_) => continue,
            None => anyhow::bail!("the listener's connection ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_across_sessions() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let (listener, mut rx) = connect_listening(&proxy.pg_config("postgres")).await?;
    let notifier = proxy.connect("postgres").await?;
    let direct = cluster.connect("postgres").await?;
    let admin = admin(&proxy).await?;

    listener.batch_execute("LISTEN jobs").await?;
    listener.batch_execute("LISTEN \"Other Channel\"").await?;
    let listener_pid = backend_pid(&listener).await?;
    let notifier_pid = backend_pid(&notifier).await?;

    // The listener sits idle: the proxy must relay what the server sends
    // without a request to answer.
    notifier.batch_execute("NOTIFY jobs, 'first payload'").await?;
    let n = next(&mut rx).await?;
    assert_eq!(
        (n.channel(), n.payload(), n.process_id()),
        ("jobs", "first payload", notifier_pid)
    );

    // Inside a transaction: nothing until commit, then in order; a rolled
    // back NOTIFY never arrives.
    notifier
        .batch_execute("begin; select pg_notify('jobs', 'second'); select pg_notify('Other Channel', 'ünïcode ☃')")
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "a notification arrived before commit");
    notifier.batch_execute("commit").await?;
    let a = next(&mut rx).await?;
    let b = next(&mut rx).await?;
    assert_eq!((a.channel(), a.payload()), ("jobs", "second"));
    assert_eq!((b.channel(), b.payload()), ("Other Channel", "ünïcode ☃"));
    notifier
        .batch_execute("begin; notify jobs, 'rolled back'; rollback")
        .await?;

    // From a session that does not go through the proxy.
    let direct_pid: i32 = direct.query_one("select pg_backend_pid()", &[]).await?.get(0);
    direct
        .execute("select pg_notify('jobs', $1)", &[&"x".repeat(7000)])
        .await?;
    let n = next(&mut rx).await?;
    assert_eq!(n.process_id(), direct_pid);
    assert_eq!(n.payload(), "x".repeat(7000), "the rolled-back NOTIFY arrived");

    // The proxy tracked both channels, and forgets one on UNLISTEN.
    wait_session(&admin, listener_pid, &[("listen_channels", "2")]).await?;
    listener.batch_execute("UNLISTEN jobs").await?;
    wait_session(&admin, listener_pid, &[("listen_channels", "1")]).await?;
    notifier
        .batch_execute("NOTIFY jobs, 'unheard'; NOTIFY \"Other Channel\", 'heard'")
        .await?;
    let n = next(&mut rx).await?;
    assert_eq!((n.channel(), n.payload()), ("Other Channel", "heard"));
    Ok(())
}

/// The proxy must know every channel a session listens on (and every SET)
/// to move the session to another backend. Clients often send several
/// statements in one simple query (psql scripts, `batch_execute`), and each
/// of them changes the session.
#[tokio::test]
async fn session_state_from_multi_statement_queries_is_tracked() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let admin = admin(&proxy).await?;
    let pid = backend_pid(&client).await?;

    client
        .batch_execute("LISTEN a; LISTEN b; SET work_mem = '8MB'; SET statement_timeout = '5s'")
        .await?;
    // The server has both channels and both settings.
    let row = client
        .query_one(
            "select (select count(*) from pg_listening_channels()),
                    current_setting('work_mem'), current_setting('statement_timeout')",
            &[],
        )
        .await?;
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, String>(1), row.get::<_, String>(2)),
        (2, "8MB".to_owned(), "5s".to_owned())
    );
    wait_session_state(&admin, pid, "idle").await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let row = session_by_pid(&admin, pid).await?.expect("session listed");
    anyhow::ensure!(
        row["listen_channels"] == "2" && row["settings"] == "2",
        "SHOW SESSIONS tracks {} channel(s) and {} setting(s), the server has 2 and 2",
        row["listen_channels"],
        row["settings"]
    );
    Ok(())
}

#[tokio::test]
async fn notices_reach_the_client() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let (client, mut rx) = connect_listening(&proxy.pg_config("postgres")).await?;
    client
        .batch_execute(
            "set client_min_messages = notice;
             do $$ begin raise notice 'hello %', 42; raise warning 'careful'; end $$",
        )
        .await?;
    let mut notices = Vec::new();
    while notices.len() < 2 {
        match within(PROMPT, "notice", rx.recv()).await? {
            Some(AsyncMessage::Notice(n)) => notices.push((n.severity().to_owned(), n.message().to_owned())),
            Some(_) => {}
            None => anyhow::bail!("connection ended"),
        }
    }
    assert_eq!(
        notices,
        [
            ("NOTICE".to_owned(), "hello 42".to_owned()),
            ("WARNING".to_owned(), "careful".to_owned())
        ]
    );
    Ok(())
}
