//! Moves under load: 100 move orders back to back while pgbench (simple
//! and prepared protocol) or eight clients of explicit transactions run
//! through the proxy. No client may see an error, and the database must
//! show every transaction exactly once: a move happens between requests,
//! never loses one and never sends one twice.

use super::{move_within, start, wait_sessions, DB};
use crate::support::{admin, within};
use anyhow::{ensure, Context, Result};
use futures_util::future::join_all;
use std::time::{Duration, Instant};
use switchyard_proxy::session::route::MoveReport;
use switchyard_tests::{init_tracing, Cluster, TestProxy};

/// Move orders per test.
const MOVES: usize = 100;

/// How long one order waits for the sessions: they are at a boundary
/// every few milliseconds.
const MOVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the orders may take together.
const MOVES_LIMIT: Duration = Duration::from_secs(90);

/// Client sessions the load runs on.
const CLIENTS: usize = 8;

/// Transactions per counter client.
const TXS: i32 = 300;

/// How long a counter client keeps each transaction open.
const HOLD: Duration = Duration::from_millis(25);

/// Gives `MOVES` orders one after the other; each report with the instant
/// it came back.
async fn move_repeatedly(proxy: &TestProxy) -> Result<Vec<(MoveReport, Instant)>> {
    within(MOVES_LIMIT, "the move orders", async {
        let mut out = Vec::with_capacity(MOVES);
        for i in 0..MOVES {
            let report = move_within(proxy, MOVE_TIMEOUT)
                .await
                .with_context(|| format!("move order {i}"))?;
            out.push((report, Instant::now()));
        }
        Ok(out)
    })
    .await?
}

/// Prints what the orders did and checks that none failed or pinned a
/// session (nor closed one, unless `clients_end` says the clients end
/// their sessions while orders run), and that most of those given while
/// all `CLIENTS` sessions were busy (before `busy_until`) moved every
/// session.
fn check_moves(what: &str, moves: &[(MoveReport, Instant)], busy_until: Instant, clients_end: bool) -> Result<()> {
    let under_load: Vec<&MoveReport> = moves
        .iter()
        .filter(|(r, at)| *at <= busy_until && r.sessions == CLIENTS)
        .map(|(r, _)| r)
        .collect();
    let all_moved = under_load.iter().filter(|r| r.moved == r.sessions).count();
    let sum = |f: fn(&MoveReport) -> usize| moves.iter().map(|(r, _)| f(r)).sum::<usize>();
    let mut move_ms: Vec<f64> = moves.iter().map(|(r, _)| r.move_ms).collect();
    move_ms.sort_by(f64::total_cmp);
    let mut open_ms: Vec<f64> = moves.iter().map(|(r, _)| r.open_ms).collect();
    open_ms.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: usize| v.get((v.len() * p / 100).min(v.len().saturating_sub(1))).copied();
    eprintln!(
        "{what}: {} orders, {} while all {CLIENTS} sessions were busy, {all_moved} of those moved every session; \
         over all orders moved {} waiting {} pinned {} closed {} failed {}; \
         open_ms p50 {:?} max {:?}; move_ms p50 {:?} p90 {:?} max {:?}",
        moves.len(),
        under_load.len(),
        sum(|r| r.moved),
        sum(|r| r.waiting),
        sum(|r| r.pinned),
        sum(|r| r.closed),
        sum(|r| r.failed),
        pct(&open_ms, 50),
        open_ms.last(),
        pct(&move_ms, 50),
        pct(&move_ms, 90),
        move_ms.last(),
    );
    let bad: Vec<&MoveReport> = moves
        .iter()
        .map(|(r, _)| r)
        .filter(|r| r.failed > 0 || (r.closed > 0 && !clients_end) || r.pinned > 0)
        .collect();
    ensure!(
        bad.is_empty(),
        "{what}: orders that failed, closed or pinned sessions: {bad:?}"
    );
    // Each order opens eight backends, which takes PostgreSQL tens of
    // milliseconds on a busy machine, so not all orders fit in pgbench's
    // ten seconds; a quarter of them is still a hundred session moves
    // under load.
    ensure!(
        under_load.len() * 4 >= MOVES,
        "{what}: only {} of {MOVES} orders ran while the load did",
        under_load.len()
    );
    ensure!(
        all_moved * 2 > under_load.len(),
        "{what}: only {all_moved} of {} orders under load moved every session",
        under_load.len()
    );
    Ok(())
}

/// The number after `prefix` on a line of pgbench's report.
fn pgbench_figure(report: &str, prefix: &str) -> Result<u64> {
    let line = report
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .with_context(|| format!("no {prefix:?} in pgbench's report:\n{report}"))?;
    let n = line.split_whitespace().next().unwrap_or_default();
    n.parse().with_context(|| format!("{prefix:?} {line:?}"))
}

/// pgbench's tpcb-like script for 10 s on `CLIENTS` connections with
/// `-M mode`, while the orders run.
async fn pgbench_through_moves(mode: &str) -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder().database("bench").start().await?;
    let init = cluster.pgbench("bench", &["-i", "-q", "-s", "1"]).await?;
    ensure!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let proxy = TestProxy::start(&cluster).await?;
    let admin = admin(&proxy).await?;
    let endpoint = proxy.endpoint();
    let clients = CLIENTS.to_string();
    let args = ["-n", "-c", &clients, "-j", "2", "-T", "10", "-M", mode];

    let bench = async {
        let out = within(Duration::from_secs(60), "pgbench", endpoint.pgbench("bench", &args)).await;
        (out, Instant::now())
    };
    let moves = async {
        wait_sessions(&admin, "bench", CLIENTS, Duration::from_secs(15)).await?;
        let moves = move_repeatedly(&proxy).await?;
        Ok::<_, anyhow::Error>(moves)
    };
    let ((out, finished), moves) = tokio::join!(bench, moves);
    let out = out??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let moves = moves?;
    let what = format!("pgbench -M {mode}");
    // pgbench runs until its end, which the orders may outlast: only the
    // orders before it count as under load. At its end it disconnects in
    // the middle of an order, which reports those sessions closed; a
    // session the proxy closed would show as an aborted client in
    // pgbench's report and exit status instead.
    let check = check_moves(&what, &moves, finished, true);

    ensure!(
        out.status.success(),
        "{what} exited {}:\n{stdout}\n{stderr}",
        out.status
    );
    let failed = pgbench_figure(&stdout, "number of failed transactions:")?;
    let processed = pgbench_figure(&stdout, "number of transactions actually processed:")?;
    eprintln!("{what}: {processed} transactions, {failed} failed");
    ensure!(failed == 0, "{what}: {failed} failed transactions:\n{stdout}\n{stderr}");
    ensure!(processed > 0, "{what} processed nothing:\n{stdout}");

    // Every transaction wrote one history row and added its delta to one
    // account, teller and branch: none lost, none applied twice.
    let direct = cluster.connect("bench").await?;
    let row = direct
        .query_one(
            "select (select count(*) from pgbench_history),
                    (select coalesce(sum(delta), 0) from pgbench_history)::int8,
                    (select sum(abalance) from pgbench_accounts)::int8,
                    (select sum(tbalance) from pgbench_tellers)::int8,
                    (select sum(bbalance) from pgbench_branches)::int8",
            &[],
        )
        .await?;
    let (history, delta): (i64, i64) = (row.get(0), row.get(1));
    let balances: [i64; 3] = [row.get(2), row.get(3), row.get(4)];
    assert_eq!(history as u64, processed, "{what}: history rows vs transactions");
    assert_eq!(balances, [delta; 3], "{what}: account, teller, branch sums vs history");
    check
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_simple_protocol_through_100_moves() -> Result<()> {
    pgbench_through_moves("simple").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_statements_through_100_moves() -> Result<()> {
    pgbench_through_moves("prepared").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_see_every_transaction_exactly_once_through_100_moves() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start().await?;
    let direct = cluster.connect(DB).await?;
    direct
        .batch_execute(
            "create table counters (id int primary key, n int not null);
             insert into counters select g, 0 from generate_series(1, 8) g",
        )
        .await?;
    let admin = admin(&proxy).await?;
    let mut clients = Vec::new();
    for me in 1..=CLIENTS as i32 {
        let client = proxy.connect(DB).await?;
        let bump = client.prepare("UPDATE counters SET n = n + 1 WHERE id = $1").await?;
        clients.push((me, client, bump));
    }
    wait_sessions(&admin, DB, CLIENTS, crate::support::PROMPT).await?;

    let work = join_all(clients.into_iter().map(|(me, mut client, bump)| async move {
        for i in 0..TXS {
            let tx = client
                .transaction()
                .await
                .with_context(|| format!("client {me}, transaction {i}: BEGIN"))?;
            let n = tx
                .execute(&bump, &[&me])
                .await
                .with_context(|| format!("client {me}, transaction {i}: UPDATE"))?;
            ensure!(n == 1, "client {me}, transaction {i}: UPDATE touched {n} rows");
            // Held open a moment: orders arrive while transactions are
            // open and must wait for their COMMIT, and the transactions
            // outlast the orders (each opens eight backends).
            tokio::time::sleep(HOLD).await;
            tx.commit()
                .await
                .with_context(|| format!("client {me}, transaction {i}: COMMIT"))?;
        }
        // The client stays connected until every order is done.
        Ok::<_, anyhow::Error>((client, Instant::now()))
    }));
    let (done, moves) = tokio::join!(
        within(Duration::from_secs(120), "the clients", work),
        move_repeatedly(&proxy)
    );
    let mut busy_until = None;
    let mut kept = Vec::new();
    for result in done? {
        let (client, at) = result?;
        busy_until = Some(busy_until.map_or(at, |b: Instant| b.min(at)));
        kept.push(client);
    }
    let moves = moves?;
    let check = check_moves("counters", &moves, busy_until.context("no clients")?, false);

    let counts: Vec<(i32, i32)> = direct
        .query("select id, n from counters order by id", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(i32, i32)> = (1..=CLIENTS as i32).map(|id| (id, TXS)).collect();
    assert_eq!(counts, want, "a transaction was lost or applied twice");

    let rows = super::sessions_on(&admin, DB).await?;
    let moved: Vec<u64> = rows.iter().map(|r| r["moves"].parse().unwrap_or(0)).collect();
    eprintln!("counters: moves per session {moved:?}");
    ensure!(
        moved.len() == CLIENTS && moved.iter().all(|&m| m > 0),
        "every session should have moved: {rows:?}"
    );
    drop(kept);
    check
}
