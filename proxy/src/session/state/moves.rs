//! The session state's side of a move: what a new backend is told ahead of
//! the client's messages (statements re-prepared on first use, their types
//! re-checked, a changed statement failed as PostgreSQL would) and the
//! answers to those requests, which are the proxy's and not the client's.

use super::{Kind, Pending, SessionState};
use crate::session::conversation::{Answer, Origin, Request};
use crate::session::effects::Touched;
use crate::session::statements::Description;
use crate::wire::backend::{tag as btag, BackendMessage};
use crate::wire::frontend::FrontendMessage;
use crate::wire::WireError;

impl<A> SessionState<A> {
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
        let name = name.to_owned();
        if recheck {
            crate::wire::frontend::describe_statement(&mut out, &name);
            crate::wire::frontend::flush(&mut out);
        }
        self.statements.reprepared(&name);
        self.open_move(Request::Parse, Kind::Reprepare { name: name.clone() });
        if recheck {
            self.open_move(Request::Describe, Kind::Recheck { name, params: None });
        }
        Ok(Some((out, recheck)))
    }

    /// Records the Parse and Bind the proxy sends in place of a client's
    /// Bind (their completions are dropped) and the Execute after them.
    pub fn injected_in_place(&mut self) {
        self.open_move(Request::Parse, Kind::Injected);
        self.open_move(Request::Bind, Kind::Injected);
        self.open_move(Request::Execute, Kind::Raise);
        self.statements.unnamed_taken();
    }

    fn open_move(&mut self, request: Request, kind: Kind) {
        self.conv.push(Origin::Move, request, Pending(kind));
    }

    /// A move's probe ran on the backend and the session stays there.
    pub fn probed(&mut self) {
        self.statements.unnamed_lost();
    }

    /// Whether a client message waits for a statement recheck.
    pub fn rechecking(&self) -> bool {
        self.conv.entries().any(|e| matches!(e.data.0, Kind::Recheck { .. }))
    }

    /// An answer to a request of the move's (see [`Self::answers_move`]).
    /// A recheck it ends shows in [`Self::rechecking`].
    pub fn on_move_answer(
        &mut self,
        msg: BackendMessage<'_>,
        answer: Answer<Pending>,
        same: &dyn Fn(&Description, &Description) -> bool,
    ) {
        let tag = msg.tag();
        if tag == btag::PARAMETER_DESCRIPTION {
            if let Some(Kind::Recheck { params, .. }) = self.kind_mut(answer.to.map(|h| h.id)) {
                *params = msg.parameter_types().ok();
            }
            return;
        }
        if let Some(Kind::Recheck { name, params }) = answer.done.map(|e| e.data.0) {
            let now = Description {
                params: params.unwrap_or_default(),
                columns: (tag == btag::ROW_DESCRIPTION).then(|| msg.row_columns().unwrap_or_default()),
            };
            self.statements.rechecked(&name, &now, same);
        }
    }
}

/// Whether an answer is the error of the proxy's stand-in for a Bind
/// of a statement whose types changed.
pub fn raises(answer: &Answer<Pending>) -> bool {
    answer.done.as_ref().is_some_and(|e| matches!(e.data.0, Kind::Raise))
}

/// Whether `msg`, placed as `answer`, answers the move's own request
/// and not the client's: [`SessionState::on_move_answer`] takes it. Errors are
/// never the move's: the client sees them.
pub fn answers_move(answer: &Answer<Pending>, msg: BackendMessage<'_>) -> bool {
    answer.is_from(Origin::Move) && msg.tag() != btag::ERROR_RESPONSE
}
