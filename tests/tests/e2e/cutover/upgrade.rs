//! A major-version upgrade, the commonest reason to migrate: the full
//! cutover cycle with the source on PostgreSQL 15 and the target on 17.
//! The clone is made with 15's pg_dump and restored with 15's pg_restore
//! into the 17 server; a small migration runs on the 17 copy; catch-up,
//! then CUTOVER while tokio-postgres clients keep writing. Every write
//! reports the port of the server that committed it, so the test knows
//! what each side must hold; a raw-protocol session checks that the
//! client is told the new `server_version` by ParameterStatus at the flip.

mod checks;
mod clone;
mod load;

use super::Cut;
use crate::support::{first_column, query_msg, startup_message, RawConn, RawMessage};
use anyhow::{ensure, Context, Result};
use load::{client_load, CLIENTS};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use switchyard_tests::{Binaries, Cluster};
use tokio_postgres::Client;

/// The target's major version.
pub const TARGET_MAJOR: u32 = 17;

/// Types whose dump, restore, catch-up and comparison could differ
/// between versions: an enum, jsonb, numeric, timestamptz.
const SCHEMA: &str = "
    CREATE TYPE tier AS ENUM ('bronze', 'silver', 'gold');
    CREATE TABLE account (
        id int PRIMARY KEY,
        balance bigint NOT NULL,
        note text NOT NULL,
        tier tier NOT NULL DEFAULT 'bronze',
        attrs jsonb NOT NULL DEFAULT '{}',
        touched timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO account (id, balance, note) SELECT g, 1000, 'seed ' || g FROM generate_series(1, 2400) g;
    CREATE TABLE ledger (
        id bigserial PRIMARY KEY,
        client int NOT NULL,
        seq int NOT NULL,
        amount numeric(12, 2) NOT NULL,
        memo text NOT NULL
    );
    CREATE TABLE label (account int NOT NULL, name text NOT NULL, PRIMARY KEY (account, name));
";

/// The migration run on the 17 copy: a new NOT NULL column backfilled,
/// and an index.
const MIGRATION: &str = "
    ALTER TABLE account ADD COLUMN note_len int;
    UPDATE account SET note_len = length(note);
    ALTER TABLE account ALTER COLUMN note_len SET NOT NULL, ALTER COLUMN note_len SET DEFAULT 0;
    CREATE INDEX ledger_by_client ON ledger (client, seq);
";

const MAPPING: &str = r#"
[tables.account.columns]
note_len = "length(note)"
"#;

/// `server_version_num` of a server, checked against the major version.
pub async fn server_version_num(c: &Client, major: u32) -> Result<i32> {
    let num: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    ensure!(
        num / 10_000 == major as i32,
        "expected PostgreSQL {major}, the server is {num}"
    );
    Ok(num)
}

/// A raw session through the proxy, and the `server_version` its startup
/// reported.
async fn raw_session(cut: &Cut) -> Result<(RawConn, String)> {
    let mut raw = RawConn::connect(cut.proxy.addr()).await?;
    raw.send(&startup_message(&[
        ("user", cut.source.superuser()),
        ("database", "postgres"),
    ]))
    .await?;
    let startup = raw.until_ready().await?;
    ensure!(
        !startup.iter().any(|m| m.tag == b'E'),
        "raw startup failed: {startup:?}"
    );
    let version = parameter(&startup, "server_version").context("no server_version at startup")?;
    Ok((raw, version))
}

/// The last value a ParameterStatus in `messages` gave `name`.
fn parameter(messages: &[RawMessage], name: &str) -> Option<String> {
    messages
        .iter()
        .filter(|m| m.tag == b'S')
        .filter_map(|m| {
            let mut parts = m.body.split(|&b| b == 0);
            let key = parts.next()?;
            let value = parts.next()?;
            (key == name.as_bytes()).then(|| String::from_utf8_lossy(value).into_owned())
        })
        .next_back()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_15_to_17_cuts_over_under_load_and_loses_nothing() -> Result<()> {
    let newer = Binaries::version(TARGET_MAJOR)?;
    let (source, target) = tokio::try_join!(Cluster::start(), Cluster::builder().binaries(newer).start())?;
    let cut = Cut::start_with(source, target, SCHEMA, MAPPING, |_| {}).await?;
    let source_port = cut.source.port() as i32;
    let target_port = cut.target.port() as i32;
    // A direct session on the source would be a bypass the cutover's
    // preflight refuses: this one ends before it.
    server_version_num(&cut.source.connect("postgres").await?, 15).await?;
    let target = cut.target.connect("postgres").await?;
    let target_num = server_version_num(&target, TARGET_MAJOR).await?;
    // The clone below uses 15's client programs on both sides.
    ensure!(
        cut.target.bin("pg_restore") == cut.source.bin("pg_restore"),
        "pg_restore for the target is {}, not the source's {}",
        cut.target.bin("pg_restore").display(),
        cut.source.bin("pg_restore").display()
    );
    cut.capture().await?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for me in 0..CLIENTS {
        let c = cut.proxy.connect("postgres").await?;
        load.push(tokio::spawn(client_load(c, me, source_port, stop.clone())));
    }
    let (mut raw, version_before) = raw_session(&cut).await?;
    ensure!(
        version_before.starts_with("15."),
        "startup said server_version {version_before}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut.clone_and_migrate(MIGRATION).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let outcome = cut.cutover("").await?;
    let report = outcome.done()?.clone();
    println!("cutover notices:\n{}\nreport: {report:#?}", outcome.notices.join("\n"));
    ensure!(report["state"] == "done", "{report:?}");
    ensure!(report["sessions_closed"] == "0", "{report:?}");
    ensure!(report["sessions_moved"].parse::<usize>()? > CLIENTS, "{report:?}");
    let status = cut.status().await?;
    ensure!(
        status["route"] == "target" && status["state"] == "serving",
        "{status:?}"
    );

    // The raw session was idle at the flip: it was told the new version
    // before the answer to its next query, which ran on 17.
    raw.send(&query_msg("SHOW server_version")).await?;
    let after = raw.until_ready().await?;
    let told = parameter(&after, "server_version").context("no ParameterStatus server_version after the flip")?;
    ensure!(
        told.starts_with(&format!("{TARGET_MAJOR}.")),
        "told server_version {told}"
    );
    let told_at = after.iter().position(|m| m.tag == b'S').unwrap_or(usize::MAX);
    let answer_at = after.iter().position(|m| m.tag == b'T').unwrap_or(0);
    ensure!(told_at < answer_at, "ParameterStatus came after the answer: {after:?}");
    let shown = first_column(&after);
    ensure!(
        shown == vec![Some(told.clone())],
        "SHOW server_version said {shown:?}, told {told}"
    );
    let changed: Vec<String> = after
        .iter()
        .filter(|m| m.tag == b'S')
        .map(|m| String::from_utf8_lossy(&m.body).replace('\0', " "))
        .collect();
    println!("server_version at startup {version_before}; ParameterStatus at the flip: {changed:?}");

    // Writes go on on the target for a moment, then stop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Relaxed);
    let mut journals = Vec::new();
    for l in load {
        journals.push(l.await??);
    }
    checks::check_ports(&journals, target_port)?;
    let writes: usize = journals.iter().map(|j| j.ports.len()).sum();
    let on_target: usize = journals
        .iter()
        .map(|j| j.ports.iter().filter(|p| **p == target_port).count())
        .sum();
    println!("{writes} committed writes, {on_target} of them on the target");
    let source = cut.source.connect("postgres").await?;
    checks::check_data(&journals, &source, &target, source_port, target_port).await?;
    // The target is still the 17 server, and the source is intact.
    ensure!(server_version_num(&target, TARGET_MAJOR).await? == target_num);
    Ok(())
}

#[test]
fn a_version_not_installed_is_named_with_the_setup_script() -> Result<()> {
    let error = Binaries::version(99).expect_err("PostgreSQL 99 is not installed");
    let message = error.to_string();
    ensure!(
        message.contains("PostgreSQL 99") && message.contains("tests/versions/setup.sh"),
        "{message}"
    );
    // The installed target version: its own server programs, the default
    // version's client programs.
    let newer = Binaries::version(TARGET_MAJOR)?;
    ensure!(newer.major_version() == Some(TARGET_MAJOR), "{newer:?}");
    ensure!(newer.bin("postgres").starts_with(newer.bindir()), "{newer:?}");
    let default = Binaries::locate()?;
    ensure!(newer.bin("pg_restore") == default.bin("pg_restore"), "{newer:?}");
    Ok(())
}
