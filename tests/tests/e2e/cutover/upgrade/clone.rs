//! `switchyard clone` from a PostgreSQL 15 source into a 17 target: the
//! product's own logical clone (an exported snapshot, pg_dump in directory
//! format with parallel jobs, pg_restore in parallel), run with Debian's 15
//! client programs while writes go through the proxy; catch-up then brings
//! the 17 copy level with the source, compared row for row.

use super::{server_version_num, TARGET_MAJOR};
use crate::capture_kill::switchyard_binary;
use crate::clone::{assert_same, load, text, SCHEMA};
use crate::cutover::Cut;
use crate::support::table;
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use switchyard_tests::Cluster;

/// The proxy's settings as a file for the binary: the same source, log and
/// target as the proxy the fixture started.
fn config_file(cut: &Cut) -> Result<std::path::PathBuf> {
    let path = cut.dir.path().join("switchyard.toml");
    let text = format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\n\n[auth]\nmethod = \"trust\"\n\n\
         [capture]\nlog_dir = \"{}\"\nuser = \"{}\"\ndatabase = \"postgres\"\n\n\
         [target]\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"postgres\"\nuser = \"{}\"\n",
        cut.source.port(),
        cut.dir.path().join("log").display(),
        cut.source.superuser(),
        cut.target.port(),
        cut.target.superuser(),
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Waits until catch-up has applied everything logged, with no write going on.
async fn applied_all(cut: &Cut) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lag = table(&cut.admin, "SHOW LAG").await?.map();
        ensure!(lag.get("state").map(String::as_str) == Some("running"), "{lag:?}");
        let zero = |k: &str| lag.get(k).map(String::as_str) == Some("0");
        if zero("positions_behind") && zero("commits_pending") && zero("keys_pending") {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "catch-up did not finish: {lag:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_clone_copies_a_15_source_into_a_17_target() -> Result<()> {
    let Some(newer) = super::newer_or_skip("switchyard_clone_copies_a_15_source_into_a_17_target")? else {
        return Ok(());
    };
    let (source, target) = tokio::try_join!(Cluster::start(), Cluster::builder().binaries(newer).start())?;
    let cut = Cut::start_with(source, target, SCHEMA, "", |_| {}).await?;
    let config = config_file(&cut)?;
    cut.capture().await?;

    let mut writers = Vec::new();
    for w in 0..2u64 {
        let c = cut.proxy.connect("postgres").await?;
        writers.push(tokio::spawn(load(c, 40 + w, 800)));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dump = cut.dir.path().join("dump");
    let mut cmd = tokio::process::Command::new(switchyard_binary()?);
    cmd.args(["clone", "--config"])
        .arg(&config)
        .args(["--jobs", "2", "--no-owner", "--progress-every", "1", "--dir"])
        .arg(&dump)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(cut.proxy.port().to_string())
        .args(["-U", cut.source.superuser()])
        .env_remove("PGPASSWORD")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("switchyard clone did not finish in 120 s")??;
    let shown = text(&out);
    ensure!(out.status.success(), "{shown}");
    for expected in ["snapshot", "dump: done", "restore: done", "cloned 2 tables"] {
        ensure!(shown.contains(expected), "no {expected:?} in\n{shown}");
    }

    cut.admin.simple_query("CATCHUP START").await.context("CATCHUP START")?;
    for w in writers {
        w.await??;
    }
    applied_all(&cut).await?;
    let source = cut.source.connect("postgres").await?;
    let target = cut.target.connect("postgres").await?;
    server_version_num(&source, 15).await?;
    server_version_num(&target, TARGET_MAJOR).await?;
    assert_same(&source, &target).await
}
