//! Clients that break the protocol, at startup and after it: each gets an
//! ErrorResponse with SQLSTATE 08P01 and is disconnected, while a healthy
//! session running queries alongside never notices.

use crate::support::{
    admin, connect_watched, frontend, startup_message, table, trusting_config, within, RawConn, PROMPT,
};
use anyhow::{ensure, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio::task::JoinHandle;

/// A session querying in a loop, checking every answer, until `stop`.
struct Healthy {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    task: JoinHandle<Result<u64>>,
}

impl Healthy {
    fn start(proxy: &TestProxy) -> Healthy {
        let config = proxy.pg_config("postgres");
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (stop2, done2) = (stop.clone(), done.clone());
        let task = tokio::spawn(async move {
            let (client, _connection) = connect_watched(&config).await?;
            let stmt = client
                .prepare("select $1::int8 * 3, repeat('x', $1::int4 % 50)")
                .await?;
            let mut n: i64 = 0;
            while !stop2.load(Ordering::SeqCst) && n < 100_000 {
                let row = client.query_one(&stmt, &[&n]).await?;
                ensure!(row.get::<_, i64>(0) == n * 3, "wrong answer to query {n}");
                ensure!(row.get::<_, String>(1).len() as i64 == n % 50);
                n += 1;
                done2.store(n as u64, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(n as u64)
        });
        Healthy { stop, done, task }
    }

    /// Waits until the session has run `more` queries beyond now.
    async fn progress(&self, more: u64) -> Result<()> {
        let target = self.done.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + PROMPT;
        while self.done.load(Ordering::SeqCst) < target {
            ensure!(!self.task.is_finished(), "the healthy session ended");
            ensure!(Instant::now() < deadline, "the healthy session stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Checks that the session went on throughout, and stops it.
    async fn finish(self) -> Result<u64> {
        self.progress(5).await?;
        self.stop.store(true, Ordering::SeqCst);
        within(Duration::from_secs(10), "healthy session", self.task).await??
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Sends `bytes` on a fresh connection and expects 08P01 then the close.
async fn expect_08p01(proxy: &TestProxy, what: &str, bytes: &[u8]) -> Result<String> {
    let mut raw = RawConn::connect(proxy.addr()).await?;
    raw.send(bytes).await?;
    let fields = raw
        .expect_error_and_close("08P01")
        .await
        .map_err(|e| e.context(what.to_owned()))?;
    assert_eq!(fields.get(&'S').map(String::as_str), Some("FATAL"), "{what}");
    Ok(fields.get(&'M').cloned().unwrap_or_default())
}

/// After a normal startup, sends `bytes` and expects 08P01 then the close.
async fn expect_08p01_in_session(proxy: &TestProxy, what: &str, bytes: &[u8]) -> Result<String> {
    let mut raw = RawConn::start(proxy.addr(), "postgres", "postgres").await?;
    raw.send(bytes).await?;
    let fields = raw
        .expect_error_and_close("08P01")
        .await
        .map_err(|e| e.context(what.to_owned()))?;
    Ok(fields.get(&'M').cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_startup_gets_08p01() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let mut config = trusting_config(cluster.host(), cluster.port());
    // Bounds the wait should a garbage length ever ask for more bytes.
    config.limits.startup_timeout_ms = 2000;
    let proxy = TestProxy::start_with(config).await?;
    let healthy = Healthy::start(&proxy);
    healthy.progress(5).await?;
    let mut bad = 0;

    for seed in 1..=8 {
        expect_08p01(&proxy, &format!("garbage seed {seed}"), &garbage(seed, 256)).await?;
        bad += 1;
    }
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("length below 8", vec![0, 0, 0, 3, 1, 2, 3]),
        ("huge length", vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]),
        ("negative length", vec![0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0]),
        (
            "unknown request code",
            vec![0, 0, 0, 16, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
    ];
    // Protocol 2.0, which PostgreSQL dropped long ago.
    let mut v2 = startup_message(&[("user", "postgres")]);
    v2[4..8].copy_from_slice(&0x0002_0000i32.to_be_bytes());
    cases.push(("protocol 2.0", v2));
    // A parameter name without its NUL terminator.
    let mut unterminated = vec![0, 0, 0, 14, 0, 3, 0, 0];
    unterminated.extend(b"userxx");
    cases.push(("unterminated parameter", unterminated));
    // An SSLRequest with bytes already behind it (a TLS downgrade probe).
    let mut ssl = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    ssl.extend(startup_message(&[("user", "postgres")]));
    cases.push(("data after SSLRequest", ssl));
    for (what, bytes) in &cases {
        let message = expect_08p01(&proxy, what, bytes).await?;
        assert!(!message.is_empty(), "{what}: empty message");
        bad += 1;
    }

    let queries = healthy.finish().await?;
    assert!(queries >= 10, "the healthy session ran {queries} queries");
    let admin = admin(&proxy).await?;
    let stats = table(&admin, "SHOW STATS").await?.map();
    assert_eq!(stats["protocol_errors"], bad.to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_after_startup_get_08p01() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.limits.max_message_bytes = 1 << 20;
    let proxy = TestProxy::start_with(config).await?;
    let healthy = Healthy::start(&proxy);
    healthy.progress(5).await?;

    // A Parse whose strings have no NUL terminators.
    let message = expect_08p01_in_session(&proxy, "Parse", &frontend(b'P', b"stmtselect 1")).await?;
    assert!(message.contains("Parse"), "{message}");
    let mut oversized = b"Q".to_vec();
    oversized.extend((2u32 << 20).to_be_bytes());
    oversized.extend(vec![b' '; 64 << 10]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("Query without NUL", frontend(b'Q', b"select 1")),
        ("truncated Bind", frontend(b'B', b"\0")),
        ("Describe of neither S nor P", frontend(b'D', b"Xname\0")),
        ("length below 4", b"Q\0\0\0\x02".to_vec()),
        ("huge length", b"Q\x7f\xff\xff\xff".to_vec()),
        ("over max_message_bytes", oversized),
    ];
    for (what, bytes) in &cases {
        expect_08p01_in_session(&proxy, what, bytes).await?;
    }

    let queries = healthy.finish().await?;
    assert!(queries >= 10, "the healthy session ran {queries} queries");
    let admin = admin(&proxy).await?;
    let stats = table(&admin, "SHOW STATS").await?.map();
    assert_eq!(stats["protocol_errors"], (cases.len() + 1).to_string());
    Ok(())
}
