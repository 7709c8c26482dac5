//! The demo end to end: `switchyard demo --seconds 3 --port 0` runs
//! the whole migration on two real PostgreSQL servers by itself, exits 0,
//! and its report shows no client error, a pause and rows verified; the
//! latency plot is a PNG.

use std::process::Command;

/// The number after `label` on the report line that starts with it.
fn figure(report: &str, label: &str) -> Option<f64> {
    let line = report.lines().find(|l| l.starts_with(label))?;
    let rest = line[label.len()..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[test]
fn demo_runs_the_whole_migration_by_itself() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let plot = dir.path().join("demo.png");
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo", "--seconds", "3", "--port", "0", "--plot"])
        .arg(&plot)
        .output()
        .expect("running switchyard demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.lines().any(|l| l == "client errors: 0"),
        "no `client errors: 0` in the report:\n{stdout}"
    );
    let pause = figure(&stdout, "pause:").unwrap_or_else(|| panic!("no pause figure:\n{stdout}"));
    assert!(pause > 0.0 && pause < 10_000.0, "pause {pause} ms:\n{stdout}");
    let rows = figure(&stdout, "rows verified:").unwrap_or_else(|| panic!("no rows verified:\n{stdout}"));
    assert!(rows > 0.0, "no rows verified:\n{stdout}");
    assert!(
        stdout.contains("committed transactions checked on the target:") && stdout.contains("all there"),
        "committed transactions missing on the target:\n{stdout}"
    );
    let png = std::fs::read(&plot).unwrap_or_else(|e| panic!("no plot at {}: {e}\n{stdout}", plot.display()));
    assert!(png.starts_with(b"\x89PNG"), "the plot is not a PNG");
}
