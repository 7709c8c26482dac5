//! What the clients saw around a cutover, from the generator's record: the
//! longest stall and the latency percentiles in the cutover window, against
//! the same clients before it; and the points the plot draws.

use super::load::{Outcome, Tx};
use crate::report::round;
use hdrhistogram::Histogram;
use serde::Serialize;

/// How far the window reaches before the cutover command is sent and after
/// it is answered: a stall shows in the transactions due shortly after the
/// gate reopened (they queued behind it), and the first second after the
/// switch pays for whatever the switch left cold.
pub(super) const WINDOW_MARGIN_US: u64 = 1_000_000;

/// The span of the plot around the cutover command, seconds.
pub(super) const PLOT_BEFORE_S: f64 = 2.0;
pub(super) const PLOT_AFTER_S: f64 = 3.0;

/// Transactions at the start of the run left out of the baseline while
/// connections and caches warm up.
const WARMUP_US: u64 = 1_000_000;

/// The client-side figures of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct ClientStats {
    /// Transactions run, all outcomes.
    pub(super) transactions: u64,
    pub(super) committed: u64,
    /// Committed transactions per second over the run.
    pub(super) achieved_tps: f64,
    /// Transactions that overlap the cutover window.
    pub(super) window_transactions: u64,
    /// The longest transaction in the window from BEGIN sent to COMMIT
    /// answered, ms: the longest any client was held (a BEGIN that meets
    /// the closed gate waits in it).
    pub(super) max_stall_ms: f64,
    /// Percentiles of the same BEGIN-to-COMMIT time in the window
    /// (hdrhistogram, three significant digits).
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    /// From each transaction's due time on the schedule to its COMMIT's
    /// answer (pgbench -R's latency): adds the queueing behind a client's
    /// earlier transactions, so it also shows a client that could not keep
    /// to the schedule at all.
    pub(super) max_latency_ms: f64,
    pub(super) p99_latency_ms: f64,
    /// The longest time in the window in which no client committed, ms.
    pub(super) max_commit_gap_ms: f64,
    /// The longest BEGIN-to-COMMIT time of the transactions begun in the
    /// second after the pause ended: what the switch left cold (fresh
    /// backends' caches, a backlog of held transactions), ms.
    pub(super) after_pause_max_ms: f64,
    /// The longest BEGIN-to-COMMIT time of the transactions that overlap
    /// the pause (in flight at the freeze, or held at the gate): the
    /// stall the pause itself caused, ms.
    pub(super) pause_held_max_ms: f64,
    /// The longest BEGIN-to-COMMIT time of the transactions that ended in
    /// a span as long as the window, right before it: what the machine
    /// does by itself over the same exposure, with no cutover running, ms.
    pub(super) before_window_max_ms: f64,
    /// The same clients before the window (after a 1 s warm-up).
    pub(super) baseline_p50_ms: f64,
    pub(super) baseline_p99_ms: f64,
    pub(super) baseline_max_ms: f64,
    pub(super) baseline_p99_latency_ms: f64,
}

/// When a cutover began and ended, and when its pause did, µs on the
/// load's clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) sent_us: u64,
    pub(super) answered_us: u64,
    pub(super) pause_start_us: u64,
    pub(super) pause_end_us: u64,
}

/// Figures of `txs` around the cutover `span`, over a run of `seconds`.
pub(super) fn client_stats(txs: &[Tx], span: Span, seconds: f64) -> ClientStats {
    let Span {
        sent_us,
        answered_us,
        pause_start_us,
        pause_end_us,
    } = span;
    let from = sent_us.saturating_sub(WINDOW_MARGIN_US);
    let to = answered_us.saturating_add(WINDOW_MARGIN_US);
    let longest = |keep: &dyn Fn(&Tx) -> bool| {
        ms(txs
            .iter()
            .filter(|t| keep(t))
            .map(|t| t.service_us())
            .max()
            .unwrap_or(0))
    };
    let before_from = from.saturating_sub(to - from).max(WARMUP_US);
    let in_window = |t: &&Tx| t.end_us >= from && t.due_us <= to;
    let window: Vec<&Tx> = txs.iter().filter(in_window).collect();
    let baseline: Vec<&Tx> = txs
        .iter()
        .filter(|t| t.due_us >= WARMUP_US && t.end_us < from)
        .collect();
    let (w, b) = (service(&window), service(&baseline));
    let (wl, bl) = (latency(&window), latency(&baseline));
    let committed = txs.iter().filter(|t| t.outcome == Outcome::Committed).count() as u64;
    ClientStats {
        transactions: txs.len() as u64,
        committed,
        achieved_tps: round(committed as f64 / seconds.max(1e-9), 1),
        window_transactions: window.len() as u64,
        max_stall_ms: ms(window.iter().map(|t| t.service_us()).max().unwrap_or(0)),
        p50_ms: ms(w.value_at_quantile(0.5)),
        p99_ms: ms(w.value_at_quantile(0.99)),
        max_latency_ms: ms(window.iter().map(|t| t.latency_us()).max().unwrap_or(0)),
        p99_latency_ms: ms(wl.value_at_quantile(0.99)),
        max_commit_gap_ms: ms(max_gap(&window, from, to)),
        after_pause_max_ms: longest(&|t| (pause_end_us..pause_end_us + 1_000_000).contains(&t.start_us)),
        pause_held_max_ms: longest(&|t| t.start_us <= pause_end_us && t.end_us >= pause_start_us),
        before_window_max_ms: longest(&|t| (before_from..from).contains(&t.end_us) && t.due_us >= WARMUP_US),
        baseline_p50_ms: ms(b.value_at_quantile(0.5)),
        baseline_p99_ms: ms(b.value_at_quantile(0.99)),
        baseline_max_ms: ms(baseline.iter().map(|t| t.service_us()).max().unwrap_or(0)),
        baseline_p99_latency_ms: ms(bl.value_at_quantile(0.99)),
    }
}

/// Latencies (due to end) in microseconds; empty for no transactions.
fn latency(txs: &[&Tx]) -> Histogram<u64> {
    record(txs.iter().map(|t| t.latency_us()))
}

/// BEGIN-to-COMMIT times in microseconds.
fn service(txs: &[&Tx]) -> Histogram<u64> {
    record(txs.iter().map(|t| t.service_us()))
}

fn record(values: impl Iterator<Item = u64>) -> Histogram<u64> {
    // Three significant digits up to an hour: far beyond any run.
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid");
    for v in values {
        h.saturating_record(v.max(1));
    }
    h
}

/// The longest interval between consecutive commits in `[from, to]`, the
/// window's ends counting as commits.
fn max_gap(txs: &[&Tx], from: u64, to: u64) -> u64 {
    let mut ends: Vec<u64> = txs
        .iter()
        .filter(|t| t.outcome == Outcome::Committed)
        .map(|t| t.end_us.clamp(from, to))
        .collect();
    ends.push(from);
    ends.push(to);
    ends.sort_unstable();
    ends.windows(2).map(|p| p[1] - p[0]).max().unwrap_or(0)
}

fn ms(us: u64) -> f64 {
    round(us as f64 / 1000.0, 3)
}

/// One second of the run as the clients saw it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Second {
    /// Seconds since the run's start (transactions due in it).
    pub(super) second: u64,
    pub(super) committed: u64,
    pub(super) p50_ms: f64,
    pub(super) max_ms: f64,
}

/// Per second of the run by due time: commits and latency, which shows
/// whether the clients kept to the schedule.
pub(super) fn per_second(txs: &[Tx]) -> Vec<Second> {
    let mut by: std::collections::BTreeMap<u64, Vec<&Tx>> = std::collections::BTreeMap::new();
    for t in txs {
        by.entry(t.due_us / 1_000_000).or_default().push(t);
    }
    by.into_iter()
        .map(|(second, txs)| {
            let h = latency(&txs);
            Second {
                second,
                committed: txs.iter().filter(|t| t.outcome == Outcome::Committed).count() as u64,
                p50_ms: ms(h.value_at_quantile(0.5)),
                max_ms: ms(txs.iter().map(|t| t.latency_us()).max().unwrap_or(0)),
            }
        })
        .collect()
}

/// The plot's points: (seconds from the pause's start to the transaction's
/// due time, latency from due in ms) for every transaction due in the
/// plot's span.
pub(super) fn plot_points(txs: &[Tx], pause_us: u64) -> Vec<(f64, f64)> {
    let zero = pause_us as f64 / 1e6;
    txs.iter()
        .map(|t| (t.due_us as f64 / 1e6 - zero, t.latency_us() as f64 / 1000.0))
        .filter(|(x, _)| (-PLOT_BEFORE_S..=PLOT_AFTER_S).contains(x))
        .collect()
}

/// The largest latency per bin of `bin_ms` over the plot's span, for the
/// JSON: a compact view of the same curve.
pub(super) fn timeline(points: &[(f64, f64)], bin_ms: f64) -> Vec<f64> {
    let bins = ((PLOT_BEFORE_S + PLOT_AFTER_S) * 1000.0 / bin_ms).ceil() as usize;
    let mut max = vec![0f64; bins];
    for &(x, y) in points {
        let i = ((x + PLOT_BEFORE_S) * 1000.0 / bin_ms) as usize;
        if let Some(m) = max.get_mut(i) {
            *m = m.max(round(y, 2));
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(due_ms: u64, latency_ms: u64) -> Tx {
        Tx {
            client: 0,
            seq: 0,
            due_us: due_ms * 1000,
            // Started 1 ms late: queued behind the client's previous one.
            start_us: due_ms * 1000 + 1000,
            end_us: (due_ms + latency_ms) * 1000,
            outcome: Outcome::Committed,
            answered_us: [0; super::super::load::STATEMENTS],
        }
    }

    /// A cutover sent at 5 s and answered at 5.1 s, its pause from 5.05 to
    /// 5.09 s.
    fn cutover_at_5s() -> Span {
        Span {
            sent_us: 5_000_000,
            answered_us: 5_100_000,
            pause_start_us: 5_050_000,
            pause_end_us: 5_090_000,
        }
    }

    #[test]
    fn the_stall_is_the_longest_latency_in_the_window() {
        // One transaction queued 80 ms behind the cutover, one slow one
        // long before it.
        let txs = vec![tx(1500, 300), tx(4000, 2), tx(5000, 80), tx(5100, 3), tx(9000, 2)];
        let s = client_stats(&txs, cutover_at_5s(), 10.0);
        assert_eq!(s.window_transactions, 3);
        assert_eq!(s.max_stall_ms, 79.0);
        assert_eq!(s.max_latency_ms, 80.0);
        assert_eq!(s.baseline_max_ms, 299.0);
        assert_eq!(s.committed, 5);
        // Nothing committed from 4.002 s to 5.080 s.
        assert_eq!(s.max_commit_gap_ms, 1078.0);
        // Begun after the pause: the one due at 5.1 s.
        assert_eq!(s.after_pause_max_ms, 2.0);
        // Over the pause (5.05 to 5.09 s): the one held 80 ms.
        assert_eq!(s.pause_held_max_ms, 79.0);
    }

    #[test]
    fn the_span_before_the_window_is_as_long_as_the_window() {
        // The window spans 4.0 to 6.1 s; as long before it, 1.9 to 4.0 s:
        // the 50 ms one ends in it, the 300 ms one before it and the 70 ms
        // one (ending at 4.05 s) in the window.
        let txs = vec![tx(1500, 300), tx(2500, 50), tx(3980, 70), tx(5100, 3)];
        let s = client_stats(&txs, cutover_at_5s(), 10.0);
        assert_eq!(s.before_window_max_ms, 49.0);
        assert_eq!(s.max_stall_ms, 69.0);
        // Nothing overlaps the pause: the last one begins after it.
        assert_eq!(s.pause_held_max_ms, 0.0);
    }

    #[test]
    fn points_and_timeline_cover_the_span_around_the_command() {
        let txs = vec![tx(1000, 1), tx(4500, 2), tx(5000, 40), tx(9000, 1)];
        let points = plot_points(&txs, 5_000_000);
        assert_eq!(points, vec![(-0.5, 2.0), (0.0, 40.0)]);
        let line = timeline(&points, 500.0);
        assert_eq!(line.len(), 10);
        assert_eq!((line[3], line[4]), (2.0, 40.0));
    }
}
