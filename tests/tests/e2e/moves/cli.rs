//! `switchyard reconnect` moves the sessions of a running proxy and prints
//! RECONNECT's row; SHOW STATUS then counts the moves.

use super::{start, DB};
use crate::capture_kill::switchyard_binary;
use crate::support::{admin, backend_pid, table};
use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_tests::init_tracing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_reconnect_moves_every_session() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start().await?;
    let client = proxy.connect(DB).await?;
    let before = backend_pid(&client).await?;
    let mut cmd = tokio::process::Command::new(switchyard_binary()?);
    cmd.args(["reconnect", "--timeout", "10s", "--host", "127.0.0.1", "--port"])
        .arg(proxy.port().to_string())
        .args(["-U", cluster.superuser()])
        .env_remove("PGPASSWORD")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("switchyard reconnect did not finish")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "switchyard reconnect: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout.contains("moved"), "no report in: {stdout}");
    let after = backend_pid(&client).await?;
    ensure!(after != before, "the session is still on backend {before}");
    let status = table(&admin(&proxy).await?, "SHOW STATUS").await?.map();
    ensure!(status["sessions_moved"] == "1", "{status:?}");
    ensure!(
        status["route"] == "source" && status["route_epoch"] == "1",
        "{status:?}"
    );
    Ok(())
}
