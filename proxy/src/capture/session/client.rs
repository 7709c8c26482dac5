//! The client side: what each client message becomes (forwarded, spliced,
//! held, or replaced by the proxy's own messages; the refusals sent in
//! place of a statement or a commit are in `refuse.rs`).

use super::analyze::apply_splices;
use super::{block_after, is_commit_like, LOG_FAILED_CODE, LOG_FAILED_HINT};
use super::{
    ClientAction, CommitStep, Decided, Expect, Note, Outgoing, Plan, QueryEnd, Rejection, SessionCapture,
    StatementNote, StmtInfo, Work, Written,
};
use crate::capture::classify_view;
use crate::capture::resolve::SearchPath;
use crate::capture::rows::{self, ResultFormats};
use crate::config::UnsafePolicy;
use crate::session::conversation::Request;
use crate::session::statements::Statements;
use crate::wire::frontend::{tag as ftag, FrontendMessage, TargetKind};
use crate::wire::{Reader, WireError};
use bytes::BytesMut;
use std::collections::VecDeque;

impl SessionCapture {
    /// Decides what happens to one client message. `statements` is the
    /// session's registry: capture notes there what it makes of each
    /// statement, and finds the Parse of one prepared before it started.
    pub(crate) fn on_client(
        &mut self,
        msg: FrontendMessage<'_>,
        statements: &mut Statements<StatementNote>,
    ) -> Result<ClientAction, WireError> {
        let tag = msg.tag();
        if matches!(tag, ftag::COPY_DONE | ftag::COPY_FAIL) {
            self.copy_sent = false;
            // The server's answer to the COPY comes after this: not flushed yet.
            self.flush_sent = false;
        }
        if matches!(tag, ftag::COPY_DATA | ftag::COPY_DONE | ftag::COPY_FAIL) {
            if let Some((reader, tap)) = &mut self.copy_in {
                let keys = match tag {
                    ftag::COPY_DATA => reader.feed(msg.body()),
                    ftag::COPY_DONE => reader.finish(),
                    _ => Vec::new(),
                };
                let tap = tap.clone();
                // COPY has no tableoid: its table is the one resolved by name.
                let oid = tap.oid;
                self.tx.keys.extend(keys.into_iter().map(|key| Written {
                    tap: tap.clone(),
                    oid,
                    key,
                }));
                if tag != ftag::COPY_DATA {
                    self.copy_in = None;
                }
            }
            return Ok(ClientAction::Forward);
        }
        // A lone BEGIN needs no name resolved: it goes on behind the probe
        // rather than a round trip later (after a cutover, every session's
        // first message is one, all at once).
        let opens_only = tag == ftag::QUERY && self.blocked_by_probe_only() && opens_transaction_only(msg.body());
        if self.blocked() && !opens_only {
            return Ok(ClientAction::Hold);
        }
        self.sending.clear();
        self.client_note = None;
        let action = self.dispatch(msg, statements)?;
        let mut own: Vec<(Request, Note)> = std::mem::take(&mut self.sending)
            .into_iter()
            .map(|(r, e)| (r, Note(e)))
            .collect();
        if matches!(action, Decided::Hold) {
            return Ok(ClientAction::Hold);
        }
        // A Flush sent earlier does not cover what goes out now; the
        // server answers everything up to a Sync or Flush.
        self.flush_sent = matches!(tag, ftag::FLUSH | ftag::SYNC);
        // What goes out ends with the client's message: its note waits for
        // the entry the session state opens for it.
        if own.last().is_some_and(|(r, _)| Some(*r) == Request::of(tag)) {
            self.client_note = own.pop().map(|(_, n)| n.0);
        }
        Ok(match action {
            Decided::Forward => ClientAction::Forward,
            Decided::Replace(bytes) => ClientAction::Replace(Outgoing { bytes, own }),
            Decided::Hold => ClientAction::Hold,
        })
    }

    fn dispatch(
        &mut self,
        msg: FrontendMessage<'_>,
        statements: &mut Statements<StatementNote>,
    ) -> Result<Decided, WireError> {
        match msg.tag() {
            ftag::QUERY => self.on_query(Reader::new(msg.body(), "Query").cstr_bytes()?),
            ftag::PARSE => self.on_parse(msg, statements),
            ftag::BIND => self.on_bind(msg, statements),
            ftag::DESCRIBE => {
                let t = msg.target()?;
                let e = match t.kind {
                    TargetKind::Statement => Expect::DescribeStatement {
                        tap: statements.note(t.name).and_then(|p| p.info.tap.clone()),
                    },
                    TargetKind::Portal => Expect::DescribePortal {
                        tap: self.portals.get(t.name).and_then(|i| i.tap.clone()),
                    },
                };
                self.expect(Request::Describe, e);
                Ok(Decided::Forward)
            }
            ftag::EXECUTE => self.on_execute(msg),
            ftag::CLOSE => {
                let t = msg.target()?;
                match t.kind {
                    TargetKind::Statement => {
                        if let Some((_, Some(server))) = statements.take_note(t.name) {
                            // The spliced copy goes with the client's own.
                            if server != t.name {
                                let mut out = rows::close_statement(&server);
                                out.extend_from_slice(msg.bytes());
                                self.expect(Request::Close, Expect::InjectedOne);
                                self.expect(Request::Close, Expect::Plain);
                                return Ok(Decided::Replace(out));
                            }
                        }
                    }
                    TargetKind::Portal => {
                        self.portals.remove(t.name);
                    }
                }
                self.expect(Request::Close, Expect::Plain);
                Ok(Decided::Forward)
            }
            ftag::SYNC => self.on_sync(),
            ftag::FUNCTION_CALL => {
                self.saw_unsafe("call", "function call message");
                self.expect(Request::FunctionCall, Expect::Ready);
                Ok(Decided::Forward)
            }
            _ => Ok(Decided::Forward),
        }
    }

    fn on_query(&mut self, raw: &[u8]) -> Result<Decided, WireError> {
        // Any client encoding: classified through a view, spliced in the bytes.
        let view = classify_view(raw);
        let sql: &str = &view;
        let catalog = self.active.catalog.current();
        let classified = self.shapes.classify(sql);
        let mut infos = Vec::with_capacity(classified.len());
        let mut splices: Vec<(usize, String)> = Vec::new();
        // A statement resolves names through the path the ones before it in
        // the same query set: applied ahead here, for real as each completes.
        let mut before: Option<SearchPath> = None;
        let mut rejected = None;
        let mut lookup = None;
        // Temp tables a statement creates are known to the ones after it
        // in the same query at once, but become the session's only when
        // their CREATE completes (it may be refused, held or fail).
        let temp_before = self.temp_tables.clone();
        for c in &classified {
            let text = &sql[c.range.clone()];
            let (info, splice) = self.analyze(&catalog, &c.class, text);
            if info.lookup.is_some() {
                lookup = info.lookup;
                break;
            }
            if let Some(reason) = &info.rejected {
                rejected = Some(reason.clone());
                break;
            }
            if let Some(change) = &info.path_change {
                before.get_or_insert_with(|| self.paths.clone());
                self.paths.apply(change);
            }
            if let Some(s) = splice {
                splices.push(s);
            }
            infos.push(info);
        }
        if let Some(p) = before {
            self.paths = p;
        }
        self.temp_tables = temp_before;
        if let Some(what) = lookup {
            return Ok(self.start_lookup(what));
        }
        if let Some(reason) = rejected {
            return Ok(self.reject_query(reason));
        }
        let has_tap = infos.iter().any(StmtInfo::writes);
        let has_tx = infos.iter().any(|i| i.tx.is_some());
        let commits = infos.iter().any(|i| i.tx.as_ref().is_some_and(is_commit_like));
        if commits {
            if let Some(message) = self.refuse_commit.take() {
                // The held COMMIT whose keys the log could not take.
                let out = self.roll_back_refused(&message);
                self.expect(Request::Query, Expect::Failed);
                return Ok(Decided::Replace(out));
            }
        }
        if !has_tap && !commits {
            self.apply_sent_tx(&infos);
            self.expect(
                Request::Query,
                Expect::Query {
                    stmts: infos.into(),
                    end: QueryEnd::Final,
                    error: false,
                },
            );
            return Ok(Decided::Forward);
        }
        // The plan depends on the settled transaction state.
        if !self.settled_for_plan() {
            return Ok(Decided::Hold);
        }
        if has_tap && !self.sent_block && !has_tx {
            // Autocommit write(s): BEGIN ahead, COMMIT once logged.
            let text = apply_splices(raw, 0, &splices);
            let mut out = rows::query("BEGIN");
            out.extend_from_slice(&rows::query_bytes(&text));
            self.expect(Request::Query, Expect::Injected);
            self.expect(
                Request::Query,
                Expect::Query {
                    stmts: infos.into(),
                    end: QueryEnd::Wrapped,
                    error: false,
                },
            );
            self.sent_block = true;
            return Ok(Decided::Replace(out));
        }
        // Check that every write runs inside a block, and find the split points.
        let mut b = self.sent_block;
        let mut cuts = Vec::new();
        let mut taps_since = false;
        for (i, info) in infos.iter().enumerate() {
            if let Some(tx) = &info.tx {
                if is_commit_like(tx) {
                    if i == 0 {
                        // Log what the transaction wrote so far, then send.
                        match self.commit_step() {
                            CommitStep::Go => {}
                            CommitStep::Wait => return Ok(Decided::Hold),
                            CommitStep::Refuse(reason) => {
                                let out = self.refuse_simple(&reason);
                                self.expect(Request::Query, Expect::Failed);
                                return Ok(Decided::Replace(out));
                            }
                        }
                    }
                    if taps_since && i > 0 {
                        cuts.push(i);
                    }
                    taps_since = false;
                }
                b = block_after(b, tx);
            }
            if info.writes() {
                if !b {
                    let kind = "autocommit-in-script";
                    if self.saw_unsafe(kind, sql) == UnsafePolicy::Reject {
                        return Ok(self.reject_query(Rejection::statement(kind)));
                    }
                    // Warned: run it uncaptured.
                    let plain: Vec<StmtInfo> = infos
                        .iter()
                        .map(|i| StmtInfo {
                            tx: i.tx.clone(),
                            ..Default::default()
                        })
                        .collect();
                    self.apply_sent_tx(&plain);
                    self.expect(
                        Request::Query,
                        Expect::Query {
                            stmts: plain.into(),
                            end: QueryEnd::Final,
                            error: false,
                        },
                    );
                    return Ok(Decided::Forward);
                }
                taps_since = true;
            }
        }
        self.apply_sent_tx(&infos);
        let mut starts: Vec<usize> = vec![0];
        starts.extend(cuts.iter().map(|&i| classified[i].range.start));
        let mut parts: VecDeque<(Vec<u8>, Vec<StmtInfo>)> = VecDeque::new();
        let mut infos = infos.into_iter();
        let bounds: Vec<usize> = cuts.iter().copied().chain(std::iter::once(classified.len())).collect();
        let mut first_stmt = 0;
        for (k, &start) in starts.iter().enumerate() {
            let end = starts.get(k + 1).copied().unwrap_or(sql.len());
            let n = bounds[k] - first_stmt;
            first_stmt = bounds[k];
            let stmts: Vec<StmtInfo> = infos.by_ref().take(n).collect();
            let local: Vec<(usize, String)> = splices
                .iter()
                .filter(|(at, _)| *at >= start && *at <= end)
                .cloned()
                .collect();
            let text = apply_splices(&raw[..end], start, &local);
            parts.push_back((text, stmts));
        }
        let (text, stmts) = parts.pop_front().unwrap_or_default();
        let first = self.expect_part(stmts, !parts.is_empty());
        self.expect(Request::Query, first);
        if !parts.is_empty() {
            self.plan = Some(Plan::Parts(parts));
        } else if splices.is_empty() {
            return Ok(Decided::Forward);
        }
        Ok(Decided::Replace(rows::query_bytes(&text)))
    }

    fn reject_query(&mut self, rejection: Rejection) -> Decided {
        self.expect(
            Request::Query,
            Expect::Query {
                stmts: VecDeque::from([StmtInfo::default()]),
                end: QueryEnd::Final,
                error: false,
            },
        );
        Decided::Replace(rows::query(&rejection.raise_sql()))
    }

    fn apply_sent_tx(&mut self, infos: &[StmtInfo]) {
        for tx in infos.iter().filter_map(|i| i.tx.as_ref()) {
            self.sent_block = block_after(self.sent_block, tx);
        }
    }

    /// Classifies the text of a prepared statement (one statement: the
    /// server refuses several in a Parse).
    fn analyze_prepared(&mut self, query: &[u8]) -> (StmtInfo, Option<(usize, String)>) {
        let catalog = self.active.catalog.current();
        let view = classify_view(query);
        let classified = self.shapes.classify(&view);
        match classified.as_slice() {
            [one] => {
                // Known once its CREATE completes (see on_query).
                let temp_before = self.temp_tables.clone();
                let analyzed = self.analyze(&catalog, &one.class, &view[one.range.clone()]);
                self.temp_tables = temp_before;
                analyzed
            }
            _ => (StmtInfo::default(), None),
        }
    }

    fn on_parse(
        &mut self,
        msg: FrontendMessage<'_>,
        statements: &mut Statements<StatementNote>,
    ) -> Result<Decided, WireError> {
        let parse = msg.parse()?;
        let (info, splice) = self.analyze_prepared(parse.query);
        if let Some(what) = info.lookup {
            return Ok(self.start_lookup(what));
        }
        let name = parse.name.to_owned();
        self.expect(Request::Parse, Expect::Plain);
        match splice {
            Some(s) if info.rejected.is_none() => {
                let text = apply_splices(parse.query, 0, &[s]);
                let out = rows::rewrite_parse(msg.body(), &name, &text)?;
                let original = Some(BytesMut::from(msg.bytes()));
                statements.annotate(&name, StatementNote { info, original }, None);
                Ok(Decided::Replace(out))
            }
            _ => {
                statements.annotate(&name, StatementNote { info, original: None }, None);
                Ok(Decided::Forward)
            }
        }
    }

    fn on_bind(
        &mut self,
        msg: FrontendMessage<'_>,
        statements: &mut Statements<StatementNote>,
    ) -> Result<Decided, WireError> {
        let bind = msg.bind()?;
        let portal = bind.portal.to_owned();
        let mut out = BytesMut::new();
        if statements.note(bind.statement).is_none() {
            // Prepared before capture started: classify its text now and,
            // if it writes, prepare a spliced copy under a proxy-owned name.
            let known = (!bind.statement.is_empty())
                .then(|| statements.get(bind.statement).map(|s| s.parse.clone()))
                .flatten();
            let Some(parse_bytes) = known else {
                if bind.statement.is_empty() {
                    self.saw_unsafe("unknown-statement", "unnamed statement prepared before capture started");
                }
                self.portals.insert(portal, StmtInfo::default());
                self.expect(Request::Bind, Expect::Plain);
                return Ok(Decided::Forward);
            };
            let pmsg = FrontendMessage::new(&parse_bytes);
            let parse = pmsg.parse()?;
            let (info, splice) = self.analyze_prepared(parse.query);
            if let Some(what) = info.lookup {
                return Ok(self.start_lookup(what));
            }
            let mut server = None;
            if let (Some(s), None) = (splice, &info.rejected) {
                self.next_name += 1;
                let name = format!("switchyard_{}_{}", self.active.epoch, self.next_name);
                let text = apply_splices(parse.query, 0, &[s]);
                out.extend_from_slice(&rows::rewrite_parse(pmsg.body(), &name, &text)?);
                self.expect(Request::Parse, Expect::InjectedOne);
                server = Some(name);
            }
            statements.annotate(bind.statement, StatementNote { info, original: None }, server);
        }
        let Some(p) = statements.note(bind.statement) else {
            return Ok(Decided::Forward);
        };
        let info = p.info.clone();
        let server_name = statements.server_name(bind.statement).to_owned();
        let codes = match &info.tap {
            None => None,
            Some(tap) => match rows::bind_formats(msg.body())?.1 {
                // One code (or none) covers the key columns too: they are text.
                ResultFormats::AllText | ResultFormats::All(_) => None,
                ResultFormats::PerColumn(mut v) => {
                    v.extend(std::iter::repeat_n(0, tap.extra));
                    Some(v)
                }
            },
        };
        self.portals.insert(portal, info);
        self.expect(Request::Bind, Expect::Plain);
        if codes.is_none() && server_name == bind.statement && out.is_empty() {
            return Ok(Decided::Forward);
        }
        let (at, _) = rows::bind_formats(msg.body())?;
        out.extend_from_slice(&rows::rewrite_bind(msg.body(), &server_name, at, codes.as_deref())?);
        Ok(Decided::Replace(out))
    }

    fn on_execute(&mut self, msg: FrontendMessage<'_>) -> Result<Decided, WireError> {
        let portal = Reader::new(msg.body(), "Execute").cstr()?;
        let info = self.portals.get(portal).cloned().unwrap_or_default();
        if let Some(rejection) = &info.rejected {
            return Ok(Decided::Replace(self.raise_execute(rejection)));
        }
        if info.tx.as_ref().is_some_and(is_commit_like) {
            if let Some(message) = self.refuse_commit.take() {
                // ROLLBACK (its answers dropped), then an error for the client.
                let out = self.roll_back_extended_with(&rows::raise_sql(LOG_FAILED_CODE, &message, LOG_FAILED_HINT));
                return Ok(Decided::Replace(out));
            }
            // Keys of writes still in flight must be in before the commit goes.
            if !self.settled() {
                return Ok(Decided::Hold);
            }
            match self.commit_step() {
                CommitStep::Go => {}
                CommitStep::Wait => return Ok(Decided::Hold),
                CommitStep::Refuse(reason) => return Ok(Decided::Replace(self.refuse_extended_commit(&reason))),
            }
        }
        if let Some(tx) = &info.tx {
            self.sent_block = block_after(self.sent_block, tx);
        }
        if info.writes() {
            self.batch_taps = true;
        }
        if info.copy.is_some() {
            self.copy_sent = true;
        }
        self.expect(Request::Execute, Expect::Execute { info });
        Ok(Decided::Forward)
    }

    fn on_sync(&mut self) -> Result<Decided, WireError> {
        if let Some(message) = self.refuse_commit.take() {
            // The implicit transaction must not commit: fail it, then Sync.
            let mut out = self.raise_extended(&message);
            crate::wire::write_message(&mut out, b'S', |_| {});
            self.batch_taps = false;
            self.expect(Request::Sync, Expect::Ready);
            return Ok(Decided::Replace(out));
        }
        if self.copy_sent {
            // Ignored by the server if its COPY started: no commit here.
            self.expect(Request::Sync, Expect::Ready);
            return Ok(Decided::Forward);
        }
        if self.batch_taps && !self.sent_block && !self.tx_error {
            // The implicit transaction commits at this Sync.
            if !self.settled() {
                return Ok(Decided::Hold);
            }
            match self.commit_step() {
                CommitStep::Go => {}
                CommitStep::Wait => return Ok(Decided::Hold),
                CommitStep::Refuse(reason) => {
                    // An error ahead of the Sync: the implicit transaction
                    // ends rolled back.
                    let mut out = self.raise_execute(&reason);
                    crate::wire::write_message(&mut out, b'S', |_| {});
                    self.batch_taps = false;
                    self.expect(Request::Sync, Expect::Ready);
                    return Ok(Decided::Replace(out));
                }
            }
        }
        self.batch_taps = false;
        self.expect(Request::Sync, Expect::Ready);
        Ok(Decided::Forward)
    }

    /// Whether every key written so far is in (no write's result is still
    /// in flight); if not, makes sure the server sends what it has (Flush)
    /// and returns false.
    fn settled(&mut self) -> bool {
        let in_flight = self.notes.values().any(|e| match e {
            Expect::Execute { info } => info.writes(),
            Expect::Query { stmts, end, .. } => *end != QueryEnd::Final || stmts.iter().any(StmtInfo::writes),
            Expect::Injected | Expect::WrapEnd | Expect::Failed => true,
            _ => false,
        });
        if !in_flight {
            return true;
        }
        if !self.flush_sent {
            self.flush_sent = true;
            self.work.push_back(Work::Send(Outgoing::bare(rows::flush())));
        }
        false
    }

    /// [`Self::settled`], for planning a simple query.
    fn settled_for_plan(&mut self) -> bool {
        self.settled()
    }
}

/// Whether a Query message's text is one BEGIN or START TRANSACTION with
/// at most its modes (isolation level, READ ONLY, DEFERRABLE): a statement
/// that names nothing the search_path resolves. Anything else (another
/// statement after it, a comment, a quote) counts as not.
pub(super) fn opens_transaction_only(body: &[u8]) -> bool {
    let body = body.strip_suffix(&[0]).unwrap_or(body);
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let text = text.trim().trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    if !text
        .chars()
        .all(|c| c.is_ascii_alphabetic() || c == ',' || c == '_' || c.is_ascii_whitespace())
    {
        return false;
    }
    let mut words = text
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    match words.next() {
        Some(w) if w.eq_ignore_ascii_case("begin") => true,
        Some(w) if w.eq_ignore_ascii_case("start") => {
            words.next().is_some_and(|t| t.eq_ignore_ascii_case("transaction"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::opens_transaction_only;

    #[test]
    fn only_a_lone_begin_passes_the_probe() {
        for yes in [
            &b"BEGIN\0"[..],
            b"begin;\0",
            b"  BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY ; \0",
            b"START TRANSACTION\0",
            b"start transaction read write\0",
            b"BEGIN WORK\0",
        ] {
            assert!(opens_transaction_only(yes), "{:?}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"BEGIN; UPDATE t SET a = 1\0"[..],
            b"BEGIN -- x\0",
            b"BEGIN /* x */\0",
            b"START\0",
            b"UPDATE t SET a = 1\0",
            b"SET search_path = x\0",
            b"COMMIT\0",
            b"BEGIN; SET search_path = x\0",
            b"\0",
            b"BEGIN\xff\0",
        ] {
            assert!(!opens_transaction_only(no), "{:?}", String::from_utf8_lossy(no));
        }
    }
}
