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

use super::control::Active;
use super::copy::{CopyFormat, CopyReader};
use super::resolve::{self, Change, SearchPath};
use super::rows;
use super::{ClassifyCache, TxControl};
use bytes::BytesMut;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use switchyard_replay::catalog::TableLookup;
use switchyard_replay::log::{Key, Record};

mod analyze;
mod client;
mod commit;
mod log;
mod server;

pub(crate) use analyze::set_search_path;
use server::Deferred;

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
