//! The admin console (the virtual `switchyard` database) through
//! tokio-postgres and psql: every SHOW command's columns and values, errors
//! with their SQLSTATEs, who may connect, and the Prometheus endpoint.

use crate::support::{
    admin, backend_pid, expect_sqlstate, metric, scrape, session_by_pid, table, trusting_config, user,
    wait_session_state,
};
use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio_postgres::Client;

const SESSION_COLUMNS: [&str; 18] = [
    "id",
    "user",
    "database",
    "application_name",
    "client_addr",
    "state",
    "backend_pid",
    "connected_at",
    "queries",
    "prepared_statements",
    "settings",
    "listen_channels",
    "pinned_by",
    "backend",
    "route_epoch",
    "move_state",
    "moves",
    "move_error",
];

#[tokio::test]
async fn show_commands_through_tokio_postgres() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder().database("shop").start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let client = proxy.connect("shop").await?;
    let pid = backend_pid(&client).await?;
    let admin = admin(&proxy).await?;
    // tokio-postgres closes the statement of that query in the background.
    wait_session_state(&admin, pid, "idle").await?;

    version_and_status(&admin).await?;
    sessions_and_stats(&admin, &client, pid).await?;
    config_and_help(&admin, cluster.port()).await?;
    // Several commands in one query each answer.
    let messages = admin.simple_query("SHOW VERSION; SHOW STATUS").await?;
    let completes = messages
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(_)))
        .count();
    assert_eq!(completes, 2);
    Ok(())
}

async fn version_and_status(admin: &Client) -> Result<()> {
    let version = table(admin, "SHOW VERSION").await?;
    assert_eq!(version.columns, ["version"]);
    assert_eq!(version.rows.len(), 1);
    let v = version.get(0, "version").context("version")?;
    assert!(v.starts_with("switchyard 0."), "{v}");

    let status = table(admin, "show status").await?;
    assert_eq!(status.columns, ["key", "value"]);
    let s = status.map();
    assert_eq!(s["state"], "serving");
    assert_eq!(s["sessions"], "2", "the client and the console: {s:?}");
    assert_eq!(s["busy_sessions"], "0");
    assert_eq!(s["held_sessions"], "0");
    assert!(s["started_at"].ends_with("+00"), "{s:?}");
    Ok(())
}

/// SHOW SESSIONS and SHOW STATS after the client runs 20 queries.
async fn sessions_and_stats(admin: &Client, client: &Client, pid: i32) -> Result<()> {
    let before = table(admin, "SHOW STATS").await?.map();
    for i in 0..20i32 {
        let row = client.query_one("select $1::int4 * $1", &[&i]).await?;
        assert_eq!(row.get::<_, i32>(0), i * i);
    }
    wait_session_state(admin, pid, "idle").await?;
    let sessions = table(admin, "SHOW SESSIONS").await?;
    assert_eq!(sessions.columns, SESSION_COLUMNS);
    assert_eq!(sessions.rows.len(), 2);
    let row = session_by_pid(admin, pid).await?.context("client listed")?;
    assert_eq!(row["user"], "postgres");
    assert_eq!(row["database"], "shop");
    assert_eq!(row["application_name"], "switchyard-tests");
    assert!(row["client_addr"].starts_with("127.0.0.1:"), "{row:?}");
    assert!(row["queries"].parse::<u64>()? >= 21, "{row:?}");
    let console = sessions.rows_where("database", "switchyard");
    assert_eq!(console.len(), 1, "the console's own session is listed");
    assert_eq!(sessions.get(console[0], "backend_pid"), None);

    let stats = table(admin, "SHOW STATS").await?;
    assert_eq!(stats.columns, ["stat", "value"]);
    let after = stats.map();
    let delta = |k: &str| -> Result<i64> { Ok(after[k].parse::<i64>()? - before[k].parse::<i64>()?) };
    ensure!(
        delta("queries")? >= 20,
        "queries {} → {}",
        before["queries"],
        after["queries"]
    );
    ensure!(delta("transactions")? >= 20);
    ensure!(delta("bytes_received")? > 0 && delta("bytes_sent")? > 0);
    assert_eq!(after["connections_open"], "2");
    assert_eq!(after["protocol_errors"], "0");
    for key in ["uptime_s", "latency_p50_us", "latency_p99_us", "latency_mean_us"] {
        assert!(after.contains_key(key), "SHOW STATS lacks {key}");
    }
    // Sessions fold their latency samples into SHOW STATS now and then
    // (at most every 200 ms, when a request completes).
    tokio::time::sleep(Duration::from_millis(250)).await;
    client.query_one("select 1::int4", &[]).await?;
    let stats = table(admin, "SHOW STATS").await?.map();
    assert!(stats["latency_samples"].parse::<u64>()? >= 20, "{stats:?}");
    Ok(())
}

async fn config_and_help(admin: &Client, source_port: u16) -> Result<()> {
    let config = table(admin, "SHOW CONFIG").await?;
    assert_eq!(config.columns, ["key", "value"]);
    let c = config.map();
    assert_eq!(c["source.host"], "127.0.0.1");
    assert_eq!(c["source.port"], source_port.to_string());
    // The address bound, not the configured port 0.
    assert!(
        c["listen"].starts_with("127.0.0.1:") && !c["listen"].ends_with(":0"),
        "{c:?}"
    );
    assert_eq!(c["admin_database"], "switchyard");
    assert_eq!(c["auth.method"], "trust");
    assert!(
        c["source.password"].starts_with("(unset: the client's password"),
        "{c:?}"
    );
    // Every section, with what unset settings resolve to.
    assert_eq!(c["catchup.workers"], "4");
    assert_eq!(c["cutover.on_drain_timeout"], "abort");
    assert!(c.contains_key("capture.database"), "{c:?}");
    assert!(c["cutover.target_log_dir"].contains("target"), "{c:?}");

    for help in ["SHOW HELP", "help"] {
        let t = table(admin, help).await?;
        assert_eq!(t.columns, ["command", "description"]);
        let commands: Vec<&str> = (0..t.rows.len()).filter_map(|i| t.get(i, "command")).collect();
        for want in [
            "SHOW STATUS",
            "SHOW SESSIONS",
            "SHOW STATS",
            "PAUSE [timeout] [DETACHED]",
            "RESUME",
        ] {
            assert!(commands.contains(&want), "{help} lacks {want}: {commands:?}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn show_commands_through_psql() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let endpoint = proxy.endpoint();
    for (command, header, some_row) in [
        ("SHOW VERSION", "version", "switchyard "),
        ("SHOW STATUS", "key|value", "state|serving"),
        (
            "SHOW SESSIONS",
            &SESSION_COLUMNS.join("|"),
            "|postgres|switchyard|psql|",
        ),
        ("SHOW STATS", "stat|value", "connections_open|1"),
        ("SHOW CONFIG", "key|value", "admin_database|switchyard"),
        ("SHOW HELP", "command|description", "RESUME|"),
    ] {
        let mut cmd = endpoint.command("psql", "switchyard");
        cmd.args(["-X", "-A", "-v", "ON_ERROR_STOP=1", "-c", command]);
        let out = cmd.output().await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "psql -c {command}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.first().copied(), Some(header), "{command}: {stdout}");
        assert!(
            lines[1..].iter().any(|l| l.contains(some_row)),
            "{command}: no row like {some_row:?} in {stdout}"
        );
        let footer = format!("({} row", lines.len() - 2);
        assert!(
            lines.last().is_some_and(|l| l.starts_with(&footer)),
            "{command}: {stdout}"
        );
    }
    // An unknown command fails psql with the console's message.
    let out = endpoint.psql("switchyard", "SHOW TABLES").await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown admin command"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn console_errors_and_access() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder().user("app", "unused").start().await?;
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.users = vec![user("dba", None, true), user("app", None, false)];
    let proxy = TestProxy::start_with(config).await?;

    let dba = proxy.connect_as("dba", None, "switchyard").await?;
    for bad in ["SHOW TABLES", "DROP TABLE x", "select 1"] {
        let message = expect_sqlstate(dba.simple_query(bad).await, "42601")?;
        assert!(!message.is_empty(), "{bad}");
    }
    for bad in ["PAUSE soon", "PAUSE 0"] {
        let message = expect_sqlstate(dba.simple_query(bad).await, "22023")?;
        assert!(message.contains("PAUSE"), "{bad}: {message}");
    }
    let message = expect_sqlstate(dba.simple_query("RESUME").await, "55000")?;
    assert_eq!(message, "not paused");
    // The console speaks only the simple protocol.
    expect_sqlstate(dba.query("SHOW VERSION", &[]).await, "0A000")?;
    // It still answers after all those errors.
    assert_eq!(table(&dba, "SHOW STATUS").await?.map()["state"], "serving");

    // Users without admin = true are refused the console, not the database.
    let message = expect_sqlstate(proxy.connect_as("app", None, "switchyard").await, "28000")?;
    assert!(message.contains("not allowed to use the admin console"), "{message}");
    expect_sqlstate(proxy.connect_as("postgres", None, "switchyard").await, "28000")?;
    let app = proxy.connect_as("app", None, "postgres").await?;
    let who: String = app.query_one("select current_user::text", &[]).await?.get(0);
    assert_eq!(who, "app");

    // The CLI says why in the proxy's words, and what to check when
    // nothing answers.
    let cli = |user: &str, port: u16| {
        let mut cmd =
            tokio::process::Command::new(crate::capture_kill::switchyard_binary().expect("switchyard binary"));
        cmd.args(["status", "--host", "127.0.0.1", "--port", &port.to_string(), "-U", user])
            .env_remove("PGPASSWORD")
            .kill_on_drop(true);
        cmd
    };
    let out = cli("app", proxy.port()).output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused app") && stderr.contains("set admin = true for it in [[users]]"),
        "{stderr}"
    );
    let nobody = crate::capture_kill::free_port()?;
    let out = cli("dba", nobody).output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Connection refused") && stderr.contains("is the proxy running there?"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn prometheus_endpoint_counts_queries() -> Result<()> {
    init_tracing();
    let cluster = Cluster::start().await?;
    let mut config = trusting_config(cluster.host(), cluster.port());
    config.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let proxy = TestProxy::start_with(config).await?;
    let addr = proxy.metrics_addr().context("metrics endpoint enabled")?;

    let before = scrape(addr).await?;
    let q0 = metric(&before, "switchyard_queries_total").context(before.clone())?;
    let client = proxy.connect("postgres").await?;
    for i in 0..30i64 {
        let row = client.query_one("select $1::int8 + 1", &[&i]).await?;
        assert_eq!(row.get::<_, i64>(0), i + 1);
    }
    let after = scrape(addr).await?;
    let q1 = metric(&after, "switchyard_queries_total").context(after.clone())?;
    assert!(q1 >= q0 + 30.0, "switchyard_queries_total went {q0} → {q1}");
    assert!(after.contains("# TYPE switchyard_queries_total counter"), "{after}");
    assert_eq!(metric(&after, "switchyard_client_connections"), Some(1.0), "{after}");
    assert!(metric(&after, "switchyard_connections_total").is_some_and(|v| v >= 1.0));
    assert!(
        metric(&after, "switchyard_transactions_total").is_some_and(|v| v >= 30.0),
        "{after}"
    );
    assert!(after.contains("switchyard_query_duration_seconds"), "{after}");
    Ok(())
}
