//! The demo's application: tokio-postgres clients through the proxy on a
//! runtime of their own, each on an evenly spaced schedule. A client places
//! orders (an explicit transaction of two prepared statements), pays them
//! (a prepared autocommit UPDATE), ships them (an autocommit UPDATE in the
//! simple protocol), changes its customers' e-mail addresses (prepared,
//! autocommit) and reads order totals. Every transaction is recorded with
//! its times, its outcome and the rows it wrote, so that what a client saw
//! committed can be looked for on the target afterwards.
//!
//! The statements cast their parameters and the id they return
//! (`$1::bigint`, `RETURNING id::bigint`): the migration widens
//! `orders.id`, and a prepared statement whose types changed would fail
//! once on the target (PostgreSQL's "cached plan must not change result
//! type"), as it would after the same DDL on one server.

use super::shop::{CUSTOMERS, PRODUCTS};
use anyhow::{anyhow, Context, Result};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_tests::Endpoint;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Statement};

/// The longest a load runs, whatever else happens (an interactive demo
/// left waiting, say).
const MAX_RUN: Duration = Duration::from_secs(3600);

/// Error messages kept for the report; the rest are only counted.
const KEPT_ERRORS: usize = 10;

/// What the clients do.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spec {
    pub(super) clients: usize,
    /// Transactions per second over all clients.
    pub(super) rate: u32,
}

/// The kinds of transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    PlaceOrder,
    Pay,
    Ship,
    ChangeEmail,
    Read,
}

/// A row a transaction wrote.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Written {
    Customer(i64),
    Product(i64),
    Order(i64),
}

/// What a committed transaction left, for the check.
#[derive(Debug, Clone)]
pub(super) enum Effect {
    /// A new order: its id, product, quantity and tag.
    Order {
        id: i64,
        customer: i32,
        product: i32,
        quantity: i32,
        tag: String,
    },
    /// An order's status set.
    Status { id: i64, status: &'static str },
    /// A customer's new address.
    Email { customer: i32, email: String },
    /// Nothing (a read).
    None,
}

/// One transaction as its client saw it; times in µs since the load's zero.
#[derive(Debug, Clone)]
pub(super) struct Tx {
    pub(super) kind: Kind,
    pub(super) due_us: u64,
    pub(super) start_us: u64,
    pub(super) end_us: u64,
    /// Its commit (or its statement) was answered with success.
    pub(super) committed: bool,
    pub(super) written: Vec<Written>,
    pub(super) effect: Effect,
}

impl Tx {
    /// From the schedule's due time to the answer.
    pub(super) fn latency_us(&self) -> u64 {
        self.end_us.saturating_sub(self.due_us)
    }

    /// From the first statement sent to the last answer.
    pub(super) fn service_us(&self) -> u64 {
        self.end_us.saturating_sub(self.start_us)
    }
}

/// Everything the clients recorded.
#[derive(Debug, Default)]
pub(super) struct Recorded {
    pub(super) txs: Vec<Tx>,
    pub(super) errors: u64,
    pub(super) error_messages: Vec<String>,
}

/// The clients' own multi-threaded runtime, so that the driver's console
/// commands and checks never delay them. Shut down without waiting.
pub(super) struct LoadRuntime(Option<tokio::runtime::Runtime>);

impl LoadRuntime {
    pub(super) fn new() -> Result<LoadRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("demo-load")
            .enable_all()
            .build()
            .context("building the load's runtime")?;
        Ok(LoadRuntime(Some(runtime)))
    }

    /// Connects every client to `db` at `endpoint` and prepares its
    /// statements, then starts them all.
    pub(super) async fn start(&self, spec: Spec, endpoint: &Endpoint, db: &str) -> Result<Running> {
        let runtime = self.0.as_ref().context("the load's runtime is shut down")?;
        let config = endpoint.pg_config(db);
        let mut sessions = Vec::with_capacity(spec.clients);
        for i in 0..spec.clients {
            let config = config.clone();
            let session = runtime
                .spawn(async move { Session::open(&config).await })
                .await
                .context("the connecting task failed")?
                .with_context(|| format!("opening client {i} at {}:{}", endpoint.host, endpoint.port))?;
            sessions.push(session);
        }
        let (stop, stopped) = watch::channel(false);
        let zero = Instant::now();
        let interval = Duration::from_secs_f64(spec.clients as f64 / f64::from(spec.rate.max(1)));
        let shared = Arc::new(Plan {
            clients: spec.clients,
            interval,
            zero,
        });
        let tasks = sessions
            .into_iter()
            .enumerate()
            .map(|(i, s)| runtime.spawn(client(i, s, Arc::clone(&shared), stopped.clone())))
            .collect();
        Ok(Running { zero, stop, tasks })
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

/// The schedule all clients share.
struct Plan {
    clients: usize,
    interval: Duration,
    zero: Instant,
}

/// A load under way.
pub(super) struct Running {
    /// The instant every recorded time counts from.
    pub(super) zero: Instant,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<ClientRecord>>,
}

impl Running {
    /// Tells the clients to stop after their current transaction and
    /// gathers what they recorded.
    pub(super) async fn finish(self) -> Result<Recorded> {
        let _ = self.stop.send(true);
        let mut all = Recorded::default();
        for task in self.tasks {
            let r = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .map_err(|_| anyhow!("a client was still waiting for an answer 60 s after it was told to stop"))?
                .context("a client panicked")?;
            all.txs.extend(r.txs);
            all.errors += r.errors;
            for m in r.error_messages {
                if all.error_messages.len() < KEPT_ERRORS && !all.error_messages.contains(&m) {
                    all.error_messages.push(m);
                }
            }
        }
        all.txs.sort_by_key(|t| t.due_us);
        Ok(all)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// One client's connection and prepared statements.
struct Session {
    client: Client,
    take_stock: Statement,
    insert_order: Statement,
    pay: Statement,
    change_email: Statement,
    totals: Statement,
}

impl Session {
    async fn open(config: &tokio_postgres::Config) -> Result<Session> {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Session {
            take_stock: client
                .prepare("UPDATE products SET stock = stock - $2::int WHERE id = $1::int RETURNING stock")
                .await?,
            insert_order: client
                .prepare(
                    "INSERT INTO orders (customer_id, product_id, quantity, amount, status, tag) \
                     SELECT $1::int, p.id, $3::int, p.price * $3::int, 'new', $4::text \
                     FROM products p WHERE p.id = $2::int RETURNING id::bigint",
                )
                .await?,
            pay: client
                .prepare("UPDATE orders SET status = 'paid' WHERE id = $1::bigint AND status = 'new'")
                .await?,
            change_email: client
                .prepare("UPDATE customers SET email = $2::text WHERE id = $1::int")
                .await?,
            totals: client
                .prepare("SELECT count(*), coalesce(sum(amount), 0)::text FROM orders WHERE customer_id = $1::int")
                .await?,
            client,
        })
    }
}

/// What one client recorded.
#[derive(Default)]
struct ClientRecord {
    txs: Vec<Tx>,
    errors: u64,
    error_messages: Vec<String>,
}

/// The orders a client placed, by what happens to them next.
#[derive(Default)]
struct Orders {
    new: Vec<i64>,
    paid: Vec<i64>,
}

/// Runs client `index` until told to stop (or [`MAX_RUN`] passes): every
/// n-th slot of the shared schedule, late when the previous transaction
/// ran long, as pgbench does under `-R`.
async fn client(index: usize, s: Session, plan: Arc<Plan>, mut stopped: watch::Receiver<bool>) -> ClientRecord {
    let mut record = ClientRecord::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xdec0 ^ index as u64);
    let mut orders = Orders::default();
    let offset = plan.interval.mul_f64(index as f64 / plan.clients as f64);
    for seq in 0u32.. {
        let due = plan.zero + offset + plan.interval * seq;
        if due.duration_since(plan.zero) >= MAX_RUN || *stopped.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stopped.changed() => break,
        }
        let start_us = micros(plan.zero.elapsed());
        let kind = pick(&mut rng, &orders);
        let tag = format!("c{index}-{seq}");
        let result = run(&s, kind, &mut rng, &mut orders, index, plan.clients, &tag).await;
        let end_us = micros(plan.zero.elapsed());
        let (committed, written, effect) = match result {
            Ok((written, effect)) => (true, written, effect),
            Err(e) => {
                record.errors += 1;
                if record.error_messages.len() < KEPT_ERRORS {
                    record.error_messages.push(format!("{kind:?}: {e}"));
                }
                (false, Vec::new(), Effect::None)
            }
        };
        record.txs.push(Tx {
            kind,
            due_us: micros(due - plan.zero),
            start_us,
            end_us,
            committed,
            written,
            effect,
        });
        if s.client.is_closed() {
            record.errors += 1;
            record
                .error_messages
                .push(format!("client {index}: the connection closed"));
            break;
        }
    }
    record
}

/// The next transaction: mostly new orders, then payments and shipments
/// of this client's own orders, e-mail changes and reads.
fn pick(rng: &mut impl Rng, orders: &Orders) -> Kind {
    match rng.random_range(0..100) {
        0..40 => Kind::PlaceOrder,
        40..60 if !orders.new.is_empty() => Kind::Pay,
        60..70 if !orders.paid.is_empty() => Kind::Ship,
        70..80 => Kind::ChangeEmail,
        _ => Kind::Read,
    }
}

/// One transaction; the rows it wrote and what it left.
async fn run(
    s: &Session,
    kind: Kind,
    rng: &mut impl Rng,
    orders: &mut Orders,
    index: usize,
    clients: usize,
    tag: &str,
) -> Result<(Vec<Written>, Effect)> {
    // Each client changes only its own customers' addresses, so the last
    // one it saw committed is the one the target must hold.
    let own_customers = (CUSTOMERS as usize - index).div_ceil(clients).max(1);
    let customer = (index + clients * rng.random_range(0..own_customers)) as i32 + 1;
    match kind {
        Kind::PlaceOrder => {
            let product = rng.random_range(1..=PRODUCTS);
            let quantity = rng.random_range(1..=5);
            s.client.batch_execute("BEGIN").await?;
            let body = async {
                s.client.query_one(&s.take_stock, &[&product, &quantity]).await?;
                let row = s
                    .client
                    .query_one(&s.insert_order, &[&customer, &product, &quantity, &tag])
                    .await?;
                row.try_get::<_, i64>(0)
            }
            .await;
            let id = match body {
                Ok(id) => id,
                Err(e) => {
                    let _ = s.client.batch_execute("ROLLBACK").await;
                    return Err(e.into());
                }
            };
            s.client.batch_execute("COMMIT").await?;
            orders.new.push(id);
            let effect = Effect::Order {
                id,
                customer,
                product,
                quantity,
                tag: tag.to_owned(),
            };
            Ok((vec![Written::Product(product.into()), Written::Order(id)], effect))
        }
        Kind::Pay => {
            let id = orders.new.swap_remove(rng.random_range(0..orders.new.len()));
            let n = s.client.execute(&s.pay, &[&id]).await?;
            anyhow::ensure!(n == 1, "paying order {id} changed {n} rows");
            orders.paid.push(id);
            Ok((vec![Written::Order(id)], Effect::Status { id, status: "paid" }))
        }
        Kind::Ship => {
            let id = orders.paid.swap_remove(rng.random_range(0..orders.paid.len()));
            let sql = format!("UPDATE orders SET status = 'shipped' WHERE id = {id} AND status = 'paid'");
            let n = s
                .client
                .simple_query(&sql)
                .await?
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
                    _ => None,
                })
                .unwrap_or(0);
            anyhow::ensure!(n == 1, "shipping order {id} changed {n} rows");
            Ok((vec![Written::Order(id)], Effect::Status { id, status: "shipped" }))
        }
        Kind::ChangeEmail => {
            let email = format!("customer{customer}.{tag}@example.com");
            s.client.execute(&s.change_email, &[&customer, &email]).await?;
            Ok((
                vec![Written::Customer(customer.into())],
                Effect::Email { customer, email },
            ))
        }
        Kind::Read => {
            let row = s.client.query_one(&s.totals, &[&customer]).await?;
            let _: (i64, String) = (row.try_get(0)?, row.try_get(1)?);
            Ok((Vec::new(), Effect::None))
        }
    }
}

/// Committed transactions per kind, for the report.
pub(super) fn per_kind(txs: &[Tx]) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    for t in txs.iter().filter(|t| t.committed) {
        let name = match t.kind {
            Kind::PlaceOrder => "orders placed",
            Kind::Pay => "paid",
            Kind::Ship => "shipped",
            Kind::ChangeEmail => "e-mail changes",
            Kind::Read => "reads",
        };
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}
