//! What the proxy knows of one client session: its transaction status, the
//! conversation with its backend (the requests sent and not yet answered,
//! so it knows when the session is at a transaction boundary), its prepared
//! statements, session settings, LISTEN channels, and whatever pins it to
//! its backend.
//!
//! How answers pair with requests is the [`Conversation`]'s to say; each
//! entry carries what this state needs of its request once answered (a
//! Query's effects, a Parse's name and bytes, a Describe's parameters).

use super::conversation::{Answer, Conversation, EntryId, Origin, Request};
use super::effects::{self, Effect, Pin, Touched};
use super::statements::{Description, Statements};
use crate::wire::backend::{tag as btag, BackendMessage, TxStatus};
use crate::wire::frontend::{tag as ftag, FrontendMessage, TargetKind};
use crate::wire::{Reader, WireError};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

mod moves;
pub use moves::{answers_move, raises};

/// What the session state keeps of one request until it is answered.
#[derive(Debug, Default)]
pub struct Pending(Kind);

#[derive(Debug, Default)]
enum Kind {
    /// Nothing to learn from its answer (a Bind, an Execute, capture's own
    /// requests).
    #[default]
    Nothing,
    Query {
        started: Instant,
        /// One entry per statement, consumed per CommandComplete; `None`
        /// when no statement changes session state.
        effects: Option<std::vec::IntoIter<Option<Effect>>>,
    },
    /// A Sync or a FunctionCall.
    Ready {
        started: Instant,
    },
    Parse {
        /// The statement's name (`""` for the unnamed one).
        name: String,
        /// The message, to re-prepare it on another backend.
        parse: Bytes,
    },
    Describe {
        /// The statement described (`None` for a portal).
        statement: Option<String>,
        /// Its parameter types, once the ParameterDescription came.
        params: Option<Vec<u32>>,
    },
    Close {
        statement: Option<String>,
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

/// The state of one session; `A` is what write capture notes per
/// prepared statement (see [`Statements`]).
#[derive(Debug)]
pub struct SessionState<A = ()> {
    tx: TxStatus,
    conv: Conversation<Pending>,
    statements: Statements<A>,
    /// What the session may have changed of its backend's state, for the
    /// probe a move runs first.
    touched: Touched,
    settings: BTreeMap<String, String>,
    listens: BTreeSet<String>,
    pins: BTreeSet<Pin>,
    /// Effects of the open transaction, applied when it commits.
    tx_effects: Vec<Effect>,
    tx_rolled_back: bool,
}

impl<A> Default for SessionState<A> {
    fn default() -> Self {
        SessionState::new()
    }
}

impl<A> SessionState<A> {
    /// A fresh session, idle.
    pub fn new() -> SessionState<A> {
        SessionState {
            tx: TxStatus::Idle,
            conv: Conversation::new(),
            statements: Statements::default(),
            touched: Touched::default(),
            settings: BTreeMap::new(),
            listens: BTreeSet::new(),
            pins: BTreeSet::new(),
            tx_effects: Vec::new(),
            tx_rolled_back: false,
        }
    }

    /// Transaction status from the last ReadyForQuery.
    pub fn tx_status(&self) -> TxStatus {
        self.tx
    }

    /// The requests in flight on the backend.
    pub fn conversation(&self) -> &Conversation<Pending> {
        &self.conv
    }

    /// Whether nothing is in flight and no transaction block is open.
    pub fn at_boundary(&self) -> bool {
        self.conv.is_empty() && !self.conv.unsynced() && self.tx == TxStatus::Idle
    }

    /// The session's phase.
    pub fn phase(&self) -> Phase {
        if self.conv.copy_in() {
            return Phase::Copying;
        }
        match self.tx {
            TxStatus::InTransaction => Phase::InTransaction,
            TxStatus::Failed => Phase::Failed,
            TxStatus::Idle if self.conv.is_empty() && !self.conv.unsynced() => Phase::Idle,
            TxStatus::Idle => Phase::Active,
        }
    }

    /// The statement registry.
    pub fn statements(&self) -> &Statements<A> {
        &self.statements
    }

    /// The statement registry, to change.
    pub fn statements_mut(&mut self) -> &mut Statements<A> {
        &mut self.statements
    }

    /// What the session may have changed of its backend's state.
    pub fn touched(&self) -> &Touched {
        &self.touched
    }

    /// What pins the session, as its backend said.
    pub fn set_pins(&mut self, pins: BTreeSet<Pin>) {
        self.pins = pins;
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

    /// Records a client message sent to the server, and returns the entry
    /// it opened in the conversation (`None` for messages owed no answer).
    /// Errors are malformed messages: the caller closes the session with
    /// 08P01.
    pub fn on_client(&mut self, msg: FrontendMessage<'_>, now: Instant) -> Result<Option<EntryId>, WireError> {
        let tag = msg.tag();
        let kind = match tag {
            ftag::QUERY => {
                let sql = Reader::new(msg.body(), "Query").cstr_bytes()?;
                self.touched.note(sql);
                // A simple query replaces the unnamed statement.
                self.statements.close_sent("");
                Kind::Query {
                    started: now,
                    effects: effects::detect_all(sql).map(Vec::into_iter),
                }
            }
            ftag::SYNC | ftag::FUNCTION_CALL => Kind::Ready { started: now },
            ftag::COPY_DONE | ftag::COPY_FAIL => {
                self.conv.copy_end();
                return Ok(None);
            }
            ftag::PARSE => {
                let parse = msg.parse()?;
                if let Some(pin) = effects::detect_pin(parse.query) {
                    self.tx_effects.push(Effect::Pin(pin));
                }
                self.touched.note(parse.query);
                self.statements.parse_sent(parse.name);
                Kind::Parse {
                    name: parse.name.to_owned(),
                    parse: Bytes::copy_from_slice(msg.bytes()),
                }
            }
            ftag::BIND => {
                msg.bind()?;
                Kind::Nothing
            }
            ftag::DESCRIBE => {
                let target = msg.target()?;
                Kind::Describe {
                    statement: (target.kind == TargetKind::Statement).then(|| target.name.to_owned()),
                    params: None,
                }
            }
            ftag::CLOSE => {
                let target = msg.target()?;
                let statement = (target.kind == TargetKind::Statement).then(|| target.name.to_owned());
                if let Some(name) = &statement {
                    self.statements.close_sent(name);
                }
                Kind::Close { statement }
            }
            _ => Kind::Nothing,
        };
        // Flush, COPY data, Terminate and unknown kinds expect no answer.
        let Some(request) = Request::of(tag) else {
            return Ok(None);
        };
        Ok(self.conv.push(Origin::Client, request, Pending(kind)))
    }

    /// Records a request the proxy sends on its own (capture's): its answer
    /// is not the client's.
    pub fn open(&mut self, origin: Origin, request: Request) -> Option<EntryId> {
        self.conv.push(origin, request, Pending::default())
    }

    /// The proxy sent the message that goes on with the client's request
    /// it held back (see [`Self::unseen`]): that entry is owed its answer.
    pub fn resume(&mut self) -> Option<EntryId> {
        self.conv.resume()
    }

    /// Places a message from the server in the conversation: which request
    /// it answers. Every server message goes through here first; then
    /// [`Self::seen`] or [`Self::unseen`] takes the answer.
    pub fn hear(&mut self, msg: BackendMessage<'_>) -> Answer<Pending> {
        self.conv.on_server(msg.tag())
    }

    /// The client sees `msg` (the server's message, or what the proxy made
    /// of it), which [`Self::hear`] placed as `answer`: what it means for
    /// the session.
    pub fn seen(&mut self, msg: BackendMessage<'_>, answer: Answer<Pending>, now: Instant) -> ServerEvent {
        let mut event = ServerEvent::default();
        for dropped in answer.dropped {
            self.forget(dropped.data);
        }
        let done = answer.done.map(|e| e.data.0);
        match msg.tag() {
            btag::READY_FOR_QUERY => {
                let status = msg.ready_status().unwrap_or(TxStatus::Idle);
                let started = match done {
                    Some(Kind::Query { started, .. } | Kind::Ready { started }) => Some(started),
                    _ => None,
                };
                self.tx = status;
                if status == TxStatus::Idle {
                    self.end_transaction();
                }
                event.ready = Some(started.map_or(Duration::ZERO, |s| now - s));
                event.at_boundary = self.at_boundary();
            }
            btag::PARSE_COMPLETE => {
                if let Some(Kind::Parse { name, parse }) = done {
                    self.statements.prepared(&name, parse);
                }
            }
            btag::CLOSE_COMPLETE => {
                if let Some(Kind::Close { statement: Some(name) }) = done {
                    self.statements.closed(&name);
                }
            }
            btag::PARAMETER_DESCRIPTION => {
                if let Some(Kind::Describe { params, .. }) = self.kind_mut(answer.to.map(|h| h.id)) {
                    *params = msg.parameter_types().ok();
                }
            }
            btag::ROW_DESCRIPTION | btag::NO_DATA => {
                if let Some(Kind::Describe {
                    statement: Some(name),
                    params,
                }) = done
                {
                    let columns = (msg.tag() == btag::ROW_DESCRIPTION).then(|| msg.row_columns().unwrap_or_default());
                    let params = params.unwrap_or_default();
                    self.statements.described(&name, Description { params, columns });
                }
            }
            btag::COMMAND_COMPLETE => self.on_command_complete(msg, answer.to.map(|h| h.id)),
            btag::ERROR_RESPONSE => {
                event.error = true;
                if let Some(kind) = done {
                    self.forget(Pending(kind));
                }
            }
            _ => {}
        }
        event
    }

    /// The client does not see the message [`Self::hear`] placed as
    /// `answer`. When `continues`, it ended the client's request on the
    /// wire but the proxy goes on with that request with a message of its
    /// own: the request stays in flight until [`Self::resume`].
    pub fn unseen(&mut self, answer: Answer<Pending>, continues: bool) {
        for dropped in answer.dropped {
            self.forget(dropped.data);
        }
        if let (true, Some(done)) = (continues, answer.done) {
            self.conv.park(done);
        }
    }

    /// A request the server will not answer (or answered with an error).
    fn forget(&mut self, pending: Pending) {
        if let Kind::Reprepare { name } | Kind::Recheck { name, .. } = pending.0 {
            // Skipped or refused: prepared again at its next use.
            self.statements.reprepare_failed(&name);
        }
    }

    fn kind_mut(&mut self, id: Option<EntryId>) -> Option<&mut Kind> {
        Some(&mut self.conv.get_mut(id?)?.data.0)
    }

    fn on_command_complete(&mut self, msg: BackendMessage<'_>, to: Option<EntryId>) {
        let Ok(tag) = msg.command_tag() else { return };
        if tag == "ROLLBACK" {
            // Also the tag of ROLLBACK TO SAVEPOINT and of a COMMIT that
            // failed: forgetting a SET is safer than inventing one.
            self.tx_rolled_back = true;
            self.tx_effects.clear();
            return;
        }
        if let Some(Kind::Query {
            effects: Some(effects), ..
        }) = self.kind_mut(to)
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
