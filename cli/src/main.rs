//! The `switchyard` binary: parses the command line and calls the library
//! (the proxy and its commands) or the demo.

use clap::{Parser, Subcommand};
use std::time::Duration;
use switchyard_proxy::admin::AdminCommand;
use switchyard_proxy::cli::{self, CatchupCommand, CloneArgs, Command};
use switchyard_proxy::clone::{self, CloneOptions};
use switchyard_proxy::session::route::Destination;
use switchyard_proxy::Proxy;

/// switchyard: a PostgreSQL proxy for zero-downtime migrations.
#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about,
    long_about = None,
    after_help = "Examples:
  switchyard demo --seconds 5                          a whole migration on two throwaway servers
  switchyard check-config --config switchyard.toml     every setting in force
  switchyard proxy --config switchyard.toml            run the proxy
  switchyard status --config switchyard.toml           the running proxy at a glance
  switchyard capture start --config switchyard.toml    then clone, catchup start, verify, cutover

The console commands (status, pause, resume, reconnect, capture, catchup
start|stop|show, lag, verify, cutover, admin) read the console's address and
admin login from --config FILE, or take --host, --port, -U and --password.

Exit codes: 0 success; 1 the proxy or a database could not be reached, or
refused the command; 2 a bad config or bad arguments; 3 a cutover refused at
preflight (nothing frozen); 4 a cutover called off after the freeze (traffic
stays on the source); 5 VERIFY found rows that differ."
)]
struct Cli {
    /// How log lines are written to stderr: text (plain, coloured only on
    /// a terminal) or json (one object per line, each field its own key).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "SWITCHYARD_LOG_FORMAT"
    )]
    log_format: cli::LogFormat,
    /// What to do.
    #[command(subcommand)]
    command: TopCommand,
}

/// The subcommands: the demo, then the proxy and its tools.
#[derive(Debug, Subcommand)]
enum TopCommand {
    /// A whole migration in one command, on two throwaway PostgreSQL servers
    ///
    /// A sample shop behind the proxy under load, capture, clone, a
    /// migration on the target, catch-up, VERIFY and CUTOVER, then a check
    /// of the target and a report. Waits for Enter before the cutover
    /// unless `--seconds` is given.
    #[command(after_help = "Examples:
  switchyard demo                       stop before the cutover to look around with psql
  switchyard demo --seconds 5           run it all; exit 0 only if it checked out
  switchyard demo --seconds 5 --port 0  the same, the proxy on a free port

Needs PostgreSQL 15's server programs (Debian: apt-get install postgresql-15),
or SWITCHYARD_PG_BINDIR naming the bin directory of a PostgreSQL elsewhere.")]
    Demo(switchyard_bench::demo::Args),
    #[command(flatten)]
    Proxy(Box<Command>),
}

fn main() {
    let cli = Cli::parse();
    // The demo prints its own steps; the proxy it runs logs warnings only.
    let default_filter = match cli.command {
        TopCommand::Demo(_) => "warn",
        TopCommand::Proxy(_) => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        cli::LogFormat::Json => logs.json().flatten_event(true).init(),
        // Colour codes only for a terminal (and not with NO_COLOR set): a
        // log file gets plain text.
        cli::LogFormat::Text => logs
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .init(),
    }
    let threads = match &cli.command {
        TopCommand::Proxy(command) => match **command {
            Command::Proxy { threads, .. } => threads,
            _ => 1,
        },
        _ => 1,
    };
    // One thread serves best on small machines: no cross-thread wake-ups,
    // and the database and clients keep the other cores.
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            TopCommand::Demo(args) => demo(args).await,
            TopCommand::Proxy(command) => run(*command).await,
        }
    });
    std::process::exit(code);
}

/// `switchyard demo`: 0 when the migration checked out, 1 otherwise.
async fn demo(args: switchyard_bench::demo::Args) -> i32 {
    match switchyard_bench::demo::run(args).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("switchyard demo: {e:#}");
            1
        }
    }
}

async fn run(command: Command) -> i32 {
    match command {
        Command::Proxy { config, .. } => {
            let config = match cli::load_config(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    return 2;
                }
            };
            let proxy = match Proxy::start(config).await {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    return 1;
                }
            };
            match proxy.run_until_signal().await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("switchyard: cannot install signal handlers: {e}");
                    1
                }
            }
        }
        Command::CheckConfig { config } => {
            match cli::load_config(&config).and_then(|c| c.check_mapping_file().map(|()| c)) {
                Ok(c) => {
                    println!("{}: OK; the settings in force (passwords hidden):", config.display());
                    let rows = c.effective();
                    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                    for (k, v) in rows {
                        println!("  {k:width$}  {v}");
                    }
                    0
                }
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    2
                }
            }
        }
        Command::Status(console) => with_console(&console, |c| async move { cli::status::run(&c).await }).await,
        Command::Pause { console, timeout } => {
            // The command's console session ends at once, so the pause must
            // outlive it (bounded by its timeout).
            let timeout = match timeout
                .as_deref()
                .map(|t| (t, switchyard_proxy::admin::parse_duration(t)))
            {
                None => None,
                Some((_, Some(d))) => Some(d),
                Some((t, None)) => {
                    eprintln!("switchyard: --timeout takes a duration such as 10s or 500ms, not {t:?}");
                    return 2;
                }
            };
            let cmd = AdminCommand::Pause {
                timeout,
                hold: switchyard_proxy::admin::PauseHold::Detached,
            };
            run_command(&console, cmd).await
        }
        Command::Resume(console) => run_command(&console, AdminCommand::Resume).await,
        Command::Reconnect {
            console,
            to,
            timeout,
            force,
        } => {
            let timeout = match timeout.as_deref() {
                None => switchyard_proxy::admin::RECONNECT_TIMEOUT,
                Some(t) => match switchyard_proxy::admin::parse_duration(t) {
                    Some(d) => d,
                    None => {
                        eprintln!("switchyard: --timeout takes a duration such as 30s or 500ms, not {t:?}");
                        return 2;
                    }
                },
            };
            let to = to.as_deref().map(|t| match t {
                "target" => Destination::Target,
                _ => Destination::Source,
            });
            run_command(&console, AdminCommand::Reconnect { to, timeout, force }).await
        }
        Command::Capture {
            action,
            database,
            console,
        } => run_command(&console, action.command(database.as_deref())).await,
        Command::Admin { console, command } => {
            // `;`-separated, as the console takes them; all parsed before any runs.
            let parsed: Result<Vec<AdminCommand>, _> = command
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(AdminCommand::parse)
                .collect();
            match parsed {
                Ok(commands) if !commands.is_empty() => {
                    // In one session, as psql would run them.
                    with_console(&console, |c| async move {
                        let session = match cli::ConsoleSession::open(&c, |notice| eprintln!("{notice}")).await {
                            Ok(s) => s,
                            Err(e) => return print(Err(anyhow::anyhow!("{e}"))),
                        };
                        let mut code = 0;
                        for command in &commands {
                            let reply = session.run(command).await.map_err(|e| anyhow::anyhow!("{e}"));
                            code = print(reply.map(|r| cli::render_rows(&r)));
                            if code != 0 {
                                break;
                            }
                        }
                        session.close().await;
                        code
                    })
                    .await
                }
                Ok(_) => {
                    eprintln!("switchyard: no console command given, e.g. switchyard admin 'SHOW STATUS'");
                    2
                }
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    2
                }
            }
        }
        Command::Cutover(args) => cli::cutover::run(&args).await,
        Command::Verify {
            console,
            tables,
            rows_per_range,
        } => {
            let args = switchyard_proxy::admin::VerifyArgs { tables, rows_per_range };
            with_console(&console, |c| async move { cli::verify::run(&c, args).await }).await
        }
        Command::Lag(console) => run_command(&console, AdminCommand::ShowLag).await,
        Command::Catchup { action } => catchup(action).await,
        Command::Clone(args) => clone(args).await,
    }
}

/// Resolves the console (reading the config file if one is named) and runs
/// `f` with it; exit code 2 when the config cannot be read.
async fn with_console<F, Fut>(args: &cli::ConsoleArgs, f: F) -> i32
where
    F: FnOnce(cli::Console) -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    match args.console() {
        Ok(c) => f(c).await,
        Err(e) => {
            eprintln!("switchyard: {e}");
            2
        }
    }
}

/// Runs one console command and prints its rows.
async fn run_command(args: &cli::ConsoleArgs, command: AdminCommand) -> i32 {
    with_console(args, |c| async move { print(cli::console(&c, &command).await) }).await
}

fn print(r: anyhow::Result<String>) -> i32 {
    match r {
        Ok(s) => {
            print!("{s}");
            0
        }
        Err(e) => {
            eprintln!("switchyard: {e}");
            1
        }
    }
}

async fn catchup(action: CatchupCommand) -> i32 {
    let (console, command) = match action {
        CatchupCommand::Start(c) => (c, AdminCommand::CatchupStart),
        CatchupCommand::Stop(c) => (c, AdminCommand::CatchupStop),
        CatchupCommand::Show(c) => (c, AdminCommand::ShowLag),
        CatchupCommand::Run {
            config,
            until_caught_up,
            workers,
            progress_every,
        } => {
            let mut config = match cli::load_config(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    return 2;
                }
            };
            if let Some(w) = workers {
                config.catchup.workers = w.max(1);
            }
            let every = Duration::from_secs(progress_every.max(1));
            return match switchyard_proxy::catchup::run_standalone(&config, until_caught_up, every).await {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    1
                }
            };
        }
    };
    run_command(&console, command).await
}

async fn clone(args: CloneArgs) -> i32 {
    let config = match cli::load_config(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return 2;
        }
    };
    let Some(barrier_timeout) = switchyard_proxy::admin::parse_duration(&args.barrier_timeout) else {
        eprintln!(
            "switchyard: --barrier-timeout takes a duration such as 10min or 30s, not {:?}",
            args.barrier_timeout
        );
        return 2;
    };
    let options = CloneOptions {
        method: args.method,
        jobs: args.jobs.max(1),
        dir: args.dir.unwrap_or_else(|| clone::default_dir(&config, args.method)),
        no_owner: args.no_owner,
        keep_dump: args.keep_dump,
        barrier_timeout,
        progress_every: Duration::from_secs(args.progress_every.max(1)),
    };
    let console = args.console.resolve(Some(&config));
    match clone::run(&config, &options, &console).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("switchyard: clone: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_help_with_examples() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("{path} {}", sub.get_name());
                let examples = sub
                    .get_after_help()
                    .is_some_and(|h| h.to_string().contains("Examples:"));
                if sub.get_about().is_none() || !examples {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "switchyard", &mut missing);
        assert!(missing.is_empty(), "no help with examples: {missing:?}");
        let top = Cli::command()
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(top.contains("Examples:") && top.contains("Exit codes:"), "{top}");
    }
}
