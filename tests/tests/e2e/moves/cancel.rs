//! Query cancel across a move: the key the client got at startup still
//! cancels its query after the session moved to another backend.

use super::{ensure_all_moved, move_sessions, start, DB};
use crate::support::{backend_pid, expect_sqlstate, within};
use anyhow::{ensure, Result};
use std::time::{Duration, Instant};
use switchyard_tests::init_tracing;
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_key_cancels_on_the_new_backend() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let client = proxy.connect(DB).await?;
    // Taken before any move: it holds the key from startup.
    let token = client.cancel_token();
    let mut pids = vec![backend_pid(&client).await?];

    for round in 0..2 {
        ensure_all_moved(&move_sessions(&proxy).await?, 1)?;
        let pid = backend_pid(&client).await?;
        ensure!(!pids.contains(&pid), "move {round}: pid {pid} seen before ({pids:?})");
        pids.push(pid);

        let started = Instant::now();
        let sleep = async {
            if round == 0 {
                client.simple_query("select pg_sleep(30)").await.map(drop)
            } else {
                client.query("select pg_sleep(30)", &[]).await.map(drop)
            }
        };
        let (result, cancelled) = within(Duration::from_secs(15), "cancelled pg_sleep", async {
            tokio::join!(sleep, async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                token.cancel_query(NoTls).await
            })
        })
        .await?;
        cancelled?;
        let message = expect_sqlstate(result, "57014")?;
        assert!(message.contains("canceling statement due to user request"), "{message}");
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "move {round}: the cancel took {:?}",
            started.elapsed()
        );
        // The cancelled backend is the one the session is on, and it goes on.
        assert_eq!(backend_pid(&client).await?, pid);
        assert_eq!(client.query_one("select 41::int4 + 1", &[]).await?.get::<_, i32>(0), 42);
    }
    Ok(())
}
