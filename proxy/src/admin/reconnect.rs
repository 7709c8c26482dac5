//! `RECONNECT [TO source|target] [TIMEOUT <duration>] [FORCE]`: move every
//! client session to a fresh backend at its next transaction boundary,
//! without the clients reconnecting (e.g. after the database restarted or
//! failed over). Replies with one row saying what moved.

use super::{parse_duration, AdminCommand, AdminError, Reply, ResultSet};
use crate::server::Shared;
use crate::session::route::{self, Destination, MoveRequest};
use std::time::Duration;

/// How long RECONNECT waits for sessions by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Parses the words after `RECONNECT`.
pub(super) fn parse(words: &[&str]) -> Result<AdminCommand, AdminError> {
    let usage =
        || AdminError::Syntax("usage: RECONNECT [TO source|target] [TIMEOUT <duration, e.g. 30s>] [FORCE]".to_owned());
    let mut to = None;
    let mut timeout = DEFAULT_TIMEOUT;
    let mut force = false;
    let mut i = 0;
    while i < words.len() {
        match words[i].to_ascii_uppercase().as_str() {
            "TO" => {
                to = match words.get(i + 1).map(|w| w.to_ascii_lowercase()).as_deref() {
                    Some("source") => Some(Destination::Source),
                    Some("target") => Some(Destination::Target),
                    _ => return Err(usage()),
                };
                i += 2;
            }
            "TIMEOUT" => {
                let text = words.get(i + 1).ok_or_else(usage)?;
                timeout = parse_duration(text)
                    .filter(|d| !d.is_zero() && *d <= super::MAX_PAUSE)
                    .ok_or_else(|| {
                        AdminError::InvalidParameter(format!(
                            "RECONNECT takes a timeout above 0 and at most 1 hour, such as 30s or 500ms; not \"{text}\""
                        ))
                    })?;
                i += 2;
            }
            "FORCE" => {
                force = true;
                i += 1;
            }
            _ => return Err(usage()),
        }
    }
    Ok(AdminCommand::Reconnect { to, timeout, force })
}

/// Runs the move and renders its report.
pub(super) async fn execute(
    shared: &std::sync::Arc<Shared>,
    to: Option<Destination>,
    timeout: Duration,
    force: bool,
) -> Result<Reply, AdminError> {
    // By default, fresh backends of the database serving now.
    let to = to.unwrap_or_else(|| shared.router.current().for_login().1);
    if to != shared.router.current().destination && !force {
        return Err(AdminError::State(format!(
            "RECONNECT TO {} moves the applications to another database without syncing it: writes made since \
             it was last caught up would be missing there. CUTOVER does this safely; add FORCE (switchyard reconnect --force) if this is really meant",
            to.name()
        )));
    }
    let report = route::reconnect(
        shared,
        MoveRequest {
            to,
            timeout,
            pinned: None,
            open_at_once: None,
        },
    )
    .await
    .map_err(|e| AdminError::State(e.to_string()))?;
    tracing::info!(
        epoch = report.epoch,
        to = to.name(),
        sessions = report.sessions,
        moved = report.moved,
        waiting = report.waiting,
        pinned = report.pinned,
        closed = report.closed,
        left = report.left,
        failed = report.failed,
        open_ms = report.open_ms,
        move_ms = report.move_ms,
        "reconnect"
    );
    let mut r = ResultSet::new(&[
        "epoch", "to", "sessions", "moved", "waiting", "pinned", "closed", "left", "failed", "open_ms", "move_ms",
    ]);
    r.row([
        report.epoch.to_string(),
        to.name().to_owned(),
        report.sessions.to_string(),
        report.moved.to_string(),
        report.waiting.to_string(),
        report.pinned.to_string(),
        report.closed.to_string(),
        report.left.to_string(),
        report.failed.to_string(),
        format!("{:.2}", report.open_ms),
        format!("{:.2}", report.move_ms),
    ]);
    Ok(Reply::Rows(r))
}
