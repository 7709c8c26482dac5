//! pgbench as the load generator every scenario shares: building its
//! arguments, running it against an [`Endpoint`], and reading the summary it
//! prints at the end.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use switchyard_tests::Endpoint;

/// How many trailing output lines an error message quotes.
const OUTPUT_TAIL_LINES: usize = 15;

/// A timed pgbench load: `-c clients -j threads -T seconds`, select-only
/// (`-S`) or the default TPC-B-like script.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Load {
    /// Concurrent client sessions (`-c`).
    pub clients: usize,
    /// pgbench worker threads (`-j`); at most `clients`.
    pub threads: usize,
    /// Duration in seconds (`-T`).
    pub seconds: u64,
    /// The built-in select-only script (`-S`) rather than TPC-B-like.
    pub select_only: bool,
}

impl Load {
    /// The command-line arguments. `-n` skips the vacuum pgbench would run
    /// before each test: the tables are vacuumed once by `pgbench -i`, and a
    /// vacuum through a proxy between runs would only add noise.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "-n".to_owned(),
            "-c".to_owned(),
            self.clients.to_string(),
            "-j".to_owned(),
            self.threads.min(self.clients).max(1).to_string(),
            "-T".to_owned(),
            self.seconds.to_string(),
        ];
        if self.select_only {
            args.push("-S".to_owned());
        }
        args
    }
}

/// The figures pgbench prints after a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Transactions per second, without the initial connection time.
    pub tps: f64,
    /// Transactions completed.
    pub transactions: u64,
    /// Failed transactions (serialization and deadlock failures; pgbench 15
    /// aborts a client on any other error, which shows in the exit status).
    pub failed: u64,
    /// Average latency in milliseconds.
    pub latency_avg_ms: Option<f64>,
    /// Time to open the client connections, in milliseconds.
    pub initial_connection_ms: Option<f64>,
}

/// One finished pgbench run.
#[derive(Debug, Clone)]
pub struct Run {
    /// What it reported.
    pub summary: Summary,
    /// Whether it exited successfully (a client aborted otherwise).
    pub exit_ok: bool,
    /// Its standard output and error, for diagnosis.
    pub output: String,
}

impl Run {
    /// No failed transaction and no aborted client.
    pub fn is_clean(&self) -> bool {
        self.exit_ok && self.summary.failed == 0
    }

    /// Failures to report: failed transactions, or at least one when a
    /// client aborted without pgbench counting it as a failed transaction.
    pub fn failures(&self) -> u64 {
        if self.exit_ok {
            self.summary.failed
        } else {
            self.summary.failed.max(1)
        }
    }

    /// The last lines of the output.
    pub fn output_tail(&self) -> String {
        tail(&self.output)
    }
}

/// Runs `pgbench -i -q -s scale` against database `db`, failing on any error.
pub async fn initialize(endpoint: &Endpoint, db: &str, scale: u32) -> Result<()> {
    let scale = scale.to_string();
    let out = endpoint
        .pgbench(db, &["-i", "-q", "-s", &scale])
        .await
        .context("running pgbench -i")?;
    if !out.status.success() {
        bail!(
            "pgbench -i -s {scale} failed ({}):\n{}",
            out.status,
            tail(&combined(&out))
        );
    }
    Ok(())
}

/// Runs pgbench with `load` against database `db` and parses its summary. A
/// run that printed no summary is an error; one that printed a summary but
/// exited unsuccessfully comes back with `exit_ok` false.
pub async fn run(endpoint: &Endpoint, db: &str, load: &Load) -> Result<Run> {
    run_args(endpoint, db, &load.args()).await
}

/// Runs pgbench with `args` against database `db`, as [`run`] does: for
/// loads that add options of their own to [`Load::args`].
pub async fn run_args(endpoint: &Endpoint, db: &str, args: &[String]) -> Result<Run> {
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = endpoint
        .pgbench(db, &arg_refs)
        .await
        .with_context(|| format!("running pgbench {}", args.join(" ")))?;
    let output = combined(&out);
    let summary = parse(&output).with_context(|| {
        format!(
            "pgbench {} against {}:{} ({}) printed no summary:\n{}",
            args.join(" "),
            endpoint.host,
            endpoint.port,
            out.status,
            tail(&output)
        )
    })?;
    Ok(Run {
        summary,
        exit_ok: out.status.success(),
        output,
    })
}

/// Reads pgbench's end-of-run summary. Understands pgbench 15's format and
/// the older one with two `tps =` lines (it then takes the one that
/// excludes connection time).
pub fn parse(output: &str) -> Result<Summary> {
    let mut tps_excluding = None;
    let mut tps_first = None;
    let mut transactions = None;
    let mut failed = 0;
    let mut latency_avg_ms = None;
    let mut initial_connection_ms = None;
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("tps = ") {
            let value = leading_number(rest).context("reading the tps line")?;
            if rest.contains("without initial connection") || rest.contains("excluding") {
                tps_excluding = Some(value);
            }
            tps_first.get_or_insert(value);
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            // `-t` runs print `processed/planned`.
            let done = rest.trim().split('/').next().unwrap_or("");
            transactions = Some(done.parse().context("reading transactions processed")?);
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = leading_number(rest).context("reading failed transactions")? as u64;
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            latency_avg_ms = leading_number(rest);
        } else if let Some(rest) = line.strip_prefix("initial connection time = ") {
            initial_connection_ms = leading_number(rest);
        }
    }
    let Some(tps) = tps_excluding.or(tps_first) else {
        bail!("no `tps =` line");
    };
    Ok(Summary {
        tps,
        transactions: transactions.context("no `number of transactions actually processed` line")?,
        failed,
        latency_avg_ms,
        initial_connection_ms,
    })
}

/// The number a value text starts with: `12.5 ms`, `0 (0.000%)`.
fn leading_number(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

fn combined(out: &std::process::Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PGBENCH_15: &str = "\
pgbench (15.8 (Debian 15.8-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 181234
number of failed transactions: 0 (0.000%)
latency average = 0.441 ms
initial connection time = 11.532 ms
tps = 18123.456789 (without initial connection time)
";

    const PGBENCH_13: &str = "\
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 1
query mode: simple
number of clients: 2
number of threads: 1
number of transactions per client: 20
number of transactions actually processed: 40/40
latency average = 1.234 ms
tps = 1600.123 (including connections establishing)
tps = 1700.456 (excluding connections establishing)
";

    #[test]
    fn parses_pgbench_15_summary() {
        let s = parse(PGBENCH_15).unwrap();
        assert_eq!(
            s,
            Summary {
                tps: 18123.456789,
                transactions: 181234,
                failed: 0,
                latency_avg_ms: Some(0.441),
                initial_connection_ms: Some(11.532),
            }
        );
    }

    #[test]
    fn parses_failed_transactions() {
        let text = PGBENCH_15.replace(
            "number of failed transactions: 0 (0.000%)",
            "number of failed transactions: 17 (0.009%)",
        );
        assert_eq!(parse(&text).unwrap().failed, 17);
    }

    #[test]
    fn older_format_takes_tps_excluding_connections() {
        let s = parse(PGBENCH_13).unwrap();
        assert_eq!(s.tps, 1700.456);
        assert_eq!(s.transactions, 40);
        assert_eq!(s.failed, 0);
        assert_eq!(s.initial_connection_ms, None);
    }

    #[test]
    fn missing_summary_is_an_error() {
        let e = parse("pgbench: error: connection to server failed\n").unwrap_err();
        assert!(e.to_string().contains("tps"), "{e}");
        let e = parse("tps = 12.0 (without initial connection time)\n").unwrap_err();
        assert!(e.to_string().contains("transactions"), "{e}");
    }

    #[test]
    fn load_arguments() {
        let load = Load {
            clients: 8,
            threads: 2,
            seconds: 10,
            select_only: true,
        };
        assert_eq!(load.args().join(" "), "-n -c 8 -j 2 -T 10 -S");
        let one = Load { clients: 1, ..load };
        assert_eq!(one.args()[4], "1");
    }
}
