//! One session's capture: rewrites writes to return their keys, filters the
//! keys out of what the client sees, buffers them per transaction (with
//! savepoints), and holds every commit until its keys are in the log.
//!
//! The relay hands every client message to [`SessionCapture::on_client`]
//! and every server message to [`SessionCapture::on_server`], and drains
//! [`SessionCapture::take_work`] after each: messages the proxy injects
//! (BEGIN/COMMIT around an autocommit write, Flush before a held Sync,
//! re-prepared statements) and log appends to start. Responses to injected
//! messages are swallowed here, so the client and the session state see
//! exactly the conversation they would have without capture.
//!
//! Commit points and what holds them:
//! - simple query, autocommit write(s) and no transaction control: the
//!   proxy sends BEGIN ahead of the query and COMMIT (or ROLLBACK) after it,
//!   once the keys are logged;
//! - COMMIT / END / PREPARE TRANSACTION (simple or extended): held until the
//!   transaction's keys are logged; a multi-statement query is split before
//!   such a statement when writes precede it in the same query;
//! - Sync ending an implicit extended-protocol transaction that wrote: held
//!   (the proxy sends Flush to get the write's results) until logged.
//!
//! A wrapped autocommit query's answer (rows, CommandComplete, notices) is
//! held back until its COMMIT is answered, so a client is never told of a
//! write that then fails to commit. If the log cannot take a commit's keys,
//! the commit is not sent: the proxy rolls the transaction back and the
//! client gets an ErrorResponse (58030) and ReadyForQuery, as for a COMMIT
//! that failed, and the session goes on. In the extended protocol the
//! CommandComplete of an Execute may precede the failure at Sync, as it
//! does in PostgreSQL when a commit fails there.

use super::control::{count_commit, unix_micros, Active};
use super::copy::{copy_options, CopyFormat, CopyReader};
use super::resolve::{self, Change, SearchPath};
use super::rows::{self, ResultFormats};
use super::{quote_ident, Class, ClassifyCache, TxControl, UnsafeKind, WriteKind, WriteStmt};
use crate::config::UnsafePolicy;
use crate::wire::backend::{tag as btag, BackendMessage};
use crate::wire::frontend::{tag as ftag, FrontendMessage, TargetKind};
use crate::wire::{Reader, WireError};
use bytes::BytesMut;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;
use switchyard_replay::catalog::{parse_search_path, Access, Catalog, Reached, TableLookup};
use switchyard_replay::log::{CommitRecord, Key, Record, TableKeys};

mod commit;

/// SQLSTATE of a statement rejected by the `reject` policy.
const REJECT_CODE: &str = "0A000";

/// What the session's unqualified names resolve through, asked of the
/// server when capture starts for it.
const PROBE_SQL: &str = "SELECT pg_catalog.current_setting('search_path'), \
     (SELECT s.reset_val FROM pg_catalog.pg_settings s WHERE s.name = 'search_path'), \
     session_user::text, current_user::text";

/// What the relay does with a client message.
#[derive(Debug)]
pub(crate) enum ClientAction {
    /// Send it as it is.
    Forward,
    /// Send these bytes in its place.
    Replace(BytesMut),
    /// Leave it in the buffer; present it again once [`SessionCapture::blocked`] clears.
    Hold,
}

/// What the relay does with a server message.
#[derive(Debug)]
pub(crate) enum ServerAction {
    /// Pass it to the client.
    Forward,
    /// Pass these bytes instead.
    Replace(BytesMut),
    /// The client must not see it.
    Drop,
    /// The client sees it later (with the ReadyForQuery that ends a wrapped
    /// query), but the session state takes it in now.
    Defer,
}

/// Work for the relay.
#[derive(Debug)]
pub(crate) enum Work {
    /// Send to the server (before anything forwarded after it).
    Send(BytesMut),
    /// Append to the log. When `hold` is set, a commit waits for it: report
    /// its completion with [`SessionCapture::logged`]; otherwise nothing
    /// waits (keys of a commit that already happened).
    Log { record: Record, hold: bool },
    /// Look a table up in the source catalog; report its completion with
    /// [`SessionCapture::looked_up`] (the held message is then presented
    /// again, and finds the table in the snapshot or marked missing).
    Lookup(TableLookup),
}

/// A write whose keys come back in its result rows.
#[derive(Debug)]
struct Tap {
    /// `schema.table` as logged.
    table: String,
    /// The `pg_class` oid of that table: rows whose `tableoid` differs went
    /// elsewhere (the server resolved the name otherwise, or a partition).
    oid: u32,
    key_columns: Vec<String>,
    /// Columns appended: tableoid then the keys.
    extra: usize,
    /// The client wrote its own RETURNING.
    client_returning: bool,
    /// The statement, for the audit trail.
    text: String,
}

/// Why a statement is refused: its unsafe kind (which names the
/// `capture.policies` key the hint offers) and, where there is more to say,
/// what it reaches.
#[derive(Debug, Clone)]
struct Rejection {
    kind: &'static str,
    detail: Option<String>,
    /// Refused at its commit point (the whole transaction), not as one
    /// statement.
    transaction: bool,
}

impl Rejection {
    /// A statement refused as `kind`, with nothing more to say.
    fn statement(kind: &'static str) -> Rejection {
        Rejection {
            kind,
            detail: None,
            transaction: false,
        }
    }

    /// The error message the client gets.
    fn message(&self) -> String {
        let what = if self.transaction {
            "transaction refused"
        } else {
            "statement rejected"
        };
        let head = format!("switchyard: {what} while write capture is on ({})", self.kind);
        match &self.detail {
            Some(d) => format!("{head}: {d}"),
            None => head,
        }
    }
}

/// What capture knows of one statement.
#[derive(Debug, Default, Clone)]
struct StmtInfo {
    tap: Option<Arc<Tap>>,
    tx: Option<TxControl>,
    /// Rejected by policy: runs as an error instead.
    rejected: Option<Rejection>,
    /// What it changes in name resolution, applied when it completes.
    path_change: Option<Change>,
    /// Temp tables it creates.
    temp_table: Option<String>,
    /// COPY FROM STDIN whose rows' keys are read from the client's data.
    copy: Option<Arc<CopyTap>>,
    /// A table it names that the catalog snapshot does not know yet: look
    /// it up before deciding.
    lookup: Option<TableLookup>,
}

impl StmtInfo {
    /// Whether it writes rows whose keys capture collects.
    fn writes(&self) -> bool {
        self.tap.is_some() || self.copy.is_some()
    }
}

/// A COPY FROM STDIN being captured.
#[derive(Debug)]
struct CopyTap {
    tap: Arc<Tap>,
    format: CopyFormat,
    header: bool,
    /// Field positions of the key columns.
    positions: Vec<usize>,
}

/// A prepared statement (extended protocol) as capture sees it.
#[derive(Debug, Clone)]
struct Prepared {
    info: StmtInfo,
    /// Name on the server.
    server_name: String,
    /// Columns the server's RowDescription had, once seen.
    columns: Option<usize>,
    /// The client's own text, to restore when capture ends.
    original: Option<BytesMut>,
}

/// A response the proxy waits for, in order.
#[derive(Debug)]
enum Expect {
    /// A simple query (or one part of a split one).
    Query {
        stmts: VecDeque<StmtInfo>,
        end: QueryEnd,
        error: bool,
    },
    /// An injected simple query: everything up to its ReadyForQuery is dropped.
    Injected,
    /// The COMMIT or ROLLBACK the proxy sent after a wrapped query: its
    /// CommandComplete is dropped, errors and the ReadyForQuery go through.
    WrapEnd,
    /// An injected Parse/Bind/Close: its completion is dropped.
    InjectedOne,
    /// The rollback (and raised 58030 error) sent in place of a commit the
    /// log could not take: CommandComplete dropped, error and
    /// ReadyForQuery go to the client.
    Failed,
    /// Parse, Bind or Close of the client's.
    Plain,
    /// Describe of a statement: ParameterDescription, then RowDescription or NoData.
    DescribeStatement {
        name: String,
        tap: Option<Arc<Tap>>,
    },
    /// The probe of the session's search_path and user: its row is read,
    /// everything up to its ReadyForQuery dropped.
    Probe,
    /// Describe of a portal.
    DescribePortal {
        tap: Option<Arc<Tap>>,
    },
    Execute {
        info: StmtInfo,
    },
    /// Sync or FunctionCall: ends with ReadyForQuery.
    /// `during_copy`: a Sync sent after a COPY FROM STDIN and before its
    /// data ended, which the server ignores if that COPY started.
    Ready {
        during_copy: bool,
    },
}

/// How a simple query's ReadyForQuery is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueryEnd {
    /// The client's: forward it.
    Final,
    /// A part of a split query: more parts follow.
    Part,
    /// A query wrapped in BEGIN ... COMMIT by the proxy.
    Wrapped,
}

/// The rest of a query the proxy runs in steps.
#[derive(Debug)]
enum Plan {
    /// Parts still to send, each with its statements.
    Parts(VecDeque<(Vec<u8>, Vec<StmtInfo>)>),
    /// A wrapped query succeeded; COMMIT once the keys are logged.
    WrapCommit,
}

/// One row written: the tap it came through, the `tableoid` the server
/// reported for it, and its key values.
#[derive(Debug)]
struct Written {
    tap: Arc<Tap>,
    oid: u32,
    key: Key,
}

/// What a commit point does with the open transaction's keys.
#[derive(Debug)]
enum CommitStep {
    /// Nothing to log: send the commit.
    Go,
    /// Held: a log append (or a catalog lookup) was started.
    Wait,
    /// The transaction must not commit: its keys cannot be logged right.
    Refuse(Rejection),
}

/// The keys of the open transaction.
#[derive(Debug, Default)]
struct TxKeys {
    keys: Vec<Written>,
    savepoints: Vec<(String, usize)>,
}

impl TxKeys {
    fn clear(&mut self) {
        self.keys.clear();
        self.savepoints.clear();
    }
}

/// One session's capture state.
pub(crate) struct SessionCapture {
    active: Arc<Active>,
    session_id: u64,
    /// The source backend's pid, logged with each commit.
    backend_pid: i32,
    paths: SearchPath,
    temp_tables: HashSet<String>,
    tx: TxKeys,
    expect: VecDeque<Expect>,
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, StmtInfo>,
    /// The server's transaction block, as of the responses seen.
    block: bool,
    /// The block as of the messages sent (ahead of the responses).
    sent_block: bool,
    /// Writes were sent since the last Sync.
    batch_taps: bool,
    /// An error came back since the last ReadyForQuery.
    tx_error: bool,
    plan: Option<Plan>,
    logging: bool,
    /// The catalog lookup client messages wait for.
    lookup: Option<TableLookup>,
    flush_sent: bool,
    next_name: u64,
    work: VecDeque<Work>,
    shapes: ClassifyCache,
    /// The COPY FROM STDIN in progress, with the tap its keys go under.
    copy_in: Option<(CopyReader, Arc<Tap>)>,
    /// A COPY FROM STDIN was sent and the client has not ended its data.
    copy_sent: bool,
    /// The answer of a wrapped autocommit query, held until its COMMIT is.
    deferred: Option<Deferred>,
    /// The log could not take the keys of the held commit (client COMMIT
    /// or Sync) presented next: it is refused with this message.
    refuse_commit: Option<String>,
}

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
struct Deferred {
    bytes: BytesMut,
    /// Where the last CommandComplete starts: a failed COMMIT takes it back
    /// (PostgreSQL commits an implicit transaction before the last
    /// statement's CommandComplete).
    last_complete: usize,
    /// The proxy's COMMIT is on its way.
    committing: bool,
}

impl SessionCapture {
    /// Capture for a session at a transaction boundary.
    pub(crate) fn new(
        active: Arc<Active>,
        session_id: u64,
        backend_pid: i32,
        search_path: Vec<String>,
        user: String,
    ) -> SessionCapture {
        let mut work = VecDeque::new();
        let mut expect = VecDeque::new();
        // What the session's names resolve through is the server's to say
        // (a role's or database's setting, a set_config before capture):
        // ask once, ahead of the first statement captured.
        work.push_back(Work::Send(rows::query(PROBE_SQL)));
        expect.push_back(Expect::Probe);
        SessionCapture {
            active,
            session_id,
            backend_pid,
            paths: SearchPath::new(search_path, user),
            temp_tables: HashSet::new(),
            tx: TxKeys::default(),
            expect,
            statements: HashMap::new(),
            portals: HashMap::new(),
            block: false,
            sent_block: false,
            batch_taps: false,
            tx_error: false,
            plan: None,
            logging: false,
            lookup: None,
            flush_sent: false,
            next_name: 0,
            work,
            shapes: ClassifyCache::default(),
            copy_in: None,
            copy_sent: false,
            deferred: None,
            refuse_commit: None,
        }
    }

    /// The capture this session runs under.
    pub(crate) fn active(&self) -> &Arc<Active> {
        &self.active
    }

    /// Whether client messages (other than COPY data) must wait.
    pub(crate) fn blocked(&self) -> bool {
        self.logging
            || self.lookup.is_some()
            || self.plan.is_some()
            || matches!(self.expect.front(), Some(Expect::Probe))
            || self.expect.iter().any(|e| {
                matches!(
                    e,
                    Expect::Query {
                        end: QueryEnd::Part | QueryEnd::Wrapped,
                        ..
                    }
                )
            })
    }

    /// Whether there is work for the relay.
    pub(crate) fn has_work(&self) -> bool {
        !self.work.is_empty()
    }

    /// Next piece of work for the relay.
    pub(crate) fn take_work(&mut self) -> Option<Work> {
        self.work.pop_front()
    }

    /// What to send the server when capture ends for this session (at a
    /// boundary): the client's own statements put back where the proxy had
    /// spliced or re-prepared them, with a Sync whose ReadyForQuery the
    /// relay must swallow. `None` when there is nothing to restore.
    pub(crate) fn finish(self) -> Option<BytesMut> {
        let mut out = BytesMut::new();
        for (name, p) in &self.statements {
            if p.server_name != *name {
                out.extend_from_slice(&rows::close_statement(&p.server_name));
            } else if let Some(original) = &p.original {
                out.extend_from_slice(&rows::close_statement(name));
                out.extend_from_slice(original);
            }
        }
        if out.is_empty() {
            return None;
        }
        crate::wire::write_message(&mut out, b'S', |_| {});
        Some(out)
    }

    // ----- client side -------------------------------------------------

    /// Decides what happens to one client message. `prepared` looks up the
    /// Parse message of a named statement created before capture started.
    pub(crate) fn on_client(
        &mut self,
        msg: FrontendMessage<'_>,
        prepared: &dyn Fn(&str) -> Option<bytes::Bytes>,
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
        if self.blocked() {
            return Ok(ClientAction::Hold);
        }
        let action = self.dispatch(msg, prepared)?;
        if !matches!(action, ClientAction::Hold) {
            // A Flush sent earlier does not cover what goes out now; the
            // server answers everything up to a Sync or Flush.
            self.flush_sent = matches!(tag, ftag::FLUSH | ftag::SYNC);
        }
        Ok(action)
    }

    fn dispatch(
        &mut self,
        msg: FrontendMessage<'_>,
        prepared: &dyn Fn(&str) -> Option<bytes::Bytes>,
    ) -> Result<ClientAction, WireError> {
        match msg.tag() {
            ftag::QUERY => self.on_query(Reader::new(msg.body(), "Query").cstr_bytes()?),
            ftag::PARSE => self.on_parse(msg),
            ftag::BIND => self.on_bind(msg, prepared),
            ftag::DESCRIBE => {
                let t = msg.target()?;
                let e = match t.kind {
                    TargetKind::Statement => {
                        let tap = self.statements.get(t.name).and_then(|p| p.info.tap.clone());
                        Expect::DescribeStatement {
                            name: t.name.to_owned(),
                            tap,
                        }
                    }
                    TargetKind::Portal => Expect::DescribePortal {
                        tap: self.portals.get(t.name).and_then(|i| i.tap.clone()),
                    },
                };
                self.expect.push_back(e);
                Ok(ClientAction::Forward)
            }
            ftag::EXECUTE => self.on_execute(msg),
            ftag::CLOSE => {
                let t = msg.target()?;
                match t.kind {
                    TargetKind::Statement => {
                        if let Some(p) = self.statements.remove(t.name) {
                            if p.server_name != t.name {
                                let mut out = rows::close_statement(&p.server_name);
                                out.extend_from_slice(msg.bytes());
                                self.expect.push_back(Expect::InjectedOne);
                                self.expect.push_back(Expect::Plain);
                                return Ok(ClientAction::Replace(out));
                            }
                        }
                    }
                    TargetKind::Portal => {
                        self.portals.remove(t.name);
                    }
                }
                self.expect.push_back(Expect::Plain);
                Ok(ClientAction::Forward)
            }
            ftag::SYNC => self.on_sync(),
            ftag::FUNCTION_CALL => {
                self.saw_unsafe("call", "function call message");
                self.expect.push_back(Expect::Ready { during_copy: false });
                Ok(ClientAction::Forward)
            }
            _ => Ok(ClientAction::Forward),
        }
    }

    fn on_query(&mut self, raw: &[u8]) -> Result<ClientAction, WireError> {
        // Any client encoding: classified through a view, spliced in the bytes.
        let view = super::classify_view(raw);
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
                return Ok(ClientAction::Replace(self.roll_back_refused(&message)));
            }
        }
        if !has_tap && !commits {
            self.apply_sent_tx(&infos);
            self.expect.push_back(Expect::Query {
                stmts: infos.into(),
                end: QueryEnd::Final,
                error: false,
            });
            return Ok(ClientAction::Forward);
        }
        // The plan depends on the settled transaction state.
        if !self.settled_for_plan() {
            return Ok(ClientAction::Hold);
        }
        if has_tap && !self.sent_block && !has_tx {
            // Autocommit write(s): BEGIN ahead, COMMIT once logged.
            let text = apply_splices(raw, 0, &splices);
            let mut out = rows::query("BEGIN");
            out.extend_from_slice(&rows::query_bytes(&text));
            self.expect.push_back(Expect::Injected);
            self.expect.push_back(Expect::Query {
                stmts: infos.into(),
                end: QueryEnd::Wrapped,
                error: false,
            });
            self.sent_block = true;
            return Ok(ClientAction::Replace(out));
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
                            CommitStep::Wait => return Ok(ClientAction::Hold),
                            CommitStep::Refuse(reason) => {
                                let out = self.refuse_simple(&reason);
                                return Ok(ClientAction::Replace(out));
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
                    self.expect.push_back(Expect::Query {
                        stmts: plain.into(),
                        end: QueryEnd::Final,
                        error: false,
                    });
                    return Ok(ClientAction::Forward);
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
        let end = if parts.is_empty() {
            QueryEnd::Final
        } else {
            QueryEnd::Part
        };
        self.expect.push_back(Expect::Query {
            stmts: stmts.into(),
            end,
            error: false,
        });
        if !parts.is_empty() {
            self.plan = Some(Plan::Parts(parts));
        } else if splices.is_empty() {
            return Ok(ClientAction::Forward);
        }
        Ok(ClientAction::Replace(rows::query_bytes(&text)))
    }

    fn reject_query(&mut self, rejection: Rejection) -> ClientAction {
        self.expect.push_back(Expect::Query {
            stmts: VecDeque::from([StmtInfo::default()]),
            end: QueryEnd::Final,
            error: false,
        });
        ClientAction::Replace(rows::query(&rows::raise_sql(
            REJECT_CODE,
            &rejection.message(),
            &reject_hint(rejection.kind),
        )))
    }

    fn apply_sent_tx(&mut self, infos: &[StmtInfo]) {
        for tx in infos.iter().filter_map(|i| i.tx.as_ref()) {
            self.sent_block = block_after(self.sent_block, tx);
        }
    }

    fn on_parse(&mut self, msg: FrontendMessage<'_>) -> Result<ClientAction, WireError> {
        let parse = msg.parse()?;
        let catalog = self.active.catalog.current();
        let view = super::classify_view(parse.query);
        let classified = self.shapes.classify(&view);
        let (info, splice) = match classified.as_slice() {
            [one] => {
                // Known once its CREATE completes (see on_query).
                let temp_before = self.temp_tables.clone();
                let analyzed = self.analyze(&catalog, &one.class, &view[one.range.clone()]);
                self.temp_tables = temp_before;
                analyzed
            }
            [] => (StmtInfo::default(), None),
            _ => (StmtInfo::default(), None), // the server refuses several statements in a Parse
        };
        if let Some(what) = info.lookup {
            return Ok(self.start_lookup(what));
        }
        let name = parse.name.to_owned();
        self.expect.push_back(Expect::Plain);
        match splice {
            Some(s) if info.rejected.is_none() => {
                let text = apply_splices(parse.query, 0, &[s]);
                let out = rows::rewrite_parse(msg.body(), &name, &text)?;
                self.statements.insert(
                    name.clone(),
                    Prepared {
                        info,
                        server_name: name,
                        columns: None,
                        original: Some(BytesMut::from(msg.bytes())),
                    },
                );
                Ok(ClientAction::Replace(out))
            }
            _ => {
                self.statements.insert(
                    name.clone(),
                    Prepared {
                        info,
                        server_name: name,
                        columns: None,
                        original: None,
                    },
                );
                Ok(ClientAction::Forward)
            }
        }
    }

    fn on_bind(
        &mut self,
        msg: FrontendMessage<'_>,
        prepared: &dyn Fn(&str) -> Option<bytes::Bytes>,
    ) -> Result<ClientAction, WireError> {
        let bind = msg.bind()?;
        let portal = bind.portal.to_owned();
        let mut out = BytesMut::new();
        if !self.statements.contains_key(bind.statement) {
            // Prepared before capture started: classify its text now and,
            // if it writes, prepare a spliced copy under a proxy-owned name.
            let known = (!bind.statement.is_empty()).then(|| prepared(bind.statement)).flatten();
            let Some(parse_bytes) = known else {
                if bind.statement.is_empty() {
                    self.saw_unsafe("unknown-statement", "unnamed statement prepared before capture started");
                }
                self.portals.insert(portal, StmtInfo::default());
                self.expect.push_back(Expect::Plain);
                return Ok(ClientAction::Forward);
            };
            let pmsg = FrontendMessage::new(&parse_bytes);
            let parse = pmsg.parse()?;
            let catalog = self.active.catalog.current();
            let view = super::classify_view(parse.query);
            let classified = self.shapes.classify(&view);
            let (info, splice) = match classified.as_slice() {
                [one] => {
                    // Known once its CREATE completes (see on_query).
                    let temp_before = self.temp_tables.clone();
                    let analyzed = self.analyze(&catalog, &one.class, &view[one.range.clone()]);
                    self.temp_tables = temp_before;
                    analyzed
                }
                _ => (StmtInfo::default(), None),
            };
            if let Some(what) = info.lookup {
                return Ok(self.start_lookup(what));
            }
            let mut server_name = bind.statement.to_owned();
            if let (Some(s), None) = (splice, &info.rejected) {
                self.next_name += 1;
                server_name = format!("switchyard_{}_{}", self.active.epoch, self.next_name);
                let text = apply_splices(parse.query, 0, &[s]);
                out.extend_from_slice(&rows::rewrite_parse(pmsg.body(), &server_name, &text)?);
                self.expect.push_back(Expect::InjectedOne);
            }
            self.statements.insert(
                bind.statement.to_owned(),
                Prepared {
                    info,
                    server_name,
                    columns: None,
                    original: None,
                },
            );
        }
        let Some(p) = self.statements.get(bind.statement) else {
            return Ok(ClientAction::Forward);
        };
        let info = p.info.clone();
        let server_name = p.server_name.clone();
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
        self.expect.push_back(Expect::Plain);
        if codes.is_none() && server_name == bind.statement && out.is_empty() {
            return Ok(ClientAction::Forward);
        }
        let (at, _) = rows::bind_formats(msg.body())?;
        out.extend_from_slice(&rows::rewrite_bind(msg.body(), &server_name, at, codes.as_deref())?);
        Ok(ClientAction::Replace(out))
    }

    fn on_execute(&mut self, msg: FrontendMessage<'_>) -> Result<ClientAction, WireError> {
        let portal = Reader::new(msg.body(), "Execute").cstr()?;
        let info = self.portals.get(portal).cloned().unwrap_or_default();
        if let Some(rejection) = &info.rejected {
            return Ok(ClientAction::Replace(self.raise_execute(rejection)));
        }
        if info.tx.as_ref().is_some_and(is_commit_like) {
            if let Some(message) = self.refuse_commit.take() {
                // ROLLBACK (its answers dropped), then an error for the client.
                let out = self.roll_back_extended_with(&rows::raise_sql(LOG_FAILED_CODE, &message, LOG_FAILED_HINT));
                return Ok(ClientAction::Replace(out));
            }
            // Keys of writes still in flight must be in before the commit goes.
            if !self.settled() {
                return Ok(ClientAction::Hold);
            }
            match self.commit_step() {
                CommitStep::Go => {}
                CommitStep::Wait => return Ok(ClientAction::Hold),
                CommitStep::Refuse(reason) => return Ok(ClientAction::Replace(self.refuse_extended_commit(&reason))),
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
        self.expect.push_back(Expect::Execute { info });
        Ok(ClientAction::Forward)
    }

    /// An unnamed Parse, Bind and Execute of a statement that raises
    /// `reason` (SQLSTATE 0A000), run in place of a client's Execute so its
    /// transaction fails as on a real error.
    fn raise_execute(&mut self, rejection: &Rejection) -> BytesMut {
        self.raise_extended_sql(&rows::raise_sql(
            REJECT_CODE,
            &rejection.message(),
            &reject_hint(rejection.kind),
        ))
    }

    /// In place of a simple-protocol commit: a ROLLBACK whose completion
    /// the client does not see, then the error in one query, so that it
    /// gets what a failed COMMIT gives (an error, then idle). Settings the
    /// transaction made are dropped with it (the error marks it failed for
    /// the tracked state), and a wrapped query's last CommandComplete,
    /// still held, is never sent: PostgreSQL sends none for a statement
    /// whose commit failed.
    fn refuse_simple(&mut self, rejection: &Rejection) -> BytesMut {
        if let Some(d) = self.deferred.as_mut() {
            d.bytes.truncate(d.last_complete);
        }
        self.tx.clear();
        // Decided here: what the client sends next (it may not wait for
        // the answer) already resolves names as after the rollback.
        self.paths.end_tx(false);
        self.roll_back_with(&rows::raise_sql(
            REJECT_CODE,
            &rejection.message(),
            &reject_hint(rejection.kind),
        ))
    }

    /// In place of an extended-protocol COMMIT's Execute: a ROLLBACK whose
    /// answers are dropped, then the error, so that the transaction ends as
    /// after a failed COMMIT instead of staying open and failed.
    fn refuse_extended_commit(&mut self, rejection: &Rejection) -> BytesMut {
        self.tx.clear();
        self.paths.end_tx(false);
        self.roll_back_extended_with(&rows::raise_sql(
            REJECT_CODE,
            &rejection.message(),
            &reject_hint(rejection.kind),
        ))
    }

    /// An extended-protocol ROLLBACK whose answers are dropped, then the
    /// statement `raise` (an error for the client).
    fn roll_back_extended_with(&mut self, raise: &str) -> BytesMut {
        let mut out = rows::extended_once("ROLLBACK");
        for _ in 0..3 {
            self.expect.push_back(Expect::InjectedOne);
        }
        out.extend_from_slice(&self.raise_extended_sql(raise));
        self.sent_block = false;
        out
    }

    fn on_sync(&mut self) -> Result<ClientAction, WireError> {
        if let Some(message) = self.refuse_commit.take() {
            // The implicit transaction must not commit: fail it, then Sync.
            let mut out = self.raise_extended(&message);
            crate::wire::write_message(&mut out, b'S', |_| {});
            self.batch_taps = false;
            self.expect.push_back(Expect::Ready { during_copy: false });
            return Ok(ClientAction::Replace(out));
        }
        if self.copy_sent {
            // Ignored by the server if its COPY started: no commit here.
            self.expect.push_back(Expect::Ready { during_copy: true });
            return Ok(ClientAction::Forward);
        }
        if self.batch_taps && !self.sent_block && !self.tx_error {
            // The implicit transaction commits at this Sync.
            if !self.settled() {
                return Ok(ClientAction::Hold);
            }
            match self.commit_step() {
                CommitStep::Go => {}
                CommitStep::Wait => return Ok(ClientAction::Hold),
                CommitStep::Refuse(reason) => {
                    // An error ahead of the Sync: the implicit transaction
                    // ends rolled back.
                    let mut out = self.raise_execute(&reason);
                    crate::wire::write_message(&mut out, b'S', |_| {});
                    self.batch_taps = false;
                    self.expect.push_back(Expect::Ready { during_copy: false });
                    return Ok(ClientAction::Replace(out));
                }
            }
        }
        self.batch_taps = false;
        self.expect.push_back(Expect::Ready { during_copy: false });
        Ok(ClientAction::Forward)
    }

    /// Whether every key written so far is in (no write's result is still
    /// in flight); if not, makes sure the server sends what it has (Flush)
    /// and returns false.
    fn settled(&mut self) -> bool {
        let in_flight = self.expect.iter().any(|e| match e {
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
            self.work.push_back(Work::Send(rows::flush()));
        }
        false
    }

    /// [`Self::settled`], for planning a simple query.
    fn settled_for_plan(&mut self) -> bool {
        self.settled()
    }

    /// Classifies one statement for capture: its tap and splice, its
    /// transaction control, or its rejection.
    fn analyze(&mut self, catalog: &Catalog, class: &Class, text: &str) -> (StmtInfo, Option<(usize, String)>) {
        let mut info = StmtInfo::default();
        match class {
            Class::Read { functions, refs } => {
                if let Some(reached) = self.reaches(catalog, functions, refs) {
                    self.unsafe_reached(&mut info, &reached, text);
                }
                // Computed arguments make resolution a guess from here; each
                // row's tableoid still says where it went.
                info.path_change = resolve::set_config_change(text);
            }
            Class::TxControl(tx) => {
                info.tx = Some(tx.clone());
            }
            Class::Utility(super::Utility::Set | super::Utility::Reset | super::Utility::Discard) => {
                info.path_change = resolve::utility_change(text);
            }
            Class::Utility(_) => {}
            Class::Write(w) => return self.analyze_write(catalog, w, text),
            Class::Prepare { .. } | Class::Execute { .. } => {
                // SQL-level PREPARE/EXECUTE of a write cannot be spliced here.
                if let Class::Prepare { statement, .. } = class {
                    if matches!(**statement, Class::Write(_) | Class::Unsafe(_)) {
                        self.unsafe_kind(&mut info, "unknown-statement", text);
                    }
                } else {
                    self.unsafe_kind(&mut info, "unknown-statement", text);
                }
            }
            Class::Unsafe(kind) => {
                if let Some(t) = temp_table_created(text) {
                    // Known at once: later statements of the same query may write it.
                    self.temp_tables.insert(t.clone());
                    info.temp_table = Some(t);
                    return (info, None);
                }
                if matches!(kind, UnsafeKind::Ddl) && self.drops_only_temp(text) {
                    return (info, None);
                }
                if let UnsafeKind::CopyFrom { table, columns } = kind {
                    if !self.is_temp(table)
                        && catalog
                            .table(table.schema.as_deref(), &table.name, self.paths.schemas())
                            .is_none()
                    {
                        let what = self.name_lookup(catalog, table);
                        if !self.active.catalog.is_missing(&what) {
                            info.lookup = Some(what);
                            return (info, None);
                        }
                    }
                    // COPY FROM runs defaults, checks and domain checks too.
                    let reached = (!self.is_temp(table)).then(|| self.target_reaches(catalog, table, Access::Insert));
                    if let Some(reached) = reached.flatten() {
                        self.unsafe_reached(&mut info, &reached, text);
                        return (info, None);
                    }
                    if let Some(copy) = self.copy_tap(catalog, table, columns, text) {
                        info.copy = Some(Arc::new(copy));
                        return (info, None);
                    }
                    if self.is_temp(table) {
                        return (info, None);
                    }
                }
                if let UnsafeKind::PrepareTransaction { .. } = kind {
                    // Ends the block like a COMMIT: held until logged.
                    info.tx = Some(TxControl::Commit { chain: false });
                }
                self.unsafe_kind(&mut info, kind.name(), text);
            }
        }
        (info, None)
    }

    fn analyze_write(&mut self, catalog: &Catalog, w: &WriteStmt, text: &str) -> (StmtInfo, Option<(usize, String)>) {
        let mut info = StmtInfo::default();
        let temp = match &w.table.schema {
            Some(s) => s.starts_with("pg_temp"),
            None => self.temp_tables.contains(&w.table.name),
        };
        if temp {
            return (info, None);
        }
        let Some(table) = catalog.table(w.table.schema.as_deref(), &w.table.name, self.paths.schemas()) else {
            let what = self.name_lookup(catalog, &w.table);
            if !self.active.catalog.is_missing(&what) {
                info.lookup = Some(what);
                return (info, None);
            }
            self.unsafe_kind(&mut info, "unknown-table", text);
            return (info, None);
        };
        let Some(key) = &table.key else {
            self.unsafe_kind(&mut info, "no-key", text);
            return (info, None);
        };
        let cols: Vec<&str> = key.columns.iter().map(String::as_str).collect();
        if (w.kind == WriteKind::Update || w.on_conflict) && w.assigns_any(&cols) {
            self.unsafe_kind(&mut info, "key-update", text);
            return (info, None);
        }
        let access = match w.kind {
            WriteKind::Insert => Access::Insert,
            WriteKind::Update => Access::Update,
            WriteKind::Delete => Access::Delete,
        };
        // ON CONFLICT DO UPDATE updates as well as inserts.
        let reached = self
            .reaches(catalog, &w.functions, &w.refs)
            .or_else(|| self.target_reaches(catalog, &w.table, access))
            .or_else(|| {
                w.on_conflict
                    .then(|| self.target_reaches(catalog, &w.table, Access::Update))
                    .flatten()
            });
        if let Some(reached) = reached {
            self.unsafe_reached(&mut info, &reached, text);
            return (info, None);
        }
        if table.has_side_effects() {
            self.unsafe_kind(&mut info, "trigger", text);
            if info.rejected.is_some() {
                return (info, None);
            }
        }
        let mut projection = vec!["tableoid"];
        projection.extend(cols.iter().copied());
        let suffix = key_projection(w, &projection);
        info.tap = Some(Arc::new(Tap {
            table: format!("{}.{}", table.name.schema, table.name.name),
            oid: table.oid,
            key_columns: key.columns.clone(),
            extra: projection.len(),
            client_returning: w.has_returning,
            text: super::control::shorten(text, 1000),
        }));
        (info, Some((w.splice_at, suffix)))
    }

    fn is_temp(&self, table: &super::QualName) -> bool {
        match &table.schema {
            Some(s) => s.starts_with("pg_temp"),
            None => self.temp_tables.contains(&table.name),
        }
    }

    /// How to read the keys of a COPY FROM STDIN from its data, when the
    /// table has a key, every key column is in the data, and the options
    /// are ones [`CopyReader`] reads.
    fn copy_tap(&self, catalog: &Catalog, table: &super::QualName, columns: &[String], text: &str) -> Option<CopyTap> {
        if self.is_temp(table) {
            return None;
        }
        if table.schema.is_none() && self.paths.certainty() == resolve::Certainty::Guessed {
            // COPY rows carry no tableoid to check the guess against.
            return None;
        }
        let (format, header) = copy_options(text)?;
        let t = catalog.table(table.schema.as_deref(), &table.name, self.paths.schemas())?;
        let key = t.key.as_ref()?;
        if t.has_side_effects() {
            return None;
        }
        let names: Vec<&str> = if columns.is_empty() {
            t.columns.iter().map(|c| c.name.as_str()).collect()
        } else {
            columns.iter().map(String::as_str).collect()
        };
        let positions = key
            .columns
            .iter()
            .map(|k| names.iter().position(|n| n == k))
            .collect::<Option<Vec<usize>>>()?;
        Some(CopyTap {
            tap: Arc::new(Tap {
                table: format!("{}.{}", t.name.schema, t.name.name),
                oid: t.oid,
                key_columns: key.columns.clone(),
                extra: 0,
                client_returning: false,
                text: super::control::shorten(text, 1000),
            }),
            format,
            header,
            positions,
        })
    }

    /// The first function that may write (user VOLATILE and not declared
    /// read-only, or a built-in writer) that a statement calls, or runs
    /// unnamed through a relation it reads, an operator or a cast.
    fn reaches(&self, catalog: &Catalog, functions: &[super::QualName], refs: &super::Refs) -> Option<Reached> {
        let ro = &self.active.read_only;
        let path = self.paths.schemas();
        let called = functions.iter().find_map(|f| {
            catalog
                .function_reaches(f.schema.as_deref(), &f.name, ro)
                // `mytype(x)` is a cast when no function has that name.
                .or_else(|| catalog.cast_reaches(f.schema.as_deref(), &f.name, path, ro))
        });
        called
            .or_else(|| {
                refs.relations
                    .iter()
                    .filter(|r| !self.is_temp(r))
                    .find_map(|r| catalog.relation_reaches(r.schema.as_deref(), &r.name, Access::Read, path, ro))
            })
            .or_else(|| refs.operators.iter().find_map(|o| catalog.operator_reaches(o, ro)))
            .or_else(|| {
                refs.types
                    .iter()
                    .find_map(|t| catalog.cast_reaches(t.schema.as_deref(), &t.name, path, ro))
            })
    }

    /// What writing `table` this way runs unnamed (defaults, checks,
    /// domains, policies).
    fn target_reaches(&self, catalog: &Catalog, table: &super::QualName, access: Access) -> Option<Reached> {
        let ro = &self.active.read_only;
        catalog.relation_reaches(table.schema.as_deref(), &table.name, access, self.paths.schemas(), ro)
    }

    /// Counts a `volatile-function` statement; under `reject` its error
    /// names the function and how the statement reaches it.
    fn unsafe_reached(&mut self, info: &mut StmtInfo, reached: &Reached, text: &str) {
        const KIND: &str = "volatile-function";
        if self.saw_unsafe(KIND, text) == UnsafePolicy::Reject {
            info.rejected = Some(Rejection {
                kind: KIND,
                detail: Some(reached.to_string()),
                transaction: false,
            });
        }
    }

    fn drops_only_temp(&self, text: &str) -> bool {
        let lower = text.to_ascii_lowercase();
        let Some(rest) = lower.strip_prefix("drop table") else {
            return false;
        };
        let rest = rest.trim_start().strip_prefix("if exists").unwrap_or(rest);
        let names: Vec<&str> = rest.split(',').map(|n| n.trim().trim_end_matches(';').trim()).collect();
        !names.is_empty() && names.iter().all(|n| self.temp_tables.contains(*n))
    }

    fn unsafe_kind(&mut self, info: &mut StmtInfo, kind: &'static str, text: &str) {
        if self.saw_unsafe(kind, text) == UnsafePolicy::Reject {
            info.rejected = Some(Rejection::statement(kind));
        }
    }

    fn saw_unsafe(&self, kind: &'static str, text: &str) -> UnsafePolicy {
        tracing::debug!(session = self.session_id, kind, statement = %super::control::shorten(text, 200), "unsafe statement while capturing");
        self.active.saw_unsafe(kind, text)
    }

    // ----- server side -------------------------------------------------

    /// Decides what happens to one server message; while a wrapped query's
    /// answer is held back, keeps it until the ReadyForQuery that ends it.
    pub(crate) fn on_server(&mut self, msg: BackendMessage<'_>) -> Result<ServerAction, WireError> {
        // From the first message of the wrapped query's own answer (not of
        // queries pipelined ahead of it) to the ReadyForQuery after COMMIT.
        let wrapped = matches!(
            self.expect.front(),
            Some(Expect::Query {
                end: QueryEnd::Wrapped,
                ..
            })
        );
        if wrapped && self.deferred.is_none() {
            self.deferred = Some(Deferred::default());
        }
        if self.deferred.is_none() {
            return self.answer(msg);
        }
        let tag = msg.tag();
        let wrap_end = matches!(self.expect.front(), Some(Expect::WrapEnd));
        if wrap_end && tag == btag::ERROR_RESPONSE {
            if let Some(d) = self.deferred.as_mut().filter(|d| d.committing) {
                // The COMMIT failed: the last statement never completed.
                d.bytes.truncate(d.last_complete);
            }
        }
        let action = self.answer(msg)?;
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
        }
        Ok(ServerAction::Defer)
    }

    /// [`Self::on_server`] for one message, as the client would get it now.
    fn answer(&mut self, msg: BackendMessage<'_>) -> Result<ServerAction, WireError> {
        let tag = msg.tag();
        if matches!(
            tag,
            btag::NOTICE_RESPONSE | btag::NOTIFICATION_RESPONSE | btag::PARAMETER_STATUS
        ) {
            return Ok(ServerAction::Forward);
        }
        if tag == btag::ERROR_RESPONSE {
            return Ok(self.on_error());
        }
        if tag == btag::READY_FOR_QUERY {
            return self.on_ready(msg);
        }
        if tag == btag::COPY_IN_RESPONSE {
            let copy = match self.expect.front() {
                Some(Expect::Query { stmts, .. }) => stmts.front().and_then(|s| s.copy.clone()),
                Some(Expect::Execute { info }) => info.copy.clone(),
                _ => None,
            };
            self.copy_in = copy.map(|c| (CopyReader::new(c.format, c.header, c.positions.clone()), c.tap.clone()));
            // Syncs sent since the COPY and before its data ended get no answer.
            let mut i = 1;
            while i < self.expect.len() {
                if matches!(self.expect[i], Expect::Ready { during_copy: true }) {
                    self.expect.remove(i);
                } else {
                    i += 1;
                }
            }
            return Ok(ServerAction::Forward);
        }
        let Some(front) = self.expect.front_mut() else {
            return Ok(ServerAction::Forward);
        };
        match front {
            Expect::Injected => Ok(ServerAction::Drop),
            Expect::Failed => Ok(if tag == btag::COMMAND_COMPLETE {
                ServerAction::Drop
            } else {
                ServerAction::Forward
            }),
            Expect::Probe => {
                if tag == btag::DATA_ROW {
                    let (values, _) = rows::split_data_row(msg.body(), 4, false)?;
                    if let [Some(path), Some(reset), Some(session_user), Some(current_user)] = values.as_slice() {
                        self.paths.learned(
                            parse_search_path(path),
                            parse_search_path(reset),
                            session_user.clone(),
                            current_user.clone(),
                        );
                    }
                }
                Ok(ServerAction::Drop)
            }
            Expect::WrapEnd => Ok(if tag == btag::COMMAND_COMPLETE {
                ServerAction::Drop
            } else {
                ServerAction::Forward
            }),
            Expect::InjectedOne => {
                self.expect.pop_front();
                Ok(ServerAction::Drop)
            }
            Expect::Plain => {
                self.expect.pop_front();
                Ok(ServerAction::Forward)
            }
            Expect::Ready { .. } => Ok(ServerAction::Forward),
            Expect::DescribeStatement { name, tap } => match tag {
                btag::ROW_DESCRIPTION => {
                    let tap = tap.clone();
                    let name = name.clone();
                    self.expect.pop_front();
                    match tap {
                        Some(tap) => {
                            let (stripped, n) = rows::strip_row_description(msg.body(), tap.extra)?;
                            if let Some(p) = self.statements.get_mut(&name) {
                                p.columns = Some(n);
                            }
                            Ok(if tap.client_returning {
                                ServerAction::Replace(stripped)
                            } else {
                                ServerAction::Replace(rows::no_data())
                            })
                        }
                        None => Ok(ServerAction::Forward),
                    }
                }
                btag::NO_DATA => {
                    self.expect.pop_front();
                    Ok(ServerAction::Forward)
                }
                _ => Ok(ServerAction::Forward),
            },
            Expect::DescribePortal { tap } => {
                let tap = tap.clone();
                self.expect.pop_front();
                match (tag, tap) {
                    (btag::ROW_DESCRIPTION, Some(tap)) => {
                        let (stripped, _) = rows::strip_row_description(msg.body(), tap.extra)?;
                        Ok(if tap.client_returning {
                            ServerAction::Replace(stripped)
                        } else {
                            ServerAction::Replace(rows::no_data())
                        })
                    }
                    _ => Ok(ServerAction::Forward),
                }
            }
            Expect::Execute { info } => match tag {
                btag::DATA_ROW => {
                    let tap = info.tap.clone();
                    self.on_row(tap, msg)
                }
                btag::COMMAND_COMPLETE | btag::PORTAL_SUSPENDED | btag::EMPTY_QUERY_RESPONSE => {
                    let Some(Expect::Execute { info }) = self.expect.pop_front() else {
                        unreachable!("front was an Execute");
                    };
                    if tag == btag::COMMAND_COMPLETE {
                        self.completed(&info, msg.command_tag().unwrap_or(""));
                    }
                    Ok(ServerAction::Forward)
                }
                _ => Ok(ServerAction::Forward),
            },
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

    fn on_error(&mut self) -> ServerAction {
        self.tx_error = true;
        match self.expect.front_mut() {
            Some(Expect::Query { stmts, error, .. }) => {
                stmts.clear();
                *error = true;
                ServerAction::Forward
            }
            Some(Expect::Injected | Expect::WrapEnd | Expect::Failed) => ServerAction::Forward,
            // Cannot fail short of a broken server; the client never asked.
            Some(Expect::Probe) => ServerAction::Drop,
            _ => {
                // Extended protocol: the server skips to the next Sync.
                while let Some(e) = self.expect.front() {
                    if matches!(
                        e,
                        Expect::Ready { .. }
                            | Expect::Query { .. }
                            | Expect::Injected
                            | Expect::WrapEnd
                            | Expect::Failed
                            | Expect::Probe
                    ) {
                        break;
                    }
                    self.expect.pop_front();
                }
                ServerAction::Forward
            }
        }
    }

    fn on_ready(&mut self, msg: BackendMessage<'_>) -> Result<ServerAction, WireError> {
        let status = msg.ready_status()?;
        let in_block = status != crate::wire::backend::TxStatus::Idle;
        let failed = status == crate::wire::backend::TxStatus::Failed;
        let expect = self.expect.pop_front();
        if self.expect.is_empty() {
            self.flush_sent = false;
        }
        let action = match expect {
            Some(Expect::Injected | Expect::Probe) => ServerAction::Drop,
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
                    return Ok(ServerAction::Drop);
                }
            }
            Some(Expect::Query {
                end: QueryEnd::Wrapped, ..
            }) => {
                self.block = in_block;
                if failed || !in_block {
                    self.tx.clear();
                    if in_block {
                        self.work.push_back(Work::Send(rows::query("ROLLBACK")));
                        self.expect.push_back(Expect::WrapEnd);
                        return Ok(ServerAction::Drop);
                    }
                    ServerAction::Forward
                } else {
                    self.plan = Some(Plan::WrapCommit);
                    self.advance_plan();
                    return Ok(ServerAction::Drop);
                }
            }
            _ => ServerAction::Forward,
        };
        self.block = in_block;
        if self.expect.is_empty() {
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

    /// Moves a stepped query on: logs the keys first if there are any.
    fn advance_plan(&mut self) {
        if !self.expect.is_empty() || self.logging || self.lookup.is_some() {
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
                self.work.push_back(Work::Send(out));
                return;
            }
        }
        match self.plan.take() {
            Some(Plan::WrapCommit) => {
                if let Some(d) = self.deferred.as_mut() {
                    d.committing = true;
                }
                self.work.push_back(Work::Send(rows::query("COMMIT")));
                self.expect.push_back(Expect::WrapEnd);
            }
            Some(Plan::Parts(mut parts)) => {
                let Some((text, stmts)) = parts.pop_front() else { return };
                let end = if parts.is_empty() {
                    QueryEnd::Final
                } else {
                    QueryEnd::Part
                };
                self.expect.push_back(Expect::Query {
                    stmts: stmts.into(),
                    end,
                    error: false,
                });
                self.work.push_back(Work::Send(rows::query_bytes(&text)));
                if !parts.is_empty() {
                    self.plan = Some(Plan::Parts(parts));
                }
            }
            None => {}
        }
    }

    // ----- the log ------------------------------------------------------

    fn record(&mut self) -> Record {
        let mut tables: BTreeMap<String, TableKeys> = BTreeMap::new();
        let mut statements: Vec<String> = Vec::new();
        for Written { tap, key, .. } in self.tx.keys.drain(..) {
            let t = tables.entry(tap.table.clone()).or_insert_with(|| TableKeys {
                table: tap.table.clone(),
                key_columns: tap.key_columns.clone(),
                keys: Vec::new(),
            });
            t.keys.push(key);
            if statements.last() != Some(&tap.text) {
                statements.push(tap.text.clone());
            }
        }
        self.tx.savepoints.clear();
        let n: usize = tables.values().map(|t| t.keys.len()).sum();
        count_commit(&self.active, n);
        Record::Commit(CommitRecord {
            session_id: self.session_id,
            commit_time_micros: unix_micros(SystemTime::now()),
            tables: tables.into_values().collect(),
            statements,
            backend_pid: self.backend_pid,
        })
    }

    fn start_log(&mut self) {
        let record = self.record();
        self.logging = true;
        self.work.push_back(Work::Log { record, hold: true });
    }

    fn log_late(&mut self) {
        let (_, bad, _) = self.rebind();
        self.drop_rows(&bad);
        self.active.late.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            session = self.session_id,
            "keys logged after their commit; a commit path was not held"
        );
        let record = self.record();
        self.work.push_back(Work::Log { record, hold: false });
    }

    /// The append started for the current hold finished.
    pub(crate) fn logged(&mut self) {
        self.logging = false;
        self.advance_plan();
    }

    /// The append started for the current hold failed: the commit it held
    /// must not reach the database. A commit the proxy itself would send
    /// (a wrapped query, the next part of a split one) is replaced by a
    /// rollback and an error now; a client's COMMIT or Sync, held in its
    /// read buffer, is refused when it is presented again.
    pub(crate) fn log_failed(&mut self, message: String) {
        self.logging = false;
        self.tx.clear();
        match self.plan.take() {
            Some(Plan::WrapCommit | Plan::Parts(_)) => {
                self.deferred = None;
                let out = self.roll_back_refused(&message);
                self.work.push_back(Work::Send(out));
            }
            None => self.refuse_commit = Some(message),
        }
    }

    /// A simple query that rolls the open transaction back and fails with
    /// `message`: ReadyForQuery then says idle, as after a failed COMMIT.
    fn roll_back_refused(&mut self, message: &str) -> BytesMut {
        self.roll_back_with(&rows::raise_sql(LOG_FAILED_CODE, message, LOG_FAILED_HINT))
    }

    /// One simple query: ROLLBACK (its completion dropped), then the
    /// statement `raise`, whose error and the idle ReadyForQuery reach the
    /// client.
    fn roll_back_with(&mut self, raise: &str) -> BytesMut {
        self.expect.push_back(Expect::Failed);
        self.sent_block = false;
        rows::query(&format!("ROLLBACK; {raise}"))
    }

    /// Parse/Bind/Execute of a statement failing with `message`, whose
    /// Parse and Bind completions are dropped and whose error goes to the
    /// client (the server then skips to the next Sync).
    fn raise_extended(&mut self, message: &str) -> BytesMut {
        self.raise_extended_sql(&rows::raise_sql(LOG_FAILED_CODE, message, LOG_FAILED_HINT))
    }

    /// Parse/Bind/Execute of the statement `raise` (it fails), whose Parse
    /// and Bind completions are dropped and whose error goes to the client.
    fn raise_extended_sql(&mut self, raise: &str) -> BytesMut {
        let out = rows::extended_once(raise);
        self.expect.push_back(Expect::InjectedOne);
        self.expect.push_back(Expect::InjectedOne);
        self.expect.push_back(Expect::Execute {
            info: StmtInfo::default(),
        });
        out
    }
}

/// SQLSTATE of a commit refused because its keys could not be logged.
const LOG_FAILED_CODE: &str = "58030";

const LOG_FAILED_HINT: &str = "nothing was committed; SHOW CAPTURE on the switchyard console shows the log's failure. \
Free space in (or repair) the capture log directory: capture goes on by itself once the log can be written";

/// The hint of a rejection: what to do, and what `warn` would give up.
fn reject_hint(kind: &str) -> String {
    format!(
        "switchyard write capture is on and cannot capture this statement; run it after the migration, \
or, accepting that such writes will not be captured (the migrated copy will miss them), \
set capture.policies.{kind} = \"warn\""
    )
}

fn is_commit_like(tx: &TxControl) -> bool {
    matches!(tx, TxControl::Commit { .. })
}

fn block_after(block: bool, tx: &TxControl) -> bool {
    match tx {
        TxControl::Begin => true,
        TxControl::Commit { chain } | TxControl::Rollback { chain } => *chain,
        _ => block,
    }
}

/// The text spliced after a write: ` RETURNING q."tableoid"::text,
/// <key>, ...` (or `, ...` after the client's own list), where each key
/// column after the first (tableoid) is `q."c"::text` converted to UTF-8
/// and hex-encoded. Cast to text, the values read the same whatever result
/// format the client asked for (the binary form of `text` is its
/// characters); hex-encoded UTF-8, they read the same whatever the
/// session's client_encoding, which the server converts text results to
/// (see [`key_text`]).
fn key_projection(w: &WriteStmt, columns: &[&str]) -> String {
    let qualifier = match &w.alias {
        Some(a) => quote_ident(a),
        None => w.table.quoted(),
    };
    let cols: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| match i {
            0 => format!("{qualifier}.{}::text", quote_ident(c)),
            _ => format!(
                "pg_catalog.encode(pg_catalog.convert_to({qualifier}.{}::text, 'UTF8'), 'hex')",
                quote_ident(c)
            ),
        })
        .collect();
    let lead = if w.has_returning { ", " } else { " RETURNING " };
    format!("{lead}{}", cols.join(", "))
}

/// A key value as [`key_projection`] sent it (its text as UTF-8, in hex)
/// back as text. Anything else is kept as it came.
fn key_text(hex: &str) -> String {
    let digits = hex.as_bytes();
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let bytes: Option<Vec<u8>> = digits
        .chunks(2)
        .map(|pair| match pair {
            [h, l] => Some(nibble(*h)? << 4 | nibble(*l)?),
            _ => None,
        })
        .collect();
    match bytes.map(String::from_utf8) {
        Some(Ok(text)) => text,
        _ => hex.to_owned(),
    }
}

/// `text[from..]` (of a text cut at its end) with `splices` (absolute offsets) applied.
fn apply_splices(text: &[u8], from: usize, splices: &[(usize, String)]) -> Vec<u8> {
    let mut points: Vec<&(usize, String)> = splices
        .iter()
        .filter(|(at, _)| *at >= from && *at <= text.len())
        .collect();
    points.sort_by_key(|(at, _)| *at);
    let mut out = Vec::with_capacity(text.len() - from + 64);
    let mut at = from;
    for (p, s) in points {
        out.extend_from_slice(&text[at..*p]);
        out.extend_from_slice(s.as_bytes());
        at = *p;
    }
    out.extend_from_slice(&text[at..]);
    out
}

/// The schemas of `SET [SESSION] search_path TO|= ...`.
pub(crate) fn set_search_path(text: &str) -> Option<Vec<String>> {
    let lower = text.to_ascii_lowercase();
    let rest = lower.strip_prefix("set")?.trim_start();
    let rest = rest.strip_prefix("session").map(str::trim_start).unwrap_or(rest);
    let rest = rest.strip_prefix("search_path")?.trim_start();
    let value = rest.strip_prefix("to").or_else(|| rest.strip_prefix('='))?.trim();
    let value = &text[text.len() - value.len()..];
    if value.eq_ignore_ascii_case("default") {
        return Some(Vec::new());
    }
    Some(parse_search_path(value))
}

/// The table a `CREATE [GLOBAL|LOCAL] TEMP[ORARY] TABLE [IF NOT EXISTS] name` creates.
fn temp_table_created(text: &str) -> Option<String> {
    let mut words = text.split_whitespace().map(|w| w.to_ascii_lowercase());
    if words.next()? != "create" {
        return None;
    }
    let mut w = words.next()?;
    if w == "global" || w == "local" {
        w = words.next()?;
    }
    if w != "temp" && w != "temporary" {
        return None;
    }
    if words.next()? != "table" {
        return None;
    }
    let mut name = words.next()?;
    if name == "if" {
        words.next();
        words.next();
        name = words.next()?;
    }
    let name = name.split('(').next()?.trim_end_matches(';').to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_from_set() {
        assert_eq!(
            set_search_path("SET search_path TO app, public"),
            Some(vec!["app".into(), "public".into()])
        );
        assert_eq!(
            set_search_path("set session search_path = \"My\""),
            Some(vec!["My".into()])
        );
        assert_eq!(set_search_path("SET work_mem = '4MB'"), None);
    }

    #[test]
    fn temp_tables_recognized() {
        assert_eq!(temp_table_created("CREATE TEMP TABLE t (id int)"), Some("t".into()));
        assert_eq!(
            temp_table_created("create temporary table if not exists x(id int)"),
            Some("x".into())
        );
        assert_eq!(temp_table_created("CREATE TABLE t (id int)"), None);
    }

    #[test]
    fn splices_applied_relative_to_a_part() {
        let sql = "BEGIN; INSERT INTO t VALUES (1); COMMIT";
        let at = sql.find("; COMMIT").unwrap();
        assert_eq!(
            apply_splices(sql[..at + 2].as_bytes(), 0, &[(at, " RETURNING id".into())]),
            b"BEGIN; INSERT INTO t VALUES (1) RETURNING id; "
        );
        assert_eq!(apply_splices(sql.as_bytes(), at + 2, &[]), b"COMMIT");
    }
}
