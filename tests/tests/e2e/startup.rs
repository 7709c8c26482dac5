//! The startup phase as clients see it: their parameters reach the server,
//! encryption requests are declined so that they go on in clear text, and
//! protocol versions and options are negotiated.

use crate::support::{connect_watched, first_column, query_msg, startup_message, RawConn};
use anyhow::Result;
use switchyard_tests::{init_tracing, Cluster, TestProxy};

#[tokio::test]
async fn startup_parameters_and_encryption_requests() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;

    // The client's startup parameters reach the server.
    let mut config = proxy.pg_config("postgres");
    config
        .application_name("billing-worker")
        .options("-c statement_timeout=1234 -c search_path=audit,public");
    let (client, _connection) = connect_watched(&config).await?;
    let row = client
        .query_one(
            "select current_setting('statement_timeout'), current_setting('search_path'),
                    current_setting('application_name'), pg_backend_pid()",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, String>(0), "1234ms");
    assert_eq!(row.get::<_, String>(1), "audit,public");
    assert_eq!(row.get::<_, String>(2), "billing-worker");
    let pid: i32 = row.get(3);
    let direct = cluster.connect("postgres").await?;
    let app: String = direct
        .query_one("select application_name from pg_stat_activity where pid = $1", &[&pid])
        .await?
        .get(0);
    assert_eq!(app, "billing-worker");

    // SSLRequest and GSSENCRequest are declined with 'N', and the client
    // goes on in clear text on the same connection.
    let mut raw = RawConn::connect(proxy.addr()).await?;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    assert_eq!(raw.read_byte().await?, b'N');
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await?;
    assert_eq!(raw.read_byte().await?, b'N');
    raw.login("postgres", "postgres").await?;
    raw.send(&query_msg("select 'clear'")).await?;
    assert_eq!(first_column(&raw.until_ready().await?), [Some("clear".to_owned())]);

    // libpq asks for TLS first when it may, and falls back.
    let mut cmd = proxy.endpoint().command("psql", "postgres");
    cmd.env("PGSSLMODE", "prefer").env("PGGSSENCMODE", "prefer").args([
        "-X",
        "-A",
        "-t",
        "-c",
        "select 'ssl=' || ssl from pg_stat_ssl where pid = pg_backend_pid()",
    ]);
    let out = cmd.output().await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ssl=false");
    Ok(())
}

/// A client asking for a newer minor protocol version (3.2, libpq 18's
/// `max_protocol_version=latest`) or for `_pq_.` protocol options must be
/// told what the server side speaks with NegotiateProtocolVersion, as
/// PostgreSQL does; otherwise it believes its request was granted.
#[tokio::test]
async fn newer_protocol_minor_is_negotiated_down() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let mut startup = startup_message(&[
        ("user", "postgres"),
        ("database", "postgres"),
        ("_pq_.test_option", "on"),
    ]);
    startup[4..8].copy_from_slice(&0x0003_0002i32.to_be_bytes());

    // What PostgreSQL itself answers: version 3.0, option not supported.
    let mut direct = RawConn::connect(cluster.addr()).await?;
    direct.send(&startup).await?;
    let want = direct.until_ready().await?;
    let want = want.iter().find(|m| m.tag == b'v').expect("PostgreSQL negotiates");
    assert_eq!(&want.body[..], b"\0\x03\0\0\0\0\0\x01_pq_.test_option\0");

    let mut via = RawConn::connect(proxy.addr()).await?;
    via.send(&startup).await?;
    let got = via.until_ready().await?;
    let tags: String = got.iter().map(|m| m.tag as char).collect();
    let negotiated = got.iter().find(|m| m.tag == b'v');
    anyhow::ensure!(
        negotiated.is_some_and(|m| m.body == want.body),
        "the proxy accepted protocol 3.2 and _pq_.test_option without a \
         NegotiateProtocolVersion (messages: {tags})"
    );
    Ok(())
}
