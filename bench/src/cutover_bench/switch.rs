//! How a cutover went, whichever way it was made: when its command was sent
//! and answered on the load's clock, the pause, each step's duration in the
//! order the steps ran, and what it said on the way.

use crate::report::round;
use serde::{Serialize, Serializer};
use std::time::Duration;

/// Steps and their durations in ms, in the order they ran; written to the
/// JSON as an object in that order.
#[derive(Debug, Clone, Default)]
pub(super) struct Steps(pub(super) Vec<(String, f64)>);

impl Steps {
    pub(super) fn push(&mut self, name: &str, took: Duration) {
        self.0.push((name.to_owned(), millis(took)));
    }
}

impl Serialize for Steps {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// One line a cutover printed (a NOTICE of the proxy's, or a step of the
/// recipe), with when it arrived.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Note {
    /// Since the load's zero, ms.
    pub(super) at_ms: f64,
    pub(super) text: String,
}

/// A cutover's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Switch {
    /// `done`, or how it ended otherwise.
    pub(super) state: String,
    /// Traffic is on the target.
    pub(super) done: bool,
    /// When its first command was sent and its last answered, since the
    /// load's zero, µs (for the window; not in the JSON).
    #[serde(skip)]
    pub(super) sent_us: u64,
    #[serde(skip)]
    pub(super) answered_us: u64,
    /// When clients started to be held: the proxy's freeze (the gate
    /// closing), or PgBouncer's PAUSE sent; µs on the load's clock.
    #[serde(skip)]
    pub(super) pause_started_us: u64,
    /// The same instants in ms, for the JSON.
    pub(super) sent_at_ms: f64,
    pub(super) answered_at_ms: f64,
    pub(super) pause_started_at_ms: f64,
    /// When clients started to be held, Unix time in ms: to line the run up
    /// with a system-wide profile or a server's log.
    pub(super) pause_started_unix_ms: f64,
    /// The Unix time of the load's zero, µs.
    #[serde(skip)]
    pub(super) zero_unix_us: u64,
    /// From the first command sent to the last answered, ms.
    pub(super) command_ms: f64,
    /// How long clients were held: the proxy's gate closed to reopened, or
    /// PgBouncer's PAUSE sent to RESUME answered.
    pub(super) pause_ms: Option<f64>,
    pub(super) steps_ms: Steps,
    /// Console attempts refused before the one that ran.
    pub(super) refusals: Vec<String>,
    pub(super) log: Vec<Note>,
    /// The error that ended it, if one did.
    pub(super) error: Option<String>,
}

impl Switch {
    /// Sets the instants and the command's duration.
    pub(super) fn timed(&mut self, sent_us: u64, answered_us: u64) {
        self.sent_us = sent_us;
        self.answered_us = answered_us.max(sent_us);
        self.sent_at_ms = round(sent_us as f64 / 1000.0, 3);
        self.answered_at_ms = round(self.answered_us as f64 / 1000.0, 3);
        self.command_ms = round((self.answered_us - sent_us) as f64 / 1000.0, 3);
        self.pause_started(sent_us);
    }

    /// Sets when the clients started to be held.
    pub(super) fn pause_started(&mut self, at_us: u64) {
        self.pause_started_us = at_us;
        self.pause_started_at_ms = round(at_us as f64 / 1000.0, 3);
        self.pause_started_unix_ms = round((self.zero_unix_us + at_us) as f64 / 1000.0, 3);
    }
}

/// `d` in ms, three decimals.
pub(super) fn millis(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1000.0, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_their_order_in_json() {
        let mut steps = Steps::default();
        steps.push("pause", Duration::from_micros(1500));
        steps.push("lag", Duration::from_millis(2));
        assert_eq!(serde_json::to_string(&steps).unwrap(), r#"{"pause":1.5,"lag":2.0}"#);
    }
}
