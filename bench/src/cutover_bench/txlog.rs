//! The per-transaction log of the cutover window (`--tx-log PATH`): one CSV
//! row per transaction that overlaps the window, with its times relative to
//! the pause's start and how long each statement of the script took, so
//! that where a stall goes (held at the gate, the drain, the first
//! statements on the target) can be read off transaction by transaction.

use super::load::{Outcome, Tx, STATEMENTS, STATEMENT_NAMES};
use super::stats::WINDOW_MARGIN_US;
use super::switch::Switch;
use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// The rows of every run, written at the end.
#[derive(Debug, Default)]
pub(super) struct TxLog {
    text: String,
}

impl TxLog {
    /// Adds one run's window: `side` (switchyard or recipe) at `rate`.
    pub(super) fn add(&mut self, side: &str, rate: &str, txs: &[Tx], switch: &Switch) {
        if self.text.is_empty() {
            self.text.push_str(&header());
        }
        let zero = switch.pause_started_us as f64;
        let pause_ms = switch.pause_ms.unwrap_or(0.0);
        let _ = write!(self.text, "# {side} at {rate}: pause from 0 to {pause_ms:.3} ms; steps",);
        for (name, ms) in &switch.steps_ms.0 {
            let _ = write!(self.text, " {name} {ms:.3}");
        }
        self.text.push('\n');
        let from = switch.sent_us.saturating_sub(WINDOW_MARGIN_US);
        let to = switch.answered_us.saturating_add(WINDOW_MARGIN_US);
        let mut window: Vec<&Tx> = txs.iter().filter(|t| t.end_us >= from && t.due_us <= to).collect();
        window.sort_by_key(|t| (t.start_us, t.client));
        let rel = |us: u64| (us as f64 - zero) / 1000.0;
        for t in window {
            let _ = write!(
                self.text,
                "{side},{rate},{},{},{:.3},{:.3},{:.3},{:.3},{:.3}",
                t.client,
                t.seq,
                rel(t.due_us),
                rel(t.start_us),
                rel(t.end_us),
                t.service_us() as f64 / 1000.0,
                t.latency_us() as f64 / 1000.0,
            );
            let mut before = 0u32;
            for &at in &t.answered_us {
                let took = if at == 0 {
                    0.0
                } else {
                    f64::from(at.saturating_sub(before)) / 1000.0
                };
                let _ = write!(self.text, ",{took:.3}");
                if at != 0 {
                    before = at;
                }
            }
            let outcome = match t.outcome {
                Outcome::Committed => "committed",
                Outcome::Failed => "failed",
                Outcome::Unknown => "unknown",
            };
            let _ = writeln!(self.text, ",{outcome}");
        }
    }

    /// Writes the log to `path`.
    pub(super) fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, &self.text).with_context(|| format!("writing the transaction log {}", path.display()))
    }
}

/// The column names; times in ms, relative to the pause's start.
fn header() -> String {
    let mut h = "side,rate,client,seq,due_ms,start_ms,end_ms,service_ms,latency_ms".to_owned();
    for name in STATEMENT_NAMES.iter().take(STATEMENTS) {
        let _ = write!(h, ",{name}_ms");
    }
    h.push_str(",outcome\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_relative_to_the_pause_and_split_by_statement() {
        let tx = Tx {
            client: 3,
            seq: 9,
            due_us: 10_000_000,
            start_us: 10_000_500,
            end_us: 10_060_500,
            outcome: Outcome::Committed,
            answered_us: [50_000, 51_000, 52_000, 53_000, 54_000, 55_000, 60_000],
        };
        let mut switch = Switch::default();
        switch.timed(9_990_000, 10_100_000);
        switch.pause_started(10_000_000);
        switch.pause_ms = Some(48.0);
        let mut log = TxLog::default();
        log.add("switchyard", "1000", &[tx], &switch);
        let lines: Vec<&str> = log.text.lines().collect();
        assert!(lines[0].starts_with("side,rate,client,seq,due_ms"));
        assert!(lines[0].ends_with("insert_history_ms,commit_ms,outcome"));
        assert!(lines[1].starts_with("# switchyard at 1000: pause from 0 to 48.000 ms"));
        assert_eq!(
            lines[2],
            "switchyard,1000,3,9,0.000,0.500,60.500,60.000,60.500,50.000,1.000,1.000,1.000,1.000,1.000,5.000,committed"
        );
    }
}
