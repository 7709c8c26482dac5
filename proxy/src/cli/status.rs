//! `switchyard status`: the proxy at a glance, from SHOW STATUS, SHOW
//! CAPTURE, SHOW LAG and SHOW CUTOVER, one line per part.

use super::Console;
use crate::admin::reply::{CaptureReply, LagReply, ShowCutoverReply, StatusReply};
use crate::admin::AdminCommand;
use crate::catchup::CatchupPhase;

/// Prints the summary; exit code 0, or 1 when the console cannot be reached.
pub async fn run(console: &Console) -> i32 {
    match summary(console).await {
        Ok(lines) => {
            print!("{lines}");
            0
        }
        Err(e) => {
            eprintln!("switchyard: {e}");
            1
        }
    }
}

async fn summary(console: &Console) -> anyhow::Result<String> {
    let status = super::console_reply(console, &AdminCommand::ShowStatus).await?;
    let capture = super::console_reply(console, &AdminCommand::ShowCapture).await?;
    let lag = super::console_reply(console, &AdminCommand::ShowLag).await?;
    let cutover = super::console_reply(console, &AdminCommand::ShowCutover).await?;
    Ok(render(&status, &capture, &lag, &cutover))
}

/// The summary lines, aligned.
pub fn render(status: &StatusReply, capture: &CaptureReply, lag: &LagReply, cutover: &ShowCutoverReply) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    let mut state = format!("{}, traffic to the {}", status.state.name(), status.route.name());
    if let Some(p) = &status.route_pending {
        state.push_str(&format!(" (moving to {p})"));
    }
    lines.push(("proxy", state));
    lines.push((
        "sessions",
        format!(
            "{} ({} in a transaction, {} held at the gate, {} moved so far; console sessions included, this one too)",
            status.sessions, status.busy_sessions, status.held_sessions, status.sessions_moved
        ),
    ));
    let mut cap = capture.state();
    if let CaptureReply::On(on) = capture {
        cap.push_str(&format!(
            ", database {} on the {}, {} transaction(s) and {} key(s) logged",
            on.database,
            on.server.name(),
            on.transactions_captured,
            on.keys_captured
        ));
        if on.sessions_holding_barrier > 0 {
            cap.push_str(&format!(
                ", {} session(s) holding the barrier",
                on.sessions_holding_barrier
            ));
        }
    }
    lines.push(("capture", cap));
    let mut catchup = lag.state.name().to_owned();
    if lag.state != CatchupPhase::Off {
        catchup.push_str(&format!(
            ", lag {:.3} s, {} commit(s) and {} key(s) pending",
            lag.lag_seconds, lag.commits_pending, lag.keys_pending
        ));
        if let Some(e) = &lag.error {
            catchup.push_str(&format!(" (last error: {e})"));
        }
    }
    lines.push(("catch-up", catchup));
    let last = match cutover {
        ShowCutoverReply::Idle => "none since the proxy started".to_owned(),
        ShowCutoverReply::Last(c) => {
            let mut s = c.state.clone();
            if let Some(r) = &c.reason {
                s.push_str(&format!(": {r}"));
            }
            if let Some(pause) = c.pause_ms {
                s.push_str(&format!(
                    ", pause {pause:.1} ms, {} of {} session(s) moved",
                    c.sessions_moved, c.sessions
                ));
            }
            s
        }
    };
    lines.push(("cutover", last));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::reply::samples::*;
    use crate::admin::reply::{CapturePhase, GateState, StatusCutover};
    use crate::session::route::Destination;

    #[test]
    fn the_summary_names_each_part() {
        let status = StatusReply {
            state: GateState::Serving,
            route: Destination::Target,
            sessions: 12,
            busy_sessions: 3,
            held_sessions: 0,
            sessions_moved: 12,
            cutover: Some(StatusCutover {
                state: "done".to_owned(),
                pause_ms: Some(38.2),
            }),
            ..status_serving()
        };
        let mut on = capture_on();
        on.server = Destination::Target;
        on.sessions_holding_barrier = 0;
        let capture = CaptureReply::On(Box::new(on));
        let mut cutover = cutover_ready();
        cutover.state = "done".to_owned();
        cutover.pause_ms = Some(38.2);
        cutover.sessions = 12;
        cutover.sessions_moved = 12;
        let text = render(
            &status,
            &capture,
            &lag_off(),
            &ShowCutoverReply::Last(Box::new(cutover)),
        );
        assert!(text.contains("proxy     serving, traffic to the target\n"), "{text}");
        assert!(
            text.contains("sessions  12 (3 in a transaction, 0 held at the gate, 12 moved so far; console sessions included, this one too)"),
            "{text}"
        );
        assert!(
            text.contains("capture   on, database app on the target, 40 transaction(s) and 90 key(s) logged\n"),
            "{text}"
        );
        assert!(text.contains("catch-up  off\n"), "{text}");
        assert!(
            text.contains("cutover   done, pause 38.2 ms, 12 of 12 session(s) moved"),
            "{text}"
        );
    }

    #[test]
    fn a_move_a_barrier_a_failing_catch_up_and_an_abort_are_told() {
        let status = status_frozen();
        let mut failing = capture_on();
        failing.phase = CapturePhase::WaitingForBarrier;
        let capture = CaptureReply::On(Box::new(failing));
        let mut aborted = cutover_aborted();
        aborted.pause_ms = None;
        let text = render(
            &status,
            &capture,
            &lag_retrying(),
            &ShowCutoverReply::Last(Box::new(aborted)),
        );
        assert!(
            text.contains(
                "proxy     frozen (cutover), traffic to the source (moving to target (epoch 2, backends opening))"
            ),
            "{text}"
        );
        assert!(
            text.contains("waiting for barrier, database app on the source, 40 transaction(s) and 90 key(s) logged, 1 session(s) holding the barrier"),
            "{text}"
        );
        assert!(
            text.contains(
                "catch-up  retrying, lag 1.250 s, 4 commit(s) and 9 key(s) pending (last error: connection refused)"
            ),
            "{text}"
        );
        assert!(
            text.contains("cutover   aborted at freeze: 2 transactions still open: session 7\n"),
            "{text}"
        );
        let idle = render(
            &status,
            &CaptureReply::Off(capture_off()),
            &lag_off(),
            &ShowCutoverReply::Idle,
        );
        assert!(idle.contains("capture   off\n"), "{idle}");
        assert!(idle.contains("cutover   none since the proxy started"), "{idle}");
    }
}
