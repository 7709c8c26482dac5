//! A standalone catch-up process (`switchyard catchup run`) killed with
//! SIGKILL at random moments while it applies batches, and started again
//! each time: the confirmed position only moves forward, the replayer's
//! hold on the capture log never runs ahead of it, and once the source is
//! quiet the last run leaves the target equal to the source.

use crate::capture::Fixture;
use crate::capture_kill::switchyard_binary;
use crate::clone::{assert_same, catchup_run, config_file, load, switchyard, text, SCHEMA};
use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use std::process::Stdio;
use std::time::Duration;
use tokio_postgres::Client;

async fn position(target: &Client) -> Result<i64> {
    let row = target
        .query_one("SELECT coalesce(min(lsn), 0) FROM switchyard.replay_position", &[])
        .await;
    // Before the first run the table does not exist yet.
    Ok(row.map(|r| r.get(0)).unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_catchup_process_resumes_without_divergence() -> Result<()> {
    let f = Fixture::start().await?;
    let source = f.cluster.connect("postgres").await?;
    source.batch_execute(SCHEMA).await?;
    source.batch_execute("CREATE DATABASE target").await?;
    let work = tempfile::tempdir()?;
    // Small batches: many target transactions for the kills to land in.
    let config = config_file(work.path(), &f, f.cluster.port(), "target", "batch_keys = 40\n")?;
    f.capture_start().await?;
    let mut writers = Vec::new();
    for w in 0..2u64 {
        writers.push(tokio::spawn(load(f.proxy.connect("postgres").await?, 40 + w, 1500)));
    }
    let out = switchyard(
        &f,
        &[
            "clone",
            "--config",
            &config.display().to_string(),
            "--jobs",
            "2",
            "--no-owner",
        ],
    )
    .await?;
    ensure!(out.status.success(), "{}", text(&out));
    let target = f.cluster.connect("target").await?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut last = 0i64;
    let mut advanced = 0;
    for _ in 0..6 {
        let mut child = tokio::process::Command::new(switchyard_binary()?)
            .args(["catchup", "run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        child.start_kill()?;
        child.wait().await?;
        let now = position(&target).await?;
        ensure!(now >= last, "the confirmed position went back from {last} to {now}");
        // The hold in the log directory never claims more than the target
        // committed: a restart resumes from the table, so the log must
        // still have everything after it.
        // (A run killed before its first read has written none, nor
        // committed anything.)
        match replayer_hold(&f)? {
            Some(held) => ensure!(
                held <= now,
                "the replayer's hold {held} is ahead of its committed position {now}"
            ),
            None => ensure!(now == 0, "position {now} committed without a hold on the log"),
        }
        if now > last {
            advanced += 1;
        }
        last = now;
    }
    ensure!(advanced > 0, "no killed run confirmed anything");
    for w in writers {
        w.await??;
    }
    let out = catchup_run(&config).await?;
    ensure!(out.status.success(), "{}", text(&out));
    let end = position(&target).await?;
    ensure!(end >= last);
    ensure!(
        replayer_hold(&f)? == Some(end),
        "the finished run's hold is not its final position {end}"
    );
    assert_same(&source, &target).await
}

/// The confirmed position of the replayer's hold in the fixture's log, if
/// it wrote one.
fn replayer_hold(f: &Fixture) -> Result<Option<i64>> {
    let holds = switchyard_replay::log::read_holds(f.log_path())?;
    ensure!(holds.len() <= 1, "expected one hold, found {holds:?}");
    let Some(hold) = holds.first() else { return Ok(None) };
    ensure!(hold.name.starts_with("replayer-target@"), "{holds:?}");
    Ok(Some(hold.confirmed.0 as i64))
}
