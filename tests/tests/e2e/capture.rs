//! Write capture through the proxy: keys of committed writes reach the log
//! (checked against the WAL decoded by test_decoding), clients see exactly
//! what they would without capture, unsafe statements are rejected, and the
//! barrier is reported.

use crate::oracle::{logged_keys, written_keys, WalOracle};
use crate::support::{admin, expect_sqlstate, table, trusting_config, within, PROMPT};
use anyhow::{ensure, Context, Result};
use std::time::{Duration, Instant};
use switchyard_tests::{Cluster, TestProxy};
use tokio_postgres::{Client, SimpleQueryMessage};

/// A source with logical decoding for the oracle, a proxy capturing into a
/// temp dir, and the admin console.
pub struct Fixture {
    pub cluster: Cluster,
    pub proxy: TestProxy,
    pub log_dir: tempfile::TempDir,
    pub admin: Client,
}

/// A source cluster with logical decoding, for the WAL oracle.
pub async fn logical_cluster() -> Result<Cluster> {
    Ok(Cluster::builder()
        .setting("wal_level", "logical")
        .setting("max_replication_slots", "4")
        .setting("max_wal_senders", "4")
        .start()
        .await?)
}

impl Fixture {
    pub async fn start() -> Result<Fixture> {
        Fixture::in_front_of(logical_cluster().await?).await
    }

    pub async fn in_front_of(cluster: Cluster) -> Result<Fixture> {
        Fixture::configured(cluster, |_| {}).await
    }

    /// As [`Fixture::in_front_of`], with `edit` applied to the proxy's config.
    pub async fn configured(cluster: Cluster, edit: impl FnOnce(&mut switchyard_proxy::Config)) -> Result<Fixture> {
        let log_dir = tempfile::tempdir()?;
        let mut config = trusting_config(cluster.host(), cluster.port());
        config.source.password = cluster.auth().password().map(str::to_owned);
        config.capture.log_dir = log_dir.path().join("log");
        config.capture.user = Some(cluster.superuser().to_owned());
        config.capture.database = Some("postgres".into());
        edit(&mut config);
        let proxy = TestProxy::start_with(config)
            .await?
            .with_login(cluster.superuser(), None)
            .with_binaries(cluster.binaries().clone());
        let admin = admin(&proxy).await?;
        Ok(Fixture {
            cluster,
            proxy,
            log_dir,
            admin,
        })
    }

    /// CAPTURE START, then waits for the barrier.
    pub async fn capture_start(&self) -> Result<()> {
        self.admin
            .simple_query("CAPTURE START")
            .await
            .context("CAPTURE START")?;
        let deadline = Instant::now() + PROMPT;
        loop {
            let t = table(&self.admin, "SHOW CAPTURE").await?;
            if t.map().get("state").map(String::as_str) == Some("on") {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "no barrier: {:?}", t.map());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn show_capture(&self) -> Result<std::collections::BTreeMap<String, String>> {
        Ok(table(&self.admin, "SHOW CAPTURE").await?.map())
    }

    pub fn log_path(&self) -> std::path::PathBuf {
        self.log_dir.path().join("log")
    }

    /// Copies database `postgres` into the existing, empty database `db`
    /// with pg_dump/pg_restore (as a DBA would after the barrier) and
    /// returns a connection to the copy.
    pub async fn clone_into(&self, db: &str) -> Result<Client> {
        let dump = self.log_dir.path().join(format!("{db}.dump"));
        let ep = self.cluster.endpoint();
        ep.copy_database("postgres", &ep, db, &dump).await?;
        Ok(self.cluster.connect(db).await?)
    }
}

fn key(table: &str, values: &[&str]) -> (String, Vec<Option<String>>) {
    (table.to_owned(), values.iter().map(|v| Some((*v).to_owned())).collect())
}

fn command_tags(messages: &[SimpleQueryMessage]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect()
}

const SCHEMA: &str = "
    CREATE TABLE t (id int PRIMARY KEY, v text);
    CREATE TABLE pair (a int, b text, n int, PRIMARY KEY (a, b));
    CREATE TABLE nokey (x int);
    CREATE TABLE parent (id int PRIMARY KEY);
    CREATE TABLE child (id int PRIMARY KEY, parent int REFERENCES parent (id) ON DELETE CASCADE);
";

fn key_columns(table: &str) -> Option<Vec<String>> {
    match table {
        "public.t" | "public.parent" | "public.child" => Some(vec!["id".into()]),
        "public.pair" => Some(vec!["a".into(), "b".into()]),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_forms_are_captured_and_invisible() -> Result<()> {
    let f = Fixture::start().await?;
    let direct = f.cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let oracle = WalOracle::create(&direct, "capture_simple").await?;
    f.capture_start().await?;
    let c = f.proxy.connect("postgres").await?;

    // Autocommit: wrapped by the proxy; the client sees its own tag only.
    let m = c.simple_query("INSERT INTO t VALUES (1, 'a')").await?;
    ensure!(command_tags(&m) == vec![1], "{m:?}");
    ensure!(
        m.iter().all(|x| !matches!(x, SimpleQueryMessage::Row(_))),
        "no rows without RETURNING"
    );
    // The client's own RETURNING, and only its columns.
    let m = c.simple_query("INSERT INTO t VALUES (2, 'b') RETURNING v").await?;
    let rows: Vec<_> = m
        .iter()
        .filter_map(|x| match x {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    ensure!(
        rows.len() == 1 && rows[0].len() == 1 && rows[0].get(0) == Some("b"),
        "{m:?}"
    );
    // Multi-statement autocommit, an UPDATE and a DELETE.
    let m = c
        .simple_query("INSERT INTO t VALUES (3, 'c'); UPDATE t SET v = 'B' WHERE id = 2; DELETE FROM t WHERE id = 1")
        .await?;
    ensure!(command_tags(&m) == vec![1, 1, 1], "{m:?}");
    // Explicit block with a savepoint rolled back.
    c.batch_execute("BEGIN").await?;
    c.batch_execute("INSERT INTO t VALUES (10, 'x')").await?;
    c.batch_execute("SAVEPOINT s").await?;
    c.batch_execute("INSERT INTO t VALUES (11, 'y')").await?;
    c.batch_execute("ROLLBACK TO SAVEPOINT s").await?;
    c.batch_execute("INSERT INTO pair VALUES (1, 'it''s', 0)").await?;
    c.batch_execute("COMMIT").await?;
    // A block in one query, split before its COMMIT.
    let m = c
        .simple_query("BEGIN; INSERT INTO t VALUES (20, 'p'); UPDATE pair SET n = n + 1 WHERE a = 1; COMMIT")
        .await?;
    ensure!(command_tags(&m) == vec![0, 1, 1, 0], "{m:?}");
    // Rolled back: never logged.
    c.batch_execute("BEGIN; INSERT INTO t VALUES (30, 'r'); ROLLBACK")
        .await?;
    c.batch_execute("BEGIN").await?;
    c.batch_execute("INSERT INTO t VALUES (31, 'r')").await?;
    c.batch_execute("ROLLBACK").await?;
    // An error inside an autocommit wrap: nothing committed, same error.
    let e = c
        .simple_query("INSERT INTO t VALUES (40, 'e'); INSERT INTO t VALUES (3, 'dup')")
        .await;
    expect_sqlstate(e, "23505")?;
    ensure!(
        direct.query_opt("SELECT 1 FROM t WHERE id = 40", &[]).await?.is_none(),
        "the failed query's first insert must be rolled back"
    );
    // ON CONFLICT and UPDATE ... FROM, DELETE ... USING.
    c.batch_execute("INSERT INTO t VALUES (3, 'c2') ON CONFLICT (id) DO UPDATE SET v = excluded.v")
        .await?;
    c.batch_execute("UPDATE t SET v = 'from' FROM pair WHERE pair.a = 1 AND t.id = 20")
        .await?;
    c.batch_execute("INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (7, 1)")
        .await?;
    c.batch_execute("DELETE FROM t USING pair WHERE t.id = 10 AND pair.a = 1")
        .await?;
    // A temp table is never captured.
    c.batch_execute("CREATE TEMP TABLE scratch (id int PRIMARY KEY); INSERT INTO scratch VALUES (1)")
        .await?;

    // Unsafe statements are rejected with a clear error and do not run.
    let msg = expect_sqlstate(c.simple_query("CREATE TABLE later (i int)").await, "0A000")?;
    ensure!(msg.contains("capture"), "{msg}");
    expect_sqlstate(c.simple_query("INSERT INTO nokey VALUES (1)").await, "0A000")?;
    expect_sqlstate(c.simple_query("UPDATE t SET id = 99 WHERE id = 2").await, "0A000")?;
    ensure!(
        direct.query_opt("SELECT 1 FROM nokey", &[]).await?.is_none(),
        "rejected insert ran"
    );

    let shown = f.show_capture().await?;
    ensure!(
        shown.get("unsafe.ddl").is_some_and(|v| v.starts_with("1 seen")),
        "{shown:?}"
    );
    ensure!(shown.get("late_logged").map(String::as_str) == Some("0"), "{shown:?}");

    let wal = oracle.drain(&direct).await?;
    oracle.drop_slot(&direct).await?;
    let truth = written_keys(&wal, key_columns);
    f.admin.simple_query("CAPTURE STOP").await?;
    let logged = logged_keys(&f.log_path())?;
    let missing: Vec<_> = truth.difference(&logged).collect();
    ensure!(
        missing.is_empty(),
        "keys written but not logged: {missing:?}\nlogged: {logged:?}"
    );
    for k in [
        key("public.t", &["11"]),
        key("public.t", &["30"]),
        key("public.t", &["31"]),
        key("public.t", &["40"]),
    ] {
        ensure!(!logged.contains(&k), "rolled-back key logged: {k:?}");
    }
    ensure!(logged.contains(&key("public.pair", &["1", "it's"])), "{logged:?}");
    // The cascade deleted no child here; the parent inserts are logged.
    ensure!(logged.contains(&key("public.parent", &["2"])), "{logged:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_is_captured_and_invisible() -> Result<()> {
    let f = Fixture::start().await?;
    let direct = f.cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    // Prepared before capture starts: re-prepared by the proxy.
    let c = f.proxy.connect("postgres").await?;
    let early = c.prepare("INSERT INTO t VALUES ($1, $2)").await?;
    let early_ret = c.prepare("UPDATE t SET v = $2 WHERE id = $1 RETURNING v, id").await?;
    let oracle = WalOracle::create(&direct, "capture_ext").await?;
    f.capture_start().await?;

    // tokio-postgres asks for binary results: its own columns still decode.
    let row = c
        .query_one("INSERT INTO t VALUES ($1, $2) RETURNING id, v", &[&1i32, &"a"])
        .await?;
    ensure!(row.len() == 2 && row.get::<_, i32>(0) == 1 && row.get::<_, String>(1) == "a");
    let n = c.execute("INSERT INTO t VALUES ($1, $2)", &[&2i32, &"b"]).await?;
    ensure!(n == 1);
    let stmt = c.prepare("UPDATE t SET v = $1 WHERE id = $2").await?;
    ensure!(
        stmt.columns().is_empty(),
        "Describe must answer NoData: {:?}",
        stmt.columns()
    );
    ensure!(c.execute(&stmt, &[&"B", &2i32]).await? == 1);
    ensure!(c.execute(&early, &[&3i32, &"c"]).await? == 1);
    let r = c.query_one(&early_ret, &[&3i32, &"C"]).await?;
    ensure!(r.len() == 2 && r.get::<_, String>(0) == "C" && r.get::<_, i32>(1) == 3);
    // A transaction with a savepoint.
    let mut c2 = f.proxy.connect("postgres").await?;
    let mut tx = c2.transaction().await?;
    tx.execute("INSERT INTO pair VALUES ($1, $2, 0)", &[&5i32, &"five"])
        .await?;
    let sp = tx.savepoint("sp").await?;
    sp.execute("INSERT INTO t VALUES ($1, 'gone')", &[&50i32]).await?;
    sp.rollback().await?;
    tx.execute("DELETE FROM t WHERE id = $1", &[&1i32]).await?;
    tx.commit().await?;
    // Pipelined autocommit writes.
    let (p60, p61) = (60i32, 61i32);
    let (x60, x61): (
        [&(dyn tokio_postgres::types::ToSql + Sync); 1],
        [&(dyn tokio_postgres::types::ToSql + Sync); 1],
    ) = ([&p60], [&p61]);
    let (a, b) = tokio::join!(
        c.execute("INSERT INTO t VALUES ($1, 'p')", &x60),
        c.execute("INSERT INTO t VALUES ($1, 'q')", &x61)
    );
    ensure!(a? == 1 && b? == 1);
    // Rejected through the extended protocol too; the session goes on.
    expect_sqlstate(c.execute("INSERT INTO nokey VALUES ($1)", &[&1i32]).await, "0A000")?;
    ensure!(c.query_one("SELECT count(*) FROM t", &[]).await?.get::<_, i64>(0) == 4);

    let wal = oracle.drain(&direct).await?;
    oracle.drop_slot(&direct).await?;
    let truth = written_keys(&wal, key_columns);
    let shown = f.show_capture().await?;
    ensure!(shown.get("late_logged").map(String::as_str) == Some("0"), "{shown:?}");
    f.admin.simple_query("CAPTURE STOP").await?;
    // Statements spliced under the client's names are put back after STOP.
    c.batch_execute("SELECT 1").await?;
    let r = c.query_one(&early_ret, &[&3i32, &"D"]).await?;
    ensure!(r.len() == 2 && r.get::<_, String>(0) == "D");
    ensure!(c.execute(&stmt, &[&"E", &2i32]).await? == 1);
    let logged = logged_keys(&f.log_path())?;
    let missing: Vec<_> = truth.difference(&logged).collect();
    ensure!(
        missing.is_empty(),
        "keys written but not logged: {missing:?}\nlogged: {logged:?}"
    );
    ensure!(
        !logged.contains(&key("public.t", &["50"])),
        "rolled-back savepoint key logged"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_waits_for_transactions_older_than_capture() -> Result<()> {
    let f = Fixture::start().await?;
    let direct = f.cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let old = f.proxy.connect("postgres").await?;
    old.batch_execute("BEGIN; INSERT INTO t VALUES (1, 'old')").await?;
    f.admin.simple_query("CAPTURE START").await?;
    let shown = f.show_capture().await?;
    ensure!(
        shown.get("state").map(String::as_str) == Some("waiting for barrier"),
        "{shown:?}"
    );
    ensure!(
        shown.get("sessions_holding_barrier").map(String::as_str) == Some("1"),
        "{shown:?}"
    );
    // A bypassing session is listed.
    ensure!(
        shown.get("bypassing_sessions").is_some_and(|n| n != "0"),
        "the direct connection bypasses the proxy: {shown:?}"
    );
    old.batch_execute("COMMIT").await?;
    f.capture_start_wait_only().await?;
    Ok(())
}

impl Fixture {
    async fn capture_start_wait_only(&self) -> Result<()> {
        let deadline = Instant::now() + PROMPT;
        loop {
            let m = self.show_capture().await?;
            if m.get("state").map(String::as_str) == Some("on") {
                ensure!(m.get("barrier_at").is_some_and(|b| !b.is_empty()), "{m:?}");
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "barrier not reached: {m:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_keys_are_read_from_the_data() -> Result<()> {
    use futures_util::SinkExt;
    let f = Fixture::start().await?;
    let direct = f.cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    direct
        .batch_execute("CREATE TABLE serial_t (id serial PRIMARY KEY, v text)")
        .await?;
    let oracle = WalOracle::create(&direct, "capture_copy").await?;
    f.capture_start().await?;
    let c = f.proxy.connect("postgres").await?;
    // Autocommit COPY in text format, rows split across CopyData messages.
    let sink = within(PROMPT, "copy_in text", c.copy_in("COPY pair (n, a, b) FROM STDIN")).await??;
    futures_util::pin_mut!(sink);
    within(
        PROMPT,
        "send 1",
        sink.send(bytes::Bytes::from_static(b"0\t1\ttab\\there\n0\t2\t")),
    )
    .await??;
    sink.send(bytes::Bytes::from_static(b"two\n0\t3\tthree\n")).await?;
    ensure!(within(PROMPT, "finish text", sink.finish()).await?? == 3);
    // CSV with a header inside an explicit transaction.
    within(PROMPT, "begin", c.batch_execute("BEGIN")).await??;
    let sink = within(
        PROMPT,
        "copy_in csv",
        c.copy_in("COPY t (id, v) FROM STDIN WITH (FORMAT csv, HEADER)"),
    )
    .await??;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"id,v\n500,\"a,\"\"b\"\"\"\n501,\n"))
        .await?;
    ensure!(within(PROMPT, "finish csv", sink.finish()).await?? == 2);
    within(PROMPT, "commit", c.batch_execute("COMMIT")).await??;
    // A key the data does not carry (serial default) cannot be captured.
    let r = within(
        PROMPT,
        "copy_in serial",
        c.copy_in::<_, bytes::Bytes>("COPY serial_t (v) FROM STDIN"),
    )
    .await?;
    expect_sqlstate(r.map(|_| ()), "0A000")?;

    let wal = oracle.drain(&direct).await?;
    oracle.drop_slot(&direct).await?;
    let truth = written_keys(&wal, key_columns);
    f.admin.simple_query("CAPTURE STOP").await?;
    let logged = logged_keys(&f.log_path())?;
    let missing: Vec<_> = truth.difference(&logged).collect();
    ensure!(
        missing.is_empty(),
        "keys written but not logged: {missing:?}\nlogged: {logged:?}"
    );
    ensure!(logged.contains(&key("public.pair", &["1", "tab\there"])), "{logged:?}");
    ensure!(logged.contains(&key("public.t", &["500"])), "{logged:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_starts_again_while_sessions_that_wrote_stay_connected() -> Result<()> {
    let f = Fixture::start().await?;
    let c = f.proxy.connect("postgres").await?;
    c.batch_execute("CREATE TABLE again (id int PRIMARY KEY)").await?;
    f.capture_start().await?;
    c.batch_execute("INSERT INTO again VALUES (1)").await?;
    f.admin.simple_query("CAPTURE STOP").await.context("CAPTURE STOP")?;
    // The session lets go of the stopped capture at its next boundaries.
    c.batch_execute("SELECT 1").await?;
    c.batch_execute("SELECT 2").await?;
    f.capture_start().await?;
    c.batch_execute("INSERT INTO again VALUES (2)").await?;
    let logged = logged_keys(&f.log_path())?;
    for id in ["1", "2"] {
        ensure!(
            logged.contains(&key("public.again", &[id])),
            "key {id} not logged: {logged:?}"
        );
    }
    Ok(())
}

/// Settled markers in the log, by the commit they settle.
fn settled_markers(dir: &std::path::Path) -> Result<Vec<u64>> {
    use switchyard_replay::{LogReader, Lsn, Marker, Record};
    let mut reader = LogReader::open(dir, Lsn::FIRST)?;
    let mut out = Vec::new();
    while let Some(entry) = reader.next()? {
        if let Record::Marker(Marker::Settled { commit }) = entry.record {
            out.push(commit.0);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_settles_only_once_it_is_visible() -> Result<()> {
    use crate::support::{query_msg, RawConn};
    let f = Fixture::start().await?;
    let direct = f.cluster.connect("postgres").await?;
    direct.batch_execute("CREATE TABLE settle (id int PRIMARY KEY)").await?;
    f.capture_start().await?;
    // One pipeline: a failed statement inside the transaction answers with
    // a failed-transaction ReadyForQuery well before the COMMIT runs.
    let mut raw = RawConn::start(f.proxy.addr(), f.cluster.superuser(), "postgres").await?;
    let mut pipeline = Vec::new();
    for sql in [
        "BEGIN",
        "INSERT INTO settle VALUES (1)",
        "SAVEPOINT s",
        "SELECT 1/0",
        "ROLLBACK TO s",
        "SELECT pg_sleep(1)",
        "COMMIT",
    ] {
        pipeline.extend(query_msg(sql));
    }
    raw.send(&pipeline).await?;
    let log = f.log_path();
    let watch = async {
        loop {
            let markers = settled_markers(&log)?;
            let visible: i64 = direct.query_one("SELECT count(*) FROM settle", &[]).await?.get(0);
            ensure!(
                markers.is_empty() || visible == 1,
                "a Settled marker {markers:?} is in the log while the commit is not visible"
            );
            if visible == 1 {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within(Duration::from_secs(10), "the commit", watch).await??;
    for _ in 0..7 {
        raw.until_ready().await?;
    }
    let deadline = Instant::now() + PROMPT;
    while settled_markers(&log)?.is_empty() {
        ensure!(Instant::now() < deadline, "the commit never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
