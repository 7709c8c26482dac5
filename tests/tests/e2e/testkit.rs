//! Tests of the testkit itself: clusters start, authenticate as configured,
//! serve real clients, stop and restart, and clean up after themselves.

use anyhow::{ensure, Context, Result};
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn trust_cluster_answers_queries() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    assert_eq!(cluster.host(), "127.0.0.1");
    assert!(cluster.data_dir().join("PG_VERSION").is_file());

    let client = cluster.connect("postgres").await?;
    let row = client.query_one("select 1::int4", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 1);

    let row = client
        .query_one(
            "select current_setting('server_version_num')::int4, current_user::text, current_setting('fsync')",
            &[],
        )
        .await?;
    let version: i32 = row.get(0);
    assert!((150000..160000).contains(&version), "server version {version}");
    assert_eq!(row.get::<_, String>(1), "postgres");
    assert_eq!(row.get::<_, String>(2), "off");
    Ok(())
}

#[tokio::test]
async fn scram_cluster_checks_passwords() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder()
        .scram("super-secret")
        .user("app", "secret")
        .database_owned_by("appdb", "app")
        .start()
        .await?;

    // The right password works, and the session is who it claims to be.
    let client = cluster.connect_as("app", "appdb").await?;
    let row = client
        .query_one("select current_user::text, current_database()::text", &[])
        .await?;
    assert_eq!(row.get::<_, String>(0), "app");
    assert_eq!(row.get::<_, String>(1), "appdb");
    let row = client
        .query_one("select rolpassword from pg_authid where rolname = 'app'", &[])
        .await;
    // `app` is no superuser, so it may not read pg_authid.
    assert!(row.is_err());

    // A wrong password is refused by the server with invalid_password.
    let mut config = cluster.pg_config("app", "appdb");
    config.password("not-the-secret");
    let error = match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => anyhow::bail!("a wrong password was accepted"),
        Err(e) => e,
    };
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD), "{error}");

    // The superuser's password is stored as a SCRAM verifier.
    let admin = cluster.connect("postgres").await?;
    let row = admin
        .query_one("select rolpassword from pg_authid where rolname = 'app'", &[])
        .await?;
    let stored: String = row.get(0);
    ensure!(stored.starts_with("SCRAM-SHA-256$"), "stored {stored}");
    Ok(())
}

#[tokio::test]
async fn md5_cluster_stores_md5_hashes() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder()
        .md5("super-secret")
        .user("app", "secret")
        .start()
        .await?;
    let client = cluster.connect("postgres").await?;
    let rows = client
        .query(
            "select rolname::text, rolpassword from pg_authid where rolname in ('app', 'postgres') order by 1",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), 2);
    for row in rows {
        let stored: String = row.get(1);
        ensure!(stored.starts_with("md5"), "{}: {stored}", row.get::<_, String>(0));
    }
    cluster.connect_as("app", "postgres").await?;

    let mut config = cluster.pg_config("app", "postgres");
    config.password("wrong");
    let error = config
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .context("a wrong md5 password was accepted")?;
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD), "{error}");
    Ok(())
}

#[tokio::test]
async fn client_tools_and_settings() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder()
        .setting("work_mem", "8MB")
        .database("bench")
        .start()
        .await?;

    let out = cluster.endpoint().psql_ok("bench", "show work_mem").await?;
    assert_eq!(out.trim(), "8MB");

    let init = cluster.pgbench("bench", &["-i", "-q", "-s", "1"]).await?;
    ensure!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let run = cluster.pgbench("bench", &["-c", "2", "-t", "20", "-n"]).await?;
    ensure!(
        run.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report = String::from_utf8_lossy(&run.stdout);
    ensure!(
        report.contains("number of transactions actually processed: 40/40"),
        "{report}"
    );

    let client = cluster.connect("bench").await?;
    let row = client.query_one("select count(*) from pgbench_accounts", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), 100_000);
    assert!(cluster.bin("pg_dump").is_file());
    Ok(())
}

#[tokio::test]
async fn stop_start_again_and_cleanup() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let root = cluster
        .data_dir()
        .parent()
        .context("data dir has a parent")?
        .to_path_buf();
    let client = cluster.connect("postgres").await?;
    client
        .batch_execute("create table kept (v int); insert into kept values (7)")
        .await?;

    cluster.stop().await?;
    assert!(!cluster.is_running());
    assert!(cluster.connect("postgres").await.is_err());
    assert!(client.is_closed() || client.simple_query("select 1").await.is_err());

    cluster.start_again().await?;
    let client = cluster.connect("postgres").await?;
    let row = client.query_one("select v from kept", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 7);

    let log = cluster.log();
    assert!(log.contains("database system is ready to accept connections"), "{log}");

    drop(client);
    drop(cluster);
    assert!(!root.exists(), "{} was not removed", root.display());
    Ok(())
}

#[tokio::test]
async fn test_proxy_serves_clients_and_tools() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder().database("shop").start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    assert_ne!(proxy.port(), cluster.port());

    let client = proxy.connect("shop").await?;
    let row = client
        .query_one("select current_database()::text, current_user::text", &[])
        .await?;
    assert_eq!(row.get::<_, String>(0), "shop");
    assert_eq!(row.get::<_, String>(1), "postgres");

    // psql and pgbench run asynchronously, so the proxy on this test's
    // single-threaded runtime keeps serving them.
    let out = proxy.endpoint().psql_ok("shop", "select 40 + 2").await?;
    assert_eq!(out.trim(), "42");
    let init = proxy.endpoint().pgbench("shop", &["-i", "-q", "-s", "1"]).await?;
    ensure!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let direct = cluster.connect("shop").await?;
    let row = direct.query_one("select count(*) from pgbench_branches", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), 1);

    drop(client);
    proxy.shutdown().await;
    Ok(())
}
