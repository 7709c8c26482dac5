//! The Prometheus endpoint: a small HTTP server on its own port that renders
//! the proxy's counters and its query-latency histogram in the text
//! exposition format. Each proxy owns its recorder (no process-global
//! recorder), so several proxies can live in one process. Sessions never
//! touch the recorder: counters are copied from [`Stats`] at scrape time and
//! the latency histogram's buckets are read off the same HDR histogram that
//! `SHOW STATS` uses, so the hot path pays for one histogram, not two.

use crate::capture::retention::LogView;
use crate::catchup::LagView;
use crate::server::Shared;
use crate::stats::Stats;
use metrics::{Counter, Gauge, Key, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Latency bucket bounds, seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus counter and the [`Stats`] field it is copied from.
type StatsCounter = (Counter, fn(&Stats) -> u64);

/// Scrapes served at once, at most.
const MAX_SCRAPES: usize = 32;

/// The proxy's Prometheus metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    counters: Vec<StatsCounter>,
    open: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const META: Metadata<'static> = Metadata::new("switchyard", Level::INFO, None);

impl Metrics {
    /// A recorder with the proxy's metrics registered.
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counter = |name: &'static str| recorder.register_counter(&Key::from_name(name), &META);
        use std::sync::atomic::Ordering::Relaxed;
        let counters: Vec<StatsCounter> = vec![
            (counter("switchyard_connections_total"), |s| {
                s.connections_total.load(Relaxed)
            }),
            (counter("switchyard_connections_refused_total"), |s| {
                s.connections_refused.load(Relaxed)
            }),
            (counter("switchyard_queries_total"), |s| s.queries.load(Relaxed)),
            (counter("switchyard_transactions_total"), |s| {
                s.transactions.load(Relaxed)
            }),
            (counter("switchyard_client_bytes_received_total"), |s| {
                s.bytes_from_clients.load(Relaxed)
            }),
            (counter("switchyard_client_bytes_sent_total"), |s| {
                s.bytes_to_clients.load(Relaxed)
            }),
            (counter("switchyard_server_errors_total"), |s| {
                s.server_errors.load(Relaxed)
            }),
            (counter("switchyard_protocol_errors_total"), |s| {
                s.protocol_errors.load(Relaxed)
            }),
            (counter("switchyard_accept_failures_total"), |s| {
                s.accept_failures.load(Relaxed)
            }),
            (counter("switchyard_sessions_moved_total"), |s| {
                s.sessions_moved.load(Relaxed)
            }),
            (counter("switchyard_cutovers_done_total"), |s| {
                s.cutovers_done.load(Relaxed)
            }),
            (counter("switchyard_cutovers_aborted_total"), |s| {
                s.cutovers_aborted.load(Relaxed)
            }),
        ];
        let open = recorder.register_gauge(&Key::from_name("switchyard_client_connections"), &META);
        Metrics {
            recorder,
            handle,
            counters,
            open,
        }
    }

    /// The text exposition of every metric, current as of now; the capture
    /// log's when capture is on.
    pub fn render(&self, stats: &Stats, catchup: Option<&LagView>, capture_log: Option<&LogView>) -> String {
        for (counter, read) in &self.counters {
            counter.absolute(read(stats));
        }
        self.open.set(Stats::get(&stats.connections_open) as f64);
        let _ = &self.recorder;
        let mut text = self.handle.render();
        render_latency(&mut text, stats);
        if let Some(view) = catchup {
            render_catchup(&mut text, view);
        }
        if let Some(view) = capture_log {
            render_capture_log(&mut text, view);
        }
        text
    }
}

/// Appends `switchyard_query_duration_seconds` as a Prometheus histogram.
fn render_latency(out: &mut String, stats: &Stats) {
    use std::fmt::Write;
    let name = "switchyard_query_duration_seconds";
    let _ = writeln!(out, "# HELP {name} Time from a query (or Sync) to its ReadyForQuery.");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let (buckets, count, sum_us) = stats.latency_buckets(BUCKETS);
    for (le, n) in BUCKETS.iter().zip(buckets) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", sum_us / 1e6);
    let _ = writeln!(out, "{name}_count {count}");
}

/// Catch-up progress as gauges (counters for monotonic totals).
fn render_catchup(out: &mut String, view: &LagView) {
    use std::fmt::Write;
    let r = &view.report;
    let running = if view.state == crate::catchup::CatchupPhase::Running {
        1.0
    } else {
        0.0
    };
    for (name, kind, help, value) in [
        ("switchyard_catchup_running", "gauge", "1 while catch-up runs.", running),
        (
            "switchyard_catchup_read_lsn",
            "gauge",
            "Highest capture-log position read.",
            r.read_lsn as f64,
        ),
        (
            "switchyard_catchup_confirmed_lsn",
            "gauge",
            "Highest capture-log position applied on the target.",
            r.confirmed_lsn as f64,
        ),
        (
            "switchyard_catchup_commits_pending",
            "gauge",
            "Commits read and not yet applied.",
            r.commits_pending as f64,
        ),
        (
            "switchyard_catchup_keys_pending",
            "gauge",
            "Keys read and not yet applied.",
            r.keys_pending as f64,
        ),
        (
            "switchyard_catchup_lag_seconds",
            "gauge",
            "Age of the oldest commit not yet applied on the target.",
            r.lag_seconds,
        ),
        (
            "switchyard_catchup_rows_applied_total",
            "counter",
            "Rows upserted or deleted on the target.",
            r.rows_applied as f64,
        ),
        (
            "switchyard_catchup_batches_total",
            "counter",
            "Target transactions committed by catch-up.",
            r.batches as f64,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}

/// The capture log on disk, retention and the disk's free space.
fn render_capture_log(out: &mut String, view: &LogView) {
    use std::fmt::Write;
    let disk_free = view.disk.map_or(f64::NAN, |d| d.free_bytes as f64);
    for (name, kind, help, value) in [
        (
            "switchyard_capture_log_size_bytes",
            "gauge",
            "Bytes of the capture log's segment files on disk.",
            view.space.bytes as f64,
        ),
        (
            "switchyard_capture_log_segments",
            "gauge",
            "Segment files of the capture log.",
            view.space.segments as f64,
        ),
        (
            "switchyard_capture_log_oldest_lsn",
            "gauge",
            "The oldest capture-log position still kept.",
            view.space.oldest.map_or(0.0, |l| l.0 as f64),
        ),
        (
            "switchyard_capture_log_deleted_segments_total",
            "counter",
            "Segments deleted by retention since capture started.",
            view.deleted_segments as f64,
        ),
        (
            "switchyard_capture_log_disk_free_bytes",
            "gauge",
            "Free bytes of the filesystem holding the capture log.",
            disk_free,
        ),
        (
            "switchyard_capture_log_disk_low",
            "gauge",
            "1 while that free space is below capture.disk_warn_free_bytes.",
            if view.disk_low { 1.0 } else { 0.0 },
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Binds the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` (any path, in fact) until the task is aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // A failing accept (out of file descriptors) must back off, not spin.
    let mut listener = crate::net::Acceptor::new(listener, "metrics", shared.stats.clone());
    // Scrapes in flight are bounded, so a flood of connections to this port
    // cannot pile up tasks and descriptors the clients' port needs.
    let scrapes = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let (mut sock, _) = listener.accept().await;
        let Ok(permit) = scrapes.clone().try_acquire_owned() else {
            continue; // dropped unread: a scraper retries
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut req = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            // Read the request head, bounded in size and time.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let n = sock.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                    if req.windows(4).any(|w| w == b"\r\n\r\n") || req.len() > 16 * 1024 {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let lag = shared.catchup.view();
            let log = shared.capture.current().map(|a| a.log_watch().view());
            let body = shared.metrics.render(&shared.stats, Some(&lag), log.as_ref());
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::latency_histogram;

    #[test]
    fn renders_counters_and_cumulative_latency_buckets() {
        let stats = Stats::default();
        Stats::bump(&stats.queries);
        Stats::bump(&stats.queries);
        let mut local = latency_histogram();
        local.record(200).unwrap(); // 0.2 ms
        local.record(3_000).unwrap(); // 3 ms
        stats.merge_latency(&mut local);
        let text = Metrics::new().render(&stats, None, None);
        assert!(text.contains("switchyard_queries_total 2"), "{text}");
        assert!(
            text.contains("switchyard_query_duration_seconds_bucket{le=\"0.0001\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_query_duration_seconds_bucket{le=\"0.00025\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_query_duration_seconds_bucket{le=\"0.005\"} 2"),
            "{text}"
        );
        assert!(text.contains("switchyard_query_duration_seconds_count 2"), "{text}");
        assert!(!text.contains("switchyard_capture_log"), "{text}");
    }

    #[test]
    fn renders_the_capture_log_and_a_low_disk() {
        let view = LogView {
            space: switchyard_replay::log::LogSpace {
                segments: 3,
                bytes: 12_345,
                oldest: Some(switchyard_replay::Lsn(77)),
            },
            deleted_segments: 5,
            disk: Some(crate::capture::retention::DiskSpace {
                free_bytes: 1000,
                total_bytes: 5000,
            }),
            disk_low: true,
            ..LogView::default()
        };
        let text = Metrics::new().render(&Stats::default(), None, Some(&view));
        for line in [
            "switchyard_capture_log_size_bytes 12345",
            "switchyard_capture_log_segments 3",
            "switchyard_capture_log_oldest_lsn 77",
            "switchyard_capture_log_deleted_segments_total 5",
            "switchyard_capture_log_disk_free_bytes 1000",
            "switchyard_capture_log_disk_low 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from {text}");
        }
    }
}
