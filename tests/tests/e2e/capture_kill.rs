//! Write-ahead under a crash: the `switchyard` binary captures a write load
//! and is killed with SIGKILL at random moments; afterwards every row the
//! database committed must have its key in the capture log.

use crate::oracle::logged_keys;
use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_tests::Cluster;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The `switchyard` binary of this build, built (or brought up to date)
/// once per test run, so a stale binary from an earlier build is never used.
pub(crate) fn switchyard_binary() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            // target/<profile>/deps/e2e-<hash>
            let dir = exe.parent().and_then(Path::parent).ok_or("test binary location")?;
            let bin = dir.join("switchyard");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-q", "-p", "switchyard", "--bin", "switchyard"])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() || !bin.exists() {
                return Err(format!("cannot build the switchyard binary at {}", bin.display()));
            }
            Ok(bin)
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// A free loopback port.
pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A config for the real binary on `port`: trust auth in front of
/// `cluster`, capturing database `postgres` into `log`.
pub(crate) fn write_capture_config(config: &Path, cluster: &Cluster, log: &Path, port: u16) -> Result<()> {
    std::fs::write(
        config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n\
             [source]\nhost = \"{host}\"\nport = {pgport}\nuser = \"{user}\"\n\
             [auth]\nmethod = \"trust\"\n\
             [capture]\nlog_dir = \"{log}\"\nuser = \"{user}\"\ndatabase = \"postgres\"\n",
            host = cluster.host(),
            pgport = cluster.port(),
            user = cluster.superuser(),
            log = log.display(),
        ),
    )
    .with_context(|| format!("write {}", config.display()))
}

/// The `switchyard` binary serving one config file, killed on drop.
pub(crate) struct ProxyProcess {
    child: Child,
    port: u16,
}

impl ProxyProcess {
    /// Starts `switchyard proxy --config config`, listening on `port`.
    pub(crate) fn start(config: &Path, port: u16) -> Result<ProxyProcess> {
        let child = Command::new(switchyard_binary()?)
            .args(["proxy", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the switchyard binary")?;
        Ok(ProxyProcess { child, port })
    }

    /// One attempt to connect to `db` as `postgres`.
    pub(crate) async fn connect(&self, db: &str) -> Result<Client, tokio_postgres::Error> {
        let mut pg = tokio_postgres::Config::new();
        pg.host("127.0.0.1").port(self.port).user("postgres").dbname(db);
        pg.connect_timeout(Duration::from_secs(5));
        let (client, conn) = pg.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Connects to `db`, retrying while the proxy comes up.
    pub(crate) async fn connect_retrying(&self, db: &str) -> Result<Client> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.connect(db).await {
                Ok(c) => return Ok(c),
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => bail!("the proxy did not come up: {e}"),
            }
        }
    }

    /// The admin console, once the proxy is up.
    pub(crate) async fn admin(&self) -> Result<Client> {
        self.connect_retrying("switchyard").await
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CAPTURE START (the first time; a restarted proxy resumes capture by
/// itself), then waits for the barrier.
async fn capture_on(admin: &Client, start: bool) -> Result<()> {
    if start {
        admin.simple_query("CAPTURE START").await.context("CAPTURE START")?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = admin.simple_query("SHOW CAPTURE").await?;
        let on = rows
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("state") && r.get(1) == Some("on")));
        if on {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "capture did not reach its barrier");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes until the connection dies: autocommit, explicit blocks, several
/// statements per query, and the extended protocol.
async fn writer(c: Client, next: Arc<AtomicI64>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    loop {
        let id = next.fetch_add(3, Ordering::Relaxed);
        let r = match rng.random_range(0..4) {
            0 => c.batch_execute(&format!("INSERT INTO kt VALUES ({id}, 0)")).await,
            1 => {
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO kt VALUES ({id}, 1); INSERT INTO kt VALUES ({}, 1); COMMIT",
                    id + 1
                ))
                .await
            }
            2 => {
                let a = c.batch_execute("BEGIN").await;
                let b = c.execute("INSERT INTO kt VALUES ($1, 2)", &[&id]).await.map(|_| ());
                let d = c
                    .execute("UPDATE kt SET w = w + 1 WHERE id = $1", &[&(id - 3)])
                    .await
                    .map(|_| ());
                match (a, b, d) {
                    (Ok(()), Ok(()), Ok(())) => c.batch_execute("COMMIT").await,
                    (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => Err(e),
                }
            }
            _ => c.execute("INSERT INTO kt VALUES ($1, 3)", &[&id]).await.map(|_| ()),
        };
        if let Err(e) = r {
            if e.as_db_error().is_none() {
                return; // the proxy is gone
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_proxy_loses_no_committed_key() -> Result<()> {
    let cluster = Cluster::start().await?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute("CREATE TABLE kt (id bigint PRIMARY KEY, w int NOT NULL)")
        .await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("log");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xdead);
    let next = Arc::new(AtomicI64::new(1));
    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        let port = free_port()?;
        let config = dir.path().join(format!("switchyard-{round}.toml"));
        write_capture_config(&config, &cluster, &log, port)?;
        let proxy = ProxyProcess::start(&config, port)?;
        let admin = proxy.admin().await?;
        capture_on(&admin, round == 0).await?;
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let c = proxy.connect("postgres").await?;
            tasks.push(tokio::spawn(writer(c, next.clone(), round as u64 * 16 + w)));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        drop(proxy); // SIGKILL, mid-traffic
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .context("a writer did not notice the kill")??;
        }
    }
    let rows = direct.query("SELECT id FROM kt ORDER BY id", &[]).await?;
    let logged = logged_keys(&log)?;
    let missing: Vec<i64> = rows
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .filter(|id| !logged.contains(&("public.kt".to_owned(), vec![Some(id.to_string())])))
        .collect();
    println!(
        "kill test: {ROUNDS} kills, {} committed rows, {} keys logged, {} missing",
        rows.len(),
        logged.len(),
        missing.len()
    );
    ensure!(rows.len() > 50, "too little traffic before the kills: {}", rows.len());
    ensure!(
        missing.is_empty(),
        "committed rows whose keys are not in the log: {missing:?}"
    );
    Ok(())
}
