//! SHOW LAG: catch-up's state, its log positions, what is pending and how
//! far behind it is, one `key | value` row each.

use super::{fixed, ConsoleReply, Fields, Pairs, ReplyError, ReplyRows, ResultSet};
use crate::catchup::CatchupPhase;

const COLUMNS: [&str; 2] = ["key", "value"];

/// What SHOW LAG answers.
#[derive(Debug, Clone, PartialEq)]
pub struct LagReply {
    /// Whether catch-up runs.
    pub state: CatchupPhase,
    /// Why it failed, or last stopped by itself.
    pub error: Option<String>,
    /// Times it was started again after stopping by itself (a row only
    /// when above 0).
    pub restarts: u64,
    /// When it started, as the console prints times.
    pub started_at: Option<String>,
    /// The capture log's last position.
    pub log_end_lsn: u64,
    /// The last position read.
    pub read_lsn: u64,
    /// The last position confirmed applied on the target.
    pub confirmed_lsn: u64,
    /// Positions between the log's end and the confirmed one.
    pub positions_behind: u64,
    /// Commits read and not yet applied.
    pub commits_pending: u64,
    /// Keys read and not yet applied.
    pub keys_pending: u64,
    /// How far behind the source the target is, seconds.
    pub lag_seconds: f64,
    /// Rows written on the target.
    pub rows_applied: u64,
    /// Batches applied.
    pub batches: u64,
    /// Since catch-up started.
    pub since_start: LagWindow,
    /// Over the last minute.
    pub last_60s: LagWindow,
}

/// Commits applied and their lag over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LagWindow {
    /// Commits applied.
    pub commits_applied: u64,
    /// Median lag, ms.
    pub lag_p50_ms: f64,
    /// 99th percentile lag, ms.
    pub lag_p99_ms: f64,
    /// Largest lag, ms.
    pub lag_max_ms: f64,
}

/// The windows and the prefixes of their keys.
const SINCE_START: &str = "since_start.";
const LAST_60S: &str = "last_60s.";

impl LagWindow {
    fn put(&self, r: &mut Pairs, prefix: &str) {
        r.put(format!("{prefix}commits_applied"), self.commits_applied);
        r.put(format!("{prefix}lag_p50_ms"), fixed(self.lag_p50_ms, 1));
        r.put(format!("{prefix}lag_p99_ms"), fixed(self.lag_p99_ms, 1));
        r.put(format!("{prefix}lag_max_ms"), fixed(self.lag_max_ms, 1));
    }

    fn read(f: &Fields<'_>, prefix: &str) -> Result<LagWindow, ReplyError> {
        Ok(LagWindow {
            commits_applied: f.req(&format!("{prefix}commits_applied"))?,
            lag_p50_ms: f.req(&format!("{prefix}lag_p50_ms"))?,
            lag_p99_ms: f.req(&format!("{prefix}lag_p99_ms"))?,
            lag_max_ms: f.req(&format!("{prefix}lag_max_ms"))?,
        })
    }
}

impl ConsoleReply for LagReply {
    const COMMAND: &'static str = "SHOW LAG";

    fn to_rows(&self) -> ResultSet {
        let mut r = Pairs::new(COLUMNS);
        r.put("state", self.state.name());
        if let Some(e) = &self.error {
            r.put("error", e);
        }
        if self.restarts > 0 {
            r.put("restarts", self.restarts);
        }
        r.put_blank("started_at", self.started_at.as_ref());
        r.put("log_end_lsn", self.log_end_lsn);
        r.put("read_lsn", self.read_lsn);
        r.put("confirmed_lsn", self.confirmed_lsn);
        r.put("positions_behind", self.positions_behind);
        r.put("commits_pending", self.commits_pending);
        r.put("keys_pending", self.keys_pending);
        r.put("lag_seconds", fixed(self.lag_seconds, 3));
        r.put("rows_applied", self.rows_applied);
        r.put("batches", self.batches);
        self.since_start.put(&mut r, SINCE_START);
        self.last_60s.put(&mut r, LAST_60S);
        r.done()
    }

    fn from_rows(rows: &ReplyRows) -> Result<LagReply, ReplyError> {
        let f = Fields::new(Self::COMMAND, COLUMNS, rows)?;
        Ok(LagReply {
            state: f.req("state")?,
            error: f.opt("error")?,
            restarts: f.opt("restarts")?.unwrap_or(0),
            started_at: f.blank("started_at")?,
            log_end_lsn: f.req("log_end_lsn")?,
            read_lsn: f.req("read_lsn")?,
            confirmed_lsn: f.req("confirmed_lsn")?,
            positions_behind: f.req("positions_behind")?,
            commits_pending: f.req("commits_pending")?,
            keys_pending: f.req("keys_pending")?,
            lag_seconds: f.req("lag_seconds")?,
            rows_applied: f.req("rows_applied")?,
            batches: f.req("batches")?,
            since_start: LagWindow::read(&f, SINCE_START)?,
            last_60s: LagWindow::read(&f, LAST_60S)?,
        })
    }
}

#[cfg(test)]
pub(crate) mod samples {
    //! Replies as tests build them.

    use super::*;

    pub(crate) fn lag_off() -> LagReply {
        LagReply {
            state: CatchupPhase::Off,
            error: None,
            restarts: 0,
            started_at: None,
            log_end_lsn: 0,
            read_lsn: 0,
            confirmed_lsn: 0,
            positions_behind: 0,
            commits_pending: 0,
            keys_pending: 0,
            lag_seconds: 0.0,
            rows_applied: 0,
            batches: 0,
            since_start: LagWindow::default(),
            last_60s: LagWindow::default(),
        }
    }

    pub(crate) fn lag_retrying() -> LagReply {
        LagReply {
            state: CatchupPhase::Retrying,
            error: Some("connection refused".to_owned()),
            restarts: 2,
            started_at: Some("2026-11-18 11:06:40+00".to_owned()),
            log_end_lsn: 120,
            read_lsn: 110,
            confirmed_lsn: 100,
            positions_behind: 20,
            commits_pending: 4,
            keys_pending: 9,
            lag_seconds: 1.25,
            rows_applied: 5000,
            batches: 40,
            since_start: LagWindow {
                commits_applied: 900,
                lag_p50_ms: 3.5,
                lag_p99_ms: 12.1,
                lag_max_ms: 80.0,
            },
            last_60s: LagWindow {
                commits_applied: 60,
                lag_p50_ms: 2.5,
                lag_p99_ms: 9.9,
                lag_max_ms: 11.0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fails_naming, round_trip, with_extra_row, without};
    use super::samples::*;
    use super::*;

    #[test]
    fn rows_are_as_psql_shows_them() {
        let rows = ReplyRows::from(&lag_retrying().to_rows());
        let pairs: Vec<(&str, &str)> = rows.rows.iter().map(|r| (r[0].as_str(), r[1].as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("state", "retrying"),
                ("error", "connection refused"),
                ("restarts", "2"),
                ("started_at", "2026-11-18 11:06:40+00"),
                ("log_end_lsn", "120"),
                ("read_lsn", "110"),
                ("confirmed_lsn", "100"),
                ("positions_behind", "20"),
                ("commits_pending", "4"),
                ("keys_pending", "9"),
                ("lag_seconds", "1.250"),
                ("rows_applied", "5000"),
                ("batches", "40"),
                ("since_start.commits_applied", "900"),
                ("since_start.lag_p50_ms", "3.5"),
                ("since_start.lag_p99_ms", "12.1"),
                ("since_start.lag_max_ms", "80.0"),
                ("last_60s.commits_applied", "60"),
                ("last_60s.lag_p50_ms", "2.5"),
                ("last_60s.lag_p99_ms", "9.9"),
                ("last_60s.lag_max_ms", "11.0"),
            ]
        );
        let rows = ReplyRows::from(&lag_off().to_rows());
        assert_eq!(rows.rows[0], ["state", "off"]);
        assert_eq!(rows.rows[1], ["started_at", ""]);
    }

    #[test]
    fn round_trips() {
        round_trip(&lag_off());
        round_trip(&lag_retrying());
        round_trip(&LagReply {
            state: CatchupPhase::Failed,
            restarts: 0,
            ..lag_retrying()
        });
    }

    #[test]
    fn extra_rows_and_missing_optional_rows_decode_missing_required_ones_do_not() {
        let reply = lag_retrying();
        assert_eq!(LagReply::from_rows(&with_extra_row(&reply)), Ok(reply.clone()));
        let mut rows = ReplyRows::from(&reply.to_rows());
        rows.rows.retain(|r| r[0] != "error" && r[0] != "restarts");
        let quiet = LagReply::from_rows(&rows).unwrap();
        assert_eq!((quiet.error, quiet.restarts), (None, 0));
        fails_naming::<LagReply>(&without(&reply, "lag_seconds"), "lag_seconds");
        fails_naming::<LagReply>(&without(&reply, "last_60s.lag_p99_ms"), "last_60s.lag_p99_ms");
        fails_naming::<LagReply>(&without(&lag_off(), "started_at"), "started_at");
    }
}
