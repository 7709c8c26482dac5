//! `CATCHUP START`, `CATCHUP STOP` and `SHOW LAG`.

use super::{AdminError, Reply, ResultSet};
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
    let mut t = ResultSet::new(&["key", "value"]);
    t.row(["state", view.state]);
    if let Some(e) = &view.error {
        t.row(["error", e.as_str()]);
    }
    if view.restarts > 0 {
        t.row(["restarts".to_string(), view.restarts.to_string()]);
    }
    t.row([
        "started_at".to_string(),
        view.started.map(super::show::rfc3339).unwrap_or_default(),
    ]);
    for (k, v) in [
        ("log_end_lsn", log_end.to_string()),
        ("read_lsn", r.read_lsn.to_string()),
        ("confirmed_lsn", r.confirmed_lsn.to_string()),
        ("positions_behind", log_end.saturating_sub(r.confirmed_lsn).to_string()),
        ("commits_pending", r.commits_pending.to_string()),
        ("keys_pending", r.keys_pending.to_string()),
        ("lag_seconds", format!("{:.3}", r.lag_seconds)),
        ("rows_applied", r.rows_applied.to_string()),
        ("batches", r.batches.to_string()),
        ("since_start.commits_applied", r.commits_applied.to_string()),
        ("since_start.lag_p50_ms", format!("{:.1}", r.lag_p50_ms)),
        ("since_start.lag_p99_ms", format!("{:.1}", r.lag_p99_ms)),
        ("since_start.lag_max_ms", format!("{:.1}", r.lag_max_ms)),
        ("last_60s.commits_applied", r.recent_commits_applied.to_string()),
        ("last_60s.lag_p50_ms", format!("{:.1}", r.recent_lag_p50_ms)),
        ("last_60s.lag_p99_ms", format!("{:.1}", r.recent_lag_p99_ms)),
        ("last_60s.lag_max_ms", format!("{:.1}", r.recent_lag_max_ms)),
    ] {
        t.row([k.to_string(), v]);
    }
    Reply::Rows(t)
}
