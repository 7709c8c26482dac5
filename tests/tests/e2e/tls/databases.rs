//! The proxy to its databases over TLS: `sslmode = "verify-full"` against a
//! server with `ssl = on` that refuses clear text, a wrong CA refused with
//! a clear error, `prefer` falling back to clear text, and capture, clone
//! and catch-up against databases that only accept `hostssl`, compared row
//! for row.

use super::Pki;
use crate::capture::Fixture;
use crate::clone::{assert_same, caught_up, load, text, SCHEMA};
use crate::support::{sqlstate, trusting_config};
use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_proxy::{Config, DatabaseConfig};
use switchyard_replay::SslMode;
use switchyard_tests::{init_tracing, Cluster, ClusterBuilder, TestProxy};

const PASSWORD: &str = "tls-secret";

/// Over TCP only TLS gets in (with a password); the socket is for the
/// testkit.
const HOSTSSL_ONLY: &str = "local     all all              trust\n\
                            hostssl   all all 127.0.0.1/32 scram-sha-256\n\
                            hostnossl all all 127.0.0.1/32 reject\n";

/// A cluster serving TLS with `pki`'s certificate and refusing clear text
/// over TCP.
fn ssl_cluster(pki: &Pki) -> ClusterBuilder {
    Cluster::builder()
        .scram(PASSWORD)
        .ssl(pki.cert_pem.clone(), pki.key_pem.clone())
        .pg_hba(HOSTSSL_ONLY)
}

/// A proxy in front of `cluster` reaching it with `sslmode` and `rootcert`.
async fn proxy_with(cluster: &Cluster, sslmode: SslMode, rootcert: Option<&Pki>) -> Result<TestProxy> {
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.source.password = cluster.auth().password().map(str::to_owned);
    config.source.sslmode = sslmode;
    config.source.sslrootcert = rootcert.map(|p| p.ca_path().display().to_string());
    Ok(TestProxy::start_with(config)
        .await?
        .with_login(cluster.superuser(), None)
        .with_binaries(cluster.binaries().clone()))
}

/// Whether the backend behind `client` is encrypted, as the database sees it.
async fn backend_ssl(client: &tokio_postgres::Client) -> Result<bool> {
    Ok(client
        .query_one("select ssl from pg_stat_ssl where pid = pg_backend_pid()", &[])
        .await?
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_verify_full_and_a_wrong_ca() -> Result<()> {
    init_tracing();
    let pki = Pki::new("switchyard test CA")?;
    let cluster = ssl_cluster(&pki).start().await?;

    for (mode, root) in [
        (SslMode::VerifyFull, Some(&pki)),
        (SslMode::VerifyCa, Some(&pki)),
        (SslMode::Require, None),
        (SslMode::Prefer, None),
    ] {
        let proxy = proxy_with(&cluster, mode, root).await?;
        let client = proxy.connect("postgres").await.with_context(|| mode.name())?;
        ensure!(
            backend_ssl(&client).await?,
            "{}: the backend is not encrypted",
            mode.name()
        );
        let n: i64 = client
            .query_one("select count(*) from generate_series(1, 50000)", &[])
            .await?
            .get(0);
        assert_eq!(n, 50000);
    }

    // A CA that did not sign the database's certificate: the client is
    // told why, and what was configured.
    let other = Pki::new("another CA")?;
    let proxy = proxy_with(&cluster, SslMode::VerifyFull, Some(&other)).await?;
    let error = proxy
        .connect("postgres")
        .await
        .err()
        .context("a wrong CA was accepted")?;
    assert_eq!(sqlstate(&error), Some("08006"), "{error}");
    let message = error.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    for part in [
        "TLS handshake failed",
        "invalid peer certificate",
        "sslmode = verify-full",
        "sslrootcert",
    ] {
        ensure!(message.contains(part), "no {part:?} in: {message}");
    }

    // Clear text is refused by this server; disable says so in its words.
    let proxy = proxy_with(&cluster, SslMode::Disable, None).await?;
    let error = proxy
        .connect("postgres")
        .await
        .err()
        .context("clear text was accepted")?;
    let message = error.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    ensure!(
        message.contains("no encryption") || message.contains("rejects"),
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_prefer_falls_back_to_clear_text() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    // prefer is the default.
    let mut config = trusting_config(cluster.host(), cluster.port());
    assert_eq!(config.source.sslmode, SslMode::Prefer);
    config.source.sslrootcert = None;
    let proxy = TestProxy::start_with(config)
        .await?
        .with_login(cluster.superuser(), None);
    let client = proxy.connect("postgres").await?;
    ensure!(!backend_ssl(&client).await?, "a server with ssl off served TLS");
    assert_eq!(client.query_one("select 3::int4", &[]).await?.get::<_, i32>(0), 3);

    // require refuses the same server, saying what to change.
    let proxy = proxy_with(&cluster, SslMode::Require, None).await?;
    let error = proxy
        .connect("postgres")
        .await
        .err()
        .context("require went on in clear text")?;
    assert_eq!(sqlstate(&error), Some("08006"), "{error}");
    let message = error.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    ensure!(
        message.contains("does not accept TLS") && message.contains("sslmode = require"),
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_capture_clone_and_catchup_over_hostssl_only() -> Result<()> {
    init_tracing();
    let pki = Pki::new("switchyard test CA")?;
    let cluster = ssl_cluster(&pki)
        .setting("wal_level", "logical")
        .setting("max_replication_slots", "4")
        .start()
        .await?;
    let port = cluster.port();
    let ca = pki.ca_path().display().to_string();
    let f = Fixture::configured(cluster, |c| {
        c.source.sslmode = SslMode::VerifyFull;
        c.source.sslrootcert = Some(ca.clone());
        c.target = Some(DatabaseConfig {
            host: "127.0.0.1".into(),
            port,
            database: Some("target".into()),
            password: Some(PASSWORD.into()),
            sslmode: SslMode::VerifyFull,
            sslrootcert: Some(ca.clone()),
            ..Default::default()
        });
        c.catchup.workers = 2;
    })
    .await?;
    let source = f.cluster.connect("postgres").await?;
    source.batch_execute(SCHEMA).await?;
    source.batch_execute("CREATE DATABASE target").await?;
    // Capture reads the source's catalog over a TLS control connection.
    f.capture_start().await?;

    let work = tempfile::tempdir()?;
    let config = work.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nhost = \"127.0.0.1\"\nport = {port}\npassword = \"{PASSWORD}\"\n\
             sslmode = \"verify-full\"\nsslrootcert = \"{ca}\"\n\n[auth]\nmethod = \"trust\"\n\n\
             [capture]\nlog_dir = \"{}\"\nuser = \"{}\"\ndatabase = \"postgres\"\n\n\
             [target]\nhost = \"127.0.0.1\"\nport = {port}\ndatabase = \"target\"\npassword = \"{PASSWORD}\"\n\
             sslmode = \"verify-full\"\nsslrootcert = \"{ca}\"\n",
            f.log_path().display(),
            f.cluster.superuser()
        ),
    )?;
    let check = std::process::Command::new(crate::capture_kill::switchyard_binary()?)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()?;
    let shown = text(&check);
    ensure!(check.status.success(), "{shown}");
    ensure!(
        shown
            .lines()
            .any(|l| l.split_whitespace().eq(["source.sslmode", "verify-full"]))
            && shown
                .lines()
                .any(|l| l.trim_start().starts_with("source.sslrootcert ") && l.ends_with("ca.pem"))
            && shown
                .lines()
                .any(|l| l.split_whitespace().eq(["target.sslmode", "verify-full"])),
        "{shown}"
    );

    // Writes through the proxy (its backends over TLS) while the clone runs.
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let c = f.proxy.connect("postgres").await?;
        writers.push(tokio::spawn(load(c, 31 + w, 600)));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dump = work.path().join("dump");
    // The environment says clear text, which this server refuses: the clone
    // must hand pg_dump and pg_restore the config's settings instead.
    let mut cmd = tokio::process::Command::new(crate::capture_kill::switchyard_binary()?);
    cmd.args(["clone", "--config"])
        .arg(&config)
        .args(["--jobs", "2", "--no-owner", "--dir"])
        .arg(&dump)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(f.proxy.port().to_string())
        .args(["-U", f.cluster.superuser()])
        .env("PGSSLMODE", "disable")
        .env("PGSSLROOTCERT", "/nonexistent/root.crt")
        .env_remove("PGPASSWORD")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("switchyard clone did not finish in 120 s")??;
    let shown = text(&out);
    ensure!(out.status.success() && shown.contains("cloned 2 tables"), "{shown}");

    let console = crate::support::admin(&f.proxy).await?;
    console.simple_query("CATCHUP START").await?;
    for w in writers {
        w.await??;
    }
    caught_up(&console, "").await?;
    let target = f.cluster.connect("target").await?;
    assert_same(&source, &target).await?;

    // Every TCP connection the database saw was encrypted (the others are
    // refused by pg_hba), and some were the proxy's own.
    let proxy_tls: i64 = source
        .query_one(
            "select count(*) from pg_stat_activity a join pg_stat_ssl s using (pid) \
             where s.ssl and a.application_name like 'switchyard%'",
            &[],
        )
        .await?
        .get(0);
    ensure!(proxy_tls > 0, "no encrypted control connection of the proxy");
    console.simple_query("CATCHUP STOP").await?;
    Ok(())
}

#[test]
fn tls_database_settings_errors_say_what_to_fix() -> Result<()> {
    let pki = Pki::new("switchyard test CA")?;
    let parse = |source: &str| {
        Config::parse(&format!("[source]\n{source}\n[auth]\nmethod = \"trust\"\n"), "t")
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let e = parse("host = \"db\"\nsslmode = \"verify-full\"").unwrap_err();
    assert!(
        e.contains("source.sslmode") && e.contains("needs sslrootcert") && e.contains("\"system\""),
        "{e}"
    );
    let e = parse("host = \"db\"\nsslmode = \"verify-ca\"\nsslrootcert = \"/nonexistent/ca.pem\"").unwrap_err();
    assert!(e.contains("source.sslrootcert") && e.contains("cannot read"), "{e}");
    std::fs::write(pki.path("empty.pem"), "nothing here\n")?;
    let e = parse(&format!(
        "host = \"db\"\nsslmode = \"require\"\nsslrootcert = \"{}\"",
        pki.path("empty.pem").display()
    ))
    .unwrap_err();
    assert!(
        e.contains("source.sslrootcert") && e.contains("holds no CA certificate"),
        "{e}"
    );
    let e = parse("host = \"/var/run/postgresql\"\nsslmode = \"require\"").unwrap_err();
    assert!(e.contains("source.sslmode") && e.contains("Unix-domain socket"), "{e}");
    let e = parse("host = \"db\"\nsslmode = \"always\"").unwrap_err();
    assert!(e.contains("sslmode"), "{e}");
    parse(&format!(
        "host = \"db\"\nsslmode = \"verify-full\"\nsslrootcert = \"{}\"",
        pki.ca_path().display()
    ))
    .map_err(anyhow::Error::msg)?;
    Ok(())
}
