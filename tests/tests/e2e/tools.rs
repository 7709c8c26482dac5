//! Real client programs through the proxy: a psql script with variables, a
//! transaction, a rolled-back transaction, COPY from the script and checked
//! output; pgbench's initialisation and TPC-B in every query mode.

use anyhow::{ensure, Context, Result};
use std::process::Stdio;
use std::time::Duration;
use switchyard_tests::{init_tracing, Cluster, TestProxy};
use tokio::io::AsyncWriteExt;

const SCRIPT: &str = r"\set n 5
\set label 'widget'
create table items (id int primary key, name text not null, qty int not null);
begin;
insert into items select g, :'label' || ' ' || g, g * :n from generate_series(1, :n) g;
update items set qty = qty + 1 where id = 1;
commit;
begin;
insert into items values (99, 'ghost', 0);
rollback;
copy items from stdin;
10	copied ten	100
11	copied eleven	110
\.
select id, name, qty from items order by id;
select count(*) as c, sum(qty) as s from items \gset
\echo count=:c sum=:s
\echo done
";

#[tokio::test]
async fn psql_runs_a_script() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder().database("shop").start().await?;
    let proxy = TestProxy::start(&cluster).await?;

    let mut cmd = proxy.endpoint().command("psql", "shop");
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("running psql")?;
    let mut stdin = child.stdin.take().context("psql stdin")?;
    stdin.write_all(SCRIPT.as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "psql failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "1|widget 1|6",
            "2|widget 2|10",
            "3|widget 3|15",
            "4|widget 4|20",
            "5|widget 5|25",
            "10|copied ten|100",
            "11|copied eleven|110",
            "count=7 sum=286",
            "done",
        ]
    );

    // The same table read directly.
    let direct = cluster.connect("shop").await?;
    let rows: Vec<String> = direct
        .query("select id, name, qty from items order by id", &[])
        .await?
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, i32>(2)
            )
        })
        .collect();
    assert_eq!(rows, lines[..7]);

    // A failing statement makes psql fail with the server's message.
    let out = proxy
        .endpoint()
        .psql("shop", "insert into items values (1, 'dup', 0)")
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("duplicate key value violates unique constraint"),
        "{stderr}"
    );
    Ok(())
}

/// `number of transactions actually processed: N/M` → N.
fn processed(report: &str) -> Option<u64> {
    let line = report
        .lines()
        .find(|l| l.starts_with("number of transactions actually processed:"))?;
    line.split(':').nth(1)?.trim().split('/').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_tpcb_in_every_query_mode() -> Result<()> {
    init_tracing();
    let cluster = Cluster::builder().database("bench").start().await?;
    let proxy = TestProxy::start(&cluster).await?;
    let endpoint = proxy.endpoint();

    let init = endpoint.pgbench("bench", &["-i", "-q", "-s", "1"]).await?;
    ensure!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut total = 0;
    for mode in ["simple", "extended", "prepared"] {
        let run = endpoint
            .pgbench("bench", &["-n", "-M", mode, "-c", "4", "-j", "2", "-t", "50"])
            .await?;
        let report = String::from_utf8_lossy(&run.stdout);
        ensure!(
            run.status.success(),
            "pgbench -M {mode}: {report}{}",
            String::from_utf8_lossy(&run.stderr)
        );
        ensure!(
            report.contains("number of failed transactions: 0 "),
            "-M {mode}: {report}"
        );
        let n = processed(&report).with_context(|| format!("-M {mode}: {report}"))?;
        assert_eq!(n, 200, "-M {mode}: {report}");
        total += n;
    }

    // TPC-B keeps the books balanced: every transaction wrote one history
    // row, and the deltas add up the same in every table.
    let direct = cluster.connect("bench").await?;
    let row = direct
        .query_one(
            "select (select count(*) from pgbench_history),
                    (select sum(delta) from pgbench_history),
                    (select sum(abalance)::int8 from pgbench_accounts),
                    (select sum(bbalance)::int8 from pgbench_branches),
                    (select sum(tbalance)::int8 from pgbench_tellers),
                    (select count(*) from pgbench_accounts)",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0) as u64, total);
    let delta: i64 = row.get(1);
    assert_eq!(row.get::<_, i64>(2), delta);
    assert_eq!(row.get::<_, i64>(3), delta);
    assert_eq!(row.get::<_, i64>(4), delta);
    assert_eq!(row.get::<_, i64>(5), 100_000);
    Ok(())
}
