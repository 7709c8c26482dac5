//! Escapes through user-defined VOLATILE functions a statement reaches
//! without naming them: views, operators, column and domain defaults, check
//! and domain constraints, casts, row-level security policies, and the
//! built-in functions that write large objects. Each must be refused while
//! capture is on; a function on `capture.read_only_functions` and a STABLE
//! function must not be.
//!
//! PostgreSQL itself refuses a VOLATILE function in a generated column
//! ("generation expression is not immutable") and in an index expression,
//! so neither has a case here.

use super::{wrote, Escape};
use anyhow::{ensure, Context, Result};

/// `audit` has no primary key, so the oracle does not count its rows: a
/// case can prove, inside a transaction it rolls back on the direct
/// connection, that its statement really writes there.
const BASE: &str = "
    CREATE TABLE audit (n int);
    CREATE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE
        AS 'INSERT INTO audit VALUES (1) RETURNING n';
    CREATE FUNCTION bump_ok(int) RETURNS boolean LANGUAGE sql VOLATILE
        AS 'INSERT INTO audit VALUES ($1) RETURNING true';
";

/// Runs `stmt` through the proxy (after `prelude`) and expects it refused
/// with SQLSTATE 0A000 and a message naming every one of `names`; proves on
/// the direct connection (rolled back) that the statement writes `audit`;
/// and checks that the log misses nothing.
async fn refused(schema: &str, prelude: &str, stmt: &str, names: &[&str]) -> Result<()> {
    let e = Escape::start(&format!("{BASE}{schema}")).await?;
    let c = e.client().await?;
    if !prelude.is_empty() {
        c.batch_execute(prelude).await.context("prelude")?;
    }
    let err = c
        .batch_execute(stmt)
        .await
        .err()
        .with_context(|| format!("`{stmt}` was not refused"))?;
    let db = err.as_db_error().with_context(|| format!("{err:?}"))?;
    ensure!(db.code().code() == "0A000", "`{stmt}`: {db:?}");
    for name in names {
        ensure!(
            db.message().contains(name),
            "`{stmt}`: message does not name {name}: {db:?}"
        );
    }
    let tx = format!("BEGIN; {prelude}; {stmt}");
    e.direct.batch_execute(&tx).await.context("direct run")?;
    let written: i64 = e
        .direct
        .query_one(
            "SELECT (SELECT count(*) FROM audit) + (SELECT count(*) FROM pg_largeobject_metadata)",
            &[],
        )
        .await?
        .get(0);
    e.direct.batch_execute("ROLLBACK; RESET ROLE").await?;
    ensure!(written > 0, "`{stmt}` does not write: the case proves nothing");
    e.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_calling_a_volatile_function_is_refused() -> Result<()> {
    refused(
        "CREATE VIEW v AS SELECT bump() AS b",
        "",
        "SELECT * FROM v",
        &["public.v", "public.bump()"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_over_such_a_view_is_refused() -> Result<()> {
    refused(
        "CREATE VIEW v1 AS SELECT bump() AS b; CREATE VIEW v2 AS SELECT b FROM v1",
        "",
        "SELECT * FROM v2",
        &["public.v2", "public.v1", "public.bump()"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_backed_by_a_volatile_function_is_refused() -> Result<()> {
    refused(
        "CREATE FUNCTION bump_op(int, int) RETURNS int LANGUAGE sql VOLATILE
             AS 'INSERT INTO audit VALUES ($1) RETURNING $2';
         CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = bump_op)",
        "",
        "SELECT 1 ### 2",
        &["###", "public.bump_op("],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_default_calling_a_volatile_function_is_refused() -> Result<()> {
    refused(
        "CREATE TABLE t (id int PRIMARY KEY, b int DEFAULT bump())",
        "",
        "INSERT INTO t (id) VALUES (1)",
        &["public.t", "public.bump()"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_constraint_calling_a_volatile_function_is_refused() -> Result<()> {
    refused(
        "CREATE TABLE t (id int PRIMARY KEY CONSTRAINT audited CHECK (bump_ok(id)))",
        "",
        "INSERT INTO t (id) VALUES (1)",
        &["audited", "public.bump_ok("],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_default_calling_a_volatile_function_is_refused() -> Result<()> {
    refused(
        "CREATE DOMAIN d AS int DEFAULT bump(); CREATE TABLE t (id int PRIMARY KEY, b d)",
        "",
        "INSERT INTO t (id) VALUES (1)",
        &["public.d", "public.bump()"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_check_calling_a_volatile_function_is_refused() -> Result<()> {
    refused(
        "CREATE DOMAIN d AS int CHECK (bump_ok(VALUE)); CREATE TABLE t (id int PRIMARY KEY, b d)",
        "",
        "INSERT INTO t (id, b) VALUES (1, 1)",
        &["public.d", "public.bump_ok("],
    )
    .await
}

const CAST: &str = "
    CREATE TYPE mytype AS ENUM ('a');
    CREATE FUNCTION to_mytype(int) RETURNS mytype LANGUAGE sql VOLATILE
        AS 'INSERT INTO audit VALUES ($1) RETURNING ''a''::mytype';
    CREATE CAST (int AS mytype) WITH FUNCTION to_mytype(int);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_through_a_volatile_function_is_refused() -> Result<()> {
    refused(CAST, "", "SELECT 1::mytype", &["public.mytype", "public.to_mytype("]).await?;
    refused(CAST, "", "SELECT CAST(1 AS mytype)", &["public.to_mytype("]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_calling_a_volatile_function_is_refused() -> Result<()> {
    // A superuser bypasses row-level security: the statement runs as `app`.
    refused(
        "CREATE TABLE t (id int PRIMARY KEY);
         INSERT INTO t VALUES (1);
         ALTER TABLE t ENABLE ROW LEVEL SECURITY;
         CREATE POLICY seen ON t USING (bump_ok(id));
         CREATE ROLE app;
         GRANT ALL ON t, audit TO app",
        "SET ROLE app",
        "SELECT * FROM t",
        &["seen", "public.bump_ok("],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_object_writes_are_refused() -> Result<()> {
    refused("", "", "SELECT lo_create(0)", &["lo_create"]).await?;
    refused("", "", "SELECT lowrite(lo_open(lo_creat(-1), 131072), 'x')", &["lo"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_on_the_read_only_list_is_allowed() -> Result<()> {
    let schema = "
        CREATE FUNCTION peek() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 7';
        CREATE TABLE t (id int PRIMARY KEY, b int DEFAULT peek());
        CREATE VIEW v AS SELECT peek() AS b;
    ";
    let e = Escape::configured(schema, |c| {
        c.capture.read_only_functions = vec!["public.peek".into(), "public.nosuch".into()];
    })
    .await?;
    let shown = e.f.show_capture().await?;
    ensure!(
        shown.get("read_only_functions").map(String::as_str) == Some("public.peek, public.nosuch"),
        "{shown:?}"
    );
    ensure!(
        shown.get("read_only_functions_unknown").map(String::as_str) == Some("public.nosuch"),
        "{shown:?}"
    );
    let c = e.client().await?;
    let b: i32 = c.query_one("SELECT b FROM v", &[]).await?.get(0);
    ensure!(b == 7);
    c.batch_execute("SELECT peek(); INSERT INTO t (id) VALUES (1)").await?;
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "public.t"), "{keys:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stable_function_is_not_refused() -> Result<()> {
    let e = Escape::start(
        "CREATE FUNCTION seven() RETURNS int LANGUAGE sql STABLE AS 'SELECT 7';
         CREATE TABLE t (id int PRIMARY KEY, b int DEFAULT seven() CHECK (b = seven()));
         CREATE VIEW v AS SELECT seven() AS b;",
    )
    .await?;
    let c = e.client().await?;
    let b: i32 = c.query_one("SELECT b FROM v", &[]).await?.get(0);
    ensure!(b == 7);
    c.batch_execute("INSERT INTO t (id) VALUES (1)").await?;
    let keys = e.finish().await?;
    ensure!(wrote(&keys, "public.t"), "{keys:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_calling_a_large_object_writer_is_refused() -> Result<()> {
    // Built-in functions leave no pg_depend row: found in the stored tree.
    refused(
        "CREATE TABLE t (id int PRIMARY KEY, blob oid DEFAULT lo_create(0))",
        "",
        "INSERT INTO t (id) VALUES (1)",
        &["default of public.t.blob", "lo_create"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_into_a_table_whose_default_writes_is_refused() -> Result<()> {
    let e = Escape::start(&format!(
        "{BASE} CREATE TABLE t (id int PRIMARY KEY, b int DEFAULT bump())"
    ))
    .await?;
    let c = e.client().await?;
    let err = c
        .copy_in::<_, bytes::Bytes>("COPY t (id) FROM STDIN")
        .await
        .err()
        .context("COPY was not refused")?;
    let db = err.as_db_error().with_context(|| format!("{err:?}"))?;
    ensure!(
        db.code().code() == "0A000" && db.message().contains("public.bump()"),
        "{db:?}"
    );
    e.finish().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_check_calling_a_volatile_function_is_refused() -> Result<()> {
    // A write through the parent runs the partition's own checks.
    refused(
        "CREATE TABLE p (id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100);
         ALTER TABLE p1 ADD CONSTRAINT audited CHECK (bump_ok(id))",
        "",
        "INSERT INTO p VALUES (1)",
        &["public.p1", "audited", "public.bump_ok("],
    )
    .await
}
