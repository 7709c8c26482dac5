//! The relay of the query protocols: simple and extended queries,
//! pipelines with errors in them, named prepared statements, large rows and
//! messages, and transaction status as clients and the admin console see it.

use crate::support::{
    admin, backend_pid, bind_msg, execute_msg, expect_sqlstate, first_column, parse_msg, query_msg, sync_msg, table,
    wait_session, wait_session_state, within, RawConn, PROMPT,
};
use anyhow::Result;
use futures_util::future::join_all;
use std::time::{Duration, Instant};
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio_postgres::SimpleQueryMessage;

#[tokio::test]
async fn simple_and_extended_queries_match_direct() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder().database("shop").start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("shop").await?;
    let direct = cluster.connect("shop").await?;

    client
        .batch_execute(
            "create table items (id int primary key, name text not null, price numeric(10,2));
             insert into items select g, 'item ' || g, g * 1.25 from generate_series(1, 500) g",
        )
        .await?;
    // Several statements in one simple query: every result comes back, in order.
    let messages = client
        .simple_query(
            "select count(*) from items; update items set price = price + 1 where id <= 10;
             select name from items where id = 7",
        )
        .await?;
    let completes: Vec<u64> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(completes, [1, 10, 1]);
    let values: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["500", "item 7"]);

    // Extended protocol with parameters, compared with the same query direct.
    let sql = "select id, name, price::text from items where id between $1 and $2 order by id";
    let via: Vec<(i32, String, String)> = client
        .query(sql, &[&5i32, &12i32])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let want: Vec<(i32, String, String)> = direct
        .query(sql, &[&5i32, &12i32])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(via, want);
    assert_eq!(via.len(), 8);
    assert_eq!(via[0], (5, "item 5".into(), "7.25".into()));
    assert_eq!(via[7], (12, "item 12".into(), "15.00".into()));

    let deleted = client.execute("delete from items where id > $1", &[&490i32]).await?;
    assert_eq!(deleted, 10);
    let row = direct.query_one("select count(*), sum(id) from items", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), 490);
    assert_eq!(row.get::<_, i64>(1), 490 * 491 / 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_with_errors_on_one_client() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let double = client.prepare("select $1::int4 * 2").await?;
    let divide = client.prepare("select 1000 / $1::int4").await?;

    // All futures are polled at once, so tokio-postgres writes every request
    // before reading any answer: one long pipeline through the proxy, with
    // division-by-zero errors in the middle of it.
    const N: i32 = 300;
    let results = within(
        Duration::from_secs(30),
        "pipeline",
        join_all((0..N).map(|i| {
            let (client, double, divide) = (&client, &double, &divide);
            async move {
                match i % 3 {
                    0 => client.query_one(double, &[&i]).await.map(|r| Some(r.get::<_, i32>(0))),
                    1 => client
                        .query_one(divide, &[&(i % 7)])
                        .await
                        .map(|r| Some(r.get::<_, i32>(0))),
                    _ => client.simple_query(&format!("select {i} + 1")).await.map(|m| {
                        m.iter().find_map(|m| match m {
                            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                            _ => None,
                        })
                    }),
                }
            }
        })),
    )
    .await?;
    let mut errors = 0;
    for (i, result) in (0..N).zip(results) {
        match i % 3 {
            0 => assert_eq!(result?, Some(i * 2), "query {i}"),
            1 if i % 7 == 0 => {
                expect_sqlstate(result, "22012")?;
                errors += 1;
            }
            1 => assert_eq!(result?, Some(1000 / (i % 7)), "query {i}"),
            _ => assert_eq!(result?, Some(i + 1), "query {i}"),
        }
    }
    assert!(errors >= 10, "only {errors} errors in the pipeline");
    // The session goes on normally after the pipeline.
    let row = client.query_one(&double, &[&21i32]).await?;
    assert_eq!(row.get::<_, i32>(0), 42);
    let admin = admin(&proxy).await?;
    let pid = backend_pid(&client).await?;
    let row = wait_session_state(&admin, pid, "idle").await?;
    let queries: u64 = row["queries"].parse()?;
    assert!(queries >= N as u64, "SHOW SESSIONS counted {queries} queries");
    Ok(())
}

#[tokio::test]
async fn named_prepared_statements_are_reused_and_tracked() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let admin = admin(&proxy).await?;
    let pid = backend_pid(&client).await?;

    let add = client.prepare("select $1::int4 + 1").await?;
    let upper = client.prepare("select upper($1::text)").await?;
    let count = client
        .prepare("select count(*) from generate_series(1, $1::int4)")
        .await?;
    for i in 0..50i32 {
        assert_eq!(client.query_one(&add, &[&i]).await?.get::<_, i32>(0), i + 1);
        let word = format!("word{i}");
        assert_eq!(
            client.query_one(&upper, &[&word]).await?.get::<_, String>(0),
            word.to_uppercase()
        );
        assert_eq!(client.query_one(&count, &[&i]).await?.get::<_, i64>(0), i64::from(i));
    }

    // The server holds exactly the three statements, and the proxy knows it.
    // (tokio-postgres closes its one-off statements when they drop.)
    let server_count = |t: crate::support::Table| t.rows[0][0].clone().unwrap_or_default();
    let t = table(&client, "select count(*) from pg_prepared_statements").await?;
    assert_eq!(server_count(t), "3");
    wait_session(&admin, pid, &[("prepared_statements", "3")]).await?;
    drop(upper);
    // The Close goes out with the next request.
    assert_eq!(client.query_one(&add, &[&1i32]).await?.get::<_, i32>(0), 2);
    let t = table(&client, "select count(*) from pg_prepared_statements").await?;
    assert_eq!(server_count(t), "2");
    wait_session(&admin, pid, &[("prepared_statements", "2")]).await?;
    Ok(())
}

#[tokio::test]
async fn error_inside_extended_batch_skips_to_sync() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let admin = admin(&proxy).await?;
    let mut raw = RawConn::start(proxy.addr(), "postgres", "postgres").await?;
    let pid = raw.key.expect("BackendKeyData").0;

    // An error in the middle of one batch: the server skips the rest of it
    // up to the Sync, and the simple query after the Sync runs normally.
    let mut batch = Vec::new();
    for part in [
        // Fails in Execute, not at plan time as a constant `1/0` would.
        parse_msg("", "select 1 / g from generate_series(0, 0) g"),
        bind_msg(""),
        execute_msg(),
        parse_msg("", "select 2"),
        bind_msg(""),
        execute_msg(),
        sync_msg(),
        query_msg("select 3"),
    ] {
        batch.extend(part);
    }
    raw.send(&batch).await?;
    let first = raw.until_ready().await?;
    let tags: Vec<u8> = first.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"12EZ", "{first:?}");
    assert_eq!(first[2].code().as_deref(), Some("22012"));
    assert_eq!(&first[3].body[..], b"I");
    let second = raw.until_ready().await?;
    assert_eq!(first_column(&second), [Some("3".to_owned())]);

    // A named statement that parsed survives the failure of a later one.
    let mut batch = parse_msg("good", "select 5");
    batch.extend(parse_msg("bad", "selec oops"));
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    let reply = raw.until_ready().await?;
    let tags: Vec<u8> = reply.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"1EZ", "{reply:?}");
    assert_eq!(reply[1].code().as_deref(), Some("42601"));
    let mut batch = bind_msg("good");
    batch.extend(execute_msg());
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    assert_eq!(first_column(&raw.until_ready().await?), [Some("5".to_owned())]);
    let mut batch = bind_msg("bad");
    batch.extend(execute_msg());
    batch.extend(sync_msg());
    raw.send(&batch).await?;
    let reply = raw.until_ready().await?;
    assert_eq!(reply[0].code().as_deref(), Some("26000"), "{reply:?}");

    // The proxy followed all of it: the session is idle with one statement,
    // and PAUSE drains at once.
    wait_session(&admin, pid, &[("state", "idle"), ("prepared_statements", "1")]).await?;
    let started = Instant::now();
    within(PROMPT, "PAUSE", admin.simple_query("PAUSE 3s")).await??;
    assert!(started.elapsed() < Duration::from_secs(1));
    admin.simple_query("RESUME").await?;
    raw.send(&query_msg("select 6")).await?;
    assert_eq!(first_column(&raw.until_ready().await?), [Some("6".to_owned())]);
    Ok(())
}

#[tokio::test]
async fn transaction_status_follows_the_session() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let direct = cluster.connect("postgres").await?;
    let admin = admin(&proxy).await?;
    client.batch_execute("create table t (id int primary key)").await?;
    let pid = backend_pid(&client).await?;
    wait_session_state(&admin, pid, "idle").await?;

    client.batch_execute("begin; insert into t values (1)").await?;
    wait_session_state(&admin, pid, "idle in transaction").await?;
    expect_sqlstate(client.simple_query("select 1/0").await, "22012")?;
    wait_session_state(&admin, pid, "idle in failed transaction").await?;
    // In a failed transaction every statement is refused until it ends.
    expect_sqlstate(client.simple_query("select 1").await, "25P02")?;
    expect_sqlstate(client.query("select 1", &[]).await, "25P02")?;
    client.batch_execute("rollback").await?;
    wait_session_state(&admin, pid, "idle").await?;
    assert_eq!(client.query_one("select 1::int4", &[]).await?.get::<_, i32>(0), 1);
    let n: i64 = direct.query_one("select count(*) from t", &[]).await?.get(0);
    assert_eq!(n, 0, "the rolled-back insert is not there");

    // A savepoint brings a failed transaction back.
    client
        .batch_execute("begin; insert into t values (1); savepoint a")
        .await?;
    expect_sqlstate(client.simple_query("insert into t values (1)").await, "23505")?;
    wait_session_state(&admin, pid, "idle in failed transaction").await?;
    client.batch_execute("rollback to savepoint a").await?;
    wait_session_state(&admin, pid, "idle in transaction").await?;
    client.batch_execute("insert into t values (2); commit").await?;
    wait_session_state(&admin, pid, "idle").await?;
    let ids: Vec<i32> = direct
        .query("select id from t order by id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [1, 2]);

    // tokio-postgres' transaction API: dropped without commit rolls back.
    let mut client = client;
    {
        let tx = client.transaction().await?;
        tx.execute("insert into t values (3)", &[]).await?;
        wait_session_state(&admin, pid, "idle in transaction").await?;
    }
    assert_eq!(
        client.query_one("select count(*) from t", &[]).await?.get::<_, i64>(0),
        2
    );
    wait_session_state(&admin, pid, "idle").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_and_large_messages() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("postgres").await?;
    let direct = cluster.connect("postgres").await?;

    // 200,000 rows of ~100 bytes: far beyond the proxy's buffers, so the
    // relay's back-pressure path runs.
    let rows = client
        .query(
            "select g, repeat(chr(65 + g % 26), 100) from generate_series(1, 200000) g",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), 200_000);
    let sum: i64 = rows.iter().map(|r| i64::from(r.get::<_, i32>(0))).sum();
    assert_eq!(sum, 200_000 * 200_001 / 2);
    assert_eq!(rows[25].get::<_, String>(1), "A".repeat(100));

    // An 8 MB parameter one way and an 8 MB value back.
    let big: String = (0..8 << 20).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let sql = "select length($1::text), md5($1::text), repeat($1::text, 1)";
    let via = client.query_one(sql, &[&big]).await?;
    let want = direct.query_one(sql, &[&big]).await?;
    assert_eq!(via.get::<_, i32>(0), 8 << 20);
    assert_eq!(via.get::<_, String>(1), want.get::<_, String>(1));
    assert!(via.get::<_, String>(2) == big);
    Ok(())
}
