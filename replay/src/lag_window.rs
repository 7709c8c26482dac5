//! Catch-up lag over a recent window: one histogram per second for the
//! last [`WINDOW_SECS`] seconds, merged on demand, so that `SHOW LAG`'s
//! recent percentiles say how catch-up does now, not since its initial
//! backlog.

use hdrhistogram::Histogram;
use std::collections::VecDeque;

/// The window, seconds.
pub const WINDOW_SECS: i64 = 60;

/// Per-second lag histograms, oldest first.
#[derive(Debug, Default)]
pub struct RecentLag {
    seconds: VecDeque<(i64, Histogram<u64>)>,
}

impl RecentLag {
    /// Records one commit's lag (µs) measured at `now_micros`.
    pub fn record(&mut self, now_micros: i64, lag_micros: u64) {
        let second = now_micros.div_euclid(1_000_000);
        self.expire(second);
        if self.seconds.back().is_none_or(|(s, _)| *s != second) {
            let h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
            self.seconds.push_back((second, h));
        }
        if let Some((_, h)) = self.seconds.back_mut() {
            h.saturating_record(lag_micros.max(1));
        }
    }

    /// The lags recorded in the window ending at `now_micros`.
    pub fn merged(&self, now_micros: i64) -> Histogram<u64> {
        let second = now_micros.div_euclid(1_000_000);
        let mut all = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds");
        for (_, h) in self.seconds.iter().filter(|(s, _)| *s > second - WINDOW_SECS) {
            let _ = all.add(h);
        }
        all
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.seconds.clear();
    }

    fn expire(&mut self, second: i64) {
        while self.seconds.front().is_some_and(|(s, _)| *s <= second - WINDOW_SECS) {
            self.seconds.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_minute_counts() {
        let mut w = RecentLag::default();
        let t0 = 1_000_000_000_000;
        // A backlog: a minute of 15 s lags, then a minute of 2 ms ones.
        for i in 0..60 {
            w.record(t0 + i * 1_000_000, 15_000_000);
        }
        for i in 60..120 {
            w.record(t0 + i * 1_000_000, 2_000);
        }
        let now = t0 + 119 * 1_000_000;
        let recent = w.merged(now);
        assert_eq!(recent.len(), 60);
        assert!(
            recent.value_at_quantile(0.99) < 3_000,
            "{}",
            recent.value_at_quantile(0.99)
        );
        // Nothing recorded for a minute: the window is empty.
        assert_eq!(w.merged(now + 61 * 1_000_000).len(), 0);
        assert!(w.seconds.len() <= WINDOW_SECS as usize);
    }
}
