//! Escapes of capture's life: writes of another database than the captured
//! one, and commits whose keys could not be logged because the log disk was
//! full. The first are relayed uncaptured and never attributed to the
//! captured database; the second must never be reported committed.

use super::{wrote, Escape};
use crate::support::{query_msg, table, RawConn, PROMPT};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_databases_are_relayed_and_never_captured() -> Result<()> {
    let e = Escape::start("CREATE TABLE t (id int PRIMARY KEY)").await?;
    e.direct.batch_execute("CREATE DATABASE other").await?;
    let other_direct = e.f.cluster.connect("other").await?;
    other_direct
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE only_there (id int PRIMARY KEY)")
        .await?;

    let other = e.f.proxy.connect("other").await?;
    // A table the captured database does not have: relayed, not refused.
    other
        .batch_execute("INSERT INTO only_there VALUES (1)")
        .await
        .context("a write of another database was refused")?;
    // A table of the same name as a captured one: not logged as its key.
    other.batch_execute("INSERT INTO t VALUES (42)").await?;
    let c = e.client().await?;
    c.batch_execute("INSERT INTO t VALUES (1)").await?;

    let show = e.f.show_capture().await?;
    ensure!(show.get("database").map(String::as_str) == Some("postgres"), "{show:?}");
    ensure!(
        show.get("other_database_sessions").map(String::as_str) == Some("1"),
        "{show:?}"
    );
    ensure!(
        show.iter()
            .any(|(k, v)| k.starts_with("other_database.session.") && v.contains("database other")),
        "{show:?}"
    );
    let logged = crate::oracle::logged_keys(&e.f.log_path())?;
    ensure!(
        !logged.contains(&("public.t".to_owned(), vec![Some("42".to_owned())])),
        "a write of database other was logged as a key of the captured database: {logged:?}"
    );
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "public.t"));
    Ok(())
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` at `path` (created if missing).
    fn mount_at(path: &Path, size: &str) -> Result<SmallDisk> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .context("run mount")?;
        if !out.status.success() {
            bail!(
                "this test needs a small tmpfs to fill (run as root): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(SmallDisk { path: path.to_owned() })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the disk with a file until writes fail with ENOSPC.
    fn fill(&self) -> Result<PathBuf> {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler)?;
        let block = vec![0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(filler)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Simple-query autocommit INSERTs through a raw connection until one is
/// refused; returns its id and the messages that answered it.
async fn insert_until_refused(raw: &mut RawConn, from: i32) -> Result<(i32, Vec<crate::support::RawMessage>)> {
    for id in from..from + 2000 {
        raw.send(&query_msg(&format!("INSERT INTO t VALUES ({id}, repeat('x', 900))")))
            .await?;
        let answer = raw.until_ready().await.context("the session ended")?;
        if answer.iter().any(|m| m.tag == b'E') {
            return Ok((id, answer));
        }
    }
    bail!("the log never failed on a full disk")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_never_reports_a_commit_that_did_not_happen() -> Result<()> {
    // The log directory itself is the small disk.
    let mut disk = None;
    let e = Escape::configured("CREATE TABLE t (id int PRIMARY KEY, v text)", |c| {
        disk = Some(SmallDisk::mount_at(&c.capture.log_dir, "1m"));
    })
    .await?;
    let disk = disk.context("no config edit")??;
    let log_dir = disk.path().to_owned();
    let c = e.client().await?;
    c.batch_execute("INSERT INTO t VALUES (0, 'before')").await?;
    let filler = disk.fill()?;

    // Simple query, autocommit: no CommandComplete, an error, the session goes on.
    let mut raw = RawConn::start(e.f.proxy.addr(), e.f.cluster.superuser(), "postgres").await?;
    let (id, answer) = insert_until_refused(&mut raw, 1).await?;
    let tags: String = answer.iter().map(|m| m.tag as char).collect();
    ensure!(tags == "EZ", "answer to the refused write: {tags}");
    let error = &answer[0];
    ensure!(error.code().as_deref() == Some("58030"), "{:?}", error.fields());
    let message = error.fields().get(&'M').cloned().unwrap_or_default();
    ensure!(
        message.contains(&log_dir.display().to_string()) && message.contains("No space left"),
        "the error names neither the log directory nor the OS error: {message}"
    );
    ensure!(
        answer[1].body.first() == Some(&b'I'),
        "not idle after the refused write"
    );
    let present = e.direct.query("SELECT 1 FROM t WHERE id = $1", &[&id]).await?;
    ensure!(present.is_empty(), "the refused write {id} was committed");
    raw.send(&query_msg("SELECT 1")).await?;
    let tags: String = raw.until_ready().await?.iter().map(|m| m.tag as char).collect();
    ensure!(tags == "TDCZ", "the session did not go on: {tags}");
    // A write pipelined behind a read: its CommandComplete is held too.
    let mut two = query_msg("SELECT 1");
    two.extend_from_slice(&query_msg("INSERT INTO t VALUES (100000, 'pipelined')"));
    raw.send(&two).await?;
    let tags: String = raw.until_ready().await?.iter().map(|m| m.tag as char).collect();
    ensure!(tags == "TDCZ", "answer to the read: {tags}");
    let tags: String = raw.until_ready().await?.iter().map(|m| m.tag as char).collect();
    ensure!(tags == "EZ", "answer to the pipelined write: {tags}");

    // While the log is failed, writes are refused, whatever the protocol.
    let show = e.f.show_capture().await?;
    let state = show.get("state").cloned().unwrap_or_default();
    ensure!(
        state.starts_with("failed"),
        "SHOW CAPTURE after a log failure: {show:?}"
    );
    let r = c.execute("INSERT INTO t VALUES ($1, 'extended')", &[&100_001i32]).await;
    crate::support::expect_sqlstate(r, "58030")?;
    c.batch_execute("BEGIN; INSERT INTO t VALUES (100002, 'explicit')")
        .await?;
    let r = c.batch_execute("COMMIT").await;
    crate::support::expect_sqlstate(r, "58030")?;
    // COMMIT through the extended protocol.
    c.batch_execute("BEGIN; INSERT INTO t VALUES (100006, 'explicit, extended')")
        .await?;
    let r = c.execute("COMMIT", &[]).await;
    crate::support::expect_sqlstate(r, "58030")?;
    // A COMMIT the proxy sends after splitting a query, and a wrapped
    // multi-statement autocommit query.
    let r = c
        .batch_execute("BEGIN; INSERT INTO t VALUES (100003, 'split'); COMMIT")
        .await;
    crate::support::expect_sqlstate(r, "58030")?;
    let r = c
        .batch_execute("INSERT INTO t VALUES (100004, 'a'); INSERT INTO t VALUES (100005, 'b')")
        .await;
    crate::support::expect_sqlstate(r, "58030")?;
    let rows = c.query("SELECT count(*) FROM t WHERE id > 100000", &[]).await?;
    ensure!(rows[0].get::<_, i64>(0) == 0, "a refused write was committed");
    ensure!(
        table(&c, "SHOW transaction_isolation").await.is_ok(),
        "the session did not survive"
    );

    // Space freed: capture resumes by itself and writes are captured again.
    std::fs::remove_file(&filler)?;
    let deadline = Instant::now() + PROMPT + Duration::from_secs(5);
    loop {
        let show = e.f.show_capture().await?;
        if show.get("state").map(String::as_str) == Some("on") {
            break;
        }
        ensure!(Instant::now() < deadline, "capture did not recover: {show:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.batch_execute("INSERT INTO t VALUES (200000, 'after')").await?;
    c.execute("INSERT INTO t VALUES ($1, 'after')", &[&200_001i32]).await?;
    let keys = e.finish().await?;
    drop(disk);
    ensure!(keys.contains(&("public.t".to_owned(), vec![Some("200001".to_owned())])));
    Ok(())
}
