//! SHOW STATUS: the gate, the sessions, the route and the last cutover,
//! one `key | value` row each.

use super::{ConsoleReply, Fields, Pairs, ReplyError, ReplyRows, ResultSet};
use crate::session::route::Destination;
use std::fmt;

const COLUMNS: [&str; 2] = ["key", "value"];

/// What SHOW STATUS answers.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReply {
    /// Whether sessions are served or held.
    pub state: GateState,
    /// Client sessions.
    pub sessions: u64,
    /// Sessions in a transaction.
    pub busy_sessions: u64,
    /// Sessions held at the gate.
    pub held_sessions: u64,
    /// How long the PAUSE in force has held, and how long it may still.
    pub pause: Option<PauseClock>,
    /// The database new sessions log in to.
    pub route: Destination,
    /// Its route epoch.
    pub route_epoch: u64,
    /// A move ordered whose backends are still opening.
    pub route_pending: Option<RoutePending>,
    /// The current or last cutover; `None` when none has run.
    pub cutover: Option<StatusCutover>,
    /// Sessions moved to another backend since the proxy started.
    pub sessions_moved: u64,
    /// When the proxy started, as the console prints times.
    pub started_at: String,
}

/// Whether the gate lets sessions through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// Open.
    Serving,
    /// Closed by PAUSE.
    Paused,
    /// Closed by a running cutover.
    Frozen,
}

impl GateState {
    /// The name on the console.
    pub fn name(self) -> &'static str {
        match self {
            GateState::Serving => "serving",
            GateState::Paused => "paused",
            GateState::Frozen => "frozen (cutover)",
        }
    }

    fn from_name(name: &str) -> Option<GateState> {
        [GateState::Serving, GateState::Paused, GateState::Frozen]
            .into_iter()
            .find(|s| s.name() == name)
    }
}

/// The PAUSE holding the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseClock {
    /// Since it closed the gate, ms.
    pub paused_for_ms: u64,
    /// Until its timeout reopens the gate, ms.
    pub resumes_in_ms: u64,
}

/// A move of new sessions to another database, its backends opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePending {
    /// Where to.
    pub destination: Destination,
    /// The epoch it will have.
    pub epoch: u64,
}

impl fmt::Display for RoutePending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (epoch {}, backends opening)",
            self.destination.name(),
            self.epoch
        )
    }
}

impl RoutePending {
    fn parse(text: &str) -> Option<RoutePending> {
        let (name, rest) = text.split_once(" (epoch ")?;
        let epoch = rest.strip_suffix(", backends opening)")?;
        Some(RoutePending {
            destination: Destination::from_name(name)?,
            epoch: epoch.parse().ok()?,
        })
    }
}

/// The current or last cutover, as SHOW STATUS sums it up.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusCutover {
    /// Its state's name.
    pub state: String,
    /// The pause, ms, once the gate was closed.
    pub pause_ms: Option<f64>,
}

/// What `cutover` says when none has run.
const NO_CUTOVER: &str = "idle";

impl ConsoleReply for StatusReply {
    const COMMAND: &'static str = "SHOW STATUS";

    fn to_rows(&self) -> ResultSet {
        let mut r = Pairs::new(COLUMNS);
        r.put("state", self.state.name());
        r.put("sessions", self.sessions);
        r.put("busy_sessions", self.busy_sessions);
        r.put("held_sessions", self.held_sessions);
        if let Some(p) = &self.pause {
            r.put("paused_for_ms", p.paused_for_ms);
            r.put("resumes_in_ms", p.resumes_in_ms);
        }
        r.put("route", self.route.name());
        r.put("route_epoch", self.route_epoch);
        if let Some(p) = &self.route_pending {
            r.put("route_pending", p);
        }
        match &self.cutover {
            Some(c) => {
                r.put("cutover", &c.state);
                r.put_blank("cutover_pause_ms", c.pause_ms.map(|p| super::fixed(p, 1)));
            }
            None => r.put("cutover", NO_CUTOVER),
        }
        r.put("sessions_moved", self.sessions_moved);
        r.put("started_at", &self.started_at);
        r.done()
    }

    fn from_rows(rows: &ReplyRows) -> Result<StatusReply, ReplyError> {
        let f = Fields::new(Self::COMMAND, COLUMNS, rows)?;
        let state: String = f.req("state")?;
        let state = GateState::from_name(&state)
            .ok_or_else(|| f.invalid("state", &state, "serving, paused or frozen (cutover)"))?;
        let pause = match f.opt("paused_for_ms")? {
            Some(paused_for_ms) => Some(PauseClock {
                paused_for_ms,
                resumes_in_ms: f.req("resumes_in_ms")?,
            }),
            None => None,
        };
        let route_pending = match f.get("route_pending") {
            Some(text) => Some(RoutePending::parse(text).ok_or_else(|| {
                f.invalid(
                    "route_pending",
                    text,
                    "a database and its epoch, such as \"target (epoch 2, backends opening)\"",
                )
            })?),
            None => None,
        };
        let cutover: String = f.req("cutover")?;
        let cutover = match cutover.as_str() {
            NO_CUTOVER => None,
            _ => Some(StatusCutover {
                state: cutover,
                pause_ms: f.blank("cutover_pause_ms")?,
            }),
        };
        Ok(StatusReply {
            state,
            sessions: f.req("sessions")?,
            busy_sessions: f.req("busy_sessions")?,
            held_sessions: f.req("held_sessions")?,
            pause,
            route: f.req("route")?,
            route_epoch: f.req("route_epoch")?,
            route_pending,
            cutover,
            sessions_moved: f.req("sessions_moved")?,
            started_at: f.req("started_at")?,
        })
    }
}

#[cfg(test)]
pub(crate) mod samples {
    //! Replies as tests build them.

    use super::*;

    pub(crate) fn status_serving() -> StatusReply {
        StatusReply {
            state: GateState::Serving,
            sessions: 12,
            busy_sessions: 3,
            held_sessions: 0,
            pause: None,
            route: Destination::Source,
            route_epoch: 1,
            route_pending: None,
            cutover: None,
            sessions_moved: 0,
            started_at: "2026-11-18 11:06:40+00".to_owned(),
        }
    }

    pub(crate) fn status_frozen() -> StatusReply {
        StatusReply {
            state: GateState::Frozen,
            pause: Some(PauseClock {
                paused_for_ms: 1500,
                resumes_in_ms: 8500,
            }),
            route_pending: Some(RoutePending {
                destination: Destination::Target,
                epoch: 2,
            }),
            cutover: Some(StatusCutover {
                state: "frozen (draining)".to_owned(),
                pause_ms: Some(38.2),
            }),
            ..status_serving()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fails_naming, round_trip, with_extra_row, without};
    use super::samples::*;
    use super::*;

    #[test]
    fn rows_are_as_psql_shows_them() {
        let rows = ReplyRows::from(&status_frozen().to_rows());
        let pairs: Vec<(&str, &str)> = rows.rows.iter().map(|r| (r[0].as_str(), r[1].as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("state", "frozen (cutover)"),
                ("sessions", "12"),
                ("busy_sessions", "3"),
                ("held_sessions", "0"),
                ("paused_for_ms", "1500"),
                ("resumes_in_ms", "8500"),
                ("route", "source"),
                ("route_epoch", "1"),
                ("route_pending", "target (epoch 2, backends opening)"),
                ("cutover", "frozen (draining)"),
                ("cutover_pause_ms", "38.2"),
                ("sessions_moved", "0"),
                ("started_at", "2026-11-18 11:06:40+00"),
            ]
        );
        let rows = ReplyRows::from(&status_serving().to_rows());
        assert!(rows.rows.contains(&vec!["cutover".to_owned(), "idle".to_owned()]));
        assert!(!rows
            .rows
            .iter()
            .any(|r| r[0] == "cutover_pause_ms" || r[0] == "paused_for_ms"));
        let no_pause = StatusReply {
            cutover: Some(StatusCutover {
                state: "preflight".to_owned(),
                pause_ms: None,
            }),
            ..status_serving()
        };
        let rows = ReplyRows::from(&no_pause.to_rows());
        assert!(rows.rows.contains(&vec!["cutover_pause_ms".to_owned(), String::new()]));
    }

    #[test]
    fn round_trips() {
        round_trip(&status_serving());
        round_trip(&status_frozen());
        round_trip(&StatusReply {
            state: GateState::Paused,
            cutover: Some(StatusCutover {
                state: "aborted at freeze".to_owned(),
                pause_ms: None,
            }),
            ..status_serving()
        });
    }

    #[test]
    fn extra_rows_and_missing_optional_rows_decode_missing_required_ones_do_not() {
        let reply = status_frozen();
        assert_eq!(StatusReply::from_rows(&with_extra_row(&reply)), Ok(reply.clone()));
        let pending = without(&reply, "route_pending");
        assert_eq!(StatusReply::from_rows(&pending).map(|s| s.route_pending), Ok(None));
        fails_naming::<StatusReply>(&without(&reply, "sessions_moved"), "sessions_moved");
        fails_naming::<StatusReply>(&without(&reply, "cutover_pause_ms"), "cutover_pause_ms");
        fails_naming::<StatusReply>(&without(&reply, "resumes_in_ms"), "resumes_in_ms");
    }

    #[test]
    fn values_that_do_not_read_say_what_was_expected() {
        let mut rows = ReplyRows::from(&status_serving().to_rows());
        rows.rows[0][1] = "sleeping".to_owned();
        let e = StatusReply::from_rows(&rows).unwrap_err().to_string();
        assert!(
            e.contains("SHOW STATUS") && e.contains("\"state\" is \"sleeping\""),
            "{e}"
        );
        let mut rows = ReplyRows::from(&status_serving().to_rows());
        rows.rows[1][1] = "many".to_owned();
        let e = StatusReply::from_rows(&rows).unwrap_err().to_string();
        assert!(e.contains("\"sessions\" is \"many\", not a whole number"), "{e}");
    }
}
