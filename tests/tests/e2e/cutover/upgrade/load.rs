//! The write load of the upgrade cycle: tokio-postgres clients through the
//! proxy, each journaling what it saw committed and on which server.

use super::super::PORT;
use super::TARGET_MAJOR;
use crate::support::table;
use anyhow::{ensure, Context, Result};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How many clients write.
pub const CLIENTS: usize = 3;
/// The accounts the schema seeds: enough that many are last written before
/// the flip, for the comparison of the columns clients do not journal.
const ACCOUNTS: i32 = 2400;
/// The enum's labels.
const TIERS: [&str; 3] = ["bronze", "silver", "gold"];

/// An account row as clients wrote it: balance, note, tier.
pub type Account = (i64, String, String);

/// One client's view of what it committed, and where.
#[derive(Debug, Default)]
pub struct Journal {
    /// account id -> the row after every committed write, all servers.
    pub accounts: BTreeMap<i32, Account>,
    /// The same, counting only writes the source committed.
    pub accounts_source: BTreeMap<i32, Account>,
    /// account id -> the port of its last committed write.
    pub last_port: BTreeMap<i32, i32>,
    pub labels: BTreeSet<(i32, String)>,
    pub labels_source: BTreeSet<(i32, String)>,
    /// (id, client, seq, amount in cents, memo, port).
    pub ledger: Vec<(i64, i32, i32, i32, String, i32)>,
    /// The port of each committed write, in order.
    pub ports: Vec<i32>,
    /// Errors (there must be none).
    pub errors: Vec<String>,
}

impl Journal {
    /// Records an account row committed on `port`.
    fn account(&mut self, id: i32, row: Account, port: i32, source_port: i32) {
        if port == source_port {
            self.accounts_source.insert(id, row.clone());
        }
        self.accounts.insert(id, row);
        self.last_port.insert(id, port);
    }
}

/// Writes through the proxy until told to stop (bounded in time and
/// count): autocommit prepared statements, explicit transactions of
/// prepared statements, and simple-query autocommit writes.
pub async fn client_load(mut c: Client, me: usize, source_port: i32, stop: Arc<AtomicBool>) -> Result<Journal> {
    let mut j = Journal::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(me as u64 + 1517);
    // Each client owns the accounts it writes, so it knows their state.
    let own = |k: i32| k * CLIENTS as i32 + me as i32 + 1;
    let mine = ACCOUNTS / CLIENTS as i32;
    for k in 0..mine {
        let seed = (1000, format!("seed {}", own(k)), "bronze".to_owned());
        j.accounts.insert(own(k), seed.clone());
        j.accounts_source.insert(own(k), seed);
    }
    let update = c
        .prepare(&format!(
            "UPDATE account SET balance = balance + $1::int, note = $2::text WHERE id = $3::int \
             RETURNING balance, tier::text, {PORT}"
        ))
        .await?;
    let insert = c
        .prepare(&format!(
            "INSERT INTO ledger (client, seq, amount, memo) VALUES ($1::int, $2::int, $3::int / 100.0, $4::text) \
             RETURNING id, {PORT}"
        ))
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seq = 0;
    while !stop.load(Relaxed) && Instant::now() < deadline && seq < 20_000 {
        seq += 1;
        let id = own(rng.random_range(0..mine));
        let note = format!("c{me}s{seq}");
        let r: Result<()> = async {
            match rng.random_range(0..5) {
                0 => {
                    let delta = rng.random_range(-5..=5);
                    let row = c.query_one(&update, &[&delta, &note, &id]).await?;
                    let port: i32 = row.get(2);
                    j.account(id, (row.get(0), note.clone(), row.get(1)), port, source_port);
                    j.ports.push(port);
                }
                1 => {
                    // A transfer between two of its accounts plus a ledger
                    // entry, in one explicit transaction.
                    let other = own(rng.random_range(0..mine));
                    let cents = rng.random_range(1..10_000);
                    let tx = c.transaction().await?;
                    let a = tx.query_one(&update, &[&-3i32, &note, &id]).await?;
                    let b = tx.query_one(&update, &[&3i32, &note, &other]).await?;
                    let memo = format!("transfer {id}->{other}");
                    let e = tx.query_one(&insert, &[&(me as i32), &seq, &cents, &memo]).await?;
                    tx.commit().await?;
                    let port: i32 = e.get(1);
                    ensure!(
                        a.get::<_, i32>(2) == port && b.get::<_, i32>(2) == port,
                        "one transaction, two servers"
                    );
                    for (key, row) in [(id, &a), (other, &b)] {
                        j.account(key, (row.get(0), note.clone(), row.get(1)), port, source_port);
                    }
                    j.ledger.push((e.get(0), me as i32, seq, cents, memo, port));
                    j.ports.push(port);
                }
                2 => {
                    let name = format!("l{}", rng.random_range(0..3));
                    let insert = rng.random_bool(0.6);
                    let sql = if insert {
                        format!("INSERT INTO label VALUES ({id}, '{name}') ON CONFLICT DO NOTHING RETURNING {PORT}")
                    } else {
                        format!("DELETE FROM label WHERE account = {id} AND name = '{name}' RETURNING {PORT}")
                    };
                    let port = crate::cutover::write_port(&c, &sql).await?;
                    crate::cutover::track(
                        &mut j.labels,
                        &mut j.labels_source,
                        (id, name),
                        insert,
                        port == source_port,
                    );
                    j.ports.push(port);
                }
                3 => {
                    // A simple-query autocommit write of the enum and jsonb.
                    let tier = TIERS[rng.random_range(0..TIERS.len())];
                    let sql = format!(
                        "UPDATE account SET tier = '{tier}', attrs = jsonb_build_object('client', {me}, 'seq', {seq}), \
                         touched = now() WHERE id = {id} RETURNING balance, note, {PORT}"
                    );
                    let t = table(&c, &sql).await?;
                    let row = t.rows.first().context("the update found no row")?;
                    let field = |i: usize| row[i].clone().unwrap_or_default();
                    let port: i32 = field(2).parse()?;
                    j.account(id, (field(0).parse()?, field(1), tier.to_owned()), port, source_port);
                    j.ports.push(port);
                }
                _ => {
                    let cents = rng.random_range(1..10_000);
                    let memo = format!("entry {seq}");
                    let e = c.query_one(&insert, &[&(me as i32), &seq, &cents, &memo]).await?;
                    j.ledger.push((e.get(0), me as i32, seq, cents, memo, e.get(1)));
                    j.ports.push(e.get(1));
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            j.errors.push(format!("{e:#}"));
            if j.errors.len() > 5 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..4))).await;
    }
    // The session's own view of the server it ended on.
    let version: String = c.query_one("SHOW server_version", &[]).await?.get(0);
    ensure!(
        version.starts_with(&format!("{TARGET_MAJOR}.")),
        "client {me} ended on server_version {version}"
    );
    Ok(j)
}
