//! `VERIFY` and `CUTOVER` as a DBA runs them: from psql (progress as
//! NOTICE lines) and from the `switchyard` binary (each step printed as it
//! happens, an exit code per outcome).

use super::Cut;
use crate::capture_kill::switchyard_binary;
use crate::support::table;
use anyhow::{ensure, Result};
use std::process::Output;
use std::time::Duration;

const SCHEMA: &str = "
    CREATE TABLE item (id serial PRIMARY KEY, qty int NOT NULL, label text);
    INSERT INTO item (qty, label) SELECT g, 'item ' || g FROM generate_series(1, 3000) g;
    CREATE TABLE tag (item int, name text, PRIMARY KEY (item, name));
    INSERT INTO tag SELECT g, 't' || (g % 7) FROM generate_series(1, 500) g;
";

async fn switchyard(cut: &Cut, args: &[&str]) -> Result<Output> {
    let mut cmd = tokio::process::Command::new(switchyard_binary()?);
    cmd.args(args)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(cut.proxy.port().to_string())
        .args(["-U", cut.source.superuser()])
        .env_remove("PGPASSWORD")
        .kill_on_drop(true);
    Ok(tokio::time::timeout(Duration::from_secs(120), cmd.output()).await??)
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_cutover_from_psql_and_the_cli() -> Result<()> {
    let cut = Cut::start(SCHEMA, "", |c| c.cutover.drain_timeout_ms = 3_000).await?;
    cut.capture().await?;
    let app = cut.proxy.connect("postgres").await?;
    app.batch_execute("UPDATE item SET qty = qty + 1 WHERE id % 10 = 0")
        .await?;
    cut.clone_and_migrate("").await?;

    // VERIFY: clean.
    let out = switchyard(&cut, &["verify", "--rows-per-range", "500"]).await?;
    let shown = text(&out);
    ensure!(out.status.code() == Some(0), "{shown}");
    ensure!(
        shown.contains("verify: public.item done") && shown.contains("public.tag"),
        "{shown}"
    );

    // A row changed on the target only: VERIFY names its key, exit 5.
    let target = cut.target.connect("postgres").await?;
    target
        .batch_execute("UPDATE item SET label = 'wrong' WHERE id = 1234")
        .await?;
    let out = switchyard(&cut, &["verify", "public.item"]).await?;
    let shown = text(&out);
    ensure!(out.status.code() == Some(5), "{shown}");
    ensure!(shown.contains("(1234) differs"), "{shown}");
    let rows = table(&cut.admin, "VERIFY item").await?;
    ensure!(rows.get(0, "differing") == Some("1"), "{rows:?}");
    // Repaired through the proxy, caught up.
    app.batch_execute("UPDATE item SET label = 'fixed' WHERE id = 1234")
        .await?;
    cut.caught_up(Duration::from_secs(30)).await?;

    // psql sees each step of a dry run as a NOTICE.
    let out = cut
        .proxy
        .endpoint()
        .command("psql", "switchyard")
        .args(["-X", "-c", "CUTOVER DRY RUN"])
        .output()
        .await?;
    let shown = text(&out);
    ensure!(out.status.success(), "{shown}");
    ensure!(
        shown.contains("NOTICE:  cutover: preflight") && shown.contains("dry run: ready"),
        "{shown}"
    );
    let out = switchyard(&cut, &["cutover", "--dry-run"]).await?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));

    // A transaction open past the drain timeout: aborted after the freeze, exit 4.
    let holder = cut.proxy.connect("postgres").await?;
    holder
        .batch_execute("BEGIN; UPDATE item SET qty = 0 WHERE id = 3")
        .await?;
    let out = switchyard(&cut, &["cutover", "--drain-timeout", "200ms", "--max-pause", "2s"]).await?;
    let shown = text(&out);
    ensure!(out.status.code() == Some(4), "{shown}");
    ensure!(
        shown.contains("cutover: freeze") && shown.contains("aborted at freeze"),
        "{shown}"
    );
    holder.batch_execute("COMMIT").await?;
    cut.caught_up(Duration::from_secs(30)).await?;

    // The cutover itself, each step printed.
    let out = switchyard(&cut, &["cutover"]).await?;
    let shown = text(&out);
    ensure!(out.status.code() == Some(0), "{shown}");
    for step in [
        "preflight",
        "freeze",
        "final_sync",
        "sequences",
        "verify",
        "flip",
        "reopen",
    ] {
        ensure!(shown.contains(&format!("cutover: {step} ")), "no {step} in\n{shown}");
    }
    ensure!(shown.contains("pause_ms"), "{shown}");
    let port: i32 = app.query_one("SELECT current_setting('port')::int", &[]).await?.get(0);
    ensure!(port == cut.target.port() as i32, "{port}");

    // Nothing left to cut over: refused at preflight, exit 3.
    let out = switchyard(&cut, &["cutover", "--dry-run"]).await?;
    let shown = text(&out);
    ensure!(out.status.code() == Some(3), "{shown}");
    ensure!(shown.contains("already on [target]"), "{shown}");
    // Capture went on with the flip, on the target.
    let capture = table(&cut.admin, "SHOW CAPTURE").await?.map();
    ensure!(capture["state"] == "on" && capture["server"] == "target", "{capture:?}");
    // `switchyard status` reads SHOW STATUS, SHOW CAPTURE, SHOW LAG and
    // SHOW CUTOVER as this proxy sends them; the last cutover is the dry
    // run just refused.
    let out = switchyard(&cut, &["status"]).await?;
    let shown = text(&out);
    ensure!(out.status.code() == Some(0), "{shown}");
    for line in [
        "proxy     serving, traffic to the target",
        "capture   on, database postgres on the target",
        "cutover   aborted at preflight: traffic is already on [target]",
    ] {
        ensure!(shown.contains(line), "no {line:?} in\n{shown}");
    }

    // A proxy started again with the same config sends new sessions to the
    // target, not back to the old source, and captures there.
    let Cut {
        proxy,
        admin,
        config,
        target,
        ..
    } = cut;
    drop((admin, app));
    proxy.shutdown().await;
    let again = switchyard_tests::TestProxy::start_with(config)
        .await?
        .with_login(target.superuser(), None);
    let c = again.connect("postgres").await?;
    let port: i32 = c.query_one("SELECT current_setting('port')::int", &[]).await?.get(0);
    ensure!(port == target.port() as i32, "a restarted proxy routed to port {port}");
    let admin = crate::support::admin(&again).await?;
    let status = crate::support::status(&admin).await?;
    ensure!(status["route"] == "target", "{status:?}");
    let capture = table(&admin, "SHOW CAPTURE").await?.map();
    ensure!(capture["state"] == "on" && capture["server"] == "target", "{capture:?}");
    Ok(())
}
