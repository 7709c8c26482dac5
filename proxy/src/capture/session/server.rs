//! The server side: what each server message becomes for the client, the
//! keys read from the rows the splices return, and the steps a held query
//! takes once its answer is in.

use super::analyze::key_text;
use super::{CommitStep, Expect, Note, Plan, QueryEnd, ServerAction, SessionCapture, StmtInfo, Tap, Work, Written};
use crate::capture::copy::CopyReader;
use crate::capture::rows;
use crate::capture::TxControl;
use crate::session::conversation::{Answer, Head, Origin};
use crate::wire::backend::{tag as btag, BackendMessage};
use crate::wire::WireError;
use bytes::BytesMut;
use std::sync::Arc;
use switchyard_replay::catalog::parse_search_path;

/// Server messages that carry a statement's output rather than its
/// completion (see [`SessionCapture::on_server`]).
fn starts_output(tag: u8) -> bool {
    matches!(
        tag,
        btag::ROW_DESCRIPTION
            | btag::DATA_ROW
            | btag::EMPTY_QUERY_RESPONSE
            | btag::ERROR_RESPONSE
            | btag::COPY_IN_RESPONSE
            | btag::COPY_OUT_RESPONSE
            | btag::COPY_BOTH_RESPONSE
            | btag::COPY_DATA
            | btag::COPY_DONE
    )
}

/// What the client is owed of a wrapped query and cannot have before it
/// commits: from its last CommandComplete on.
#[derive(Debug, Default)]
pub(super) struct Deferred {
    pub(super) bytes: BytesMut,
    /// Where the last CommandComplete starts: a failed COMMIT takes it back
    /// (PostgreSQL commits an implicit transaction before the last
    /// statement's CommandComplete).
    pub(super) last_complete: usize,
    /// The proxy's COMMIT is on its way.
    pub(super) committing: bool,
}

impl SessionCapture {
    /// Decides what happens to one server message, given where the
    /// session's conversation places it; while a wrapped query's answer is
    /// held back, keeps it until the ReadyForQuery that ends it.
    pub(crate) fn on_server<T>(
        &mut self,
        msg: BackendMessage<'_>,
        answer: &Answer<T>,
    ) -> Result<ServerAction, WireError> {
        for id in answer.dropped_ids() {
            self.notes.remove(&id);
        }
        let note = answer.to.and_then(|h| self.notes.get(&h.id));
        // From the first message of the wrapped query's own answer (not of
        // queries pipelined ahead of it) to the ReadyForQuery after COMMIT.
        let wrapped = matches!(
            note,
            Some(Expect::Query {
                end: QueryEnd::Wrapped,
                ..
            })
        );
        let wrap_end = matches!(note, Some(Expect::WrapEnd));
        if wrapped && self.deferred.is_none() {
            self.deferred = Some(Deferred::default());
        }
        if self.deferred.is_none() {
            return self.answer(msg, answer.to, answer.is_done());
        }
        let tag = msg.tag();
        if wrap_end && tag == btag::ERROR_RESPONSE {
            if let Some(d) = self.deferred.as_mut().filter(|d| d.committing) {
                // The COMMIT failed: the last statement never completed.
                d.bytes.truncate(d.last_complete);
            }
        }
        let action = self.answer(msg, answer.to, answer.is_done())?;
        let Some(d) = self.deferred.as_mut() else {
            return Ok(action);
        };
        match action {
            ServerAction::Forward if tag == btag::READY_FOR_QUERY => {
                let mut out = std::mem::take(&mut d.bytes);
                out.extend_from_slice(msg.bytes());
                self.deferred = None;
                return Ok(ServerAction::Replace(out));
            }
            // Output of a statement (rows, COPY, an error) goes out at once
            // with what was held before it: only a statement's
            // CommandComplete, and what follows it, can be the success the
            // commit must come first for (PostgreSQL, too, commits an
            // implicit transaction before its last CommandComplete and no
            // earlier). So the held part stays small whatever the result
            // size, and a COPY's CopyInResponse, which the client must
            // answer, is never held.
            ServerAction::Forward | ServerAction::Replace(_) if starts_output(tag) => {
                let mut out = std::mem::take(&mut d.bytes);
                match &action {
                    ServerAction::Replace(bytes) => out.extend_from_slice(bytes),
                    _ => out.extend_from_slice(msg.bytes()),
                }
                d.last_complete = 0;
                return Ok(ServerAction::Replace(out));
            }
            ServerAction::Forward => {
                if tag == btag::COMMAND_COMPLETE {
                    d.last_complete = d.bytes.len();
                }
                d.bytes.extend_from_slice(msg.bytes());
            }
            ServerAction::Replace(bytes) => d.bytes.extend_from_slice(&bytes),
            ServerAction::Drop | ServerAction::Defer => return Ok(ServerAction::Drop),
            ServerAction::Continue => return Ok(ServerAction::Continue),
        }
        Ok(ServerAction::Defer)
    }

    /// [`Self::on_server`] for one message, as the client would get it now:
    /// `to` is the entry it answers, `done` whether it completes it.
    fn answer(&mut self, msg: BackendMessage<'_>, to: Option<Head>, done: bool) -> Result<ServerAction, WireError> {
        let tag = msg.tag();
        if matches!(
            tag,
            btag::NOTICE_RESPONSE | btag::NOTIFICATION_RESPONSE | btag::PARAMETER_STATUS
        ) {
            return Ok(ServerAction::Forward);
        }
        let Some(head) = to else {
            return Ok(ServerAction::Forward);
        };
        if head.origin == Origin::Capture && !self.notes.contains_key(&head.id) {
            // Sent by a capture that has ended (the statements it put back).
            return Ok(ServerAction::Drop);
        }
        if tag == btag::ERROR_RESPONSE {
            return Ok(self.on_error(head, done));
        }
        if tag == btag::READY_FOR_QUERY {
            return self.on_ready(msg, head);
        }
        if tag == btag::COPY_IN_RESPONSE {
            let copy = match self.notes.get(&head.id) {
                Some(Expect::Query { stmts, .. }) => stmts.front().and_then(|s| s.copy.clone()),
                Some(Expect::Execute { info }) => info.copy.clone(),
                _ => None,
            };
            self.copy_in = copy.map(|c| (CopyReader::new(c.format, c.header, c.positions.clone()), c.tap.clone()));
            return Ok(ServerAction::Forward);
        }
        if done {
            let note = self.notes.remove(&head.id);
            return self.completes(note, msg);
        }
        let Some(note) = self.notes.get_mut(&head.id) else {
            return Ok(ServerAction::Forward);
        };
        match note {
            Expect::Injected => Ok(ServerAction::Drop),
            Expect::Failed | Expect::WrapEnd => Ok(if tag == btag::COMMAND_COMPLETE {
                ServerAction::Drop
            } else {
                ServerAction::Forward
            }),
            Expect::Probe { first } => {
                if tag == btag::DATA_ROW {
                    match first.take() {
                        None => {
                            let (values, _) = rows::split_data_row(msg.body(), 3, false)?;
                            if let [Some(path), Some(session_user), Some(current_user)] = values.as_slice() {
                                *first = Some([path.clone(), session_user.clone(), current_user.clone()]);
                            }
                        }
                        Some([path, session_user, current_user]) => {
                            let (values, _) = rows::split_data_row(msg.body(), 1, false)?;
                            if let [Some(reset)] = values.as_slice() {
                                self.paths.learned(
                                    parse_search_path(&path),
                                    parse_search_path(reset),
                                    session_user,
                                    current_user,
                                );
                            }
                        }
                    }
                }
                Ok(ServerAction::Drop)
            }
            Expect::Execute { info } if tag == btag::DATA_ROW => {
                let tap = info.tap.clone();
                self.on_row(tap, msg)
            }
            Expect::Query { stmts, .. } => {
                let tap = stmts.front().and_then(|s| s.tap.clone());
                match tag {
                    btag::ROW_DESCRIPTION => match tap {
                        Some(tap) if tap.client_returning => Ok(ServerAction::Replace(
                            rows::strip_row_description(msg.body(), tap.extra)?.0,
                        )),
                        Some(_) => Ok(ServerAction::Drop),
                        None => Ok(ServerAction::Forward),
                    },
                    btag::DATA_ROW => self.on_row(tap, msg),
                    btag::COMMAND_COMPLETE => {
                        let info = stmts.pop_front().unwrap_or_default();
                        self.completed(&info, msg.command_tag().unwrap_or(""));
                        Ok(ServerAction::Forward)
                    }
                    _ => Ok(ServerAction::Forward),
                }
            }
            // A statement's ParameterDescription, a FunctionCall's result...
            _ => Ok(ServerAction::Forward),
        }
    }

    /// The message that completes a Parse, Bind, Close, Describe or
    /// Execute, whose note was `note`.
    fn completes(&mut self, note: Option<Expect>, msg: BackendMessage<'_>) -> Result<ServerAction, WireError> {
        let tag = msg.tag();
        match note {
            Some(Expect::InjectedOne) => Ok(ServerAction::Drop),
            Some(Expect::DescribeStatement { tap: Some(tap) }) if tag == btag::ROW_DESCRIPTION => {
                let (stripped, _) = rows::strip_row_description(msg.body(), tap.extra)?;
                Ok(described(&tap, stripped))
            }
            Some(Expect::DescribePortal { tap: Some(tap) }) if tag == btag::ROW_DESCRIPTION => {
                let (stripped, _) = rows::strip_row_description(msg.body(), tap.extra)?;
                Ok(described(&tap, stripped))
            }
            Some(Expect::Execute { info }) => {
                if tag == btag::COMMAND_COMPLETE {
                    self.completed(&info, msg.command_tag().unwrap_or(""));
                }
                Ok(ServerAction::Forward)
            }
            _ => Ok(ServerAction::Forward),
        }
    }

    fn on_row(&mut self, tap: Option<Arc<Tap>>, msg: BackendMessage<'_>) -> Result<ServerAction, WireError> {
        let Some(tap) = tap else {
            return Ok(ServerAction::Forward);
        };
        let (mut values, row) = rows::split_data_row(msg.body(), tap.extra, tap.client_returning)?;
        // The table the row really went to; resolved against the catalog at
        // the commit (0, which names no table, if unreadable).
        let oid = match values.first() {
            Some(v) => v.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0),
            None => 0,
        };
        if !values.is_empty() {
            values.remove(0);
        }
        // Key values come hex-encoded as UTF-8 (see `key_projection`).
        let key = values.into_iter().map(|v| v.map(|hex| key_text(&hex))).collect();
        self.tx.keys.push(Written { tap, oid, key });
        Ok(match row {
            Some(row) => ServerAction::Replace(row),
            None => ServerAction::Drop,
        })
    }

    /// A statement completed: transaction control and session settings.
    fn completed(&mut self, info: &StmtInfo, command_tag: &str) {
        if let Some(change) = &info.path_change {
            self.paths.apply(change);
        }
        if let Some(t) = &info.temp_table {
            self.temp_tables.insert(t.clone());
        }
        let Some(tx) = &info.tx else { return };
        match tx {
            TxControl::Begin => self.block = true,
            TxControl::Commit { chain } => {
                if command_tag == "ROLLBACK" {
                    self.tx.clear();
                } else if !self.tx.keys.is_empty() {
                    self.log_late();
                }
                self.paths.end_tx(command_tag != "ROLLBACK");
                self.block = *chain;
            }
            TxControl::Rollback { chain } => {
                self.tx.clear();
                self.paths.end_tx(false);
                self.block = *chain;
            }
            TxControl::Savepoint(name) => {
                self.paths.savepoint(name);
                let at = self.tx.keys.len();
                self.tx.savepoints.push((name.clone(), at));
            }
            TxControl::RollbackTo(name) => {
                self.paths.rollback_to(name);
                if let Some(i) = self.tx.savepoints.iter().rposition(|(n, _)| n == name) {
                    let at = self.tx.savepoints[i].1;
                    self.tx.keys.truncate(at);
                    self.tx.savepoints.truncate(i + 1);
                }
            }
            TxControl::Release(name) => {
                self.paths.release(name);
                if let Some(i) = self.tx.savepoints.iter().rposition(|(n, _)| n == name) {
                    self.tx.savepoints.truncate(i);
                }
            }
            TxControl::CommitPrepared(_) | TxControl::RollbackPrepared(_) => {}
        }
    }

    fn on_error(&mut self, head: Head, done: bool) -> ServerAction {
        self.tx_error = true;
        match self.notes.get_mut(&head.id) {
            Some(Expect::Query { stmts, error, .. }) => {
                stmts.clear();
                *error = true;
                ServerAction::Forward
            }
            Some(Expect::Injected | Expect::WrapEnd | Expect::Failed) => ServerAction::Forward,
            // Cannot fail short of a broken server; the client never asked.
            Some(Expect::Probe { .. }) => ServerAction::Drop,
            _ => {
                // Extended protocol: the conversation skipped to the Sync.
                if done {
                    self.notes.remove(&head.id);
                }
                ServerAction::Forward
            }
        }
    }

    fn on_ready(&mut self, msg: BackendMessage<'_>, head: Head) -> Result<ServerAction, WireError> {
        let status = msg.ready_status()?;
        let in_block = status != crate::wire::backend::TxStatus::Idle;
        let failed = status == crate::wire::backend::TxStatus::Failed;
        let expect = self.notes.remove(&head.id);
        if self.notes.is_empty() {
            self.flush_sent = false;
        }
        let action = match expect {
            Some(Expect::Injected | Expect::Probe { .. }) => ServerAction::Drop,
            Some(Expect::Query {
                end: QueryEnd::Part,
                error,
                ..
            }) => {
                if error {
                    self.plan = None;
                    ServerAction::Forward
                } else {
                    self.block = in_block;
                    self.advance_plan();
                    return Ok(ServerAction::Continue);
                }
            }
            Some(Expect::Query {
                end: QueryEnd::Wrapped, ..
            }) => {
                self.block = in_block;
                if failed || !in_block {
                    self.tx.clear();
                    if in_block {
                        self.work
                            .push_back(Work::Continue(rows::query("ROLLBACK"), Note(Expect::WrapEnd)));
                        return Ok(ServerAction::Continue);
                    }
                    ServerAction::Forward
                } else {
                    self.plan = Some(Plan::WrapCommit);
                    self.advance_plan();
                    return Ok(ServerAction::Continue);
                }
            }
            _ => ServerAction::Forward,
        };
        self.block = in_block;
        if self.notes.is_empty() {
            self.sent_block = in_block;
        }
        if !in_block {
            // An implicit transaction (or one the proxy wrapped) ended.
            self.paths.end_tx(!self.tx_error);
            if !self.tx.keys.is_empty() {
                if self.tx_error {
                    self.tx.clear();
                } else {
                    self.log_late();
                }
            }
            self.tx.savepoints.clear();
        }
        self.tx_error = false;
        Ok(action)
    }

    /// What the answer of one part of a query the proxy runs in steps is
    /// read as (`more`: parts follow it).
    pub(super) fn expect_part(&self, stmts: Vec<StmtInfo>, more: bool) -> Expect {
        let end = if more { QueryEnd::Part } else { QueryEnd::Final };
        Expect::Query {
            stmts: stmts.into(),
            end,
            error: false,
        }
    }

    /// Moves a stepped query on: logs the keys first if there are any.
    pub(super) fn advance_plan(&mut self) {
        if !self.notes.is_empty() || self.logging || self.lookup.is_some() {
            return;
        }
        match self.commit_step() {
            CommitStep::Go => {}
            CommitStep::Wait => return,
            CommitStep::Refuse(reason) => {
                // The next step would commit (a wrapped query's COMMIT, or a
                // part starting with one): fail it instead.
                self.plan = None;
                let out = self.refuse_simple(&reason);
                self.work.push_back(Work::Continue(out, Note(Expect::Failed)));
                return;
            }
        }
        match self.plan.take() {
            Some(Plan::WrapCommit) => {
                if let Some(d) = self.deferred.as_mut() {
                    d.committing = true;
                }
                self.work
                    .push_back(Work::Continue(rows::query("COMMIT"), Note(Expect::WrapEnd)));
            }
            Some(Plan::Parts(mut parts)) => {
                let Some((text, stmts)) = parts.pop_front() else { return };
                let note = self.expect_part(stmts, !parts.is_empty());
                self.work
                    .push_back(Work::Continue(rows::query_bytes(&text), Note(note)));
                if !parts.is_empty() {
                    self.plan = Some(Plan::Parts(parts));
                }
            }
            None => {}
        }
    }
}

/// A Describe's RowDescription with capture's key columns taken out: the
/// client's own RETURNING columns, or NoData when it wrote none.
fn described(tap: &Tap, stripped: BytesMut) -> ServerAction {
    if tap.client_returning {
        ServerAction::Replace(stripped)
    } else {
        ServerAction::Replace(rows::no_data())
    }
}
