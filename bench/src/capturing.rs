//! What the scenarios with a capturing proxy share: its config, its admin
//! console (SHOW CAPTURE, and CAPTURE START up to the barrier), and the key
//! `pgbench_history` needs before pgbench's writes can be captured.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard_proxy::Config;
use switchyard_tests::{Cluster, Endpoint};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// How long CAPTURE START may take to reach its barrier.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long any admin console command may take to answer.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often SHOW CAPTURE is polled while waiting for the barrier.
const BARRIER_POLL: Duration = Duration::from_millis(20);

/// The tables the TPC-B-like script updates; `pgbench -i` gives each a
/// primary key unless its `-I` steps leave out `p`.
const KEYED_TABLES: [&str; 3] = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers"];

/// The key added to the one table the script inserts into.
pub(crate) const HISTORY_KEY_SQL: &str = "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY";

/// A proxy config for `cluster` without capture: clients on 127.0.0.1 at
/// any free port, PostgreSQL reached over its Unix socket, no passwords.
pub(crate) fn proxy_config(cluster: &Cluster) -> Result<Config> {
    let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let socket_dir = cluster.socket_dir().to_str().context("socket dir is not UTF-8")?;
    Ok(Config::trusting(any_port, socket_dir, cluster.port()))
}

/// [`proxy_config`] capturing the writes to database `db` into a log under
/// `log_dir`, reading the catalog as the cluster's superuser.
pub(crate) fn capturing_config(cluster: &Cluster, log_dir: &Path, db: &str) -> Result<Config> {
    let user = cluster.superuser();
    let mut config = proxy_config(cluster)?;
    config.capture.log_dir = log_dir.join("log");
    config.capture.user = Some(user.to_owned());
    config.capture.password = cluster.password(user).map(str::to_owned);
    config.capture.database = Some(db.to_owned());
    Ok(config)
}

/// Checks that `pgbench -i` keyed the tables the script updates, and adds a
/// key to `pgbench_history` in database `db`, directly on the cluster.
pub(crate) async fn add_history_key(cluster: &Cluster, db: &str) -> Result<()> {
    let client = cluster.connect(db).await.context("connecting to the cluster")?;
    let tables: Vec<&str> = KEYED_TABLES.to_vec();
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c \
             WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1) \
               AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)",
            &[&tables],
        )
        .await
        .context("looking up the primary keys of the pgbench tables")?;
    let keyed: Vec<String> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .context("reading the keyed pgbench tables")?;
    let missing: Vec<&str> = KEYED_TABLES
        .iter()
        .copied()
        .filter(|t| !keyed.iter().any(|k| k == t))
        .collect();
    if !missing.is_empty() {
        bail!(
            "pgbench -i created no primary key on {}; capture needs one on every table it writes",
            missing.join(", ")
        );
    }
    client
        .batch_execute(HISTORY_KEY_SQL)
        .await
        .with_context(|| format!("adding a key to pgbench_history ({HISTORY_KEY_SQL})"))?;
    Ok(())
}

/// `CAPTURE START`, then SHOW CAPTURE until its state is `on` (the barrier
/// passed). Returns how long that took.
pub(crate) async fn start_capture(console: &Console) -> Result<Duration> {
    let started = Instant::now();
    console
        .query("CAPTURE START")
        .await
        .context("starting capture on the capturing proxy")?;
    loop {
        let show = console
            .show_capture()
            .await
            .context("waiting for the capture barrier")?;
        if show.get("state") == Some("on") {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= BARRIER_TIMEOUT {
            bail!(
                "capture did not reach its barrier within {} s of CAPTURE START; SHOW CAPTURE says:\n{}",
                BARRIER_TIMEOUT.as_secs(),
                show.describe()
            );
        }
        tokio::time::sleep(BARRIER_POLL).await;
    }
}

/// A connection to a proxy's admin console, driven by a task on the bench's
/// runtime.
pub(crate) struct Console {
    client: Client,
    connection: JoinHandle<()>,
}

impl Console {
    /// Logs in to the console database `database` at `endpoint`.
    pub(crate) async fn connect(endpoint: &Endpoint, database: &str) -> Result<Console> {
        let config = endpoint.pg_config(database);
        let (client, connection) = config.connect(NoTls).await.with_context(|| {
            format!(
                "connecting to the admin console `{database}` at {}:{}",
                endpoint.host, endpoint.port
            )
        })?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Console { client, connection })
    }

    /// Runs one console command and returns its rows as text.
    pub(crate) async fn query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        Ok(self
            .rows(sql)
            .await?
            .iter()
            .map(|row| (0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect())
            .collect())
    }

    /// The rows `sql` returns, with their column names.
    pub(crate) async fn rows(&self, sql: &str) -> Result<Vec<tokio_postgres::SimpleQueryRow>> {
        let messages = tokio::time::timeout(CONSOLE_TIMEOUT, self.client.simple_query(sql))
            .await
            .map_err(|_| {
                anyhow!(
                    "`{sql}` on the admin console: no answer within {} s",
                    CONSOLE_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("`{sql}` on the admin console"))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .collect())
    }

    /// SHOW CAPTURE.
    pub(crate) async fn show_capture(&self) -> Result<ShowCapture> {
        let rows = self.query("SHOW CAPTURE").await?;
        let mut map = BTreeMap::new();
        for row in rows {
            if let Some(Some(key)) = row.first() {
                let value = row.get(1).cloned().flatten().unwrap_or_default();
                map.insert(key.clone(), value);
            }
        }
        Ok(ShowCapture(map))
    }

    /// SHOW CAPTURE's counters; an error unless capture is on.
    pub(crate) async fn counters(&self) -> Result<CaptureCounters> {
        let show = self.show_capture().await?;
        if show.get("state") != Some("on") {
            bail!("capture is no longer on; SHOW CAPTURE says:\n{}", show.describe());
        }
        show.counters()
    }

    /// Ends the session and waits for its connection task to finish.
    pub(crate) async fn close(self) {
        drop(self.client);
        let _ = tokio::time::timeout(CONSOLE_TIMEOUT, self.connection).await;
    }
}

/// SHOW CAPTURE's `key | value` rows.
#[derive(Debug)]
pub(crate) struct ShowCapture(BTreeMap<String, String>);

impl ShowCapture {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A counter row's value.
    fn count(&self, key: &str) -> Result<u64> {
        let value = self
            .get(key)
            .with_context(|| format!("SHOW CAPTURE has no `{key}` row"))?;
        value
            .parse()
            .with_context(|| format!("SHOW CAPTURE's `{key}` is not a count: {value:?}"))
    }

    /// The position of the newest log record (0 before the first).
    pub(crate) fn last_lsn(&self) -> Result<u64> {
        match self.get("last_lsn") {
            Some("") => Ok(0),
            _ => self.count("last_lsn"),
        }
    }

    pub(crate) fn counters(&self) -> Result<CaptureCounters> {
        Ok(CaptureCounters {
            transactions_captured: self.count("transactions_captured")?,
            keys_captured: self.count("keys_captured")?,
            log_records: self.count("log_records")?,
            log_bytes: self.count("log_bytes")?,
            unsafe_statements: self.count("unsafe_statements")?,
        })
    }

    /// The per-kind unsafe statement rows.
    pub(crate) fn unsafe_lines(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with("unsafe."))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect()
    }

    /// Every row, one `key = value` line each.
    pub(crate) fn describe(&self) -> String {
        let lines: Vec<String> = self.0.iter().map(|(k, v)| format!("  {k} = {v}")).collect();
        lines.join("\n")
    }
}

/// SHOW CAPTURE's counters, or what they gained over a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct CaptureCounters {
    pub(crate) transactions_captured: u64,
    pub(crate) keys_captured: u64,
    pub(crate) log_records: u64,
    pub(crate) log_bytes: u64,
    /// Statements capture could not capture (rejected or run uncaptured).
    pub(crate) unsafe_statements: u64,
}

impl CaptureCounters {
    /// What the counters gained since `before`.
    pub(crate) fn since(&self, before: &CaptureCounters) -> CaptureCounters {
        CaptureCounters {
            transactions_captured: self.transactions_captured.saturating_sub(before.transactions_captured),
            keys_captured: self.keys_captured.saturating_sub(before.keys_captured),
            log_records: self.log_records.saturating_sub(before.log_records),
            log_bytes: self.log_bytes.saturating_sub(before.log_bytes),
            unsafe_statements: self.unsafe_statements.saturating_sub(before.unsafe_statements),
        }
    }

    pub(crate) fn add(&mut self, other: &CaptureCounters) {
        self.transactions_captured += other.transactions_captured;
        self.keys_captured += other.keys_captured;
        self.log_records += other.log_records;
        self.log_bytes += other.log_bytes;
        self.unsafe_statements += other.unsafe_statements;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(rows: &[(&str, &str)]) -> ShowCapture {
        ShowCapture(rows.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn counters_come_from_show_capture() {
        let s = show(&[
            ("state", "on"),
            ("transactions_captured", "10"),
            ("keys_captured", "40"),
            ("log_records", "10"),
            ("log_bytes", "4700"),
            ("unsafe_statements", "0"),
            ("unsafe.ddl", "1 seen, 1 rejected (reject); last: CREATE TABLE x ()"),
        ]);
        let c = s.counters().unwrap();
        assert_eq!((c.transactions_captured, c.keys_captured, c.log_bytes), (10, 40, 4700));
        assert_eq!(
            s.unsafe_lines(),
            vec!["unsafe.ddl: 1 seen, 1 rejected (reject); last: CREATE TABLE x ()"]
        );
    }

    #[test]
    fn missing_or_bad_counter_is_an_error() {
        let e = show(&[("state", "on")]).counters().unwrap_err();
        assert!(e.to_string().contains("transactions_captured"), "{e}");
        let e = show(&[("transactions_captured", "unknown")])
            .count("transactions_captured")
            .unwrap_err();
        assert!(e.to_string().contains("not a count"), "{e}");
    }

    #[test]
    fn counters_since_subtract() {
        let before = CaptureCounters {
            transactions_captured: 5,
            keys_captured: 20,
            log_records: 5,
            log_bytes: 100,
            unsafe_statements: 0,
        };
        let after = CaptureCounters {
            transactions_captured: 8,
            keys_captured: 32,
            log_records: 8,
            log_bytes: 250,
            unsafe_statements: 1,
        };
        let d = after.since(&before);
        assert_eq!(
            (
                d.transactions_captured,
                d.keys_captured,
                d.log_bytes,
                d.unsafe_statements
            ),
            (3, 12, 150, 1)
        );
    }
}
