//! `switchyard clone` and catch-up as a DBA runs them: the real binary
//! copies the source after the capture barrier (pg_dump/pg_restore, or
//! pg_basebackup into a new cluster) while a write load runs through the
//! proxy; catch-up (`CATCHUP START` in the proxy, or `switchyard catchup
//! run` standalone) then brings the copy level with the source, compared
//! row for row. Refusals (capture off, target not empty, a mapping naming a
//! missing column) are checked on the way.

use crate::capture::Fixture;
use crate::capture_kill::switchyard_binary;
use crate::support::table;
use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};
use switchyard_proxy::DatabaseConfig;
use switchyard_tests::{Cluster, ClusterBuilder};
use tokio_postgres::Client;

pub(crate) const SCHEMA: &str = "
    CREATE TABLE item (id int PRIMARY KEY, qty int NOT NULL, label text);
    CREATE TABLE tag (item int, name text, PRIMARY KEY (item, name));
    INSERT INTO item SELECT g, g % 100, 'item ' || g FROM generate_series(1, 20000) g;
    INSERT INTO tag SELECT g, 't' || (g % 7) FROM generate_series(1, 5000) g;
";

/// Source and target queries that must agree after catch-up (the target
/// gained a column with a default).
const COMPARE: &[(&str, &str)] = &[
    (
        "SELECT id, qty, label FROM item ORDER BY id",
        "SELECT id, qty, label FROM item ORDER BY id",
    ),
    (
        "SELECT item, name FROM tag ORDER BY 1, 2",
        "SELECT item, name FROM tag ORDER BY 1, 2",
    ),
];

pub(crate) async fn load(c: Client, seed: u64, n: usize) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let id = rng.random_range(1..25_000);
        let sql = match rng.random_range(0..5) {
            0 => format!("INSERT INTO item VALUES ({id}, 1, 'new') ON CONFLICT (id) DO UPDATE SET qty = item.qty + 1"),
            1 => format!("UPDATE item SET qty = qty - 1, label = 'u{seed}' WHERE id = {id}"),
            2 => format!("DELETE FROM item WHERE id = {id}"),
            3 => format!(
                "INSERT INTO tag VALUES ({}, 'x{}') ON CONFLICT DO NOTHING",
                id % 6000,
                id % 3
            ),
            _ => format!("DELETE FROM tag WHERE item = {}", id % 6000),
        };
        c.batch_execute(&sql).await.with_context(|| sql.clone())?;
    }
    Ok(())
}

async fn rows(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    Ok(table(c, sql).await?.rows)
}

pub(crate) async fn assert_same(source: &Client, target: &Client) -> Result<()> {
    for (s, t) in COMPARE {
        let (a, b) = (rows(source, s).await?, rows(target, t).await?);
        ensure!(!a.is_empty(), "no rows for {s}");
        if a != b {
            let missing: Vec<_> = a.iter().filter(|r| !b.contains(r)).take(5).collect();
            let extra: Vec<_> = b.iter().filter(|r| !a.contains(r)).take(5).collect();
            anyhow::bail!(
                "{t}: source {} rows, target {}; missing {missing:?}; extra {extra:?}",
                a.len(),
                b.len()
            );
        }
    }
    Ok(())
}

/// The proxy's config as a file, for the binary: same source, log and target.
pub(crate) fn config_file(
    dir: &Path,
    f: &Fixture,
    target_port: u16,
    target_db: &str,
    extra: &str,
) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("switchyard-{target_port}-{target_db}.toml"));
    let text = format!(
        "[source]\nhost = \"127.0.0.1\"\nport = {}\n\n[auth]\nmethod = \"trust\"\n\n\
         [capture]\nlog_dir = \"{}\"\nuser = \"{}\"\ndatabase = \"postgres\"\n\n\
         [target]\nhost = \"127.0.0.1\"\nport = {target_port}\ndatabase = \"{target_db}\"\n\n\
         [catchup]\nworkers = 2\n{extra}",
        f.cluster.port(),
        f.log_path().display(),
        f.cluster.superuser()
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Runs the binary with the console pointed at the fixture's proxy.
pub(crate) async fn switchyard(f: &Fixture, args: &[&str]) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(switchyard_binary()?);
    cmd.args(args)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(f.proxy.port().to_string())
        .args(["-U", f.cluster.superuser()])
        .env_remove("PGPASSWORD")
        .kill_on_drop(true);
    Ok(tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("switchyard did not finish in 120 s")??)
}

/// Runs `switchyard catchup run` (no console arguments).
pub(crate) async fn catchup_run(config: &Path) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(switchyard_binary()?);
    cmd.args([
        "catchup",
        "run",
        "--until-caught-up",
        "--progress-every",
        "1",
        "--config",
    ])
    .arg(config)
    .kill_on_drop(true);
    Ok(tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("catchup run did not finish in 120 s")??)
}

/// Polls SHOW LAG until everything logged is applied; the state must be
/// `running` (or `also`) meanwhile.
pub(crate) async fn caught_up(console: &Client, also: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lag = table(console, "SHOW LAG").await?.map();
        let state = lag.get("state").map(String::as_str).unwrap_or("");
        ensure!(state == "running" || state == also, "{lag:?}");
        if state == "running"
            && lag["positions_behind"] == "0"
            && lag["commits_pending"] == "0"
            && lag["keys_pending"] == "0"
        {
            return Ok(lag);
        }
        ensure!(Instant::now() < deadline, "catch-up did not finish: {lag:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_clone_then_catchup_in_the_proxy_and_standalone() -> Result<()> {
    let cluster = Cluster::builder()
        .setting("wal_level", "logical")
        .setting("max_replication_slots", "4")
        .start()
        .await?;
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
        c.metrics.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await?;
    let work = tempfile::tempdir()?;
    let config = config_file(work.path(), &f, port, "target", "")?;
    let source = f.cluster.connect("postgres").await?;
    source.batch_execute(SCHEMA).await?;
    source.batch_execute("CREATE DATABASE target").await?;
    let dump = work.path().join("dump");
    let clone_args = |dir: &Path| -> Vec<String> {
        [
            "clone",
            "--config",
            &config.display().to_string(),
            "--jobs",
            "2",
            "--no-owner",
            "--progress-every",
            "1",
            "--dir",
            &dir.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };
    let args = clone_args(&dump);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    // Capture off: refused.
    let out = switchyard(&f, &args).await?;
    ensure!(
        !out.status.success() && text(&out).contains("capture is off"),
        "{}",
        text(&out)
    );
    // A target with a table in it: refused, naming the table.
    let target = f.cluster.connect("target").await?;
    target.batch_execute("CREATE TABLE stray (x int)").await?;
    f.capture_start().await?;
    let out = switchyard(&f, &args).await?;
    ensure!(
        !out.status.success() && text(&out).contains("not empty") && text(&out).contains("public.stray"),
        "{}",
        text(&out)
    );
    // Refused before the copy: the log is not held for it.
    ensure!(!text(&out).contains("is held from its start"), "{}", text(&out));
    let holds: Vec<_> = std::fs::read_dir(f.log_path().join("holds"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    ensure!(holds.is_empty(), "a refused clone left holds: {holds:?}");
    target.batch_execute("DROP TABLE stray").await?;

    // The clone, with writes going on.
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let c = f.proxy.connect("postgres").await?;
        writers.push(tokio::spawn(load(c, 7 + w, 1200)));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let out = switchyard(&f, &args).await?;
    let shown = text(&out);
    ensure!(out.status.success(), "{shown}");
    for expected in [
        "capture barrier passed",
        "snapshot",
        "dump: done",
        "restore: done",
        "cloned 2 tables",
        "held from its start for this copy's catch-up",
    ] {
        ensure!(shown.contains(expected), "no {expected:?} in\n{shown}");
    }
    ensure!(!dump.exists(), "the dump directory was left behind");

    // The migration, then catch-up in the proxy.
    target
        .batch_execute("ALTER TABLE item ADD COLUMN added timestamptz NOT NULL DEFAULT now()")
        .await?;
    let console = crate::support::admin(&f.proxy).await?;
    console.simple_query("CATCHUP START").await?;
    let again = console.simple_query("CATCHUP START").await;
    ensure!(again.is_err(), "a second CATCHUP START was accepted");
    for w in writers {
        w.await??;
    }
    let lag = caught_up(&console, "running").await?;
    // The replayer's connections cut (a target restart, say): it is started
    // again by itself and catches up with the writes made meanwhile.
    source
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'switchyard catchup' AND datname = 'target'",
            &[],
        )
        .await?;
    load(f.proxy.connect("postgres").await?, 21, 200).await?;
    let after = caught_up(&console, "retrying").await?;
    ensure!(after.get("restarts").is_some_and(|r| r != "0"), "{after:?}");
    ensure!(after["state"] == "running", "{after:?}");
    ensure!(lag["since_start.commits_applied"].parse::<u64>()? > 0, "{lag:?}");
    ensure!(lag["lag_seconds"] == "0.000", "{lag:?}");
    let addr = f.proxy.metrics_addr().context("metrics endpoint")?;
    let scraped = crate::support::scrape(addr).await?;
    let confirmed = crate::support::metric(&scraped, "switchyard_catchup_confirmed_lsn");
    ensure!(
        confirmed == Some(after["confirmed_lsn"].parse::<f64>()?)
            && crate::support::metric(&scraped, "switchyard_catchup_running") == Some(1.0),
        "metrics disagree with SHOW LAG {after:?}:\n{scraped}"
    );
    let out = switchyard(&f, &["lag"]).await?;
    ensure!(
        out.status.success() && text(&out).contains("confirmed_lsn"),
        "{}",
        text(&out)
    );
    console.simple_query("CATCHUP STOP").await?;
    ensure!(table(&console, "SHOW LAG").await?.map()["state"] == "off");
    if let Err(e) = assert_same(&source, &target).await {
        let logged = crate::oracle::logged_keys(&f.log_path())?;
        let tags: Vec<_> = logged
            .iter()
            .filter(|(t, k)| t.contains("tag") && e.to_string().contains(&format!("{:?}", k[0])))
            .take(20)
            .collect();
        let n = logged.iter().filter(|(t, _)| t.contains("tag")).count();
        anyhow::bail!("{e}\nlogged tag keys ({n}): {tags:?}\nlag {lag:?}");
    }

    // More writes with catch-up stopped, then the standalone replayer
    // resumes from the confirmed position.
    load(f.proxy.connect("postgres").await?, 99, 400).await?;
    let out = catchup_run(&config).await?;
    ensure!(
        out.status.success() && text(&out).contains("caught up"),
        "{}",
        text(&out)
    );
    assert_same(&source, &target).await?;

    // A mapping naming a column the target lacks: refused before anything runs.
    let mapping = work.path().join("bad-mapping.toml");
    std::fs::write(&mapping, "[tables.item.columns]\nnot_there = \"qty\"\n")?;
    let bad = config_file(
        work.path(),
        &f,
        port,
        "target",
        &format!("mapping = \"{}\"\n", mapping.display()),
    )?;
    let out = catchup_run(&bad).await?;
    ensure!(
        !out.status.success() && text(&out).contains("not_there") && text(&out).contains("item"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_clone_starts_as_a_new_cluster_and_catches_up() -> Result<()> {
    let f = Fixture::start().await?;
    let source = f.cluster.connect("postgres").await?;
    source.batch_execute(SCHEMA).await?;
    f.capture_start().await?;
    let copy = tempfile::Builder::new().prefix("switchyard-copy-").tempdir()?;
    let data = copy.path().join("data");
    let work = tempfile::tempdir()?;
    let config_for_clone = config_file(work.path(), &f, 1, "postgres", "")?;
    let writer = tokio::spawn(load(f.proxy.connect("postgres").await?, 3, 800));
    let out = switchyard(
        &f,
        &[
            "clone",
            "--method",
            "physical",
            "--config",
            &config_for_clone.display().to_string(),
            "--dir",
            &data.display().to_string(),
        ],
    )
    .await?;
    ensure!(
        out.status.success() && text(&out).contains("copy: done"),
        "{}",
        text(&out)
    );
    writer.await??;
    let target_cluster = ClusterBuilder::new().start_copy(copy).await?;
    let config = config_file(work.path(), &f, target_cluster.port(), "postgres", "")?;
    let out = catchup_run(&config).await?;
    ensure!(out.status.success(), "{}", text(&out));
    let target = target_cluster.connect("postgres").await?;
    assert_same(&source, &target).await?;
    Ok(())
}
