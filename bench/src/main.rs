//! switchyard-bench: benchmark programs. `main` parses the command line and
//! hands each scenario to its module; every scenario prints a table and
//! writes its numbers to a JSON file under `bench/results/`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use switchyard_bench::{capture_bench, catchup_bench, cutover_bench, move_bench, proxy_bench};

/// switchyard's benchmarks, run against throwaway PostgreSQL 15
/// clusters started by the testkit.
#[derive(Debug, Parser)]
#[command(name = "switchyard-bench", version, about, long_about = None)]
struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    command: Command,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
enum Command {
    /// Proxy overhead: pgbench -S straight to PostgreSQL, through switchyard
    /// and through PgBouncer (each with a TCP and a Unix-socket backend),
    /// side by side in alternating rounds.
    Proxy(proxy_bench::Args),
    /// Capture overhead: pgbench TPC-B through switchyard with write capture
    /// off and on, in the simple and the prepared protocol, side by side in
    /// alternating rounds.
    Capture(capture_bench::Args),
    /// Catch-up: how many rows per second the replayer applies from a
    /// backlog in the capture log (one worker and several, in alternating
    /// rounds), and its per-commit lag behind rate-limited pgbench TPC-B
    /// through a capturing proxy.
    Catchup(catchup_bench::Args),
    /// Session moves: RECONNECT of 100 and 1,000 sessions, idle and busy,
    /// with and without prepared statements: the proxy's move time and each
    /// client's first query on its new backend against its queries before.
    Move(move_bench::Args),
    /// Cutover: pgbench's TPC-B-like load at 500, 1,000 and 2,000 TPS and
    /// at the maximum rate, with a cutover from source to target halfway:
    /// switchyard's CUTOVER and the usual recipe (logical replication and
    /// PgBouncer PAUSE/RELOAD/RESUME) in the same run; client stalls, the
    /// pause and its steps, and a check of the target.
    Cutover(cutover_bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            // The proxy logs every start at info; a bench's output is its table.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The driver only waits on child processes and the testkit; one thread
    // is plenty, and leaves the cores to pgbench, PostgreSQL and the proxy.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Proxy(args) => proxy_bench::run(args).await,
            Command::Capture(args) => capture_bench::run(args).await,
            Command::Catchup(args) => catchup_bench::run(args).await,
            Command::Move(args) => move_bench::run(args).await,
            Command::Cutover(args) => cutover_bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchyard-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
