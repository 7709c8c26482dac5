//! Authentication, terminated at the proxy: clients prove themselves with
//! SCRAM-SHA-256 (clear-text password or a verifier copied from PostgreSQL)
//! or md5 (clear text or an md5 hash), and the proxy logs in to SCRAM and
//! md5 clusters with its own credentials.

use crate::support::{auth_config, expect_sqlstate, trusting_config, user};
use anyhow::{ensure, Result};
use switchyard_proxy::AuthMethod;
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio_postgres::Client;

/// `current_user` and `current_database()` of a session.
async fn whoami(client: &Client) -> Result<(String, String)> {
    let row = client
        .query_one("select current_user::text, current_database()::text", &[])
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The stored password of `role`, read as the superuser.
async fn stored_password(cluster: &Cluster, role: &str) -> Result<String> {
    let su = cluster.connect("postgres").await?;
    let row = su
        .query_one("select rolpassword from pg_authid where rolname = $1", &[&role])
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn scram_clients_and_scram_database() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder()
        .scram("su-secret")
        .user("app", "app-secret")
        .database_owned_by("appdb", "app")
        .start()
        .await?;
    let config = auth_config(
        cluster.host(),
        cluster.port(),
        AuthMethod::ScramSha256,
        vec![user("app", Some("app-secret"), false)],
    );
    // The proxy logs in to the SCRAM cluster with app's own clear password.
    let proxy = TestProxy::start_with(config).await?;
    let client = proxy.connect_as("app", Some("app-secret"), "appdb").await?;
    assert_eq!(whoami(&client).await?, ("app".into(), "appdb".into()));
    client
        .batch_execute("create table notes (body text); insert into notes values ('via scram')")
        .await?;
    let direct = cluster.connect("appdb").await?;
    let body: String = direct.query_one("select body from notes", &[]).await?.get(0);
    assert_eq!(body, "via scram");

    // A wrong password and an unknown user look the same: 28P01.
    let message = expect_sqlstate(proxy.connect_as("app", Some("wrong"), "appdb").await, "28P01")?;
    assert_eq!(message, "password authentication failed for user \"app\"");
    expect_sqlstate(proxy.connect_as("nobody", Some("app-secret"), "appdb").await, "28P01")?;
    // The right password still works after the failures.
    let again = proxy.connect_as("app", Some("app-secret"), "appdb").await?;
    assert_eq!(
        again
            .query_one("select count(*) from notes", &[])
            .await?
            .get::<_, i64>(0),
        1
    );

    // A proxy whose own database password is wrong passes on the
    // database's refusal; one with no password at all says what to set.
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.source.password = Some("not-it".into());
    let wrong = TestProxy::start_with(config).await?;
    let message = expect_sqlstate(wrong.connect_as("app", None, "appdb").await, "28P01")?;
    assert!(message.contains("password authentication failed"), "{message}");
    let none = TestProxy::start_with(trusting_config(cluster.host(), cluster.port())).await?;
    let message = expect_sqlstate(none.connect_as("app", None, "appdb").await, "28000")?;
    assert!(message.contains("none is configured"), "{message}");
    Ok(())
}

#[tokio::test]
async fn scram_verifier_from_postgres() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder()
        .scram("su-secret")
        .user("vuser", "v-secret")
        .start()
        .await?;
    // The proxy is given only PostgreSQL's stored verifier, never the password.
    let verifier = stored_password(&cluster, "vuser").await?;
    ensure!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
    let mut config = auth_config(
        cluster.host(),
        cluster.port(),
        AuthMethod::ScramSha256,
        vec![user("vuser", Some(&verifier), false)],
    );
    config.source.password = Some("v-secret".into());
    let proxy = TestProxy::start_with(config).await?;

    let client = proxy.connect_as("vuser", Some("v-secret"), "postgres").await?;
    assert_eq!(whoami(&client).await?, ("vuser".into(), "postgres".into()));
    let sum: i64 = client
        .query_one("select sum(g)::int8 from generate_series(1, 100) g", &[])
        .await?
        .get(0);
    assert_eq!(sum, 5050);
    expect_sqlstate(proxy.connect_as("vuser", Some("v-secre"), "postgres").await, "28P01")?;
    expect_sqlstate(proxy.connect_as("vuser", Some(""), "postgres").await, "28P01")?;
    Ok(())
}

#[tokio::test]
async fn md5_clients_with_clear_and_hashed_passwords() -> Result<()> {
    init_tracing();
    // A trust cluster that stores md5 hashes, to copy one from.
    let cluster = Cluster::builder()
        .setting("password_encryption", "md5")
        .user("app", "app-pw")
        .user("hashed", "h-secret")
        .start()
        .await?;
    let hash = stored_password(&cluster, "hashed").await?;
    ensure!(hash.starts_with("md5") && hash.len() == 35, "{hash}");
    let config = auth_config(
        cluster.host(),
        cluster.port(),
        AuthMethod::Md5,
        vec![user("app", Some("app-pw"), false), user("hashed", Some(&hash), false)],
    );
    let proxy = TestProxy::start_with(config).await?;

    let app = proxy.connect_as("app", Some("app-pw"), "postgres").await?;
    assert_eq!(whoami(&app).await?.0, "app");
    let hashed = proxy.connect_as("hashed", Some("h-secret"), "postgres").await?;
    assert_eq!(whoami(&hashed).await?.0, "hashed");
    expect_sqlstate(proxy.connect_as("app", Some("h-secret"), "postgres").await, "28P01")?;
    expect_sqlstate(proxy.connect_as("hashed", Some("app-pw"), "postgres").await, "28P01")?;
    expect_sqlstate(proxy.connect_as("ghost", Some("app-pw"), "postgres").await, "28P01")?;
    Ok(())
}

#[tokio::test]
async fn proxy_logs_in_to_an_md5_cluster() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder()
        .md5("su-pw")
        .user("app", "app-pw")
        .database_owned_by("appdb", "app")
        .start()
        .await?;
    ensure!(stored_password(&cluster, "app").await?.starts_with("md5"));

    // Clients use SCRAM with the proxy; the proxy answers the cluster's md5.
    let config = auth_config(
        cluster.host(),
        cluster.port(),
        AuthMethod::ScramSha256,
        vec![user("app", Some("app-pw"), false)],
    );
    let proxy = TestProxy::start_with(config).await?;
    let client = proxy.connect_as("app", Some("app-pw"), "appdb").await?;
    assert_eq!(whoami(&client).await?, ("app".into(), "appdb".into()));
    client
        .batch_execute("create table t (v int); insert into t select generate_series(1, 10)")
        .await?;
    let direct = cluster.connect("appdb").await?;
    let sum: i64 = direct.query_one("select sum(v) from t", &[]).await?.get(0);
    assert_eq!(sum, 55);

    // The testkit's proxy logs in as the superuser with source.password.
    let su_proxy = TestProxy::start(&cluster).await?;
    let su = su_proxy.connect("appdb").await?;
    assert_eq!(whoami(&su).await?, ("postgres".into(), "appdb".into()));

    // A wrong source.password: the cluster's own md5 refusal reaches the client.
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.source.password = Some("wrong".into());
    let wrong = TestProxy::start_with(config).await?;
    let message = expect_sqlstate(wrong.connect_as("app", None, "appdb").await, "28P01")?;
    assert!(
        message.contains("password authentication failed for user \"app\""),
        "{message}"
    );
    Ok(())
}

/// An unknown user name costs what a known one costs: no key derivation on
/// each login (a clear-text password's SCRAM keys are derived once, in the
/// background from the start, and kept;
/// an unknown user gets a mock challenge, stable per name), and the same
/// error as a wrong password. Counted, not timed: the number of PBKDF2
/// derivations stays put across many logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_cost_no_key_derivation() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder()
        .scram("su-secret")
        .user("app", "app-secret")
        .database_owned_by("appdb", "app")
        .start()
        .await?;
    let config = auth_config(
        cluster.host(),
        cluster.port(),
        AuthMethod::ScramSha256,
        vec![user("app", Some("app-secret"), false)],
    );
    let proxy = TestProxy::start_with(config).await?;
    let users = &proxy.proxy().shared().users;
    let client = proxy.connect_as("app", Some("app-secret"), "appdb").await?;
    assert_eq!(whoami(&client).await?, ("app".into(), "appdb".into()));
    // One derivation for the one clear-text password, made once.
    let derived = users.derivations();
    assert_eq!(derived, 1, "derivations for one known user");

    for i in 0..20 {
        let unknown = format!("nobody{}", i % 4);
        let m1 = expect_sqlstate(proxy.connect_as(&unknown, Some("app-secret"), "appdb").await, "28P01")?;
        let m2 = expect_sqlstate(proxy.connect_as("app", Some("wrong"), "appdb").await, "28P01")?;
        // The same words, but for the name.
        assert_eq!(m1.replace(&unknown, "?"), m2.replace("app", "?"));
    }
    proxy.connect_as("app", Some("app-secret"), "appdb").await?;
    assert_eq!(users.derivations(), derived, "logins derived keys again");
    Ok(())
}
