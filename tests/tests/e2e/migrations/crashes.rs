//! The replayer crashed mid-batch, and races between workers and between
//! capture and replay, staged by holding a worker's commit.

use super::*;

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
                    Err(ReplayError::Db { error, .. }) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => {
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
        // Catch a batch in flight where one is: a target connection of the
        // replayer inside its transaction (bounded wait).
        for _ in 0..100 {
            let busy: i64 = target
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND datname = 'target' AND xact_start IS NOT NULL",
                    &[&REPLAYER_APP],
                )
                .await?
                .get(0);
            if busy > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The connections end first, as when the replayer's process dies:
        // the server rolls back the open transactions. Then the task goes.
        mid_transaction += crash_connections(&target).await?;
        replay.task.abort();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_client_left_mid_commit_waits_for_its_backend() -> Result<()> {
    use crate::support::{query_msg, RawConn};
    let (f, source) = start("CREATE TABLE t (id int PRIMARY KEY)", "").await?;
    let target = clone_and_migrate(&f, "").await?;
    let plan = resolve(&source, &target, "").await?;
    // COMMITs on the source wait for a standby that does not exist; the
    // replayer's own commits on the target must not.
    source
        .batch_execute("ALTER DATABASE target SET synchronous_commit = local")
        .await?;
    source
        .batch_execute("ALTER DATABASE postgres SET synchronous_commit = on")
        .await?;
    let replay = Replay::spawn(&f, &plan, 2, 100);
    source
        .batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        .await?;
    source.batch_execute("SELECT pg_reload_conf()").await?;
    until("the setting is in force", || async {
        let c = f.cluster.connect("postgres").await?;
        Ok(c.query_one("SHOW synchronous_standby_names", &[])
            .await?
            .get::<_, String>(0)
            == "nobody")
    })
    .await?;
    // A client sends an autocommit INSERT and leaves while its COMMIT waits:
    // the proxy never sees the answer, so no Settled marker comes.
    let mut raw = RawConn::start(f.proxy.addr(), f.cluster.superuser(), "postgres").await?;
    raw.send(&query_msg("INSERT INTO t VALUES (1)")).await?;
    until("the commit is logged", || async {
        Ok(f.show_capture().await?.get("transactions_captured").map(String::as_str) == Some("1"))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let visible: i64 = source.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    ensure!(visible == 0, "the COMMIT did not wait for the standby");
    drop(raw);
    // Well past the settle timeout: the backend is still in that COMMIT, so
    // the replayer must not have read the (still invisible) row as absent
    // and moved on.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let report = replay.status.report();
    ensure!(
        report.commits_pending >= 1,
        "the commit was taken as settled while its COMMIT still waited: {report:?}"
    );
    source
        .batch_execute("ALTER SYSTEM RESET synchronous_standby_names")
        .await?;
    source.batch_execute("SELECT pg_reload_conf()").await?;
    until("the row reaches the target", || async {
        Ok(target.query_one("SELECT count(*) FROM t", &[]).await?.get::<_, i64>(0) == 1)
    })
    .await?;
    replay.drain(&f).await?;
    compare(
        &source,
        &target,
        &[("SELECT id FROM t ORDER BY id", "SELECT id FROM t ORDER BY id")],
    )
    .await
}
