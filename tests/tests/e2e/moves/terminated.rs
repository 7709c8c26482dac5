//! A session whose backend is terminated (pg_terminate_backend, a server
//! shutting down) ends with it, as it would without the proxy, even while
//! sessions are being moved: it is never moved onto a fresh backend after
//! its client was told FATAL.

use super::{start, DB};
use crate::support::backend_pid;
use anyhow::{ensure, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use switchyard_proxy::session::route::{reconnect, Destination, MoveRequest};
use switchyard_tests::init_tracing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_ends_its_session_during_moves() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start().await?;
    let direct = cluster.connect(DB).await?;
    let shared = proxy.proxy().shared().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut orders = 0u32;
            while !stop.load(Ordering::Relaxed) && orders < 2000 {
                let request = MoveRequest {
                    to: Destination::Source,
                    timeout: Duration::from_secs(2),
                    pinned: None,
                    open_at_once: None,
                };
                let _ = reconnect(&shared, request).await;
                orders += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            orders
        })
    };
    let mut told = 0;
    for round in 0..60 {
        let client = proxy.connect(DB).await?;
        let pid = backend_pid(&client).await?;
        direct.execute("select pg_terminate_backend($1)", &[&pid]).await?;
        tokio::time::sleep(Duration::from_millis(30)).await;
        match client.simple_query("select 1").await {
            // The pid was of a backend the session had already left.
            Ok(_) => ensure!(
                backend_pid(&client).await? != pid,
                "round {round}: the session survived the termination of its own backend {pid}"
            ),
            Err(_) => {
                told += 1;
                // Told FATAL: the connection is over, as without the proxy.
                ensure!(
                    client.simple_query("select 1").await.is_err(),
                    "round {round}: the session went on after its backend was terminated"
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let orders = mover.await?;
    ensure!(
        told > 0,
        "no termination reached a session's backend ({orders} move orders)"
    );
    Ok(())
}
