//! What the demo runs on: the source and the target, two throwaway
//! PostgreSQL servers; the proxy in front of the source, in-process, with
//! capture, catch-up (with the migration's mapping) and the cutover
//! configured; its config written out as a file for the `switchyard` CLI;
//! and admin console sessions that print the NOTICEs a command streams as
//! they arrive.

use super::shop::{DB, MAPPING, SCHEMA_AND_DATA};
use crate::proxy_thread::ProxyThread;
use anyhow::{Context, Result};
use futures_util::StreamExt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use switchyard_proxy::server::StartError;
use switchyard_proxy::{Config, DatabaseConfig, UserConfig};
use switchyard_tests::{Cluster, Endpoint};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls, SimpleQueryMessage};

/// The user allowed on the admin console.
pub(super) const ADMIN: &str = "admin";

/// Both servers, each with an empty `shop` database.
pub(super) async fn start_clusters() -> Result<(Cluster, Cluster)> {
    let source = Cluster::builder().database(DB);
    let target = Cluster::builder().database(DB);
    tokio::try_join!(source.start(), target.start()).map_err(|e| {
        anyhow::Error::new(e).context(
            "starting the PostgreSQL servers (to use PostgreSQL 15 programs installed elsewhere, \
             put their bin directory first on PATH)",
        )
    })
}

/// Loads the sample schema and data into the source.
pub(super) async fn load_sample(source: &Cluster) -> Result<()> {
    let client = source.connect(DB).await.context("connecting to the source")?;
    client
        .batch_execute(SCHEMA_AND_DATA)
        .await
        .context("loading the sample shop into the source")
}

/// The proxy's config: in front of the source, `admin` on the console,
/// capture of `shop` into `work/log`, the target and the mapping for
/// catch-up and the cutover, metrics on a free port.
pub(super) fn config(source: &Cluster, target: &Cluster, port: u16, work: &Path) -> Result<Config> {
    let utf8 = |p: &Path| p.to_str().map(str::to_owned).context("a socket directory is not UTF-8");
    let mut config = Config::trusting(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        &utf8(source.socket_dir())?,
        source.port(),
    );
    // With trust any user may connect; only `admin` may open the console.
    config.users.push(UserConfig {
        name: ADMIN.to_owned(),
        password: None,
        admin: true,
    });
    config.metrics.listen = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    config.capture.log_dir = work.join("log");
    config.capture.user = Some(source.superuser().to_owned());
    config.capture.database = Some(DB.to_owned());
    config.target = Some(DatabaseConfig {
        host: utf8(target.socket_dir())?,
        port: target.port(),
        database: Some(DB.to_owned()),
        user: Some(target.superuser().to_owned()),
        password: None,
        ..Default::default()
    });
    let mapping = work.join("mapping.toml");
    std::fs::write(&mapping, MAPPING).context("writing the migration's mapping file")?;
    config.catchup.mapping = Some(mapping);
    config.catchup.workers = 2;
    Ok(config)
}

/// Starts the proxy with `config(port)`; if `port` is taken, says so and
/// takes a free one.
pub(super) fn start_proxy(port: u16, config: impl Fn(u16) -> Result<Config>) -> Result<ProxyThread> {
    match ProxyThread::start("switchyard-proxy", config(port)?) {
        Err(e) if port_taken(&e) => {
            println!("  port {port} is taken; using a free port");
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

/// The same settings as a TOML file, for the `switchyard` CLI (`status`,
/// `lag`, `verify`, `cutover`) pointed at the running demo.
pub(super) fn write_config_file(config: &Config, port: u16, path: &Path) -> Result<()> {
    let target = config.target.as_ref().context("the demo's config has no target")?;
    let text = format!(
        "# switchyard demo: the proxy in front of `{DB}` on the source, migrating to `{DB}` on the target.\n\
         listen = \"127.0.0.1:{port}\"\n\n\
         [source]\nhost = \"{src_host}\"\nport = {src_port}\n\n\
         [auth]\nmethod = \"trust\"\n\n\
         [[users]]\nname = \"{ADMIN}\"\nadmin = true\n\n\
         [capture]\nlog_dir = \"{log}\"\nuser = \"{user}\"\ndatabase = \"{DB}\"\n\n\
         [target]\nhost = \"{dst_host}\"\nport = {dst_port}\ndatabase = \"{DB}\"\nuser = \"{dst_user}\"\n\n\
         [catchup]\nmapping = \"{mapping}\"\nworkers = {workers}\n",
        src_host = config.source.host,
        src_port = config.source.port,
        log = config.capture.log_dir.display(),
        user = config.capture.user.as_deref().unwrap_or_default(),
        dst_host = target.host,
        dst_port = target.port,
        dst_user = target.user.as_deref().unwrap_or_default(),
        mapping = config
            .catchup
            .mapping
            .as_deref()
            .map(Path::display)
            .map(|d| d.to_string())
            .unwrap_or_default(),
        workers = config.catchup.workers,
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The console as `switchyard clone` and the CLI address it.
pub(super) fn cli_console(proxy: &ProxyThread, config: &Config) -> switchyard_proxy::cli::Console {
    switchyard_proxy::cli::Console {
        host: proxy.addr().ip().to_string(),
        port: proxy.addr().port(),
        user: ADMIN.to_owned(),
        password: None,
        admin_database: config.admin_database.clone(),
        sslmode: switchyard_replay::SslMode::Disable,
        sslrootcert: None,
    }
}

/// An admin console session whose NOTICEs are printed as they arrive,
/// indented under the step that runs.
pub(super) struct LiveConsole {
    client: Client,
    task: JoinHandle<()>,
}

/// A console command's answer: its rows as text, or the error it gave.
pub(super) type Answer = std::result::Result<Vec<Vec<String>>, String>;

impl LiveConsole {
    pub(super) async fn connect(endpoint: &Endpoint, database: &str) -> Result<LiveConsole> {
        let (client, mut connection) = endpoint
            .pg_config(database)
            .connect(NoTls)
            .await
            .with_context(|| format!("connecting to the admin console `{database}`"))?;
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notice(n) = message {
                    println!("    {}", n.message());
                }
            }
        });
        Ok(LiveConsole { client, task })
    }

    /// Runs `sql`; a database error is an answer, a broken connection an
    /// error.
    pub(super) async fn run(&self, sql: &str) -> Result<Answer> {
        match self.client.simple_query(sql).await {
            Ok(messages) => Ok(Ok(rows(&messages))),
            Err(e) => match e.as_db_error() {
                Some(db) => Ok(Err(db.message().to_owned())),
                None => Err(anyhow::Error::new(e).context(format!("`{sql}` on the admin console"))),
            },
        }
    }

    /// Runs `sql` and wants rows.
    pub(super) async fn rows(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        self.run(sql)
            .await?
            .map_err(|e| anyhow::anyhow!("`{sql}` on the admin console: {e}"))
    }

    pub(super) async fn close(self) {
        drop(self.client);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await;
    }
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some((0..row.len()).map(|i| row.get(i).unwrap_or("").to_owned()).collect()),
            _ => None,
        })
        .collect()
}

/// The value of a `field | value` row.
pub(super) fn field<'a>(rows: &'a [Vec<String>], name: &str) -> Option<&'a str> {
    rows.iter()
        .find(|r| r.first().map(String::as_str) == Some(name))
        .and_then(|r| r.get(1))
        .map(String::as_str)
}

/// Where the demo keeps its files: the capture log, the dump, the mapping
/// and the config file.
pub(super) fn work_dir() -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("switchyard-demo-")
        .tempdir()
        .context("creating the demo's directory")?;
    let config = dir.path().join("switchyard.toml");
    Ok((dir, config))
}
