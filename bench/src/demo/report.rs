//! The demo's report: how long each step took, what the clients saw around
//! the cutover (the longest stall against their latency before it), the
//! cutover's own steps, the checks, and the latency plot, drawn with the
//! cutover bench's plot code.

use super::check::Checked;
use super::cutover::Cutover;
use super::load::{per_kind, Recorded, Tx};
use crate::cutover_bench::plot;
use anyhow::Result;
use std::path::Path;
use std::time::Duration;

/// How far the cutover window reaches before the command and after its
/// answer: a stall shows in the transactions that queued behind the gate.
const WINDOW_MARGIN_US: u64 = 1_000_000;

/// The span the plot shows around the gate closing, seconds (the plot
/// module's axis).
const PLOT_BEFORE_S: f64 = 2.0;
const PLOT_AFTER_S: f64 = 3.0;

/// What the clients saw.
#[derive(Debug, Default)]
pub(super) struct Clients {
    pub(super) committed: u64,
    pub(super) errors: u64,
    /// The longest transaction (first statement to last answer) in the
    /// cutover window, ms.
    pub(super) max_stall_ms: f64,
    /// The same clients' p99 and longest before the window, ms.
    pub(super) before_p99_ms: f64,
    pub(super) before_max_ms: f64,
    /// Transactions committed on the target (begun after the flip).
    pub(super) on_target: u64,
}

/// The clients' figures around `cutover`.
pub(super) fn clients(rec: &Recorded, cutover: &Cutover) -> Clients {
    let from = cutover.sent_us.saturating_sub(WINDOW_MARGIN_US);
    let to = cutover.answered_us + WINDOW_MARGIN_US;
    let ms = |us: u64| us as f64 / 1000.0;
    let in_window = |t: &&Tx| t.end_us >= from && t.start_us <= to;
    let mut before: Vec<u64> = rec.txs.iter().filter(|t| t.end_us < from).map(Tx::service_us).collect();
    before.sort_unstable();
    let p99 = before
        .get((before.len() * 99 / 100).min(before.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0);
    Clients {
        committed: rec.txs.iter().filter(|t| t.committed).count() as u64,
        errors: rec.errors,
        max_stall_ms: ms(rec.txs.iter().filter(in_window).map(Tx::service_us).max().unwrap_or(0)),
        before_p99_ms: ms(p99),
        before_max_ms: ms(before.last().copied().unwrap_or(0)),
        on_target: rec
            .txs
            .iter()
            .filter(|t| t.committed && t.start_us > cutover.answered_us)
            .count() as u64,
    }
}

/// Draws the latency of every transaction around the gate closing into a
/// PNG at `path`.
pub(super) fn draw(path: &Path, rec: &Recorded, cutover: &Cutover, title: String) -> Result<()> {
    let zero = cutover.pause_started_us as f64 / 1e6;
    let points: Vec<(f64, f64)> = rec
        .txs
        .iter()
        .map(|t| (t.due_us as f64 / 1e6 - zero, t.latency_us() as f64 / 1000.0))
        .filter(|(x, _)| (-PLOT_BEFORE_S..=PLOT_AFTER_S).contains(x))
        .collect();
    let panel = plot::Panel {
        title,
        ours: points,
        recipe: Vec::new(),
        ours_span: cutover.pause_ms / 1000.0,
        recipe_span: 0.0,
    };
    plot::draw(path, &[panel])
}

/// Everything the demo measured and checked.
pub(super) struct Summary<'a> {
    pub(super) steps: &'a [(String, Duration)],
    pub(super) cutover: &'a Cutover,
    pub(super) clients: &'a Clients,
    pub(super) recorded: &'a Recorded,
    pub(super) verify_rows: u64,
    pub(super) checked: &'a Checked,
    pub(super) plot: Result<&'a Path, String>,
}

/// Prints the report.
pub(super) fn print(s: &Summary<'_>) {
    println!("\n=== switchyard demo: report ===\n\nsteps:");
    for (name, took) in s.steps {
        println!("  {:<20} {:>8.2} s", name, took.as_secs_f64());
    }
    let total: Duration = s.steps.iter().map(|(_, t)| *t).sum();
    println!("  {:<20} {:>8.2} s", "total", total.as_secs_f64());
    println!("\ncutover steps (inside CUTOVER):");
    for (name, value) in &s.cutover.steps {
        println!("  {name:<12} {value}");
    }
    let c = s.clients;
    let kinds: Vec<String> = per_kind(&s.recorded.txs)
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    let ch = s.checked;
    println!(
        "\npause: {:.1} ms (gate closed to reopened; {} sessions moved, {} keys synced in the freeze, {} sequences set)\
         \nmax client stall: {:.1} ms (longest transaction from 1 s before CUTOVER to 1 s after it; before: p99 {:.1} ms, max {:.1} ms)\
         \nclient transactions: {} committed ({}), {} on the target after the flip\
         \nclient errors: {}",
        s.cutover.pause_ms,
        s.cutover.sessions_moved,
        s.cutover.keys_synced,
        s.cutover.sequences_set,
        c.max_stall_ms,
        c.before_p99_ms,
        c.before_max_ms,
        c.committed,
        kinds.join(", "),
        c.on_target,
        c.errors,
    );
    for m in &s.recorded.error_messages {
        println!("  error: {m}");
    }
    println!(
        "rows verified: {} (VERIFY before the cutover: {}; in the freeze: {}; after: {} rows of the target equal to the \
         mapped source at the flip, {} written by clients since left out)\
         \ncommitted transactions checked on the target: {}, {}\
         \nsequences: orders_id_seq {} on the source at the flip, {} on the target now; {} orders placed on the target after it",
        s.verify_rows + s.cutover.rows_verified + ch.rows_compared,
        s.verify_rows,
        s.cutover.rows_verified,
        ch.rows_compared,
        ch.rows_written_after,
        ch.committed_checked,
        if ch.problems.is_empty() {
            "all there".to_owned()
        } else {
            format!("{} problems (below)", ch.problems.len())
        },
        ch.source_sequence,
        ch.target_sequence,
        ch.orders_on_target,
    );
    for p in &ch.problems {
        println!("  wrong: {p}");
    }
    match &s.plot {
        Ok(path) => println!("latency plot: {}", path.display()),
        Err(e) => println!("latency plot: not written: {e}"),
    }
}
