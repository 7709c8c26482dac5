//! The cutover, end to end: a source and a target on two separate
//! servers, a proxy capturing the source, a clone taken after the barrier
//! and migrated, catch-up running in the proxy, then `CUTOVER` with real
//! clients going on through it. Each module checks data, not messages
//! alone.

mod aborts;
mod cli;
mod cycle;
mod on_target;
mod upgrade;

use crate::support::{admin, connect_listening, table, trusting_config, PROMPT};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use switchyard_proxy::{Config, DatabaseConfig};
use switchyard_tests::{Cluster, TestProxy};
use tokio_postgres::{AsyncMessage, Client};

/// Source, target, and the proxy in front of them.
pub struct Cut {
    pub source: Cluster,
    pub target: Cluster,
    pub proxy: TestProxy,
    pub admin: Client,
    pub dir: tempfile::TempDir,
    /// The proxy's config, to start another proxy like it.
    pub config: Config,
}

/// What one `CUTOVER` printed and answered.
#[derive(Debug)]
pub struct Outcome {
    /// The NOTICEs, in order.
    pub notices: Vec<String>,
    /// SHOW CUTOVER's rows on success, the error message otherwise.
    pub result: std::result::Result<BTreeMap<String, String>, String>,
}

impl Outcome {
    /// The report, or an error naming what the cutover said.
    pub fn done(&self) -> Result<&BTreeMap<String, String>> {
        match &self.result {
            Ok(m) => Ok(m),
            Err(e) => anyhow::bail!("the cutover failed: {e}\nnotices:\n{}", self.notices.join("\n")),
        }
    }

    /// The error message, or an error if it succeeded.
    pub fn refused(&self) -> Result<&str> {
        match &self.result {
            Err(e) => Ok(e),
            Ok(m) => anyhow::bail!("the cutover succeeded: {m:?}"),
        }
    }
}

impl Cut {
    /// Two servers with `schema` on the source, and a capturing proxy with
    /// `mapping` as catch-up's mapping file; `edit` adjusts the config.
    pub async fn start(schema: &str, mapping: &str, edit: impl FnOnce(&mut Config)) -> Result<Cut> {
        let (source, target) = tokio::try_join!(Cluster::start(), Cluster::start())?;
        Cut::start_with(source, target, schema, mapping, edit).await
    }

    /// As [`Cut::start`], on servers already started (e.g. a target of
    /// another major version).
    pub async fn start_with(
        source: Cluster,
        target: Cluster,
        schema: &str,
        mapping: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Result<Cut> {
        source.connect("postgres").await?.batch_execute(schema).await?;
        let dir = tempfile::tempdir()?;
        let mapping_path = dir.path().join("mapping.toml");
        std::fs::write(&mapping_path, mapping)?;
        let mut config = trusting_config(source.host(), source.port());
        config.capture.log_dir = dir.path().join("log");
        config.capture.user = Some(source.superuser().to_owned());
        config.capture.database = Some("postgres".into());
        config.target = Some(DatabaseConfig {
            host: target.host().to_owned(),
            port: target.port(),
            database: Some("postgres".into()),
            user: Some(target.superuser().to_owned()),
            password: None,
            ..Default::default()
        });
        config.catchup.mapping = Some(mapping_path);
        config.catchup.workers = 2;
        edit(&mut config);
        let proxy = TestProxy::start_with(config.clone())
            .await?
            .with_login(source.superuser(), None)
            .with_binaries(source.binaries().clone());
        let admin = admin(&proxy).await?;
        Ok(Cut {
            source,
            target,
            proxy,
            admin,
            dir,
            config,
        })
    }

    /// CAPTURE START, waiting for the barrier.
    pub async fn capture(&self) -> Result<()> {
        self.admin
            .simple_query("CAPTURE START")
            .await
            .context("CAPTURE START")?;
        let deadline = Instant::now() + PROMPT;
        loop {
            let t = table(&self.admin, "SHOW CAPTURE").await?.map();
            if t.get("state").map(String::as_str) == Some("on") {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "no barrier: {t:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Copies the source into the target with pg_dump/pg_restore (after
    /// the barrier, writes going on), runs `migration` on the copy, starts
    /// catch-up and waits until it has caught up.
    pub async fn clone_and_migrate(&self, migration: &str) -> Result<()> {
        let dump = self.dir.path().join("source.dump");
        self.source
            .endpoint()
            .copy_database("postgres", &self.target.endpoint(), "postgres", &dump)
            .await?;
        if !migration.is_empty() {
            self.target.connect("postgres").await?.batch_execute(migration).await?;
        }
        self.admin
            .simple_query("CATCHUP START")
            .await
            .context("CATCHUP START")?;
        self.nearly_caught_up(Duration::from_secs(60)).await
    }

    /// Waits until catch-up has applied everything logged so far.
    pub async fn caught_up(&self, limit: Duration) -> Result<()> {
        self.wait_lag(limit, true).await
    }

    /// Waits until catch-up lags less than 200 ms (writes going on).
    pub async fn nearly_caught_up(&self, limit: Duration) -> Result<()> {
        self.wait_lag(limit, false).await
    }

    async fn wait_lag(&self, limit: Duration, quiet: bool) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let lag = table(&self.admin, "SHOW LAG").await?.map();
            ensure!(lag.get("state").map(String::as_str) == Some("running"), "{lag:?}");
            let seconds: f64 = lag.get("lag_seconds").and_then(|s| s.parse().ok()).unwrap_or(f64::MAX);
            // With writes going on, a lag under 200 ms; when they have
            // stopped, everything logged applied.
            let all_applied = ["positions_behind", "commits_pending", "keys_pending"]
                .iter()
                .all(|k| lag.get(*k).map(String::as_str) == Some("0"));
            if seconds < 0.2
                && lag.get("since_start.commits_applied").is_some_and(|c| c != "0")
                && (all_applied || !quiet)
            {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "catch-up did not catch up: {lag:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `CUTOVER <options>` on a console of its own, collecting the
    /// NOTICEs it streams.
    pub async fn cutover(&self, options: &str) -> Result<Outcome> {
        let (console, mut messages) = connect_listening(&self.proxy.pg_config("switchyard")).await?;
        let sql = format!("CUTOVER {options}");
        let answer = tokio::time::timeout(Duration::from_secs(120), table(&console, &sql))
            .await
            .context("CUTOVER did not answer in 120 s")?;
        drop(console);
        let mut notices = Vec::new();
        while let Some(m) = messages.recv().await {
            if let AsyncMessage::Notice(n) = m {
                notices.push(n.message().to_owned());
            }
        }
        let result = match answer {
            Ok(t) => Ok(t.map()),
            Err(e) => Err(e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned())),
        };
        Ok(Outcome { notices, result })
    }

    /// SHOW STATUS.
    pub async fn status(&self) -> Result<BTreeMap<String, String>> {
        crate::support::status(&self.admin).await
    }
}

/// The port of the server a statement ran on: which database committed it.
pub const PORT: &str = "current_setting('port')::int";

/// Runs a simple-query write ending in `RETURNING {PORT}` and says which
/// server ran it (asked again when the write changed no row).
pub async fn write_port(c: &Client, sql: &str) -> Result<i32> {
    Ok(match table(c, sql).await?.rows.first() {
        Some(r) => r[0].as_deref().unwrap_or("0").parse()?,
        None => c.query_one(&format!("SELECT {PORT}"), &[]).await?.get(0),
    })
}

/// Records a committed insert (or delete) of `key` in the set of what all
/// servers hold and, when the source committed it, in the source's.
pub fn track<K: Ord + Clone>(
    all: &mut std::collections::BTreeSet<K>,
    source: &mut std::collections::BTreeSet<K>,
    key: K,
    insert: bool,
    on_source: bool,
) {
    let sets = if on_source { vec![all, source] } else { vec![all] };
    for set in sets {
        if insert {
            set.insert(key.clone());
        } else {
            set.remove(&key);
        }
    }
}
