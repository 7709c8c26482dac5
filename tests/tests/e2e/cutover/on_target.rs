//! Capture on the target from the flip: every write the applications
//! commit on the target after the cutover is in the new log, named as the
//! target's catalog names its table, and none is in the source's log. The
//! target's own WAL (logical decoding) is the oracle. Then the ways it
//! starts or does not: a proxy restarted after the flip resumes it, a
//! target log directory that cannot be written calls the cutover off
//! (before the freeze, and after it), and `CAPTURE_ON_TARGET off` leaves
//! it to a later `CAPTURE START`, which captures on the target. Statements
//! prepared before the flip fail (their table renamed) or run and are
//! captured on the target, and the session goes on either way.

use super::{Cut, PORT};
use crate::oracle::{logged_keys, written_keys, KeySet, WalOracle};
use crate::support::table;
use anyhow::{ensure, Context, Result};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_tests::{Cluster, TestProxy};
use tokio_postgres::Client;

const SCHEMA: &str = "
    CREATE TABLE items (id serial PRIMARY KEY, label text NOT NULL, qty int NOT NULL DEFAULT 0);
    CREATE TABLE notes (id bigserial PRIMARY KEY, body text);
    INSERT INTO items (label) SELECT 'item ' || g FROM generate_series(1, 100) g;
    INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 50) g;
";

/// The target renames a column and a table: the new log must use the
/// target's names.
const MIGRATION: &str = "
    ALTER TABLE items RENAME COLUMN label TO title;
    ALTER TABLE notes RENAME TO memos;
";

const MAPPING: &str = r#"
[tables.items.columns]
title = "label"

[tables.notes]
target = "public.memos"
"#;

/// What one client committed: `(table as the target names it, id, port)`
/// for each insert.
#[derive(Debug, Default)]
struct Journal {
    inserted: Vec<(&'static str, i64, i32)>,
    errors: Vec<String>,
}

/// Inserts, updates and deletes through the proxy until told to stop,
/// with table names that hold on both sides: `items` keeps its name, and
/// `notes` is written only before the flip, `memos` only after it.
async fn load(c: Client, me: i64, target_port: i32, stop: Arc<AtomicBool>) -> Result<Journal> {
    let mut j = Journal::default();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut on_target = false;
    let mut n = 0i64;
    while !stop.load(Relaxed) && Instant::now() < deadline && n < 100_000 {
        n += 1;
        let notes = if on_target { "memos" } else { "notes" };
        let r: Result<()> = async {
            match n % 4 {
                0 => {
                    let row = c
                        .query_one(
                            &format!("INSERT INTO items (label) VALUES ('c{me} n{n}') RETURNING id, {PORT}")
                                .replace("(label)", if on_target { "(title)" } else { "(label)" }),
                            &[],
                        )
                        .await?;
                    let (id, port): (i32, i32) = (row.get(0), row.get(1));
                    j.inserted.push(("public.items", id.into(), port));
                    on_target |= port == target_port;
                }
                1 => {
                    let row = c
                        .query_one(
                            &format!("INSERT INTO {notes} (body) VALUES ('c{me} n{n}') RETURNING id, {PORT}"),
                            &[],
                        )
                        .await?;
                    let (id, port): (i64, i32) = (row.get(0), row.get(1));
                    j.inserted.push(("public.memos", id, port));
                    on_target |= port == target_port;
                }
                2 => {
                    let id = (n * 7 + me) % 100 + 1;
                    let port = super::write_port(
                        &c,
                        &format!("UPDATE items SET qty = qty + 1 WHERE id = {id} RETURNING {PORT}"),
                    )
                    .await?;
                    on_target |= port == target_port;
                }
                _ => {
                    // Deletes rows of its own, inserted earlier.
                    let mine = j
                        .inserted
                        .iter()
                        .rev()
                        .find(|(t, ..)| *t == "public.memos")
                        .map(|(_, id, _)| *id);
                    if let Some(id) = mine {
                        let port =
                            super::write_port(&c, &format!("DELETE FROM {notes} WHERE id = {id} RETURNING {PORT}"))
                                .await?;
                        on_target |= port == target_port;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            // A statement naming the old table or column raced the flip:
            // the only error this load can meet, and one it does not count.
            // (The server says the column does not exist; capture on the
            // target refuses a table its catalog does not have.)
            let text = format!("{e:#}");
            let raced = !on_target && (text.contains("does not exist") || text.contains("(unknown-table)"));
            if raced {
                on_target = true;
                continue;
            }
            j.errors.push(format!("{e:#}"));
            if j.errors.len() > 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(j)
}

/// The keys the target's WAL shows the applications wrote: catch-up's own
/// transactions (they record its position in the `switchyard` schema)
/// left out.
fn application_writes(txs: &[crate::oracle::WalTx]) -> KeySet {
    let apps: Vec<_> = txs
        .iter()
        .filter(|tx| !tx.changes.iter().any(|c| c.table.starts_with("switchyard.")))
        .cloned()
        .collect();
    written_keys(&apps, |t| {
        matches!(t, "public.items" | "public.memos").then(|| vec!["id".to_owned()])
    })
}

/// Runs `insert` (one row, with an `id` key) through the proxy and checks
/// it ran on the target and its key is in the target's log under `table`.
async fn logged_on_target(
    c: &Client,
    insert: &str,
    table: &str,
    target_port: i32,
    dir: &std::path::Path,
) -> Result<()> {
    let row = c
        .query_one(&format!("{insert} RETURNING id::text, {PORT}"), &[])
        .await?;
    let (id, port): (String, i32) = (row.get(0), row.get(1));
    ensure!(port == target_port, "it ran on port {port}");
    ensure!(
        logged_keys(dir)?.contains(&(table.to_owned(), vec![Some(id)])),
        "it is not in the target's log"
    );
    Ok(())
}

/// Stops the cutover's proxy and starts another with its config: the new
/// proxy, its console, the target, and what must outlive the test (the
/// source and the work directory).
async fn restart(cut: Cut) -> Result<(TestProxy, Client, Cluster, (Cluster, tempfile::TempDir))> {
    let Cut {
        proxy,
        admin,
        config,
        target,
        source,
        dir,
    } = cut;
    drop(admin);
    proxy.shutdown().await;
    let again = TestProxy::start_with(config)
        .await?
        .with_login(target.superuser(), None);
    let admin = crate::support::admin(&again).await?;
    Ok((again, admin, target, (source, dir)))
}

/// SHOW CAPTURE, as a map.
async fn capture(admin: &Client) -> Result<std::collections::BTreeMap<String, String>> {
    Ok(table(admin, "SHOW CAPTURE").await?.map())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_after_the_flip_is_captured_on_the_target_also_after_a_restart() -> Result<()> {
    let source = Cluster::start().await?;
    let target = Cluster::builder()
        .setting("wal_level", "logical")
        .setting("max_replication_slots", "4")
        .start()
        .await?;
    let cut = Cut::start_with(source, target, SCHEMA, MAPPING, |_| {}).await?;
    let target_port = cut.target.port() as i32;
    cut.capture().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for me in 0..3 {
        let c = cut.proxy.connect("postgres").await?;
        clients.push(tokio::spawn(load(c, me, target_port, stop.clone())));
    }
    cut.clone_and_migrate(MIGRATION).await?;
    let direct = cut.target.connect("postgres").await?;
    let oracle = WalOracle::create(&direct, "after_flip").await?;

    let outcome = cut.cutover("").await?;
    let report = outcome.done()?;
    ensure!(report["capture_on_target"].starts_with("on, logging to"), "{report:?}");
    ensure!(!report.contains_key("reverse_mapping_error"), "{report:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Relaxed);
    let mut journals = Vec::new();
    for c in clients {
        journals.push(c.await??);
    }
    let errors: Vec<_> = journals.iter().flat_map(|j| &j.errors).collect();
    ensure!(errors.is_empty(), "client errors: {errors:?}");

    let shown = capture(&cut.admin).await?;
    let target_dir = cut.config.target_log_dir();
    ensure!(shown["state"] == "on" && shown["server"] == "target", "{shown:?}");
    ensure!(shown["log_dir"] == target_dir.display().to_string(), "{shown:?}");

    // The oracle: every key the target's WAL shows the applications wrote
    // since before the cutover is in the target's log.
    let txs = oracle.drain(&direct).await?;
    let written = application_writes(&txs);
    let logged = logged_keys(&target_dir)?;
    let inserted_on_target: BTreeSet<_> = journals
        .iter()
        .flat_map(|j| &j.inserted)
        .filter(|(.., port)| *port == target_port)
        .map(|(t, id, _)| (t.to_string(), vec![Some(id.to_string())]))
        .collect();
    ensure!(
        inserted_on_target.len() >= 10,
        "only {} insert(s) ran on the target",
        inserted_on_target.len()
    );
    ensure!(
        written.len() >= inserted_on_target.len(),
        "{} keys in the WAL",
        written.len()
    );
    let missing: Vec<_> = written.difference(&logged).take(10).collect();
    ensure!(
        missing.is_empty(),
        "writes committed on the target after the flip are not in its capture log: {missing:?}"
    );
    // None of them reached the source's log.
    let forward = logged_keys(&cut.config.capture.log_dir)?;
    let leaked: Vec<_> = inserted_on_target
        .iter()
        .map(|(t, k)| (t.replace("memos", "notes"), k.clone()))
        .filter(|k| forward.contains(k))
        .take(10)
        .collect();
    ensure!(leaked.is_empty(), "target writes in the source's log: {leaked:?}");
    // The source's log is held from the freeze marker on; nothing holds the
    // target's, so none of it is deleted until a replayer confirms it.
    let holds = switchyard_replay::log::read_holds(&cut.config.capture.log_dir)?;
    ensure!(
        holds
            .iter()
            .any(|h| h.name.starts_with("cutover-") && h.confirmed.0 > 0),
        "no cutover hold in the source's log: {holds:?}"
    );
    let target_holds = switchyard_replay::log::read_holds(&target_dir)?;
    ensure!(target_holds.is_empty(), "{target_holds:?}");
    oracle.drop_slot(&direct).await?;

    // A proxy started again resumes capture on the target before
    // admitting anyone, and goes on logging there.
    let (again, admin, _target, _kept) = restart(cut).await?;
    let shown = capture(&admin).await?;
    ensure!(
        shown["state"] == "on" && shown["server"] == "target" && shown["resumes"] == "1",
        "{shown:?}"
    );
    let c = again.connect("postgres").await?;
    let insert = "INSERT INTO memos (body) VALUES ('after the restart')";
    logged_on_target(&c, insert, "public.memos", target_port, &target_dir)
        .await
        .context("a write after the restart")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_log_that_cannot_be_written_calls_it_off_and_off_leaves_capture_to_the_dba() -> Result<()> {
    let blocked = tempfile::tempdir()?;
    let target_dir = blocked.path().join("target-log");
    let dir = target_dir.clone();
    let cut = Cut::start(SCHEMA, "", move |c| c.cutover.target_log_dir = Some(dir)).await?;
    let source_port = cut.source.port() as i32;
    let target_port = cut.target.port() as i32;
    cut.capture().await?;
    let app = cut.proxy.connect("postgres").await?;
    app.batch_execute("UPDATE items SET qty = qty + 1 WHERE id <= 10")
        .await?;
    cut.clone_and_migrate("").await?;

    // Before the freeze: a file where the directory should be.
    std::fs::write(&target_dir, "not a directory")?;
    let outcome = cut.cutover("").await?;
    let why = outcome.refused()?;
    ensure!(
        why.contains("aborted at preflight") && why.contains("capture on the target cannot start"),
        "{why}"
    );
    let port = super::write_port(
        &app,
        &format!("UPDATE items SET qty = qty + 1 WHERE id = 1 RETURNING {PORT}"),
    )
    .await?;
    ensure!(port == source_port, "after the refusal a write ran on port {port}");

    // After the freeze: the directory vanishes while the cutover drains a
    // transaction; recording capture on the target fails, the cutover is
    // called off, and traffic stays on the source with its capture on.
    std::fs::remove_file(&target_dir)?;
    let holder = cut.proxy.connect("postgres").await?;
    holder
        .batch_execute("BEGIN; UPDATE items SET label = 'held' WHERE id = 5")
        .await?;
    let running = {
        let console = cut.proxy.pg_config("switchyard");
        tokio::spawn(async move {
            let (c, conn) = console.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let r = c.simple_query("CUTOVER DRAIN_TIMEOUT 8s").await;
            anyhow::Ok(
                r.err()
                    .map(|e| e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned())),
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = cut.status().await?;
        if s["state"] == "frozen (cutover)" && target_dir.is_dir() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "never frozen with the target log open: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::remove_dir_all(&target_dir)?;
    holder.batch_execute("COMMIT").await?;
    let why = running
        .await??
        .context("the cutover succeeded without its target log directory")?;
    ensure!(why.contains("cannot start capture on the target"), "{why}");
    let status = cut.status().await?;
    ensure!(status["route"] == "source", "{status:?}");
    let shown = capture(&cut.admin).await?;
    ensure!(shown["state"] == "on" && shown["server"] == "source", "{shown:?}");
    let held = table(
        &cut.source.connect("postgres").await?,
        "SELECT label FROM items WHERE id = 5",
    )
    .await?;
    ensure!(held.rows[0][0].as_deref() == Some("held"), "{held:?}");
    let port = super::write_port(
        &app,
        &format!("UPDATE items SET qty = qty + 1 WHERE id = 2 RETURNING {PORT}"),
    )
    .await?;
    ensure!(port == source_port, "after the abort a write ran on port {port}");

    // CAPTURE_ON_TARGET off: the cutover needs no target log; capture is
    // off afterwards, and CAPTURE START starts it on the target.
    cut.caught_up(Duration::from_secs(30)).await?;
    let outcome = cut.cutover("CAPTURE_ON_TARGET off").await?;
    let report = outcome.done()?;
    ensure!(report["capture_on_target"].starts_with("off"), "{report:?}");
    let shown = capture(&cut.admin).await?;
    ensure!(shown["state"] == "off" && shown["server"] == "target", "{shown:?}");
    let refused = cut.admin.simple_query("CATCHUP START").await;
    ensure!(
        refused.as_ref().is_err_and(|e| format!("{e:?}").contains("overwrite")),
        "CATCHUP START after the cutover: {refused:?}"
    );
    cut.admin.simple_query("CAPTURE START").await.context("CAPTURE START")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = capture(&cut.admin).await?;
        if shown["state"] == "on" {
            ensure!(shown["server"] == "target", "{shown:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "no barrier on the target: {shown:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let insert = "INSERT INTO items (label) VALUES ('on target')";
    logged_on_target(&app, insert, "public.items", target_port, &target_dir)
        .await
        .context("a write after CAPTURE START on the target")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_called_off_after_capture_on_the_target_was_recorded_leaves_no_capture_to_resume() -> Result<()> {
    let cut = Cut::start(SCHEMA, "", |_| {}).await?;
    let target_dir = cut.config.target_log_dir();
    cut.capture().await?;
    let app = cut.proxy.connect("postgres").await?;
    app.batch_execute("UPDATE items SET qty = qty + 1 WHERE id <= 10")
        .await?;
    cut.clone_and_migrate("").await?;

    // The route cannot be recorded (a directory, not empty, where its file
    // goes): the cutover is called off after capture on the target was
    // recorded, and that record is undone.
    let blocker = cut.config.capture.log_dir.join("route.state");
    std::fs::create_dir_all(blocker.join("x"))?;
    let outcome = cut.cutover("").await?;
    let why = outcome.refused()?;
    ensure!(why.contains("cannot record that traffic moves"), "{why}");
    ensure!(
        !target_dir.join("capture.state").exists(),
        "the called-off cutover left capture on the target recorded"
    );
    std::fs::remove_dir_all(&blocker)?;

    // A cutover with capture on the target off, then a restart: capture
    // stays off (nothing of the called-off one resumes).
    // A session connected to the target directly is reported: its writes
    // after the flip would escape capture there.
    let direct = cut.target.connect("postgres").await?;
    let direct_pid: i32 = direct.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    cut.caught_up(Duration::from_secs(30)).await?;
    let report = cut.cutover("CAPTURE_ON_TARGET off").await?.done()?.clone();
    ensure!(report["capture_on_target"].starts_with("off"), "{report:?}");
    ensure!(
        report
            .get("target_direct_session")
            .is_some_and(|s| s.starts_with(&format!("pid {direct_pid} "))),
        "{report:?}"
    );
    drop(direct);
    drop(app);
    let (again, admin, target, _kept) = restart(cut).await?;
    let shown = capture(&admin).await?;
    ensure!(
        shown["state"] == "off" && shown["server"] == "target",
        "after the restart: {shown:?}"
    );
    let c = again.connect("postgres").await?;
    let port: i32 = c.query_one(&format!("SELECT {PORT}"), &[]).await?.get(0);
    ensure!(port == target.port() as i32, "{port}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_before_the_flip_fail_or_run_on_the_target_without_hanging() -> Result<()> {
    let cut = Cut::start(SCHEMA, MAPPING, |_| {}).await?;
    let target_port = cut.target.port() as i32;
    cut.capture().await?;
    let c = cut.proxy.connect("postgres").await?;
    // Prepared (and described) on the source with capture on: the insert
    // names a table the migration renames, the update one it keeps.
    let gone = c
        .prepare(&format!("INSERT INTO notes (body) VALUES ($1) RETURNING id, {PORT}"))
        .await?;
    let kept = c
        .prepare(&format!(
            "UPDATE items SET qty = qty + 1 WHERE id = $1 RETURNING id, {PORT}"
        ))
        .await?;
    let before: i32 = c.query_one(&kept, &[&3i32]).await?.get(1);
    ensure!(before != target_port, "the update ran on the target before the flip");
    cut.clone_and_migrate(MIGRATION).await?;
    cut.cutover("").await?.done()?;

    // Re-preparing the insert on the target fails: the client gets the
    // error (not a session that stops answering) and goes on.
    let failed = within("the insert", c.query_one(&gone, &[&"after the flip"])).await?;
    let e = failed
        .err()
        .context("an insert into a table the target does not have succeeded")?;
    ensure!(
        crate::support::sqlstate(&e) == Some("42P01"),
        "expected 42P01 (undefined table), got {e:?}"
    );
    // The update re-prepares there, and its key is in the target's log.
    let row = within("the update", c.query_one(&kept, &[&5i32])).await??;
    let (id, port): (i32, i32) = (row.get(0), row.get(1));
    ensure!(
        (id, port) == (5, target_port),
        "the update returned {id} from port {port}"
    );
    ensure!(
        logged_keys(&cut.config.target_log_dir())?.contains(&("public.items".to_owned(), vec![Some("5".to_owned())])),
        "the update on the target is not in its capture log"
    );
    let insert = "INSERT INTO memos (body) VALUES ('on the target')";
    logged_on_target(&c, insert, "public.memos", target_port, &cut.config.target_log_dir()).await
}

/// `f`, failing the test after 30 s instead of hanging it.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T> {
    crate::support::within(Duration::from_secs(30), what, f).await
}
