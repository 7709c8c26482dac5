//! The cutover scenario's results file and table: one run per rate, each
//! with switchyard's figures and the recipe's measured beside them.

use super::stats::ClientStats;
use super::switch::{Steps, Switch};
use super::verify::Verdict;
use crate::report::{ratio, round, Machine, Software, Table};
use serde::Serialize;

/// The targets the cutover is held to, at 1,000 TPS and at the maximum rate.
pub(super) const TARGET_STALL_MS_AT_1000: f64 = 50.0;
pub(super) const TARGET_STALL_MS_AT_MAX: f64 = 150.0;
pub(super) const TARGET_RATIO_AT_1000: f64 = 10.0;

/// One way of cutting over, measured in one run.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Phase {
    pub(super) switch: Switch,
    pub(super) clients: ClientStats,
    pub(super) verdict: Verdict,
    /// Failed statements and broken connections the clients saw.
    pub(super) errors: u64,
    pub(super) error_messages: Vec<String>,
    pub(super) reconnects: u64,
    /// Clients whose connection stayed broken until the end of the run.
    pub(super) clients_lost: u64,
    /// Transactions whose COMMIT went unanswered (connection lost).
    pub(super) unknown_outcome: u64,
    /// The largest latency per 50 ms from 2 s before the command to 3 s
    /// after it, ms (0: no transaction due in that bin).
    pub(super) timeline_50ms: Vec<f64>,
    /// The machine's 1-, 5- and 15-minute load averages when the phase's
    /// setup began: other work on the machine shows in every figure.
    pub(super) loadavg_at_start: Option<[f64; 3]>,
    /// The whole run second by second.
    pub(super) per_second: Vec<super::stats::Second>,
}

impl Phase {
    /// Errors as the headline counts them: the clients' plus a cutover that
    /// did not finish.
    fn errors_total(&self) -> u64 {
        self.errors + u64::from(!self.switch.done)
    }
}

/// One rate: switchyard and the recipe.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RunReport {
    /// The schedule's rate; `null` for as fast as the clients go.
    pub(super) rate_tps: Option<u32>,
    pub(super) achieved_tps: f64,
    pub(super) pause_ms: Option<f64>,
    pub(super) steps_ms: Steps,
    pub(super) max_stall_ms: f64,
    /// The longest transaction that overlapped the pause.
    pub(super) pause_held_max_ms: f64,
    /// The longest transaction in a span as long as the window, right
    /// before it (no cutover running): the machine's own stall over the
    /// same exposure.
    pub(super) before_window_max_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) errors: u64,
    /// See verify.rs: rows of the target not equal to the source at the
    /// switch plus the later writes.
    pub(super) rows_differing: u64,
    /// Committed transactions not on the target.
    pub(super) committed_missing: u64,
    pub(super) recipe_achieved_tps: f64,
    pub(super) recipe_pause_ms: Option<f64>,
    pub(super) recipe_steps_ms: Steps,
    pub(super) recipe_max_stall_ms: f64,
    pub(super) recipe_p99_ms: f64,
    pub(super) recipe_errors: u64,
    pub(super) recipe_rows_differing: u64,
    pub(super) recipe_committed_missing: u64,
    /// The floor the pause is held against: the drain of the transactions
    /// in flight (freeze), one final sync and the flip (freeze + final_sync
    /// + flip), ms.
    pub(super) limit_ms: Option<f64>,
    /// recipe_max_stall_ms / max_stall_ms.
    pub(super) stall_ratio: f64,
    /// The bound on max_stall_ms at this rate, if there is one.
    pub(super) target_max_stall_ms: Option<f64>,
    /// Every target for this rate met (no bound: 0 errors, 0 rows
    /// differing, nothing missing).
    pub(super) target_met: bool,
    pub(super) ours: Phase,
    pub(super) recipe: Phase,
}

impl RunReport {
    pub(super) fn new(rate: Option<u32>, ours: Phase, recipe: Phase) -> RunReport {
        let target_max_stall_ms = match rate {
            Some(1000) => Some(TARGET_STALL_MS_AT_1000),
            None => Some(TARGET_STALL_MS_AT_MAX),
            Some(_) => None,
        };
        let stall_ratio = round(ratio(recipe.clients.max_stall_ms, ours.clients.max_stall_ms), 1);
        let clean = ours.errors_total() == 0 && ours.verdict.is_clean();
        let bound = target_max_stall_ms.is_none_or(|b| ours.clients.max_stall_ms <= b);
        let ratio_ok = rate != Some(1000) || stall_ratio >= TARGET_RATIO_AT_1000;
        RunReport {
            rate_tps: rate,
            achieved_tps: ours.clients.achieved_tps,
            pause_ms: ours.switch.pause_ms,
            steps_ms: ours.switch.steps_ms.clone(),
            limit_ms: limit(&ours.switch.steps_ms),
            max_stall_ms: ours.clients.max_stall_ms,
            pause_held_max_ms: ours.clients.pause_held_max_ms,
            before_window_max_ms: ours.clients.before_window_max_ms,
            p99_ms: ours.clients.p99_ms,
            errors: ours.errors_total(),
            rows_differing: ours.verdict.rows_differing + ours.verdict.invariant_violations,
            committed_missing: ours.verdict.committed_missing,
            recipe_achieved_tps: recipe.clients.achieved_tps,
            recipe_pause_ms: recipe.switch.pause_ms,
            recipe_steps_ms: recipe.switch.steps_ms.clone(),
            recipe_max_stall_ms: recipe.clients.max_stall_ms,
            recipe_p99_ms: recipe.clients.p99_ms,
            recipe_errors: recipe.errors_total(),
            recipe_rows_differing: recipe.verdict.rows_differing + recipe.verdict.invariant_violations,
            recipe_committed_missing: recipe.verdict.committed_missing,
            stall_ratio,
            target_max_stall_ms,
            target_met: clean && bound && ratio_ok,
            ours,
            recipe,
        }
    }

    /// The rate as the table shows it.
    pub(super) fn rate_label(&self) -> String {
        self.rate_tps.map_or_else(|| "max".to_owned(), |r| r.to_string())
    }
}

/// freeze + final_sync + flip, when all three ran.
fn limit(steps: &Steps) -> Option<f64> {
    let get = |name: &str| steps.0.iter().find(|(n, _)| n == name).map(|(_, ms)| *ms);
    Some(round(get("freeze")? + get("final_sync")? + get("flip")?, 1))
}

/// How the runs were made.
#[derive(Debug, Serialize)]
pub(super) struct Parameters {
    pub(super) seconds: f64,
    pub(super) cutover_at_seconds: f64,
    pub(super) clients: usize,
    pub(super) scale: u32,
    pub(super) load_threads: usize,
    pub(super) catchup_workers: usize,
    pub(super) cutover_command: String,
    pub(super) transaction: &'static str,
    pub(super) latency: &'static str,
    pub(super) window: &'static str,
    pub(super) rows_differing: &'static str,
    pub(super) recipe: &'static str,
    pub(super) order: &'static str,
}

/// The results file.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) scenario: &'static str,
    pub(super) timestamp: String,
    pub(super) unix_time: u64,
    pub(super) runs: Vec<RunReport>,
    pub(super) all_targets_met: bool,
    pub(super) parameters: Parameters,
    pub(super) machine: Machine,
    pub(super) software: Software,
    pub(super) pgbouncer: String,
}

/// The one-screen summary.
pub(super) fn table(runs: &[RunReport]) -> Table {
    let mut t = Table::new(&[
        "rate",
        "tps",
        "pause ms",
        "limit ms",
        "max stall ms",
        "held ms",
        "before ms",
        "p99 ms",
        "errors",
        "rows differing",
        "missing",
        "recipe pause ms",
        "recipe stall ms",
        "recipe p99 ms",
        "recipe errors",
        "stall ratio",
        "met",
    ]);
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    for r in runs {
        t.row(vec![
            r.rate_label(),
            format!("{:.0}/{:.0}", r.achieved_tps, r.recipe_achieved_tps),
            opt(r.pause_ms),
            opt(r.limit_ms),
            format!("{:.1}", r.max_stall_ms),
            format!("{:.1}", r.pause_held_max_ms),
            format!("{:.1}", r.before_window_max_ms),
            format!("{:.1}", r.p99_ms),
            r.errors.to_string(),
            r.rows_differing.to_string(),
            r.committed_missing.to_string(),
            opt(r.recipe_pause_ms),
            format!("{:.1}", r.recipe_max_stall_ms),
            format!("{:.1}", r.recipe_p99_ms),
            r.recipe_errors.to_string(),
            format!("{:.1}x", r.stall_ratio),
            if r.target_met { "yes" } else { "NO" }.to_owned(),
        ]);
    }
    t
}
