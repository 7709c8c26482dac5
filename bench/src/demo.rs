//! The demo: a throwaway cluster with a small shop database behind the
//! proxy on 127.0.0.1:6432, with an admin console user and metrics, an empty
//! target database and a config file for trying a migration (capture,
//! clone, catch-up), running until Ctrl-C so that one can poke at it.

use crate::proxy_thread::ProxyThread;
use anyhow::{Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use switchyard_proxy::server::StartError;
use switchyard_proxy::{Config, DatabaseConfig, UserConfig};
use switchyard_tests::Cluster;
use tokio::signal::unix::{signal, SignalKind};

/// The sample database.
const DB: &str = "app";

/// The empty database a migration goes to.
const TARGET_DB: &str = "app_next";

/// The user allowed on the admin console.
const ADMIN: &str = "admin";

/// The sample schema and data: customers, products and their orders.
const SAMPLE_SQL: &str = "
CREATE TABLE customers (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);
CREATE TABLE orders (
    id          bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    amount      numeric(10, 2) NOT NULL,
    status      text NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX orders_customer_id ON orders (customer_id);
INSERT INTO customers
SELECT i, 'customer ' || i, 'customer' || i || '@example.com',
       timestamptz '2024-01-01' + i * interval '1 hour'
FROM generate_series(1, 2000) AS i;
INSERT INTO orders
SELECT i, 1 + (i * 7919) % 2000, round((5 + (i * 37) % 500)::numeric + 0.99, 2),
       (ARRAY['new', 'paid', 'shipped', 'delivered'])[1 + i % 4],
       timestamptz '2024-03-01' + i * interval '10 minutes'
FROM generate_series(1, 10000) AS i;
ANALYZE;
";

/// Options of `switchyard-bench demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port for the proxy on 127.0.0.1; a free one is used if it is taken.
    #[arg(long, default_value_t = 6432)]
    port: u16,
    /// Stop by itself after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
}

/// Runs the demo until Ctrl-C, SIGTERM or `--seconds`.
pub async fn run(args: Args) -> Result<ExitCode> {
    println!("starting a PostgreSQL cluster with sample database `{DB}`...");
    let cluster = Cluster::builder()
        .database(DB)
        .database(TARGET_DB)
        .start()
        .await
        .context("starting the PostgreSQL cluster")?;
    let client = cluster.connect(DB).await.context("connecting to the cluster")?;
    client
        .batch_execute(SAMPLE_SQL)
        .await
        .context("loading the sample data")?;
    drop(client);

    let work = tempfile::Builder::new()
        .prefix("switchyard-demo-")
        .tempdir()
        .context("creating the demo's directory")?;
    let proxy = start_proxy(&cluster, args.port, work.path())?;
    let port = proxy.addr().port();
    let config_path = work.path().join("switchyard.toml");
    std::fs::write(&config_path, config_file(&cluster, port, work.path())).context("writing the demo's config file")?;
    let through = proxy.endpoint(cluster.superuser(), cluster.binaries());
    let client = through.connect(DB).await.context("connecting through the proxy")?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders)",
            &[],
        )
        .await
        .context("querying through the proxy")?;
    let (customers, orders): (i64, i64) = (row.get(0), row.get(1));
    drop(client);

    print_instructions(&cluster, &proxy, port, customers, orders, &config_path);
    wait_for_stop(args.seconds).await?;

    println!("stopping the proxy and removing the cluster...");
    proxy.stop();
    drop(cluster);
    println!("done");
    Ok(ExitCode::SUCCESS)
}

/// Starts the proxy on `port`, or on a free port if that one is taken, with
/// capture logging under `work` and `app_next` as the migration target.
fn start_proxy(cluster: &Cluster, port: u16, work: &Path) -> Result<ProxyThread> {
    let config = |port| -> Result<Config> {
        let socket_dir = cluster.socket_dir().to_str().context("socket dir is not UTF-8")?;
        let mut config = Config::trusting(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            socket_dir,
            cluster.port(),
        );
        // With trust any user may connect; only `admin` may open the console.
        config.users.push(UserConfig {
            name: ADMIN.to_owned(),
            password: None,
            admin: true,
        });
        config.metrics.listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        config.capture.log_dir = work.join("log");
        config.capture.user = Some(cluster.superuser().to_owned());
        config.capture.database = Some(DB.to_owned());
        config.target = Some(DatabaseConfig {
            host: "127.0.0.1".to_owned(),
            port: cluster.port(),
            database: Some(TARGET_DB.to_owned()),
            user: None,
            password: None,
            ..Default::default()
        });
        Ok(config)
    };
    match ProxyThread::start("switchyard-proxy", config(port)?) {
        Err(e) if port_taken(&e) => {
            println!("port {port} is taken; using a free port");
            ProxyThread::start("switchyard-proxy", config(0)?)
        }
        other => other,
    }
}

fn port_taken(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<StartError>(),
        Some(StartError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// The same settings as a file, for `switchyard clone` and `catchup run`.
fn config_file(cluster: &Cluster, port: u16, work: &Path) -> String {
    format!(
        "# switchyard demo: the proxy in front of `{DB}`, migrating to `{TARGET_DB}`.\n\
         listen = \"127.0.0.1:{port}\"\n\n\
         [source]\nhost = \"{socket}\"\nport = {pg_port}\n\n\
         [auth]\nmethod = \"trust\"\n\n\
         [capture]\nlog_dir = \"{log}\"\nuser = \"{user}\"\ndatabase = \"{DB}\"\n\n\
         [target]\nhost = \"127.0.0.1\"\nport = {pg_port}\ndatabase = \"{TARGET_DB}\"\n",
        socket = cluster.socket_dir().display(),
        pg_port = cluster.port(),
        log = work.join("log").display(),
        user = cluster.superuser(),
    )
}

fn print_instructions(cluster: &Cluster, proxy: &ProxyThread, port: u16, customers: i64, orders: i64, config: &Path) {
    let metrics = proxy
        .metrics_addr()
        .map_or_else(|| "(off)".to_owned(), |a| format!("http://{a}/metrics"));
    println!(
        "\nswitchyard demo is running.\n\
         \n  proxy     127.0.0.1:{port} (trust authentication)\
         \n  source    PostgreSQL 15 on 127.0.0.1:{pg_port}, reached over its Unix socket in {socket}\
         \n  database  {DB}: customers ({customers} rows), orders ({orders} rows)\
         \n  metrics   {metrics}\
         \n\nConnect as an application:\
         \n  psql -h 127.0.0.1 -p {port} -U {user} {DB}\
         \n  e.g.  SELECT status, count(*), sum(amount) FROM orders GROUP BY status;\
         \n\nOpen the admin console:\
         \n  psql -h 127.0.0.1 -p {port} -U {ADMIN} switchyard\
         \n  then  SHOW SESSIONS;   SHOW STATUS;   PAUSE;   RESUME;\
         \n\nScrape the metrics:\
         \n  curl -s {metrics}\
         \n\nTry a migration to the empty database {TARGET_DB} (config in {config}),\
         \nwith `sy` standing for `cargo run -q --release --bin switchyard --`:\
         \n  sy capture start --port {port} -U {ADMIN}\
         \n  sy clone --config {config} --port {port} -U {ADMIN} --no-owner\
         \n  psql -h 127.0.0.1 -p {pg_port} -U {user} {TARGET_DB} -c \"ALTER TABLE orders ADD COLUMN note text\"\
         \n  sy catchup start --port {port} -U {ADMIN}\
         \n  sy lag --port {port} -U {ADMIN}      (write through the proxy meanwhile and watch it catch up)\
         \n\nPress Ctrl-C to stop (the cluster is removed).",
        config = config.display(),
        pg_port = cluster.port(),
        socket = cluster.socket_dir().display(),
        user = cluster.superuser(),
    );
}

/// Waits for Ctrl-C, SIGTERM, or `seconds` if given.
async fn wait_for_stop(seconds: Option<u64>) -> Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let timer = async {
        match seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = int.recv() => println!("\nCtrl-C"),
        _ = term.recv() => println!("\nSIGTERM"),
        _ = timer => println!("\n{} s elapsed", seconds.unwrap_or(0)),
    }
    Ok(())
}
