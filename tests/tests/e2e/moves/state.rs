//! Session state across a move: settings made through the extended
//! protocol, set_config, SET ROLE, settings undone by a rollback (which
//! must stay undone), the backend pid that changes while the data stays,
//! and currval, which a new backend does not know.

use super::{ensure_all_moved, move_sessions, sessions_on, start, DB};
use crate::support::{admin, backend_pid, expect_sqlstate, table};
use anyhow::{ensure, Context, Result};
use switchyard_tests::init_tracing;
use tokio_postgres::Client;

/// `SHOW name` over the simple protocol.
async fn show(client: &Client, name: &str) -> Result<String> {
    let t = table(client, &format!("SHOW {name}")).await?;
    t.rows
        .first()
        .and_then(|r| r[0].clone())
        .with_context(|| format!("SHOW {name} returned nothing"))
}

/// `SHOW` of each of `names`.
async fn shows(client: &Client, names: &[&str]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for name in names {
        out.push(show(client, name).await?);
    }
    Ok(out)
}

/// Settings the test sets only in ways that are undone.
const UNDONE: [&str; 4] = [
    "work_mem",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "temp_buffers",
];

/// Settings the test sets in ways that hold.
const KEPT: [&str; 2] = ["lock_timeout", "maintenance_work_mem"];

/// What the session's settings make of the same queries.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    search_path: String,
    time_zone: String,
    current_user: String,
    session_user: String,
    app_x: String,
    /// An unqualified table only `search_path` finds.
    only_here: String,
    /// A fixed instant rendered in the session's time zone.
    instant: String,
}

async fn seen(client: &Client) -> Result<Seen> {
    let row = client
        .query_one(
            "select current_user::text, session_user::text, current_setting('app.x'),
                    (select v from only_here), '2024-01-01 00:00:00+00'::timestamptz::text",
            &[],
        )
        .await?;
    Ok(Seen {
        search_path: show(client, "search_path").await?,
        time_zone: show(client, "TimeZone").await?,
        current_user: row.get(0),
        session_user: row.get(1),
        app_x: row.get(2),
        only_here: row.get(3),
        instant: row.get(4),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_settings_and_role_hold_after_a_move() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start().await?;
    cluster
        .connect(DB)
        .await?
        .batch_execute(
            "create role mover nologin;
             create schema app_schema;
             create table app_schema.only_here (v text);
             insert into app_schema.only_here values ('found through search_path');
             grant usage on schema app_schema to mover;
             grant select on app_schema.only_here to mover",
        )
        .await?;
    let client = proxy.connect(DB).await?;
    // `execute` sends each through Parse/Bind/Execute.
    client.execute("SET search_path TO app_schema, public", &[]).await?;
    client.execute("SET TIME ZONE 'Pacific/Chatham'", &[]).await?;
    let set: String = client
        .query_one("select set_config('app.x', '42', false)", &[])
        .await?
        .get(0);
    assert_eq!(set, "42");
    client.execute("SET ROLE mover", &[]).await?;

    let want = Seen {
        search_path: "app_schema, public".into(),
        time_zone: "Pacific/Chatham".into(),
        current_user: "mover".into(),
        session_user: "postgres".into(),
        app_x: "42".into(),
        only_here: "found through search_path".into(),
        instant: "2024-01-01 13:45:00+13:45".into(),
    };
    assert_eq!(seen(&client).await?, want, "before the move");
    let before = backend_pid(&client).await?;

    for round in 0..2 {
        ensure_all_moved(&move_sessions(&proxy).await?, 1)?;
        let pid = backend_pid(&client).await?;
        ensure!(pid != before, "move {round}: still on backend {before}");
        assert_eq!(seen(&client).await?, want, "after move {round}");
    }
    // Still the role's privileges, not the login's: mover may not create here.
    expect_sqlstate(client.execute("create table public_t (x int)", &[]).await, "42501")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_settings_stay_undone_after_a_move() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let mut client = proxy.connect(DB).await?;
    let defaults = shows(&client, &UNDONE).await?;
    client
        .batch_execute("BEGIN; SAVEPOINT a; SET work_mem = '7MB'; ROLLBACK TO a; COMMIT;")
        .await?;
    client
        .batch_execute("BEGIN; SET statement_timeout = '7s'; ROLLBACK")
        .await?;
    client
        .batch_execute("BEGIN; SET LOCAL idle_in_transaction_session_timeout = '9s'; COMMIT")
        .await?;
    // The same through the extended protocol.
    {
        let tx = client.transaction().await?;
        tx.execute("SET temp_buffers = '3MB'", &[]).await?;
        tx.rollback().await?;
    }
    // What a committed transaction or a released savepoint set does hold.
    client.batch_execute("BEGIN; SET lock_timeout = '3s'; COMMIT").await?;
    client
        .batch_execute("BEGIN; SAVEPOINT b; SET maintenance_work_mem = '77MB'; RELEASE b; COMMIT")
        .await?;

    let mut want = defaults;
    want.extend(["3s".to_owned(), "77MB".to_owned()]);
    let all: Vec<&str> = UNDONE.iter().chain(&KEPT).copied().collect();
    assert_eq!(shows(&client, &all).await?, want, "before the move");
    let before = backend_pid(&client).await?;

    ensure_all_moved(&move_sessions(&proxy).await?, 1)?;
    ensure!(backend_pid(&client).await? != before, "the session did not move");
    assert_eq!(shows(&client, &all).await?, want, "after the move");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_pid_changes_and_the_data_stays() -> Result<()> {
    init_tracing();
    let (cluster, proxy) = start().await?;
    let client = proxy.connect(DB).await?;
    let admin = admin(&proxy).await?;
    client
        .batch_execute("create table notes (id serial primary key, body text not null)")
        .await?;
    for body in ["one", "two", "three"] {
        client.execute("insert into notes (body) values ($1)", &[&body]).await?;
    }
    let mut pids = vec![backend_pid(&client).await?];

    for round in 1..=2u32 {
        let report = move_sessions(&proxy).await?;
        ensure_all_moved(&report, 1)?;
        let pid = backend_pid(&client).await?;
        ensure!(
            !pids.contains(&pid),
            "move {round}: pid {pid} was seen before ({pids:?})"
        );
        pids.push(pid);

        let bodies: Vec<String> = client
            .query("select body from notes order by id", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(bodies[..3], ["one", "two", "three"], "move {round}");
        client
            .execute(
                "insert into notes (body) values ($1)",
                &[&format!("after move {round}")],
            )
            .await?;

        let rows = sessions_on(&admin, DB).await?;
        ensure!(rows.len() == 1, "SHOW SESSIONS: {rows:?}");
        let row = &rows[0];
        assert_eq!(row["backend_pid"], pid.to_string(), "{row:?}");
        assert_eq!(row["moves"], round.to_string(), "{row:?}");
        assert_eq!(row["route_epoch"], report.epoch.to_string(), "{row:?}");
        assert_eq!(row["move_state"], "current", "{row:?}");
        assert_eq!(row["backend"], format!("127.0.0.1:{}", cluster.port()), "{row:?}");
    }
    let direct = cluster.connect(DB).await?;
    let bodies: Vec<String> = direct
        .query("select body from notes order by id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(bodies, ["one", "two", "three", "after move 1", "after move 2"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currval_is_not_defined_after_a_move() -> Result<()> {
    init_tracing();
    let (_cluster, proxy) = start().await?;
    let client = proxy.connect(DB).await?;
    client.batch_execute("create sequence ticket").await?;
    let first: i64 = client.query_one("select nextval('ticket')", &[]).await?.get(0);
    assert_eq!(first, 1);
    let row = client.query_one("select currval('ticket'), lastval()", &[]).await?;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 1));

    ensure_all_moved(&move_sessions(&proxy).await?, 1)?;

    let message = expect_sqlstate(client.query_one("select currval('ticket')", &[]).await, "55000")?;
    assert!(message.contains("not yet defined in this session"), "{message}");
    expect_sqlstate(client.query_one("select lastval()", &[]).await, "55000")?;
    // The sequence itself lives in the database and goes on from where it was.
    let next: i64 = client.query_one("select nextval('ticket')", &[]).await?.get(0);
    assert_eq!(next, 2);
    let row = client.query_one("select currval('ticket'), lastval()", &[]).await?;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2, 2));
    Ok(())
}
