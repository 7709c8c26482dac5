//! Verification, source against mapped target, on real databases: a source
//! cloned with pg_dump/pg_restore, the clone migrated (renamed table and
//! column, int to bigint, a numeric given a scale, a text column turned
//! into an enum the source does not have, a new NOT NULL column with a
//! default, an int key column turned into text, which sorts differently),
//! then whole tables checked by key-range checksums and given
//! keys checked row by row. Differences made on purpose on the target
//! (a changed row, a value nulled, a missing and an extra row) are found
//! and named by key; one undone before the re-check is not reported.

use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_replay::catalog::{Catalog, QualifiedName};
use switchyard_replay::mapping::{Mapping, Resolved};
use switchyard_replay::replayer::{self, ReplayOptions, ReplayStatus};
use switchyard_replay::verify::{
    verify_keys, verify_tables, Mapped, Mismatch, MismatchKind, Progress, ProgressEvent, TableReport, VerifyError,
    VerifyOptions, VerifyReport,
};
use switchyard_tests::Cluster;
use tokio_postgres::Client;

const SCHEMA: &str = "
    CREATE TABLE person (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL, price numeric,
                         state text NOT NULL, note text);
    CREATE TABLE pair (a int, b text, n int, PRIMARY KEY (a, b));
    CREATE TABLE empty_one (id int PRIMARY KEY, v text);
    CREATE TABLE ev (id int PRIMARY KEY, v text, at timestamptz) PARTITION BY RANGE (id);
    CREATE TABLE ev_low PARTITION OF ev FOR VALUES FROM (0) TO (500);
    CREATE TABLE ev_high PARTITION OF ev FOR VALUES FROM (500) TO (MAXVALUE);
    INSERT INTO ev SELECT g, 'e' || g, timestamptz '2024-03-01 12:00:00+00' + g * interval '1 hour'
                   FROM generate_series(1, 900) g;
    INSERT INTO person SELECT g, 'name ' || g, g % 1000, (g % 50) / 4.0,
                              CASE WHEN g % 3 = 0 THEN 'bad' ELSE 'ok' END,
                              CASE WHEN g % 7 = 0 THEN NULL ELSE 'note ' || g END
                       FROM generate_series(1, 12000) g;
    INSERT INTO pair SELECT g % 300, 'k' || (g % 11), CASE WHEN g % 5 = 0 THEN NULL ELSE g END
                     FROM generate_series(1, 3300) g;
";

const MIGRATION: &str = "
    ALTER TABLE person RENAME TO people;
    ALTER TABLE people RENAME COLUMN name TO full_name;
    ALTER TABLE people ALTER COLUMN qty TYPE bigint;
    ALTER TABLE people ALTER COLUMN price TYPE numeric(10, 2);
    CREATE TYPE mood AS ENUM ('ok', 'bad');
    ALTER TABLE people ALTER COLUMN state TYPE mood USING state::mood;
    ALTER TABLE people ADD COLUMN flag text NOT NULL DEFAULT 'new';
    ALTER TABLE pair ALTER COLUMN a TYPE text;
";

const MAPPING: &str = r#"
    [tables.person]
    target = "people"
    [tables.person.columns]
    full_name = "name"
"#;

/// A source database, its clone (database `target`, migrated), and the
/// mapping resolved against both.
struct Setup {
    cluster: Cluster,
    source: Client,
    target: Client,
    resolved: Resolved,
    source_catalog: Catalog,
    target_catalog: Catalog,
}

impl Setup {
    async fn start(migration: &str, mapping: &str) -> Result<Setup> {
        let cluster = Cluster::builder().database("target").start().await?;
        let source = cluster.connect("postgres").await?;
        source.batch_execute(SCHEMA).await?;
        let dir = tempfile::tempdir()?;
        let dump = dir.path().join("source.dump");
        let ep = cluster.endpoint();
        ep.copy_database("postgres", &ep, "target", &dump).await?;
        let target = cluster.connect("target").await?;
        target.batch_execute(migration).await?;
        let source_catalog = Catalog::load(&source).await?;
        let target_catalog = Catalog::load(&target).await?;
        let resolved = Mapping::parse(mapping, "mapping.toml")?
            .resolve(&source_catalog, &target_catalog)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(Setup {
            cluster,
            source,
            target,
            resolved,
            source_catalog,
            target_catalog,
        })
    }

    fn mapped(&self) -> Mapped<'_> {
        Mapped {
            mapping: &self.resolved,
            source: &self.source_catalog,
            target: &self.target_catalog,
        }
    }

    /// Whole-table verification; returns the report and every progress seen.
    async fn verify(&self, options: &VerifyOptions) -> Result<(VerifyReport, Vec<Progress>)> {
        let su = self.cluster.superuser();
        let mut seen = Vec::new();
        let report = tokio::time::timeout(
            Duration::from_secs(120),
            verify_tables(
                &self.cluster.pg_config(su, "postgres"),
                &self.cluster.pg_config(su, "target"),
                self.mapped(),
                options,
                |p| seen.push(p.clone()),
            ),
        )
        .await
        .context("verify did not finish in 120 s")??;
        Ok((report, seen))
    }
}

fn options(rows_per_range: usize) -> VerifyOptions {
    VerifyOptions {
        rows_per_range,
        rechecks: 2,
        recheck_wait: Duration::from_millis(50),
        ..VerifyOptions::default()
    }
}

fn name(table: &str) -> QualifiedName {
    QualifiedName::new("public", table)
}

fn key(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some((*v).to_owned())).collect()
}

fn mismatch(values: &[&str], kind: MismatchKind) -> Mismatch {
    Mismatch { key: key(values), kind }
}

fn table<'a>(report: &'a VerifyReport, source: &str) -> &'a TableReport {
    match report.tables.iter().find(|t| t.source.name == source) {
        Some(t) => t,
        None => panic!("no report for {source}: {report:#?}"),
    }
}

async fn count(c: &Client, sql: &str) -> Result<u64> {
    Ok(c.query_one(sql, &[]).await?.get::<_, i64>(0) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_tables_verify_clean_over_many_ranges() -> Result<()> {
    let s = Setup::start("SELECT 1", "").await?;
    // The clone is the source, row for row: checked here independently.
    for table in ["person", "pair"] {
        let sql = format!("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t");
        let a: String = s.source.query_one(&sql, &[]).await?.get(0);
        let b: String = s.target.query_one(&sql, &[]).await?.get(0);
        ensure!(a == b, "the clone of {table} differs");
    }
    // Sessions on the target print times and dates differently; the
    // verification's own target session prints them as the source does.
    s.target
        .batch_execute(
            "ALTER DATABASE target SET TimeZone = 'Asia/Tokyo'; ALTER DATABASE target SET DateStyle = 'SQL, DMY'",
        )
        .await?;
    let (report, seen) = s.verify(&options(1000)).await?;
    ensure!(report.is_clean(), "{report:#?}");
    let by_table: BTreeMap<_, _> = report.tables.iter().map(|t| (t.source.name.as_str(), t)).collect();
    // A partitioned table is verified whole, its partitions not again.
    ensure!(
        by_table.keys().copied().collect::<Vec<_>>() == ["empty_one", "ev", "pair", "person"],
        "{by_table:?}"
    );
    let ev = by_table["ev"];
    ensure!(
        ev.rows_checked == 900 && ev.target_rows == 900 && ev.ranges == 1,
        "{ev:?}"
    );
    let person = by_table["person"];
    ensure!(
        person.rows_checked == 12_000 && person.target_rows == 12_000,
        "{person:?}"
    );
    // 12 full ranges, and the empty one past the last key.
    ensure!(person.ranges == 13, "{person:?}");
    ensure!(person.ranges_rechecked == 0, "{person:?}");
    let pair = by_table["pair"];
    ensure!(
        pair.rows_checked == count(&s.source, "SELECT count(*) FROM pair").await?,
        "{pair:?}"
    );
    ensure!(pair.ranges == 4, "{pair:?}");
    let empty = by_table["empty_one"];
    ensure!(empty.rows_checked == 0 && empty.ranges == 1, "{empty:?}");
    ensure!(person.not_compared.is_empty() && person.compared_as_text.is_empty());
    // Progress: after every range, rows only grow, every table ends.
    let ranges = seen.iter().filter(|p| p.event == ProgressEvent::Range).count() as u64;
    ensure!(
        ranges == person.ranges + pair.ranges + empty.ranges + ev.ranges,
        "{ranges}"
    );
    ensure!(seen.windows(2).all(|w| w[0].rows_checked <= w[1].rows_checked));
    let done: Vec<_> = seen
        .iter()
        .filter(|p| p.event == ProgressEvent::TableDone)
        .map(|p| (p.tables_done, p.tables_total))
        .collect();
    ensure!(done == vec![(0, 4), (1, 4), (2, 4), (3, 4)], "{done:?}");
    ensure!(seen.last().map(|p| p.rows_checked) == Some(report.rows_checked()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_target_verifies_clean_and_its_differences_are_named() -> Result<()> {
    let s = Setup::start(MIGRATION, MAPPING).await?;
    let (report, _) = s.verify(&options(2500)).await?;
    ensure!(report.is_clean(), "{report:#?}");
    let people = table(&report, "person");
    ensure!(
        people.source == name("person") && people.target == name("people"),
        "{people:?}"
    );
    ensure!(people.rows_checked == 12_000 && people.ranges == 5, "{people:?}");
    // The new column takes its default: nothing on the source says what it
    // holds. The enum exists on the target only: compared as text.
    ensure!(people.not_compared == vec!["flag".to_string()], "{people:?}");
    ensure!(people.compared_as_text == vec!["state".to_string()], "{people:?}");
    ensure!(people.columns.contains(&"full_name".to_string()), "{people:?}");

    s.target
        .batch_execute(
            "UPDATE people SET qty = qty + 1 WHERE id = 77;
             UPDATE people SET note = NULL WHERE id = 4001;
             UPDATE people SET price = NULL WHERE id = 9998;
             UPDATE people SET state = 'bad' WHERE id = 11999;
             DELETE FROM people WHERE id = 1234;
             INSERT INTO people VALUES (20000, 'extra', 1, 1, 'ok', NULL);
             UPDATE people SET flag = 'changed' WHERE id = 5;
             UPDATE pair SET n = 1 WHERE a = '10' AND b = 'k10' AND n IS NULL;
             UPDATE pair SET n = NULL WHERE a = '8' AND b = 'k8';
             DELETE FROM pair WHERE a = '299' AND b = 'k2';",
        )
        .await?;
    ensure!(
        count(
            &s.target,
            "SELECT count(*) FROM pair WHERE a = '10' AND b = 'k10' AND n = 1"
        )
        .await?
            == 1
    );
    let (report, _) = s.verify(&options(2500)).await?;
    let people = table(&report, "person");
    let found: BTreeSet<Mismatch> = people.differing.iter().cloned().collect();
    let expected: BTreeSet<Mismatch> = [
        mismatch(&["77"], MismatchKind::Differs),
        mismatch(&["4001"], MismatchKind::Differs),
        mismatch(&["9998"], MismatchKind::Differs),
        mismatch(&["11999"], MismatchKind::Differs),
        mismatch(&["1234"], MismatchKind::MissingOnTarget),
        mismatch(&["20000"], MismatchKind::ExtraOnTarget),
    ]
    .into();
    // id 5 differs only in `flag`, which is not compared.
    ensure!(found == expected, "{found:?}");
    ensure!(people.differing_total == 6, "{people:?}");
    ensure!(
        people.rows_checked == 12_000 && people.target_rows == 12_000,
        "{people:?}"
    );
    let pair = table(&report, "pair");
    let found: BTreeSet<Mismatch> = pair.differing.iter().cloned().collect();
    let expected: BTreeSet<Mismatch> = [
        mismatch(&["10", "k10"], MismatchKind::Differs),
        mismatch(&["8", "k8"], MismatchKind::Differs),
        mismatch(&["299", "k2"], MismatchKind::MissingOnTarget),
    ]
    .into();
    ensure!(found == expected, "{found:?}");
    ensure!(!report.is_clean() && report.differing_total() == 9);

    // The list is bounded; the count is not.
    let bounded = VerifyOptions {
        max_keys: 2,
        ..options(2500)
    };
    let (report, _) = s.verify(&bounded).await?;
    let people = table(&report, "person");
    ensure!(people.differing.len() == 2 && people.differing_total == 6, "{people:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_difference_gone_by_the_recheck_is_not_reported() -> Result<()> {
    let s = Setup::start(MIGRATION, MAPPING).await?;
    s.target
        .batch_execute("UPDATE people SET full_name = 'wrong' WHERE id = 6000")
        .await?;
    // The first re-check of the range waits long enough for the row to be
    // put right, as catch-up would.
    let (tx, mut rx) = tokio::sync::watch::channel(0usize);
    let fixer = {
        let target = s.cluster.connect("target").await?;
        tokio::spawn(async move {
            rx.wait_for(|n| *n > 0).await?;
            target
                .batch_execute("UPDATE people SET full_name = 'name 6000' WHERE id = 6000")
                .await?;
            anyhow::Ok(())
        })
    };
    let rechecks = Arc::new(Mutex::new(Vec::new()));
    let su = s.cluster.superuser();
    let options = VerifyOptions {
        rows_per_range: 1000,
        rechecks: 20,
        recheck_wait: Duration::from_millis(250),
        tables: vec![name("person")],
        ..VerifyOptions::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        verify_tables(
            &s.cluster.pg_config(su, "postgres"),
            &s.cluster.pg_config(su, "target"),
            s.mapped(),
            &options,
            |p| {
                if let ProgressEvent::Recheck { attempt } = p.event {
                    rechecks.lock().unwrap().push((p.table_rows, attempt));
                    let _ = tx.send(attempt);
                }
            },
        ),
    )
    .await
    .context("verify did not finish in 120 s")??;
    fixer.await??;
    let person = &report.tables[0];
    ensure!(report.tables.len() == 1, "{report:#?}");
    ensure!(person.is_clean(), "{person:?}");
    // The range was seen differing, then agreed on a re-check.
    ensure!(
        person.ranges_rechecked == 1 && person.ranges_compared == 0,
        "{person:?}"
    );
    let rechecks = rechecks.lock().unwrap().clone();
    ensure!(rechecks.first() == Some(&(6000, 1)), "{rechecks:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_keys_finds_exactly_the_mismatching_keys() -> Result<()> {
    let s = Setup::start(MIGRATION, MAPPING).await?;
    s.target
        .batch_execute(
            "UPDATE people SET qty = 0 WHERE id = 10;
             UPDATE people SET note = 'was null' WHERE id = 14;
             UPDATE people SET flag = 'not compared' WHERE id = 12;
             DELETE FROM people WHERE id = 11;
             INSERT INTO people VALUES (50000, 'extra', 1, 1, 'ok', NULL);
             UPDATE pair SET n = n + 1 WHERE a = '3' AND b = 'k3';
             DELETE FROM pair WHERE a = '4' AND b = 'k4';",
        )
        .await?;
    // The source moves on where the target did not follow.
    s.source
        .batch_execute(
            "UPDATE person SET price = 99.5 WHERE id = 13;
             INSERT INTO pair VALUES (1000, 'new', 1);",
        )
        .await?;
    let ids = ["10", "11", "12", "13", "14", "15", "16", "50000", "60000", "7"];
    let mut keys = BTreeMap::new();
    // A key given twice is checked once.
    let mut people_keys: Vec<_> = ids.iter().map(|id| key(&[id])).collect();
    people_keys.push(key(&["15"]));
    keys.insert(name("person"), people_keys);
    keys.insert(
        name("pair"),
        vec![
            key(&["3", "k3"]),
            key(&["4", "k4"]),
            key(&["5", "k5"]),
            key(&["1000", "new"]),
            key(&["1000", "absent"]),
        ],
    );
    keys.insert(name("empty_one"), Vec::new());
    let report = verify_keys(&s.source, &s.target, s.mapped(), &keys).await?;
    ensure!(!report.is_clean());
    ensure!(
        report.tables.len() == 2,
        "tables given no keys are left out: {report:?}"
    );
    let people = &report.tables[&name("person")];
    ensure!(
        people.target == name("people") && people.keys_checked == 10,
        "{people:?}"
    );
    let expected = vec![
        mismatch(&["10"], MismatchKind::Differs),
        mismatch(&["11"], MismatchKind::MissingOnTarget),
        mismatch(&["13"], MismatchKind::Differs),
        mismatch(&["14"], MismatchKind::Differs),
        mismatch(&["50000"], MismatchKind::ExtraOnTarget),
    ];
    ensure!(people.mismatches == expected, "{:?}", people.mismatches);
    let pair = &report.tables[&name("pair")];
    let expected = vec![
        mismatch(&["1000", "new"], MismatchKind::MissingOnTarget),
        mismatch(&["3", "k3"], MismatchKind::Differs),
        mismatch(&["4", "k4"], MismatchKind::MissingOnTarget),
    ];
    ensure!(pair.mismatches == expected, "{:?}", pair.mismatches);
    ensure!(report.keys_checked() == 15 && report.mismatches() == 8, "{report:?}");

    // Keys in another text form of the same value are the same keys; a
    // clean key set reports clean.
    let clean = BTreeMap::from([(name("person"), vec![key(&["0015"]), key(&[" 16"])])]);
    let report = verify_keys(&s.source, &s.target, s.mapped(), &clean).await?;
    ensure!(report.is_clean() && report.keys_checked() == 2, "{report:?}");

    // Bad input is an error that says what to do, not a panic.
    let wide = BTreeMap::from([(name("pair"), vec![key(&["1"])])]);
    match verify_keys(&s.source, &s.target, s.mapped(), &wide).await {
        Err(e @ VerifyError::KeyWidth { .. }) => {
            ensure!(e.to_string().contains("(a, b)"), "{e}")
        }
        other => anyhow::bail!("expected a key width error, got {other:?}"),
    }
    let unknown = BTreeMap::from([(name("nope"), vec![key(&["1"])])]);
    match verify_keys(&s.source, &s.target, s.mapped(), &unknown).await {
        Err(VerifyError::Unmapped(t)) => ensure!(t == "public.nope"),
        other => anyhow::bail!("expected an unmapped table error, got {other:?}"),
    }
    let options = VerifyOptions {
        tables: vec![name("nope")],
        ..VerifyOptions::default()
    };
    match s.verify(&options).await {
        Err(e) => ensure!(e.to_string().contains("not in the mapping"), "{e}"),
        Ok(r) => anyhow::bail!("expected an unmapped table error, got {r:?}"),
    }
    Ok(())
}

/// Writes through the proxy to person ids 1..=300 and 12001..=12100 and to
/// pair rows with `a < 20`, and nothing else.
async fn load(c: Client, seed: u64, n: usize) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let id = rng.random_range(1..=300);
        let new = 12_000 + rng.random_range(1..=100);
        let sql = match rng.random_range(0..4) {
            0 => format!("UPDATE person SET qty = qty + 1, note = CASE WHEN note IS NULL THEN 'n' END WHERE id = {id}"),
            1 => format!(
                "INSERT INTO person VALUES ({new}, 'new', 1, 1.5, 'ok', NULL) \
                 ON CONFLICT (id) DO UPDATE SET qty = person.qty + 1"
            ),
            2 => format!("DELETE FROM person WHERE id = {new}"),
            _ => format!("UPDATE pair SET n = coalesce(n, 0) + 1 WHERE a = {}", id % 20),
        };
        c.batch_execute(&sql).await.with_context(|| sql.clone())?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_runs_online_during_catch_up_and_is_clean_once_caught_up() -> Result<()> {
    let f = crate::capture::Fixture::start().await?;
    let direct = f.cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    direct.batch_execute("CREATE DATABASE target").await?;
    f.capture_start().await?;
    let target = f.clone_into("target").await?;
    target.batch_execute(MIGRATION).await?;
    let source_catalog = Catalog::load(&direct).await?;
    let target_catalog = Catalog::load(&target).await?;
    let resolved = Mapping::parse(MAPPING, "mapping.toml")?
        .resolve(&source_catalog, &target_catalog)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let su = f.cluster.superuser();
    let (source_config, target_config) = (f.cluster.pg_config(su, "postgres"), f.cluster.pg_config(su, "target"));
    let status = Arc::new(ReplayStatus::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let replay = tokio::spawn(replayer::run(
        source_config.clone(),
        target_config.clone(),
        Arc::new(resolved.clone()),
        Arc::new(source_catalog.clone()),
        Arc::new(target_catalog.clone()),
        ReplayOptions {
            log_dir: f.log_path(),
            workers: 2,
            batch_keys: 500,
            idle: Duration::from_millis(2),
            bell: None,
            ..ReplayOptions::default()
        },
        status.clone(),
        stop,
    ));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let c = f.proxy.connect("postgres").await?;
        writers.push(tokio::spawn(load(c, 7 + w, 1500)));
    }
    let mapped = Mapped {
        mapping: &resolved,
        source: &source_catalog,
        target: &target_catalog,
    };
    let options = VerifyOptions {
        rows_per_range: 1000,
        rechecks: 3,
        recheck_wait: Duration::from_millis(100),
        ..VerifyOptions::default()
    };
    let during = verify_tables(&source_config, &target_config, mapped, &options, |_| {}).await?;
    let overlapped = writers.iter().any(|w| !w.is_finished());
    // While writes go on, a key may be caught between its write and its
    // replay; anything reported must be such a key.
    for t in &during.tables {
        for m in &t.differing {
            let touched = match t.source.name.as_str() {
                "person" => m.key[0]
                    .as_deref()
                    .and_then(|k| k.parse::<i64>().ok())
                    .is_some_and(|id| (1..=300).contains(&id) || (12_001..=12_100).contains(&id)),
                "pair" => m.key[0]
                    .as_deref()
                    .and_then(|k| k.parse::<i64>().ok())
                    .is_some_and(|a| a < 20),
                _ => false,
            };
            ensure!(touched, "{} reported a key no client wrote: {m:?}", t.source);
        }
    }
    for w in writers {
        w.await??;
    }
    let last: u64 = f.show_capture().await?.get("last_lsn").context("last_lsn")?.parse()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while status.confirmed_lsn.load(std::sync::atomic::Ordering::Relaxed) < last {
        ensure!(!replay.is_finished(), "the replayer stopped: {:?}", replay.await);
        ensure!(std::time::Instant::now() < deadline, "catch-up did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = verify_tables(&source_config, &target_config, mapped, &options, |_| {}).await?;
    ensure!(after.is_clean(), "{after:#?}");
    let people = table(&after, "person");
    ensure!(
        people.rows_checked == count(&direct, "SELECT count(*) FROM person").await?,
        "{people:?}"
    );
    // The final pass, with nothing writing: every key the load touched.
    let mut keys = BTreeMap::new();
    keys.insert(
        name("person"),
        (1..=300)
            .chain(12_001..=12_100)
            .map(|id: i32| key(&[&id.to_string()]))
            .collect(),
    );
    let pair_keys = direct.query("SELECT a::text, b FROM pair WHERE a < 20", &[]).await?;
    keys.insert(
        name("pair"),
        pair_keys.iter().map(|r| vec![r.get(0), r.get(1)]).collect(),
    );
    let report = verify_keys(&direct, &target, mapped, &keys).await?;
    ensure!(report.is_clean() && report.keys_checked() == 400 + 220, "{report:?}");
    stop_tx.send(true)?;
    replay.await??;
    println!(
        "verify under load: {} keys reported while writes ran (overlapped: {overlapped}), {} rows checked after",
        during.differing_total(),
        after.rows_checked()
    );
    Ok(())
}
