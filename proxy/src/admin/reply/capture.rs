//! SHOW CAPTURE: capture off, pending a resume after a restart, or on
//! (waiting for its barrier, past it, or failing to write its log); one
//! `key | value` row per fact, then one per session, hold, unsafe
//! statement kind or bypassing session listed.

use super::{ConsoleReply, Entry, Fields, Pairs, ReplyError, ReplyRows, ResultSet};
use crate::session::route::Destination;

const COLUMNS: [&str; 2] = ["key", "value"];

/// What SHOW CAPTURE answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureReply {
    /// Capture is off.
    Off(CaptureOff),
    /// Capture was on before a restart and could not resume.
    ResumePending(ResumePending),
    /// Capture is on.
    On(Box<CaptureOn>),
}

/// SHOW CAPTURE with capture off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOff {
    /// The server a capture would log.
    pub server: Destination,
    /// The log directory.
    pub log_dir: String,
    /// The log left on disk; `None` when it cannot be measured.
    pub space: Option<LogSpace>,
    /// Functions the config lets through as read-only, `, `-separated.
    pub read_only_functions: String,
}

/// SHOW CAPTURE with a capture pending a resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePending {
    /// Why it could not resume.
    pub error: String,
    /// Since when, as the console prints times.
    pub failed_at: String,
    /// The captured database.
    pub database: String,
    /// The server logged.
    pub server: Destination,
    /// The log directory.
    pub log_dir: String,
}

/// Where a capture that is on stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapturePhase {
    /// Transactions begun before CAPTURE START are still open.
    WaitingForBarrier,
    /// Every write committed is logged.
    On,
    /// The log cannot be written: commits that wrote are refused.
    Failed {
        /// Why.
        error: String,
        /// Since when, as the console prints times.
        failed_at: String,
    },
}

/// SHOW CAPTURE with capture on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureOn {
    /// Where it stands.
    pub phase: CapturePhase,
    /// The server logged.
    pub server: Destination,
    /// The captured database.
    pub database: String,
    /// When it started, as the console prints times.
    pub started_at: String,
    /// Times it resumed after a restart.
    pub resumes: u64,
    /// When the barrier passed.
    pub barrier_at: Option<String>,
    /// Sessions holding the barrier back.
    pub sessions_holding_barrier: u64,
    /// Each of them, by session id.
    pub holding_barrier: Vec<Entry<u64>>,
    /// Sessions on other databases (relayed, not captured).
    pub other_database_sessions: u64,
    /// Each of them, by session id.
    pub other_database: Vec<Entry<u64>>,
    /// The log directory.
    pub log_dir: String,
    /// How commits wait for the log.
    pub durability: String,
    /// What is done with unsafe statements.
    pub policy: String,
    /// Functions let through as read-only, `, `-separated.
    pub read_only_functions: String,
    /// Of those, the ones not in the catalog.
    pub read_only_functions_unknown: Option<String>,
    /// Records written by this capture.
    pub log_records: u64,
    /// Bytes written by this capture.
    pub log_bytes: u64,
    /// The last position written.
    pub last_lsn: Option<u64>,
    /// The log on disk and its retention.
    pub log: LogDirFacts,
    /// Transactions logged.
    pub transactions_captured: u64,
    /// Keys logged.
    pub keys_captured: u64,
    /// Commits logged late.
    pub late_logged: u64,
    /// The source catalog.
    pub catalog: CatalogFacts,
    /// Unsafe statements seen, all kinds.
    pub unsafe_statements: u64,
    /// Per kind seen.
    pub unsafe_kinds: Vec<Entry<String>>,
    /// Sessions on the captured server that bypass the proxy.
    pub bypassing: Bypassing,
}

/// The log's size on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpace {
    /// Bytes.
    pub bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// The oldest position kept.
    pub oldest_lsn: Option<u64>,
}

/// The log on disk, its retention and the disk's free space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDirFacts {
    /// The log's size.
    pub space: LogSpace,
    /// The retention in force, in words.
    pub retention: String,
    /// The first position kept, or why everything is.
    pub first_kept: String,
    /// Segments deleted.
    pub deleted_segments: u64,
    /// Bytes deleted.
    pub deleted_bytes: u64,
    /// Replayers' holds on the log.
    pub holds: u64,
    /// Each hold, by name.
    pub hold: Vec<Entry<String>>,
    /// Why the last retention pass failed.
    pub retention_error: Option<String>,
    /// The disk's space; `None` when unknown.
    pub disk: Option<DiskSpace>,
    /// Free bytes below which the disk is warned about.
    pub disk_warn_free_bytes: u64,
    /// The warning, when there is one.
    pub disk_warning: Option<String>,
}

/// The log disk's space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Free bytes.
    pub free_bytes: u64,
    /// Total bytes.
    pub total_bytes: u64,
}

/// The source catalog capture reads keys with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFacts {
    /// Whether it refreshes, in words.
    pub health: String,
    /// Refreshes.
    pub refreshes: u64,
    /// Refreshes that failed.
    pub failures: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Lookups.
    pub lookups: u64,
}

/// The sessions bypassing the proxy, or why they could not be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bypassing {
    /// Listed.
    Found {
        /// How many.
        count: u64,
        /// Each, by backend pid.
        sessions: Vec<Entry<i32>>,
    },
    /// The query failed.
    Unknown(String),
}

/// What a capture pending a resume waits for.
const RESUME_ACTION: &str =
    "sessions of this database are refused: CAPTURE START resumes the capture, CAPTURE STOP gives it up";
/// What a capture whose log cannot be written does meanwhile.
const FAILED_ACTION: &str = "commits that wrote are refused (58030) while the log cannot be written; it is probed every second and capture goes on by itself once it can";

const OFF: &str = "off";
const ON: &str = "on";
const WAITING: &str = "waiting for barrier";
const FAILED: &str = "failed: ";
const RESUME_PENDING: &str = "resume pending: ";
const UNKNOWN: &str = "unknown: ";

const HOLDING_BARRIER: &str = "holding_barrier.session.";
const OTHER_DATABASE: &str = "other_database.session.";
const HOLD: &str = "hold.";
const UNSAFE: &str = "unsafe.";
const BYPASS: &str = "bypass.pid.";

impl LogSpace {
    fn put(&self, r: &mut Pairs) {
        r.put("log_size_bytes", self.bytes);
        r.put("log_segments", self.segments);
        r.put_blank("log_oldest_lsn", self.oldest_lsn);
    }

    fn read(f: &Fields<'_>) -> Result<LogSpace, ReplyError> {
        Ok(LogSpace {
            bytes: f.req("log_size_bytes")?,
            segments: f.req("log_segments")?,
            oldest_lsn: f.blank("log_oldest_lsn")?,
        })
    }
}

impl LogDirFacts {
    fn put(&self, r: &mut Pairs) {
        self.space.put(r);
        r.put("retention", &self.retention);
        r.put("log_first_kept", &self.first_kept);
        r.put("log_deleted_segments", self.deleted_segments);
        r.put("log_deleted_bytes", self.deleted_bytes);
        r.put("log_holds", self.holds);
        r.put_entries(HOLD, &self.hold);
        if let Some(e) = &self.retention_error {
            r.put("retention_error", e);
        }
        match &self.disk {
            Some(d) => {
                r.put("disk_free_bytes", d.free_bytes);
                r.put("disk_total_bytes", d.total_bytes);
            }
            None => r.put("disk_free_bytes", ""),
        }
        r.put("disk_warn_free_bytes", self.disk_warn_free_bytes);
        r.put_blank("disk_warning", self.disk_warning.as_ref());
    }

    fn read(f: &Fields<'_>) -> Result<LogDirFacts, ReplyError> {
        let disk = match f.blank("disk_free_bytes")? {
            Some(free_bytes) => Some(DiskSpace {
                free_bytes,
                total_bytes: f.req("disk_total_bytes")?,
            }),
            None => None,
        };
        Ok(LogDirFacts {
            space: LogSpace::read(f)?,
            retention: f.req("retention")?,
            first_kept: f.req("log_first_kept")?,
            deleted_segments: f.req("log_deleted_segments")?,
            deleted_bytes: f.req("log_deleted_bytes")?,
            holds: f.req("log_holds")?,
            hold: f.entries(HOLD)?,
            retention_error: f.opt("retention_error")?,
            disk,
            disk_warn_free_bytes: f.req("disk_warn_free_bytes")?,
            disk_warning: f.blank("disk_warning")?,
        })
    }
}

impl CatalogFacts {
    fn put(&self, r: &mut Pairs) {
        r.put("catalog", &self.health);
        r.put("catalog_refreshes", self.refreshes);
        r.put("catalog_failures", self.failures);
        r.put("catalog_reconnects", self.reconnects);
        r.put("catalog_lookups", self.lookups);
    }

    fn read(f: &Fields<'_>) -> Result<CatalogFacts, ReplyError> {
        Ok(CatalogFacts {
            health: f.req("catalog")?,
            refreshes: f.req("catalog_refreshes")?,
            failures: f.req("catalog_failures")?,
            reconnects: f.req("catalog_reconnects")?,
            lookups: f.req("catalog_lookups")?,
        })
    }
}

impl Bypassing {
    fn put(&self, r: &mut Pairs) {
        match self {
            Bypassing::Found { count, sessions } => {
                r.put("bypassing_sessions", count);
                r.put_entries(BYPASS, sessions);
            }
            Bypassing::Unknown(e) => r.put("bypassing_sessions", format!("{UNKNOWN}{e}")),
        }
    }

    fn read(f: &Fields<'_>) -> Result<Bypassing, ReplyError> {
        let count: String = f.req("bypassing_sessions")?;
        if let Some(e) = count.strip_prefix(UNKNOWN) {
            return Ok(Bypassing::Unknown(e.to_owned()));
        }
        Ok(Bypassing::Found {
            count: f.req("bypassing_sessions")?,
            sessions: f.entries(BYPASS)?,
        })
    }
}

impl CapturePhase {
    fn name(&self) -> String {
        match self {
            CapturePhase::WaitingForBarrier => WAITING.to_owned(),
            CapturePhase::On => ON.to_owned(),
            CapturePhase::Failed { error, .. } => format!("{FAILED}{error}"),
        }
    }
}

impl CaptureOn {
    fn put(&self, r: &mut Pairs) {
        r.put("state", self.phase.name());
        r.put("server", self.server.name());
        if let CapturePhase::Failed { failed_at, .. } = &self.phase {
            r.put("failed_at", failed_at);
            r.put("action", FAILED_ACTION);
        }
        r.put("database", &self.database);
        r.put("started_at", &self.started_at);
        r.put("resumes", self.resumes);
        r.put_blank("barrier_at", self.barrier_at.as_ref());
        r.put("sessions_holding_barrier", self.sessions_holding_barrier);
        r.put_entries(HOLDING_BARRIER, &self.holding_barrier);
        r.put("other_database_sessions", self.other_database_sessions);
        r.put_entries(OTHER_DATABASE, &self.other_database);
        r.put("log_dir", &self.log_dir);
        r.put("durability", &self.durability);
        r.put("policy", &self.policy);
        r.put("read_only_functions", &self.read_only_functions);
        if let Some(unknown) = &self.read_only_functions_unknown {
            r.put("read_only_functions_unknown", unknown);
        }
        r.put("log_records", self.log_records);
        r.put("log_bytes", self.log_bytes);
        r.put_blank("last_lsn", self.last_lsn);
        self.log.put(r);
        r.put("transactions_captured", self.transactions_captured);
        r.put("keys_captured", self.keys_captured);
        r.put("late_logged", self.late_logged);
        self.catalog.put(r);
        r.put("unsafe_statements", self.unsafe_statements);
        r.put_entries(UNSAFE, &self.unsafe_kinds);
        self.bypassing.put(r);
    }

    fn read(f: &Fields<'_>, phase: CapturePhase) -> Result<CaptureOn, ReplyError> {
        Ok(CaptureOn {
            phase,
            server: f.req("server")?,
            database: f.req("database")?,
            started_at: f.req("started_at")?,
            resumes: f.req("resumes")?,
            barrier_at: f.blank("barrier_at")?,
            sessions_holding_barrier: f.req("sessions_holding_barrier")?,
            holding_barrier: f.entries(HOLDING_BARRIER)?,
            other_database_sessions: f.req("other_database_sessions")?,
            other_database: f.entries(OTHER_DATABASE)?,
            log_dir: f.req("log_dir")?,
            durability: f.req("durability")?,
            policy: f.req("policy")?,
            read_only_functions: f.req("read_only_functions")?,
            read_only_functions_unknown: f.opt("read_only_functions_unknown")?,
            log_records: f.req("log_records")?,
            log_bytes: f.req("log_bytes")?,
            last_lsn: f.blank("last_lsn")?,
            log: LogDirFacts::read(f)?,
            transactions_captured: f.req("transactions_captured")?,
            keys_captured: f.req("keys_captured")?,
            late_logged: f.req("late_logged")?,
            catalog: CatalogFacts::read(f)?,
            unsafe_statements: f.req("unsafe_statements")?,
            unsafe_kinds: f.entries(UNSAFE)?,
            bypassing: Bypassing::read(f)?,
        })
    }
}

impl ConsoleReply for CaptureReply {
    const COMMAND: &'static str = "SHOW CAPTURE";

    fn to_rows(&self) -> ResultSet {
        let mut r = Pairs::new(COLUMNS);
        match self {
            CaptureReply::Off(off) => {
                r.put("state", OFF);
                r.put("server", off.server.name());
                r.put("log_dir", &off.log_dir);
                if let Some(space) = &off.space {
                    space.put(&mut r);
                }
                r.put("read_only_functions", &off.read_only_functions);
            }
            CaptureReply::ResumePending(p) => {
                r.put("state", format!("{RESUME_PENDING}{}", p.error));
                r.put("failed_at", &p.failed_at);
                r.put("database", &p.database);
                r.put("action", RESUME_ACTION);
                r.put("server", p.server.name());
                r.put("log_dir", &p.log_dir);
            }
            CaptureReply::On(on) => on.put(&mut r),
        }
        r.done()
    }

    fn from_rows(rows: &ReplyRows) -> Result<CaptureReply, ReplyError> {
        let f = Fields::new(Self::COMMAND, COLUMNS, rows)?;
        let state: String = f.req("state")?;
        if state == OFF {
            return Ok(CaptureReply::Off(CaptureOff {
                server: f.req("server")?,
                log_dir: f.req("log_dir")?,
                space: match f.get("log_size_bytes") {
                    Some(_) => Some(LogSpace::read(&f)?),
                    None => None,
                },
                read_only_functions: f.req("read_only_functions")?,
            }));
        }
        if let Some(error) = state.strip_prefix(RESUME_PENDING) {
            return Ok(CaptureReply::ResumePending(ResumePending {
                error: error.to_owned(),
                failed_at: f.req("failed_at")?,
                database: f.req("database")?,
                server: f.req("server")?,
                log_dir: f.req("log_dir")?,
            }));
        }
        let phase = match state.as_str() {
            ON => CapturePhase::On,
            WAITING => CapturePhase::WaitingForBarrier,
            _ => match state.strip_prefix(FAILED) {
                Some(error) => CapturePhase::Failed {
                    error: error.to_owned(),
                    failed_at: f.req("failed_at")?,
                },
                None => {
                    return Err(f.invalid(
                        "state",
                        &state,
                        "off, on, waiting for barrier, failed: <why> or resume pending: <why>",
                    ))
                }
            },
        };
        CaptureOn::read(&f, phase).map(|on| CaptureReply::On(Box::new(on)))
    }
}

impl CaptureReply {
    /// The state as SHOW CAPTURE names it.
    pub fn state(&self) -> String {
        match self {
            CaptureReply::Off(_) => OFF.to_owned(),
            CaptureReply::ResumePending(p) => format!("{RESUME_PENDING}{}", p.error),
            CaptureReply::On(on) => on.phase.name(),
        }
    }
}

#[cfg(test)]
pub(crate) mod samples {
    //! Replies as tests build them.

    use super::*;

    pub(crate) fn capture_on() -> CaptureOn {
        CaptureOn {
            phase: CapturePhase::On,
            server: Destination::Source,
            database: "app".to_owned(),
            started_at: "2026-11-18 11:06:40+00".to_owned(),
            resumes: 1,
            barrier_at: Some("2026-11-18 11:06:41+00".to_owned()),
            sessions_holding_barrier: 1,
            holding_barrier: vec![Entry::new(7, "user app backend pid 4242")],
            other_database_sessions: 1,
            other_database: vec![Entry::new(9, "user bi database reports (relayed, not captured)")],
            log_dir: "capture-log".to_owned(),
            durability: "group".to_owned(),
            policy: "reject".to_owned(),
            read_only_functions: "pg_sleep, now".to_owned(),
            read_only_functions_unknown: Some("now_utc".to_owned()),
            log_records: 40,
            log_bytes: 9000,
            last_lsn: Some(40),
            log: LogDirFacts {
                space: LogSpace {
                    bytes: 9000,
                    segments: 2,
                    oldest_lsn: Some(1),
                },
                retention: "confirmed: segments every hold is past are deleted".to_owned(),
                first_kept: "everything (no replayer holds the log yet)".to_owned(),
                deleted_segments: 0,
                deleted_bytes: 0,
                holds: 1,
                hold: vec![Entry::new(
                    "target.app".to_owned(),
                    "confirmed 30 (catch-up), updated 2026-11-18",
                )],
                retention_error: Some("permission denied".to_owned()),
                disk: Some(DiskSpace {
                    free_bytes: 1 << 30,
                    total_bytes: 1 << 34,
                }),
                disk_warn_free_bytes: 1 << 28,
                disk_warning: None,
            },
            transactions_captured: 40,
            keys_captured: 90,
            late_logged: 0,
            catalog: CatalogFacts {
                health: "ok, loaded 3 s ago".to_owned(),
                refreshes: 2,
                failures: 0,
                reconnects: 0,
                lookups: 77,
            },
            unsafe_statements: 3,
            unsafe_kinds: vec![Entry::new(
                "truncate".to_owned(),
                "3 seen, 3 rejected (reject), 0 unacknowledged; last: TRUNCATE t",
            )],
            bypassing: Bypassing::Found {
                count: 1,
                sessions: vec![Entry::new(5150, "psql app@app from 10.0.0.9")],
            },
        }
    }

    pub(crate) fn capture_failed() -> CaptureOn {
        CaptureOn {
            phase: CapturePhase::Failed {
                error: "disk full: no space left".to_owned(),
                failed_at: "2026-11-18 11:07:00+00".to_owned(),
            },
            barrier_at: None,
            sessions_holding_barrier: 0,
            holding_barrier: Vec::new(),
            read_only_functions_unknown: None,
            last_lsn: None,
            bypassing: Bypassing::Unknown("connection refused".to_owned()),
            ..capture_on()
        }
    }

    pub(crate) fn capture_off() -> CaptureOff {
        CaptureOff {
            server: Destination::Target,
            log_dir: "capture-log".to_owned(),
            space: Some(LogSpace {
                bytes: 0,
                segments: 0,
                oldest_lsn: None,
            }),
            read_only_functions: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fails_naming, round_trip, with_extra_row, without};
    use super::samples::*;
    use super::*;

    fn pairs(reply: &CaptureReply) -> Vec<(String, String)> {
        ReplyRows::from(&reply.to_rows())
            .rows
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect()
    }

    #[test]
    fn rows_are_as_psql_shows_them() {
        let keys: Vec<String> = pairs(&CaptureReply::On(Box::new(capture_on())))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "state",
                "server",
                "database",
                "started_at",
                "resumes",
                "barrier_at",
                "sessions_holding_barrier",
                "holding_barrier.session.7",
                "other_database_sessions",
                "other_database.session.9",
                "log_dir",
                "durability",
                "policy",
                "read_only_functions",
                "read_only_functions_unknown",
                "log_records",
                "log_bytes",
                "last_lsn",
                "log_size_bytes",
                "log_segments",
                "log_oldest_lsn",
                "retention",
                "log_first_kept",
                "log_deleted_segments",
                "log_deleted_bytes",
                "log_holds",
                "hold.target.app",
                "retention_error",
                "disk_free_bytes",
                "disk_total_bytes",
                "disk_warn_free_bytes",
                "disk_warning",
                "transactions_captured",
                "keys_captured",
                "late_logged",
                "catalog",
                "catalog_refreshes",
                "catalog_failures",
                "catalog_reconnects",
                "catalog_lookups",
                "unsafe_statements",
                "unsafe.truncate",
                "bypassing_sessions",
                "bypass.pid.5150",
            ]
        );
        let failed = pairs(&CaptureReply::On(Box::new(capture_failed())));
        assert_eq!(failed[0].1, "failed: disk full: no space left");
        assert_eq!(failed[2].0, "failed_at");
        assert_eq!(failed[3], ("action".to_owned(), FAILED_ACTION.to_owned()));
        assert_eq!(
            failed.last().unwrap(),
            &(
                "bypassing_sessions".to_owned(),
                "unknown: connection refused".to_owned()
            )
        );
        let pending = pairs(&CaptureReply::ResumePending(ResumePending {
            error: "log unreadable".to_owned(),
            failed_at: "2026-11-18 11:07:00+00".to_owned(),
            database: "app".to_owned(),
            server: Destination::Source,
            log_dir: "capture-log".to_owned(),
        }));
        let keys: Vec<&str> = pending.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["state", "failed_at", "database", "action", "server", "log_dir"]);
        assert_eq!(pending[0].1, "resume pending: log unreadable");
        let off = pairs(&CaptureReply::Off(capture_off()));
        let keys: Vec<&str> = off.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "state",
                "server",
                "log_dir",
                "log_size_bytes",
                "log_segments",
                "log_oldest_lsn",
                "read_only_functions"
            ]
        );
    }

    #[test]
    fn round_trips() {
        round_trip(&CaptureReply::On(Box::new(capture_on())));
        round_trip(&CaptureReply::On(Box::new(capture_failed())));
        round_trip(&CaptureReply::On(Box::new(CaptureOn {
            phase: CapturePhase::WaitingForBarrier,
            log: LogDirFacts {
                disk: None,
                retention_error: None,
                disk_warning: Some("only 1 GB free".to_owned()),
                ..capture_on().log
            },
            ..capture_on()
        })));
        round_trip(&CaptureReply::Off(capture_off()));
        round_trip(&CaptureReply::Off(CaptureOff {
            space: None,
            ..capture_off()
        }));
        round_trip(&CaptureReply::ResumePending(ResumePending {
            error: "log unreadable: bad checksum".to_owned(),
            failed_at: "2026-11-18 11:07:00+00".to_owned(),
            database: "app".to_owned(),
            server: Destination::Target,
            log_dir: "capture-log".to_owned(),
        }));
    }

    #[test]
    fn extra_rows_and_missing_optional_rows_decode_missing_required_ones_do_not() {
        let reply = CaptureReply::On(Box::new(capture_on()));
        assert_eq!(CaptureReply::from_rows(&with_extra_row(&reply)), Ok(reply.clone()));
        let CaptureReply::On(quiet) = CaptureReply::from_rows(&without(&reply, "retention_error")).unwrap() else {
            panic!("not on");
        };
        assert_eq!(quiet.log.retention_error, None);
        fails_naming::<CaptureReply>(&without(&reply, "keys_captured"), "keys_captured");
        fails_naming::<CaptureReply>(&without(&reply, "disk_total_bytes"), "disk_total_bytes");
        fails_naming::<CaptureReply>(
            &without(&CaptureReply::On(Box::new(capture_failed())), "failed_at"),
            "failed_at",
        );
        let e = CaptureReply::from_rows(&without(&reply, "state")).unwrap_err();
        assert!(e.to_string().contains("SHOW CAPTURE reply has no \"state\""), "{e}");
    }

    #[test]
    fn an_unknown_state_or_a_bad_id_is_named() {
        let mut rows = ReplyRows::from(&CaptureReply::On(Box::new(capture_on())).to_rows());
        rows.rows[0][1] = "sleeping".to_owned();
        let e = CaptureReply::from_rows(&rows).unwrap_err().to_string();
        assert!(e.contains("\"state\" is \"sleeping\""), "{e}");
        let mut rows = ReplyRows::from(&CaptureReply::On(Box::new(capture_on())).to_rows());
        let held = rows
            .rows
            .iter_mut()
            .find(|r| r[0].starts_with(HOLDING_BARRIER))
            .unwrap();
        held[0] = format!("{HOLDING_BARRIER}seven");
        let e = CaptureReply::from_rows(&rows).unwrap_err().to_string();
        assert!(e.contains("\"holding_barrier.session.seven\" is \"seven\""), "{e}");
    }

    #[test]
    fn the_state_is_named_as_shown() {
        assert_eq!(CaptureReply::On(Box::new(capture_on())).state(), "on");
        assert_eq!(
            CaptureReply::On(Box::new(capture_failed())).state(),
            "failed: disk full: no space left"
        );
        assert_eq!(CaptureReply::Off(capture_off()).state(), "off");
    }
}
