//! The demo's cutover: `CUTOVER` on an admin console session of its own,
//! its NOTICEs printed as each step ends, tried again when preflight
//! refuses (catch-up a little behind, say), and its answer read: the
//! state, the pause, the counts and each step's duration.

use super::stack::{field, LiveConsole};
use anyhow::{bail, Result};
use std::time::Duration;
use switchyard_tests::Endpoint;

/// CUTOVER attempts when preflight refuses, and the wait between them.
const ATTEMPTS: usize = 3;
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// How long CUTOVER may take to answer.
const TIMEOUT: Duration = Duration::from_secs(120);

/// What the cutover did, times in µs on the load's clock.
#[derive(Debug, Default)]
pub(super) struct Cutover {
    /// When the command that ran was sent and answered.
    pub(super) sent_us: u64,
    pub(super) answered_us: u64,
    /// When the gate closed.
    pub(super) pause_started_us: u64,
    pub(super) pause_ms: f64,
    pub(super) sessions_moved: String,
    pub(super) keys_synced: String,
    pub(super) rows_verified: u64,
    pub(super) sequences_set: String,
    /// Each step: name, and `at X ms, Y ms: detail`.
    pub(super) steps: Vec<(String, String)>,
    /// Refusals before the attempt that ran.
    pub(super) refusals: Vec<String>,
}

/// Runs `CUTOVER` through the console at `endpoint`; `now_us` reads the
/// load's clock. An error unless the cutover finished (`state done`).
pub(super) async fn run(endpoint: &Endpoint, admin_database: &str, now_us: impl Fn() -> u64) -> Result<Cutover> {
    let console = LiveConsole::connect(endpoint, admin_database).await?;
    let mut cutover = Cutover::default();
    let outcome = async {
        for attempt in 1..=ATTEMPTS {
            cutover.sent_us = now_us();
            let Ok(answer) = tokio::time::timeout(TIMEOUT, console.run("CUTOVER")).await else {
                bail!("CUTOVER had no answer within {} s", TIMEOUT.as_secs());
            };
            cutover.answered_us = now_us();
            match answer? {
                Ok(rows) => return read(&mut cutover, &rows),
                Err(e) if e.contains("aborted at preflight") && attempt < ATTEMPTS => {
                    println!("    refused: {e}; trying again in {} s", RETRY_PAUSE.as_secs());
                    cutover.refusals.push(e);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => bail!("{e}"),
            }
        }
        bail!("CUTOVER was refused {ATTEMPTS} times")
    }
    .await;
    // The last NOTICEs may still be on their way to the printing task.
    tokio::time::sleep(Duration::from_millis(50)).await;
    console.close().await;
    outcome.map(|()| cutover)
}

/// Reads CUTOVER's `field | value` rows.
fn read(cutover: &mut Cutover, rows: &[Vec<String>]) -> Result<()> {
    let state = field(rows, "state").unwrap_or("(none)");
    if state != "done" {
        bail!("the cutover ended in state `{state}`");
    }
    let get = |name: &str| field(rows, name).unwrap_or("").to_owned();
    cutover.pause_ms = leading_number(&get("pause_ms")).unwrap_or(0.0);
    cutover.sessions_moved = get("sessions_moved");
    cutover.keys_synced = get("keys_synced");
    cutover.rows_verified = get("rows_verified").parse().unwrap_or(0);
    cutover.sequences_set = get("sequences_set");
    for row in rows {
        let (Some(key), Some(value)) = (row.first(), row.get(1)) else {
            continue;
        };
        let Some(step) = key.strip_prefix("step.") else {
            continue;
        };
        if step == "freeze" {
            let at_ms = value.strip_prefix("at ").and_then(leading_number).unwrap_or(0.0);
            cutover.pause_started_us = cutover.sent_us + (at_ms * 1000.0) as u64;
        }
        cutover.steps.push((step.to_owned(), value.clone()));
    }
    if cutover.pause_started_us == 0 {
        cutover.pause_started_us = cutover.sent_us;
    }
    Ok(())
}

/// The number a value starts with: `12.5`, `12.5 ms`.
fn leading_number(text: &str) -> Option<f64> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(k: &str, v: &str) -> Vec<String> {
        vec![k.to_owned(), v.to_owned()]
    }

    #[test]
    fn the_answer_gives_the_pause_and_its_start() {
        let rows = vec![
            row("state", "done"),
            row("pause_ms", "23.4"),
            row("rows_verified", "312"),
            row(
                "step.preflight",
                "at 0.0 ms, 40.1 ms: every session's target backend open",
            ),
            row("step.freeze", "at 40.5 ms, 2.0 ms: every session at a boundary"),
        ];
        let mut c = Cutover {
            sent_us: 1_000_000,
            ..Cutover::default()
        };
        read(&mut c, &rows).unwrap();
        assert_eq!((c.pause_ms, c.rows_verified), (23.4, 312));
        assert_eq!(c.pause_started_us, 1_040_500);
        assert_eq!(c.steps.len(), 2);
        let mut c = Cutover::default();
        assert!(read(&mut c, &[row("state", "aborted")]).is_err());
    }
}
