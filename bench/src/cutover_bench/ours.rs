//! switchyard's cutover, set up as a migration goes: the proxy in front of
//! the source with capture on, a pg_dump/pg_restore clone of the source
//! into the target cluster taken after the capture barrier, catch-up
//! running and caught up, then `CUTOVER` on the admin console while the
//! load runs. The console streams a NOTICE per step; its answer is
//! `field | value` rows with the state, the pause and each step's duration.

use super::load::Running;
use super::switch::{Note, Steps, Switch};
use super::{start_source, start_target, DB};
use crate::capturing::{capturing_config, start_capture, Console};
use crate::proxy_thread::ProxyThread;
use anyhow::{bail, ensure, Context, Result};
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use switchyard_proxy::DatabaseConfig;
use switchyard_tests::{Cluster, Endpoint};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

/// How long catch-up may take to reach the end of the log after the clone.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long CUTOVER may take to answer.
const CUTOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// CUTOVER attempts when one is refused (catch-up still behind, say), and
/// the wait between them.
const CUTOVER_ATTEMPTS: usize = 3;
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The source behind a capturing proxy, the target kept current by its
/// catch-up.
pub(super) struct Ours {
    pub(super) source: Cluster,
    pub(super) target: Cluster,
    console: Console,
    proxy: ProxyThread,
    endpoint: Endpoint,
    admin_database: String,
    /// Holds the capture log and the dump; removed after the proxy stops.
    dir: tempfile::TempDir,
}

impl Ours {
    /// Both clusters, the proxy, capture past its barrier, the clone, and
    /// catch-up level with the log.
    pub(super) async fn setup(scale: u32, catchup_workers: usize) -> Result<Ours> {
        let source = start_source(scale, false).await?;
        let target = start_target().await?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-cutover-bench-")
            .tempdir()
            .context("creating a directory for the capture log")?;
        let mut config = capturing_config(&source, dir.path(), DB)?;
        config.target = Some(DatabaseConfig {
            host: target
                .socket_dir()
                .to_str()
                .context("the target's socket directory is not UTF-8")?
                .to_owned(),
            port: target.port(),
            database: Some(DB.to_owned()),
            user: Some(target.superuser().to_owned()),
            password: None,
            ..Default::default()
        });
        config.catchup.workers = catchup_workers;
        let admin_database = config.admin_database.clone();
        let proxy = ProxyThread::start("cutover", config)?;
        let endpoint = proxy.endpoint(source.superuser(), source.binaries());
        let console = Console::connect(&endpoint, &admin_database).await?;
        let barrier = start_capture(&console).await?;
        println!("    capture on; barrier after {:.0} ms", barrier.as_secs_f64() * 1e3);
        let started = Instant::now();
        clone(&source, &target, &dir.path().join("source.dump")).await?;
        println!(
            "    cloned with pg_dump/pg_restore in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        console.query("CATCHUP START").await?;
        wait_caught_up(&console).await?;
        Ok(Ours {
            source,
            target,
            console,
            proxy,
            endpoint,
            admin_database,
            dir,
        })
    }

    /// Where the load connects: the proxy.
    pub(super) fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    /// Where to look when a run fails.
    pub(super) fn log_hint(&self) -> String {
        format!(
            "source log: {}; target log: {}",
            self.source.log_path().display(),
            self.target.log_path().display()
        )
    }

    /// `CUTOVER <options>` on a console of its own, timed on `load`'s clock,
    /// with its NOTICEs; tried again after a refusal.
    pub(super) async fn cutover(&self, load: &Running, options: &str) -> Result<Switch> {
        let command = format!("CUTOVER {options}").trim().to_owned();
        let mut switch = Switch {
            zero_unix_us: load.zero_unix_us(),
            ..Switch::default()
        };
        let mut console = NoticeConsole::connect(&self.endpoint, &self.admin_database).await?;
        for attempt in 1..=CUTOVER_ATTEMPTS {
            let sent = load.now_us();
            let answer = tokio::time::timeout(CUTOVER_TIMEOUT, console.client.simple_query(&command)).await;
            let answered = load.now_us();
            switch.log.extend(console.drain(load));
            match answer {
                Err(_) => bail!("`{command}` had no answer within {CUTOVER_TIMEOUT:?}"),
                Ok(Ok(messages)) => {
                    switch.timed(sent, answered);
                    read_answer(&mut switch, &messages)?;
                    break;
                }
                Ok(Err(e)) => {
                    let text = match e.as_db_error() {
                        Some(db) => format!("{} {}", db.code().code(), db.message()),
                        None => e.to_string(),
                    };
                    switch.timed(sent, answered);
                    switch.state = format!("error: {text}");
                    switch.error = Some(text.clone());
                    // Only a refusal before the freeze is worth another
                    // try; an abort later is the figure to report.
                    let refused = text.contains("aborted at preflight");
                    if !refused || console.client.is_closed() || attempt == CUTOVER_ATTEMPTS {
                        break;
                    }
                    switch.refusals.push(text);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        switch.log.extend(console.drain(load));
        console.close().await;
        Ok(switch)
    }

    /// Stops the proxy, then the clusters.
    pub(super) async fn stop(self) {
        self.console.close().await;
        self.proxy.stop();
        drop(self.dir);
    }
}

/// CUTOVER's rows: `state`, `pause_ms` and one `step.<name>` per step, in
/// the order given; every other row is kept in the log.
fn read_answer(switch: &mut Switch, messages: &[SimpleQueryMessage]) -> Result<()> {
    let mut steps = Steps::default();
    let mut state = None;
    for m in messages {
        let SimpleQueryMessage::Row(row) = m else { continue };
        let (Some(key), value) = (row.get(0), row.get(1).unwrap_or("")) else {
            continue;
        };
        if let Some(name) = key.strip_prefix("step.") {
            if let Some(ms) = step_ms(value) {
                steps.0.push((name.to_owned(), ms));
            }
            if let (true, Some(at)) = (name == "freeze", step_at_ms(value)) {
                switch.pause_started(switch.sent_us + (at * 1000.0) as u64);
            }
        } else if key == "state" {
            state = Some(value.to_owned());
        } else if key == "pause_ms" {
            switch.pause_ms = leading_number(value);
        }
        switch.log.push(Note {
            at_ms: switch.answered_at_ms,
            text: format!("{key} | {value}"),
        });
    }
    let state = state.context("CUTOVER's answer has no `state` row")?;
    switch.done = state == "done";
    switch.state = state;
    switch.steps_ms = steps;
    Ok(())
}

/// A step row's duration: `at 3.2 ms, 12.5 ms: detail` (when the step
/// started after the cutover began, how long it took); `None` for a step
/// still `running`.
fn step_ms(value: &str) -> Option<f64> {
    let took = match value.strip_prefix("at ") {
        Some(rest) => rest.split_once(", ")?.1,
        None => value,
    };
    leading_number(took)
}

/// When a step started, ms after the cutover began: `at 3.2 ms, ...`.
fn step_at_ms(value: &str) -> Option<f64> {
    leading_number(value.strip_prefix("at ")?)
}

/// The number a value starts with: `12.5`, `12.5 ms`.
fn leading_number(text: &str) -> Option<f64> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// pg_dump of the source into the target's database with pg_restore.
async fn clone(source: &Cluster, target: &Cluster, dump: &std::path::Path) -> Result<()> {
    let out = source
        .endpoint()
        .command("pg_dump", DB)
        .args(["-Fc", "-f"])
        .arg(dump)
        .output()
        .await
        .context("running pg_dump")?;
    ensure!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = target
        .endpoint()
        .command("pg_restore", DB)
        .args(["-d", DB, "--no-owner"])
        .arg(dump)
        .output()
        .await
        .context("running pg_restore")?;
    ensure!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// SHOW LAG until catch-up runs with nothing behind.
async fn wait_caught_up(console: &Console) -> Result<()> {
    let started = Instant::now();
    loop {
        let rows = console.query("SHOW LAG").await?;
        let get = |key: &str| {
            rows.iter()
                .find(|r| r.first().and_then(|k| k.as_deref()) == Some(key))
                .and_then(|r| r.get(1).cloned().flatten())
                .unwrap_or_default()
        };
        let state = get("state");
        if state == "running" && get("positions_behind") == "0" && get("keys_pending") == "0" {
            return Ok(());
        }
        if started.elapsed() > CATCH_UP_TIMEOUT || !(state == "running" || state == "starting") {
            bail!(
                "catch-up is not level with the log (state {state:?}, {} positions behind) after {:.0} s",
                get("positions_behind"),
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A console connection whose NOTICEs are kept with their arrival time.
struct NoticeConsole {
    client: Client,
    notices: mpsc::UnboundedReceiver<(Instant, String)>,
    task: JoinHandle<()>,
}

impl NoticeConsole {
    async fn connect(endpoint: &Endpoint, database: &str) -> Result<NoticeConsole> {
        let (client, mut connection) = endpoint
            .pg_config(database)
            .connect(NoTls)
            .await
            .with_context(|| format!("connecting to the admin console `{database}`"))?;
        let (tx, notices) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notice(n) = message {
                    let _ = tx.send((Instant::now(), n.message().to_owned()));
                }
            }
        });
        Ok(NoticeConsole { client, notices, task })
    }

    /// The notices received so far, on `load`'s clock.
    fn drain(&mut self, load: &Running) -> Vec<Note> {
        let mut out = Vec::new();
        while let Ok((at, text)) = self.notices.try_recv() {
            let at_ms = at.saturating_duration_since(load.zero).as_secs_f64() * 1000.0;
            out.push(Note {
                at_ms: crate::report::round(at_ms, 3),
                text,
            });
        }
        out
    }

    async fn close(self) {
        drop(self.client);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_values_read_with_or_without_a_unit() {
        assert_eq!(leading_number("12.5"), Some(12.5));
        assert_eq!(leading_number("3 ms"), Some(3.0));
        assert_eq!(leading_number("n/a"), None);
        assert_eq!(step_ms("at 3.2 ms, 12.5 ms: 40 keys"), Some(12.5));
        assert_eq!(step_ms("at 3.2 ms, running: "), None);
        assert_eq!(step_ms("7.0 ms"), Some(7.0));
        assert_eq!(step_at_ms("at 361.5 ms, 6.9 ms: every session"), Some(361.5));
    }
}
