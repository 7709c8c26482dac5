//! The proxy's own limits under pressure from clients: how many may connect
//! (with a reserve for the DBA), how long a half-sent message may take, and
//! how much client input all sessions together may buffer. Every load here
//! is bounded in count and time, and healthy sessions keep working.

use crate::support::{expect_sqlstate, table, trusting_config, user, within, PROMPT};
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
