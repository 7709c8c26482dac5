//! Clients to the proxy over TLS: tokio-postgres (rustls) and psql with
//! sslmode=require and verify-full, cancel over TLS, `clients = "require"`
//! refusing a client in clear text, and GSSENCRequest still declined.

use super::Pki;
use crate::support::{expect_sqlstate, sqlstate, within, RawConn, PROMPT};
use anyhow::{ensure, Context, Result};
use std::time::Duration;
use switchyard_proxy::config::{ClientTls, TlsConfig};
use switchyard_proxy::Config;
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio_postgres::config::SslMode;

/// A proxy in front of `cluster` serving TLS with `pki`'s certificate.
async fn tls_proxy(cluster: &Cluster, pki: &Pki, clients: ClientTls) -> Result<TestProxy> {
    let mut config = Config::trusting("127.0.0.1:0".parse()?, cluster.host(), cluster.port());
    config.tls = Some(TlsConfig {
        cert: pki.cert_path(),
        key: pki.key_path(),
        clients,
    });
    Ok(TestProxy::start_with(config)
        .await?
        .with_login(cluster.superuser(), None)
        .with_binaries(cluster.binaries().clone()))
}

/// Checks that a query over `client` answers every row intact (enough
/// rows that the answer spans many TLS records).
async fn rows_match(client: &tokio_postgres::Client) -> Result<()> {
    client
        .batch_execute("create temp table t as select g as id, md5(g::text) as v from generate_series(1, 2000) g")
        .await?;
    let rows = client.query("select id, v from t order by id", &[]).await?;
    ensure!(rows.len() == 2000, "got {} rows", rows.len());
    for (i, row) in rows.iter().enumerate() {
        let id: i32 = row.get(0);
        let v: &str = row.get(1);
        ensure!(id == i as i32 + 1, "row {i} has id {id}");
        ensure!(v.len() == 32, "row {i} has v {v:?}");
    }
    let sum: i64 = client.query_one("select sum(id)::int8 from t", &[]).await?.get(0);
    ensure!(sum == 2000 * 2001 / 2, "sum {sum}");
    // About 5 MB each way, more than a socket buffer holds: writes that
    // the socket takes only in part, through the TLS layer.
    let big = client
        .query(
            "select g, repeat(chr(65 + g % 26), 1000) from generate_series(1, 5000) g",
            &[],
        )
        .await?;
    ensure!(big.len() == 5000, "got {} rows", big.len());
    for row in &big {
        let g: i32 = row.get(0);
        let s: &str = row.get(1);
        let want = char::from(65 + (g % 26) as u8).to_string().repeat(1000);
        ensure!(s == want, "row {g} differs");
    }
    let text: String = (1..=5000).map(|g| format!("{g}\t{}\n", "y".repeat(1000))).collect();
    client.batch_execute("create temp table c (id int, v text)").await?;
    let sink = client.copy_in("copy c from stdin").await?;
    futures_util::pin_mut!(sink);
    futures_util::SinkExt::send(&mut sink, bytes::Bytes::from(text.clone())).await?;
    let copied = sink.finish().await?;
    ensure!(copied == 5000, "copied {copied}");
    let back: i64 = client
        .query_one("select sum(length(v) + id)::int8 from c", &[])
        .await?
        .get(0);
    ensure!(back == 5000 * 1000 + 5000 * 5001 / 2, "copied back {back}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_with_verify_full_and_require() -> Result<()> {
    init_tracing();
    let pki = Pki::new("switchyard test CA")?;
    let cluster = Cluster::start().await?;
    let proxy = tls_proxy(&cluster, &pki, ClientTls::Allow).await?;

    // tokio-postgres, verifying the proxy's certificate and host name, by
    // IP address and by name.
    for host in ["127.0.0.1", "localhost"] {
        let mut pg = proxy.pg_config("postgres");
        pg.host(host).ssl_mode(SslMode::Require);
        let (client, conn) = pg.connect(pki.connector()?).await?;
        tokio::spawn(conn);
        rows_match(&client).await?;
    }

    // psql: require (encrypted, not verified) and verify-full.
    for (mode, host) in [
        ("require", "127.0.0.1"),
        ("verify-full", "localhost"),
        ("verify-full", "127.0.0.1"),
    ] {
        let mut cmd = proxy.endpoint().command("psql", "postgres");
        cmd.env("PGHOST", host)
            .env("PGSSLMODE", mode)
            .env("PGSSLROOTCERT", pki.ca_path())
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "\\conninfo",
                "-c",
            ])
            .arg("select count(*), sum(g) from generate_series(1, 10000) g");
        let out = within(Duration::from_secs(30), "psql", cmd.output()).await??;
        ensure!(
            out.status.success(),
            "psql sslmode={mode} host={host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        // psql's \conninfo names the protocol of an encrypted connection.
        assert!(
            stdout.contains("SSL connection (protocol: TLS"),
            "sslmode={mode}: {stdout}"
        );
        assert_eq!(
            stdout.lines().last().map(str::trim),
            Some("10000|50005000"),
            "sslmode={mode}"
        );
    }

    // A client that does not ask for TLS still gets in with `allow`.
    let plain = proxy.connect("postgres").await?;
    assert_eq!(plain.query_one("select 7::int4", &[]).await?.get::<_, i32>(0), 7);

    // A CA that did not sign the proxy's certificate fails verify-full.
    let other = Pki::new("another CA")?;
    let mut pg = proxy.pg_config("postgres");
    pg.ssl_mode(SslMode::Require);
    let refused = pg.connect(other.connector()?).await;
    let error = refused.err().map(|e| format!("{e:?}")).unwrap_or_default();
    ensure!(error.contains("UnknownIssuer"), "wrong CA not refused: {error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cancel_over_tls_reaches_the_backend() -> Result<()> {
    init_tracing();
    let pki = Pki::new("switchyard test CA")?;
    let cluster = Cluster::start().await?;
    let proxy = tls_proxy(&cluster, &pki, ClientTls::Require).await?;
    let mut pg = proxy.pg_config("postgres");
    pg.ssl_mode(SslMode::Require);
    let (client, conn) = pg.connect(pki.connector()?).await?;
    tokio::spawn(conn);
    let token = client.cancel_token();
    let (result, cancelled) = tokio::join!(client.simple_query("select pg_sleep(30)"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // tokio-postgres sends its cancel request over TLS too.
        token.cancel_query(pki.connector()?).await?;
        Ok::<_, anyhow::Error>(())
    });
    cancelled?;
    let message = expect_sqlstate(within(PROMPT, "cancelled query", async { result }).await?, "57014")?;
    assert!(message.contains("canceling statement due to user request"), "{message}");
    assert_eq!(client.query_one("select 1::int4", &[]).await?.get::<_, i32>(0), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_clear_text_clients() -> Result<()> {
    init_tracing();
    let pki = Pki::new("switchyard test CA")?;
    let cluster = Cluster::start().await?;
    let proxy = tls_proxy(&cluster, &pki, ClientTls::Require).await?;

    // tokio-postgres without TLS.
    let refused = proxy.connect("postgres").await;
    let error = refused.err().context("a clear-text client was let in")?;
    assert_eq!(sqlstate(&error), Some("28000"), "{error}");
    let message = error.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(message.contains("sslmode=require"), "{message}");

    // psql with sslmode=disable sees the same words.
    let out = proxy.endpoint().psql("postgres", "select 1").await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sslmode=require"), "{stderr}");

    // A GSSENCRequest is still declined, and TLS after it still works.
    let mut raw = RawConn::connect(proxy.addr()).await?;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await?;
    assert_eq!(raw.read_byte().await?, b'N');

    // With TLS the same proxy lets the client in.
    let mut pg = proxy.pg_config("postgres");
    pg.ssl_mode(SslMode::Require);
    let (client, conn) = pg.connect(pki.connector()?).await?;
    tokio::spawn(conn);
    assert_eq!(client.query_one("select 2::int4", &[]).await?.get::<_, i32>(0), 2);

    // The console, over TLS too, shows the settings (paths, never the key).
    let mut pg = proxy.pg_config("switchyard");
    pg.ssl_mode(SslMode::Require);
    let (console, conn) = pg.connect(pki.connector()?).await?;
    tokio::spawn(conn);
    let config = crate::support::table(&console, "SHOW CONFIG").await?.map();
    assert_eq!(config["tls.clients"], "require");
    assert_eq!(config["tls.cert"], pki.cert_path().display().to_string());
    assert_eq!(config["tls.key"], pki.key_path().display().to_string());
    assert!(config.values().all(|v| !v.contains("PRIVATE KEY")), "{config:?}");
    Ok(())
}

/// Runs the `switchyard` binary's console command `args` against `proxy`.
async fn cli(proxy: &TestProxy, login: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(crate::capture_kill::switchyard_binary()?);
    cmd.args(args)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(proxy.port().to_string())
        .args(["-U", login])
        .env_remove("PGPASSWORD")
        .kill_on_drop(true);
    Ok(within(Duration::from_secs(60), "the switchyard command", cmd.output()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_the_cli_reaches_a_console_that_requires_tls() -> Result<()> {
    init_tracing();
    let pki = Pki::new("switchyard test CA")?;
    let other = Pki::new("another CA")?;
    let cluster = Cluster::start().await?;
    let proxy = tls_proxy(&cluster, &pki, ClientTls::Require).await?;
    let login = cluster.superuser();
    let shown = |o: &std::process::Output| {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // By default (prefer) the CLI takes the TLS the proxy offers.
    let out = cli(&proxy, login, &["status"]).await?;
    ensure!(out.status.success(), "{}", shown(&out));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("proxy"),
        "{}",
        shown(&out)
    );
    let out = cli(&proxy, login, &["admin", "SHOW VERSION; SHOW STATUS"]).await?;
    ensure!(out.status.success(), "{}", shown(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains("switchyard") && stdout.contains("state"),
        "{}",
        shown(&out)
    );

    // Several commands share one session: an attached PAUSE holds for the
    // next command and ends with the session.
    let out = cli(&proxy, login, &["admin", "PAUSE 10s; SHOW STATUS"]).await?;
    ensure!(out.status.success(), "{}", shown(&out));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("paused"),
        "{}",
        shown(&out)
    );
    // (the proxy sees the session end a moment after the command exits)
    let mut serving = String::new();
    for _ in 0..20 {
        let out = cli(&proxy, login, &["status"]).await?;
        serving = shown(&out);
        if String::from_utf8_lossy(&out.stdout).contains("serving") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        serving.contains("serving"),
        "the session's pause outlived it: {serving}"
    );

    // verify-full against the CA that signed the proxy's certificate.
    let ca = pki.ca_path().display().to_string();
    let out = cli(
        &proxy,
        login,
        &["lag", "--sslmode", "verify-full", "--sslrootcert", &ca],
    )
    .await?;
    ensure!(out.status.success(), "{}", shown(&out));

    // Another CA: refused, saying why; in clear text: the proxy's words.
    let wrong = other.ca_path().display().to_string();
    let out = cli(
        &proxy,
        login,
        &["lag", "--sslmode", "verify-full", "--sslrootcert", &wrong],
    )
    .await?;
    ensure!(out.status.code() == Some(1), "{}", shown(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("cannot reach the admin console") && stderr.contains("check --sslmode and --sslrootcert"),
        "{}",
        shown(&out)
    );
    // verify-full without a CA is a bad argument, as is a CA file that is not there.
    let out = cli(&proxy, login, &["lag", "--sslmode", "verify-full"]).await?;
    ensure!(out.status.code() == Some(2), "{}", shown(&out));
    let missing = pki.path("missing.pem").display().to_string();
    let out = cli(
        &proxy,
        login,
        &["lag", "--sslmode", "verify-ca", "--sslrootcert", &missing],
    )
    .await?;
    ensure!(out.status.code() == Some(2), "{}", shown(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("--sslrootcert"),
        "{}",
        shown(&out)
    );
    let out = cli(&proxy, login, &["status", "--sslmode", "disable"]).await?;
    ensure!(out.status.code() == Some(1), "{}", shown(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("sslmode=require"),
        "{}",
        shown(&out)
    );
    // A console command that does not parse is a bad argument.
    let out = cli(&proxy, login, &["admin", "SHOW VERSION; NO SUCH COMMAND"]).await?;
    ensure!(out.status.code() == Some(2), "{}", shown(&out));
    ensure!(
        out.stdout.is_empty(),
        "ran before every command parsed: {}",
        shown(&out)
    );
    Ok(())
}

#[test]
fn tls_config_errors_say_what_to_fix() -> Result<()> {
    let pki = Pki::new("switchyard test CA")?;
    let base = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[source]\nhost = \"127.0.0.1\"\n[auth]\nmethod = \"trust\"\n[tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let missing = pki.path("absent.pem");
    let e = Config::parse(&base(&missing, &pki.key_path()), "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls.cert") && e.contains("cannot read"), "{e}");
    std::fs::write(pki.path("junk.pem"), "not a certificate\n")?;
    let e = Config::parse(&base(&pki.path("junk.pem"), &pki.key_path()), "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls.cert") && e.contains("holds no certificate"), "{e}");
    let e = Config::parse(&base(&pki.cert_path(), &pki.cert_path()), "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls.key") && e.contains("no private key"), "{e}");
    // A key of another certificate.
    let other = Pki::new("another CA")?;
    let e = Config::parse(&base(&pki.cert_path(), &other.key_path()), "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls.key") && e.contains("does not go with"), "{e}");
    let e = Config::parse(
        &format!("{}clients = \"sometimes\"\n", base(&pki.cert_path(), &pki.key_path())),
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("clients"), "{e}");
    Config::parse(&base(&pki.cert_path(), &pki.key_path()), "t")?;
    Ok(())
}
