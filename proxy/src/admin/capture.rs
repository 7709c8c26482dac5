//! `CAPTURE START`, `CAPTURE STOP`, `CAPTURE ACK` and `SHOW CAPTURE`.

use super::reply::{
    Bypassing, CaptureOff, CaptureOn, CapturePhase, CaptureReply, CatalogFacts, ConsoleReply, DiskSpace, Entry,
    LogDirFacts, LogSpace, ResumePending,
};
use super::show::rfc3339;
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
    let config = shared.capture.config();
    let place = shared.capture.place();
    let active = match shared.capture.state() {
        CaptureState::On(a) => a,
        CaptureState::Off => {
            // Nothing is deleted while capture is off; the log is still measured.
            let space = switchyard_replay::log::log_space(&place.dir)
                .ok()
                .map(|s| log_space(&s));
            let off = CaptureReply::Off(CaptureOff {
                server: place.server,
                log_dir: place.dir.display().to_string(),
                space,
                read_only_functions: config.read_only_functions.join(", "),
            });
            return Ok(Reply::Rows(off.to_rows()));
        }
        CaptureState::ResumePending(p) => {
            let pending = CaptureReply::ResumePending(ResumePending {
                error: p.error.to_string(),
                failed_at: rfc3339(p.since),
                database: p.record.database.clone(),
                server: place.server,
                log_dir: place.dir.display().to_string(),
            });
            return Ok(Reply::Rows(pending.to_rows()));
        }
    };
    let stats = active.log().stats();
    let phase = match (active.failure(), active.barrier()) {
        (Some(f), _) => CapturePhase::Failed {
            error: f.error.to_string(),
            failed_at: rfc3339(f.since),
        },
        (None, Some(_)) => CapturePhase::On,
        (None, None) => CapturePhase::WaitingForBarrier,
    };
    let holders = shared.capture.holders(&shared.sessions);
    let others: Vec<_> = shared
        .sessions
        .snapshot()
        .into_iter()
        .filter(|s| s.backend_database().is_some_and(|d| d != active.database))
        .collect();
    let unsafe_seen = active.unsafe_seen();
    let bypassing = match shared.capture.bypassing(&shared.sessions).await {
        Ok(rows) => Bypassing::Found {
            count: rows.len() as u64,
            sessions: rows.into_iter().map(|(pid, what)| Entry::new(pid, what)).collect(),
        },
        Err(e) => Bypassing::Unknown(e),
    };
    let on = CaptureOn {
        phase,
        server: active.server,
        database: active.database.clone(),
        started_at: rfc3339(active.started),
        resumes: active.resumes(),
        barrier_at: active.barrier().map(rfc3339),
        sessions_holding_barrier: holders.len() as u64,
        holding_barrier: holders
            .iter()
            .map(|h| Entry::new(h.session, format!("user {} backend pid {}", h.user, h.backend_pid)))
            .collect(),
        other_database_sessions: others.len() as u64,
        other_database: others
            .iter()
            .map(|s| {
                Entry::new(
                    s.id,
                    format!(
                        "user {} database {} (relayed, not captured, not moved at cutover)",
                        s.user,
                        s.backend_database().unwrap_or_default()
                    ),
                )
            })
            .collect(),
        log_dir: active.config.log_dir.display().to_string(),
        durability: format!("{:?}", config.durability).to_lowercase(),
        policy: config.policy.name().to_string(),
        read_only_functions: config.read_only_functions.join(", "),
        // Listed but not in the catalog: a typo leaves the real function refused.
        read_only_functions_unknown: (!active.read_only_unknown.is_empty())
            .then(|| active.read_only_unknown.join(", ")),
        log_records: stats.records,
        log_bytes: stats.bytes,
        last_lsn: stats.last_lsn.map(|l| l.0),
        log: log_dir_facts(config, &active.log_watch().view()),
        transactions_captured: active.commits.load(Relaxed),
        keys_captured: active.keys.load(Relaxed),
        late_logged: active.late.load(Relaxed),
        catalog: catalog_facts(&active.catalog),
        unsafe_statements: unsafe_seen.values().map(|u| u.count).sum(),
        unsafe_kinds: unsafe_seen
            .iter()
            .map(|(kind, u)| {
                let policy = config.policy_for(kind).name();
                Entry::new(
                    kind.to_string(),
                    format!(
                        "{} seen, {} rejected ({policy}), {} unacknowledged; last: {}",
                        u.count,
                        u.rejected,
                        u.unacknowledged(),
                        u.last
                    ),
                )
            })
            .collect(),
        bypassing,
    };
    Ok(Reply::Rows(CaptureReply::On(Box::new(on)).to_rows()))
}

fn log_space(space: &switchyard_replay::log::LogSpace) -> LogSpace {
    LogSpace {
        bytes: space.bytes,
        segments: space.segments as u64,
        oldest_lsn: space.oldest.map(|l| l.0),
    }
}

/// The log on disk, retention and the disk's free space, as of the last
/// retention pass.
fn log_dir_facts(config: &crate::config::CaptureConfig, view: &LogView) -> LogDirFacts {
    let retention = match config.retention {
        Retention::Confirmed => format!(
            "confirmed: segments every hold is past are deleted, keeping the newest {} records",
            config.retain_records
        ),
        Retention::Keep => "keep: the whole log is kept".to_owned(),
    };
    let first_kept = match (config.retention, view.first_kept, view.holds.is_empty()) {
        (Retention::Keep, _, _) => "everything (retention keep)".to_owned(),
        (_, _, true) => "everything (no replayer holds the log yet)".to_owned(),
        (_, Some(l), false) => l.to_string(),
        (_, None, false) => String::new(),
    };
    let hold = view
        .holds
        .iter()
        .map(|h| {
            let what = match &h.unreadable {
                Some(e) => format!("unreadable ({e}): holds the whole log until fixed or removed"),
                None => format!(
                    "confirmed {} ({}), updated {}",
                    h.confirmed,
                    h.description,
                    rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_micros(h.updated_micros.max(0) as u64))
                ),
            };
            Entry::new(h.name.clone(), what)
        })
        .collect();
    LogDirFacts {
        space: log_space(&view.space),
        retention,
        first_kept,
        deleted_segments: view.deleted_segments,
        deleted_bytes: view.deleted_bytes,
        holds: view.holds.len() as u64,
        hold,
        retention_error: view.error.clone(),
        disk: view.disk.map(|d| DiskSpace {
            free_bytes: d.free_bytes,
            total_bytes: d.total_bytes,
        }),
        disk_warn_free_bytes: config.disk_warn_free_bytes,
        disk_warning: view.disk_warning(config.disk_warn_free_bytes),
    }
}

/// The source catalog's health and counters.
fn catalog_facts(catalog: &switchyard_replay::catalog::CatalogCache) -> CatalogFacts {
    use switchyard_replay::catalog::CatalogHealth;
    let health = match catalog.health() {
        CatalogHealth::Ok { loaded_at } => {
            let age = std::time::SystemTime::now()
                .duration_since(loaded_at)
                .unwrap_or_default();
            format!("ok, loaded {} s ago", age.as_secs())
        }
        CatalogHealth::Failing { since, error } => {
            format!("refresh failing since {}: {error}", rfc3339(since))
        }
        CatalogHealth::Reconnecting { since, error } => {
            format!("reconnecting since {}: {error}", rfc3339(since))
        }
    };
    let stats = catalog.stats();
    CatalogFacts {
        health,
        refreshes: stats.refreshes,
        failures: stats.failures,
        reconnects: stats.reconnects,
        lookups: stats.lookups,
    }
}
