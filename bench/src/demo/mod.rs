//! The demo: a whole migration in one command. Two throwaway PostgreSQL
//! servers (source and target), a sample shop on the source, the proxy in
//! front of it, and an application's load through the proxy from start to
//! end; then capture, a clone (the `switchyard clone` code), a migration
//! on the target that would lock hot tables on a live database, catch-up
//! through the migration's mapping, VERIFY, and CUTOVER on the admin
//! console, the load going on on the target for a while before the target
//! is checked against the source at the flip and against every transaction
//! the clients saw committed. Prints each step as it goes and a report at
//! the end (step times, the pause, the longest client stall, client
//! errors, rows verified) with a latency plot.
//!
//! With `--seconds` it runs through by itself and its exit code says
//! whether the cutover succeeded with no client error and the data
//! verified; without, it stops before the cutover, prints how to look
//! around with psql, and cuts over when Enter is pressed.

mod check;
mod cutover;
mod load;
mod report;
mod shop;
mod stack;

use anyhow::{bail, ensure, Context, Result};
use load::{LoadRuntime, Spec};
use shop::{CUSTOMERS, DB, MIGRATION, ORDERS, PRODUCTS};
use stack::{LiveConsole, ADMIN};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchyard_proxy::clone::{CloneOptions, Method};
use switchyard_tests::Cluster;

/// How long catch-up may take to come level with the log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the load runs on the target after an interactive cutover.
const INTERACTIVE_AFTER: Duration = Duration::from_secs(5);

/// Options of `switchyard demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run without waiting for Enter: cut over once the target is caught
    /// up and verified and the load has run at least N seconds, keep the
    /// load on the target N seconds more, check, and exit 0 only if the
    /// cutover succeeded with no client error and the data verified.
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
    /// Port for the proxy on 127.0.0.1 (0: a free port; a taken port is
    /// replaced by a free one).
    #[arg(long, default_value_t = 6432)]
    port: u16,
    /// Client sessions of the load.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Transactions per second over all clients.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Where the latency plot (PNG) goes [default: switchyard-demo.png in
    /// the system's temporary directory].
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
}

/// Each step's name and duration, printed as it goes.
#[derive(Default)]
struct Steps {
    done: Vec<(String, Duration)>,
    current: Option<(String, Instant)>,
}

impl Steps {
    /// Starts step `label` (its name in the report), printing what it does.
    fn start(&mut self, label: &str, what: &str) {
        println!("\n[{}] {what}", self.done.len() + 1);
        self.current = Some((label.to_owned(), Instant::now()));
    }

    fn end(&mut self, detail: &str) {
        if let Some((name, at)) = self.current.take() {
            let took = at.elapsed();
            println!(
                "    done in {:.2} s{}{detail}",
                took.as_secs_f64(),
                if detail.is_empty() { "" } else { ": " }
            );
            self.done.push((name, took));
        }
    }
}

/// Runs the demo: true when the cutover succeeded with no client error and
/// the target checked out.
pub async fn run(args: Args) -> Result<bool> {
    if !(1..=100).contains(&args.clients) || !(1..=5000).contains(&args.rate) {
        bail!("--clients must be from 1 to 100 and --rate from 1 to 5000 transactions per second");
    }
    if args.seconds.is_some_and(|s| !(1..=3600).contains(&s)) {
        bail!("--seconds must be from 1 to 3600");
    }
    switchyard_tests::Binaries::locate().context(
        "the demo runs two PostgreSQL 15 servers: install the Debian package postgresql-15 \
         (apt-get install postgresql-15), or set SWITCHYARD_PG_BINDIR to the bin directory of a \
         PostgreSQL installed elsewhere (it needs initdb, pg_ctl, postgres, pg_dump and pg_restore)",
    )?;
    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("switchyard-demo.png"));
    let mut steps = Steps::default();

    steps.start("servers", "starting two PostgreSQL servers: the source and the target");
    let (source, target) = stack::start_clusters().await?;
    steps.end(&format!(
        "source on port {}, target on port {}",
        source.port(),
        target.port()
    ));

    steps.start("sample data", "loading the sample shop into the source");
    stack::load_sample(&source).await?;
    steps.end(&format!(
        "database {DB}: {CUSTOMERS} customers, {PRODUCTS} products, {ORDERS} orders"
    ));

    let (work, config_path) = stack::work_dir()?;
    let result = tokio::select! {
        r = migrate(&args, &mut steps, &source, &target, work.path(), &config_path, &plot) => r,
        signal = interrupted() => Err(anyhow::anyhow!("{signal}: the demo stops where it was")),
    };
    println!("\nstopping the servers and removing their files...");
    drop((source, target));
    drop(work);
    match result {
        Ok(true) => {
            println!("demo: the migration succeeded");
            Ok(true)
        }
        Ok(false) => {
            println!("demo: the migration did not meet its checks (see `wrong:` and `error:` above)");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Everything from the proxy's start to the report; true when the cutover
/// succeeded with no client error and the target checked out.
async fn migrate(
    args: &Args,
    steps: &mut Steps,
    source: &Cluster,
    target: &Cluster,
    work: &std::path::Path,
    config_path: &std::path::Path,
    plot_path: &std::path::Path,
) -> Result<bool> {
    steps.start("proxy", "starting the proxy in front of the source");
    let proxy = stack::start_proxy(args.port, |port| stack::config(source, target, port, work))?;
    let port = proxy.addr().port();
    let config = stack::config(source, target, port, work)?;
    stack::write_config_file(&config, port, config_path)?;
    let app = proxy.endpoint(source.superuser(), source.binaries());
    let admin = proxy.endpoint(ADMIN, source.binaries());
    steps.end(&format!(
        "127.0.0.1:{port}, admin console database `{}`, config in {}",
        config.admin_database,
        config_path.display()
    ));

    steps.start("load started", "starting the application's load through the proxy");
    let runtime = LoadRuntime::new()?;
    let spec = Spec {
        clients: args.clients,
        rate: args.rate,
    };
    let running = runtime.start(spec, &app, DB).await?;
    steps.end(&format!(
        "{} clients, {} transactions/s: orders placed (explicit transactions), paid and shipped (autocommit), \
         e-mail changes, reads; prepared statements and simple queries",
        args.clients, args.rate
    ));

    // The load runs from here to the end, whatever fails in between.
    let before = async {
        steps.start("capture", "CAPTURE START: logging the key of every committed write");
        let console = crate::capturing::Console::connect(&admin, &config.admin_database).await?;
        let barrier = crate::capturing::start_capture(&console).await?;
        console.close().await;
        steps.end(&format!("barrier passed after {:.0} ms", barrier.as_secs_f64() * 1e3));

        steps.start(
            "clone",
            "cloning the source into the target (switchyard clone: pg_dump, pg_restore)",
        );
        let options = CloneOptions {
            method: Method::Logical,
            jobs: 2,
            dir: work.join("dump"),
            no_owner: true,
            keep_dump: false,
            barrier_timeout: Duration::from_secs(30),
            progress_every: Duration::from_secs(1),
        };
        switchyard_proxy::clone::run(&config, &options, &stack::cli_console(&proxy, &config)).await?;
        steps.end("");

        steps.start("migration", "migrating the target (the source keeps taking the load)");
        let client = target.connect(DB).await.context("connecting to the target")?;
        for (what, sql) in MIGRATION {
            let at = Instant::now();
            client
                .batch_execute(sql)
                .await
                .with_context(|| format!("migrating the target: {what}"))?;
            println!("    {what}: {:.0} ms", at.elapsed().as_secs_f64() * 1e3);
        }
        drop(client);
        steps.end("");

        let console = LiveConsole::connect(&admin, &config.admin_database).await?;
        steps.start(
            "catch-up",
            "CATCHUP START: replaying the logged keys onto the target through the mapping",
        );
        console.rows("CATCHUP START").await?;
        let lag = wait_caught_up(&console).await?;
        steps.end(&lag);

        steps.start(
            "verify",
            "VERIFY: every table, source through the mapping against target, online",
        );
        let verify_rows = verify(&console).await?;
        steps.end(&format!("{verify_rows} rows checked, none differing"));
        console.close().await;
        Ok::<u64, anyhow::Error>(verify_rows)
    }
    .await;
    let verify_rows = match before {
        Ok(v) => v,
        Err(e) => {
            let _ = running.finish().await;
            proxy.stop();
            return Err(e);
        }
    };

    match args.seconds {
        Some(s) => {
            let until = running.zero + Duration::from_secs(s);
            tokio::time::sleep_until(until.into()).await;
        }
        None => wait_for_enter(&proxy, source, target, &config, config_path).await?,
    }

    steps.start("cutover", "CUTOVER on the admin console");
    let zero = running.zero;
    let now_us = || u64::try_from(zero.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut cut = cutover::run(&admin, &config.admin_database, now_us).await;
    // Interactively, a refusal (a psql session left open on the source,
    // say) is worth another try once the DBA has seen why.
    while let (Err(e), None) = (&cut, args.seconds) {
        println!("    the cutover did not finish: {e:#}\n    traffic stays on the source; press Enter to try again, Ctrl-C to stop.");
        read_enter().await?;
        cut = cutover::run(&admin, &config.admin_database, now_us).await;
    }
    let cut = match cut {
        Ok(c) => c,
        Err(e) => {
            let _ = running.finish().await;
            proxy.stop();
            return Err(e.context("the cutover did not finish; traffic stays on the source"));
        }
    };
    steps.end(&format!("pause {:.1} ms", cut.pause_ms));

    let after = Duration::from_secs(args.seconds.unwrap_or(INTERACTIVE_AFTER.as_secs()));
    steps.start("load on the target", "the load goes on, on the target");
    tokio::time::sleep(after).await;
    let recorded = running.finish().await?;
    drop(runtime);
    proxy.stop();
    steps.end(&format!("{} s", after.as_secs()));

    steps.start(
        "check",
        "checking the target: tables against the source at the flip, committed transactions, sequences",
    );
    let checked = check::check(source, target, &recorded.txs, cut.sent_us, cut.answered_us).await?;
    steps.end(&format!(
        "{} rows equal, {} written since the flip, {} problems",
        checked.rows_compared,
        checked.rows_written_after,
        checked.problems.len()
    ));

    let clients = report::clients(&recorded, &cut);
    let title = format!(
        "switchyard demo: {} clients at {} transactions/s, CUTOVER pause {:.1} ms",
        args.clients, args.rate, cut.pause_ms
    );
    let plot = report::draw(plot_path, &recorded, &cut, title)
        .map(|()| plot_path)
        .map_err(|e| format!("{e:#}"));
    report::print(&report::Summary {
        steps: &steps.done,
        cutover: &cut,
        clients: &clients,
        recorded: &recorded,
        verify_rows,
        checked: &checked,
        plot,
    });
    Ok(clients.errors == 0 && checked.problems.is_empty() && checked.rows_compared > 0)
}

/// SHOW LAG until catch-up runs less than 200 ms behind the newest commit
/// with something applied; returns the lag line.
async fn wait_caught_up(console: &LiveConsole) -> Result<String> {
    let started = Instant::now();
    loop {
        let rows = console.rows("SHOW LAG").await?;
        let get = |k: &str| stack::field(&rows, k).unwrap_or("").to_owned();
        let state = get("state");
        let lag: f64 = get("lag_seconds").parse().unwrap_or(f64::MAX);
        if state == "running" && lag < 0.2 && get("commits_applied") != "0" {
            return Ok(format!(
                "{} commits applied, {:.0} ms behind",
                get("commits_applied"),
                lag * 1e3
            ));
        }
        ensure!(
            state == "running" || state == "starting",
            "catch-up stopped (state {state:?}); SHOW LAG says: {rows:?}"
        );
        ensure!(
            started.elapsed() < CATCH_UP_TIMEOUT,
            "catch-up did not come level with the log within {} s; SHOW LAG says: {rows:?}",
            CATCH_UP_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// VERIFY of every table; the rows checked, or an error naming what
/// differs.
async fn verify(console: &LiveConsole) -> Result<u64> {
    let rows = console.rows("VERIFY").await?;
    let mut checked = 0;
    let mut differing = Vec::new();
    for r in &rows {
        let num = |i: usize| r.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        checked += num(2);
        if num(6) > 0 {
            differing.push(format!(
                "{}: {} ({})",
                r[0],
                num(6),
                r.get(7).map_or("", String::as_str)
            ));
        }
    }
    ensure!(
        differing.is_empty(),
        "VERIFY found rows differing: {}",
        differing.join("; ")
    );
    ensure!(checked > 0, "VERIFY checked no rows: {rows:?}");
    Ok(checked)
}

/// Prints how to look around and waits for Enter (or the end of input).
async fn wait_for_enter(
    proxy: &crate::proxy_thread::ProxyThread,
    source: &Cluster,
    target: &Cluster,
    config: &switchyard_proxy::Config,
    config_path: &std::path::Path,
) -> Result<()> {
    let port = proxy.addr().port();
    let user = source.superuser();
    let metrics = proxy
        .metrics_addr()
        .map_or_else(|| "(off)".to_owned(), |a| format!("http://{a}/metrics"));
    println!(
        "\nThe target is migrated, caught up and verified; the load is running through the proxy.\
         \nLook around before the cutover:\
         \n  the application's view:  psql -h 127.0.0.1 -p {port} -U {user} {DB}\
         \n      e.g. SELECT status, count(*), sum(amount) FROM orders GROUP BY status;\
         \n  the admin console:       psql -h 127.0.0.1 -p {port} -U {ADMIN} {admin_db}\
         \n      e.g. SHOW STATUS;  SHOW SESSIONS;  SHOW CAPTURE;  SHOW LAG;  CUTOVER DRY RUN;\
         \n  the source, directly:    psql -h {src_host} -p {src_port} -U {user} {DB}\
         \n  the target, directly:    psql -h {dst_host} -p {dst_port} -U {dst_user} {DB}\
         \n      e.g. \\d orders   (id is bigint here)   \\d products   (price_cents)\
         \n  the metrics:             curl -s {metrics}\
         \n  the CLI:                 cargo run -q --release --bin switchyard -- status --config {config}\
         \n\nClose the sessions opened straight to the source first: the cutover refuses while a\
         \nclient session bypasses the proxy.\
         \n\nPress Enter to cut over.",
        admin_db = config.admin_database,
        src_host = source.socket_dir().display(),
        src_port = source.port(),
        dst_host = target.socket_dir().display(),
        dst_port = target.port(),
        dst_user = target.superuser(),
        config = config_path.display(),
    );
    read_enter().await
}

/// Waits for a line on standard input (or its end).
async fn read_enter() -> Result<()> {
    // A thread of its own, not the runtime's blocking pool: a runtime
    // waits for its blocking tasks when it shuts down, and an interrupted
    // demo must not wait for a line that never comes.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("demo-enter".to_owned())
        .spawn(move || {
            let mut line = String::new();
            let _ = tx.send(std::io::stdin().read_line(&mut line).map(|_| ()));
        })
        .context("starting the thread that waits for Enter")?;
    rx.await
        .context("waiting for Enter")?
        .context("reading standard input")?;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM, so that the servers are stopped and their
/// files removed on the way out; never returns if neither can be watched.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}
