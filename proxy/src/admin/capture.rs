//! `CAPTURE START`, `CAPTURE STOP`, `CAPTURE ACK` and `SHOW CAPTURE`.

use super::{AdminError, Reply, ResultSet};
use crate::capture::control::CaptureState;
use crate::capture::retention::LogView;
use crate::config::Retention;
use crate::server::Shared;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub(super) async fn start(shared: &Arc<Shared>, database: Option<&str>) -> Result<Reply, AdminError> {
    shared
        .capture
        .start(&shared.sessions, database)
        .await
        .map_err(|e| AdminError::State(e.to_string()))?;
    Ok(Reply::Done("CAPTURE START".into()))
}

pub(super) async fn stop(shared: &Arc<Shared>) -> Result<Reply, AdminError> {
    shared
        .capture
        .stop()
        .await
        .map_err(|e| AdminError::State(e.to_string()))?;
    Ok(Reply::Done("CAPTURE STOP".into()))
}

/// `CAPTURE ACK`: the DBA checked the target for the writes of the unsafe
/// statements let through uncaptured; a cutover may go ahead.
pub(super) fn ack(shared: &Arc<Shared>) -> Result<Reply, AdminError> {
    let Some(active) = shared.capture.current() else {
        return Err(AdminError::State("capture is not on".to_owned()));
    };
    let n = active.acknowledge_unsafe();
    tracing::info!(statements = n, "unsafe statements acknowledged");
    let mut r = ResultSet::new(&["acknowledged"]);
    r.row([n.to_string()]);
    Ok(Reply::Rows(r))
}

/// One `key | value` row per fact, then one row per unsafe kind seen and per
/// session holding the barrier back, and the source sessions that bypass the
/// proxy.
pub(super) async fn show(shared: &Arc<Shared>) -> Result<Reply, AdminError> {
    let mut r = ResultSet::new(&["key", "value"]);
    let config = shared.capture.config();
    let place = shared.capture.place();
    let active = match shared.capture.state() {
        CaptureState::On(a) => a,
        CaptureState::Off => {
            r.row(["state", "off"]);
            r.row(["server", place.server.name()]);
            r.row(["log_dir".to_string(), place.dir.display().to_string()]);
            // Nothing is deleted while capture is off; the log is still measured.
            if let Ok(space) = switchyard_replay::log::log_space(&place.dir) {
                r.row(["log_size_bytes".to_string(), space.bytes.to_string()]);
                r.row(["log_segments".to_string(), space.segments.to_string()]);
                r.row([
                    "log_oldest_lsn".to_string(),
                    space.oldest.map(|l| l.to_string()).unwrap_or_default(),
                ]);
            }
            r.row(["read_only_functions".to_string(), config.read_only_functions.join(", ")]);
            return Ok(Reply::Rows(r));
        }
        CaptureState::ResumePending(p) => {
            r.row(["state".to_string(), format!("resume pending: {}", p.error)]);
            r.row(["failed_at".to_string(), super::show::rfc3339(p.since)]);
            r.row(["database".to_string(), p.record.database.clone()]);
            r.row([
                "action".to_string(),
                "sessions of this database are refused: CAPTURE START resumes the capture, CAPTURE STOP gives it up"
                    .to_string(),
            ]);
            r.row(["server", place.server.name()]);
            r.row(["log_dir".to_string(), place.dir.display().to_string()]);
            return Ok(Reply::Rows(r));
        }
    };
    let log = active.log();
    let stats = log.stats();
    let state = match (active.failure(), active.barrier()) {
        (Some(f), _) => format!("failed: {}", f.error),
        (None, Some(_)) => "on".to_string(),
        (None, None) => "waiting for barrier".to_string(),
    };
    r.row(["state".to_string(), state]);
    r.row(["server", active.server.name()]);
    if let Some(f) = active.failure() {
        r.row(["failed_at".to_string(), super::show::rfc3339(f.since)]);
        r.row([
            "action".to_string(),
            "commits that wrote are refused (58030) while the log cannot be written; it is probed every second and capture goes on by itself once it can"
                .to_string(),
        ]);
    }
    r.row(["database".to_string(), active.database.clone()]);
    r.row(["started_at".to_string(), super::show::rfc3339(active.started)]);
    r.row(["resumes".to_string(), active.resumes().to_string()]);
    r.row([
        "barrier_at".to_string(),
        active.barrier().map(super::show::rfc3339).unwrap_or_default(),
    ]);
    let holders = shared.capture.holders(&shared.sessions);
    r.row(["sessions_holding_barrier".to_string(), holders.len().to_string()]);
    for h in &holders {
        r.row([
            format!("holding_barrier.session.{}", h.session),
            format!("user {} backend pid {}", h.user, h.backend_pid),
        ]);
    }
    let others: Vec<_> = shared
        .sessions
        .snapshot()
        .into_iter()
        .filter(|s| s.backend_database().is_some_and(|d| d != active.database))
        .collect();
    r.row(["other_database_sessions".to_string(), others.len().to_string()]);
    for s in &others {
        r.row([
            format!("other_database.session.{}", s.id),
            format!(
                "user {} database {} (relayed, not captured, not moved at cutover)",
                s.user,
                s.backend_database().unwrap_or_default()
            ),
        ]);
    }
    r.row(["log_dir".to_string(), active.config.log_dir.display().to_string()]);
    r.row([
        "durability".to_string(),
        format!("{:?}", config.durability).to_lowercase(),
    ]);
    r.row(["policy".to_string(), config.policy.name().to_string()]);
    r.row(["read_only_functions".to_string(), config.read_only_functions.join(", ")]);
    if !active.read_only_unknown.is_empty() {
        // Listed but not in the catalog: a typo leaves the real function refused.
        r.row([
            "read_only_functions_unknown".to_string(),
            active.read_only_unknown.join(", "),
        ]);
    }
    r.row(["log_records".to_string(), stats.records.to_string()]);
    r.row(["log_bytes".to_string(), stats.bytes.to_string()]);
    r.row([
        "last_lsn".to_string(),
        stats.last_lsn.map(|l| l.to_string()).unwrap_or_default(),
    ]);
    log_dir_rows(&mut r, config, &active.log_watch().view());
    r.row([
        "transactions_captured".to_string(),
        active.commits.load(Relaxed).to_string(),
    ]);
    r.row(["keys_captured".to_string(), active.keys.load(Relaxed).to_string()]);
    r.row(["late_logged".to_string(), active.late.load(Relaxed).to_string()]);
    catalog_rows(&mut r, &active.catalog);
    let unsafe_seen = active.unsafe_seen();
    let total: u64 = unsafe_seen.values().map(|u| u.count).sum();
    r.row(["unsafe_statements".to_string(), total.to_string()]);
    for (kind, u) in unsafe_seen {
        let policy = config.policy_for(kind).name();
        r.row([
            format!("unsafe.{kind}"),
            format!(
                "{} seen, {} rejected ({policy}), {} unacknowledged; last: {}",
                u.count,
                u.rejected,
                u.unacknowledged(),
                u.last
            ),
        ]);
    }
    match shared.capture.bypassing(&shared.sessions).await {
        Ok(rows) => {
            r.row(["bypassing_sessions".to_string(), rows.len().to_string()]);
            for b in rows {
                r.row([format!("bypass.pid.{}", b.0), b.1]);
            }
        }
        Err(e) => r.row(["bypassing_sessions".to_string(), format!("unknown: {e}")]),
    }
    Ok(Reply::Rows(r))
}

/// The log on disk, retention and the disk's free space, as of the last
/// retention pass.
fn log_dir_rows(r: &mut ResultSet, config: &crate::config::CaptureConfig, view: &LogView) {
    r.row(["log_size_bytes".to_string(), view.space.bytes.to_string()]);
    r.row(["log_segments".to_string(), view.space.segments.to_string()]);
    r.row([
        "log_oldest_lsn".to_string(),
        view.space.oldest.map(|l| l.to_string()).unwrap_or_default(),
    ]);
    let retention = match config.retention {
        Retention::Confirmed => format!(
            "confirmed: segments every hold is past are deleted, keeping the newest {} records",
            config.retain_records
        ),
        Retention::Keep => "keep: the whole log is kept".to_owned(),
    };
    r.row(["retention".to_string(), retention]);
    let first_kept = match (config.retention, view.first_kept, view.holds.is_empty()) {
        (Retention::Keep, _, _) => "everything (retention keep)".to_owned(),
        (_, _, true) => "everything (no replayer holds the log yet)".to_owned(),
        (_, Some(l), false) => l.to_string(),
        (_, None, false) => String::new(),
    };
    r.row(["log_first_kept".to_string(), first_kept]);
    r.row(["log_deleted_segments".to_string(), view.deleted_segments.to_string()]);
    r.row(["log_deleted_bytes".to_string(), view.deleted_bytes.to_string()]);
    r.row(["log_holds".to_string(), view.holds.len().to_string()]);
    for h in &view.holds {
        let what = match &h.unreadable {
            Some(e) => format!("unreadable ({e}): holds the whole log until fixed or removed"),
            None => format!(
                "confirmed {} ({}), updated {}",
                h.confirmed,
                h.description,
                super::show::rfc3339(
                    std::time::UNIX_EPOCH + std::time::Duration::from_micros(h.updated_micros.max(0) as u64)
                )
            ),
        };
        r.row([format!("hold.{}", h.name), what]);
    }
    if let Some(e) = &view.error {
        r.row(["retention_error".to_string(), e.clone()]);
    }
    match view.disk {
        Some(d) => {
            r.row(["disk_free_bytes".to_string(), d.free_bytes.to_string()]);
            r.row(["disk_total_bytes".to_string(), d.total_bytes.to_string()]);
        }
        None => r.row(["disk_free_bytes".to_string(), String::new()]),
    }
    r.row([
        "disk_warn_free_bytes".to_string(),
        config.disk_warn_free_bytes.to_string(),
    ]);
    r.row([
        "disk_warning".to_string(),
        view.disk_warning(config.disk_warn_free_bytes).unwrap_or_default(),
    ]);
}

/// The source catalog's health and counters.
fn catalog_rows(r: &mut ResultSet, catalog: &switchyard_replay::catalog::CatalogCache) {
    use switchyard_replay::catalog::CatalogHealth;
    let health = match catalog.health() {
        CatalogHealth::Ok { loaded_at } => {
            let age = std::time::SystemTime::now()
                .duration_since(loaded_at)
                .unwrap_or_default();
            format!("ok, loaded {} s ago", age.as_secs())
        }
        CatalogHealth::Failing { since, error } => {
            format!("refresh failing since {}: {error}", super::show::rfc3339(since))
        }
        CatalogHealth::Reconnecting { since, error } => {
            format!("reconnecting since {}: {error}", super::show::rfc3339(since))
        }
    };
    let stats = catalog.stats();
    r.row(["catalog".to_string(), health]);
    r.row(["catalog_refreshes".to_string(), stats.refreshes.to_string()]);
    r.row(["catalog_failures".to_string(), stats.failures.to_string()]);
    r.row(["catalog_reconnects".to_string(), stats.reconnects.to_string()]);
    r.row(["catalog_lookups".to_string(), stats.lookups.to_string()]);
}
