//! `switchyard status`: the proxy at a glance, from SHOW STATUS, SHOW
//! CAPTURE, SHOW LAG and SHOW CUTOVER, one line per part.

use super::Console;
use crate::admin::AdminCommand;
use std::collections::BTreeMap;

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
    let status = super::console_map(console, &AdminCommand::ShowStatus).await?;
    let capture = super::console_map(console, &AdminCommand::ShowCapture).await?;
    let lag = super::console_map(console, &AdminCommand::ShowLag).await?;
    let cutover = super::console_map(console, &AdminCommand::ShowCutover).await?;
    Ok(render(&status, &capture, &lag, &cutover))
}

type Rows = BTreeMap<String, String>;

fn get<'a>(rows: &'a Rows, key: &str) -> &'a str {
    rows.get(key).map_or("", String::as_str)
}

/// The summary lines, aligned.
pub fn render(status: &Rows, capture: &Rows, lag: &Rows, cutover: &Rows) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    let mut state = format!("{}, traffic to the {}", get(status, "state"), get(status, "route"));
    if let Some(p) = status.get("route_pending") {
        state.push_str(&format!(" (moving to {p})"));
    }
    lines.push(("proxy", state));
    lines.push((
        "sessions",
        format!(
            "{} ({} in a transaction, {} held at the gate, {} moved so far)",
            get(status, "sessions"),
            get(status, "busy_sessions"),
            get(status, "held_sessions"),
            get(status, "sessions_moved")
        ),
    ));
    let mut cap = get(capture, "state").to_owned();
    if cap != "off" && !cap.starts_with("resume pending") {
        cap.push_str(&format!(
            " on the {} (database {}), {} transaction(s) and {} key(s) logged",
            get(capture, "server"),
            get(capture, "database"),
            get(capture, "transactions_captured"),
            get(capture, "keys_captured")
        ));
        let holding = get(capture, "sessions_holding_barrier");
        if !holding.is_empty() && holding != "0" {
            cap.push_str(&format!(", {holding} session(s) holding the barrier"));
        }
    }
    lines.push(("capture", cap));
    let mut catchup = get(lag, "state").to_owned();
    if catchup != "off" {
        catchup.push_str(&format!(
            ", lag {} s, {} commit(s) and {} key(s) pending",
            get(lag, "lag_seconds"),
            get(lag, "commits_pending"),
            get(lag, "keys_pending")
        ));
        if let Some(e) = lag.get("error") {
            catchup.push_str(&format!(" (last error: {e})"));
        }
    }
    lines.push(("catch-up", catchup));
    let last = match get(cutover, "state") {
        "idle" => "none since the proxy started".to_owned(),
        state => {
            let mut s = state.to_owned();
            if let Some(r) = cutover.get("reason") {
                s.push_str(&format!(": {r}"));
            }
            let pause = get(cutover, "pause_ms");
            if !pause.is_empty() {
                s.push_str(&format!(
                    ", pause {pause} ms, {} of {} session(s) moved",
                    get(cutover, "sessions_moved"),
                    get(cutover, "sessions")
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

    fn rows(pairs: &[(&str, &str)]) -> Rows {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_summary_names_each_part() {
        let status = rows(&[
            ("state", "serving"),
            ("route", "target"),
            ("sessions", "12"),
            ("busy_sessions", "3"),
            ("held_sessions", "0"),
            ("sessions_moved", "12"),
        ]);
        let capture = rows(&[
            ("state", "on"),
            ("server", "target"),
            ("database", "app"),
            ("transactions_captured", "40"),
            ("keys_captured", "90"),
            ("sessions_holding_barrier", "0"),
        ]);
        let lag = rows(&[("state", "off")]);
        let cutover = rows(&[
            ("state", "done"),
            ("pause_ms", "38.2"),
            ("sessions", "12"),
            ("sessions_moved", "12"),
        ]);
        let text = render(&status, &capture, &lag, &cutover);
        assert!(text.contains("proxy     serving, traffic to the target"), "{text}");
        assert!(
            text.contains("sessions  12 (3 in a transaction, 0 held at the gate"),
            "{text}"
        );
        assert!(
            text.contains("capture   on on the target (database app), 40 transaction(s)"),
            "{text}"
        );
        assert!(text.contains("catch-up  off"), "{text}");
        assert!(
            text.contains("cutover   done, pause 38.2 ms, 12 of 12 session(s) moved"),
            "{text}"
        );
    }
}
