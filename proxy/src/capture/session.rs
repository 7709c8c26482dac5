//! One session's capture: rewrites writes to return their keys, filters the
//! keys out of what the client sees, buffers them per transaction (with
//! savepoints), and holds every commit until its keys are in the log.
//!
//! The relay hands every client message to [`SessionCapture::on_client`]
//! and every server message to [`SessionCapture::on_server`], and drains
//! [`SessionCapture::take_work`] after each: messages the proxy injects
//! (BEGIN/COMMIT around an autocommit write, Flush before a held Sync,
//! re-prepared statements) and log appends to start. Every request sent,
//! the client's and capture's own, is an entry of the session's one
//! conversation with the server, which says which request each server
//! message answers; capture keeps, per entry, what it makes of the answer
//! (an [`Expect`]). Answers to injected messages are swallowed here, so
//! the client and the session state see exactly the conversation they
//! would have without capture.
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

use super::control::Active;
use super::copy::{CopyFormat, CopyReader};
use super::resolve::{self, Change, SearchPath};
use super::rows;
use super::{ClassifyCache, TxControl};
use crate::session::conversation::{EntryId, EntryMap, Request};
use crate::session::statements::Statements;
use bytes::BytesMut;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use switchyard_replay::catalog::TableLookup;
use switchyard_replay::log::{Key, Record};

mod analyze;
mod client;
mod commit;
mod log;
mod refuse;
mod server;

pub(crate) use analyze::set_search_path;
use server::Deferred;

/// SQLSTATE of a statement rejected by the `reject` policy.
const REJECT_CODE: &str = "0A000";

/// What the session's unqualified names resolve through, asked of the
/// server when capture starts for it: the search_path in force and the
/// users (one row), then the value RESET restores (a second row), read by
/// setting the default for the rest of the query's implicit transaction
/// only. (`pg_settings` has that value too, but reading the view builds
/// every setting's row: over a millisecond of the server's CPU per
/// session, which a cutover pays for every session at the same moment.)
/// Sent at a transaction boundary, so the implicit transaction is the
/// query's own and nothing of it outlives the query, even on an error.
const PROBE_SQL: &str = "SELECT pg_catalog.current_setting('search_path'), session_user::text, current_user::text; \
     SET LOCAL search_path TO DEFAULT; \
     SELECT pg_catalog.current_setting('search_path')";

/// What the relay does with a client message.
#[derive(Debug)]
pub(crate) enum ClientAction {
    /// Send it as it is.
    Forward,
    /// Send these bytes in its place: requests of capture's own first, the
    /// client's message (as capture rewrote it) last.
    Replace(Outgoing),
    /// Leave it in the buffer; present it again once [`SessionCapture::blocked`] clears.
    Hold,
}

/// What capture decided for a client message, before the requests it
/// sends are sorted into its own and the client's.
#[derive(Debug)]
enum Decided {
    Forward,
    Replace(BytesMut),
    Hold,
}

/// Bytes capture sends, with the requests of its own among them: the relay
/// opens an entry for each, in order, as it queues the bytes, and reports
/// it with [`SessionCapture::noted`].
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) bytes: BytesMut,
    pub(crate) own: Vec<(Request, Note)>,
}

impl Outgoing {
    /// Bytes that make no request (a Flush).
    fn bare(bytes: BytesMut) -> Outgoing {
        Outgoing { bytes, own: Vec::new() }
    }
}

/// What capture makes of the answer to one request (opaque to the relay).
#[derive(Debug)]
pub(crate) struct Note(Expect);

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
    /// The ReadyForQuery of the client's query, which the client must not
    /// see: the proxy goes on with that query (the COMMIT of a query it
    /// wrapped, the next part of one it split). Its entry waits for the
    /// [`Work::Continue`] that does.
    Continue,
}

/// Work for the relay.
#[derive(Debug)]
pub(crate) enum Work {
    /// Send to the server (before anything forwarded after it).
    Send(Outgoing),
    /// Send this query, which goes on with the client's query the last
    /// [`ServerAction::Continue`] held: the client's entry is owed its
    /// answer, which capture reads as the note says.
    Continue(BytesMut, Note),
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

    /// The statement that raises it (SQLSTATE 0A000, with the hint).
    fn raise_sql(&self) -> String {
        rows::raise_sql(REJECT_CODE, &self.message(), &reject_hint(self.kind))
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

/// What capture makes of a prepared statement (extended protocol): its
/// note in the session's statement registry, which also holds the
/// proxy-owned name of a spliced copy.
#[derive(Debug, Clone)]
pub(crate) struct StatementNote {
    info: StmtInfo,
    /// The client's own Parse, when the statement under its name is
    /// spliced: restored when capture ends.
    original: Option<BytesMut>,
}

/// What capture makes of the answer to one request.
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
        tap: Option<Arc<Tap>>,
    },
    /// The probe of the session's search_path and user: its two rows are
    /// read (the first is kept here until the second comes), everything up
    /// to its ReadyForQuery dropped.
    Probe {
        /// The search_path in force, session_user and current_user.
        first: Option<[String; 3]>,
    },
    /// Describe of a portal.
    DescribePortal {
        tap: Option<Arc<Tap>>,
    },
    Execute {
        info: StmtInfo,
    },
    /// Sync or FunctionCall: ends with ReadyForQuery.
    Ready,
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
    /// What capture makes of the answer to each request in flight, by its
    /// entry in the session's conversation.
    notes: EntryMap<Expect>,
    /// While a client message is decided: the requests capture sends for
    /// it, in order (the client's own last).
    sending: Vec<(Request, Expect)>,
    /// The note for the client's message, once it is sent.
    client_note: Option<Expect>,
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
        // What the session's names resolve through is the server's to say
        // (a role's or database's setting, a set_config before capture):
        // ask once, ahead of the first statement captured.
        work.push_back(Work::Send(Outgoing {
            bytes: rows::query(PROBE_SQL),
            own: vec![(Request::Query, Note(Expect::Probe { first: None }))],
        }));
        SessionCapture {
            active,
            session_id,
            backend_pid,
            paths: SearchPath::new(search_path, user),
            temp_tables: HashSet::new(),
            tx: TxKeys::default(),
            notes: EntryMap::default(),
            sending: Vec::new(),
            client_note: None,
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

    /// Takes over the statement shapes `previous` classified: a shape's
    /// class depends on its text alone, not on the database, and at a
    /// cutover every session adopts capture on the target at once.
    pub(crate) fn keep_shapes_of(&mut self, previous: &mut SessionCapture) {
        self.shapes = std::mem::take(&mut previous.shapes);
    }

    /// The capture this session runs under.
    pub(crate) fn active(&self) -> &Arc<Active> {
        &self.active
    }

    /// Whether client messages (other than COPY data) must wait.
    pub(crate) fn blocked(&self) -> bool {
        self.busy_with_own() || self.probing()
    }

    /// Whether the only thing client messages wait for is the probe of the
    /// session's search_path and user.
    pub(crate) fn blocked_by_probe_only(&self) -> bool {
        !self.busy_with_own() && self.probing()
    }

    /// A log append, a catalog lookup, or a query run in parts is under way.
    fn busy_with_own(&self) -> bool {
        self.logging
            || self.lookup.is_some()
            || self.plan.is_some()
            || self.notes.values().any(|e| {
                matches!(
                    e,
                    Expect::Query {
                        end: QueryEnd::Part | QueryEnd::Wrapped,
                        ..
                    }
                )
            })
    }

    /// The probe of the session's search_path and user is unanswered.
    fn probing(&self) -> bool {
        self.notes.values().any(|e| matches!(e, Expect::Probe { .. }))
    }

    /// The relay opened entry `id` for a request capture sent on its own.
    pub(crate) fn noted(&mut self, id: EntryId, note: Note) {
        self.notes.insert(id, note.0);
    }

    /// The client's message that capture last decided on went out as entry
    /// `id` (`None`: it is owed no answer).
    pub(crate) fn client_sent(&mut self, id: Option<EntryId>) {
        let note = self.client_note.take();
        if let (Some(id), Some(note)) = (id, note) {
            self.notes.insert(id, note);
        }
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
    /// spliced or re-prepared them, with a Sync. Their answers are nobody's
    /// (capture is gone when they come): the relay drops them. `None` when
    /// there is nothing to restore.
    pub(crate) fn finish(self, statements: &mut Statements<StatementNote>) -> Option<Outgoing> {
        let mut out = BytesMut::new();
        let mut own = Vec::new();
        for (name, p, server) in statements.take_notes() {
            if let Some(server) = server.filter(|s| *s != name) {
                out.extend_from_slice(&rows::close_statement(&server));
                own.push((Request::Close, Note(Expect::InjectedOne)));
            } else if let Some(original) = &p.original {
                out.extend_from_slice(&rows::close_statement(&name));
                out.extend_from_slice(original);
                own.push((Request::Close, Note(Expect::InjectedOne)));
                own.push((Request::Parse, Note(Expect::InjectedOne)));
            }
        }
        if out.is_empty() {
            return None;
        }
        crate::wire::write_message(&mut out, b'S', |_| {});
        own.push((Request::Sync, Note(Expect::Injected)));
        Some(Outgoing { bytes: out, own })
    }

    /// Records that a request capture sends in place of (or ahead of) the
    /// client's message is owed `e`. The client's message is the last
    /// request of what goes out.
    fn expect(&mut self, request: Request, e: Expect) {
        self.sending.push((request, e));
    }
}

// Used by the refusals of the client side and by the log.

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
