//! `switchyard clone`: copies the source to the target once the capture
//! barrier has passed, so that the copy and the capture log together hold
//! every committed write.
//!
//! Logical: a snapshot is exported on the source after the barrier and held
//! open while `pg_dump --snapshot` dumps it in directory format with
//! parallel jobs; `pg_restore` then loads it into the (empty) target in
//! parallel. Physical: `pg_basebackup` copies the whole cluster into a new
//! data directory, which the DBA then starts. Any copy taken after the
//! barrier works as well (a cloud snapshot, say): the command is a
//! convenience, not a requirement.

use crate::admin::reply::{CapturePhase, CaptureReply};
use crate::cli::Console;
use crate::config::Config;
use crate::progress::Progress;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use switchyard_replay::Dsn;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_postgres::Client;

/// How to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    /// pg_dump (directory format, parallel) then pg_restore (parallel) into
    /// the empty target database.
    Logical,
    /// pg_basebackup of the whole source cluster into a new data directory.
    Physical,
}

/// What `switchyard clone` was asked to do.
#[derive(Debug, Clone)]
pub struct CloneOptions {
    /// Logical or physical.
    pub method: Method,
    /// Parallel jobs for pg_dump and pg_restore.
    pub jobs: usize,
    /// Where the dump (logical) or the data directory (physical) goes.
    pub dir: PathBuf,
    /// Restore without ownership (every object owned by the target user).
    pub no_owner: bool,
    /// Keep the dump directory after a successful restore.
    pub keep_dump: bool,
    /// How long to wait for the barrier.
    pub barrier_timeout: Duration,
    /// Plain progress lines at most this often.
    pub progress_every: Duration,
}

/// Runs the clone; progress goes to stderr, the summary to stdout.
pub async fn run(config: &Config, options: &CloneOptions, console: &Console) -> Result<()> {
    let bin = Binaries::find()?;
    let source_pg = config.source_control("switchyard clone")?;
    let source = connect(&source_pg, "source").await?;
    let source_version = server_version(&source).await?;
    let tool = match options.method {
        Method::Logical => "pg_dump",
        Method::Physical => "pg_basebackup",
    };
    let tool_version = bin.major_version(tool).await?;
    if tool_version < source_version / 10_000 {
        bail!(
            "{tool} is version {tool_version}, older than the source server ({}); install postgresql-client-{} or set SWITCHYARD_PG_BINDIR",
            source_version / 10_000,
            source_version / 10_000
        );
    }
    wait_for_barrier(console, options.barrier_timeout).await?;
    match options.method {
        Method::Logical => logical(config, options, &bin, &source_pg, &source, source_version).await,
        Method::Physical => physical(config, options, &bin, &source_pg, &source, source_version, tool_version).await,
    }
}

/// The copy about to be made replays the capture log from its start: hold
/// the whole log for it (the hold of its replayer, which then moves it on),
/// so that retention does not delete what it needs while another replayer
/// confirms. Taken once every check has passed, just before the copy: a
/// refused clone leaves the holds as they were. A log directory not on
/// this machine is only warned about.
fn hold_log_for_copy(config: &Config) {
    let Ok(target) = config.target_connection("switchyard clone") else {
        return;
    };
    match switchyard_replay::replayer::hold_log_for_new_copy(&config.capture.log_dir, &target.pg) {
        Ok(name) => eprintln!(
            "the capture log in {} is held from its start for this copy's catch-up (hold {name})",
            config.capture.log_dir.display()
        ),
        Err(e) => eprintln!(
            "warning: cannot hold the capture log for this copy ({e}); start its catch-up before another replayer              confirms, or set capture.retention = \"keep\""
        ),
    }
}

/// Polls SHOW CAPTURE until the barrier has passed.
async fn wait_for_barrier(console: &Console, timeout: Duration) -> Result<()> {
    // A timeout too large to add (a typo like 1e20s) means no deadline.
    let deadline = Instant::now().checked_add(timeout);
    let mut told = false;
    loop {
        let capture: CaptureReply = crate::cli::console_reply(console, &crate::admin::AdminCommand::ShowCapture)
            .await
            .context("cannot read SHOW CAPTURE from the proxy")?;
        let holding = match &capture {
            CaptureReply::Off(_) => bail!(
                "capture is off: run `switchyard capture start` first (a copy taken without capture would miss the writes made while it runs)"
            ),
            CaptureReply::On(on) if on.phase == CapturePhase::On => {
                eprintln!(
                    "capture barrier passed at {}; every write committed from here on is in the capture log",
                    on.barrier_at.as_deref().unwrap_or("?")
                );
                return Ok(());
            }
            // Waiting for the barrier, or a log that cannot be written (capture
            // goes on by itself once it can).
            CaptureReply::On(on) => on.sessions_holding_barrier.to_string(),
            // Until CAPTURE START resumes it, or the timeout.
            CaptureReply::ResumePending(_) => "?".to_owned(),
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "the capture barrier did not pass within {:?}: {holding} session(s) still hold a transaction begun before CAPTURE START (see SHOW CAPTURE)",
                timeout
            );
        }
        if !told {
            eprintln!(
                "waiting for the capture barrier: {holding} session(s) hold a transaction begun before CAPTURE START"
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A user table and its size, for progress.
#[derive(Debug, Clone)]
struct TableSize {
    name: String,
    bytes: u64,
}

async fn logical(
    config: &Config,
    options: &CloneOptions,
    bin: &Binaries,
    source_pg: &Dsn,
    source: &Client,
    source_version: i32,
) -> Result<()> {
    let target_pg = config.target_connection("switchyard clone")?;
    let target = connect(&target_pg, "target").await?;
    let target_version = server_version(&target).await?;
    if target_version / 10_000 < source_version / 10_000 {
        bail!(
            "the target runs PostgreSQL {}, older than the source's {}; a logical copy goes only to the same or a newer major version",
            target_version / 10_000,
            source_version / 10_000
        );
    }
    check_target_empty(&target).await?;
    check_target_create(&target).await?;
    check_source_readable(source).await?;
    if !is_new_or_empty(&options.dir) {
        bail!(
            "the dump directory {} exists and is not empty; remove it or pass another --dir",
            options.dir.display()
        );
    }
    hold_log_for_copy(config);
    let tables = table_sizes(source).await?;
    let total_bytes: u64 = tables.iter().map(|t| t.bytes).sum();

    // The snapshot: taken now, after the barrier, and held open until
    // pg_dump has attached every job to it.
    let holder = connect(source_pg, "source").await?;
    holder
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL idle_in_transaction_session_timeout = 0",
        )
        .await
        .context("cannot open the snapshot transaction on the source")?;
    let snapshot: String = holder
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .context("cannot export a snapshot on the source")?
        .get(0);
    eprintln!(
        "snapshot {snapshot} exported; dumping {} tables ({}) with {} jobs",
        tables.len(),
        human_bytes(total_bytes),
        options.jobs
    );

    let mut dump = bin.command("pg_dump", source_pg);
    dump.args(["--format=directory", "--verbose", "--no-sync"])
        .arg(format!("--jobs={}", options.jobs))
        .arg(format!("--snapshot={snapshot}"))
        .arg("--file")
        .arg(&options.dir);
    let mut progress = Progress::new("dump", total_bytes, true, options.progress_every);
    let done = run_tracking(dump, "pg_dump", &tables, &mut progress).await?;
    holder.batch_execute("COMMIT").await.ok();
    progress.finish(&format!("{} tables, {}", done, human_bytes(total_bytes)));

    let mut restore = bin.command("pg_restore", &target_pg);
    restore
        .args(["--verbose", "--exit-on-error"])
        .arg(format!("--jobs={}", options.jobs));
    if options.no_owner {
        restore.args(["--no-owner", "--no-acl"]);
    }
    restore.arg(format!("--dbname={}", target_pg.pg.get_dbname().unwrap_or("postgres")));
    restore.arg(&options.dir);
    let mut progress = Progress::new("restore", total_bytes, true, options.progress_every);
    let done = run_tracking(restore, "pg_restore", &tables, &mut progress).await?;
    progress.finish(&format!("{} tables, {}", done, human_bytes(total_bytes)));
    if !options.keep_dump {
        std::fs::remove_dir_all(&options.dir)
            .with_context(|| format!("cannot remove the dump directory {}", options.dir.display()))?;
    }
    println!(
        "cloned {} tables ({}) from snapshot {snapshot} into {}; next: run your migration on the target, then `switchyard catchup start`",
        tables.len(),
        human_bytes(total_bytes),
        target_pg.pg.get_dbname().unwrap_or("the target")
    );
    Ok(())
}

async fn physical(
    config: &Config,
    options: &CloneOptions,
    bin: &Binaries,
    source_pg: &Dsn,
    source: &Client,
    source_version: i32,
    tool_version: i32,
) -> Result<()> {
    if tool_version != source_version / 10_000 {
        bail!(
            "pg_basebackup is version {tool_version} but the source runs PostgreSQL {}; a physical copy needs the same major version",
            source_version / 10_000
        );
    }
    let can: bool = source
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .context("cannot read the source user's attributes")?
        .get(0);
    if !can {
        bail!(
            "user {} may not take a base backup: it needs the REPLICATION attribute (ALTER ROLE ... REPLICATION) and a `replication` line in pg_hba.conf; or use --method logical, which needs neither",
            source_pg.pg.get_user().unwrap_or("?")
        );
    }
    if !is_new_or_empty(&options.dir) {
        bail!(
            "the data directory {} exists and is not empty; pg_basebackup needs a new or empty directory",
            options.dir.display()
        );
    }
    hold_log_for_copy(config);
    let total: i64 = source
        .query_one(
            "SELECT sum(pg_database_size(oid))::bigint FROM pg_database WHERE datallowconn",
            &[],
        )
        .await
        .context("cannot read database sizes on the source")?
        .get(0);
    let mut cmd = bin.command("pg_basebackup", source_pg);
    cmd.arg("--pgdata")
        .arg(&options.dir)
        .args(["--wal-method=stream", "--checkpoint=fast", "--progress", "--no-sync"]);
    let mut progress = Progress::new("copy", total.max(0) as u64, true, options.progress_every);
    run_basebackup(cmd, &mut progress).await?;
    progress.finish(&human_bytes(total.max(0) as u64));
    println!(
        "copied the source cluster into {}; start it (pg_ctl -D {} -o '-p PORT' start, as the server's OS user) and point [target] at it",
        options.dir.display(),
        options.dir.display()
    );
    Ok(())
}

/// Runs pg_dump or pg_restore, turning its `--verbose` lines into table and
/// byte progress. Returns the tables done.
async fn run_tracking(
    mut cmd: tokio::process::Command,
    name: &str,
    tables: &[TableSize],
    progress: &mut Progress,
) -> Result<usize> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {name}"))?;
    let stderr = child.stderr.take().context("no stderr")?;
    // Bytes, not UTF-8 lines: table names and messages come in the
    // server's and the locale's encodings.
    let mut lines = BufReader::new(stderr).split(b'\n');
    let mut done = vec![false; tables.len()];
    let mut current: Option<usize> = None;
    let mut bytes = 0u64;
    let mut errors: Vec<String> = Vec::new();
    let total = tables.len();
    while let Some(line) = lines.next_segment().await? {
        let line = String::from_utf8_lossy(&line).into_owned();
        let finish = |i: usize, done: &mut Vec<bool>, bytes: &mut u64| {
            if !done[i] {
                done[i] = true;
                *bytes += tables[i].bytes;
            }
        };
        if let Some(t) = started_table(&line) {
            if let Some(prev) = current.take() {
                finish(prev, &mut done, &mut bytes);
            }
            current = find(tables, &done, &t);
        } else if let Some(t) = finished_table(&line) {
            if let Some(i) = find(tables, &done, &t) {
                finish(i, &mut done, &mut bytes);
            }
        } else if line.contains("error:") || line.contains("FATAL:") || line.contains("ERROR:") {
            errors.push(line.clone());
        }
        let n = done.iter().filter(|d| **d).count();
        progress.set(bytes, &format!("{n}/{total} tables"));
    }
    let status = child.wait().await?;
    if !status.success() {
        let detail = if errors.is_empty() {
            format!("{status}")
        } else {
            errors.join("\n  ")
        };
        bail!("{name} failed:\n  {detail}\n{}", hint(&detail));
    }
    Ok(tables.len())
}

/// A hint for common failures.
fn hint(detail: &str) -> &'static str {
    if detail.contains("permission denied") {
        "the clone's user lacks a privilege: run it as the tables' owner or a superuser (capture.user / target.user)"
    } else if detail.contains("already exists") {
        "the target is not empty: clone into a new, empty database"
    } else if detail.contains("server version") || detail.contains("version mismatch") {
        "client and server versions differ: install the client tools of the server's major version"
    } else {
        ""
    }
}

/// "dumping contents of table \"public.t\"" (serial pg_dump) or
/// "processing data for table \"public.t\"" (serial pg_restore).
fn started_table(line: &str) -> Option<String> {
    for marker in ["dumping contents of table \"", "processing data for table \""] {
        if let Some(at) = line.find(marker) {
            let rest = &line[at + marker.len()..];
            let name = rest.strip_suffix('"').unwrap_or(rest);
            return Some(name.to_owned());
        }
    }
    None
}

/// "finished item 3345 TABLE DATA t" (parallel pg_dump and pg_restore).
fn finished_table(line: &str) -> Option<String> {
    let at = line.find("finished item ")?;
    let rest = &line[at + "finished item ".len()..];
    let (_, rest) = rest.split_once(' ')?;
    rest.strip_prefix("TABLE DATA ").map(|t| t.trim().to_owned())
}

/// The first table not yet done whose name is `name` (`schema.table` or
/// the bare table name parallel jobs print).
fn find(tables: &[TableSize], done: &[bool], name: &str) -> Option<usize> {
    let bare = |t: &TableSize| t.name.split_once('.').map_or(t.name.as_str(), |(_, n)| n).to_owned();
    tables
        .iter()
        .enumerate()
        .find(|(i, t)| !done[*i] && (t.name == name || bare(t) == name))
        .map(|(i, _)| i)
}

/// pg_basebackup --progress prints "NNN/MMM kB (P%), n/m tablespaces" lines
/// ending in carriage returns.
async fn run_basebackup(mut cmd: tokio::process::Command, progress: &mut Progress) -> Result<()> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run pg_basebackup")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut errors = Vec::new();
    loop {
        let n = stderr.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|b| *b == b'\r' || *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim().to_owned();
            if let Some(kb) = line.split_once('/').and_then(|(a, _)| a.trim().parse::<u64>().ok()) {
                progress.set(kb * 1024, "");
            } else if !line.is_empty() {
                errors.push(line);
            }
        }
    }
    let status = child.wait().await?;
    if !status.success() {
        let detail = errors.join("\n  ");
        bail!("pg_basebackup failed:\n  {detail}\n{}", hint(&detail));
    }
    Ok(())
}

/// Whether `dir` does not exist or holds nothing (unreadable counts as not).
fn is_new_or_empty(dir: &Path) -> bool {
    !dir.exists() || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// `schema.name` of the relations of `kinds` outside the system schemas
/// that match `condition`, sorted.
async fn user_relations(c: &Client, kinds: &str, condition: &str, what: &str) -> Result<Vec<String>> {
    let rows = c
        .query(
            &format!(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ({kinds}) \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
                   AND n.nspname NOT LIKE 'pg_temp%' AND {condition} \
                 ORDER BY 1"
            ),
            &[],
        )
        .await
        .with_context(|| format!("cannot {what}"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// "3 relation(s) (a.x, a.y, a.z)", naming the first five.
fn some_relations(names: &[String]) -> String {
    format!(
        "{} relation(s) ({}{})",
        names.len(),
        names.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
        if names.len() > 5 { ", ..." } else { "" }
    )
}

async fn check_target_empty(target: &Client) -> Result<()> {
    let names = user_relations(
        target,
        "'r', 'p', 'v', 'm', 'S', 'f'",
        "true",
        "list the target's tables",
    )
    .await?;
    if names.is_empty() {
        return Ok(());
    }
    bail!(
        "the target database is not empty: it has {}; clone into a new, empty database (createdb), or drop these first",
        some_relations(&names)
    )
}

async fn check_target_create(target: &Client) -> Result<()> {
    let row = target
        .query_one(
            "SELECT has_database_privilege(current_database(), 'CREATE'), current_user::text",
            &[],
        )
        .await
        .context("cannot read the target user's privileges")?;
    if !row.get::<_, bool>(0) {
        bail!(
            "user {} may not create schemas in the target database: GRANT CREATE ON DATABASE ... TO {} (or use the database's owner)",
            row.get::<_, String>(1),
            row.get::<_, String>(1)
        );
    }
    Ok(())
}

async fn check_source_readable(source: &Client) -> Result<()> {
    let names = user_relations(
        source,
        "'r', 'p', 'm', 'S'",
        "NOT has_table_privilege(c.oid, 'SELECT')",
        "check the source user's privileges",
    )
    .await?;
    if names.is_empty() {
        return Ok(());
    }
    bail!(
        "the clone's user cannot read {} on the source: GRANT SELECT on them, or set capture.user to their owner or a superuser",
        some_relations(&names)
    )
}

async fn table_sizes(source: &Client) -> Result<Vec<TableSize>> {
    let rows = source
        .query(
            "SELECT n.nspname || '.' || c.relname, pg_table_size(c.oid)::bigint FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' \
             ORDER BY 2 DESC",
            &[],
        )
        .await
        .context("cannot list the source's tables")?;
    Ok(rows
        .iter()
        .map(|r| TableSize {
            name: r.get(0),
            bytes: r.get::<_, i64>(1).max(0) as u64,
        })
        .collect())
}

async fn server_version(c: &Client) -> Result<i32> {
    let v: String = c
        .query_one("SHOW server_version_num", &[])
        .await
        .context("cannot read server_version_num")?
        .get(0);
    v.parse().map_err(|_| anyhow!("unexpected server_version_num {v:?}"))
}

async fn connect(pg: &Dsn, what: &str) -> Result<Client> {
    pg.connect("clone").await.map_err(|e| {
        anyhow!(
            "cannot connect to the {what} as {}: {}",
            pg.user().unwrap_or("?"),
            crate::db_message(&e)
        )
    })
}

/// Bytes as KiB, MiB or GiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Where the PostgreSQL client programs are: `SWITCHYARD_PG_BINDIR`, else
/// `pg_config --bindir`, else PATH.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: Option<PathBuf>,
}

impl Binaries {
    /// Finds pg_dump's folder.
    pub fn find() -> Result<Binaries> {
        if let Some(dir) = std::env::var_os("SWITCHYARD_PG_BINDIR") {
            let dir = PathBuf::from(dir);
            if !dir.join("pg_dump").exists() {
                bail!("SWITCHYARD_PG_BINDIR={} has no pg_dump", dir.display());
            }
            return Ok(Binaries { dir: Some(dir) });
        }
        if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").output() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && dir.join("pg_dump").exists() {
                return Ok(Binaries { dir: Some(dir) });
            }
        }
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("pg_dump").exists()))
            .unwrap_or(false);
        if on_path {
            return Ok(Binaries { dir: None });
        }
        bail!("pg_dump was not found: install the Debian package postgresql-client-15 (or set SWITCHYARD_PG_BINDIR to the folder holding pg_dump)")
    }

    fn path(&self, tool: &str) -> PathBuf {
        match &self.dir {
            Some(d) => d.join(tool),
            None => PathBuf::from(tool),
        }
    }

    /// `tool --version`'s major number.
    async fn major_version(&self, tool: &str) -> Result<i32> {
        let out = tokio::process::Command::new(self.path(tool))
            .arg("--version")
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.path(tool).display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .find_map(|w| w.split('.').next().and_then(|m| m.parse::<i32>().ok()))
            .ok_or_else(|| anyhow!("cannot read the version of {tool} from {text:?}"))
    }

    /// `tool` with connection options from `dsn` (password and TLS settings
    /// through the environment, never the command line).
    fn command(&self, tool: &str, dsn: &Dsn) -> tokio::process::Command {
        let pg = &dsn.pg;
        let mut cmd = tokio::process::Command::new(self.path(tool));
        if let Some(host) = pg.get_hosts().first() {
            match host {
                tokio_postgres::config::Host::Tcp(h) => cmd.arg(format!("--host={h}")),
                tokio_postgres::config::Host::Unix(p) => cmd.arg(format!("--host={}", p.display())),
            };
        }
        if let Some(port) = pg.get_ports().first() {
            cmd.arg(format!("--port={port}"));
        }
        if let Some(user) = pg.get_user() {
            cmd.arg(format!("--username={user}"));
        }
        if tool != "pg_restore" && tool != "pg_basebackup" {
            if let Some(db) = pg.get_dbname() {
                cmd.arg(format!("--dbname={db}"));
            }
        }
        cmd.arg("--no-password");
        match pg.get_password() {
            Some(p) => cmd.env("PGPASSWORD", String::from_utf8_lossy(p).as_ref()),
            None => cmd.env_remove("PGPASSWORD"),
        };
        cmd.env("PGAPPNAME", "switchyard clone");
        cmd.env_remove("PGSSLROOTCERT");
        for (k, v) in dsn.tls.libpq_env() {
            cmd.env(k, v);
        }
        cmd
    }
}

/// The dump directory to use when none is given: next to the capture log.
pub fn default_dir(config: &Config, method: Method) -> PathBuf {
    let base: &Path = config.capture.log_dir.parent().unwrap_or(Path::new("."));
    match method {
        Method::Logical => base.join("switchyard-dump"),
        Method::Physical => base.join("switchyard-basebackup"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_table_progress_lines() {
        assert_eq!(
            started_table("pg_dump: dumping contents of table \"public.acct\""),
            Some("public.acct".into())
        );
        assert_eq!(
            started_table("pg_restore: processing data for table \"s.t\""),
            Some("s.t".into())
        );
        assert_eq!(
            finished_table("pg_dump: finished item 3345 TABLE DATA pgbench_accounts"),
            Some("pgbench_accounts".into())
        );
        assert_eq!(finished_table("pg_restore: finished item 3345 INDEX acct_pkey"), None);
        let tables = vec![
            TableSize {
                name: "a.t".into(),
                bytes: 1,
            },
            TableSize {
                name: "b.t".into(),
                bytes: 2,
            },
        ];
        assert_eq!(find(&tables, &[true, false], "t"), Some(1));
        assert_eq!(find(&tables, &[false, false], "b.t"), Some(1));
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
