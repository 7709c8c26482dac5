//! Escapes of the table resolver: a write whose unqualified table name the
//! server resolved through a search_path the proxy did not know (set_config,
//! SET LOCAL, a rolled-back SET, SET ROLE with `"$user"`, a role's or
//! database's own setting, RESET). The key must be logged under the table
//! the row really went to (its `tableoid`), or the write refused.

use super::{wrote, Escape};
use crate::oracle::logged_keys;
use crate::support::expect_sqlstate;
use anyhow::{ensure, Context, Result};
use tokio_postgres::Client;

/// Two schemas with tables of the same name: `kv` with the same key column
/// in both, `dk` keyed by `id` in public and by `k` in s2 (both have both
/// columns, so a projection of either resolves in either). A role named
/// like the schema s2 makes `"$user"` mean s2 for it.
const SCHEMA: &str = "
CREATE SCHEMA s2;
CREATE TABLE public.kv (id int PRIMARY KEY, v text);
CREATE TABLE s2.kv (id int PRIMARY KEY, v text);
CREATE TABLE public.dk (id int PRIMARY KEY, k int);
CREATE TABLE s2.dk (k int PRIMARY KEY, id int);
CREATE ROLE s2 LOGIN;
GRANT USAGE ON SCHEMA s2 TO s2;
GRANT ALL ON ALL TABLES IN SCHEMA s2, public TO s2;
";

/// The tables (`schema.table`) the log holds key `id` under.
fn logged_as(e: &Escape, id: i32) -> Result<Vec<String>> {
    let keys = logged_keys(&e.f.log_path())?;
    let id = Some(id.to_string());
    let mut tables: Vec<String> = keys
        .into_iter()
        .filter(|(_, k)| k.first() == Some(&id))
        .map(|(t, _)| t)
        .collect();
    tables.sort();
    Ok(tables)
}

/// Where the row with `id` is on the source: `public` or `s2`.
async fn where_is(direct: &Client, table: &str, column: &str, id: i32) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT n.nspname::text FROM (SELECT tableoid FROM public.{table} WHERE {column} = $1 \
         UNION ALL SELECT tableoid FROM s2.{table} WHERE {column} = $1) r \
         JOIN pg_class c ON c.oid = r.tableoid JOIN pg_namespace n ON n.oid = c.relnamespace"
    );
    let rows = direct.query(&sql, &[&id]).await.context("where is the row")?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// Checks that key `id` of `kv` went to `schema` and is logged there only.
async fn check(e: &Escape, id: i32, schema: &str, form: &str) -> Result<()> {
    // An extended-protocol write commits at its Sync, which the client
    // library does not wait for: give the commit a moment to land.
    let deadline = std::time::Instant::now() + crate::support::PROMPT;
    let at = loop {
        let at = where_is(&e.direct, "kv", "id", id).await?;
        if !at.is_empty() || std::time::Instant::now() > deadline {
            break at;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    ensure!(at == [schema], "{form}: row {id} is in {at:?}, expected {schema}");
    let logged = logged_as(e, id)?;
    ensure!(
        logged == [format!("{schema}.kv")],
        "{form}: key {id} written to {schema}.kv is logged under {logged:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_path_set_behind_the_proxys_back_is_logged_where_rows_went() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    let c = e.client().await?;

    c.batch_execute("SELECT set_config('search_path', 's2, public', false)")
        .await?;
    c.batch_execute("INSERT INTO kv VALUES (1)").await?;
    check(&e, 1, "s2", "set_config(.., false)").await?;
    // Followed, not only checked: dk's key is another column in s2, and
    // the write is captured with it rather than refused.
    c.batch_execute("INSERT INTO dk VALUES (81, 0)").await?;
    ensure!(logged_as(&e, 81)? == ["s2.dk"], "set_config: dk not followed");

    c.batch_execute("RESET search_path").await?;
    c.batch_execute("INSERT INTO kv VALUES (2)").await?;
    check(&e, 2, "public", "RESET search_path").await?;

    c.batch_execute("BEGIN; SELECT set_config('search_path', 's2', true)")
        .await?;
    c.batch_execute("INSERT INTO kv VALUES (3)").await?;
    c.batch_execute("COMMIT").await?;
    c.batch_execute("INSERT INTO kv VALUES (4)").await?;
    check(&e, 3, "s2", "set_config(.., true)").await?;
    check(&e, 4, "public", "after set_config(.., true) ended").await?;

    c.batch_execute("BEGIN; SET LOCAL search_path = s2").await?;
    c.batch_execute("INSERT INTO kv VALUES (5); COMMIT").await?;
    c.batch_execute("INSERT INTO kv VALUES (6)").await?;
    check(&e, 5, "s2", "SET LOCAL").await?;
    c.batch_execute("BEGIN; SET LOCAL search_path = s2; INSERT INTO dk VALUES (82, 0); COMMIT")
        .await?;
    ensure!(logged_as(&e, 82)? == ["s2.dk"], "SET LOCAL: dk not followed");
    check(&e, 6, "public", "after SET LOCAL ended").await?;

    c.batch_execute("BEGIN; SET search_path = s2; ROLLBACK").await?;
    c.batch_execute("INSERT INTO kv VALUES (7)").await?;
    check(&e, 7, "public", "SET rolled back").await?;

    c.batch_execute("BEGIN; SAVEPOINT a; SET search_path = s2; ROLLBACK TO a; INSERT INTO kv VALUES (8); COMMIT")
        .await?;
    check(&e, 8, "public", "SET rolled back to a savepoint").await?;

    c.batch_execute("SET search_path = \"$user\", public; SET ROLE s2")
        .await?;
    c.batch_execute("INSERT INTO kv VALUES (9)").await?;
    c.batch_execute("RESET ROLE; INSERT INTO kv VALUES (10)").await?;
    c.batch_execute("SET SESSION AUTHORIZATION s2; INSERT INTO kv VALUES (11)")
        .await?;
    c.batch_execute("RESET SESSION AUTHORIZATION").await?;
    check(&e, 9, "s2", "SET ROLE with $user").await?;
    check(&e, 10, "public", "RESET ROLE").await?;
    check(&e, 11, "s2", "SET SESSION AUTHORIZATION with $user").await?;

    // The extended protocol: parameters the proxy cannot read as literals.
    c.execute("SELECT set_config('search_path', $1, false)", &[&"s2, public"])
        .await?;
    c.execute("INSERT INTO kv VALUES ($1)", &[&12]).await?;
    check(&e, 12, "s2", "set_config with a parameter").await?;
    c.execute("RESET search_path", &[]).await?;
    c.execute("INSERT INTO kv VALUES ($1)", &[&13]).await?;
    check(&e, 13, "public", "RESET through the extended protocol").await?;
    c.execute("BEGIN", &[]).await?;
    c.execute("SET LOCAL search_path = s2", &[]).await?;
    c.execute("INSERT INTO kv VALUES ($1)", &[&14]).await?;
    c.execute("COMMIT", &[]).await?;
    c.execute("INSERT INTO kv VALUES ($1)", &[&15]).await?;
    check(&e, 14, "s2", "SET LOCAL, extended").await?;
    check(&e, 15, "public", "after SET LOCAL ended, extended").await?;
    c.execute("BEGIN", &[]).await?;
    c.execute("SET search_path = s2", &[]).await?;
    c.execute("ROLLBACK", &[]).await?;
    c.execute("SET ROLE s2", &[]).await?;
    c.execute("SET search_path = \"$user\", public", &[]).await?;
    c.execute("INSERT INTO kv VALUES ($1)", &[&16]).await?;
    c.execute("RESET ROLE", &[]).await?;
    c.execute("INSERT INTO kv VALUES ($1)", &[&17]).await?;
    check(&e, 16, "s2", "SET ROLE with $user, extended").await?;
    check(&e, 17, "public", "RESET ROLE, extended").await?;

    let seen = e.f.show_capture().await?;
    ensure!(!seen.contains_key("unsafe.wrong-table"), "{seen:?}");
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "public.kv") && wrote(&keys, "s2.kv"), "{keys:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_or_database_search_path_is_seen() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    e.direct
        .batch_execute("ALTER ROLE s2 SET search_path = s2, public")
        .await?;
    let r = e.f.proxy.connect_as("s2", None, "postgres").await?;
    r.batch_execute("INSERT INTO kv VALUES (21)").await?;
    r.execute("INSERT INTO kv VALUES ($1)", &[&22]).await?;
    check(&e, 21, "s2", "ALTER ROLE ... SET search_path").await?;
    check(&e, 22, "s2", "ALTER ROLE ... SET search_path, extended").await?;

    e.direct
        .batch_execute("ALTER DATABASE postgres SET search_path = s2, public")
        .await?;
    let d = e.client().await?;
    d.batch_execute("INSERT INTO kv VALUES (23)").await?;
    check(&e, 23, "s2", "ALTER DATABASE ... SET search_path").await?;
    // COPY rows carry no tableoid to correct the proxy: it must know the
    // path the server uses, also after a RESET (the database's value).
    copy(&d, "COPY kv (id) FROM STDIN", "24\n").await?;
    check(&e, 24, "s2", "ALTER DATABASE ... SET search_path, COPY").await?;
    d.batch_execute("SET search_path = public; RESET search_path").await?;
    copy(&d, "COPY kv (id) FROM STDIN", "25\n").await?;
    check(&e, 25, "s2", "ALTER DATABASE ... SET search_path, COPY after RESET").await?;
    e.direct
        .batch_execute("ALTER DATABASE postgres RESET search_path")
        .await?;

    let keys = e.finish().await?;
    ensure!(wrote(&keys, "s2.kv"), "{keys:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_resolved_to_a_table_with_other_key_columns_is_refused() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    let c = e.client().await?;
    // A setting the proxy cannot read: it believes dk is public.dk (key id),
    // the row goes to s2.dk (key k).
    c.batch_execute("SELECT set_config('search_path', 's' || '2, public', false)")
        .await?;
    expect_sqlstate(c.batch_execute("INSERT INTO dk VALUES (31, 32)").await, "0A000")?;
    c.batch_execute("BEGIN").await?;
    c.batch_execute("INSERT INTO dk VALUES (33, 34)").await?;
    expect_sqlstate(c.batch_execute("COMMIT").await, "0A000")?;
    c.batch_execute("ROLLBACK").await.ok();
    expect_sqlstate(c.execute("INSERT INTO dk VALUES ($1, $2)", &[&35, &36]).await, "0A000")?;
    // A COMMIT through the extended protocol is refused too; the
    // transaction is left failed for the client to roll back.
    c.execute("BEGIN", &[]).await?;
    c.execute("INSERT INTO dk VALUES ($1, $2)", &[&38, &39]).await?;
    expect_sqlstate(c.execute("COMMIT", &[]).await, "0A000")?;
    c.batch_execute("ROLLBACK").await?;
    // The session goes on working.
    c.batch_execute("INSERT INTO kv VALUES (37)").await?;
    check(&e, 37, "s2", "after a refusal").await?;
    let n: i64 = e.direct.query_one("SELECT count(*) FROM s2.dk", &[]).await?.get(0);
    ensure!(n == 0, "a refused write committed {n} rows to s2.dk");
    let seen = e.f.show_capture().await?;
    ensure!(
        seen.keys().any(|k| k == "unsafe.wrong-table"),
        "refusals not counted: {seen:?}"
    );
    e.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_with_its_own_search_path_is_refused() -> Result<()> {
    let schema = format!(
        "{SCHEMA}
         CREATE FUNCTION put(int) RETURNS void LANGUAGE sql SET search_path = s2
             AS 'INSERT INTO kv VALUES ($1)';"
    );
    let e = Escape::start(&schema).await?;
    let c = e.client().await?;
    expect_sqlstate(c.batch_execute("SELECT put(41)").await, "0A000")?;
    expect_sqlstate(c.execute("SELECT put($1)", &[&42]).await, "0A000")?;
    let keys = e.finish().await?;
    ensure!(!wrote(&keys, "s2.kv"), "{keys:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_went_to_a_table_newer_than_the_snapshot_is_looked_up() -> Result<()> {
    let e = Escape::configured(SCHEMA, |c| c.capture.catalog_refresh_ms = 60_000).await?;
    e.direct
        .batch_execute("CREATE TABLE s2.nk (id int PRIMARY KEY); CREATE TABLE public.nk (id int PRIMARY KEY)")
        .await?;
    let c = e.client().await?;
    // The proxy resolves nk to public.nk (looked up by name); the row goes
    // to s2.nk, which it learns of from the row's tableoid.
    c.batch_execute("SELECT set_config('search_path', 's' || '2, public', false)")
        .await?;
    c.batch_execute("INSERT INTO public.nk VALUES (50)").await?;
    c.batch_execute("INSERT INTO nk VALUES (51)").await?;
    let logged = logged_as(&e, 51)?;
    ensure!(
        logged == ["s2.nk"],
        "key 51 written to s2.nk is logged under {logged:?}"
    );
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "s2.nk") && wrote(&keys, "public.nk"), "{keys:?}");
    Ok(())
}

/// COPY ... FROM STDIN with `data`, through `client`.
async fn copy(client: &Client, sql: &str, data: &'static str) -> Result<u64, tokio_postgres::Error> {
    use futures_util::SinkExt;
    let sink = client.copy_in::<_, bytes::Bytes>(sql).await?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(data.as_bytes())).await?;
    let n = sink.finish().await?;
    // finish() returns at CommandComplete; the implicit transaction commits
    // at the Sync sent with it, which the proxy holds until the keys are
    // logged. A query after it waits for that.
    client.batch_execute("SELECT 1").await?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_after_a_search_path_the_proxy_could_not_read_is_refused() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    let c = e.client().await?;
    c.batch_execute("SET search_path = s2, public").await?;
    copy(&c, "COPY kv (id) FROM STDIN", "61\n")
        .await
        .context("first COPY")?;
    check(&e, 61, "s2", "COPY after SET").await?;
    // COPY rows carry no tableoid: after a path the proxy could not read,
    // an unqualified COPY is refused rather than guessed.
    c.batch_execute("SELECT set_config('search_path', 'pub' || 'lic', false)")
        .await?;
    expect_sqlstate(copy(&c, "COPY kv (id) FROM STDIN", "62\n").await, "0A000")?;
    // (tokio-postgres answers a COPY that fails before CopyInResponse with
    // a second Sync whose ReadyForQuery it does not wait for, so the
    // client is not used again.)
    let c = e.client().await?;
    c.batch_execute("SELECT set_config('search_path', 's2, ' || 'public', false)")
        .await?;
    copy(&c, "COPY public.kv (id) FROM STDIN", "63\n")
        .await
        .context("qualified COPY")?;
    check(&e, 63, "public", "qualified COPY").await?;
    // A SET the proxy reads ends the guess.
    c.batch_execute("SET search_path = public").await?;
    copy(&c, "COPY kv (id) FROM STDIN", "64\n").await.context("last COPY")?;
    check(&e, 64, "public", "COPY after a SET read again").await?;
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "s2.kv") && wrote(&keys, "public.kv"), "{keys:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_temporary_table_created_before_capture_are_not_refused() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    let c = e.client().await?;
    e.f.admin.simple_query("CAPTURE STOP").await?;
    c.batch_execute("CREATE TEMP TABLE kv (id int PRIMARY KEY)").await?;
    e.f.capture_start().await?;
    // The proxy did not see the temp table created: it resolves kv to
    // public.kv, and learns from the tableoid that the row went elsewhere.
    c.batch_execute("INSERT INTO kv VALUES (71)").await?;
    c.batch_execute("INSERT INTO public.kv VALUES (72)").await?;
    let n: i64 = c.query_one("SELECT count(*) FROM pg_temp.kv", &[]).await?.get(0);
    ensure!(n == 1, "{n} rows in the temp table");
    check(&e, 72, "public", "next to a temp table").await?;
    ensure!(logged_as(&e, 71)?.is_empty(), "a temp table's row was logged");
    e.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_partitions_are_logged_under_the_table_written() -> Result<()> {
    let e = Escape::configured(
        "CREATE TABLE m (id int NOT NULL, at int NOT NULL, v int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM (0) TO (100) PARTITION BY RANGE (at);
         CREATE TABLE m_1a PARTITION OF m_1 FOR VALUES FROM (0) TO (50);
         CREATE TABLE m_1b PARTITION OF m_1 FOR VALUES FROM (50) TO (100);",
        |c| c.capture.catalog_refresh_ms = 60_000,
    )
    .await?;
    // A partition created after the snapshot: its rows' tableoid is looked up.
    e.direct
        .batch_execute("CREATE TABLE m_2 PARTITION OF m FOR VALUES FROM (100) TO (200)")
        .await?;
    let c = e.client().await?;
    c.batch_execute("INSERT INTO m VALUES (1, 10), (2, 60), (3, 150)")
        .await
        .context("insert")?;
    c.batch_execute("UPDATE m SET v = 1 WHERE at < 100")
        .await
        .context("update")?;
    c.execute("DELETE FROM m WHERE id = $1", &[&3]).await?;
    c.batch_execute("INSERT INTO m_1a VALUES (4, 20)").await?;
    for id in [1, 2, 3] {
        ensure!(logged_as(&e, id)? == ["public.m"], "key {id}: {:?}", logged_as(&e, id)?);
    }
    ensure!(logged_as(&e, 4)? == ["public.m_1a"], "key 4: {:?}", logged_as(&e, 4)?);
    // Not finish(): the WAL names the leaf partitions, the log the table
    // the statement named (as catch-up and the mapping expect).
    Ok(())
}

/// A wrapped autocommit write refused at its commit point: the client gets
/// the error and no CommandComplete (PostgreSQL sends none for a statement
/// whose commit failed), then an idle ReadyForQuery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_at_its_commit_reports_no_success() -> Result<()> {
    use crate::support::{query_msg, RawConn};
    let e = Escape::start(SCHEMA).await?;
    let user = e.f.cluster.superuser().to_owned();
    let mut c = RawConn::start(e.proxy().addr(), &user, "postgres").await?;
    c.send(&query_msg(
        "SELECT set_config('search_path', 's' || '2, public', false)",
    ))
    .await?;
    c.until_ready().await?;
    c.send(&query_msg("INSERT INTO dk VALUES (70, 71) RETURNING id"))
        .await?;
    let answer = c.until_ready().await?;
    let tags: Vec<char> = answer.iter().map(|m| m.tag as char).collect();
    ensure!(!tags.contains(&'C'), "a refused write must report no success: {tags:?}");
    ensure!(
        answer.iter().find_map(|m| m.code()).as_deref() == Some("0A000"),
        "{tags:?}"
    );
    ensure!(
        answer
            .last()
            .is_some_and(|m| m.tag == b'Z' && m.body.first() == Some(&b'I')),
        "{tags:?}"
    );
    ensure!(
        where_is(&e.direct, "dk", "id", 70).await?.is_empty(),
        "the refused row committed"
    );
    e.finish().await?;
    Ok(())
}

/// Settings made inside a transaction refused at its COMMIT are rolled back
/// with it: the proxy must not keep them (a COPY after it, which carries no
/// tableoid, would be logged under the wrong table). Also through the
/// extended protocol, whose refused COMMIT ends the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_of_a_refused_transaction_are_not_kept() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    let c = e.client().await?;
    c.batch_execute("BEGIN; SET search_path TO s2, public").await?;
    // Read by the server, not by the proxy: the row goes to public.dk.
    c.batch_execute("SELECT set_config('search_path', 'pub' || 'lic', true)")
        .await?;
    c.batch_execute("INSERT INTO dk VALUES (80, 81)").await?;
    expect_sqlstate(c.batch_execute("COMMIT").await, "0A000")?;
    copy(&c, "COPY kv (id) FROM STDIN", "82\n").await?;
    check(&e, 82, "public", "COPY after a refused transaction's SET").await?;

    c.execute("BEGIN", &[]).await?;
    c.execute("SET search_path TO s2, public", &[]).await?;
    c.execute("SELECT set_config('search_path', 'pub' || 'lic', true)", &[])
        .await?;
    c.execute("INSERT INTO dk VALUES ($1, $2)", &[&83, &84]).await?;
    expect_sqlstate(c.execute("COMMIT", &[]).await, "0A000")?;
    // The transaction is over, as after any failed COMMIT.
    c.execute("SELECT 1", &[]).await.context("after the refused COMMIT")?;
    copy(&c, "COPY kv (id) FROM STDIN", "85\n").await?;
    check(&e, 85, "public", "COPY after a refused extended COMMIT's SET").await?;
    e.finish().await?;
    Ok(())
}

/// A temp table whose CREATE never ran (its query was refused) does not
/// hide the permanent table of the same name from capture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_table_never_created_hides_nothing() -> Result<()> {
    let e = Escape::start(SCHEMA).await?;
    let c = e.client().await?;
    expect_sqlstate(
        c.batch_execute("CREATE TEMP TABLE kv (id int PRIMARY KEY); INSERT INTO no_such_table VALUES (1)")
            .await,
        "0A000",
    )?;
    c.batch_execute("INSERT INTO kv VALUES (90)").await?;
    check(&e, 90, "public", "a write after a refused CREATE TEMP").await?;
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "public.kv"), "{keys:?}");
    Ok(())
}

/// A row that went to another table than the proxy resolved, keyed the
/// same, whose default runs a writing VOLATILE function: that write is
/// refused too (its audit row would escape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_gone_to_a_table_whose_default_writes_is_refused() -> Result<()> {
    let schema = format!(
        "{SCHEMA}
        CREATE TABLE audit (n serial PRIMARY KEY, at timestamptz DEFAULT now());
        CREATE FUNCTION s2.bump() RETURNS int VOLATILE LANGUAGE sql AS
            'INSERT INTO public.audit DEFAULT VALUES RETURNING n';
        CREATE TABLE public.av (id int PRIMARY KEY, v int);
        CREATE TABLE s2.av (id int PRIMARY KEY, v int DEFAULT s2.bump());"
    );
    let e = Escape::start(&schema).await?;
    let c = e.client().await?;
    c.batch_execute("SELECT set_config('search_path', 's' || '2, public', false)")
        .await?;
    let msg = expect_sqlstate(c.batch_execute("INSERT INTO av (id) VALUES (95)").await, "0A000")?;
    ensure!(msg.contains("bump"), "{msg}");
    ensure!(
        where_is(&e.direct, "av", "id", 95).await?.is_empty(),
        "the refused row committed"
    );
    e.finish().await?;
    Ok(())
}
