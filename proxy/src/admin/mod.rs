//! The admin console: a virtual database (`switchyard` by default) on the
//! proxy's own port, spoken to with psql's simple queries. Commands parse
//! once into [`AdminCommand`]; each lives in its own file with its execute.

mod capture;
mod catchup;
mod pause;
mod result;
mod resume;
mod show;

pub use result::{Reply, ResultSet};

use crate::net::Conn;
use crate::registry::{SessionInfo, Shown};
use crate::server::Shared;
use crate::session::state::Phase;
use crate::wire::backend::{self as bmsg, Severity, TxStatus};
use crate::wire::frontend::{tag as ftag, FrontendMessage};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// A console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// `SHOW VERSION`.
    ShowVersion,
    /// `SHOW STATUS`: gate and pause state.
    ShowStatus,
    /// `SHOW SESSIONS`.
    ShowSessions,
    /// `SHOW STATS`.
    ShowStats,
    /// `SHOW CONFIG`.
    ShowConfig,
    /// `SHOW HELP` (also `HELP`).
    Help,
    /// `PAUSE [timeout]`: hold every session at its next transaction
    /// boundary; reopens on RESUME or after the timeout.
    Pause {
        /// Drain and hold limit; the configured default when absent.
        timeout: Option<Duration>,
    },
    /// `RESUME`.
    Resume,
    /// `CAPTURE START [database]`: capture the writes of every session of
    /// that database (or the configured one) from its next transaction
    /// boundary; resumes a capture pending after a restart.
    CaptureStart {
        /// The database named, if any.
        database: Option<String>,
    },
    /// `CAPTURE STOP`.
    CaptureStop,
    /// `SHOW CAPTURE`.
    ShowCapture,
    /// `CATCHUP START`: replay the capture log onto the target.
    CatchupStart,
    /// `CATCHUP STOP`.
    CatchupStop,
    /// `SHOW LAG`: catch-up progress.
    ShowLag,
}

/// A console error: shown to the admin with its SQLSTATE.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AdminError {
    /// Not a command the console knows.
    #[error("unknown admin command \"{0}\"; try SHOW HELP")]
    Unknown(String),
    /// A known command with bad arguments.
    #[error("{0}")]
    Syntax(String),
    /// The command cannot run now (e.g. RESUME when not paused).
    #[error("{0}")]
    State(String),
}

impl AdminError {
    /// The SQLSTATE sent with the error.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Unknown(_) | AdminError::Syntax(_) => "42601",
            AdminError::State(_) => "55000",
        }
    }
}

/// Parses a duration: `500ms`, `5s`, `2min`, or a bare number of seconds
/// (optionally quoted).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim().trim_matches('\'').trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => n,
        "ms" | "msec" | "millisecond" | "milliseconds" => n / 1000.0,
        "min" | "mins" | "minute" | "minutes" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// A database name as typed: `"Name"` keeps its case and loses the quotes;
/// a bare name is taken as typed (database names in a startup packet are
/// matched exactly, so no case folding).
fn unquote_ident(word: &str) -> String {
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => word.to_owned(),
    }
}

impl AdminCommand {
    /// Parses one statement (no trailing `;`). Case-insensitive.
    pub fn parse(text: &str) -> Result<AdminCommand, AdminError> {
        let words: Vec<&str> = text.split_ascii_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        match upper.as_slice() {
            ["SHOW", "VERSION"] => Ok(AdminCommand::ShowVersion),
            ["SHOW", "STATUS"] => Ok(AdminCommand::ShowStatus),
            ["SHOW", "SESSIONS"] | ["SHOW", "CLIENTS"] => Ok(AdminCommand::ShowSessions),
            ["SHOW", "STATS"] => Ok(AdminCommand::ShowStats),
            ["SHOW", "CONFIG"] => Ok(AdminCommand::ShowConfig),
            ["SHOW", "HELP"] | ["HELP"] => Ok(AdminCommand::Help),
            ["PAUSE"] => Ok(AdminCommand::Pause { timeout: None }),
            ["PAUSE", _] => {
                let d = parse_duration(words[1]).filter(|d| !d.is_zero()).ok_or_else(|| {
                    AdminError::Syntax(format!(
                        "PAUSE takes a timeout such as 10s, 500ms or 2min, not \"{}\"",
                        words[1]
                    ))
                })?;
                Ok(AdminCommand::Pause { timeout: Some(d) })
            }
            ["RESUME"] => Ok(AdminCommand::Resume),
            ["CAPTURE", "START"] => Ok(AdminCommand::CaptureStart { database: None }),
            ["CAPTURE", "START", _] => Ok(AdminCommand::CaptureStart {
                database: Some(unquote_ident(words[2])),
            }),
            ["CAPTURE", "STOP"] => Ok(AdminCommand::CaptureStop),
            ["SHOW", "CAPTURE"] => Ok(AdminCommand::ShowCapture),
            ["CATCHUP", "START"] => Ok(AdminCommand::CatchupStart),
            ["CATCHUP", "STOP"] => Ok(AdminCommand::CatchupStop),
            ["SHOW", "LAG"] => Ok(AdminCommand::ShowLag),
            ["SHOW", ..] => Err(AdminError::Unknown(text.to_owned())),
            _ => Err(AdminError::Unknown(text.to_owned())),
        }
    }

    /// Runs the command.
    pub async fn execute(&self, shared: &Arc<Shared>) -> Result<Reply, AdminError> {
        match self {
            AdminCommand::ShowVersion => Ok(show::version()),
            AdminCommand::ShowStatus => Ok(show::status(shared)),
            AdminCommand::ShowSessions => Ok(show::sessions(shared)),
            AdminCommand::ShowStats => Ok(show::stats(shared)),
            AdminCommand::ShowConfig => Ok(show::config(shared)),
            AdminCommand::Help => Ok(show::help()),
            AdminCommand::Pause { timeout } => pause::execute(shared, *timeout).await,
            AdminCommand::Resume => resume::execute(shared),
            AdminCommand::CaptureStart { database } => capture::start(shared, database.as_deref()).await,
            AdminCommand::CaptureStop => capture::stop(shared).await,
            AdminCommand::ShowCapture => capture::show(shared).await,
            AdminCommand::CatchupStart => catchup::start(shared).await,
            AdminCommand::CatchupStop => catchup::stop(shared).await,
            AdminCommand::ShowLag => Ok(catchup::show(shared)),
        }
    }
}

/// Serves an authenticated admin client until it leaves.
pub async fn serve(shared: &Arc<Shared>, client: &mut Conn, info: &Arc<SessionInfo>) {
    for (k, v) in [
        ("server_version", "15.0 (switchyard)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("application_name", info.application.as_str()),
    ] {
        bmsg::parameter_status(client.wbuf(), k, v);
    }
    bmsg::backend_key_data(client.wbuf(), 0, 0);
    bmsg::ready_for_query(client.wbuf(), TxStatus::Idle);
    info.set_state(Shown::Relay(Phase::Idle));
    // An extended-protocol batch is answered with one error at its Sync.
    let mut extended_error = false;
    loop {
        if client.flush().await.is_err() {
            return;
        }
        let read = tokio::select! {
            r = client.read_message() => r,
            _ = shared.shutting_down() => {
                bmsg::error_response(client.wbuf(), Severity::Fatal, "57P01", "terminating connection because switchyard is shutting down");
                client.close().await;
                return;
            }
        };
        let frame = match read {
            Ok(Some(f)) => f,
            Ok(None) | Err(crate::net::ReadError::Io(_)) | Err(crate::net::ReadError::Truncated) => return,
            Err(crate::net::ReadError::Wire(e)) => {
                bmsg::error_response(
                    client.wbuf(),
                    Severity::Fatal,
                    "08P01",
                    &format!("invalid message: {e}"),
                );
                client.close().await;
                return;
            }
        };
        let msg = FrontendMessage::of(&frame);
        match msg.tag() {
            ftag::TERMINATE => return,
            ftag::QUERY => {
                let Ok(sql) = msg.query() else {
                    bmsg::error_response(client.wbuf(), Severity::Fatal, "08P01", "malformed Query message");
                    client.close().await;
                    return;
                };
                info.set_state(Shown::Relay(Phase::Active));
                info.count_query();
                run_query(shared, sql, client.wbuf()).await;
                bmsg::ready_for_query(client.wbuf(), TxStatus::Idle);
                info.set_state(Shown::Relay(Phase::Idle));
            }
            ftag::SYNC => {
                if std::mem::take(&mut extended_error) {
                    bmsg::error_response(
                        client.wbuf(),
                        Severity::Error,
                        "0A000",
                        "the admin console speaks only the simple query protocol (use psql)",
                    );
                }
                bmsg::ready_for_query(client.wbuf(), TxStatus::Idle);
            }
            ftag::FLUSH => {}
            _ => extended_error = true,
        }
    }
}

/// Runs each `;`-separated command of a simple query; stops at the first error.
async fn run_query(shared: &Arc<Shared>, sql: &str, out: &mut bytes::BytesMut) {
    let statements: Vec<&str> = sql.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
    if statements.is_empty() {
        bmsg::empty_query_response(out);
        return;
    }
    for text in statements {
        let result = match AdminCommand::parse(text) {
            Ok(cmd) => {
                tracing::info!(command = ?cmd, "admin command");
                cmd.execute(shared).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(reply) => reply.encode(out),
            Err(e) => {
                bmsg::error_response(out, Severity::Error, e.code(), &e.to_string());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(AdminCommand::parse("show  version"), Ok(AdminCommand::ShowVersion));
        assert_eq!(AdminCommand::parse("SHOW SESSIONS"), Ok(AdminCommand::ShowSessions));
        assert_eq!(AdminCommand::parse("pause"), Ok(AdminCommand::Pause { timeout: None }));
        assert_eq!(
            AdminCommand::parse("PAUSE 500ms"),
            Ok(AdminCommand::Pause {
                timeout: Some(Duration::from_millis(500))
            })
        );
        assert_eq!(
            AdminCommand::parse("PAUSE '2'"),
            Ok(AdminCommand::Pause {
                timeout: Some(Duration::from_secs(2))
            })
        );
        assert!(matches!(AdminCommand::parse("PAUSE soon"), Err(AdminError::Syntax(_))));
        assert!(matches!(AdminCommand::parse("PAUSE 0"), Err(AdminError::Syntax(_))));
        assert!(matches!(
            AdminCommand::parse("SHOW TABLES"),
            Err(AdminError::Unknown(_))
        ));
        assert!(matches!(
            AdminCommand::parse("DROP TABLE x"),
            Err(AdminError::Unknown(_))
        ));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("5 years"), None);
    }
}
