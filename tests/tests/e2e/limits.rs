//! The proxy's own limits under pressure from clients: how many may connect
//! (with a reserve for the DBA), how long a half-sent message may take, and
//! how much client input all sessions together may buffer. Every load here
//! is bounded in count and time, and healthy sessions keep working.

use crate::support::{expect_sqlstate, table, trusting_config, user, within, RawConn, PROMPT};
use anyhow::{ensure, Result};
use std::time::{Duration, Instant};
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio_postgres::Client;

/// `limits.max_clients` holds however many log in at once: connections are
/// counted from accept, so 30 simultaneous logins against a limit of 5 let
/// exactly 5 in (53300 for the rest, as PostgreSQL says it), and the admin
/// reserve still lets the DBA open the console on a full proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_holds_under_simultaneous_logins() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.users = vec![user("dba", None, true), user("postgres", None, false)];
    config.limits.max_clients = 5;
    config.limits.admin_reserve = 2;
    let proxy = TestProxy::start_with(config).await?;

    let logins: Vec<_> = (0..30)
        .map(|_| {
            let config = proxy.pg_config("postgres");
            tokio::spawn(async move {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.simple_query("select 1").await?;
                Ok::<Client, tokio_postgres::Error>(client)
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for login in logins {
        match within(PROMPT * 2, "login", login).await?? {
            Ok(client) => held.push(client),
            Err(e) => {
                expect_sqlstate::<()>(Err(e), "53300")?;
                refused += 1;
            }
        }
    }
    assert_eq!((held.len(), refused), (5, 25), "logins admitted and refused");

    // Full for applications, open for the DBA's console.
    let message = expect_sqlstate(proxy.connect_as("postgres", None, "postgres").await, "53300")?;
    assert!(message.contains("too many clients"), "{message}");
    let dba = proxy.connect_as("dba", None, "switchyard").await?;
    let status = table(&dba, "SHOW STATUS").await?.map();
    assert_eq!(status["state"], "serving");
    // The reserve is for the console only, even for an admin.
    expect_sqlstate(proxy.connect_as("dba", None, "postgres").await, "53300")?;
    for client in &held {
        client.simple_query("select 2").await?;
    }

    // A slot is released when its session ends, and taken again. (The
    // console session counts too, as superusers do in PostgreSQL: with it
    // open, the one freed slot would be the reserve's.)
    drop(dba);
    drop(held.pop());
    let deadline = Instant::now() + PROMPT;
    let again = loop {
        match proxy.connect_as("postgres", None, "postgres").await {
            Ok(c) => break c,
            Err(e) => {
                expect_sqlstate::<()>(Err(e), "53300")?;
                ensure!(Instant::now() < deadline, "the freed slot was never given out again");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    again.simple_query("select 3").await?;
    expect_sqlstate(proxy.connect_as("postgres", None, "postgres").await, "53300")?;
    Ok(())
}

/// Set in the child process that runs the out-of-descriptors case, so that
/// the lowered RLIMIT_NOFILE never touches another test.
const EMFILE_CHILD: &str = "SWITCHYARD_TEST_EMFILE_CHILD";

/// Out of file descriptors, `accept` fails while the connection waits in the
/// backlog, so a listener that retries at once spins at 100 % CPU; the
/// metrics listener did. Run in a child process (this test binary again)
/// with RLIMIT_NOFILE lowered: with every descriptor taken and a scrape
/// pending for a second, the proxy counts a handful of failed accepts (it
/// backs off), not tens of thousands, and serves the scrape once
/// descriptors are free again.
#[test]
fn metrics_listener_backs_off_when_out_of_file_descriptors() -> Result<()> {
    if std::env::var_os(EMFILE_CHILD).is_some() {
        return out_of_descriptors();
    }
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "limits::metrics_listener_backs_off_when_out_of_file_descriptors",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EMFILE_CHILD, "1")
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("the child process did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(status.success(), "the out-of-descriptors child failed: {status}");
    Ok(())
}

fn out_of_descriptors() -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    use std::io::{Read, Write};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // No database is needed: only the metrics endpoint is exercised.
    let mut config = trusting_config("127.0.0.1", 1);
    config.metrics.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let proxy = runtime.block_on(switchyard_proxy::Proxy::start(config))?;
    let addr = proxy.metrics_addr().expect("metrics enabled");
    let stats = proxy.shared().stats.clone();

    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, 256.min(hard), hard)?;
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
        ensure!(hog.len() < 10_000, "RLIMIT_NOFILE did not take");
    }
    // One descriptor for the client's socket; the proxy has none to accept with.
    hog.pop();
    let mut scrape = std::net::TcpStream::connect(addr)?;
    scrape.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    std::thread::sleep(Duration::from_secs(1));
    let failed = stats.accept_failures.load(std::sync::atomic::Ordering::Relaxed);
    ensure!(failed >= 1, "accept never failed: the descriptors were not exhausted");
    ensure!(
        failed < 100,
        "{failed} failed accepts in one second: the listener spins"
    );

    drop(hog);
    scrape.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut body = String::new();
    scrape.read_to_string(&mut body)?;
    ensure!(body.contains("switchyard_accept_failures_total"), "{body}");
    runtime.block_on(proxy.shutdown());
    Ok(())
}

/// A query message of `len` bytes on the wire: `select length('xx...')`.
fn big_query(len: usize) -> Vec<u8> {
    let head = "select length('";
    let tail = "')";
    let fill = len - 5 - 1 - head.len() - tail.len();
    crate::support::query_msg(&format!("{head}{}{tail}", "x".repeat(fill)))
}

/// A session that sends the first `sent` bytes of a `len`-byte query and stalls.
async fn stall(proxy: &TestProxy, len: usize, sent: usize) -> Result<RawConn> {
    let mut raw = RawConn::start(proxy.addr(), "postgres", "postgres").await?;
    raw.send(&big_query(len)[..sent]).await?;
    Ok(raw)
}

/// Half-sent messages cannot hold memory forever: once a message has begun,
/// the rest must come within `limits.message_timeout_ms` (08P01 otherwise),
/// while a session idle between messages is left alone; and all sessions'
/// large messages in progress share `limits.client_buffer_budget_bytes`, so
/// a session that would need more than is left gets 53200 at once. Other
/// sessions keep working throughout, and a large message that arrives
/// whole still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_messages_time_out_and_share_a_budget() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.limits.max_message_bytes = 1 << 20;
    config.limits.client_buffer_budget_bytes = (5 << 20) / 2;
    config.limits.message_timeout_ms = 1500;
    let proxy = TestProxy::start_with(config).await?;
    let healthy = proxy.connect("postgres").await?;
    let check = |n: i32| {
        let healthy = &healthy;
        async move {
            let row = within(PROMPT, "healthy query", healthy.query_one("select $1::int4 + 1", &[&n])).await??;
            ensure!(row.get::<_, i32>(0) == n + 1, "wrong answer");
            Ok::<(), anyhow::Error>(())
        }
    };
    let mut idle = RawConn::start(proxy.addr(), "postgres", "postgres").await?;

    // Two stalled 1 MB messages fit the 2.5 MB budget; a third does not.
    let began = Instant::now();
    let mut a = stall(&proxy, 1 << 20, 64 << 10).await?;
    let mut b = stall(&proxy, 1 << 20, 100).await?;
    check(1).await?;
    let mut c = stall(&proxy, 1 << 20, 100).await?;
    let fields = c.expect_error_and_close("53200").await?;
    assert_eq!(fields.get(&'S').map(String::as_str), Some("FATAL"));
    assert!(
        began.elapsed() < Duration::from_millis(1500),
        "53200 came only after the timeout"
    );
    check(2).await?;

    // Both stalled sessions are closed once their messages are overdue.
    for raw in [&mut a, &mut b] {
        let fields = raw.expect_error_and_close("08P01").await?;
        assert!(fields[&'M'].contains("message_timeout_ms"), "{fields:?}");
    }
    assert!(
        began.elapsed() >= Duration::from_millis(1400),
        "closed before the timeout"
    );
    check(3).await?;

    // The budget is back: a large message sent whole (slowly, but within
    // the timeout) runs, and the session idle all along still works.
    let mut d = RawConn::start(proxy.addr(), "postgres", "postgres").await?;
    let query = big_query((1 << 20) - 16);
    let (first, rest) = query.split_at(300 << 10);
    d.send(first).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.send(rest).await?;
    let answer = crate::support::first_column(&d.until_ready().await?);
    let chars = (1 << 20) - 16 - 5 - 1 - "select length('')".len();
    assert_eq!(answer, [Some(chars.to_string())]);
    idle.send(&crate::support::query_msg("select 'still here'")).await?;
    assert_eq!(
        crate::support::first_column(&idle.until_ready().await?),
        [Some("still here".to_owned())]
    );
    check(4).await?;
    Ok(())
}
