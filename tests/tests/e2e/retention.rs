//! Capture log retention against real PostgreSQL: with small segments and a
//! write load through the proxy, the segments every replayer has confirmed
//! are deleted while a stopped standalone replayer (`switchyard catchup
//! run`) keeps its own until it runs again; a replayer that needs deleted
//! records is refused with the oldest position kept; both targets end equal
//! to the source. A disk threshold above the free space warns in SHOW
//! CAPTURE and the metrics.

use crate::capture::Fixture;
use crate::clone::{assert_same, catchup_run, caught_up, config_file, load, text, SCHEMA};
use crate::support::{metric, scrape};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use switchyard_proxy::DatabaseConfig;
use switchyard_tests::Cluster;

fn number(capture: &BTreeMap<String, String>, key: &str) -> Result<u64> {
    capture
        .get(key)
        .with_context(|| format!("SHOW CAPTURE has no {key}: {capture:?}"))?
        .parse()
        .with_context(|| format!("{key} in {capture:?}"))
}

/// The confirmed position of the hold whose name starts with `prefix`, as
/// SHOW CAPTURE lists it.
fn hold(capture: &BTreeMap<String, String>, prefix: &str) -> Option<u64> {
    let (_, v) = capture.iter().find(|(k, _)| k.starts_with(&format!("hold.{prefix}")))?;
    v.strip_prefix("confirmed ")?.split(' ').next()?.parse().ok()
}

/// Polls SHOW CAPTURE until `done` holds (retention runs once a second).
async fn capture_until(
    f: &Fixture,
    what: &str,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = f.show_capture().await?;
        if done(&m) {
            return Ok(m);
        }
        ensure!(Instant::now() < deadline, "{what}: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_segments_are_deleted_and_a_stopped_replayer_keeps_its_own() -> Result<()> {
    let cluster = Cluster::builder().start().await?;
    let port = cluster.port();
    let f = Fixture::configured(cluster, |c| {
        c.target = Some(DatabaseConfig {
            host: "127.0.0.1".into(),
            port,
            database: Some("target".into()),
            user: None,
            password: None,
            ..Default::default()
        });
        c.catchup.workers = 2;
        c.capture.segment_bytes = 8 * 1024;
        c.capture.retain_records = 200;
        c.capture.disk_warn_free_bytes = 1;
        c.metrics.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await?;
    let source = f.cluster.connect("postgres").await?;
    source.batch_execute(SCHEMA).await?;
    for db in ["target", "standby", "late"] {
        source.batch_execute(&format!("CREATE DATABASE {db}")).await?;
    }
    f.capture_start().await?;
    load(f.proxy.connect("postgres").await?, 1, 100).await?;
    // Copies taken after the barrier. The log is held from its start for
    // the two that are caught up, as `switchyard clone` does; "late" is a
    // copy made by other means whose catch-up starts only at the end.
    let target = f.clone_into("target").await?;
    let standby = f.clone_into("standby").await?;
    f.clone_into("late").await?;
    for db in ["target", "standby"] {
        // As the config files name them (the hold is named by the target).
        let mut pg = tokio_postgres::Config::new();
        pg.host("127.0.0.1").port(port).dbname(db).user(f.cluster.superuser());
        switchyard_replay::replayer::hold_log_for_new_copy(&f.log_path(), &pg)?;
    }
    let work = tempfile::tempdir()?;
    let standby_config = config_file(work.path(), &f, port, "standby", "")?;
    let late_config = config_file(work.path(), &f, port, "late", "")?;

    // Nothing has been confirmed yet: nothing is deleted, however long the
    // log grows.
    load(f.proxy.connect("postgres").await?, 2, 300).await?;
    let before = capture_until(&f, "a retention pass over the grown log", |m| {
        number(m, "log_segments").is_ok_and(|n| n > 3)
    })
    .await?;
    ensure!(before["log_holds"] == "2", "{before:?}");
    ensure!(hold(&before, "replayer-standby@") == Some(0), "{before:?}");
    ensure!(number(&before, "log_oldest_lsn")? == 1, "{before:?}");
    ensure!(number(&before, "log_deleted_segments")? == 0, "{before:?}");

    // The standalone replayer catches up once and stops: its hold stays at
    // what it confirmed.
    let out = catchup_run(&standby_config).await?;
    ensure!(out.status.success(), "{}", text(&out));
    let shown = capture_until(&f, "the standby's hold to move", |m| {
        hold(m, "replayer-standby@").is_some_and(|h| h > 1)
    })
    .await?;
    let standby_at = hold(&shown, "replayer-standby@").context("standby hold")?;

    // Catch-up in the proxy, under load: it confirms as it goes, but the
    // stopped replayer keeps every segment after its position.
    let console = crate::support::admin(&f.proxy).await?;
    console.simple_query("CATCHUP START").await?;
    let mut writers = Vec::new();
    for w in 0..2u64 {
        writers.push(tokio::spawn(load(f.proxy.connect("postgres").await?, 10 + w, 1000)));
    }
    for w in writers {
        w.await??;
    }
    caught_up(&console, "running").await?;
    let held = capture_until(&f, "the proxy's catch-up hold to pass the standby's", |m| {
        hold(m, "replayer-target@").is_some_and(|t| t > standby_at + 1000)
    })
    .await?;
    let oldest = number(&held, "log_oldest_lsn")?;
    ensure!(
        oldest <= standby_at + 1,
        "a segment the stopped replayer needs was deleted: oldest kept {oldest}, it needs {}: {held:?}",
        standby_at + 1
    );
    ensure!(number(&held, "log_segments")? > 10, "{held:?}");

    // The standalone replayer runs again and confirms: now the segments
    // below both replayers go, the newest records are kept.
    let out = catchup_run(&standby_config).await?;
    ensure!(out.status.success(), "{}", text(&out));
    let trimmed = capture_until(&f, "segments deleted after both confirmed", |m| {
        number(m, "log_deleted_segments").is_ok_and(|n| n > 5)
            && number(m, "log_oldest_lsn").is_ok_and(|o| o > standby_at + 1)
    })
    .await?;
    let last = number(&trimmed, "last_lsn")?;
    let oldest = number(&trimmed, "log_oldest_lsn")?;
    ensure!(
        oldest <= last.saturating_sub(200) + 1,
        "the newest 200 records were not kept: {trimmed:?}"
    );
    ensure!(
        number(&trimmed, "log_segments")? < number(&held, "log_segments")?,
        "{trimmed:?}"
    );
    let size = number(&trimmed, "log_size_bytes")?;
    let on_disk: u64 = switchyard_replay::log::list_segments(f.log_path())?
        .iter()
        .map(|s| s.size)
        .sum();
    // The writer appends in between; the two readings are close.
    ensure!(
        size > 0 && size <= on_disk + 64 * 1024 && on_disk <= size + 64 * 1024,
        "{size} vs {on_disk}"
    );
    let addr = f.proxy.metrics_addr().context("metrics endpoint")?;
    let scraped = scrape(addr).await?;
    ensure!(
        metric(&scraped, "switchyard_capture_log_deleted_segments_total").is_some_and(|n| n > 5.0)
            && metric(&scraped, "switchyard_capture_log_oldest_lsn").is_some_and(|o| o >= oldest as f64)
            && metric(&scraped, "switchyard_capture_log_disk_low") == Some(0.0),
        "{scraped}"
    );
    ensure!(trimmed.get("disk_warning").is_some_and(String::is_empty), "{trimmed:?}");

    // A replayer whose copy is older than the log is refused, told what to do.
    let out = catchup_run(&late_config).await?;
    let said = text(&out);
    ensure!(
        !out.status.success() && said.contains("the oldest position kept is") && said.contains("re-clone"),
        "{said}"
    );
    ensure!(
        !f.show_capture()
            .await?
            .keys()
            .any(|k| k.starts_with("hold.replayer-late@")),
        "the refused replayer left a hold behind"
    );

    console.simple_query("CATCHUP STOP").await?;
    assert_same(&source, &target).await?;
    assert_same(&source, &standby).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_threshold_above_the_free_space_warns() -> Result<()> {
    let cluster = Cluster::builder().start().await?;
    let f = Fixture::configured(cluster, |c| {
        c.capture.disk_warn_free_bytes = u64::MAX / 2;
        c.metrics.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await?;
    f.capture_start().await?;
    let shown = capture_until(&f, "the disk warning", |m| {
        m.get("disk_warning").is_some_and(|w| !w.is_empty())
    })
    .await?;
    let warning = &shown["disk_warning"];
    let free = number(&shown, "disk_free_bytes")?;
    ensure!(
        warning.contains(&free.to_string()) && warning.contains("capture.disk_warn_free_bytes"),
        "{warning}"
    );
    ensure!(number(&shown, "disk_total_bytes")? >= free, "{shown:?}");
    let scraped = scrape(f.proxy.metrics_addr().context("metrics endpoint")?).await?;
    ensure!(
        metric(&scraped, "switchyard_capture_log_disk_low") == Some(1.0),
        "{scraped}"
    );
    ensure!(
        metric(&scraped, "switchyard_capture_log_disk_free_bytes").is_some_and(|b| b > 0.0),
        "{scraped}"
    );
    Ok(())
}
