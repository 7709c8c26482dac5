//! `CUTOVER [DRY RUN] [options]`, `ABORT` and `SHOW CUTOVER`. The cutover
//! runs in the control layer on its own task; the console starts it,
//! streams each step as a NOTICE while it runs, and renders the report.

use super::reply::{ConsoleReply, CutoverReply, ShowCutoverReply, StepLine};
use super::{parse_duration, AdminCommand, AdminError, Reply, ResultSet};
use crate::config::{Fence, OnDrainTimeout, VerifyMode};
use crate::control::cutover::{CutoverOptions, Report, State, Step, StepRecord};
use crate::server::Shared;
use crate::wire::backend::{self as bmsg, Severity};
use std::sync::Arc;

/// What `CUTOVER` was asked, before the config's defaults are applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutoverArgs {
    /// Only preflight.
    pub dry_run: bool,
    /// Options named on the command, as `(name, value)`.
    pub set: Vec<(String, String)>,
}

const USAGE: &str = "usage: CUTOVER [DRY RUN] [MAX_LAG <duration>] [DRAIN_TIMEOUT <duration>] \
[ON_DRAIN_TIMEOUT abort|cancel] [VERIFY none|synced|sample] [VERIFY_SAMPLE <rows>] [MAX_PAUSE <duration>] \
[OPEN_TIMEOUT <duration>] [FENCE none|read-only|terminate-bypass] [CAPTURE_ON_TARGET on|off] [ALLOW_BYPASS] \
[ALLOW_UNMAPPED_SEQUENCES]";

/// Options that take a value.
const VALUED: [&str; 9] = [
    "MAX_LAG",
    "DRAIN_TIMEOUT",
    "ON_DRAIN_TIMEOUT",
    "VERIFY",
    "VERIFY_SAMPLE",
    "MAX_PAUSE",
    "OPEN_TIMEOUT",
    "FENCE",
    "CAPTURE_ON_TARGET",
];

/// Whether an option takes no value.
pub(super) fn is_flag(name: &str) -> bool {
    name == "ALLOW_BYPASS" || name == "ALLOW_UNMAPPED_SEQUENCES"
}

/// Parses the words after `CUTOVER`.
pub(super) fn parse(words: &[&str]) -> Result<AdminCommand, AdminError> {
    let mut args = CutoverArgs::default();
    let mut i = 0;
    if words.len() >= 2 && words[0].eq_ignore_ascii_case("DRY") && words[1].eq_ignore_ascii_case("RUN") {
        args.dry_run = true;
        i = 2;
    }
    while i < words.len() {
        let name = words[i].to_ascii_uppercase();
        if is_flag(&name) {
            args.set.push((name, "true".to_owned()));
            i += 1;
            continue;
        }
        if !VALUED.contains(&name.as_str()) {
            return Err(AdminError::Syntax(format!(
                "unknown CUTOVER option \"{}\"; {USAGE}",
                words[i]
            )));
        }
        let Some(value) = words.get(i + 1) else {
            return Err(AdminError::Syntax(format!(
                "CUTOVER option {name} needs a value; {USAGE}"
            )));
        };
        args.set.push((name, value.trim_matches('\'').to_owned()));
        i += 2;
    }
    // Each value checked now, so that a typo fails before anything runs;
    // how they fit together is checked against the config at execute.
    build(&crate::config::CutoverConfig::default(), &args)?;
    Ok(AdminCommand::Cutover(args))
}

/// The options of a cutover: the config's, overridden by the command's,
/// checked to fit together.
pub fn options(config: &crate::config::CutoverConfig, args: &CutoverArgs) -> Result<CutoverOptions, AdminError> {
    let o = build(config, args)?;
    if o.drain_timeout >= o.max_pause {
        return Err(AdminError::InvalidParameter(format!(
            "DRAIN_TIMEOUT ({} ms) must be below MAX_PAUSE ({} ms): the drain is part of the pause",
            o.drain_timeout.as_millis(),
            o.max_pause.as_millis()
        )));
    }
    Ok(o)
}

fn build(config: &crate::config::CutoverConfig, args: &CutoverArgs) -> Result<CutoverOptions, AdminError> {
    let mut o = CutoverOptions::from_config(config);
    let bad = |name: &str, value: &str, what: &str| {
        AdminError::InvalidParameter(format!("CUTOVER {name} takes {what}, not \"{value}\""))
    };
    let duration = |name: &str, value: &str| {
        parse_duration(value)
            .filter(|d| !d.is_zero() && *d <= super::MAX_PAUSE)
            .ok_or_else(|| {
                bad(
                    name,
                    value,
                    "a duration above 0 and at most 1 hour, such as 5s or 500ms",
                )
            })
    };
    for (name, value) in &args.set {
        match name.as_str() {
            "MAX_LAG" => o.max_lag = duration(name, value)?,
            "DRAIN_TIMEOUT" => o.drain_timeout = duration(name, value)?,
            "MAX_PAUSE" => o.max_pause = duration(name, value)?,
            "OPEN_TIMEOUT" => o.open_timeout = duration(name, value)?,
            "ON_DRAIN_TIMEOUT" => {
                o.on_drain_timeout = match value.to_ascii_lowercase().as_str() {
                    "abort" => OnDrainTimeout::Abort,
                    "cancel" => OnDrainTimeout::Cancel,
                    _ => return Err(bad(name, value, "abort or cancel")),
                }
            }
            "VERIFY" => {
                o.verify = match value.to_ascii_lowercase().as_str() {
                    "none" => VerifyMode::None,
                    "synced" => VerifyMode::Synced,
                    "sample" => VerifyMode::Sample,
                    _ => return Err(bad(name, value, "none, synced or sample")),
                }
            }
            "VERIFY_SAMPLE" => {
                o.verify_sample = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= 1_000_000)
                    .ok_or_else(|| bad(name, value, "a number of rows up to 1000000"))?
            }
            "FENCE" => {
                o.fence = match value.to_ascii_lowercase().as_str() {
                    "none" => Fence::None,
                    "read-only" => Fence::ReadOnly,
                    "terminate-bypass" => Fence::TerminateBypass,
                    _ => return Err(bad(name, value, "none, read-only or terminate-bypass")),
                }
            }
            "CAPTURE_ON_TARGET" => {
                o.capture_on_target = match value.to_ascii_lowercase().as_str() {
                    "on" | "true" => true,
                    "off" | "false" => false,
                    _ => return Err(bad(name, value, "on or off")),
                }
            }
            "ALLOW_BYPASS" => o.allow_bypass = true,
            "ALLOW_UNMAPPED_SEQUENCES" => o.allow_unmapped_sequences = true,
            _ => return Err(AdminError::Syntax(USAGE.to_owned())),
        }
    }
    Ok(o)
}

/// Runs a cutover, writing a NOTICE to `client` (when there is one) as
/// each step starts and ends, and answers with the report (or an error
/// when it was called off).
pub(super) async fn execute(
    shared: &Arc<Shared>,
    args: &CutoverArgs,
    mut client: Option<&mut crate::net::Conn>,
) -> Result<Reply, AdminError> {
    let options = options(&shared.config.cutover, args)?;
    let mut rx = shared
        .cutover
        .start(shared, options, args.dry_run)
        .map_err(|e| AdminError::InUse(e.to_string()))?;
    let mut told: Vec<(Step, bool)> = Vec::new();
    let mut connected = true;
    let report = loop {
        let report = rx.borrow_and_update().clone();
        if let Some(r) = &report {
            let mut out = bytes::BytesMut::new();
            for s in &r.steps {
                let done = s.ms.is_some();
                if told.contains(&(s.step, done)) {
                    continue;
                }
                told.push((s.step, done));
                bmsg::error_response(&mut out, Severity::Notice, "00000", &step_line(s));
            }
            if let Some(c) = client.as_mut().filter(|_| connected && !out.is_empty()) {
                // A console client that left does not stop the cutover.
                c.queue(&out);
                connected = c.flush().await.is_ok();
            }
            if r.state.finished() {
                break report;
            }
        }
        if rx.changed().await.is_err() {
            break rx.borrow().clone();
        }
    };
    let Some(report) = report else {
        return Err(AdminError::State("the cutover ended without a report".to_owned()));
    };
    match &report.state {
        State::Aborted { step, reason } => Err(AdminError::CutoverAborted {
            at_preflight: *step == Step::Preflight,
            message: format!(
                "cutover aborted at {}: {reason}; traffic stays on the source, nothing was lost, capture and catch-up go on",
                step.name()
            ),
        }),
        _ => Ok(Reply::Rows(render(&report))),
    }
}

/// `ABORT`: calls the running cutover off (before its flip).
pub(super) fn abort(shared: &Arc<Shared>) -> Result<Reply, AdminError> {
    use crate::control::cutover::AbortOutcome;
    match shared.cutover.abort("ABORT on the console") {
        AbortOutcome::Asked => Ok(Reply::Done("ABORT".to_owned())),
        AbortOutcome::NotRunning => Err(AdminError::State("no cutover is running".to_owned())),
        AbortOutcome::TooLate => Err(AdminError::State(
            "the cutover is past its flip and finishes on the target (SHOW CUTOVER follows it)".to_owned(),
        )),
    }
}

/// `SHOW CUTOVER`: the current or last cutover.
pub(super) fn show(shared: &Arc<Shared>) -> Reply {
    let shown = match shared.cutover.last() {
        Some(r) => ShowCutoverReply::Last(Box::new(reply(&r))),
        None => ShowCutoverReply::Idle,
    };
    Reply::Rows(shown.to_rows())
}

fn step_line(s: &StepRecord) -> String {
    match s.ms {
        None => format!("cutover: {} ...", s.step.name()),
        Some(ms) => format!("cutover: {} {:.1} ms: {}", s.step.name(), ms, s.detail),
    }
}

fn render(r: &Report) -> ResultSet {
    reply(r).to_rows()
}

/// The report as the console answers it.
fn reply(r: &Report) -> CutoverReply {
    CutoverReply {
        id: r.id,
        dry_run: r.dry_run,
        state: r.state.name(),
        reason: match &r.state {
            State::Aborted { reason, .. } => Some(reason.clone()),
            _ => None,
        },
        started: crate::admin::show::rfc3339(r.started),
        options: r.options.describe(),
        pause_ms: r.pause_ms,
        sessions: r.sessions as u64,
        sessions_moved: r.sessions_moved as u64,
        sessions_closed: r.sessions_closed.len() as u64,
        closed: r.sessions_closed.clone(),
        keys_synced: r.keys_synced,
        rows_verified: r.rows_verified,
        sequences_set: r.sequences_set as u64,
        freeze_lsn: r.freeze_lsn,
        capture_on_target: r.capture_on_target.clone(),
        target_direct_sessions: r.target_direct_sessions.clone(),
        reverse_mapping_errors: r.reverse_mapping_errors.clone(),
        steps: r
            .steps
            .iter()
            .map(|s| StepLine {
                step: s.step.name().to_owned(),
                at_ms: s.at_ms,
                took_ms: s.ms,
                detail: s.detail.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CutoverConfig;
    use std::time::Duration;

    fn parsed(text: &str) -> Result<(bool, CutoverOptions), AdminError> {
        parsed_with(&CutoverConfig::default(), text)
    }

    fn parsed_with(config: &CutoverConfig, text: &str) -> Result<(bool, CutoverOptions), AdminError> {
        match AdminCommand::parse(text)? {
            AdminCommand::Cutover(args) => Ok((args.dry_run, options(config, &args)?)),
            other => panic!("{text} parsed as {other:?}"),
        }
    }

    #[test]
    fn the_drain_is_checked_against_the_configured_pause() {
        let config = CutoverConfig {
            max_pause_ms: 60_000,
            ..CutoverConfig::default()
        };
        let (_, o) = parsed_with(&config, "CUTOVER DRAIN_TIMEOUT 15s").unwrap();
        assert_eq!(o.drain_timeout, Duration::from_secs(15));
        let config = CutoverConfig {
            drain_timeout_ms: 1_000,
            ..CutoverConfig::default()
        };
        assert!(parsed_with(&config, "CUTOVER MAX_PAUSE 3s").is_ok());
        assert!(parsed_with(&config, "CUTOVER MAX_PAUSE 1s").is_err());
    }

    #[test]
    fn options_override_the_config_and_bad_ones_say_what_is_expected() {
        let (dry, o) = parsed("CUTOVER").unwrap();
        assert!(!dry);
        assert_eq!(o, CutoverOptions::from_config(&CutoverConfig::default()));
        let (dry, o) = parsed(
            "cutover dry run drain_timeout 2s on_drain_timeout cancel verify synced max_pause '5s' fence read-only allow_bypass",
        )
        .unwrap();
        assert!(dry);
        assert_eq!(o.drain_timeout, Duration::from_secs(2));
        assert_eq!(o.on_drain_timeout, OnDrainTimeout::Cancel);
        assert_eq!(o.verify, VerifyMode::Synced);
        assert_eq!(o.max_pause, Duration::from_secs(5));
        assert_eq!(o.fence, Fence::ReadOnly);
        assert!(o.allow_bypass);
        for (bad, says) in [
            ("CUTOVER NOW", "unknown CUTOVER option"),
            ("CUTOVER DRAIN_TIMEOUT", "needs a value"),
            ("CUTOVER DRAIN_TIMEOUT soon", "a duration"),
            ("CUTOVER ON_DRAIN_TIMEOUT wait", "abort or cancel"),
            ("CUTOVER VERIFY all", "none, synced or sample"),
            ("CUTOVER DRAIN_TIMEOUT 20s", "below MAX_PAUSE"),
            ("CUTOVER VERIFY_SAMPLE lots", "a number of rows"),
        ] {
            let e = parsed(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    fn rows(rs: &ResultSet) -> Vec<(String, String)> {
        rs.rows
            .iter()
            .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The rows psql shows for a cutover, every optional row included:
    /// scripts and the CLI read them by these names and formats.
    #[test]
    fn the_report_rows_are_named_and_formatted_as_psql_shows_them() {
        let options = CutoverOptions::from_config(&CutoverConfig::default());
        let report = Report {
            id: 3,
            dry_run: false,
            options: options.clone(),
            started: std::time::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            state: State::Aborted {
                step: Step::Freeze,
                reason: "2 transactions still open: session 7".to_owned(),
            },
            steps: vec![
                StepRecord {
                    step: Step::Preflight,
                    at_ms: 0.04,
                    ms: Some(12.25),
                    detail: "ready: 4 sessions".to_owned(),
                },
                StepRecord {
                    step: Step::Freeze,
                    at_ms: 12.3,
                    ms: None,
                    detail: "draining: 2 open".to_owned(),
                },
            ],
            pause_ms: Some(38.25),
            sessions: 4,
            sessions_moved: 2,
            sessions_closed: vec!["session 9: temp table".to_owned(), "session 10: cursor".to_owned()],
            keys_synced: 17,
            rows_verified: 250,
            sequences_set: 1,
            freeze_lsn: Some(1234),
            capture_on_target: Some("on, logging to /var/log/x".to_owned()),
            reverse_mapping_errors: vec!["public.t: no key".to_owned()],
            target_direct_sessions: vec!["pid 77 (app@db)".to_owned()],
        };
        let describe = options.describe();
        assert_eq!(
            rows(&render(&report)),
            pairs(&[
                ("id", "3"),
                ("dry_run", "false"),
                ("state", "aborted at freeze"),
                ("reason", "2 transactions still open: session 7"),
                ("started", "2026-11-18 11:06:40+00"),
                ("options", &describe),
                ("pause_ms", "38.2"),
                ("sessions", "4"),
                ("sessions_moved", "2"),
                ("sessions_closed", "2"),
                ("closed", "session 9: temp table"),
                ("closed", "session 10: cursor"),
                ("keys_synced", "17"),
                ("rows_verified", "250"),
                ("sequences_set", "1"),
                ("freeze_lsn", "1234"),
                ("capture_on_target", "on, logging to /var/log/x"),
                ("target_direct_session", "pid 77 (app@db)"),
                ("reverse_mapping_error", "public.t: no key"),
                ("step.preflight", "at 0.0 ms, 12.2 ms: ready: 4 sessions"),
                ("step.freeze", "at 12.3 ms, running: draining: 2 open"),
            ])
        );
        let done = Report {
            state: State::Ready,
            dry_run: true,
            steps: Vec::new(),
            pause_ms: None,
            sessions_closed: Vec::new(),
            freeze_lsn: None,
            capture_on_target: None,
            reverse_mapping_errors: Vec::new(),
            target_direct_sessions: Vec::new(),
            ..report
        };
        assert_eq!(
            rows(&render(&done)),
            pairs(&[
                ("id", "3"),
                ("dry_run", "true"),
                ("state", "dry run: ready"),
                ("started", "2026-11-18 11:06:40+00"),
                ("options", &describe),
                ("pause_ms", ""),
                ("sessions", "4"),
                ("sessions_moved", "2"),
                ("sessions_closed", "0"),
                ("keys_synced", "17"),
                ("rows_verified", "250"),
                ("sequences_set", "1"),
                ("freeze_lsn", ""),
                ("capture_on_target", ""),
            ])
        );
        assert_eq!(render(&done).columns, ["field", "value"]);
        assert_eq!(render(&done).tag, "SHOW");
    }
}
