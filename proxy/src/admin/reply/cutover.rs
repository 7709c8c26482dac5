//! A cutover's report, as CUTOVER [DRY RUN] answers when it ends and SHOW
//! CUTOVER shows it (or says none has run): `field | value` rows.

use super::{fixed, ConsoleReply, Fields, Pairs, ReplyError, ReplyRows, ResultSet};

const COLUMNS: [&str; 2] = ["field", "value"];

/// What CUTOVER answers when it does not abort, and SHOW CUTOVER shows of
/// the current or last cutover.
#[derive(Debug, Clone, PartialEq)]
pub struct CutoverReply {
    /// Counts cutovers since the proxy started.
    pub id: u64,
    /// Only preflight ran.
    pub dry_run: bool,
    /// Its state's name.
    pub state: String,
    /// Why it was called off (only then).
    pub reason: Option<String>,
    /// When it started, as the console prints times.
    pub started: String,
    /// The options it ran with, in one line.
    pub options: String,
    /// Gate closed to gate reopened, ms (once the gate was closed).
    pub pause_ms: Option<f64>,
    /// Client sessions when the flip started.
    pub sessions: u64,
    /// Sessions moved to the target.
    pub sessions_moved: u64,
    /// Sessions closed by the flip.
    pub sessions_closed: u64,
    /// Each session closed, with why.
    pub closed: Vec<String>,
    /// Keys the final pass synced.
    pub keys_synced: u64,
    /// Rows compared in the verify step.
    pub rows_verified: u64,
    /// Sequences set on the target.
    pub sequences_set: u64,
    /// The freeze marker's log position.
    pub freeze_lsn: Option<u64>,
    /// Capture on the target after the flip: where it logs, or why it is off.
    pub capture_on_target: Option<String>,
    /// Sessions connected to the target directly at preflight.
    pub target_direct_sessions: Vec<String>,
    /// Tables the reverse mapping cannot rebuild source rows for.
    pub reverse_mapping_errors: Vec<String>,
    /// Each step so far.
    pub steps: Vec<StepLine>,
}

/// One step of a cutover, as its report shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLine {
    /// The step's name.
    pub step: String,
    /// When it started, ms after the cutover started.
    pub at_ms: f64,
    /// How long it took, ms; `None` while it runs.
    pub took_ms: Option<f64>,
    /// What it did, or why it failed.
    pub detail: String,
}

const STEP: &str = "step.";
const RUNNING: &str = "running";

impl StepLine {
    fn value(&self) -> String {
        let took = self
            .took_ms
            .map_or_else(|| RUNNING.to_owned(), |m| format!("{} ms", fixed(m, 1)));
        format!("at {} ms, {took}: {}", fixed(self.at_ms, 1), self.detail)
    }

    fn parse(step: &str, value: &str) -> Option<StepLine> {
        let (at, rest) = value.strip_prefix("at ")?.split_once(" ms, ")?;
        let (took, detail) = rest.split_once(": ")?;
        let took_ms = match took {
            RUNNING => None,
            ms => Some(ms.strip_suffix(" ms")?.parse().ok()?),
        };
        Some(StepLine {
            step: step.to_owned(),
            at_ms: at.parse().ok()?,
            took_ms,
            detail: detail.to_owned(),
        })
    }
}

impl CutoverReply {
    fn put(&self, r: &mut Pairs) {
        r.put("id", self.id);
        r.put("dry_run", self.dry_run);
        r.put("state", &self.state);
        if let Some(reason) = &self.reason {
            r.put("reason", reason);
        }
        r.put("started", &self.started);
        r.put("options", &self.options);
        r.put_blank("pause_ms", self.pause_ms.map(|p| fixed(p, 1)));
        r.put("sessions", self.sessions);
        r.put("sessions_moved", self.sessions_moved);
        r.put("sessions_closed", self.sessions_closed);
        for why in &self.closed {
            r.put("closed", why);
        }
        r.put("keys_synced", self.keys_synced);
        r.put("rows_verified", self.rows_verified);
        r.put("sequences_set", self.sequences_set);
        r.put_blank("freeze_lsn", self.freeze_lsn);
        r.put_blank("capture_on_target", self.capture_on_target.as_ref());
        for s in &self.target_direct_sessions {
            r.put("target_direct_session", s);
        }
        for e in &self.reverse_mapping_errors {
            r.put("reverse_mapping_error", e);
        }
        for s in &self.steps {
            r.put(format!("{STEP}{}", s.step), s.value());
        }
    }

    fn read(f: &Fields<'_>) -> Result<CutoverReply, ReplyError> {
        let steps = f
            .entries::<String>(STEP)?
            .into_iter()
            .map(|e| {
                StepLine::parse(&e.id, &e.detail).ok_or_else(|| {
                    f.invalid(
                        &format!("{STEP}{}", e.id),
                        &e.detail,
                        "\"at <ms> ms, <ms> ms: <detail>\" or \"at <ms> ms, running: <detail>\"",
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(CutoverReply {
            id: f.req("id")?,
            dry_run: f.req("dry_run")?,
            state: f.req("state")?,
            reason: f.opt("reason")?,
            started: f.req("started")?,
            options: f.req("options")?,
            pause_ms: f.blank("pause_ms")?,
            sessions: f.req("sessions")?,
            sessions_moved: f.req("sessions_moved")?,
            sessions_closed: f.req("sessions_closed")?,
            closed: f.all("closed"),
            keys_synced: f.req("keys_synced")?,
            rows_verified: f.req("rows_verified")?,
            sequences_set: f.req("sequences_set")?,
            freeze_lsn: f.blank("freeze_lsn")?,
            capture_on_target: f.blank("capture_on_target")?,
            target_direct_sessions: f.all("target_direct_session"),
            reverse_mapping_errors: f.all("reverse_mapping_error"),
            steps,
        })
    }
}

impl ConsoleReply for CutoverReply {
    const COMMAND: &'static str = "CUTOVER";

    fn to_rows(&self) -> ResultSet {
        let mut r = Pairs::new(COLUMNS);
        self.put(&mut r);
        r.done()
    }

    fn from_rows(rows: &ReplyRows) -> Result<CutoverReply, ReplyError> {
        CutoverReply::read(&Fields::new(Self::COMMAND, COLUMNS, rows)?)
    }
}

/// What SHOW CUTOVER answers.
#[derive(Debug, Clone, PartialEq)]
pub enum ShowCutoverReply {
    /// No cutover has run since the proxy started.
    Idle,
    /// The current or last cutover.
    Last(Box<CutoverReply>),
}

/// The state SHOW CUTOVER gives when none has run.
const IDLE: &str = "idle";

impl ConsoleReply for ShowCutoverReply {
    const COMMAND: &'static str = "SHOW CUTOVER";

    fn to_rows(&self) -> ResultSet {
        let mut r = Pairs::new(COLUMNS);
        match self {
            ShowCutoverReply::Idle => {
                r.put("state", IDLE);
                r.put("note", "no cutover has run since the proxy started");
            }
            ShowCutoverReply::Last(c) => c.put(&mut r),
        }
        r.done()
    }

    fn from_rows(rows: &ReplyRows) -> Result<ShowCutoverReply, ReplyError> {
        let f = Fields::new(Self::COMMAND, COLUMNS, rows)?;
        if f.req::<String>("state")? == IDLE {
            return Ok(ShowCutoverReply::Idle);
        }
        CutoverReply::read(&f).map(|c| ShowCutoverReply::Last(Box::new(c)))
    }
}

#[cfg(test)]
pub(crate) mod samples {
    //! Replies as tests build them.

    use super::*;

    pub(crate) fn cutover_aborted() -> CutoverReply {
        CutoverReply {
            id: 3,
            dry_run: false,
            state: "aborted at freeze".to_owned(),
            reason: Some("2 transactions still open: session 7".to_owned()),
            started: "2026-11-18 11:06:40+00".to_owned(),
            options: "max_lag 1000 ms, drain_timeout 5000 ms".to_owned(),
            pause_ms: Some(38.2),
            sessions: 4,
            sessions_moved: 2,
            sessions_closed: 2,
            closed: vec!["session 9: temp table".to_owned(), "session 10: cursor".to_owned()],
            keys_synced: 17,
            rows_verified: 250,
            sequences_set: 1,
            freeze_lsn: Some(1234),
            capture_on_target: Some("on, logging to the log dir".to_owned()),
            target_direct_sessions: vec!["pid 77 (app@db)".to_owned()],
            reverse_mapping_errors: vec!["public.t: no key".to_owned()],
            steps: vec![
                StepLine {
                    step: "preflight".to_owned(),
                    at_ms: 0.0,
                    took_ms: Some(12.2),
                    detail: "ready: 4 sessions: all idle".to_owned(),
                },
                StepLine {
                    step: "freeze".to_owned(),
                    at_ms: 12.3,
                    took_ms: None,
                    detail: "draining: 2 open".to_owned(),
                },
            ],
        }
    }

    pub(crate) fn cutover_ready() -> CutoverReply {
        CutoverReply {
            dry_run: true,
            state: "dry run: ready".to_owned(),
            reason: None,
            pause_ms: None,
            sessions_closed: 0,
            closed: Vec::new(),
            freeze_lsn: None,
            capture_on_target: None,
            target_direct_sessions: Vec::new(),
            reverse_mapping_errors: Vec::new(),
            steps: Vec::new(),
            ..cutover_aborted()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fails_naming, round_trip, with_extra_row, without};
    use super::samples::*;
    use super::*;

    #[test]
    fn steps_read_back_with_colons_in_their_detail() {
        let rows = ReplyRows::from(&cutover_aborted().to_rows());
        let step = rows.rows.iter().find(|r| r[0] == "step.preflight").unwrap();
        assert_eq!(step[1], "at 0.0 ms, 12.2 ms: ready: 4 sessions: all idle");
        let step = rows.rows.iter().find(|r| r[0] == "step.freeze").unwrap();
        assert_eq!(step[1], "at 12.3 ms, running: draining: 2 open");
    }

    #[test]
    fn round_trips() {
        round_trip(&cutover_aborted());
        round_trip(&cutover_ready());
        round_trip(&ShowCutoverReply::Idle);
        round_trip(&ShowCutoverReply::Last(Box::new(cutover_aborted())));
        round_trip(&ShowCutoverReply::Last(Box::new(cutover_ready())));
    }

    #[test]
    fn idle_is_as_psql_shows_it() {
        let rows = ReplyRows::from(&ShowCutoverReply::Idle.to_rows());
        assert_eq!(rows.columns, ["field", "value"]);
        assert_eq!(
            rows.rows,
            [
                ["state", "idle"],
                ["note", "no cutover has run since the proxy started"]
            ]
        );
    }

    #[test]
    fn extra_rows_and_missing_optional_rows_decode_missing_required_ones_do_not() {
        let reply = cutover_aborted();
        assert_eq!(CutoverReply::from_rows(&with_extra_row(&reply)), Ok(reply.clone()));
        let no_reason = CutoverReply::from_rows(&without(&reply, "reason")).unwrap();
        assert_eq!(no_reason.reason, None);
        fails_naming::<CutoverReply>(&without(&reply, "keys_synced"), "keys_synced");
        fails_naming::<CutoverReply>(&without(&reply, "freeze_lsn"), "freeze_lsn");
        let last = ShowCutoverReply::Last(Box::new(reply.clone()));
        fails_naming::<ShowCutoverReply>(&without(&last, "pause_ms"), "pause_ms");
        fails_naming::<ShowCutoverReply>(&without(&ShowCutoverReply::Idle, "state"), "state");
    }

    #[test]
    fn a_step_that_does_not_read_is_named() {
        let mut rows = ReplyRows::from(&cutover_aborted().to_rows());
        let step = rows.rows.iter_mut().find(|r| r[0] == "step.freeze").unwrap();
        step[1] = "soon".to_owned();
        let e = CutoverReply::from_rows(&rows).unwrap_err().to_string();
        assert!(e.contains("CUTOVER reply's \"step.freeze\" is \"soon\""), "{e}");
    }
}
