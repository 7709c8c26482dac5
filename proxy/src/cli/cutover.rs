//! `switchyard cutover`: runs `CUTOVER` on a proxy's console, printing each
//! step as the proxy reports it, and exits with a code per outcome.

use super::ConsoleArgs;
use crate::admin::reply::{ConsoleReply, CutoverReply};
use crate::admin::AdminCommand;
use clap::Args;

/// Exit code: traffic is on the target (or, with --dry-run, everything is ready).
pub const EXIT_DONE: i32 = 0;
/// Exit code: the console could not be reached, or another error.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: called off at preflight; nothing was frozen.
pub const EXIT_PREFLIGHT: i32 = 3;
/// Exit code: called off after the freeze; the gate reopened on the source.
pub const EXIT_ABORTED: i32 = 4;

/// `switchyard cutover` options; each defaults to the proxy's `[cutover]` config.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  switchyard cutover --dry-run          check everything, freeze nothing
  switchyard cutover                    cut over with the [cutover] defaults
  switchyard cutover --drain-timeout 2s --on-drain-timeout cancel --max-pause 5s

Exit codes: 0 done (or dry run ready), 1 error (console unreachable...),
3 refused at preflight (nothing frozen), 4 aborted after the freeze (traffic
stays on the source, nothing lost).")]
pub struct CutoverArgs {
    /// How to reach the console.
    #[command(flatten)]
    pub console: ConsoleArgs,
    /// Run the preflight only (targets opened and released, nothing frozen).
    #[arg(long)]
    pub dry_run: bool,
    /// Largest catch-up lag to start with, e.g. 1s.
    #[arg(long)]
    pub max_lag: Option<String>,
    /// How long open transactions may take to finish once frozen, e.g. 5s.
    #[arg(long)]
    pub drain_timeout: Option<String>,
    /// abort (default) or cancel the transactions still open at the drain timeout.
    #[arg(long, value_parser = ["abort", "cancel"])]
    pub on_drain_timeout: Option<String>,
    /// What the freeze compares: none, synced or sample.
    #[arg(long, value_parser = ["none", "synced", "sample"])]
    pub verify: Option<String>,
    /// Earlier rows compared with --verify sample.
    #[arg(long)]
    pub verify_sample: Option<usize>,
    /// Longest the gate may stay closed before the flip, e.g. 10s.
    #[arg(long)]
    pub max_pause: Option<String>,
    /// How long opening the target backends may take, e.g. 10s.
    #[arg(long)]
    pub open_timeout: Option<String>,
    /// What is done to the old source: none, read-only or terminate-bypass.
    #[arg(long, value_parser = ["none", "read-only", "terminate-bypass"])]
    pub fence: Option<String>,
    /// Start capture on the target at the flip (for a rollback): on or off.
    #[arg(long, value_parser = ["on", "off"])]
    pub capture_on_target: Option<String>,
    /// Go ahead although sessions bypass the proxy on the source.
    #[arg(long)]
    pub allow_bypass: bool,
    /// Go ahead although some source sequences have no target counterpart.
    #[arg(long)]
    pub allow_unmapped_sequences: bool,
}

impl CutoverArgs {
    /// The console command.
    pub fn command(&self) -> AdminCommand {
        let valued = [
            ("MAX_LAG", self.max_lag.clone()),
            ("DRAIN_TIMEOUT", self.drain_timeout.clone()),
            ("ON_DRAIN_TIMEOUT", self.on_drain_timeout.clone()),
            ("VERIFY", self.verify.clone()),
            ("VERIFY_SAMPLE", self.verify_sample.map(|n| n.to_string())),
            ("MAX_PAUSE", self.max_pause.clone()),
            ("OPEN_TIMEOUT", self.open_timeout.clone()),
            ("FENCE", self.fence.clone()),
            ("CAPTURE_ON_TARGET", self.capture_on_target.clone()),
        ];
        let mut set: Vec<(String, String)> = valued
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value?)))
            .collect();
        for (name, on) in [
            ("ALLOW_BYPASS", self.allow_bypass),
            ("ALLOW_UNMAPPED_SEQUENCES", self.allow_unmapped_sequences),
        ] {
            if on {
                set.push((name.to_owned(), "true".to_owned()));
            }
        }
        AdminCommand::Cutover(crate::admin::CutoverCommandArgs {
            dry_run: self.dry_run,
            set,
        })
    }
}

/// Runs the cutover, printing each step to stdout as it happens; returns
/// the exit code.
pub async fn run(args: &CutoverArgs) -> i32 {
    let console = match args.console.console() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return EXIT_ERROR;
        }
    };
    let command = args.command();
    let printed = super::console_streaming(&console, &command, |notice| println!("{notice}")).await;
    match printed {
        Ok(rows) => {
            print!("{}", super::render_rows(&rows));
            // The console answers with rows only when traffic is on the
            // target, or a dry run found everything ready; it refuses otherwise.
            match CutoverReply::from_rows(&rows) {
                Ok(report) => println!("{}", outcome(&report)),
                Err(e) => eprintln!("switchyard: {e}"),
            }
            EXIT_DONE
        }
        Err(super::ConsoleError::Unreachable(e)) => {
            eprintln!("switchyard: {e}");
            EXIT_ERROR
        }
        Err(super::ConsoleError::Refused(code, message)) => {
            eprintln!("switchyard: {message}");
            // The console says which outcome by its SQLSTATE.
            match code.as_str() {
                "55000" => EXIT_PREFLIGHT,
                "57014" => EXIT_ABORTED,
                _ => EXIT_ERROR,
            }
        }
    }
}

/// The closing line: what the cutover did.
fn outcome(report: &CutoverReply) -> String {
    if report.dry_run {
        return format!(
            "dry run {}: ready to cut over, nothing was frozen ({} session(s))",
            report.id, report.sessions
        );
    }
    let pause = report
        .pause_ms
        .map(|p| format!(" after a pause of {p:.1} ms"))
        .unwrap_or_default();
    let mut line = format!(
        "cutover {}: traffic is on the target{pause}; {} of {} session(s) moved",
        report.id, report.sessions_moved, report.sessions
    );
    if report.sessions_closed > 0 {
        line.push_str(&format!(", {} closed", report.sessions_closed));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::reply::samples::{cutover_aborted, cutover_ready};

    #[test]
    fn the_outcome_says_where_traffic_is() {
        assert_eq!(
            outcome(&cutover_ready()),
            "dry run 3: ready to cut over, nothing was frozen (4 session(s))"
        );
        let done = CutoverReply {
            state: "done".to_owned(),
            reason: None,
            ..cutover_aborted()
        };
        assert_eq!(
            outcome(&done),
            "cutover 3: traffic is on the target after a pause of 38.2 ms; 2 of 4 session(s) moved, 2 closed"
        );
    }
}
