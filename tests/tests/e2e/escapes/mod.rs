//! The WAL oracle's list of capture escapes: each case is a way a committed
//! write once reached the source without its key in the capture log. A case
//! creates its schema directly on the source, starts capture (policy
//! `reject`), drives the statements that escaped through the proxy (a
//! statement may be refused: refusing is one of the two right answers), and
//! then [`Escape::finish`] compares every key PostgreSQL's WAL says was
//! written with the log. A key written and not logged fails the case.

mod copy;
mod encoding;
mod functions;
mod lifecycle;
mod moves;
mod resolver;

use crate::capture::{logical_cluster, Fixture};
use crate::oracle::{logged_keys, written_keys, KeySet, WalOracle};
use anyhow::{ensure, Context, Result};
use std::collections::HashMap;
use switchyard_tests::TestProxy;
use tokio_postgres::Client;

/// One escape case: a capturing proxy, a direct connection to the source and
/// the WAL oracle's slot, created after the case's schema.
pub struct Escape {
    /// The cluster, the proxy and the admin console.
    pub f: Fixture,
    /// A connection straight to the source (database `postgres`).
    pub direct: Client,
    oracle: WalOracle,
}

impl Escape {
    /// Runs `schema` on the source, creates the oracle's slot, starts
    /// capture and waits for the barrier.
    pub async fn start(schema: &str) -> Result<Escape> {
        Escape::configured(schema, |_| {}).await
    }

    /// As [`Escape::start`], with `edit` applied to the proxy's config.
    pub async fn configured(schema: &str, edit: impl FnOnce(&mut switchyard_proxy::Config)) -> Result<Escape> {
        let cluster = logical_cluster().await?;
        let direct = cluster.connect("postgres").await?;
        direct.batch_execute(schema).await.context("case schema")?;
        let f = Fixture::configured(cluster, edit).await?;
        let oracle = WalOracle::create(&direct, "escape").await?;
        f.capture_start().await?;
        Ok(Escape { f, direct, oracle })
    }

    /// The proxy the case's clients connect through.
    #[allow(dead_code)] // for cases that need raw protocol access
    pub fn proxy(&self) -> &TestProxy {
        &self.f.proxy
    }

    /// A client of database `postgres` through the proxy.
    pub async fn client(&self) -> Result<Client> {
        Ok(self.f.proxy.connect("postgres").await?)
    }

    /// Drains the WAL and the log and fails, naming them, if any key a
    /// committed transaction wrote to a table with a primary key is not in
    /// the log. Returns what the WAL says was written, for the case to check
    /// that its statements really wrote (a case that writes nothing proves
    /// nothing).
    pub async fn finish(self) -> Result<KeySet> {
        let keys = primary_keys(&self.direct).await?;
        let wal = self.oracle.drain(&self.direct).await?;
        self.oracle.drop_slot(&self.direct).await?;
        let truth = written_keys(&wal, |t| keys.get(t).cloned());
        let logged = logged_keys(&self.f.log_path())?;
        let missing: Vec<_> = truth.difference(&logged).collect();
        ensure!(
            missing.is_empty(),
            "committed writes missing from the capture log: {missing:?}\nlogged: {logged:?}"
        );
        Ok(truth)
    }
}

/// `schema.table` -> primary key columns in key order, for every table.
async fn primary_keys(client: &Client) -> Result<HashMap<String, Vec<String>>> {
    let rows = client
        .query(
            "SELECT n.nspname || '.' || c.relname, array_agg(a.attname::text ORDER BY k.i)
               FROM pg_constraint p
               JOIN pg_class c ON c.oid = p.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               CROSS JOIN LATERAL unnest(p.conkey) WITH ORDINALITY AS k(attnum, i)
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
              WHERE p.contype = 'p'
              GROUP BY 1",
            &[],
        )
        .await
        .context("read primary keys")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// True if the WAL says a row of `table` (`schema.table`) was written.
pub fn wrote(keys: &KeySet, table: &str) -> bool {
    keys.iter().any(|(t, _)| t == table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_sees_a_captured_write_and_an_escape() -> Result<()> {
    let e = Escape::configured("CREATE TABLE t (id int PRIMARY KEY)", |c| {
        c.capture.policy = switchyard_proxy::UnsafePolicy::Warn;
    })
    .await?;
    let c = e.client().await?;
    c.batch_execute("INSERT INTO t VALUES (1)").await?;
    ensure!(e.finish().await.is_ok_and(|keys| wrote(&keys, "public.t")));

    // Under `warn` a write inside a CTE runs uncaptured: the harness must say so.
    let e = Escape::configured("CREATE TABLE t (id int PRIMARY KEY)", |c| {
        c.capture.policy = switchyard_proxy::UnsafePolicy::Warn;
    })
    .await?;
    let c = e.client().await?;
    c.batch_execute("WITH x AS (INSERT INTO t VALUES (2) RETURNING 1) SELECT * FROM x")
        .await?;
    let err = e.finish().await.err().context("an uncaptured write went unnoticed")?;
    ensure!(err.to_string().contains("missing from the capture log"), "{err:#}");
    Ok(())
}
