//! The admin console: a virtual database (`switchyard` by default) on the
//! proxy's own port, spoken to with psql's simple queries. Commands parse
//! once into [`AdminCommand`]; each lives in its own file with its execute.

mod capture;
mod catchup;
mod cutover;
mod pause;
mod reconnect;
pub mod reply;
mod result;
mod resume;
mod show;
mod text;
mod verify;

pub use cutover::CutoverArgs as CutoverCommandArgs;
pub use reconnect::DEFAULT_TIMEOUT as RECONNECT_TIMEOUT;
pub use verify::VerifyArgs;

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
    /// `PAUSE [timeout] [DETACHED]`: hold every session at its next
    /// transaction boundary; reopens on RESUME, after the timeout, or (unless
    /// detached) when the console session that paused leaves.
    Pause {
        /// Drain and hold limit; the configured default when absent.
        timeout: Option<Duration>,
        /// Whether the pause ends with the session that asked for it.
        hold: PauseHold,
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
    /// `CAPTURE ACK`: acknowledge the unsafe statements let through.
    CaptureAck,
    /// `CUTOVER [DRY RUN] [options]`.
    Cutover(cutover::CutoverArgs),
    /// `ABORT`: call the running cutover off.
    Abort,
    /// `SHOW CUTOVER`.
    ShowCutover,
    /// `VERIFY [table, ...] [ROWS_PER_RANGE n]`: whole tables compared online.
    Verify(verify::VerifyArgs),
    /// `RECONNECT [TO source|target] [TIMEOUT d] [FORCE]`: move every
    /// client session to a fresh backend at its next boundary.
    Reconnect {
        /// Where to; the database serving now when not named.
        to: Option<crate::session::route::Destination>,
        /// How long to wait for the sessions.
        timeout: Duration,
        /// Moving to another database than the current one was confirmed.
        force: bool,
    },
}

/// Whether a PAUSE is tied to the console session that asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseHold {
    /// The gate reopens when that session leaves (the safe default: a DBA
    /// whose connection drops does not leave the applications frozen).
    Attached,
    /// `PAUSE ... DETACHED`: it outlives the session, bounded by its timeout.
    Detached,
}

/// The longest a PAUSE may hold the gate: past this a forgotten pause is an
/// outage, not a migration step.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

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
    /// An argument out of range or of the wrong kind (e.g. a PAUSE timeout
    /// past an hour).
    #[error("{0}")]
    InvalidParameter(String),
    /// Something else runs that this command would interfere with (a
    /// second CUTOVER).
    #[error("{0}")]
    InUse(String),
    /// A cutover was called off: at preflight (nothing was frozen) or after
    /// the freeze (the gate reopened on the source).
    #[error("{message}")]
    CutoverAborted {
        /// Whether it stopped at preflight.
        at_preflight: bool,
        /// What happened.
        message: String,
    },
}

impl AdminError {
    /// The SQLSTATE sent with the error.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Unknown(_) | AdminError::Syntax(_) => "42601",
            AdminError::State(_) => "55000",
            AdminError::InvalidParameter(_) => "22023",
            AdminError::InUse(_) => "55006",
            // The CLI's exit code tells the two apart by these.
            AdminError::CutoverAborted { at_preflight: true, .. } => "55000",
            AdminError::CutoverAborted {
                at_preflight: false, ..
            } => "57014",
        }
    }
}

/// Parses a duration: `500ms`, `5s`, `2min`, `1h`, or a bare number of
/// seconds (optionally quoted). `None` for anything else, including values
/// too large for a `Duration` (never a panic).
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
        "h" | "hour" | "hours" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Parses PAUSE's arguments: `[timeout] [DETACHED]`, the timeout above 0
/// and at most [`MAX_PAUSE`].
fn parse_pause(words: &[&str]) -> Result<AdminCommand, AdminError> {
    let (hold, words) = match words.split_last() {
        Some((last, rest)) if last.eq_ignore_ascii_case("DETACHED") => (PauseHold::Detached, rest),
        _ => (PauseHold::Attached, words),
    };
    if words.is_empty() {
        return Ok(AdminCommand::Pause { timeout: None, hold });
    }
    let text = words.join(" ");
    let timeout = parse_duration(&text)
        .filter(|d| !d.is_zero() && *d <= MAX_PAUSE)
        .ok_or_else(|| {
            AdminError::InvalidParameter(format!(
                "PAUSE takes a timeout above 0 and at most 1 hour, such as 10s, 500ms or 2min, optionally followed by DETACHED; not \"{text}\""
            ))
        })?;
    Ok(AdminCommand::Pause {
        timeout: Some(timeout),
        hold,
    })
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
            ["PAUSE", ..] => parse_pause(&words[1..]),
            ["RESUME"] => Ok(AdminCommand::Resume),
            ["CAPTURE", "START"] => Ok(AdminCommand::CaptureStart { database: None }),
            ["CAPTURE", "START", ..] => {
                // The rest of the text is one name: a quoted one may hold spaces.
                let at = words[2].as_ptr() as usize - text.as_ptr() as usize;
                let name = text[at..].trim_end();
                if !name.starts_with('"') && name.contains(char::is_whitespace) {
                    return Err(AdminError::Syntax(
                        "usage: CAPTURE START [database] (double-quote a name with spaces)".to_owned(),
                    ));
                }
                Ok(AdminCommand::CaptureStart {
                    database: Some(unquote_ident(name)),
                })
            }
            ["CAPTURE", "STOP"] => Ok(AdminCommand::CaptureStop),
            ["SHOW", "CAPTURE"] => Ok(AdminCommand::ShowCapture),
            ["CATCHUP", "START"] => Ok(AdminCommand::CatchupStart),
            ["CATCHUP", "STOP"] => Ok(AdminCommand::CatchupStop),
            ["SHOW", "LAG"] => Ok(AdminCommand::ShowLag),
            ["RECONNECT", ..] => reconnect::parse(&words[1..]),
            ["CAPTURE", "ACK"] => Ok(AdminCommand::CaptureAck),
            ["CUTOVER", ..] => cutover::parse(&words[1..]),
            ["ABORT"] => Ok(AdminCommand::Abort),
            ["SHOW", "CUTOVER"] => Ok(AdminCommand::ShowCutover),
            ["VERIFY", ..] => verify::parse(&words[1..]),
            ["SHOW", ..] => Err(AdminError::Unknown(text.to_owned())),
            _ => Err(AdminError::Unknown(text.to_owned())),
        }
    }

    /// Runs the command for the console session `session`.
    pub async fn execute(&self, shared: &Arc<Shared>, session: u64) -> Result<Reply, AdminError> {
        match self {
            AdminCommand::ShowVersion => Ok(show::version()),
            AdminCommand::ShowStatus => Ok(show::status(shared)),
            AdminCommand::ShowSessions => Ok(show::sessions(shared)),
            AdminCommand::ShowStats => Ok(show::stats(shared)),
            AdminCommand::ShowConfig => Ok(show::config(shared)),
            AdminCommand::Help => Ok(show::help()),
            AdminCommand::Pause { timeout, hold } => pause::execute(shared, *timeout, *hold, session).await,
            AdminCommand::Resume => resume::execute(shared),
            AdminCommand::CaptureStart { database } => capture::start(shared, database.as_deref()).await,
            AdminCommand::CaptureStop => capture::stop(shared).await,
            AdminCommand::ShowCapture => capture::show(shared).await,
            AdminCommand::CatchupStart => catchup::start(shared).await,
            AdminCommand::CatchupStop => catchup::stop(shared).await,
            AdminCommand::ShowLag => Ok(catchup::show(shared)),
            AdminCommand::Reconnect { to, timeout, force } => reconnect::execute(shared, *to, *timeout, *force).await,
            AdminCommand::CaptureAck => capture::ack(shared),
            // Without a client to stream to (see `run_watching`), the steps go unseen.
            AdminCommand::Cutover(args) => cutover::execute(shared, args, None).await,
            AdminCommand::Abort => cutover::abort(shared),
            AdminCommand::ShowCutover => Ok(cutover::show(shared)),
            AdminCommand::Verify(args) => verify::execute(shared, args, None).await,
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
    // However this session ends, a PAUSE it holds (not detached) ends too.
    let _pause = pause::EndWithSession::new(shared, info.id);
    // An extended-protocol batch is answered with one error at its Sync.
    let mut extended_error = false;
    loop {
        if client.flush().await.is_err() {
            return;
        }
        let read = tokio::select! {
            r = client.read_message_within(MAX_CONSOLE_MESSAGE) => r,
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
                let sql = sql.to_owned();
                if !run_watching(shared, client, &sql, info.id).await {
                    return;
                }
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

/// The largest message the console accepts: commands are short, and a
/// console session must not hold `limits.max_message_bytes` of input.
const MAX_CONSOLE_MESSAGE: usize = 64 * 1024;

/// How much pipelined console input is read while a command runs; past it,
/// the client is simply not watched until the command ends.
const WATCH_BUFFER: usize = 64 * 1024;

/// Runs a query's commands; one with a PAUSE runs while watching the
/// client: if it leaves during the drain, the PAUSE is dropped, which
/// reopens the gate. (Capture and catch-up commands run to their end even
/// if their client half-closes after sending: they are not watched.)
/// Returns whether the client is still there.
async fn run_watching(shared: &Arc<Shared>, client: &mut Conn, sql: &str, session: u64) -> bool {
    let mut out = bytes::BytesMut::new();
    let commands: Vec<_> = sql.split(';').map(|t| AdminCommand::parse(t.trim())).collect();
    let non_empty: Vec<&str> = sql.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
    if let [text] = non_empty.as_slice() {
        // Long commands: their progress reaches the client as NOTICEs.
        let streamed = match AdminCommand::parse(text) {
            Ok(AdminCommand::Cutover(args)) => Some(cutover::execute(shared, &args, Some(client)).await),
            Ok(AdminCommand::Verify(args)) => Some(verify::execute(shared, &args, Some(client)).await),
            _ => None,
        };
        if let Some(result) = streamed {
            tracing::info!(session, command = %text, "admin command");
            match result {
                Ok(reply) => reply.encode(&mut out),
                Err(e) => {
                    log_failure(session, text, &e);
                    bmsg::error_response(&mut out, Severity::Error, e.code(), &e.to_string());
                }
            }
            client.queue(&out);
            return true;
        }
    }
    let pausing = commands.iter().any(|c| matches!(c, Ok(AdminCommand::Pause { .. })))
        && !commands.iter().any(|c| {
            matches!(
                c,
                Ok(AdminCommand::CaptureStart { .. }
                    | AdminCommand::CaptureStop
                    | AdminCommand::CatchupStart
                    | AdminCommand::CatchupStop)
            )
        });
    if !pausing {
        run_query(shared, sql, &mut out, session).await;
    } else {
        let run = run_query(shared, sql, &mut out, session);
        tokio::pin!(run);
        loop {
            tokio::select! {
                () = &mut run => break,
                // Pipelined input stays buffered for the next turn of the loop.
                n = client.fill(), if client.buffered() < WATCH_BUFFER => if !matches!(n, Ok(n) if n > 0) {
                    return false;
                },
            }
        }
    }
    client.queue(&out);
    true
}

/// Logs a console command that failed: its session, its text (the first
/// 200 characters), the SQLSTATE and the error.
fn log_failure(session: u64, text: &str, e: &AdminError) {
    let shown: String = text.chars().take(200).collect();
    tracing::warn!(session, command = %shown.escape_debug(), sqlstate = e.code(), error = %e, "admin command failed");
}

/// Runs each `;`-separated command of a simple query; stops at the first error.
async fn run_query(shared: &Arc<Shared>, sql: &str, out: &mut bytes::BytesMut, session: u64) {
    let statements: Vec<&str> = sql.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
    if statements.is_empty() {
        bmsg::empty_query_response(out);
        return;
    }
    for text in statements {
        let result = match AdminCommand::parse(text) {
            Ok(cmd) => {
                tracing::info!(session, command = %cmd, "admin command");
                cmd.execute(shared, session).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(reply) => reply.encode(out),
            Err(e) => {
                log_failure(session, text, &e);
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
        assert_eq!(
            AdminCommand::parse("pause"),
            Ok(AdminCommand::Pause {
                timeout: None,
                hold: PauseHold::Attached
            })
        );
        assert_eq!(
            AdminCommand::parse("PAUSE 500ms"),
            Ok(AdminCommand::Pause {
                timeout: Some(Duration::from_millis(500)),
                hold: PauseHold::Attached
            })
        );
        assert_eq!(
            AdminCommand::parse("PAUSE '2'"),
            Ok(AdminCommand::Pause {
                timeout: Some(Duration::from_secs(2)),
                hold: PauseHold::Attached
            })
        );
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
    fn pause_timeouts_beyond_an_hour_or_not_durations_are_22023() {
        for bad in [
            "PAUSE 99999999999999999999",
            "PAUSE 18446744073709551615",
            "PAUSE 99999999999",
            "PAUSE 3601s",
            "PAUSE 61min",
            "PAUSE -1",
            "PAUSE nan",
            "PAUSE inf",
            "PAUSE 1e400",
            "PAUSE 5 years",
            "PAUSE soon",
            "PAUSE 0",
            "PAUSE 10s LATER",
        ] {
            let e = AdminCommand::parse(bad).expect_err(bad);
            assert_eq!(e.code(), "22023", "{bad}: {e}");
        }
        assert_eq!(
            AdminCommand::parse("pause 1h detached"),
            Ok(AdminCommand::Pause {
                timeout: Some(Duration::from_secs(3600)),
                hold: PauseHold::Detached,
            })
        );
        assert_eq!(
            AdminCommand::parse("PAUSE DETACHED"),
            Ok(AdminCommand::Pause {
                timeout: None,
                hold: PauseHold::Detached,
            })
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("5 years"), None);
        assert_eq!(parse_duration("99999999999999999999"), None);
        assert_eq!(parse_duration("1e400"), None);
    }
}
