//! Moving a session to another backend, at a transaction boundary with
//! nothing in flight:
//!
//! 1. **Probe** the old backend, only for what the session may have changed
//!    (see `effects::Touched`): the current value of each setting it named,
//!    its LISTEN channels, its SQL-prepared statements, and whether a temp
//!    table, a session advisory lock or a WITH HOLD cursor pins it. Reading
//!    the server's own state (one round trip) makes the replay exact: a SET
//!    undone by ROLLBACK or ROLLBACK TO SAVEPOINT is undone, one made inside
//!    a function is seen. A session that touched nothing skips it.
//! 2. **Replay** on the new backend (opened in advance, with the client's
//!    startup parameters) in one query: the settings whose value differs
//!    there (`set_config`, session authorization first and role last), the
//!    LISTENs, the SQL PREPAREs.
//! 3. **Hand over LISTEN**: only once the new backend listens does the old
//!    one stop (`UNLISTEN *`, its last notifications relayed), so no
//!    notification is lost; one committed in that sub-millisecond window
//!    may arrive twice.
//! 4. **Tell the client** every ParameterStatus that differs on the new
//!    backend.
//!
//! Any failure leaves the session on its old backend, which is untouched
//! (the probe only reads).

use super::backend::{self, Backend};
use super::effects::{skip_space_and_comments, statements, Pin, Touched};
use super::route::Route;
use crate::net::Stream;
use crate::net::{Conn, ReadError, ServerConn, Socket};
use crate::wire::backend::{self as bmsg, tag as btag, BackendMessage};
use crate::wire::frontend;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long one step of a move (probe, replay, handover) may take.
pub(super) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the old backend said about the session's state.
#[derive(Debug, Default)]
pub(super) struct Probed {
    /// Setting name → its current value.
    pub settings: BTreeMap<String, String>,
    /// LISTEN channels.
    pub listens: BTreeSet<String>,
    /// SQL-prepared statements: name → the PREPARE statement.
    pub prepared: BTreeMap<String, String>,
    /// What pins it.
    pub pins: BTreeSet<Pin>,
    /// User type OIDs its statements name → the type's qualified name, to
    /// find the same types on another database.
    pub types: BTreeMap<u32, String>,
}

impl Probed {
    /// What the new backend will have been given, as the next move's
    /// starting point.
    pub(super) fn touched(&self) -> Touched {
        Touched {
            settings: self.settings.keys().cloned().collect(),
            all_settings: false,
            listen: !self.listens.is_empty(),
            sql_prepared: !self.prepared.is_empty(),
            pins: BTreeSet::new(),
        }
    }
}

/// Messages from a backend during a move that belong to the client.
pub(super) struct Relayed<'a> {
    /// The client's write buffer.
    pub client: &'a mut Conn<Stream>,
    /// The pid the client was given at startup, and the current backend's:
    /// a notification the session's own backend sends carries the former.
    pub client_pid: i32,
    pub own_pid: i32,
    /// What the client has been told of each parameter.
    pub params: &'a mut BTreeMap<String, String>,
}

impl Relayed<'_> {
    fn pass(&mut self, msg: BackendMessage<'_>) {
        match msg.tag() {
            btag::NOTIFICATION_RESPONSE => relay_notification(self.client.wbuf(), msg, self.own_pid, self.client_pid),
            btag::PARAMETER_STATUS => {
                if let Ok((k, v)) = msg.parameter_status() {
                    self.params.insert(k.to_owned(), v.to_owned());
                }
                self.client.queue(msg.bytes());
            }
            _ => self.client.queue(msg.bytes()),
        }
    }
}

/// Forwards a notification, with the client's startup pid in place of
/// `own_pid` (the session notifying itself, as the client knows it).
pub(super) fn relay_notification(out: &mut bytes::BytesMut, msg: BackendMessage<'_>, own_pid: i32, client_pid: i32) {
    match msg.notification() {
        Ok((pid, channel, payload)) if pid == own_pid && pid != client_pid => {
            bmsg::notification_response(out, client_pid, channel, payload)
        }
        _ => out.extend_from_slice(msg.bytes()),
    }
}

/// The probe query for what `t` names, and the names of the user types
/// `oids`.
fn probe_sql(t: &Touched, oids: &BTreeSet<u32>) -> String {
    let mut parts = Vec::new();
    if !oids.is_empty() {
        let list: Vec<String> = oids.iter().map(u32::to_string).collect();
        parts.push(format!(
            "SELECT 't', t.oid::text, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(t.typname) \
             FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.oid = ANY('{{{}}}'::oid[])",
            list.join(",")
        ));
    }
    if !t.settings.is_empty() {
        let names: Vec<String> = t.settings.iter().map(|n| quote_literal(n)).collect();
        parts.push(format!(
            "SELECT 's', n, pg_catalog.current_setting(n, true) FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS n",
            names.join(",")
        ));
    }
    if t.all_settings {
        parts.push("SELECT 's', name, setting FROM pg_catalog.pg_settings WHERE source = 'session'".into());
    }
    if t.listen {
        parts.push("SELECT 'l', c, NULL FROM pg_catalog.pg_listening_channels() AS c".into());
    }
    if t.sql_prepared {
        parts.push("SELECT 'q', name, statement FROM pg_catalog.pg_prepared_statements WHERE from_sql".into());
    }
    for pin in &t.pins {
        let cond = match pin {
            // Temp tables, and temp types, domains and functions too.
            Pin::TempTable => {
                "SELECT FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema() \
                 UNION ALL SELECT FROM pg_catalog.pg_type WHERE typnamespace = pg_catalog.pg_my_temp_schema() \
                 UNION ALL SELECT FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema()"
            }
            Pin::AdvisoryLock => {
                "SELECT FROM pg_catalog.pg_locks WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'advisory'"
            }
            Pin::HoldCursor => "SELECT FROM pg_catalog.pg_cursors WHERE is_holdable",
        };
        parts.push(format!("SELECT 'p', '{}', NULL WHERE EXISTS ({cond})", *pin as u8));
    }
    parts.join(" UNION ALL ")
}

/// Reads the session's state from its old backend (see the module doc).
pub(super) async fn probe<S: Socket>(
    old: &mut Conn<S>,
    t: &Touched,
    oids: &BTreeSet<u32>,
    to: &mut Relayed<'_>,
) -> Result<Probed, String> {
    let mut probed = Probed::default();
    if t.is_empty() && oids.is_empty() {
        return Ok(probed);
    }
    let sql = probe_sql(t, oids);
    let mut rows = Vec::new();
    run(old, &sql, to, |msg| {
        if msg.tag() == btag::DATA_ROW {
            if let Ok(values) = msg.data_row() {
                let text = |i: usize| {
                    values
                        .get(i)
                        .copied()
                        .flatten()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                rows.push((text(0), text(1), text(2)));
            }
        }
    })
    .await
    .map_err(|e| format!("reading the session's state from its backend failed: {e}"))?;
    for row in rows {
        match row {
            (Some(k), Some(name), Some(value)) if k == "s" => {
                probed.settings.insert(name, value);
            }
            (Some(k), Some(channel), _) if k == "l" => {
                probed.listens.insert(channel);
            }
            (Some(k), Some(name), Some(text)) if k == "q" => {
                // Never the whole query string: it may hold other statements.
                let statement = prepare_statement_of(&name, &text).ok_or_else(|| {
                    format!("cannot find the PREPARE of statement \"{name}\" in its query string to replay it")
                })?;
                probed.prepared.insert(name, statement);
            }
            (Some(k), Some(oid), Some(name)) if k == "t" => {
                if let Ok(oid) = oid.parse() {
                    probed.types.insert(oid, name);
                }
            }
            (Some(k), Some(pin), _) if k == "p" => {
                let pin = match pin.as_str() {
                    "0" => Pin::TempTable,
                    "1" => Pin::AdvisoryLock,
                    _ => Pin::HoldCursor,
                };
                probed.pins.insert(pin);
            }
            _ => {}
        }
    }
    Ok(probed)
}

/// The `PREPARE name ...` statement among a query string's statements
/// (PostgreSQL keeps the whole string a PREPARE came in).
fn prepare_statement_of(name: &str, text: &str) -> Option<String> {
    statements(text.as_bytes()).into_iter().find_map(|s| {
        let s = std::str::from_utf8(skip_space_and_comments(s)).ok()?.trim_end();
        let rest = s
            .get(..7)
            .filter(|v| v.eq_ignore_ascii_case("prepare"))
            .map(|_| &s[7..])?;
        let rest = rest.trim_start();
        let ident = if let Some(q) = rest.strip_prefix('"') {
            // A quoted name: "" is a quote; it ends at the lone one.
            let mut out = String::new();
            let mut chars = q.chars().peekable();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        out.push('"');
                    }
                    '"' => break,
                    c => out.push(c),
                }
            }
            out
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(rest.len());
            rest[..end].to_lowercase()
        };
        (ident == name).then(|| s.to_owned())
    })
}

/// The one query that gives a fresh backend the probed state.
pub(super) fn replay_sql(p: &Probed) -> String {
    let mut out = Vec::new();
    let rank = |n: &str| match n {
        "session_authorization" => 0,
        "role" => 2,
        _ => 1,
    };
    let mut settings: Vec<(&String, &String)> = p.settings.iter().collect();
    settings.sort_by_key(|(n, _)| rank(n));
    if !settings.is_empty() {
        let values: Vec<String> = settings
            .iter()
            .map(|(n, v)| format!("({}, {})", quote_literal(n), quote_literal(v)))
            .collect();
        out.push(format!(
            "SELECT pg_catalog.set_config(n, v, false) FROM (VALUES {}) AS s(n, v) \
             WHERE pg_catalog.current_setting(n, true) IS DISTINCT FROM v",
            values.join(", ")
        ));
    }
    for channel in &p.listens {
        out.push(format!("LISTEN {}", quote_ident(channel)));
    }
    out.extend(p.prepared.values().cloned());
    if !p.types.is_empty() {
        let values: Vec<String> = p
            .types
            .iter()
            .map(|(oid, name)| format!("('{oid}', {})", quote_literal(name)))
            .collect();
        out.push(format!(
            "SELECT 't', x.o, pg_catalog.to_regtype(x.n)::oid::text FROM (VALUES {}) AS x(o, n)",
            values.join(", ")
        ));
    }
    out.join(";\n")
}

/// Gives the new backend the probed state; collects the ParameterStatus
/// values it reports into `params`, and returns the OID each of the
/// session's user types has there (old OID → new OID).
pub(super) async fn replay<S: Socket>(
    new: &mut Conn<S>,
    p: &Probed,
    to: &mut Relayed<'_>,
    params: &mut BTreeMap<String, String>,
) -> Result<std::collections::HashMap<u32, u32>, String> {
    let mut types = std::collections::HashMap::new();
    let sql = replay_sql(p);
    if sql.is_empty() {
        return Ok(types);
    }
    run(new, &sql, to, |msg| match msg.tag() {
        btag::PARAMETER_STATUS => {
            if let Ok((k, v)) = msg.parameter_status() {
                params.insert(k.to_owned(), v.to_owned());
            }
        }
        btag::DATA_ROW => {
            if let Ok([Some(b"t"), Some(old), Some(new)]) = msg.data_row().as_deref() {
                let parse = |v: &[u8]| std::str::from_utf8(v).ok()?.parse::<u32>().ok();
                if let (Some(o), Some(n)) = (parse(old), parse(new)) {
                    types.insert(o, n);
                }
            }
        }
        _ => {}
    })
    .await
    .map_err(|e| format!("giving the new backend the session's state failed: {e}"))?;
    Ok(types)
}

/// Makes the old backend stop listening, relaying what it still delivers.
pub(super) async fn unlisten<S: Socket>(old: &mut Conn<S>, to: &mut Relayed<'_>) -> Result<(), String> {
    run(old, "UNLISTEN *", to, |_| {}).await
}

/// Runs `sql` as one simple query on `conn` and reads to its ReadyForQuery:
/// notifications and notices go to the client, every other message to
/// `seen`; an error is returned as text.
async fn run<S: Socket>(
    conn: &mut Conn<S>,
    sql: &str,
    to: &mut Relayed<'_>,
    mut seen: impl FnMut(BackendMessage<'_>),
) -> Result<(), String> {
    conn.queue(&frontend::query(sql));
    let work = async {
        conn.flush().await.map_err(|e| e.to_string())?;
        let mut error = None;
        loop {
            let frame = match conn.read_message().await {
                Ok(Some(f)) => f,
                Ok(None) | Err(ReadError::Truncated) => return Err("the backend closed the connection".to_owned()),
                Err(e) => return Err(e.to_string()),
            };
            let msg = BackendMessage::of(&frame);
            match msg.tag() {
                btag::NOTIFICATION_RESPONSE | btag::NOTICE_RESPONSE => to.pass(msg),
                btag::ERROR_RESPONSE => {
                    let f = msg.error_fields().unwrap_or_default();
                    error.get_or_insert(format!("{} ({})", f.message, f.code));
                }
                btag::READY_FOR_QUERY => return error.map_or(Ok(()), Err),
                _ => seen(msg),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", STEP_TIMEOUT.as_secs())))
}

/// The longest a turn to open rests after its opening (see [`rest_turn`]).
const TURN_REST_AT_MOST: Duration = Duration::from_millis(50);

/// Hands a turn to open back once it has rested as long as its opening
/// took (at most [`TURN_REST_AT_MOST`]), without holding up the backend
/// just opened. A move order that limits how many sessions open at once
/// does it to spare a busy server: back-to-back openings would still keep
/// that many of its CPUs busy, where resting keeps them at half of it, and
/// the server's own transactions get the rest.
pub(crate) fn rest_turn(turn: tokio::sync::OwnedSemaphorePermit, opening_took: Duration) {
    let rest = opening_took.min(TURN_REST_AT_MOST);
    tokio::spawn(async move {
        tokio::time::sleep(rest).await;
        drop(turn);
    });
}

/// How long warming a backend opened ahead may take.
const WARM_TIMEOUT: Duration = Duration::from_secs(5);

/// Tables (the largest, by pages) whose catalog entries a backend opened
/// ahead loads, at most.
const WARM_TABLES: usize = 64;

/// Plans a query over each of the database's largest tables (in one DO
/// block, one transaction, a table the role may not read skipped), which
/// loads their catalog entries and their indexes' into the backend's
/// caches without reading a row.
fn warm_sql() -> String {
    format!(
        "DO $sy_warm$ DECLARE r record; BEGIN \
         FOR r IN SELECT c.oid::pg_catalog.regclass AS t FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'switchyard') \
         AND n.nspname NOT LIKE 'pg\\_%' ORDER BY c.relpages DESC LIMIT {WARM_TABLES} LOOP \
         BEGIN EXECUTE pg_catalog.format('SELECT 1 FROM %s LIMIT 0', r.t); \
         EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $sy_warm$"
    )
}

/// Warms a backend opened ahead of a move: a fresh backend builds its
/// catalog caches on its first statements, a few milliseconds of CPU per
/// table, and at a cutover every held session runs its first statements on
/// its new backend at the same moment. Best effort: an error from the
/// server leaves the backend idle as it was; false means the backend did
/// not answer in time (or the connection broke) and must not be used.
pub(crate) async fn warm(conn: &mut ServerConn) -> bool {
    match conn {
        ServerConn::Tcp(c) => warm_on(c).await,
        ServerConn::Unix(c) => warm_on(c).await,
    }
}

async fn warm_on<S: Socket>(conn: &mut Conn<S>) -> bool {
    conn.queue(&frontend::query(&warm_sql()));
    let work = async {
        conn.flush().await.ok()?;
        loop {
            let frame = conn.read_message().await.ok()??;
            if BackendMessage::of(&frame).tag() == btag::READY_FOR_QUERY {
                return Some(());
            }
        }
    };
    matches!(tokio::time::timeout(WARM_TIMEOUT, work).await, Ok(Some(())))
}

/// Opens a backend for the session on the route's destination.
pub(crate) async fn open_with(config: &crate::config::Config, route: &Route, login: &Login) -> Result<Backend, String> {
    let Some(db) = route.destination.config(config) else {
        return Err(format!("no [{}] is configured", route.destination.name()));
    };
    let (user, database, password) = backend::login_identity(config, db, &login.user, &login.database);
    backend::connect(
        db,
        user,
        database,
        password,
        &login.params,
        config.limits.connect_timeout(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// Who the session is, to open backends for it.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    /// The client's user.
    pub user: String,
    /// The client's database.
    pub database: String,
    /// Its startup parameters.
    pub params: Vec<(String, String)>,
}

/// The `host:port` a destination's backends are on.
pub(super) fn addr_of(db: &crate::config::DatabaseConfig) -> String {
    format!("{}:{}", db.host, db.port)
}

/// ParameterStatus values in a backend's startup messages.
pub(super) fn startup_params(be: &Backend) -> BTreeMap<String, String> {
    be.startup_messages
        .iter()
        .filter_map(|f| {
            let m = BackendMessage::of(f);
            (m.tag() == btag::PARAMETER_STATUS)
                .then(|| m.parameter_status().ok().map(|(k, v)| (k.to_owned(), v.to_owned())))
                .flatten()
        })
        .collect()
}

/// Closes a backend the session no longer uses, without waiting for it: a
/// little later, and spaced from other closes (see `linger`), since its
/// exit costs the server CPU that, during a move of many sessions, is
/// better spent on their first queries on the new backends.
pub(super) fn retire(conn: ServerConn) {
    let slot = tokio::time::Instant::from_std(switchyard_replay::linger::close_slot());
    tokio::spawn(async move {
        tokio::time::sleep_until(slot).await;
        let close = async move {
            match conn {
                ServerConn::Tcp(mut c) => {
                    c.queue(&frontend::terminate());
                    c.close().await
                }
                ServerConn::Unix(mut c) => {
                    c.queue(&frontend::terminate());
                    c.close().await
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    });
}

/// A string literal read the same whatever `standard_conforming_strings` is.
fn quote_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::time::Instant;

    #[tokio::test]
    async fn a_turn_rests_as_long_as_its_opening_took_and_no_longer_than_the_cap() {
        let turns = Arc::new(tokio::sync::Semaphore::new(1));
        let turn = turns.clone().acquire_owned().await.unwrap();
        let rested_from = Instant::now();
        rest_turn(turn, Duration::from_millis(40));
        assert!(
            turns.try_acquire().is_err(),
            "the turn is handed back only after its rest"
        );
        let next = turns.clone().acquire_owned().await.unwrap();
        assert!(rested_from.elapsed() >= Duration::from_millis(40));
        // An opening that took long (a distant server) rests the cap only.
        let rested_from = Instant::now();
        rest_turn(next, Duration::from_secs(60));
        let _again = turns.acquire().await.unwrap();
        let rested = rested_from.elapsed();
        assert!(
            rested >= TURN_REST_AT_MOST && rested < Duration::from_secs(30),
            "{rested:?}"
        );
    }

    #[test]
    fn replay_sets_authorization_first_and_role_last() {
        let mut p = Probed::default();
        p.settings.insert("role".into(), "app".into());
        p.settings.insert("search_path".into(), "a, 'b'".into());
        p.settings.insert("session_authorization".into(), "bob".into());
        p.listens.insert("Jobs \"x\"".into());
        let sql = replay_sql(&p);
        let auth = sql.find("'session_authorization'").unwrap();
        let path = sql.find("E'search_path', E'a, ''b'''").unwrap();
        let role = sql.find("'role'").unwrap();
        assert!(auth < path && path < role, "{sql}");
        assert!(sql.ends_with("LISTEN \"Jobs \"\"x\"\"\""), "{sql}");
        assert_eq!(replay_sql(&Probed::default()), "");
    }

    #[test]
    fn finds_the_prepare_among_a_query_strings_statements() {
        let text = "PREPARE a AS select 1; PREPARE b(int) AS select $1";
        assert_eq!(
            prepare_statement_of("b", text).as_deref(),
            Some("PREPARE b(int) AS select $1")
        );
        assert_eq!(
            prepare_statement_of("a", text).as_deref(),
            Some("PREPARE a AS select 1")
        );
    }

    #[test]
    fn probe_asks_only_for_what_was_touched() {
        let mut t = Touched::default();
        assert_eq!(probe_sql(&t, &BTreeSet::new()), "");
        t.settings.insert("timezone".into());
        t.pins.insert(Pin::TempTable);
        let sql = probe_sql(&t, &BTreeSet::new());
        assert!(sql.contains("ARRAY[E'timezone']") && sql.contains("pg_my_temp_schema"));
        assert!(!sql.contains("pg_locks") && !sql.contains("pg_settings"));
    }
}
