//! The cutover scenario's load generator: pgbench's TPC-B-like transaction
//! (the statements of its built-in script, one simple query each, so that it
//! also runs through PgBouncer in transaction mode) from tokio-postgres
//! clients on a runtime of their own, at a fixed rate or as fast as they go.
//! Every transaction is recorded: when it was due, when it started and
//! ended, how it ended, and the tag it wrote into `pgbench_history.filler`,
//! so that the committed ones can be looked for on the target afterwards.

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_tests::Endpoint;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// Accounts, tellers and branches per unit of scale, as `pgbench -i` makes them.
const ACCOUNTS_PER_SCALE: u32 = 100_000;
const TELLERS_PER_SCALE: u32 = 10;

/// How long a client whose connection broke keeps trying to reconnect
/// before it gives up for the rest of the run.
const RECONNECT_FOR: Duration = Duration::from_secs(10);

/// Pause between reconnection attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// Error messages kept for the report; the rest are only counted.
const KEPT_ERRORS: usize = 20;

/// What one run of the generator does.
#[derive(Debug, Clone)]
pub(super) struct Spec {
    /// Client sessions, each with its own connection.
    pub(super) clients: usize,
    /// Transactions per second over all clients; `None`: as fast as they go.
    pub(super) rate: Option<u32>,
    /// How long it runs.
    pub(super) duration: Duration,
    /// pgbench's scale factor of the tables.
    pub(super) scale: u32,
    /// Seeds the clients' random keys, so that both sides of a comparison
    /// run the same transactions.
    pub(super) seed: u64,
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Its COMMIT was answered with success.
    Committed,
    /// A statement failed; the transaction was rolled back.
    Failed,
    /// The connection broke after COMMIT was sent and before its answer:
    /// it may or may not have committed.
    Unknown,
}

/// One transaction as its client saw it. Times are microseconds since the
/// run's zero instant.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tx {
    pub(super) client: u16,
    pub(super) seq: u32,
    /// When the schedule wanted it to start (its start, without a rate).
    pub(super) due_us: u64,
    /// When its BEGIN was sent: later than due when the client was still
    /// busy with an earlier transaction.
    pub(super) start_us: u64,
    pub(super) end_us: u64,
    pub(super) outcome: Outcome,
    /// When each statement of the script was answered, µs after the
    /// transaction's start (0 for one not run): where a held transaction
    /// spent its time.
    pub(super) answered_us: [u32; STATEMENTS],
}

/// Statements of the script: BEGIN, its five statements, END.
pub(super) const STATEMENTS: usize = 7;

/// Their names, for the per-transaction log.
pub(super) const STATEMENT_NAMES: [&str; STATEMENTS] = [
    "begin",
    "update_accounts",
    "select_accounts",
    "update_tellers",
    "update_branches",
    "insert_history",
    "commit",
];

impl Tx {
    /// From due to end: what a client on a schedule waits, queueing included
    /// (pgbench's latency under `-R` is measured the same way).
    pub(super) fn latency_us(&self) -> u64 {
        self.end_us.saturating_sub(self.due_us)
    }

    /// From BEGIN sent to COMMIT answered: the transaction itself, without
    /// the queueing behind the client's earlier ones.
    pub(super) fn service_us(&self) -> u64 {
        self.end_us.saturating_sub(self.start_us)
    }
}

/// The tag transaction `seq` of `client` writes into `pgbench_history.filler`.
pub(super) fn tag(client: u16, seq: u32) -> String {
    format!("{client}-{seq}")
}

/// Reads a tag back; `None` for a filler the generator did not write.
pub(super) fn parse_tag(filler: &str) -> Option<(u16, u32)> {
    let (client, seq) = filler.trim().split_once('-')?;
    Some((client.parse().ok()?, seq.parse().ok()?))
}

/// Everything one run recorded.
#[derive(Debug, Default)]
pub(super) struct Recorded {
    /// Every transaction, in no particular order.
    pub(super) txs: Vec<Tx>,
    /// Failed statements and broken connections.
    pub(super) errors: u64,
    /// The first few error messages.
    pub(super) error_messages: Vec<String>,
    /// Connections opened again after one broke.
    pub(super) reconnects: u64,
    /// Clients that gave up before the end (their connection stayed broken).
    pub(super) clients_lost: u64,
}

/// The generator's multi-threaded runtime, apart from the driver's thread so
/// that the console commands the driver times never wait behind the load.
/// Shut down without waiting when dropped.
pub(super) struct LoadRuntime(Option<tokio::runtime::Runtime>);

impl LoadRuntime {
    pub(super) fn new(threads: usize) -> Result<LoadRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("load")
            .enable_all()
            .build()
            .context("building the load generator's runtime")?;
        Ok(LoadRuntime(Some(runtime)))
    }

    /// Opens every client's connection to `endpoint` (database `db`), then
    /// starts them all at `zero`'s next instant; the handle yields what they
    /// recorded. Fails if a first connection cannot be opened.
    pub(super) async fn start(&self, spec: &Spec, endpoint: &Endpoint, db: &str) -> Result<Running> {
        let runtime = self.0.as_ref().context("the load runtime is shut down")?;
        let config = Arc::new(endpoint.pg_config(db));
        let mut clients = Vec::with_capacity(spec.clients);
        for i in 0..spec.clients {
            let config = Arc::clone(&config);
            let client = runtime
                .spawn(async move { connect(&config).await })
                .await
                .context("the connecting task failed")?
                .with_context(|| format!("opening load client {i} at {}:{}", endpoint.host, endpoint.port))?;
            clients.push(client);
        }
        let zero = Instant::now();
        let mut tasks = Vec::with_capacity(spec.clients);
        for (i, client) in clients.into_iter().enumerate() {
            let job = ClientJob {
                index: u16::try_from(i).context("too many clients")?,
                spec: spec.clone(),
                config: Arc::clone(&config),
                zero,
            };
            tasks.push(runtime.spawn(job.run(client)));
        }
        Ok(Running { zero, tasks })
    }
}

impl Drop for LoadRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which the driver's runtime forbids.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A load under way.
pub(super) struct Running {
    /// The instant every recorded time counts from.
    pub(super) zero: Instant,
    tasks: Vec<JoinHandle<ClientRecord>>,
}

impl Running {
    /// Microseconds since the run's zero.
    pub(super) fn now_us(&self) -> u64 {
        micros(self.zero.elapsed())
    }

    /// The Unix time of the run's zero, µs.
    pub(super) fn zero_unix_us(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        micros(now.saturating_sub(self.zero.elapsed()))
    }

    /// Waits for every client to finish its schedule; an error if one is
    /// still stuck `grace` after the schedule's end (a held gate that never
    /// reopened, say).
    pub(super) async fn finish(self, duration: Duration, grace: Duration) -> Result<Recorded> {
        let deadline = self.zero + duration + grace;
        let mut all = Recorded::default();
        for task in self.tasks {
            let r = tokio::time::timeout_at(deadline.into(), task)
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "a load client was still waiting for an answer {} s after the run's end",
                        grace.as_secs()
                    )
                })?
                .context("a load client panicked")?;
            all.txs.extend(r.txs);
            all.errors += r.errors;
            all.reconnects += r.reconnects;
            all.clients_lost += u64::from(r.lost);
            for m in r.error_messages {
                if all.error_messages.len() < KEPT_ERRORS && !all.error_messages.contains(&m) {
                    all.error_messages.push(m);
                }
            }
        }
        Ok(all)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// What one client recorded.
#[derive(Default)]
struct ClientRecord {
    txs: Vec<Tx>,
    errors: u64,
    error_messages: Vec<String>,
    reconnects: u64,
    lost: bool,
}

impl ClientRecord {
    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_messages.len() < KEPT_ERRORS {
            self.error_messages.push(message);
        }
    }
}

/// One client's share of the run.
struct ClientJob {
    index: u16,
    spec: Spec,
    config: Arc<tokio_postgres::Config>,
    zero: Instant,
}

impl ClientJob {
    /// Runs transactions until the run's end. With a rate, each client
    /// takes every n-th slot of an evenly spaced schedule (offset by its
    /// index), and a transaction due while the previous one still runs
    /// starts as soon as it ends, late, as pgbench does under `-R`.
    async fn run(self, mut client: Client) -> ClientRecord {
        let mut record = ClientRecord::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.spec.seed ^ (u64::from(self.index) << 32));
        let end = self.zero + self.spec.duration;
        let interval = self
            .spec
            .rate
            .map(|r| Duration::from_secs_f64(self.spec.clients as f64 / f64::from(r.max(1))));
        let offset = interval.map(|iv| iv.mul_f64(f64::from(self.index) / self.spec.clients as f64));
        let mut seq: u32 = 0;
        loop {
            let due = match (interval, offset) {
                (Some(iv), Some(off)) => self.zero + off + iv * seq,
                _ => Instant::now(),
            };
            // A client behind its schedule stops at the end too, as pgbench
            // -T does: what it did not get to shows in the achieved rate.
            if due >= end || Instant::now() >= end {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let started = Instant::now();
            let start_us = micros(started - self.zero);
            let keys = Keys::draw(&mut rng, self.spec.scale);
            let mut answered_us = [0u32; STATEMENTS];
            let outcome = match transaction(&client, &keys, &tag(self.index, seq), started, &mut answered_us).await {
                Ok(()) => Outcome::Committed,
                Err(e) => {
                    record.error(e.message);
                    e.outcome
                }
            };
            record.txs.push(Tx {
                client: self.index,
                seq,
                due_us: micros(due - self.zero),
                start_us,
                end_us: micros(self.zero.elapsed()),
                outcome,
                answered_us,
            });
            seq += 1;
            if client.is_closed() {
                match self.reconnect(end).await {
                    Some(c) => {
                        client = c;
                        record.reconnects += 1;
                    }
                    None => {
                        record.lost = true;
                        break;
                    }
                }
            }
        }
        record
    }

    /// A new connection, tried until it opens, `RECONNECT_FOR` passes or
    /// the run ends.
    async fn reconnect(&self, end: Instant) -> Option<Client> {
        let started = Instant::now();
        while started.elapsed() < RECONNECT_FOR && Instant::now() < end {
            if let Ok(c) = connect(&self.config).await {
                return Some(c);
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
        None
    }
}

/// The random values of one TPC-B-like transaction, drawn as pgbench's
/// built-in script draws them.
struct Keys {
    aid: u32,
    bid: u32,
    tid: u32,
    delta: i32,
}

impl Keys {
    fn draw(rng: &mut impl Rng, scale: u32) -> Keys {
        let scale = scale.max(1);
        Keys {
            aid: rng.random_range(1..=ACCOUNTS_PER_SCALE * scale),
            bid: rng.random_range(1..=scale),
            tid: rng.random_range(1..=TELLERS_PER_SCALE * scale),
            delta: rng.random_range(-5000..=5000),
        }
    }
}

/// A failed transaction: how it ended and why.
struct TxError {
    outcome: Outcome,
    message: String,
}

/// pgbench's TPC-B-like script, statement by statement, with the tag in
/// the history row's filler. On a failure before COMMIT the transaction is
/// rolled back; a connection lost while COMMIT was outstanding leaves the
/// outcome unknown. Each statement's answer is timed into `answered`, µs
/// after `started`.
async fn transaction(
    client: &Client,
    k: &Keys,
    tag: &str,
    started: Instant,
    answered: &mut [u32; STATEMENTS],
) -> Result<(), TxError> {
    let body = [
        "BEGIN".to_owned(),
        format!(
            "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {}",
            k.delta, k.aid
        ),
        format!("SELECT abalance FROM pgbench_accounts WHERE aid = {}", k.aid),
        format!(
            "UPDATE pgbench_tellers SET tbalance = tbalance + {} WHERE tid = {}",
            k.delta, k.tid
        ),
        format!(
            "UPDATE pgbench_branches SET bbalance = bbalance + {} WHERE bid = {}",
            k.delta, k.bid
        ),
        format!(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) \
             VALUES ({}, {}, {}, {}, CURRENT_TIMESTAMP, '{tag}')",
            k.tid, k.bid, k.aid, k.delta
        ),
    ];
    let since = |at: Instant| u32::try_from(micros(at - started)).unwrap_or(u32::MAX);
    for (i, sql) in body.iter().enumerate() {
        let result = client.simple_query(sql).await;
        answered[i] = since(Instant::now());
        if let Err(e) = result {
            if !client.is_closed() {
                let _ = client.simple_query("ROLLBACK").await;
            }
            return Err(TxError {
                outcome: Outcome::Failed,
                message: describe(&e, sql),
            });
        }
    }
    let result = client.simple_query("END").await;
    answered[STATEMENTS - 1] = since(Instant::now());
    match result {
        Ok(_) => Ok(()),
        Err(e) => Err(TxError {
            // A database error answered the COMMIT: it did not commit. No
            // answer at all: it may have.
            outcome: if e.as_db_error().is_some() {
                Outcome::Failed
            } else {
                Outcome::Unknown
            },
            message: describe(&e, "END"),
        }),
    }
}

/// An error as the report shows it: SQLSTATE and message, or the
/// connection-level error, with the statement's first word.
fn describe(e: &tokio_postgres::Error, sql: &str) -> String {
    let verb = sql.split_whitespace().next().unwrap_or("");
    match e.as_db_error() {
        Some(db) => format!("{verb}: {} {}", db.code().code(), db.message()),
        None => format!("{verb}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_read_back() {
        assert_eq!(parse_tag(&tag(7, 1234)), Some((7, 1234)));
        // pgbench_history.filler is char(22): read back blank-padded.
        assert_eq!(parse_tag("3-9                   "), Some((3, 9)));
        assert_eq!(parse_tag(""), None);
        assert_eq!(parse_tag("x-1"), None);
        assert!(tag(u16::MAX, u32::MAX).len() <= 22);
    }

    #[test]
    fn keys_stay_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let k = Keys::draw(&mut rng, 2);
            assert!((1..=200_000).contains(&k.aid));
            assert!((1..=2).contains(&k.bid));
            assert!((1..=20).contains(&k.tid));
            assert!((-5000..=5000).contains(&k.delta));
        }
    }
}
