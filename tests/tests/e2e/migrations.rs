//! Migration scenarios for catch-up, one test each: added, renamed, retyped,
//! split, backfilled and dropped columns, cascading foreign keys, composite
//! keys and renamed tables. A random workload runs through a capturing proxy
//! while the source is cloned (pg_dump after the barrier), the clone is
//! migrated and the replayer catches up while the workload still runs; once
//! the source is quiet and the log is drained, every target table equals the
//! mapped source, row for row. Then the replayer is crashed mid-batch again
//! and again: it resumes from its stored position without divergence, and
//! that position never goes back. Races between workers and between capture
//! and replay are staged deterministically by holding a worker's commit.

use crate::capture::Fixture;
use crate::support::within;
use anyhow::{anyhow, bail, ensure, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_replay::catalog::Catalog;
use switchyard_replay::mapping::{Mapping, Resolved};
use switchyard_replay::replayer::{self, ReplayError, ReplayOptions, ReplayStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Makes one workload statement (or a transaction block) from the RNG.
type Gen = fn(&mut StdRng) -> String;

/// Application name of the replayer's connections, so a crash can end them.
const REPLAYER_APP: &str = "switchyard-replay";

/// Pause between one connection's statements, so the load spans the clone.
const PACE: Duration = Duration::from_millis(1);

/// One migration: what the source looks like, what the target becomes, how
/// rows map, what the clients do meanwhile and how to check the result.
struct Scenario {
    /// Seeds the workload RNGs (printed, so a failure can be replayed).
    seed: u64,
    /// The source schema, created before capture starts.
    schema: &'static str,
    /// Rows present before capture starts; they reach the target by the clone.
    rows: &'static str,
    /// Applied to the clone.
    migration: &'static str,
    /// The mapping file.
    mapping: &'static str,
    /// When set, resolving an empty mapping must fail naming this.
    needs_mapping: Option<&'static str>,
    /// The workload.
    load: Gen,
    /// Pairs of ordered queries: the source one spells out the mapping.
    compare: &'static [(&'static str, &'static str)],
}

/// The source cluster behind a capturing proxy, with schema and rows, an
/// empty `target` database, and capture on.
async fn start(schema: &str, rows: &str) -> Result<(Fixture, Client)> {
    let f = Fixture::start().await?;
    let source = f.cluster.connect("postgres").await?;
    source.batch_execute(schema).await.context("source schema")?;
    source.batch_execute(rows).await.context("source rows")?;
    source.batch_execute("CREATE DATABASE target").await?;
    f.capture_start().await?;
    Ok((f, source))
}

/// A concurrent workload through the proxy: each connection runs `before`
/// statements, waits for the replayer to start, then at most `after` more
/// (fewer if stopped). Statements that fail on constraints or deadlocks are
/// rolled back and counted; any other error fails the load.
struct Load {
    tasks: Vec<JoinHandle<Result<(usize, usize)>>>,
    go: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    done: Arc<AtomicUsize>,
}

impl Load {
    async fn start(f: &Fixture, gen: Gen, seed: u64, conns: u64, before: usize, after: usize) -> Result<Load> {
        let (go, go_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..conns {
            let c = f.proxy.connect("postgres").await?;
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(i));
            let (mut go, stop, done) = (go_rx.clone(), stop_rx.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut counts = (0, 0);
                for _ in 0..before {
                    statement(&c, &gen(&mut rng), &mut counts, &done).await?;
                    tokio::time::sleep(PACE).await;
                }
                within(Duration::from_secs(60), "replayer start", go.wait_for(|g| *g)).await??;
                for _ in 0..after {
                    if *stop.borrow() {
                        break;
                    }
                    statement(&c, &gen(&mut rng), &mut counts, &done).await?;
                    tokio::time::sleep(PACE).await;
                }
                Ok(counts)
            }));
        }
        Ok(Load { tasks, go, stop, done })
    }

    /// Statements committed so far.
    fn done(&self) -> usize {
        self.done.load(Relaxed)
    }

    /// The replayer runs: start the second phase.
    fn replaying(&self) {
        self.go.send_replace(true);
    }

    /// Ends the second phase early.
    fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits for every connection; returns (committed, rolled back).
    async fn finish(self) -> Result<(usize, usize)> {
        self.replaying();
        let mut total = (0, 0);
        for t in self.tasks {
            let (ok, failed) = within(Duration::from_secs(60), "workload", t).await???;
            total = (total.0 + ok, total.1 + failed);
        }
        ensure!(total.0 > total.1, "most statements failed: {total:?}");
        Ok(total)
    }
}

async fn statement(c: &Client, sql: &str, counts: &mut (usize, usize), done: &AtomicUsize) -> Result<()> {
    match c.batch_execute(sql).await {
        Ok(()) => {
            counts.0 += 1;
            done.fetch_add(1, Relaxed);
        }
        Err(e) => {
            let expected = [
                SqlState::FOREIGN_KEY_VIOLATION,
                SqlState::UNIQUE_VIOLATION,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::T_R_SERIALIZATION_FAILURE,
            ];
            ensure!(
                e.code().is_some_and(|c| expected.contains(c)),
                "workload statement failed unexpectedly: {sql}: {e:?}"
            );
            counts.1 += 1;
            c.batch_execute("ROLLBACK").await?;
        }
    }
    Ok(())
}

/// Clones the source into `target` with pg_dump/pg_restore and migrates it.
/// The returned connection to the target is not one of the replayer's.
async fn clone_and_migrate(f: &Fixture, migration: &str) -> Result<Client> {
    let dump = f.log_dir.path().join("source.dump");
    let ep = f.cluster.endpoint();
    let out = ep
        .command("pg_dump", "postgres")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ep
        .command("pg_restore", "target")
        .args(["-d", "target", "--no-owner"])
        .arg(&dump)
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = f.cluster.connect("target").await?;
    target.batch_execute(migration).await.context("migration")?;
    Ok(target)
}

/// A mapping resolved against both catalogs, ready for the replayer.
#[derive(Clone)]
struct Plan {
    mapping: Arc<Resolved>,
    source: Arc<Catalog>,
    target: Arc<Catalog>,
}

async fn resolve(source: &Client, target: &Client, mapping: &str) -> Result<Plan> {
    let (src, dst) = (Catalog::load(source).await?, Catalog::load(target).await?);
    let resolved = Mapping::parse(mapping, "mapping.toml")?
        .resolve(&src, &dst)
        .map_err(|e| anyhow!("mapping does not resolve: {e:?}"))?;
    Ok(Plan {
        mapping: Arc::new(resolved),
        source: Arc::new(src),
        target: Arc::new(dst),
    })
}

/// Resolving an empty mapping fails, and the errors mention `what`.
async fn empty_mapping_fails(source: &Client, target: &Client, what: &str) -> Result<()> {
    let (src, dst) = (Catalog::load(source).await?, Catalog::load(target).await?);
    match Mapping::default().resolve(&src, &dst) {
        Ok(_) => bail!("an empty mapping resolved, but the migration needs one"),
        Err(errors) => {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            ensure!(all.iter().any(|e| e.contains(what)), "expected {what:?} in {all:?}");
            Ok(())
        }
    }
}

/// A running replayer.
struct Replay {
    task: JoinHandle<Result<(), ReplayError>>,
    status: Arc<ReplayStatus>,
    stop: watch::Sender<bool>,
}

impl Replay {
    fn spawn(f: &Fixture, plan: &Plan, workers: usize, batch_keys: usize) -> Replay {
        let config = |db: &str| {
            let mut c = f.cluster.pg_config(f.cluster.superuser(), db);
            c.application_name(REPLAYER_APP);
            c
        };
        let status = Arc::new(ReplayStatus::default());
        let (stop, stop_rx) = watch::channel(false);
        let options = ReplayOptions {
            log_dir: f.log_path(),
            workers,
            batch_keys,
            idle: Duration::from_millis(2),
        };
        let task = tokio::spawn(replayer::run(
            config("postgres"),
            config("target"),
            plan.mapping.clone(),
            plan.source.clone(),
            plan.target.clone(),
            options,
            status.clone(),
            stop_rx,
        ));
        Replay { task, status, stop }
    }

    /// Once the source is quiet: waits until everything logged is applied,
    /// then stops the replayer.
    async fn drain(self, f: &Fixture) -> Result<Arc<ReplayStatus>> {
        let last: u64 = f.show_capture().await?.get("last_lsn").context("last_lsn")?.parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.status.confirmed_lsn.load(Relaxed) < last {
            ensure!(!self.task.is_finished(), "the replayer stopped: {:?}", self.task.await);
            ensure!(
                Instant::now() < deadline,
                "catch-up did not finish: {} of {last}",
                self.status.confirmed_lsn.load(Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stop.send_replace(true);
        within(Duration::from_secs(30), "replayer stop", self.task).await???;
        Ok(self.status)
    }
}

/// Every row of `sql`, in order, each as one line.
async fn rows(c: &Client, sql: &str) -> Result<Vec<String>> {
    let messages = c.simple_query(sql).await.with_context(|| sql.to_owned())?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).map_or("NULL".to_owned(), |v| format!("{v:?}")))
                    .collect::<Vec<_>>()
                    .join(" | "),
            ),
            _ => None,
        })
        .collect())
}

/// Each source query's rows equal its target query's rows, in order; on a
/// mismatch the error shows where they part and what is missing or extra.
async fn compare(source: &Client, target: &Client, pairs: &[(&str, &str)]) -> Result<()> {
    for (src_sql, dst_sql) in pairs {
        let (a, b) = (rows(source, src_sql).await?, rows(target, dst_sql).await?);
        ensure!(
            !a.is_empty(),
            "the source has no rows for {src_sql}; the scenario checks nothing"
        );
        if a == b {
            println!("{} rows equal: {dst_sql}", a.len());
            continue;
        }
        let first = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        let (sa, sb): (HashSet<&String>, HashSet<&String>) = (a.iter().collect(), b.iter().collect());
        let missing: Vec<_> = a.iter().filter(|r| !sb.contains(r)).collect();
        let extra: Vec<_> = b.iter().filter(|r| !sa.contains(r)).collect();
        bail!(
            "target differs from the mapped source\n  source: {src_sql}\n  target: {dst_sql}\n  \
             {} source rows, {} target rows; first difference at row {first}: source {:?}, target {:?}\n  \
             {} missing on the target, first: {:?}\n  {} extra on the target, first: {:?}",
            a.len(),
            b.len(),
            a.get(first),
            b.get(first),
            missing.len(),
            &missing[..missing.len().min(8)],
            extra.len(),
            &extra[..extra.len().min(8)],
        );
    }
    Ok(())
}

/// Runs a scenario: clone while the load runs, migrate, replay while the load
/// still runs, drain, compare.
async fn run(s: Scenario) -> Result<()> {
    let started = Instant::now();
    println!("seed {}", s.seed);
    let (f, source) = start(s.schema, s.rows).await?;
    let load = Load::start(&f, s.load, s.seed, 3, 250, 150).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before_clone = load.done();
    let target = clone_and_migrate(&f, s.migration).await?;
    ensure!(
        load.done() > before_clone,
        "no write committed while the clone was taken"
    );
    if let Some(what) = s.needs_mapping {
        empty_mapping_fails(&source, &target, what).await?;
    }
    let plan = resolve(&source, &target, s.mapping).await?;
    // Two workers, so keys followed through foreign keys cross between
    // workers; more mostly add lock waits that end in deadlock detection.
    let replay = Replay::spawn(&f, &plan, 2, 200);
    load.replaying();
    let replaying = started.elapsed();
    let (ok, failed) = load.finish().await?;
    let quiet = started.elapsed();
    let status = replay.drain(&f).await?;
    println!(
        "{ok} statements committed, {failed} rolled back; {} batches, {} rows applied; replay started at \
         {replaying:?}, load ended at {quiet:?}, drained at {:?}",
        status.batches.load(Relaxed),
        status.rows_applied.load(Relaxed),
        started.elapsed()
    );
    compare(&source, &target, s.compare).await
}

/// A random id in `1..n`.
fn id(rng: &mut StdRng, n: i32) -> i32 {
    rng.random_range(1..n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_column_with_default() -> Result<()> {
    run(Scenario {
        seed: 1,
        schema: "CREATE TABLE note (id int PRIMARY KEY, body text, hits int NOT NULL DEFAULT 0)",
        rows: "INSERT INTO note SELECT g, 'seed ' || g, g FROM generate_series(1, 100) g",
        migration: "ALTER TABLE note ADD COLUMN x text DEFAULT 'd'",
        mapping: "",
        needs_mapping: None,
        load: |r| {
            let i = id(r, 200);
            match r.random_range(0..4) {
                0 => {
                    format!("INSERT INTO note VALUES ({i}, 'b{i}') ON CONFLICT (id) DO UPDATE SET hits = note.hits + 1")
                }
                1 => format!("UPDATE note SET body = body || '.' WHERE id = {i}"),
                2 => format!("DELETE FROM note WHERE id = {i}"),
                _ => format!("UPDATE note SET hits = hits + 1 WHERE id BETWEEN {i} AND {i} + 5"),
            }
        },
        compare: &[(
            "SELECT id, body, hits, 'd' FROM note ORDER BY id",
            "SELECT id, body, hits, x FROM note ORDER BY id",
        )],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_columns() -> Result<()> {
    // The key column is renamed too: deletes must find rows by the new name.
    run(Scenario {
        seed: 2,
        schema: "CREATE TABLE item (id int PRIMARY KEY, qty int, label text)",
        rows: "INSERT INTO item SELECT g, g % 7, 'l' || g FROM generate_series(1, 100) g",
        migration: "ALTER TABLE item RENAME COLUMN id TO item_id; ALTER TABLE item RENAME COLUMN qty TO quantity",
        mapping: r#"
            [tables.item.columns]
            item_id = "id"
            quantity = "qty"
        "#,
        needs_mapping: Some("column id"),
        load: |r| {
            let i = id(r, 200);
            match r.random_range(0..4) {
                0 => format!("INSERT INTO item VALUES ({i}, 1, 'n') ON CONFLICT (id) DO UPDATE SET qty = item.qty + 1"),
                1 => format!("UPDATE item SET label = label || 'x', qty = qty * 2 WHERE id = {i}"),
                2 => format!("DELETE FROM item WHERE id = {i}"),
                _ => format!("UPDATE item SET qty = NULL WHERE id = {i}"),
            }
        },
        compare: &[(
            "SELECT id, qty, label FROM item ORDER BY id",
            "SELECT item_id, quantity, label FROM item ORDER BY item_id",
        )],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int_to_bigint() -> Result<()> {
    // Keys and a foreign key change type as well as plain columns.
    run(Scenario {
        seed: 3,
        schema: "
            CREATE TABLE counter (id int PRIMARY KEY, hits int NOT NULL DEFAULT 0, total int);
            CREATE TABLE sample (counter int REFERENCES counter ON DELETE CASCADE, n int, v int,
                PRIMARY KEY (counter, n));
        ",
        rows: "
            INSERT INTO counter SELECT g, g, 2147483000 + g FROM generate_series(1, 80) g;
            INSERT INTO sample SELECT g % 80 + 1, g, -2147483000 - g FROM generate_series(1, 200) g;
        ",
        migration: "
            ALTER TABLE counter ALTER COLUMN id TYPE bigint, ALTER COLUMN hits TYPE bigint,
                ALTER COLUMN total TYPE bigint;
            ALTER TABLE sample ALTER COLUMN counter TYPE bigint, ALTER COLUMN v TYPE bigint;
        ",
        mapping: "",
        needs_mapping: None,
        load: |r| {
            let i = id(r, 120);
            let big = r.random_range(-2_147_483_648i64..=2_147_483_647);
            match r.random_range(0..6) {
                0 => format!(
                    "INSERT INTO counter VALUES ({i}, 0, {big}) ON CONFLICT (id) DO UPDATE SET hits = counter.hits + 1"
                ),
                1 => format!("UPDATE counter SET total = {big} WHERE id = {i}"),
                2 => format!("DELETE FROM counter WHERE id = {i}"),
                3 => format!(
                    "INSERT INTO sample VALUES ({i}, {}, {big}) ON CONFLICT (counter, n) DO UPDATE SET v = excluded.v",
                    id(r, 20)
                ),
                4 => format!("DELETE FROM sample WHERE counter = {i} AND n > {}", id(r, 20)),
                _ => format!("UPDATE counter SET hits = 2147483000 - {i} WHERE id = {i}"),
            }
        },
        compare: &[
            (
                "SELECT id, hits, total, 'bigint' FROM counter ORDER BY id",
                "SELECT id, hits, total, pg_typeof(total)::text FROM counter ORDER BY id",
            ),
            (
                "SELECT counter, n, v FROM sample ORDER BY counter, n",
                "SELECT counter, n, v FROM sample ORDER BY counter, n",
            ),
        ],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_split_in_two() -> Result<()> {
    run(Scenario {
        seed: 4,
        schema: "CREATE TABLE person (id int PRIMARY KEY, name text, age int)",
        rows: "INSERT INTO person SELECT g, 'First' || g || ' Last' || g, g FROM generate_series(1, 100) g",
        migration: "
            ALTER TABLE person ADD COLUMN first_name text, ADD COLUMN last_name text;
            UPDATE person SET first_name = split_part(name, ' ', 1), last_name = split_part(name, ' ', 2);
            ALTER TABLE person DROP COLUMN name;
        ",
        mapping: r#"
            [tables.person.columns]
            first_name = "split_part(name, ' ', 1)"
            last_name = "split_part(name, ' ', 2)"
            [tables.person.reverse]
            name = "first_name || ' ' || last_name"
        "#,
        needs_mapping: Some("column name"),
        load: |r| {
            let i = id(r, 200);
            let (a, b) = (id(r, 50), id(r, 50));
            match r.random_range(0..5) {
                0 => format!(
                    "INSERT INTO person VALUES ({i}, 'f{a} l{b}', {a}) \
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name"
                ),
                1 => format!("UPDATE person SET name = 'g{a} m{b}' WHERE id = {i}"),
                2 => format!("UPDATE person SET age = age + 1 WHERE id BETWEEN {i} AND {i} + 3"),
                3 => format!("DELETE FROM person WHERE id = {i}"),
                _ => format!(
                    "UPDATE person SET name = CASE WHEN {a} % 2 = 0 THEN NULL ELSE 'solo{a}' END \
                     WHERE id = {i}"
                ),
            }
        },
        compare: &[(
            "SELECT id, split_part(name, ' ', 1), split_part(name, ' ', 2), age FROM person ORDER BY id",
            "SELECT id, first_name, last_name, age FROM person ORDER BY id",
        )],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_null_column_backfilled() -> Result<()> {
    // The target column is NOT NULL without a default: only the mapping's
    // expression lets replayed inserts satisfy it.
    run(Scenario {
        seed: 5,
        schema: "CREATE TABLE orders (id int PRIMARY KEY, qty int, price int, note text)",
        rows: "INSERT INTO orders SELECT g, g % 5, CASE WHEN g % 9 = 0 THEN NULL ELSE g END, 'o'
               FROM generate_series(1, 100) g",
        migration: "
            ALTER TABLE orders ADD COLUMN total bigint;
            UPDATE orders SET total = coalesce(qty, 0)::bigint * coalesce(price, 0);
            ALTER TABLE orders ALTER COLUMN total SET NOT NULL;
        ",
        mapping: r#"
            [tables.orders.columns]
            total = "coalesce(qty, 0)::bigint * coalesce(price, 0)"
        "#,
        needs_mapping: Some("NOT NULL without a default"),
        load: |r| {
            let i = id(r, 200);
            let (q, p) = (r.random_range(0..100), r.random_range(0..100_000));
            match r.random_range(0..5) {
                0 => format!(
                    "INSERT INTO orders VALUES ({i}, {q}, {p}, 'n') \
                     ON CONFLICT (id) DO UPDATE SET qty = orders.qty + 1"
                ),
                1 => format!("UPDATE orders SET price = {p} WHERE id = {i}"),
                2 => format!("UPDATE orders SET qty = NULL WHERE id = {i}"),
                3 => format!("DELETE FROM orders WHERE id = {i}"),
                _ => format!("INSERT INTO orders (id, note) VALUES ({i}, 'bare') ON CONFLICT DO NOTHING"),
            }
        },
        compare: &[(
            "SELECT id, qty, price, note, coalesce(qty, 0)::bigint * coalesce(price, 0) FROM orders ORDER BY id",
            "SELECT id, qty, price, note, total FROM orders ORDER BY id",
        )],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_column() -> Result<()> {
    run(Scenario {
        seed: 6,
        schema: "CREATE TABLE profile (id int PRIMARY KEY, email text NOT NULL, legacy text, score int)",
        rows: "INSERT INTO profile SELECT g, 'u' || g || '@x', 'old', g FROM generate_series(1, 100) g",
        migration: "ALTER TABLE profile DROP COLUMN legacy",
        mapping: r#"
            [tables.profile]
            drop = ["legacy"]
        "#,
        needs_mapping: Some("list it in `drop`"),
        load: |r| {
            let i = id(r, 200);
            match r.random_range(0..4) {
                0 => format!(
                    "INSERT INTO profile VALUES ({i}, 'e{i}', 'l', 0) \
                     ON CONFLICT (id) DO UPDATE SET score = profile.score + 1"
                ),
                // Writes that touch only the dropped column still sync the row.
                1 => format!("UPDATE profile SET legacy = 'changed' WHERE id = {i}"),
                2 => format!("UPDATE profile SET email = email || '.', legacy = NULL WHERE id = {i}"),
                _ => format!("DELETE FROM profile WHERE id = {i}"),
            }
        },
        compare: &[(
            "SELECT id, email, score FROM profile ORDER BY id",
            "SELECT id, email, score FROM profile ORDER BY id",
        )],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_deletes() -> Result<()> {
    // Deleting an author cascades to its books, their chapters (two levels)
    // and nulls the book of their reviews; capture sees only the author.
    // The review's foreign-key column is renamed on the target.
    run(Scenario {
        seed: 7,
        schema: "
            CREATE TABLE author (id int PRIMARY KEY, name text);
            CREATE TABLE book (id int PRIMARY KEY, author int NOT NULL REFERENCES author ON DELETE CASCADE, title text);
            CREATE TABLE chapter (book int REFERENCES book ON DELETE CASCADE, n int, words int, PRIMARY KEY (book, n));
            CREATE TABLE review (id int PRIMARY KEY, book int REFERENCES book ON DELETE SET NULL, stars int);
        ",
        rows: "
            INSERT INTO author SELECT g, 'a' || g FROM generate_series(1, 30) g;
            INSERT INTO book SELECT g, g % 30 + 1, 't' || g FROM generate_series(1, 100) g;
            INSERT INTO chapter SELECT g % 100 + 1, g, g * 10 FROM generate_series(1, 300) g;
            INSERT INTO review SELECT g, g % 100 + 1, g % 5 FROM generate_series(1, 150) g;
        ",
        migration: "ALTER TABLE review RENAME COLUMN book TO book_id",
        mapping: r#"
            [tables.review.columns]
            book_id = "book"
        "#,
        needs_mapping: Some("column book"),
        load: |r| {
            let (a, b, n) = (id(r, 40), id(r, 150), id(r, 8));
            match r.random_range(0..20) {
                0..=2 => format!(
                    "INSERT INTO author VALUES ({a}, 'a') ON CONFLICT (id) DO UPDATE SET name = author.name || '+'"
                ),
                3..=6 => format!(
                    "INSERT INTO book VALUES ({b}, {a}, 't') ON CONFLICT (id) DO UPDATE SET title = book.title || '+'"
                ),
                7 => format!("UPDATE book SET author = {a} WHERE id = {b}"),
                8 => format!("DELETE FROM author WHERE id = {a}"),
                9 => format!("DELETE FROM book WHERE id = {b}"),
                10..=13 => format!(
                    "INSERT INTO chapter VALUES ({b}, {n}, 1) \
                     ON CONFLICT (book, n) DO UPDATE SET words = chapter.words + 1"
                ),
                14 | 15 => format!(
                    "INSERT INTO review VALUES ({}, {b}, {n}) ON CONFLICT (id) DO UPDATE SET book = excluded.book",
                    id(r, 200)
                ),
                16 => format!("UPDATE review SET stars = stars + 1 WHERE book = {b}"),
                17 => format!("DELETE FROM chapter WHERE book = {b} AND n > {n}"),
                // Deleted and created again in one transaction: capture logs
                // the author once, yet its old books are gone on the source.
                _ => format!(
                    "BEGIN; DELETE FROM author WHERE id = {a}; INSERT INTO author VALUES ({a}, 'again'); \
                     INSERT INTO book VALUES ({b}, {a}, 'new') ON CONFLICT (id) DO UPDATE SET author = {a}; COMMIT"
                ),
            }
        },
        compare: &[
            (
                "SELECT id, name FROM author ORDER BY id",
                "SELECT id, name FROM author ORDER BY id",
            ),
            (
                "SELECT id, author, title FROM book ORDER BY id",
                "SELECT id, author, title FROM book ORDER BY id",
            ),
            (
                "SELECT book, n, words FROM chapter ORDER BY book, n",
                "SELECT book, n, words FROM chapter ORDER BY book, n",
            ),
            (
                "SELECT id, book, stars FROM review ORDER BY id",
                "SELECT id, book_id, stars FROM review ORDER BY id",
            ),
        ],
    })
    .await
}

/// Key texts that need care: spaces, quotes, separators, array and NULL
/// look-alikes, non-ASCII, empty, backslash.
const SKUS: &[&str] = &[
    "a",
    "b c",
    "it''s",
    "x,y",
    "{q}",
    "NULL",
    "é",
    "",
    "back\\slash",
    "\"dq\"",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys() -> Result<()> {
    // Two- and three-column keys with awkward text values; the target
    // declares its keys in another column order.
    run(Scenario {
        seed: 8,
        schema: "
            CREATE TABLE stock (warehouse int, sku text, qty int NOT NULL DEFAULT 0, bin text,
                PRIMARY KEY (warehouse, sku));
            CREATE TABLE movement (warehouse int, sku text, seq int, delta int, PRIMARY KEY (warehouse, sku, seq),
                FOREIGN KEY (warehouse, sku) REFERENCES stock ON DELETE CASCADE);
        ",
        rows: "
            INSERT INTO stock SELECT w, s, w, 'b' FROM generate_series(1, 8) w,
                unnest(ARRAY['a', 'b c', 'x,y', 'é']) s;
            INSERT INTO movement SELECT warehouse, sku, g, g FROM stock, generate_series(1, 3) g;
        ",
        migration: "
            ALTER TABLE movement DROP CONSTRAINT movement_pkey,
                DROP CONSTRAINT movement_warehouse_sku_fkey;
            ALTER TABLE stock DROP CONSTRAINT stock_pkey;
            ALTER TABLE stock ADD PRIMARY KEY (sku, warehouse);
            ALTER TABLE movement ADD PRIMARY KEY (seq, sku, warehouse),
                ADD FOREIGN KEY (sku, warehouse) REFERENCES stock (sku, warehouse) ON DELETE CASCADE;
        ",
        mapping: "",
        needs_mapping: None,
        load: |r| {
            let w = id(r, 12);
            let s = SKUS[r.random_range(0..SKUS.len())];
            let n = id(r, 6);
            match r.random_range(0..12) {
                0..=2 => format!(
                    "INSERT INTO stock VALUES ({w}, '{s}', 1, 'b') \
                     ON CONFLICT (warehouse, sku) DO UPDATE SET qty = stock.qty + 1"
                ),
                3 => format!("UPDATE stock SET qty = qty - 1 WHERE warehouse = {w}"),
                4 => format!("UPDATE stock SET bin = 'bin{n}' WHERE warehouse = {w} AND sku = '{s}'"),
                5 => format!("DELETE FROM stock WHERE warehouse = {w} AND sku = '{s}'"),
                6 => format!("DELETE FROM stock WHERE sku = '{s}' AND warehouse > {w} + 6"),
                7..=10 => format!(
                    "INSERT INTO movement VALUES ({w}, '{s}', {n}, {n}) \
                     ON CONFLICT (warehouse, sku, seq) DO UPDATE SET delta = movement.delta + 1"
                ),
                _ => format!("DELETE FROM movement WHERE warehouse = {w} AND seq > {n}"),
            }
        },
        compare: &[
            (
                "SELECT warehouse, sku, qty, bin FROM stock ORDER BY warehouse, sku",
                "SELECT warehouse, sku, qty, bin FROM stock ORDER BY warehouse, sku",
            ),
            (
                "SELECT warehouse, sku, seq, delta FROM movement ORDER BY warehouse, sku, seq",
                "SELECT warehouse, sku, seq, delta FROM movement ORDER BY warehouse, sku, seq",
            ),
        ],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_tables() -> Result<()> {
    // Renamed in place, a child renamed along with its parent (so cascades
    // are followed into renamed tables), and one moved to another schema.
    run(Scenario {
        seed: 9,
        schema: "
            CREATE TABLE ledger (id int PRIMARY KEY, account int, amount int);
            CREATE TABLE ledger_line (ledger int REFERENCES ledger ON DELETE CASCADE, n int, memo text,
                PRIMARY KEY (ledger, n));
            CREATE TABLE tag (id int PRIMARY KEY, label text);
        ",
        rows: "
            INSERT INTO ledger SELECT g, g % 10, g * 3 FROM generate_series(1, 100) g;
            INSERT INTO ledger_line SELECT g % 100 + 1, g, 'm' FROM generate_series(1, 200) g;
            INSERT INTO tag SELECT g, 't' || g FROM generate_series(1, 50) g;
        ",
        migration: "
            ALTER TABLE ledger RENAME TO journal;
            ALTER TABLE ledger_line RENAME TO journal_line;
            CREATE SCHEMA app;
            ALTER TABLE tag SET SCHEMA app;
        ",
        mapping: r#"
            [tables.ledger]
            target = "journal"
            [tables.ledger_line]
            target = "journal_line"
            [tables.tag]
            target = "app.tag"
        "#,
        needs_mapping: Some("does not exist in the target database"),
        load: |r| {
            let (i, n) = (id(r, 150), id(r, 6));
            match r.random_range(0..7) {
                0 => format!(
                    "INSERT INTO ledger VALUES ({i}, {n}, 1) \
                     ON CONFLICT (id) DO UPDATE SET amount = ledger.amount + 1"
                ),
                1 => format!("UPDATE ledger SET account = {n} WHERE id = {i}"),
                2 => format!("DELETE FROM ledger WHERE id = {i}"),
                3 => format!(
                    "INSERT INTO ledger_line VALUES ({i}, {n}, 'x') \
                     ON CONFLICT (ledger, n) DO UPDATE SET memo = ledger_line.memo || 'y'"
                ),
                4 => format!("DELETE FROM ledger_line WHERE ledger = {i}"),
                5 => format!(
                    "INSERT INTO tag VALUES ({i}, 'l') \
                     ON CONFLICT (id) DO UPDATE SET label = tag.label || '!'"
                ),
                _ => format!("DELETE FROM tag WHERE id = {i}"),
            }
        },
        compare: &[
            (
                "SELECT id, account, amount FROM ledger ORDER BY id",
                "SELECT id, account, amount FROM journal ORDER BY id",
            ),
            (
                "SELECT ledger, n, memo FROM ledger_line ORDER BY ledger, n",
                "SELECT ledger, n, memo FROM journal_line ORDER BY ledger, n",
            ),
            (
                "SELECT id, label FROM tag ORDER BY id",
                "SELECT id, label FROM app.tag ORDER BY id",
            ),
        ],
    })
    .await
}

/// Polls the target's position table while the replayer runs and crashes.
/// Every row must stay at or above `floor`, the position the running
/// replayer resumed after (the lowest row when it started), and a row once
/// written must stay. Rows can go back below their own earlier value: after a
/// restart every worker starts again from the lowest row.
struct PositionWatch {
    task: JoinHandle<Result<(usize, usize)>>,
    stop: watch::Sender<bool>,
    floor: Arc<AtomicI64>,
}

impl PositionWatch {
    async fn start(f: &Fixture) -> Result<PositionWatch> {
        let c = f.cluster.connect("target").await?;
        let (stop, stop_rx) = watch::channel(false);
        let floor = Arc::new(AtomicI64::new(0));
        let low = floor.clone();
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            let (mut seen, mut samples, mut went_back) = (HashMap::new(), 0, 0);
            while !*stop_rx.borrow() {
                ensure!(Instant::now() < deadline, "position watch outlived the test");
                // Read the floor first: it only rises, and only once every
                // row is at or above it.
                let floor = low.load(Relaxed);
                let now = match replayer::positions(&c).await {
                    Ok(now) => now,
                    // The replayer has not created its schema yet.
                    Err(ReplayError::Db { source, .. }) if source.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                        HashMap::new()
                    }
                    Err(e) => return Err(e.into()),
                };
                for (w, before) in &seen {
                    let after = now
                        .get(w)
                        .with_context(|| format!("worker {w}'s position row vanished"))?;
                    went_back += usize::from(after < before);
                }
                for (w, lsn) in &now {
                    ensure!(
                        *lsn >= floor,
                        "worker {w}'s position {lsn} is below the resume position {floor}"
                    );
                }
                seen = now;
                samples += 1;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            Ok((samples, went_back))
        });
        Ok(PositionWatch { task, stop, floor })
    }

    /// The replayer about to start resumes after `lsn`.
    fn resumes_after(&self, lsn: i64) {
        self.floor.store(lsn, Relaxed);
    }

    /// Stops polling; returns the samples checked and how often a single
    /// worker's row went back.
    async fn finish(self) -> Result<(usize, usize)> {
        self.stop.send_replace(true);
        within(Duration::from_secs(10), "position watch", self.task).await??
    }
}

/// Ends every connection of the replayer, as if its process died: the
/// server rolls back whatever transaction was open. Returns how many target
/// connections were inside a transaction.
async fn crash_connections(c: &Client) -> Result<usize> {
    let killed = c
        .query(
            "SELECT datname = 'target' AND xact_start IS NOT NULL, pg_terminate_backend(pid)
             FROM pg_stat_activity WHERE application_name = $1",
            &[&REPLAYER_APP],
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&REPLAYER_APP],
            )
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{left} replayer connections outlived the crash"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(killed.iter().filter(|r| r.get::<_, bool>(0)).count())
}

/// Waits until `done` holds, polling.
async fn until<F, Fut>(what: &str, mut done: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await? {
        ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn crash_load(r: &mut StdRng) -> String {
    let id = id(r, 300);
    let p = r.random_range(1..60);
    match r.random_range(0..8) {
        0 => format!("INSERT INTO acct VALUES ({id}, 1, 'n') ON CONFLICT (id) DO UPDATE SET bal = acct.bal + 1"),
        1 => format!("UPDATE acct SET bal = bal - 2, note = 'u{p}' WHERE id = {id}"),
        2 => format!("DELETE FROM acct WHERE id = {id}"),
        3 => format!(
            "INSERT INTO pair VALUES ({p}, 'k{}', 1) ON CONFLICT (a, b) DO UPDATE SET n = pair.n + 1",
            id % 5
        ),
        4 => format!(
            "BEGIN; INSERT INTO parent VALUES ({p}, 'p') ON CONFLICT DO NOTHING; \
             INSERT INTO child VALUES ({id}, {p}, 1) ON CONFLICT (id) DO UPDATE SET v = child.v + 1; COMMIT"
        ),
        5 => format!("DELETE FROM parent WHERE id = {p}"),
        6 => format!("DELETE FROM pair WHERE a = {p}"),
        _ => format!("UPDATE child SET v = v * 2 WHERE parent = {p}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayer_crashes_mid_batch_and_resumes() -> Result<()> {
    const WORKERS: usize = 3;
    let seed = 10;
    println!("seed {seed}");
    let (f, source) = start(
        "CREATE TABLE acct (id int PRIMARY KEY, bal int NOT NULL DEFAULT 0, note text);
         CREATE TABLE pair (a int, b text, n int NOT NULL DEFAULT 0, PRIMARY KEY (a, b));
         CREATE TABLE parent (id int PRIMARY KEY, name text);
         CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent (id) ON DELETE CASCADE, v int);",
        "INSERT INTO acct SELECT g, g, 's' FROM generate_series(1, 150) g;
         INSERT INTO pair SELECT g % 60 + 1, 'k' || g % 5, g FROM generate_series(1, 200) g ON CONFLICT DO NOTHING;
         INSERT INTO parent SELECT g, 'p' FROM generate_series(1, 60) g;
         INSERT INTO child SELECT g, g % 60 + 1, g FROM generate_series(1, 200) g;",
    )
    .await?;
    let load = Load::start(&f, crash_load, seed, 3, 150, 500).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let target = clone_and_migrate(
        &f,
        "ALTER TABLE acct ALTER COLUMN bal TYPE bigint;
         ALTER TABLE acct ADD COLUMN flag text NOT NULL DEFAULT 'new';
         ALTER TABLE pair RENAME COLUMN n TO hits;",
    )
    .await?;
    let plan = resolve(&source, &target, "[tables.pair.columns]\nhits = \"n\"").await?;
    let watch = PositionWatch::start(&f).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    load.replaying();
    let (mut resume, mut mid_transaction) = (0, 0);
    for crash in 1..=6 {
        // Small batches: many commits, so crashes land between and inside them.
        let replay = Replay::spawn(&f, &plan, WORKERS, 8);
        let wait = rng.random_range(20..150);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        ensure!(
            !replay.task.is_finished(),
            "the replayer stopped by itself: {:?}",
            replay.task.await
        );
        // Aborting the task alone leaves its workers running until their
        // queues drain; ending the connections is what a crash does.
        replay.task.abort();
        mid_transaction += crash_connections(&target).await?;
        let positions = replayer::positions(&target).await?;
        ensure!(
            positions.len() == WORKERS,
            "after crash {crash}, positions {positions:?}"
        );
        let now = positions.values().copied().min().unwrap_or(0);
        ensure!(
            now >= resume,
            "after crash {crash}, the resume position went back from {resume} to {now}: {positions:?}"
        );
        resume = now;
        watch.resumes_after(resume);
        println!(
            "crash {crash} after {wait} ms: {} batches committed, resume after {resume}, {} statements so far",
            replay.status.batches.load(Relaxed),
            load.done()
        );
    }
    ensure!(mid_transaction > 0, "no crash hit an open target transaction");
    load.stop();
    let (ok, failed) = load.finish().await?;
    let status = Replay::spawn(&f, &plan, WORKERS, 8).drain(&f).await?;
    let (samples, went_back) = watch.finish().await?;
    println!(
        "{ok} statements committed, {failed} rolled back; {mid_transaction} ended connections were in a \
         transaction; last run resumed after {resume}, {} batches; {samples} position samples, none below the \
         resume position ({went_back} times a single worker's went back)",
        status.batches.load(Relaxed)
    );
    compare(
        &source,
        &target,
        &[
            (
                "SELECT id, bal, note, 'new' FROM acct ORDER BY id",
                "SELECT id, bal, note, flag FROM acct ORDER BY id",
            ),
            (
                "SELECT a, b, n FROM pair ORDER BY a, b",
                "SELECT a, b, hits FROM pair ORDER BY a, b",
            ),
            (
                "SELECT id, name FROM parent ORDER BY id",
                "SELECT id, name FROM parent ORDER BY id",
            ),
            (
                "SELECT id, parent, v FROM child ORDER BY id",
                "SELECT id, parent, v FROM child ORDER BY id",
            ),
        ],
    )
    .await
}

/// Holds the replayer's batch commits for `workers` on the target until the
/// returned connection rolls back.
async fn hold_positions(f: &Fixture, workers: &[i32]) -> Result<Client> {
    let c = f.cluster.connect("target").await?;
    replayer::prepare_target(&c).await?;
    // A trigger that fires even under session_replication_role = replica
    // (and only then: in the workers' batches, not when the replayer sets
    // up its positions) makes the workers' position writes wait for a lock this connection
    // holds until it rolls back (the replayer's lock_timeout turns each wait
    // into a retry of the batch, which waits again).
    let list: Vec<String> = workers.iter().map(i32::to_string).collect();
    c.batch_execute(&format!(
        "CREATE OR REPLACE FUNCTION switchyard.hold_workers() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.worker IN ({}) AND current_setting('session_replication_role') = 'replica' THEN
                 PERFORM pg_advisory_xact_lock_shared(424242);
             END IF;
             RETURN NEW;
         END $$;
         DROP TRIGGER IF EXISTS hold_workers ON switchyard.replay_position;
         CREATE TRIGGER hold_workers BEFORE INSERT OR UPDATE ON switchyard.replay_position
             FOR EACH ROW EXECUTE FUNCTION switchyard.hold_workers();
         ALTER TABLE switchyard.replay_position ENABLE ALWAYS TRIGGER hold_workers;",
        list.join(", ")
    ))
    .await?;
    // Separately: a BEGIN inside one query would take the DDL above into
    // the open transaction, and its table lock with it.
    c.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(424242)").await?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_racing_an_open_child_write() -> Result<()> {
    // Worker 0 writes children and is held before its commit; meanwhile
    // their parents are deleted on the source (cascading to them) and worker
    // 1 syncs the parents it owns and looks for their children on the target,
    // where worker 0's rows are not visible yet. Once worker 0 commits, no
    // child of a deleted parent may stay.
    let (f, source) = start(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent ON DELETE CASCADE)",
        "INSERT INTO parent SELECT generate_series(1, 50)",
    )
    .await?;
    let target = clone_and_migrate(&f, "").await?;
    let c = f.proxy.connect("postgres").await?;
    for i in 1..=50 {
        c.batch_execute(&format!("INSERT INTO child VALUES ({i}, {i})")).await?;
    }
    let plan = resolve(&source, &target, "").await?;
    let held = hold_positions(&f, &[0]).await?;
    let replay = Replay::spawn(&f, &plan, 2, 10_000);
    until("worker 1 commits", || async {
        Ok(replayer::positions(&target).await?.contains_key(&1))
    })
    .await?;
    c.batch_execute("DELETE FROM parent").await?;
    let last: u64 = f.show_capture().await?.get("last_lsn").context("last_lsn")?.parse()?;
    // Worker 1 either applies the deletes or waits for worker 0's keys.
    until("worker 1 applies the deletes or waits", || async {
        let waiting: i64 = target
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event = 'advisory'",
                &[&REPLAYER_APP],
            )
            .await?
            .get(0);
        Ok(waiting > 0 || replayer::positions(&target).await?[&1] as u64 >= last)
    })
    .await?;
    held.batch_execute("ROLLBACK").await?;
    replay.drain(&f).await?;
    let left = rows(&target, "SELECT id, parent FROM child ORDER BY id").await?;
    ensure!(
        left.is_empty(),
        "children of deleted parents stay on the target: {left:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_every_worker_has_a_position() -> Result<()> {
    let (f, source) = start("CREATE TABLE t (id int PRIMARY KEY, v int)", "").await?;
    let c = f.proxy.connect("postgres").await?;
    for i in 1..=300 {
        c.batch_execute(&format!("INSERT INTO t VALUES ({i}, {i})")).await?;
    }
    // As if the clone were taken before these writes.
    let target = clone_and_migrate(&f, "TRUNCATE t").await?;
    let plan = resolve(&source, &target, "").await?;
    // Workers 0 and 1 are held at their first commit; worker 2 commits.
    let held = hold_positions(&f, &[0, 1]).await?;
    let replay = Replay::spawn(&f, &plan, 3, 10_000);
    until("worker 2 commits", || async {
        Ok(replayer::positions(&target).await?.get(&2).is_some_and(|&p| p > 0))
    })
    .await?;
    replay.task.abort();
    crash_connections(&target).await?;
    held.batch_execute("ROLLBACK").await?;
    Replay::spawn(&f, &plan, 3, 10_000).drain(&f).await?;
    compare(
        &source,
        &target,
        &[("SELECT id, v FROM t ORDER BY id", "SELECT id, v FROM t ORDER BY id")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_read_once_their_commit_is_visible() -> Result<()> {
    let (f, source) = start(
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
        "INSERT INTO parent VALUES (1)",
    )
    .await?;
    let target = clone_and_migrate(&f, "").await?;
    let plan = resolve(&source, &target, "").await?;
    let replay = Replay::spawn(&f, &plan, 2, 100);
    // The deferred foreign-key check at COMMIT waits for this row lock, so
    // the insert's keys are logged well before it commits; the replayer must
    // not read them until it has.
    let holder = f.cluster.connect("postgres").await?;
    holder
        .batch_execute("BEGIN; SELECT * FROM parent WHERE id = 1 FOR UPDATE")
        .await?;
    let c = f.proxy.connect("postgres").await?;
    let insert = tokio::spawn(async move { c.batch_execute("INSERT INTO child VALUES (1, 1)").await });
    // Until the replayer has read the commit record and is idle at the end
    // of the log: a replayer that read keys at once would have applied them.
    until("the replayer has read the insert's commit", || async {
        let last: u64 = f.show_capture().await?.get("last_lsn").context("last_lsn")?.parse()?;
        let status = &replay.status;
        Ok(last > 0 && status.read_lsn.load(Relaxed) >= last && status.at_log_end.load(Relaxed))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ensure!(
        !insert.is_finished(),
        "the insert committed before the replayer read its keys"
    );
    holder.batch_execute("COMMIT").await?;
    within(Duration::from_secs(10), "insert", insert).await???;
    replay.drain(&f).await?;
    compare(
        &source,
        &target,
        &[(
            "SELECT id, parent FROM child ORDER BY id",
            "SELECT id, parent FROM child ORDER BY id",
        )],
    )
    .await
}
