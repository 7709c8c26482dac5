//! `CATCHUP START`, `CATCHUP STOP` and `SHOW LAG`.

use super::reply::{ConsoleReply, LagReply, LagWindow};
use super::{AdminError, Reply};
use crate::server::Shared;
use std::sync::Arc;

pub(super) async fn start(shared: &Arc<Shared>) -> Result<Reply, AdminError> {
    // Source rows copied onto the target now would overwrite the writes
    // the applications make there.
    if shared.router.on_target() {
        return Err(AdminError::State(format!(
            "traffic is on [target] since a cutover: catch-up from [source] would overwrite its writes; {}",
            crate::session::route::NEXT_MIGRATION
        )));
    }
    shared
        .catchup
        .start(&shared.config, Some(shared.capture.bell()))
        .await
        .map_err(|e| AdminError::State(e.to_string()))?;
    Ok(Reply::Done("CATCHUP START".into()))
}

pub(super) async fn stop(shared: &Arc<Shared>) -> Result<Reply, AdminError> {
    shared
        .catchup
        .stop()
        .await
        .map_err(|e| AdminError::State(e.to_string()))?;
    Ok(Reply::Done("CATCHUP STOP".into()))
}

/// One `key | value` row per fact. The log end is the capture's last
/// position when capture is on, else the last position read.
pub(super) fn show(shared: &Arc<Shared>) -> Reply {
    let view = shared.catchup.view();
    let r = &view.report;
    let log_end = shared
        .capture
        .current()
        .and_then(|a| a.log().stats().last_lsn)
        .map_or(r.read_lsn, |l| l.0.max(r.read_lsn));
    let reply = LagReply {
        state: view.state,
        error: view.error.clone(),
        restarts: view.restarts,
        started_at: view.started.map(super::show::rfc3339),
        log_end_lsn: log_end,
        read_lsn: r.read_lsn,
        confirmed_lsn: r.confirmed_lsn,
        positions_behind: log_end.saturating_sub(r.confirmed_lsn),
        commits_pending: r.commits_pending,
        keys_pending: r.keys_pending,
        lag_seconds: r.lag_seconds,
        rows_applied: r.rows_applied,
        batches: r.batches,
        since_start: LagWindow {
            commits_applied: r.commits_applied,
            lag_p50_ms: r.lag_p50_ms,
            lag_p99_ms: r.lag_p99_ms,
            lag_max_ms: r.lag_max_ms,
        },
        last_60s: LagWindow {
            commits_applied: r.recent_commits_applied,
            lag_p50_ms: r.recent_lag_p50_ms,
            lag_p99_ms: r.recent_lag_p99_ms,
            lag_max_ms: r.recent_lag_max_ms,
        },
    };
    Reply::Rows(reply.to_rows())
}
