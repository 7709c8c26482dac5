//! Capture's life around the proxy: which database it concerns (named, never
//! guessed), what a rejected statement's hint offers, and a capture that
//! survives the proxy being killed and started again.

use crate::capture::{logical_cluster, Fixture};
use crate::capture_kill::{free_port, write_capture_config, ProxyProcess};
use crate::oracle::{logged_keys, written_keys, WalOracle};
use anyhow::{ensure, Context, Result};

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Writes the log directory's record that capture of `database` is on,
/// as a proxy that was killed would have left it.
fn record_capture_of(log_dir: &std::path::Path, database: &str) {
    std::fs::create_dir_all(log_dir).expect("log dir");
    std::fs::write(
        log_dir.join("capture.state"),
        format!("database = \"{database}\"\nepoch = 1\nstart_lsn = 1\nstarted_micros = 1\n"),
    )
    .expect("state file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_needs_a_named_database() -> Result<()> {
    let cluster = logical_cluster().await?;
    cluster
        .connect("postgres")
        .await?
        .batch_execute("CREATE DATABASE other")
        .await?;
    let f = Fixture::configured(cluster, |c| {
        c.capture.database = None;
        c.source.database = None;
    })
    .await?;
    let err = f
        .admin
        .simple_query("CAPTURE START")
        .await
        .err()
        .context("CAPTURE START without any database named was accepted")?;
    let message = err.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    ensure!(message.contains("capture.database"), "{message}");
    ensure!(f.show_capture().await?.get("state").map(String::as_str) == Some("off"));

    f.admin
        .simple_query("CAPTURE START other")
        .await
        .context("CAPTURE START other")?;
    let show = f.show_capture().await?;
    ensure!(show.get("database").map(String::as_str) == Some("other"), "{show:?}");
    f.admin.simple_query("CAPTURE STOP").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_start_cannot_name_another_database_than_the_config() -> Result<()> {
    let f = Fixture::configured(logical_cluster().await?, |_| {}).await?;
    let err = f
        .admin
        .simple_query("CAPTURE START other")
        .await
        .err()
        .context("CAPTURE START of another database than capture.database was accepted")?;
    let message = err.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    ensure!(message.contains("other") && message.contains("postgres"), "{message}");
    f.capture_start().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_hint_says_what_warn_gives_up() -> Result<()> {
    let f = Fixture::configured(logical_cluster().await?, |_| {}).await?;
    let c = f.proxy.connect("postgres").await?;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await?;
    f.capture_start().await?;
    let err = c
        .batch_execute("WITH x AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT * FROM x")
        .await
        .err()
        .context("a write in a CTE was let through")?;
    let db = err.as_db_error().context("not a database error")?;
    ensure!(db.code().code() == "0A000", "{db:?}");
    let hint = db.hint().unwrap_or_default();
    ensure!(
        hint.contains("will not be captured") && hint.contains("capture.policies.write-in-cte = \"warn\""),
        "a hint that offers `warn` must say what it gives up: {hint}"
    );
    Ok(())
}

async fn capture_state(admin: &Client) -> Result<String> {
    let rows = admin.simple_query("SHOW CAPTURE").await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get(0) == Some("state") => r.get(1).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

/// Autocommit writes until the connection dies.
async fn writer(c: Client, next: Arc<AtomicI64>) {
    loop {
        let id = next.fetch_add(1, Ordering::Relaxed);
        let r = if id % 2 == 0 {
            c.batch_execute(&format!("INSERT INTO kt VALUES ({id})")).await
        } else {
            c.execute("INSERT INTO kt VALUES ($1)", &[&id]).await.map(|_| ())
        };
        if r.as_ref().is_err_and(|e| e.as_db_error().is_none()) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_resumes_after_the_proxy_is_killed() -> Result<()> {
    let cluster = logical_cluster().await?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute("CREATE TABLE kt (id bigint PRIMARY KEY)").await?;
    let oracle = WalOracle::create(&direct, "restart").await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("log");
    let port = free_port()?;
    let config = dir.path().join("switchyard.toml");
    write_capture_config(&config, &cluster, &log, port)?;
    let proxy = ProxyProcess::start(&config, port)?;
    let admin = proxy.admin().await?;
    admin.simple_query("CAPTURE START").await.context("CAPTURE START")?;
    let next = Arc::new(AtomicI64::new(1));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let c = proxy.connect_retrying("postgres").await?;
        tasks.push(tokio::spawn(writer(c, next.clone())));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    drop(proxy); // SIGKILL mid-load
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t).await??;
    }

    let proxy = ProxyProcess::start(&config, port)?;
    // The very first session after the restart writes.
    let c = proxy.connect_retrying("postgres").await?;
    for id in 1_000_000..1_000_010i64 {
        c.execute("INSERT INTO kt VALUES ($1)", &[&id]).await?;
    }
    c.batch_execute("INSERT INTO kt VALUES (2000000)").await?;
    let admin = proxy.admin().await?;
    let state = capture_state(&admin).await?;
    ensure!(state == "on", "SHOW CAPTURE after the restart says state {state:?}");

    let wal = oracle.drain(&direct).await?;
    oracle.drop_slot(&direct).await?;
    let truth = written_keys(&wal, |t| (t == "public.kt").then(|| vec!["id".to_owned()]));
    let logged = logged_keys(&log)?;
    let missing: Vec<_> = truth.difference(&logged).collect();
    ensure!(truth.len() > 20, "too little traffic: {}", truth.len());
    ensure!(
        missing.is_empty(),
        "committed keys missing from the log after a restart: {missing:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_that_cannot_resume_refuses_its_database_until_a_dba_decides() -> Result<()> {
    let cluster = logical_cluster().await?;
    cluster
        .connect("postgres")
        .await?
        .batch_execute("CREATE DATABASE other")
        .await?;
    // The log directory says capture of `postgres` was on; the role the
    // proxy would read the catalog with does not exist, so it cannot resume.
    let f = Fixture::configured(cluster, |c| {
        c.capture.user = Some("nobody_here".into());
        record_capture_of(&c.capture.log_dir, "postgres");
    })
    .await?;
    let show = f.show_capture().await?;
    let state = show.get("state").cloned().unwrap_or_default();
    ensure!(state.starts_with("resume pending"), "{show:?}");
    let refused = f
        .proxy
        .connect("postgres")
        .await
        .err()
        .context("a session of the captured database was admitted")?;
    ensure!(refused.code().map(|c| c.code()) == Some("57P03"), "{refused:?}");
    // Other databases are not concerned.
    f.proxy.connect("other").await?.batch_execute("SELECT 1").await?;
    ensure!(
        f.admin.simple_query("CAPTURE START").await.is_err(),
        "resume cannot succeed here"
    );
    f.admin
        .simple_query("CAPTURE STOP")
        .await
        .context("give the capture up")?;
    ensure!(f.show_capture().await?.get("state").map(String::as_str) == Some("off"));
    ensure!(
        !f.log_path().join("capture.state").exists(),
        "CAPTURE STOP left the record"
    );
    f.proxy.connect("postgres").await?.batch_execute("SELECT 1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_capture_of_another_database_than_the_config_is_not_resumed() -> Result<()> {
    let f = Fixture::configured(logical_cluster().await?, |c| {
        record_capture_of(&c.capture.log_dir, "other");
    })
    .await?;
    let show = f.show_capture().await?;
    let state = show.get("state").cloned().unwrap_or_default();
    ensure!(
        state.starts_with("resume pending") && state.contains("other") && state.contains("postgres"),
        "{show:?}"
    );
    ensure!(
        f.admin.simple_query("CAPTURE START").await.is_err(),
        "resumed against the config"
    );
    f.admin.simple_query("CAPTURE STOP").await?;
    f.capture_start().await?;
    ensure!(f.show_capture().await?.get("database").map(String::as_str) == Some("postgres"));
    Ok(())
}
