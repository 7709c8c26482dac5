//! The `switchyard` binary: parses the command line and calls the library.

use clap::Parser;
use switchyard_proxy::cli::{self, Cli, Command};
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
            let cmd = match timeout {
                Some(t) => format!("PAUSE {t}"),
                None => "PAUSE".into(),
            };
            print(cli::console(&console, &cmd).await)
        }
        Command::Resume(console) => print(cli::console(&console, "RESUME").await),
        Command::Capture { action, console } => print(cli::console(&console, action.command()).await),
        Command::Admin { console, command } => print(cli::console(&console, &command).await),
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
