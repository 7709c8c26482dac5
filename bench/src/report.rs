//! What every scenario reports with: medians and ratios, a text table,
//! the machine it ran on, a UTC timestamp, and the JSON results file.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use switchyard_tests::Cluster;

/// The median of `values` (the mean of the middle two for an even count);
/// 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `value / base`, or 0 when the base is 0.
pub fn ratio(value: f64, base: f64) -> f64 {
    if base > 0.0 {
        value / base
    } else {
        0.0
    }
}

/// `value` rounded to `digits` decimals, so that the JSON stays readable.
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// An aligned text table with a header line.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells beyond the header's width are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row.
    pub fn render(&self) -> String {
        // The admin console's renderer already aligns psql-style tables.
        switchyard_proxy::cli::render_table(&self.header, &self.rows)
    }
}

/// The machine a benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available to the process.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// The kernel release.
    pub kernel: Option<String>,
    /// The 1-, 5- and 15-minute load averages when the bench started: other
    /// load on the machine skews every figure.
    pub loadavg_at_start: Option<[f64; 3]>,
}

impl Machine {
    /// Reads what the system tells about itself; missing facts stay `None`.
    pub fn probe() -> Machine {
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: read("/proc/cpuinfo").and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            }),
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()),
            loadavg_at_start: read("/proc/loadavg").and_then(|text| {
                let mut parts = text.split_whitespace().map(|p| p.parse::<f64>().ok());
                Some([parts.next()??, parts.next()??, parts.next()??])
            }),
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The current time in seconds since the epoch and as RFC 3339 UTC.
pub fn now() -> (u64, String) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (secs, rfc3339_utc(secs))
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), to avoid a date crate for one timestamp.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `postgres --version` of the cluster's binaries.
pub fn postgres_version(cluster: &Cluster) -> Option<String> {
    let out = std::process::Command::new(cluster.bin("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Versions of what was measured.
#[derive(Debug, Serialize)]
pub struct Software {
    /// This build of switchyard.
    pub switchyard: &'static str,
    /// `postgres --version` of the cluster's binaries.
    pub postgres: Option<String>,
}

impl Software {
    /// The versions in use with `cluster`.
    pub fn probe(cluster: &Cluster) -> Software {
        Software {
            switchyard: env!("CARGO_PKG_VERSION"),
            postgres: postgres_version(cluster),
        }
    }
}

/// Writes `value` as pretty JSON to `path`, creating its directory.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = serde_json::to_string_pretty(value).context("encoding the results")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["target", "tps"]);
        t.row(vec!["direct".into(), "100".into()]);
        let text = t.render();
        assert!(text.starts_with("target | tps\n"), "{text}");
        assert!(text.contains("direct | 100"), "{text}");
    }
}
