//! Escapes across session moves: capture restarts on each session's new
//! backend (its statements re-prepared there, its search path asked
//! afresh), so writes made after a move, with statements prepared before
//! it, in autocommit and in explicit transactions, must all be logged.

use super::{wrote, Escape};
use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_proxy::session::route::{reconnect, Destination, MoveRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_across_moves_are_all_logged() -> Result<()> {
    let e = Escape::start(
        "CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY, v int); \
         CREATE TABLE public.t (id int PRIMARY KEY, v int)",
    )
    .await?;
    let shared = e.f.proxy.proxy().shared().clone();
    let c = e.client().await?;
    // Unqualified names resolve through a search path set before the moves.
    c.batch_execute("SET search_path TO app, public").await?;
    let insert = c.prepare("INSERT INTO t VALUES ($1, $2)").await?;
    let update = c.prepare("UPDATE t SET v = v + 1 WHERE id = $1").await?;
    let mut id = 0;
    for round in 0..5 {
        let report = reconnect(
            &shared,
            MoveRequest {
                to: Destination::Source,
                timeout: Duration::from_secs(10),
                pinned: None,
                open_at_once: None,
            },
        )
        .await?;
        ensure!(report.moved == report.sessions, "round {round}: {report:?}");
        for _ in 0..4 {
            id += 1;
            c.execute(&insert, &[&id, &0])
                .await
                .context(format!("insert {id} in round {round}"))?;
        }
        c.batch_execute(&format!("BEGIN; INSERT INTO t VALUES ({}, 0); COMMIT", id + 1000))
            .await?;
        c.execute(&update, &[&id]).await?;
        c.batch_execute(&format!("INSERT INTO t VALUES ({}, 0)", id + 2000))
            .await?;
    }
    let rows: i64 = e.direct.query_one("SELECT count(*) FROM app.t", &[]).await?.get(0);
    ensure!(rows == 30, "app.t has {rows} rows, not 30");
    let other: i64 = e.direct.query_one("SELECT count(*) FROM public.t", &[]).await?.get(0);
    ensure!(
        other == 0,
        "the search path did not survive a move: public.t has {other} rows"
    );
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "app.t"));
    Ok(())
}
