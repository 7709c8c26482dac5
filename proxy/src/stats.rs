//! Counters and the latency histogram behind `SHOW STATS` and the Prometheus
//! endpoint. Sessions bump atomics on the hot path and keep a local
//! histogram that they merge into the shared one now and then, so no session
//! waits on a lock another session holds per query.

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Proxy-wide counters.
#[derive(Debug)]
pub struct Stats {
    /// Client connections accepted since start.
    pub connections_total: AtomicU64,
    /// Client connections open now.
    pub connections_open: AtomicU64,
    /// Connections refused (limit, auth, startup errors).
    pub connections_refused: AtomicU64,
    /// Queries: simple Query messages plus extended-protocol Syncs.
    pub queries: AtomicU64,
    /// Transactions completed (ReadyForQuery back to idle).
    pub transactions: AtomicU64,
    /// Sessions moved to another backend.
    pub sessions_moved: AtomicU64,
    /// Cutovers that moved traffic to the target.
    pub cutovers_done: AtomicU64,
    /// Cutovers called off before their flip.
    pub cutovers_aborted: AtomicU64,
    /// Errors a moved session got for sequence state that did not move
    /// with it (`currval`/`lastval` not yet defined on the new backend).
    pub moved_sequence_errors: AtomicU64,
    /// Bytes received from clients.
    pub bytes_from_clients: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_to_clients: AtomicU64,
    /// Errors the database returned.
    pub server_errors: AtomicU64,
    /// Sessions closed for protocol violations.
    pub protocol_errors: AtomicU64,
    /// Failed `accept` calls on the client and metrics listeners (e.g. out
    /// of file descriptors).
    pub accept_failures: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// Bounds of recorded latencies, in microseconds: 1 µs to 1 hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A fresh latency histogram (microseconds, 3 significant digits).
pub fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants known to be valid, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            connections_total: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            sessions_moved: AtomicU64::new(0),
            cutovers_done: AtomicU64::new(0),
            cutovers_aborted: AtomicU64::new(0),
            moved_sequence_errors: AtomicU64::new(0),
            bytes_from_clients: AtomicU64::new(0),
            bytes_to_clients: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            accept_failures: AtomicU64::new(0),
            latency: Mutex::new(latency_histogram()),
        }
    }
}

/// A point-in-time copy of the latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Maximum.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Stats {
    /// Adds a session's local histogram and clears it.
    pub fn merge_latency(&self, local: &mut Histogram<u64>) {
        if local.is_empty() {
            return;
        }
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        // Same bounds on both sides, so adding cannot fail.
        let _ = h.add(&*local);
        local.reset();
    }

    /// Percentiles of all merged samples.
    pub fn latency(&self) -> LatencySummary {
        let h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        }
    }

    /// Cumulative counts of samples at or below each bound (seconds), the
    /// total count, and the sum of samples in microseconds.
    pub fn latency_buckets(&self, bounds: &[f64]) -> (Vec<u64>, u64, f64) {
        let h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let counts = bounds.iter().map(|b| h.count_between(0, (b * 1e6) as u64)).collect();
        (counts, h.len(), h.mean() * h.len() as f64)
    }

    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}
