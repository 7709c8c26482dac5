//! The usual recipe, measured for real: logical replication from a source
//! with `wal_level = logical` to the target (publication, subscription,
//! initial copy, streaming), PgBouncer in transaction mode in front of the
//! source, and at the switch: PAUSE on PgBouncer's console, wait until the
//! subscription has applied the source's WAL up to its position after the
//! pause, copy every sequence's value, point PgBouncer at the target,
//! RELOAD, RESUME.

use super::bouncer::{Bouncer, Server};
use super::load::Running;
use super::switch::{Note, Steps, Switch};
use super::{start_source, start_target, DB};
use crate::capturing::add_history_key;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::time::{Duration, Instant};
use switchyard_tests::{quote_literal, Cluster, Endpoint};
use tokio_postgres::{Client, SimpleQueryMessage};

/// The publication and the subscription (also the walsender's
/// application_name on the source).
const NAME: &str = "switchyard_recipe";

/// How long the subscription's initial copy may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(180);

/// How long the replication may take to reach the source's position during
/// the pause before the recipe gives up and resumes on the source.
const LAG_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the replication position is polled during the pause: faster
/// than a DBA's script would, so that the poll adds little to the pause.
const LAG_POLL: Duration = Duration::from_millis(1);

/// How long any PgBouncer console command may take.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Source, target, the replication between them and PgBouncer in front.
pub(super) struct Recipe {
    pub(super) source: Cluster,
    pub(super) target: Cluster,
    bouncer: Bouncer,
}

impl Recipe {
    /// Both clusters, the target's schema (`pgbench -i` without data), the
    /// subscription with its initial copy done, and PgBouncer pooling up to
    /// `pool_size` server connections to the source.
    pub(super) async fn setup(scale: u32, pool_size: usize) -> Result<Recipe> {
        let source = start_source(scale, true).await?;
        let target = start_target().await?;
        let out = target
            .endpoint()
            .pgbench(DB, &["-i", "-q", "-I", "dtp", "-s", &scale.to_string()])
            .await
            .context("creating the pgbench tables on the target")?;
        ensure!(
            out.status.success(),
            "pgbench -i -I dtp on the target failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        add_history_key(&target, DB).await?;
        subscribe(&source, &target).await?;
        let server = socket_server(&source)?;
        let bouncer = Bouncer::start(&server, source.superuser(), pool_size)?;
        Ok(Recipe {
            source,
            target,
            bouncer,
        })
    }

    /// Where the load connects: PgBouncer.
    pub(super) fn endpoint(&self) -> Endpoint {
        self.bouncer.endpoint(self.source.binaries())
    }

    /// PgBouncer's log, for a failed run.
    pub(super) fn log_hint(&self) -> String {
        format!("PgBouncer's log: {}", self.bouncer.log_path().display())
    }

    /// The switch, timed on `load`'s clock. A step that fails resumes
    /// PgBouncer on whatever it points at, and the switch reports it.
    pub(super) async fn cutover(&self, load: &Running) -> Result<Switch> {
        let console = self.bouncer.endpoint(self.source.binaries()).connect("pgbouncer").await;
        let console = console.context("connecting to PgBouncer's console")?;
        let source = self.source.connect(DB).await.context("connecting to the source")?;
        let target = self.target.connect(DB).await.context("connecting to the target")?;
        let mut switch = Switch {
            zero_unix_us: load.zero_unix_us(),
            ..Switch::default()
        };
        let mut steps = Steps::default();
        let sent = load.now_us();
        let outcome = self
            .steps(&console, &source, &target, &mut steps, load, &mut switch)
            .await;
        if let Err(e) = &outcome {
            // Never leave the clients paused.
            let _ = console_command(&console, "RESUME").await;
            switch.error = Some(format!("{e:#}"));
        }
        let answered = load.now_us();
        switch.timed(sent, answered);
        switch.pause_ms = Some(switch.command_ms);
        switch.steps_ms = steps;
        switch.done = outcome.is_ok();
        switch.state = match &outcome {
            Ok(()) => "done".to_owned(),
            Err(_) => "failed, resumed".to_owned(),
        };
        // The target is the primary now: stop applying from the source.
        let _ = target
            .batch_execute(&format!("ALTER SUBSCRIPTION {NAME} DISABLE"))
            .await;
        Ok(switch)
    }

    /// PAUSE, replication caught up, sequences, RELOAD on the target, RESUME.
    async fn steps(
        &self,
        console: &Client,
        source: &Client,
        target: &Client,
        steps: &mut Steps,
        load: &Running,
        switch: &mut Switch,
    ) -> Result<()> {
        let mut note = |text: String| {
            switch.log.push(Note {
                at_ms: load.now_us() as f64 / 1000.0,
                text,
            })
        };
        let started = Instant::now();
        console_command(console, &format!("PAUSE {DB}")).await?;
        steps.push("pause", started.elapsed());
        note(format!("PAUSE {DB} answered: no transaction open on the source"));

        let started = Instant::now();
        let lsn = wait_replicated(source).await?;
        steps.push("replication", started.elapsed());
        note(format!("subscription applied the source up to {lsn}"));

        let started = Instant::now();
        let copied = copy_sequences(source, target).await?;
        steps.push("sequences", started.elapsed());
        note(format!("{copied} sequence(s) set on the target"));

        let started = Instant::now();
        self.bouncer.retarget(&socket_server(&self.target)?)?;
        console_command(console, "RELOAD").await?;
        steps.push("reload", started.elapsed());
        note("PgBouncer points at the target (RELOAD)".to_owned());

        let started = Instant::now();
        console_command(console, &format!("RESUME {DB}")).await?;
        steps.push("resume", started.elapsed());
        note("RESUME answered".to_owned());
        Ok(())
    }
}

/// PgBouncer's way to the cluster: its Unix socket, as the proxy's.
fn socket_server(cluster: &Cluster) -> Result<Server> {
    Ok(Server {
        host: cluster
            .socket_dir()
            .to_str()
            .context("the socket directory is not UTF-8")?
            .to_owned(),
        port: cluster.port(),
        database: DB.to_owned(),
    })
}

/// A PgBouncer console command, answered within `CONSOLE_TIMEOUT`.
async fn console_command(console: &Client, sql: &str) -> Result<()> {
    tokio::time::timeout(CONSOLE_TIMEOUT, console.simple_query(sql))
        .await
        .map_err(|_| anyhow!("`{sql}` on PgBouncer's console: no answer within {CONSOLE_TIMEOUT:?}"))?
        .with_context(|| format!("`{sql}` on PgBouncer's console"))?;
    Ok(())
}

/// The publication on the source, the subscription on the target, and the
/// wait until every table's initial copy is done and the subscription
/// streams.
async fn subscribe(source: &Cluster, target: &Cluster) -> Result<()> {
    let src = source.connect(DB).await.context("connecting to the source")?;
    src.batch_execute(&format!(
        "CREATE PUBLICATION {NAME} FOR TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
    ))
    .await
    .context("creating the publication on the source")?;
    let dst = target.connect(DB).await.context("connecting to the target")?;
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname={DB} user={}",
        source.port(),
        source.superuser()
    );
    dst.batch_execute(&format!(
        "CREATE SUBSCRIPTION {NAME} CONNECTION {} PUBLICATION {NAME}",
        quote_literal(&conninfo)
    ))
    .await
    .context("creating the subscription on the target")?;
    let started = Instant::now();
    loop {
        let pending: i64 = dst
            .query_one(
                "SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid \
                 WHERE s.subname = $1 AND r.srsubstate <> 'r'",
                &[&NAME],
            )
            .await
            .context("reading the subscription's table states")?
            .try_get(0)?;
        let streaming: i64 = src
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                &[&NAME],
            )
            .await
            .context("reading pg_stat_replication on the source")?
            .try_get(0)?;
        if pending == 0 && streaming > 0 {
            return Ok(());
        }
        if started.elapsed() > SYNC_TIMEOUT {
            bail!(
                "the subscription's initial copy was not done after {} s ({pending} table(s) not ready)",
                SYNC_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The source's WAL position now (nothing writes it: PgBouncer is paused),
/// then polls until the subscription's walsender reports it applied.
async fn wait_replicated(source: &Client) -> Result<String> {
    let lsn = text(source, "SELECT pg_current_wal_lsn()::text").await?;
    let sql = format!(
        "SELECT coalesce(bool_or(replay_lsn >= {}::pg_lsn), false)::text FROM pg_stat_replication \
         WHERE application_name = {}",
        quote_literal(&lsn),
        quote_literal(NAME)
    );
    let started = Instant::now();
    while text(source, &sql).await? != "true" {
        if started.elapsed() > LAG_TIMEOUT {
            bail!(
                "the subscription had not applied the source up to {lsn} after {} s",
                LAG_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(LAG_POLL).await;
    }
    Ok(lsn)
}

/// Every sequence of the source that has been used, set on the target to
/// the same value in one statement; how many.
async fn copy_sequences(source: &Client, target: &Client) -> Result<usize> {
    let rows = source
        .simple_query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences \
             WHERE last_value IS NOT NULL",
        )
        .await
        .context("reading the source's sequences")?;
    let calls: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((r.get(0)?.to_owned(), r.get(1)?.to_owned())),
            _ => None,
        })
        .map(|(name, value)| format!("setval({}, {value}, true)", quote_literal(&name)))
        .collect();
    if !calls.is_empty() {
        target
            .simple_query(&format!("SELECT {}", calls.join(", ")))
            .await
            .context("setting the sequences on the target")?;
    }
    Ok(calls.len())
}

/// The first column of the first row of `sql`, as text.
async fn text(client: &Client, sql: &str) -> Result<String> {
    let messages = client.simple_query(sql).await.with_context(|| format!("`{sql}`"))?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .with_context(|| format!("`{sql}` returned no row"))
}
