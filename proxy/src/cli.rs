//! The `switchyard` command line: `proxy` runs the proxy; `check-config`
//! validates a file; `status`, `pause`, `resume` and `admin` speak to a
//! running proxy's admin console, as psql would.

use crate::config::Config;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// switchyard: a PostgreSQL proxy for zero-downtime migrations.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in the foreground until SIGTERM or SIGINT.
    Proxy {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Runtime threads serving sessions (1: a single event loop).
        #[arg(long, default_value_t = 1, env = "SWITCHYARD_THREADS")]
        threads: usize,
    },
    /// Check a config file and print what it resolves to.
    CheckConfig {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show a running proxy's status (SHOW STATUS).
    Status(ConsoleArgs),
    /// Hold every session at its next transaction boundary (PAUSE).
    Pause {
        /// How to reach the console.
        #[command(flatten)]
        console: ConsoleArgs,
        /// Longest the pause may last, e.g. 10s or 500ms; the proxy's
        /// limits.pause_timeout_ms by default.
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Reopen the gate after a pause (RESUME).
    Resume(ConsoleArgs),
    /// Write capture: `start`, `stop` or `show` (CAPTURE START | CAPTURE STOP | SHOW CAPTURE).
    Capture {
        /// start, stop or show.
        #[arg(value_enum)]
        action: CaptureAction,
        /// How to reach the console.
        #[command(flatten)]
        console: ConsoleArgs,
    },
    /// Run any admin console command, e.g. `switchyard admin "SHOW SESSIONS"`.
    Admin {
        /// How to reach the console.
        #[command(flatten)]
        console: ConsoleArgs,
        /// The command.
        command: String,
    },
}

/// Where the admin console is and who to log in as.
#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    /// Proxy host.
    #[arg(long, default_value = "127.0.0.1", env = "SWITCHYARD_HOST")]
    pub host: String,
    /// Proxy port.
    #[arg(long, default_value_t = 6432, env = "SWITCHYARD_PORT")]
    pub port: u16,
    /// Admin user.
    #[arg(long, short = 'U', default_value = "admin", env = "SWITCHYARD_USER")]
    pub user: String,
    /// Admin password (or set PGPASSWORD).
    #[arg(long, env = "PGPASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Name of the admin database.
    #[arg(long, default_value = "switchyard")]
    pub admin_database: String,
}

/// Runs one console command and returns its rows as a printable table.
pub async fn console(args: &ConsoleArgs, command: &str) -> anyhow::Result<String> {
    use tokio_postgres::SimpleQueryMessage;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&args.host)
        .port(args.port)
        .user(&args.user)
        .dbname(&args.admin_database)
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(p) = &args.password {
        cfg.password(p);
    }
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the admin console at {}:{} as {}: {e}",
            args.host,
            args.port,
            args.user
        )
    })?;
    let task = tokio::spawn(conn);
    let messages = client.simple_query(command).await.map_err(|e| {
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or(e.to_string());
        anyhow::anyhow!("{msg}")
    })?;
    drop(client);
    let _ = task.await;
    let mut header: Vec<String> = Vec::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                header = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(r) => {
                rows.push((0..r.len()).map(|i| r.get(i).unwrap_or("").to_string()).collect());
            }
            _ => {}
        }
    }
    Ok(render_table(&header, &rows))
}

/// Formats rows as an aligned text table.
pub fn render_table(header: &[String], rows: &[Vec<String>]) -> String {
    if header.is_empty() {
        return "OK\n".into();
    }
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, v) in r.iter().enumerate() {
            if i < width.len() {
                width[i] = width[i].max(v.len());
            }
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = width[i]))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header) + "\n";
    out += &width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-");
    out += "\n";
    for r in rows {
        out += &line(r);
        out += "\n";
    }
    out
}

/// Loads a config for `proxy` / `check-config`.
pub fn load_config(path: &std::path::Path) -> Result<Config, crate::config::ConfigError> {
    Config::load(path)
}

/// What `switchyard capture` does.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CaptureAction {
    /// CAPTURE START.
    Start,
    /// CAPTURE STOP.
    Stop,
    /// SHOW CAPTURE.
    Show,
}

impl CaptureAction {
    /// The console command.
    pub fn command(self) -> &'static str {
        match self {
            CaptureAction::Start => "CAPTURE START",
            CaptureAction::Stop => "CAPTURE STOP",
            CaptureAction::Show => "SHOW CAPTURE",
        }
    }
}
