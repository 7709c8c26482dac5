//! The `switchyard` command line's subcommands (the binary, in the
//! `switchyard` package, adds `demo`): `proxy` runs the proxy;
//! `check-config` validates a file; `status`, `pause`, `resume` and `admin`
//! speak to a running proxy's admin console, as psql would.

pub mod cutover;
pub mod status;
pub mod verify;

pub use cutover::CutoverArgs;

use crate::admin::reply::{ConsoleReply, ReplyRows};
use crate::admin::AdminCommand;
use crate::config::Config;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use switchyard_replay::{DbTls, SslMode};

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in the foreground until SIGTERM or SIGINT.
    #[command(after_help = "Examples:
  switchyard proxy --config switchyard.toml
  RUST_LOG=debug switchyard --log-format json proxy --config switchyard.toml --threads 2")]
    Proxy {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Runtime threads serving sessions (1: a single event loop).
        #[arg(long, default_value_t = 1, env = "SWITCHYARD_THREADS")]
        threads: usize,
    },
    /// Check a config file and print what it resolves to.
    #[command(after_help = "Examples:
  switchyard check-config --config switchyard.toml     every setting in force, exit code 2 on an error")]
    CheckConfig {
        /// The TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show a running proxy's status (SHOW STATUS).
    #[command(after_help = "Examples:
  switchyard status --config switchyard.toml
  switchyard status --host 10.0.0.5 --port 6432 -U admin")]
    Status(ConsoleArgs),
    /// Hold every session at its next transaction boundary (PAUSE ...
    /// DETACHED: the pause outlives this command, until RESUME or the timeout).
    #[command(after_help = "Examples:
  switchyard pause --config switchyard.toml --timeout 30s
  switchyard resume --config switchyard.toml")]
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
    #[command(after_help = "Examples:
  switchyard resume --config switchyard.toml")]
    Resume(ConsoleArgs),
    /// Move every client session to a fresh backend at its next transaction
    /// boundary, without the clients reconnecting (RECONNECT), e.g. after
    /// the database restarted: `switchyard reconnect --timeout 30s`.
    #[command(after_help = "Examples:
  switchyard reconnect --config switchyard.toml --timeout 30s   after the database restarted")]
    Reconnect {
        /// How to reach the console.
        #[command(flatten)]
        console: ConsoleArgs,
        /// `source` or `target`; the database serving now by default.
        #[arg(long, value_parser = ["source", "target"])]
        to: Option<String>,
        /// How long to wait for sessions to reach a boundary, e.g. 30s.
        #[arg(long)]
        timeout: Option<String>,
        /// Confirm a move to another database than the one serving now
        /// (unsynced: the cutover is the safe way there).
        #[arg(long)]
        force: bool,
    },
    /// Write capture: `start`, `stop` or `show` (CAPTURE START | CAPTURE STOP | SHOW CAPTURE).
    #[command(after_help = "Examples:
  switchyard capture start --config switchyard.toml       the database capture.database names
  switchyard capture start app --config switchyard.toml   the database app
  switchyard capture show --config switchyard.toml        state, barrier, log on disk, bypassing sessions
  switchyard capture stop --config switchyard.toml")]
    Capture {
        /// start, stop or show.
        #[arg(value_enum)]
        action: CaptureAction,
        /// With `start`: the database to capture (default: capture.database
        /// in the proxy's config).
        database: Option<String>,
        /// How to reach the console.
        #[command(flatten)]
        console: ConsoleArgs,
    },
    /// Copy the source to the target once the capture barrier has passed:
    /// pg_dump/pg_restore (logical, the default) or pg_basebackup (physical).
    #[command(after_help = "Examples:
  switchyard clone --config switchyard.toml                    pg_dump | pg_restore into [target]
  switchyard clone --config switchyard.toml --jobs 8 --no-owner
  switchyard clone --config switchyard.toml --method physical --dir /var/lib/postgresql/clone")]
    Clone(CloneArgs),
    /// Catch-up replay onto the target: `start`, `stop`, `show` in a running
    /// proxy, or `run` standalone in the foreground.
    #[command(after_help = "Examples:
  switchyard catchup start --config switchyard.toml
  switchyard catchup show --config switchyard.toml
  switchyard catchup stop --config switchyard.toml
  switchyard catchup run --config switchyard.toml --until-caught-up")]
    Catchup {
        /// What to do.
        #[command(subcommand)]
        action: CatchupCommand,
    },
    /// Show catch-up progress and lag (SHOW LAG).
    #[command(after_help = "Examples:
  switchyard lag --config switchyard.toml")]
    Lag(ConsoleArgs),
    /// Move all traffic to the target: preflight, freeze, final sync,
    /// sequences, verify, flip, reopen (CUTOVER); each step is printed as
    /// it happens.
    Cutover(CutoverArgs),
    /// Compare whole tables, source against the mapped target, online
    /// (VERIFY): exit code 0 when they agree, 5 when some rows differ.
    #[command(after_help = "Examples:
  switchyard verify                       every mapped table
  switchyard verify public.accounts --rows-per-range 50000")]
    Verify {
        /// How to reach the console.
        #[command(flatten)]
        console: ConsoleArgs,
        /// Source tables (schema.table); every mapped table when none.
        tables: Vec<String>,
        /// Rows per checksum range (default 10000).
        #[arg(long)]
        rows_per_range: Option<usize>,
    },
    /// Run any admin console command, e.g. `switchyard admin "SHOW SESSIONS"`;
    /// several `;`-separated run in turn.
    #[command(after_help = "Examples:
  switchyard admin --config switchyard.toml 'SHOW SESSIONS'
  switchyard admin --config switchyard.toml 'SHOW CONFIG; SHOW STATUS'
  switchyard admin --config switchyard.toml 'SHOW HELP'    every console command")]
    Admin {
        /// How to reach the console.
        #[command(flatten)]
        console: ConsoleArgs,
        /// The command.
        command: String,
    },
}

/// `switchyard clone`.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The proxy's TOML config: [source], [target] and the capture user.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// logical: pg_dump + pg_restore into the empty [target] database;
    /// physical: pg_basebackup of the whole cluster into --dir.
    #[arg(long, value_enum, default_value = "logical")]
    pub method: crate::clone::Method,
    /// Parallel jobs for pg_dump and pg_restore.
    #[arg(short, long, default_value_t = 4)]
    pub jobs: usize,
    /// The dump directory (logical) or new data directory (physical);
    /// default: next to the capture log.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Restore without the source's ownership and grants (objects owned by
    /// the target user), for a target without the source's roles.
    #[arg(long)]
    pub no_owner: bool,
    /// Keep the dump directory after the restore.
    #[arg(long)]
    pub keep_dump: bool,
    /// How long to wait for the capture barrier, e.g. 10min or 30s.
    #[arg(long, default_value = "10min")]
    pub barrier_timeout: String,
    /// Seconds between progress lines when stderr is not a terminal.
    #[arg(long, default_value_t = 5)]
    pub progress_every: u64,
    /// How to reach the proxy's admin console (to see the barrier); the
    /// config's listen address and admin user by default.
    #[command(flatten)]
    pub console: ConsoleAddr,
}

/// `switchyard catchup ...`.
#[derive(Debug, Subcommand)]
pub enum CatchupCommand {
    /// Start catch-up in the running proxy (CATCHUP START).
    #[command(after_help = "Examples:
  switchyard catchup start --config switchyard.toml   after the clone and the migration; then switchyard lag")]
    Start(ConsoleArgs),
    /// Stop catch-up in the running proxy (CATCHUP STOP).
    #[command(after_help = "Examples:
  switchyard catchup stop --config switchyard.toml    e.g. before more DDL on the target; start it again after")]
    Stop(ConsoleArgs),
    /// Show catch-up progress and lag (SHOW LAG), as `switchyard lag`.
    #[command(after_help = "Examples:
  switchyard catchup show --config switchyard.toml")]
    Show(ConsoleArgs),
    /// Run catch-up standalone, in the foreground, without a proxy (the
    /// capture log must be readable here). Stops on Ctrl-C.
    #[command(after_help = "Examples:
  switchyard catchup run --config switchyard.toml                     until Ctrl-C, a progress line every 5 s
  switchyard catchup run --config switchyard.toml --until-caught-up   exit 0 once the log is applied")]
    Run {
        /// The proxy's TOML config: [source], [target], [capture] log_dir, [catchup].
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Exit once everything in the log is applied.
        #[arg(long)]
        until_caught_up: bool,
        /// Parallel workers (overrides catchup.workers).
        #[arg(long)]
        workers: Option<usize>,
        /// Seconds between progress lines when stderr is not a terminal.
        #[arg(long, default_value_t = 5)]
        progress_every: u64,
    },
}

/// Where the admin console is and who to log in as: the flags, else the
/// config file's `listen`, admin user and `admin_database`, else the
/// defaults (127.0.0.1:6432, `admin`, `switchyard`).
#[derive(Debug, Clone, Args)]
pub struct ConsoleArgs {
    /// The proxy's TOML config, to read the console's address and admin
    /// login from.
    #[arg(short, long, value_name = "FILE", env = "SWITCHYARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// The address and login, overriding the config.
    #[command(flatten)]
    pub addr: ConsoleAddr,
}

/// The console's address and login as given on the command line.
#[derive(Debug, Clone, Default, Args)]
pub struct ConsoleAddr {
    /// Proxy host [default: the config's listen address, else 127.0.0.1].
    #[arg(long, env = "SWITCHYARD_HOST")]
    pub host: Option<String>,
    /// Proxy port [default: the config's listen port, else 6432].
    #[arg(long, env = "SWITCHYARD_PORT")]
    pub port: Option<u16>,
    /// Admin user [default: the config's first user with admin = true, else admin].
    #[arg(long, short = 'U', env = "SWITCHYARD_USER")]
    pub user: Option<String>,
    /// Admin password (or set PGPASSWORD) [default: that user's password in
    /// the config, when it is not stored as a hash].
    #[arg(long, env = "PGPASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Name of the admin database [default: the config's admin_database, else switchyard].
    #[arg(long)]
    pub admin_database: Option<String>,
    /// TLS towards the proxy, as libpq's sslmode: disable, prefer (TLS
    /// when the proxy offers it), require, verify-ca or verify-full
    /// [default: prefer; the certificate is checked only with --sslrootcert].
    #[arg(long, value_name = "MODE", value_parser = parse_sslmode)]
    pub sslmode: Option<SslMode>,
    /// CA certificates (PEM) the proxy's certificate must be signed by.
    #[arg(long, value_name = "FILE")]
    pub sslrootcert: Option<String>,
}

fn parse_sslmode(s: &str) -> Result<SslMode, String> {
    [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ]
    .into_iter()
    .find(|m| m.name() == s)
    .ok_or_else(|| "expected disable, prefer, require, verify-ca or verify-full".to_owned())
}

/// The console to speak to, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    /// Proxy host.
    pub host: String,
    /// Proxy port.
    pub port: u16,
    /// Admin user.
    pub user: String,
    /// Its password, if one is needed.
    pub password: Option<String>,
    /// The admin database.
    pub admin_database: String,
    /// TLS towards the proxy.
    pub sslmode: SslMode,
    /// CA certificates to check the proxy's certificate against.
    pub sslrootcert: Option<String>,
}

impl ConsoleArgs {
    /// The console these arguments name, reading the config file if given.
    pub fn console(&self) -> Result<Console, crate::config::ConfigError> {
        let config = self.config.as_deref().map(Config::load).transpose()?;
        let console = self.addr.resolve(config.as_ref());
        // A bad --sslmode/--sslrootcert pair is a bad argument (exit code 2).
        DbTls::new(console.sslmode, console.sslrootcert.as_deref()).map_err(|e| {
            crate::config::ConfigError::Invalid {
                key: "--sslrootcert".into(),
                message: format!("{e} (with --sslmode {})", console.sslmode.name()),
            }
        })?;
        Ok(console)
    }
}

impl ConsoleAddr {
    /// The console: these flags, else what `config` says, else the defaults.
    pub fn resolve(&self, config: Option<&Config>) -> Console {
        let listen = config.map(|c| c.listen);
        let host = self.host.clone().unwrap_or_else(|| match listen.map(|a| a.ip()) {
            // A wildcard listen address is reached on loopback.
            Some(ip) if ip.is_unspecified() && ip.is_ipv6() => "::1".to_owned(),
            Some(ip) if !ip.is_unspecified() => ip.to_string(),
            _ => "127.0.0.1".to_owned(),
        });
        let admin = config.and_then(|c| c.users.iter().find(|u| u.admin));
        let user = self
            .user
            .clone()
            .or_else(|| admin.map(|u| u.name.clone()))
            .unwrap_or_else(|| "admin".to_owned());
        let stored = config
            .and_then(|c| c.user(&user))
            .and_then(|u| u.password.clone())
            .filter(|p| !crate::config::is_md5_hash(p) && !p.starts_with("SCRAM-SHA-256$"));
        Console {
            host,
            port: self.port.or(listen.map(|a| a.port())).unwrap_or(6432),
            user,
            password: self.password.clone().or(stored),
            admin_database: self
                .admin_database
                .clone()
                .or_else(|| config.map(|c| c.admin_database.clone()))
                .unwrap_or_else(|| "switchyard".to_owned()),
            sslmode: self.sslmode.unwrap_or_default(),
            sslrootcert: self.sslrootcert.clone(),
        }
    }
}

/// Runs one console command and returns its rows as a printable table.
pub async fn console(args: &Console, command: &AdminCommand) -> anyhow::Result<String> {
    Ok(render_rows(&console_rows(args, command).await?))
}

/// Runs a console command and decodes its typed reply (SHOW STATUS, SHOW
/// CAPTURE, SHOW LAG, SHOW CUTOVER).
pub async fn console_reply<T: ConsoleReply>(args: &Console, command: &AdminCommand) -> anyhow::Result<T> {
    let rows = console_rows(args, command).await?;
    Ok(T::from_rows(&rows)?)
}

/// Why a streamed console command failed.
#[derive(Debug)]
pub enum ConsoleError {
    /// The console could not be reached or the connection broke.
    Unreachable(String),
    /// The command ran and failed, with the console's SQLSTATE and message.
    Refused(String, String),
}

impl std::fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleError::Unreachable(m) | ConsoleError::Refused(_, m) => f.write_str(m),
        }
    }
}

/// Runs one console command, handing each NOTICE to `on_notice` as it
/// arrives, and returns the column names and rows of its reply.
pub async fn console_streaming(
    args: &Console,
    command: &AdminCommand,
    on_notice: impl FnMut(&str) + Send + 'static,
) -> Result<ReplyRows, ConsoleError> {
    let session = ConsoleSession::open(args, on_notice).await?;
    let reply = session.run(command).await;
    session.close().await;
    reply
}

/// One admin console session, for commands that must share it (an
/// attached PAUSE lasts until the session ends).
pub struct ConsoleSession {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
    at: String,
}

impl ConsoleSession {
    /// Logs in to the console; each NOTICE goes to `on_notice`.
    pub async fn open(args: &Console, on_notice: impl FnMut(&str) + Send + 'static) -> Result<Self, ConsoleError> {
        let tls = DbTls::new(args.sslmode, args.sslrootcert.as_deref())
            .map_err(|e| ConsoleError::Unreachable(format!("--sslrootcert: {e}")))?;
        // The mode told to tokio-postgres as for the databases.
        let dsn = switchyard_replay::Dsn::new(console_config(args), tls);
        let connect_error = |e: tokio_postgres::Error| ConsoleError::Unreachable(unreachable(args, &e));
        let (client, task) = match dsn.tls.client_config() {
            None => {
                let (client, conn) = dsn.pg.connect(tokio_postgres::NoTls).await.map_err(connect_error)?;
                (client, drive(conn, on_notice))
            }
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls::ClientConfig::clone(tls));
                let (client, conn) = dsn.pg.connect(tls).await.map_err(connect_error)?;
                (client, drive(conn, on_notice))
            }
        };
        Ok(ConsoleSession {
            client,
            task,
            at: format!("{}:{}", args.host, args.port),
        })
    }

    /// Runs one command and returns its reply's columns and rows.
    pub async fn run(&self, command: &AdminCommand) -> Result<ReplyRows, ConsoleError> {
        use tokio_postgres::SimpleQueryMessage;
        let messages = self.client.simple_query(&command.to_string()).await;
        let messages = messages.map_err(|e| match e.as_db_error() {
            Some(d) => ConsoleError::Refused(d.code().code().to_owned(), d.message().to_owned()),
            None => ConsoleError::Unreachable(format!(
                "the admin console at {} closed the connection: {}",
                self.at,
                switchyard_replay::error_text(&e)
            )),
        })?;
        let mut reply = ReplyRows::default();
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    reply.columns = cols.iter().map(|c| c.name().to_string()).collect();
                }
                SimpleQueryMessage::Row(r) => {
                    reply
                        .rows
                        .push((0..r.len()).map(|i| r.get(i).unwrap_or("").to_string()).collect());
                }
                _ => {}
            }
        }
        Ok(reply)
    }

    /// Logs out, once every NOTICE has been handed on.
    pub async fn close(self) {
        drop(self.client);
        let _ = self.task.await;
    }
}

fn console_config(args: &Console) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&args.host)
        .port(args.port)
        .user(&args.user)
        .dbname(&args.admin_database)
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(p) = &args.password {
        cfg.password(p);
    }
    cfg
}

/// Drives a console connection on its own task, handing each NOTICE to
/// `on_notice`; the task ends with the connection.
fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    mut on_notice: impl FnMut(&str) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => on_notice(n.message()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
}

/// Why the console could not be reached, and what to check: the proxy's
/// own words when it refused the login.
fn unreachable(args: &Console, e: &tokio_postgres::Error) -> String {
    let at = format!("the admin console at {}:{}", args.host, args.port);
    if let Some(db) = e.as_db_error() {
        return format!("{at} refused {}: {}", args.user, db.message());
    }
    let text = switchyard_replay::error_text(e);
    let io = std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>());
    let hint = if text.starts_with("error performing TLS handshake") {
        "; check --sslmode and --sslrootcert (with verify-full, --host must be a name or address the proxy's \
         certificate holds)"
    } else if text.contains("password missing") {
        "; give --password (or PGPASSWORD): the config holds no clear-text password for this user"
    } else if io {
        "; is the proxy running there? --config FILE reads its listen address and admin user (or give --host, \
         --port and -U)"
    } else {
        ""
    };
    format!("cannot reach {at} as {}: {text}{hint}", args.user)
}

/// Runs one console command and returns its column names and rows
/// (NOTICEs go to stderr).
pub async fn console_rows(args: &Console, command: &AdminCommand) -> anyhow::Result<ReplyRows> {
    console_streaming(args, command, |notice| eprintln!("{notice}"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Formats a reply's rows as an aligned text table.
pub fn render_rows(reply: &ReplyRows) -> String {
    render_table(&reply.columns, &reply.rows)
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
    /// The console command; `database` goes with `start` only.
    pub fn command(self, database: Option<&str>) -> AdminCommand {
        match self {
            CaptureAction::Start => AdminCommand::CaptureStart {
                database: database.map(str::to_owned),
            },
            CaptureAction::Stop => AdminCommand::CaptureStop,
            CaptureAction::Show => AdminCommand::ShowCapture,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_comes_from_the_flags_then_the_config_then_the_defaults() {
        let config = Config::parse(
            r#"
            listen = "0.0.0.0:7000"
            admin_database = "console"
            [source]
            host = "127.0.0.1"
            [[users]]
            name = "app"
            password = "x"
            [[users]]
            name = "dba"
            password = "secret"
            admin = true
            "#,
            "test",
        )
        .unwrap();
        let none = ConsoleAddr::default();
        assert_eq!(
            none.resolve(Some(&config)),
            Console {
                host: "127.0.0.1".into(),
                port: 7000,
                user: "dba".into(),
                password: Some("secret".into()),
                admin_database: "console".into(),
                sslmode: SslMode::Prefer,
                sslrootcert: None,
            }
        );
        let flags = ConsoleAddr {
            host: Some("10.0.0.5".into()),
            port: Some(6500),
            user: Some("other".into()),
            password: None,
            admin_database: None,
            sslmode: None,
            sslrootcert: None,
        };
        let c = flags.resolve(Some(&config));
        assert_eq!((c.host.as_str(), c.port, c.user.as_str()), ("10.0.0.5", 6500, "other"));
        assert_eq!(c.password, None, "another user's password is not borrowed");
        let d = none.resolve(None);
        assert_eq!((d.host.as_str(), d.port, d.user.as_str()), ("127.0.0.1", 6432, "admin"));
        assert_eq!(d.admin_database, "switchyard");
    }
}
