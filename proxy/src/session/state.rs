//! What the proxy knows of one client session: its transaction status, the
//! requests forwarded and not yet answered (so it knows when the session is
//! at a transaction boundary), its prepared statements, session settings,
//! LISTEN channels, and whatever pins it to its backend.
//!
//! The pending queue follows the protocol's own pairing: every Query, Sync
//! and FunctionCall is answered by exactly one ReadyForQuery; Parse, Bind and
//! Close by their completion messages; Describe by RowDescription or NoData;
//! Execute by CommandComplete, EmptyQueryResponse or PortalSuspended; and an
//! error in an extended batch makes the server skip everything up to the Sync.

use super::effects::{self, Effect, Pin, Touched};
use super::statements::{Description, Statements};
use crate::wire::backend::{tag as btag, BackendMessage, TxStatus};
use crate::wire::frontend::{tag as ftag, FrontendMessage, TargetKind};
use crate::wire::{Reader, WireError};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// A request forwarded to the server and not yet answered.
#[derive(Debug)]
enum Pending {
    Query {
        started: Instant,
        /// One entry per statement, consumed per CommandComplete; `None`
        /// when no statement changes session state.
        effects: Option<std::vec::IntoIter<Option<Effect>>>,
    },
    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail). No reply
    /// of its own; it marks which Syncs the server ignores (see `on_copy_in`).
    CopyEnd,
    FunctionCall {
        started: Instant,
    },
    Sync {
        started: Instant,
    },
    Parse {
        /// The statement's name (`""` for the unnamed one).
        name: String,
        /// The message, to re-prepare it on another backend.
        parse: Bytes,
    },
    Bind,
    Describe {
        /// The statement described (`None` for a portal).
        statement: Option<String>,
        /// Its parameter types, once the ParameterDescription came.
        params: Option<Vec<u32>>,
    },
    /// A Parse the proxy sent to re-prepare a statement on a new backend:
    /// its ParseComplete is not the client's.
    Reprepare {
        name: String,
    },
    /// A Describe the proxy sent after a re-prepare, to compare the
    /// statement's types with what the client was told; the client's
    /// message that needs the statement waits for it.
    Recheck {
        name: String,
        params: Option<Vec<u32>>,
    },
    /// A Parse or Bind the proxy sent in place of a client's Bind (to fail
    /// it as PostgreSQL would): its completion is not the client's.
    Injected,
    /// The Execute of that statement: it fails, and the client gets the
    /// error PostgreSQL gives for a Bind of a statement whose types changed.
    Raise,
    Execute,
    Close {
        statement: Option<String>,
    },
}

impl Pending {
    fn ends_with_ready(&self) -> bool {
        matches!(
            self,
            Pending::Query { .. } | Pending::FunctionCall { .. } | Pending::Sync { .. }
        )
    }
}

/// Where a session is, for SHOW SESSIONS and the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// At a transaction boundary, nothing in flight.
    Idle,
    /// Work in flight outside a transaction block.
    Active,
    /// Inside a transaction block.
    InTransaction,
    /// Inside a failed transaction block.
    Failed,
    /// In COPY FROM STDIN, the client sending data.
    Copying,
}

impl Phase {
    /// The name shown to DBAs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Active => "active",
            Phase::InTransaction => "idle in transaction",
            Phase::Failed => "idle in failed transaction",
            Phase::Copying => "copying",
        }
    }
}

/// What a server message meant for the session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerEvent {
    /// A ReadyForQuery arrived; the latency of the request it answered.
    pub ready: Option<Duration>,
    /// The session is now at a transaction boundary.
    pub at_boundary: bool,
    /// The message was an ErrorResponse.
    pub error: bool,
}

/// The state of one session.
#[derive(Debug)]
pub struct SessionState {
    tx: TxStatus,
    pending: VecDeque<Pending>,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    statements: Statements,
    /// What the session may have changed of its backend's state, for the
    /// probe a move runs first.
    touched: Touched,
    settings: BTreeMap<String, String>,
    listens: BTreeSet<String>,
    pins: BTreeSet<Pin>,
    /// Effects of the open transaction, applied when it commits.
    tx_effects: Vec<Effect>,
    tx_rolled_back: bool,
    /// The server is in COPY FROM STDIN and the client has not ended it yet.
    copy_in: bool,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState::new()
    }
}

impl SessionState {
    /// A fresh session, idle.
    pub fn new() -> SessionState {
        SessionState {
            tx: TxStatus::Idle,
            pending: VecDeque::new(),
            unsynced: false,
            statements: Statements::default(),
            touched: Touched::default(),
            settings: BTreeMap::new(),
            listens: BTreeSet::new(),
            pins: BTreeSet::new(),
            tx_effects: Vec::new(),
            tx_rolled_back: false,
            copy_in: false,
        }
    }

    /// Transaction status from the last ReadyForQuery.
    pub fn tx_status(&self) -> TxStatus {
        self.tx
    }

    /// Whether nothing is in flight and no transaction block is open.
    pub fn at_boundary(&self) -> bool {
        self.pending.is_empty() && !self.unsynced && self.tx == TxStatus::Idle
    }

    /// The session's phase.
    pub fn phase(&self) -> Phase {
        if self.copy_in {
            return Phase::Copying;
        }
        match self.tx {
            TxStatus::InTransaction => Phase::InTransaction,
            TxStatus::Failed => Phase::Failed,
            TxStatus::Idle if self.pending.is_empty() && !self.unsynced => Phase::Idle,
            TxStatus::Idle => Phase::Active,
        }
    }

    /// The statement registry.
    pub fn statements(&self) -> &Statements {
        &self.statements
    }

    /// The statement registry, to change.
    pub fn statements_mut(&mut self) -> &mut Statements {
        &mut self.statements
    }

    /// What the session may have changed of its backend's state.
    pub fn touched(&self) -> &Touched {
        &self.touched
    }

    /// The session is on a new backend whose state the move made equal to
    /// the old one's: what was touched is replayed, nothing is pending.
    pub fn moved(&mut self, touched: Touched) {
        self.touched = touched;
        // Statements prepared before may still touch state when run here.
        for parse in self.statements.parses() {
            if let Ok(p) = FrontendMessage::new(parse).parse() {
                self.touched.note(p.query);
            }
        }
        // Nothing pins a session that could move.
        self.pins.clear();
        self.statements.moved();
    }

    /// Queues, ahead of a client's Bind or Describe of `name`, the Parse
    /// that re-prepares it on a new backend (its parameter type OIDs passed
    /// through `map`), and, when the client knows its types, a Describe and
    /// Flush to compare them. Returns the bytes and whether the client's
    /// message must wait for the comparison.
    pub fn prepare_ahead(
        &mut self,
        name: &str,
        map: &dyn Fn(u32) -> u32,
    ) -> Result<Option<(bytes::BytesMut, bool)>, WireError> {
        let Some(st) = self.statements.needs_prepare(name) else {
            return Ok(None);
        };
        let recheck = st.description.is_some();
        let parse = crate::wire::frontend::parse_with_types(&FrontendMessage::new(&st.parse), map)?;
        let mut out = bytes::BytesMut::from(&parse[..]);
        self.pending.push_back(Pending::Reprepare { name: name.to_owned() });
        if recheck {
            crate::wire::frontend::describe_statement(&mut out, name);
            crate::wire::frontend::flush(&mut out);
            self.pending.push_back(Pending::Recheck {
                name: name.to_owned(),
                params: None,
            });
        }
        self.statements.reprepared(name);
        self.unsynced = true;
        Ok(Some((out, recheck)))
    }

    /// Records the Parse and Bind the proxy sends in place of a client's
    /// Bind (their completions are dropped) and the Execute after them.
    pub fn injected_in_place(&mut self) {
        self.pending.push_back(Pending::Injected);
        self.pending.push_back(Pending::Injected);
        self.pending.push_back(Pending::Raise);
        self.statements.unnamed_taken();
        self.unsynced = true;
    }

    /// A move's probe ran on the backend and the session stays there.
    pub fn probed(&mut self) {
        self.statements.unnamed_lost();
    }

    /// Whether the next error answers the proxy's stand-in for a Bind of a
    /// statement whose types changed.
    pub fn raising(&self) -> bool {
        self.pending
            .iter()
            .find(|p| !matches!(p, Pending::Injected | Pending::CopyEnd))
            .is_some_and(|p| matches!(p, Pending::Raise))
    }

    /// What pins the session, as its backend said.
    pub fn set_pins(&mut self, pins: BTreeSet<Pin>) {
        self.pins = pins;
    }

    /// Whether a client message waits for a statement recheck.
    pub fn rechecking(&self) -> bool {
        self.pending.iter().any(|p| matches!(p, Pending::Recheck { .. }))
    }

    /// Takes a server message that answers the proxy rather than the
    /// client: `true` when it is not the client's (errors are never taken:
    /// the client sees them). A recheck it ends shows in [`Self::rechecking`].
    pub fn take_proxy_answer(
        &mut self,
        msg: BackendMessage<'_>,
        same: &dyn Fn(&Description, &Description) -> bool,
    ) -> bool {
        let tag = msg.tag();
        // A CopyEnd marker whose COPY never started expects nothing.
        while matches!(self.pending.front(), Some(Pending::CopyEnd)) {
            self.pending.pop_front();
        }
        let Some(front) = self.pending.front_mut() else {
            return false;
        };
        match front {
            Pending::Reprepare { .. } | Pending::Injected
                if matches!(tag, btag::PARSE_COMPLETE | btag::BIND_COMPLETE) =>
            {
                self.pending.pop_front();
                true
            }
            Pending::Recheck { params, .. } if tag == btag::PARAMETER_DESCRIPTION => {
                *params = msg.parameter_types().ok();
                true
            }
            Pending::Recheck { .. } if matches!(tag, btag::ROW_DESCRIPTION | btag::NO_DATA) => {
                let Some(Pending::Recheck { name, params }) = self.pending.pop_front() else {
                    return false;
                };
                let now = Description {
                    params: params.unwrap_or_default(),
                    columns: (tag == btag::ROW_DESCRIPTION).then(|| msg.row_columns().unwrap_or_default()),
                };
                self.statements.rechecked(&name, &now, same);
                true
            }
            _ => false,
        }
    }

    /// Session-level settings: parameter name → the SET statement.
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.settings
    }

    /// Channels the session listens on.
    pub fn listens(&self) -> &BTreeSet<String> {
        &self.listens
    }

    /// What pins the session to its backend.
    pub fn pins(&self) -> &BTreeSet<Pin> {
        &self.pins
    }

    /// Records a message forwarded to the server. Errors are malformed
    /// messages: the caller closes the session with 08P01.
    pub fn on_client(&mut self, msg: FrontendMessage<'_>, now: Instant) -> Result<(), WireError> {
        match msg.tag() {
            ftag::QUERY => {
                let sql = Reader::new(msg.body(), "Query").cstr_bytes()?;
                self.touched.note(sql);
                // A simple query replaces the unnamed statement.
                self.statements.close_sent("");
                self.pending.push_back(Pending::Query {
                    started: now,
                    effects: effects::detect_all(sql).map(Vec::into_iter),
                });
            }
            ftag::SYNC => {
                self.unsynced = false;
                // The server ignores Sync while it receives COPY data.
                if !self.copy_in {
                    self.pending.push_back(Pending::Sync { started: now });
                }
            }
            ftag::COPY_DONE | ftag::COPY_FAIL => {
                if !std::mem::take(&mut self.copy_in) {
                    // Sent ahead of the server's CopyInResponse (pipelined).
                    self.pending.push_back(Pending::CopyEnd);
                }
            }
            ftag::FUNCTION_CALL => self.pending.push_back(Pending::FunctionCall { started: now }),
            ftag::PARSE => {
                let parse = msg.parse()?;
                if let Some(pin) = effects::detect_pin(parse.query) {
                    self.tx_effects.push(Effect::Pin(pin));
                }
                self.touched.note(parse.query);
                self.statements.parse_sent(parse.name);
                self.unsynced = true;
                self.pending.push_back(Pending::Parse {
                    name: parse.name.to_owned(),
                    parse: Bytes::copy_from_slice(msg.bytes()),
                });
            }
            ftag::BIND => {
                msg.bind()?;
                self.unsynced = true;
                self.pending.push_back(Pending::Bind);
            }
            ftag::DESCRIBE => {
                let target = msg.target()?;
                let statement = (target.kind == TargetKind::Statement).then(|| target.name.to_owned());
                self.unsynced = true;
                self.pending.push_back(Pending::Describe {
                    statement,
                    params: None,
                });
            }
            ftag::EXECUTE => {
                self.unsynced = true;
                self.pending.push_back(Pending::Execute);
            }
            ftag::CLOSE => {
                let target = msg.target()?;
                let statement = (target.kind == TargetKind::Statement).then(|| target.name.to_owned());
                if let Some(name) = &statement {
                    self.statements.close_sent(name);
                }
                self.unsynced = true;
                self.pending.push_back(Pending::Close { statement });
            }
            // Flush, COPY data, Terminate and unknown kinds expect no reply of
            // their own.
            _ => {}
        }
        Ok(())
    }

    /// Records a message from the server.
    pub fn on_server(&mut self, msg: BackendMessage<'_>, now: Instant) -> ServerEvent {
        let mut event = ServerEvent::default();
        match msg.tag() {
            btag::READY_FOR_QUERY => {
                let status = msg.ready_status().unwrap_or(TxStatus::Idle);
                let mut started = None;
                while let Some(p) = self.pending.pop_front() {
                    if p.ends_with_ready() {
                        started = match p {
                            Pending::Query { started, .. }
                            | Pending::FunctionCall { started }
                            | Pending::Sync { started } => Some(started),
                            _ => None,
                        };
                        break;
                    }
                }
                self.tx = status;
                self.copy_in = false;
                if status == TxStatus::Idle {
                    self.end_transaction();
                }
                event.ready = Some(started.map_or(Duration::ZERO, |s| now - s));
                event.at_boundary = self.at_boundary();
            }
            btag::PARSE_COMPLETE => {
                if let Some(Pending::Parse { name, parse }) = self.pop_if(|p| matches!(p, Pending::Parse { .. })) {
                    self.statements.prepared(&name, parse);
                }
            }
            btag::BIND_COMPLETE => {
                self.pop_if(|p| matches!(p, Pending::Bind));
            }
            btag::CLOSE_COMPLETE => {
                if let Some(Pending::Close { statement: Some(name) }) =
                    self.pop_if(|p| matches!(p, Pending::Close { .. }))
                {
                    self.statements.closed(&name);
                }
            }
            btag::PARAMETER_DESCRIPTION => {
                if let Some(Pending::Describe { params, .. }) = self.pending.front_mut() {
                    *params = msg.parameter_types().ok();
                }
            }
            btag::ROW_DESCRIPTION | btag::NO_DATA => {
                if let Some(Pending::Describe {
                    statement: Some(name),
                    params,
                }) = self.pop_if(|p| matches!(p, Pending::Describe { .. }))
                {
                    let columns = (msg.tag() == btag::ROW_DESCRIPTION).then(|| msg.row_columns().unwrap_or_default());
                    let params = params.unwrap_or_default();
                    self.statements.described(&name, Description { params, columns });
                }
            }
            btag::COMMAND_COMPLETE | btag::EMPTY_QUERY_RESPONSE | btag::PORTAL_SUSPENDED => {
                if msg.tag() == btag::COMMAND_COMPLETE {
                    self.on_command_complete(msg);
                }
                self.pop_if(|p| matches!(p, Pending::Execute));
            }
            btag::COPY_IN_RESPONSE => self.on_copy_in(),
            btag::ERROR_RESPONSE => {
                event.error = true;
                // An error ends copy-in mode; the client's next Sync counts.
                self.copy_in = false;
                // In an extended batch the server now skips to the Sync.
                while let Some(p) = self.pending.front() {
                    if p.ends_with_ready() {
                        break;
                    }
                    if let Some(Pending::Reprepare { name } | Pending::Recheck { name, .. }) = self.pending.pop_front()
                    {
                        // Skipped or refused: prepared again at its next use.
                        self.statements.reprepare_failed(&name);
                    }
                }
            }
            _ => {}
        }
        event
    }

    /// The server entered COPY FROM STDIN for the request at the front. It
    /// ignores every Sync it reads until the client's CopyDone/CopyFail, so
    /// the Syncs forwarded in that span get no ReadyForQuery: forget them.
    fn on_copy_in(&mut self) {
        let end = self
            .pending
            .iter()
            .skip(1)
            .position(|p| matches!(p, Pending::CopyEnd))
            .map(|i| i + 1);
        let stop = end.unwrap_or(self.pending.len());
        let mut i = 1;
        let mut stop_at = stop;
        while i < stop_at {
            if matches!(self.pending[i], Pending::Sync { .. }) {
                self.pending.remove(i);
                stop_at -= 1;
            } else {
                i += 1;
            }
        }
        match end {
            Some(_) => {
                self.pending.remove(stop_at);
            }
            None => self.copy_in = true,
        }
    }

    fn pop_if(&mut self, f: impl Fn(&Pending) -> bool) -> Option<Pending> {
        // A CopyEnd marker whose COPY never started (the server failed the
        // statement first) expects nothing.
        while matches!(self.pending.front(), Some(Pending::CopyEnd)) {
            self.pending.pop_front();
        }
        if self.pending.front().is_some_and(f) {
            self.pending.pop_front()
        } else {
            None
        }
    }

    fn on_command_complete(&mut self, msg: BackendMessage<'_>) {
        let Ok(tag) = msg.command_tag() else { return };
        if tag == "ROLLBACK" {
            // Also the tag of ROLLBACK TO SAVEPOINT and of a COMMIT that
            // failed: forgetting a SET is safer than inventing one.
            self.tx_rolled_back = true;
            self.tx_effects.clear();
            return;
        }
        if let Some(Pending::Query {
            effects: Some(effects), ..
        }) = self.pending.front_mut()
        {
            if let Some(Some(e)) = effects.next() {
                self.tx_effects.push(e);
            }
        }
    }

    fn end_transaction(&mut self) {
        let effects = std::mem::take(&mut self.tx_effects);
        if std::mem::take(&mut self.tx_rolled_back) {
            return;
        }
        for effect in effects {
            self.apply(effect);
        }
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Set { name, statement } => {
                self.settings.insert(name, statement);
            }
            Effect::Reset(name) => {
                self.settings.remove(&name);
            }
            Effect::ResetAll => self.settings.clear(),
            Effect::Listen(ch) => {
                self.listens.insert(ch);
            }
            Effect::Unlisten(ch) => {
                self.listens.remove(&ch);
            }
            Effect::UnlistenAll => self.listens.clear(),
            Effect::Deallocate(name) => self.statements.closed(&name),
            Effect::DeallocateAll => self.statements.clear(),
            Effect::DiscardAll => {
                self.settings.clear();
                self.listens.clear();
                self.statements.clear();
                self.pins.clear();
                // Back to a fresh backend's state (advisory locks and
                // cursors are released too).
                self.touched = Touched::default();
            }
            Effect::Pin(pin) => {
                self.pins.insert(pin);
            }
        }
    }
}

#[cfg(test)]
mod tests;
