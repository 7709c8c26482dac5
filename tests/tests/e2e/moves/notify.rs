//! LISTEN across a move: an idle listener that moved hears what others
//! notify afterwards, on the channels it listened on and no others, and a
//! session's own notifications carry the pid the client was given at
//! startup (not the new backend's).

use super::{ensure_all_moved, move_sessions, notification, raw_backend_pid, sessions_on, start, DB};
use crate::support::{admin, backend_pid, connect_listening, query_msg, within, RawConn, PROMPT};
use anyhow::{bail, ensure, Context, Result};
use std::time::Duration;
use switchyard_tests::init_tracing;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, Notification};

/// The next notification (notices are skipped).
async fn next(rx: &mut UnboundedReceiver<AsyncMessage>) -> Result<Notification> {
    loop {
        match within(PROMPT, "notification", rx.recv()).await? {
            Some(AsyncMessage::Notification(n)) => return Ok(n),
            Some(_) => continue,
            None => bail!("the listener's connection ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_listener_hears_notifications_after_a_move() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start().await?;
    let (listener, mut rx) = connect_listening(&proxy.pg_config(DB)).await?;
    let notifier = proxy.connect(DB).await?;
    let direct = cluster.connect(DB).await?;
    let admin = admin(&proxy).await?;

    listener
        .batch_execute("LISTEN jobs; LISTEN \"Mixed Case\"; LISTEN dropped; UNLISTEN dropped")
        .await?;
    let before = backend_pid(&listener).await?;
    notifier.batch_execute("NOTIFY jobs, 'before the move'").await?;
    assert_eq!(next(&mut rx).await?.payload(), "before the move");

    ensure_all_moved(&move_sessions(&proxy).await?, 2)?;
    // The listener sends nothing from here on until it has heard: it moved
    // while idle, and must hear while idle.
    let rows = sessions_on(&admin, DB).await?;
    ensure!(
        rows.len() == 2 && rows.iter().all(|r| r["moves"] == "1"),
        "SHOW SESSIONS after the move: {rows:?}"
    );

    let direct_pid: i32 = direct.query_one("select pg_backend_pid()", &[]).await?.get(0);
    direct.execute("select pg_notify('jobs', 'from outside')", &[]).await?;
    let n = next(&mut rx).await?;
    assert_eq!(
        (n.channel(), n.payload(), n.process_id()),
        ("jobs", "from outside", direct_pid)
    );

    // One transaction: delivered at commit, in order, without the channel
    // that was unlistened before the move.
    notifier
        .batch_execute("NOTIFY \"Mixed Case\", 'through the proxy'; NOTIFY dropped, 'unheard'; NOTIFY jobs, 'last'")
        .await?;
    let a = next(&mut rx).await?;
    let b = next(&mut rx).await?;
    assert_eq!(
        [(a.channel(), a.payload()), (b.channel(), b.payload())],
        [("Mixed Case", "through the proxy"), ("jobs", "last")]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let Ok(extra) = rx.try_recv() {
        bail!("an unexpected message arrived: {extra:?}");
    }

    // Only now ask the listener's session where it runs.
    ensure!(backend_pid(&listener).await? != before, "the listener did not move");
    let mut channels: Vec<String> = listener
        .query("select pg_listening_channels()", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    channels.sort();
    assert_eq!(channels, ["Mixed Case", "jobs"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_notification_carries_the_startup_pid() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", DB).await?;
    let key_pid = raw.key.context("BackendKeyData")?.0;
    raw.send(&query_msg("LISTEN self_ch")).await?;
    raw.until_ready().await?;

    let own = |reply: &[crate::support::RawMessage]| -> Result<Vec<(i32, String, String)>> {
        reply.iter().filter(|m| m.tag == b'A').map(notification).collect()
    };
    raw.send(&query_msg("NOTIFY self_ch, 'before'")).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(own(&reply)?, [(key_pid, "self_ch".into(), "before".into())]);

    for round in 0..2 {
        ensure_all_moved(&move_sessions(&proxy).await?, 1)?;
        let payload = format!("after move {round}");
        raw.send(&query_msg(&format!("NOTIFY self_ch, '{payload}'"))).await?;
        let reply = raw.until_ready().await?;
        assert_eq!(own(&reply)?, [(key_pid, "self_ch".into(), payload)], "{reply:?}");
        let pid = raw_backend_pid(&mut raw).await?;
        ensure!(pid != key_pid, "move {round}: the session never left backend {key_pid}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sessions_notification_carries_its_startup_pid() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let mut listener = RawConn::start(proxy.addr(), "postgres", DB).await?;
    let mut notifier = RawConn::start(proxy.addr(), "postgres", DB).await?;
    let notifier_pid = notifier.key.context("BackendKeyData")?.0;
    listener.send(&query_msg("LISTEN other_ch")).await?;
    listener.until_ready().await?;
    for round in 0..2 {
        ensure_all_moved(&move_sessions(&proxy).await?, 2)?;
        let payload = format!("after move {round}");
        notifier
            .send(&query_msg(&format!("NOTIFY other_ch, '{payload}'")))
            .await?;
        notifier.until_ready().await?;
        // The listener hears it with its next exchange.
        listener.send(&query_msg("SELECT 1")).await?;
        let reply = listener.until_ready().await?;
        let heard: Vec<(i32, String, String)> = reply
            .iter()
            .filter(|m| m.tag == b'A')
            .map(notification)
            .collect::<Result<_>>()?;
        assert_eq!(heard, [(notifier_pid, "other_ch".into(), payload)], "{reply:?}");
    }
    Ok(())
}
