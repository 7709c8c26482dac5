//! The SHOW commands: VERSION, STATUS, SESSIONS, STATS, CONFIG, HELP.

use super::reply::{ConsoleReply, GateState, PauseClock, RoutePending, StatusCutover, StatusReply};
use super::{Reply, ResultSet};
use crate::server::Shared;
use crate::stats::Stats;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The proxy's version string.
pub const VERSION: &str = concat!("switchyard ", env!("CARGO_PKG_VERSION"));

pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date crate.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(super) fn version() -> Reply {
    let mut r = ResultSet::new(&["version"]);
    r.row([VERSION]);
    Reply::Rows(r)
}

pub(super) fn status(shared: &Shared) -> Reply {
    let gate = &shared.gate;
    let pause = *shared.pause.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let cutover = shared.cutover.last();
    let frozen = shared.cutover.running() && gate.is_closed();
    let state = match (gate.is_closed(), frozen) {
        (true, true) => GateState::Frozen,
        (true, false) => GateState::Paused,
        _ => GateState::Serving,
    };
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let route = shared.router.current();
    let (epoch, serving) = route.for_login();
    let reply = StatusReply {
        state,
        sessions: shared.sessions.len() as u64,
        busy_sessions: gate.busy() as u64,
        held_sessions: gate.held() as u64,
        pause: pause.filter(|_| gate.is_closed()).map(|p| PauseClock {
            paused_for_ms: millis(now - p.since),
            resumes_in_ms: millis(p.until.saturating_duration_since(now)),
        }),
        route: serving,
        route_epoch: epoch,
        route_pending: (route.epoch != epoch).then_some(RoutePending {
            destination: route.destination,
            epoch: route.epoch,
        }),
        cutover: cutover.map(|c| StatusCutover {
            state: c.state.name(),
            pause_ms: c.pause_ms,
        }),
        sessions_moved: Stats::get(&shared.stats.sessions_moved),
        started_at: rfc3339(shared.started_at),
    };
    Reply::Rows(reply.to_rows())
}

pub(super) fn sessions(shared: &Shared) -> Reply {
    let mut r = ResultSet::new(&[
        "id",
        "user",
        "database",
        "application_name",
        "client_addr",
        "state",
        "backend_pid",
        "connected_at",
        "queries",
        "prepared_statements",
        "settings",
        "listen_channels",
        "pinned_by",
        "backend",
        "route_epoch",
        "move_state",
        "moves",
        "move_error",
    ]);
    for s in shared.sessions.snapshot() {
        let (prepared, settings, listens) = s.tracked();
        let pid = s.backend_pid();
        let row = vec![
            Some(s.id.to_string()),
            Some(s.user.clone()),
            Some(s.database.clone()),
            Some(s.application.clone()),
            Some(s.client.to_string()),
            Some(s.state().name().to_string()),
            (pid != 0).then(|| pid.to_string()),
            Some(rfc3339(s.connected_at)),
            Some(s.queries().to_string()),
            Some(prepared.to_string()),
            Some(settings.to_string()),
            Some(listens.to_string()),
            Some(s.pins().join(", ")),
            Some(s.backend_addr()).filter(|a| !a.is_empty()),
            Some(s.route_epoch().to_string()),
            Some(s.move_state().name().to_string()),
            Some(s.moves().to_string()),
            s.move_error(),
        ];
        r.rows.push(row);
    }
    Reply::Rows(r)
}

pub(super) fn stats(shared: &Shared) -> Reply {
    let s = &shared.stats;
    let l = s.latency();
    let uptime = shared.started_at.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    let mut r = ResultSet::new(&["stat", "value"]);
    for (k, v) in [
        ("uptime_s", uptime),
        ("connections_total", Stats::get(&s.connections_total)),
        ("connections_open", Stats::get(&s.connections_open)),
        ("connections_refused", Stats::get(&s.connections_refused)),
        ("queries", Stats::get(&s.queries)),
        ("transactions", Stats::get(&s.transactions)),
        ("sessions_moved", Stats::get(&s.sessions_moved)),
        ("cutovers_done", Stats::get(&s.cutovers_done)),
        ("cutovers_aborted", Stats::get(&s.cutovers_aborted)),
        ("moved_sequence_errors", Stats::get(&s.moved_sequence_errors)),
        ("bytes_received", Stats::get(&s.bytes_from_clients)),
        ("bytes_sent", Stats::get(&s.bytes_to_clients)),
        ("server_errors", Stats::get(&s.server_errors)),
        ("protocol_errors", Stats::get(&s.protocol_errors)),
        ("latency_samples", l.count),
        ("latency_p50_us", l.p50),
        ("latency_p90_us", l.p90),
        ("latency_p99_us", l.p99),
        ("latency_max_us", l.max),
    ] {
        r.row([k.to_string(), v.to_string()]);
    }
    r.row(["latency_mean_us".to_string(), format!("{:.1}", l.mean)]);
    Reply::Rows(r)
}

pub(super) fn config(shared: &Shared) -> Reply {
    let mut r = ResultSet::new(&["key", "value"]);
    for (k, v) in shared.config.effective() {
        // The address bound, should the config ask for port 0.
        let v = if k == "listen" {
            shared.local_addr.to_string()
        } else {
            v
        };
        r.row([k, v]);
    }
    Reply::Rows(r)
}

pub(super) fn help() -> Reply {
    let mut r = ResultSet::new(&["command", "description"]);
    for (c, d) in [
        ("SHOW VERSION", "the proxy's version"),
        ("SHOW STATUS", "serving or paused; busy and held sessions"),
        ("SHOW SESSIONS", "one row per client session"),
        ("SHOW STATS", "counters and query latency percentiles"),
        ("SHOW CONFIG", "the configuration in force (passwords hidden)"),
        ("PAUSE [timeout] [DETACHED]", "hold all sessions at their next transaction boundary; returns once none is busy; reopens on RESUME, after the timeout (default limits.pause_timeout_ms, at most 1h), or when this session leaves unless DETACHED"),
        ("RESUME", "reopen the gate after PAUSE"),
        ("CAPTURE START [database]", "log the keys of every committed write of that database's sessions from their next transaction boundary (resumes a capture pending after a restart)"),
        ("CAPTURE STOP", "stop capturing (sessions stop at their next boundary)"),
        ("SHOW CAPTURE", "capture state, barrier, sessions holding it, log size, unsafe statements, read-only functions, sessions bypassing the proxy"),
        ("CATCHUP START", "check the mapping against both catalogs and start replaying the capture log onto [target]"),
        ("CATCHUP STOP", "stop catch-up once the batches in hand are applied"),
        ("RECONNECT [TO source|target] [TIMEOUT d] [FORCE]", "move every client session to a fresh backend at its next transaction boundary without the clients reconnecting (backends opened first, then switched); pinned sessions (temp tables, session advisory locks, WITH HOLD cursors) move once unpinned, or, for another database, are closed at the timeout (default 30s); TO target needs FORCE: CUTOVER is the safe way there"),
        ("SHOW LAG", "catch-up state, log positions (end, read, confirmed), commits and keys pending, lag in seconds, lag percentiles"),
        ("CAPTURE ACK", "acknowledge the unsafe statements SHOW CAPTURE lists as let through uncaptured, after checking the target has their writes (a cutover refuses while any is unacknowledged)"),
        ("CUTOVER [DRY RUN] [options]", "move all traffic to [target]: preflight, freeze, final sync, sequences, verify, flip, reopen; each step is reported as it runs; DRY RUN runs only the preflight. Options: MAX_LAG d, DRAIN_TIMEOUT d, ON_DRAIN_TIMEOUT abort|cancel, VERIFY none|synced|sample, VERIFY_SAMPLE n, MAX_PAUSE d, OPEN_TIMEOUT d, FENCE none|read-only|terminate-bypass, ALLOW_BYPASS, ALLOW_UNMAPPED_SEQUENCES, CAPTURE_ON_TARGET on|off (defaults from [cutover])"),
        ("VERIFY [table, ...] [ROWS_PER_RANGE n]", "compare whole tables (default: every mapped table), source against the mapped target, online, by checksums over key ranges; ranges that differ are checked again after catch-up, then row by row; one row per table with the differing keys (tag VERIFY DIFFERS when any)"),
        ("ABORT", "call the running cutover off before its flip: the gate reopens on the source"),
        ("SHOW CUTOVER", "the current or last cutover: state, each step's start and duration, the pause, sessions moved and closed, keys synced, rows verified"),
    ] {
        r.row([c, d]);
    }
    Reply::Rows(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01 00:00:00+00");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18 11:06:40+00"
        );
    }
}
