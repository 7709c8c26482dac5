//! The `switchyard` binary: parses the command line and calls the library.

use clap::Parser;
use std::time::Duration;
use switchyard_proxy::cli::{self, CatchupCommand, Cli, CloneArgs, Command};
use switchyard_proxy::clone::{self, CloneOptions};
use switchyard_proxy::Proxy;

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let threads = match &cli.command {
        Command::Proxy { threads, .. } => *threads,
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
    std::process::exit(runtime.block_on(run(cli)));
}

async fn run(cli: Cli) -> i32 {
    match cli.command {
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
        Command::CheckConfig { config } => match cli::load_config(&config) {
            Ok(c) => {
                println!("{}: OK", config.display());
                println!(
                    "listen {} -> source {}:{}; {} user(s); auth {}",
                    c.listen,
                    c.source.host,
                    c.source.port,
                    c.users.len(),
                    c.auth.method.name()
                );
                0
            }
            Err(e) => {
                eprintln!("switchyard: {e}");
                2
            }
        },
        Command::Status(console) => print(cli::console(&console, "SHOW STATUS").await),
        Command::Pause { console, timeout } => {
            // The command's console session ends at once, so the pause must
            // outlive it (bounded by its timeout).
            let cmd = match timeout {
                Some(t) => format!("PAUSE {t} DETACHED"),
                None => "PAUSE DETACHED".into(),
            };
            print(cli::console(&console, &cmd).await)
        }
        Command::Resume(console) => print(cli::console(&console, "RESUME").await),
        Command::Reconnect {
            console,
            to,
            timeout,
            force,
        } => {
            let mut cmd = match to {
                Some(to) => format!("RECONNECT TO {to}"),
                None => "RECONNECT".to_owned(),
            };
            if let Some(t) = timeout {
                cmd.push_str(&format!(" TIMEOUT {t}"));
            }
            if force {
                cmd.push_str(" FORCE");
            }
            print(cli::console(&console, &cmd).await)
        }
        Command::Capture {
            action,
            database,
            console,
        } => print(cli::console(&console, &action.command(database.as_deref())).await),
        Command::Admin { console, command } => print(cli::console(&console, &command).await),
        Command::Cutover(args) => cli::cutover::run(&args).await,
        Command::Verify {
            console,
            tables,
            rows_per_range,
        } => verify(&console, &tables, rows_per_range).await,
        Command::Lag(console) => print(cli::console(&console, "SHOW LAG").await),
        Command::Catchup { action } => catchup(action).await,
        Command::Clone(args) => clone(args).await,
    }
}

/// Exit code of `switchyard verify` when some rows differ.
const EXIT_DIFFERS: i32 = 5;

async fn verify(console: &cli::ConsoleArgs, tables: &[String], rows_per_range: Option<usize>) -> i32 {
    let mut cmd = String::from("VERIFY");
    for t in tables {
        cmd.push(' ');
        cmd.push_str(t);
    }
    if let Some(n) = rows_per_range {
        cmd.push_str(&format!(" ROWS_PER_RANGE {n}"));
    }
    match cli::console_streaming(console, &cmd, |notice| println!("{notice}")).await {
        Ok((header, rows)) => {
            print!("{}", cli::render_table(&header, &rows));
            let at = header.iter().position(|h| h == "differing");
            let differing: u64 = rows.iter().filter_map(|r| r.get(at?)?.parse::<u64>().ok()).sum();
            if differing > 0 {
                eprintln!("switchyard: {differing} row(s) differ between the source and the target");
                EXIT_DIFFERS
            } else {
                0
            }
        }
        Err(cli::ConsoleError::Unreachable(e) | cli::ConsoleError::Refused(_, e)) => {
            eprintln!("switchyard: {e}");
            1
        }
    }
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
        CatchupCommand::Start(c) => (c, "CATCHUP START"),
        CatchupCommand::Stop(c) => (c, "CATCHUP STOP"),
        CatchupCommand::Show(c) => (c, "SHOW LAG"),
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
    print(cli::console(&console, command).await)
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
    match clone::run(&config, &options, &args.console).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("switchyard: clone: {e:#}");
            1
        }
    }
}
