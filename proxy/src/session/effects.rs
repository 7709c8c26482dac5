//! Recognising statements that change session state the proxy must know of
//! to move a session: SET/RESET, LISTEN/UNLISTEN, DISCARD, DEALLOCATE, and
//! the things that pin a session to its backend (temp tables, session
//! advisory locks, WITH HOLD cursors). Recognition looks only at the first
//! statement of a query text; it is cheap because it runs on every query.

/// A change to session state, applied when its statement's transaction commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET name ...`: the statement text replays it.
    Set {
        /// Lower-cased parameter name.
        name: String,
        /// The statement, to replay on another backend.
        statement: String,
    },
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// `LISTEN channel`.
    Listen(String),
    /// `UNLISTEN channel`.
    Unlisten(String),
    /// `UNLISTEN *`.
    UnlistenAll,
    /// `DEALLOCATE name`.
    Deallocate(String),
    /// `DEALLOCATE ALL`.
    DeallocateAll,
    /// `DISCARD ALL`: resets everything above and drops temp objects.
    DiscardAll,
    /// Something that ties the session to its backend.
    Pin(Pin),
}

/// Why a session cannot move to another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pin {
    /// It created a temporary table (or another temporary object: a
    /// type, a domain, a function in `pg_temp`).
    TempTable,
    /// It took a session-level advisory lock.
    AdvisoryLock,
    /// It declared a WITH HOLD cursor.
    HoldCursor,
}

impl Pin {
    /// Name for SHOW SESSIONS and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Pin::TempTable => "temp table or other temporary object",
            Pin::AdvisoryLock => "advisory lock",
            Pin::HoldCursor => "WITH HOLD cursor",
        }
    }
}

/// What a session may have changed of its backend's state, noted from the
/// text of every statement it sent (simple query or Parse), succeeded or
/// not: before a move, the proxy reads the real state of exactly these
/// things from the old backend (see `moving.rs`), so a SET undone by a
/// rollback or a savepoint is undone on the new backend too, and a
/// session that touched nothing moves without a round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Settings named by SET, RESET or `set_config` with a literal name.
    pub settings: std::collections::BTreeSet<String>,
    /// Settings the proxy cannot name (`RESET ALL`, `SET SESSION
    /// CHARACTERISTICS`, a computed `set_config` name): read them all.
    pub all_settings: bool,
    /// LISTEN or UNLISTEN was sent.
    pub listen: bool,
    /// SQL `PREPARE` was sent.
    pub sql_prepared: bool,
    /// What may pin the session.
    pub pins: std::collections::BTreeSet<Pin>,
}

impl Touched {
    /// Whether the session touched nothing (it moves with no probe).
    pub fn is_empty(&self) -> bool {
        *self == Touched::default()
    }

    /// Notes what the statements of `sql` may change.
    pub fn note(&mut self, sql: &[u8]) {
        if contains_ci(sql, b"set_config") {
            match set_config_name(sql) {
                Some(name) => {
                    self.settings.insert(name);
                }
                None => self.all_settings = true,
            }
        }
        if !might_touch(sql) {
            return;
        }
        for stmt in statements(sql) {
            let head = skip_space_and_comments(stmt);
            if head.len() >= 7 && head[..7].eq_ignore_ascii_case(b"prepare") {
                self.sql_prepared = true;
            }
            if head.len() >= 7 && head[..7].eq_ignore_ascii_case(b"declare") {
                // A cursor WITH HOLD, or a plain one that ends with its
                // transaction: the probe tells.
                self.pins.insert(Pin::HoldCursor);
            }
            match detect(stmt) {
                Some(Effect::Set { name, .. }) => self.note_set(&name),
                Some(Effect::Reset(name)) => self.note_set(&name),
                Some(Effect::ResetAll) => self.all_settings = true,
                Some(Effect::Listen(_) | Effect::Unlisten(_) | Effect::UnlistenAll) => self.listen = true,
                Some(Effect::Pin(p)) => {
                    self.pins.insert(p);
                }
                Some(Effect::DiscardAll | Effect::Deallocate(_) | Effect::DeallocateAll) | None => {}
            }
            if contains_ci(stmt, b"temp") {
                self.pins.insert(Pin::TempTable);
            }
        }
    }

    fn note_set(&mut self, name: &str) {
        match name {
            "session characteristics" => self.all_settings = true,
            "session authorization" => {
                self.settings.insert("session_authorization".into());
                self.settings.insert("role".into());
            }
            "schema" => {
                self.settings.insert("search_path".into());
            }
            "xml" => {
                self.settings.insert("xmloption".into());
            }
            n => {
                self.settings.insert(n.to_owned());
            }
        }
    }
}

/// Whether `sql` may contain a statement that changes session state (a
/// cheap pre-filter: most statements are plain reads and writes).
fn might_touch(sql: &[u8]) -> bool {
    const WORDS: [&[u8]; 10] = [
        b"set",
        b"reset",
        b"listen",
        b"discard",
        b"prepare",
        b"declare",
        b"temp",
        b"advisory",
        b"hold",
        b"create",
    ];
    WORDS.iter().any(|w| contains_ci(sql, w))
}

/// The literal name of the first `set_config('name', ...)` in `sql`.
fn set_config_name(sql: &[u8]) -> Option<String> {
    let at = sql.windows(10).position(|w| w.eq_ignore_ascii_case(b"set_config"))?;
    let rest = skip_space_and_comments(sql.get(at + 10..)?);
    let rest = skip_space_and_comments(rest.strip_prefix(b"(")?);
    let rest = rest.strip_prefix(b"'")?;
    let end = rest.iter().position(|b| *b == b'\'')?;
    let name = std::str::from_utf8(&rest[..end]).ok()?;
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len() && hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

/// Words of the first statement, split on whitespace, stopping at `;`.
fn words(sql: &str) -> impl Iterator<Item = &str> {
    let first = sql.split(';').next().unwrap_or("");
    first.split_ascii_whitespace()
}

fn ident(word: &str) -> String {
    let w = word.trim_end_matches(';');
    if let Some(q) = w.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        q.replace("\"\"", "\"")
    } else {
        w.to_ascii_lowercase()
    }
}

/// Splits a query string into its statements at top-level `;`, skipping
/// quoted strings, quoted identifiers, dollar-quoted bodies and comments.
pub fn statements(sql: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    // Whether the current statement has anything but space and comments:
    // PostgreSQL runs no command (and sends no reply) for one that has not.
    let mut significant = false;
    while i < sql.len() {
        let b = sql[i];
        let comment = (b == b'-' && sql.get(i + 1) == Some(&b'-')) || (b == b'/' && sql.get(i + 1) == Some(&b'*'));
        if b != b';' && !comment && !b.is_ascii_whitespace() {
            significant = true;
        }
        match b {
            b';' => {
                if significant {
                    out.push(&sql[start..i]);
                }
                significant = false;
                start = i + 1;
                i += 1;
            }
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < sql.len() {
                    if sql[i] == q {
                        // A doubled quote is an escaped quote.
                        if sql.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    // E'...' strings may escape a quote with a backslash.
                    if sql[i] == b'\\' && q == b'\'' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if sql.get(i + 1) == Some(&b'-') => {
                while i < sql.len() && sql[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if sql.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < sql.len() {
                    if sql[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if sql[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // $tag$ ... $tag$, where tag is empty or an identifier.
                let tag_end = sql[i + 1..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .map(|n| i + 1 + n);
                match tag_end {
                    Some(e) if sql[e] == b'$' && !sql[i + 1..e].first().is_some_and(u8::is_ascii_digit) => {
                        let tag = &sql[i..=e];
                        let body = e + 1;
                        i = sql[body..]
                            .windows(tag.len())
                            .position(|w| w == tag)
                            .map_or(sql.len(), |p| body + p + tag.len());
                    }
                    _ => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    if significant {
        out.push(&sql[start..]);
    }
    out
}

/// `sql` after leading white space and comments.
pub fn skip_space_and_comments(mut sql: &[u8]) -> &[u8] {
    loop {
        let start = sql.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(sql.len());
        sql = &sql[start..];
        if sql.starts_with(b"--") {
            let end = sql.iter().position(|b| *b == b'\n').unwrap_or(sql.len());
            sql = &sql[end..];
        } else if sql.starts_with(b"/*") {
            // Nesting is rare at the start of a statement; the first `*/` ends it.
            let end = sql.windows(2).position(|w| w == b"*/").map_or(sql.len(), |p| p + 2);
            sql = &sql[end..];
        } else {
            return sql;
        }
    }
}

/// What each statement of a query string does to session state, in order:
/// `None` when no statement has an effect (the common case, allocation-free).
pub fn detect_all(sql: &[u8]) -> Option<Vec<Option<Effect>>> {
    if !sql.contains(&b';') {
        return detect(sql).map(|e| vec![Some(e)]);
    }
    let effects: Vec<Option<Effect>> = statements(sql).into_iter().map(detect).collect();
    effects.iter().any(Option::is_some).then_some(effects)
}

/// Finds what the first statement of `sql` does to session state.
pub fn detect(sql: &[u8]) -> Option<Effect> {
    let sql = skip_space_and_comments(sql);
    let first = sql.first()?.to_ascii_lowercase();
    // Fast exit for the common statements (SELECT, INSERT, UPDATE, BEGIN...).
    let pin = match first {
        b's' | b'i' | b'u' | b'w' | b'b' | b'e' => detect_pin(sql),
        _ => None,
    };
    // Only these verbs change session state; most queries stop here
    // without decoding their text.
    let verb_len = sql
        .iter()
        .position(|b| b.is_ascii_whitespace() || *b == b';')
        .unwrap_or(sql.len());
    const VERBS: [&[u8]; 8] = [
        b"set",
        b"reset",
        b"listen",
        b"unlisten",
        b"discard",
        b"deallocate",
        b"create",
        b"declare",
    ];
    if !VERBS.iter().any(|v| v.eq_ignore_ascii_case(&sql[..verb_len])) {
        return pin.map(Effect::Pin);
    }
    let text = std::str::from_utf8(sql).ok()?;
    let mut w = words(text);
    let verb = w.next()?.to_ascii_lowercase();
    let verb = verb.trim_end_matches(';');
    let effect = match verb {
        "set" => {
            let mut next = w.next()?.to_ascii_lowercase();
            if next == "local" || next == "transaction" {
                return None;
            }
            if next == "session" {
                next = w.next()?.to_ascii_lowercase();
                if next == "characteristics" || next == "authorization" {
                    let name = format!("session {next}");
                    return Some(set(name, text));
                }
            }
            let name = match next.as_str() {
                "time" => "timezone".to_owned(),
                "names" => "client_encoding".to_owned(),
                _ => ident(next.split('=').next().unwrap_or(&next)),
            };
            Some(set(name, text))
        }
        "reset" => match ident(w.next()?).as_str() {
            "all" => Some(Effect::ResetAll),
            name => Some(Effect::Reset(name.to_owned())),
        },
        "listen" => Some(Effect::Listen(ident(w.next()?))),
        "unlisten" => match w.next()?.trim_end_matches(';') {
            "*" => Some(Effect::UnlistenAll),
            ch => Some(Effect::Unlisten(ident(ch))),
        },
        "discard" => match w.next()?.to_ascii_lowercase().trim_end_matches(';') {
            "all" => Some(Effect::DiscardAll),
            _ => None,
        },
        "deallocate" => {
            let mut name = w.next()?;
            if name.eq_ignore_ascii_case("prepare") {
                name = w.next()?;
            }
            match ident(name).as_str() {
                "all" => Some(Effect::DeallocateAll),
                n => Some(Effect::Deallocate(n.to_owned())),
            }
        }
        "create" => {
            let second = w.next()?.to_ascii_lowercase();
            let third = w.next().unwrap_or("").to_ascii_lowercase();
            let temp = |s: &str| s == "temp" || s == "temporary";
            if temp(&second) || ((second == "local" || second == "global") && temp(&third)) {
                Some(Effect::Pin(Pin::TempTable))
            } else {
                None
            }
        }
        "declare" => detect_pin(sql).map(Effect::Pin),
        _ => None,
    };
    effect.or(pin.map(Effect::Pin))
}

fn set(name: String, statement: &str) -> Effect {
    let statement = statement.split(';').next().unwrap_or(statement).trim().to_owned();
    Effect::Set { name, statement }
}

/// Pins found anywhere in the text of a statement (also used on Parse).
pub fn detect_pin(sql: &[u8]) -> Option<Pin> {
    if contains_ci(sql, b"advisory_lock") {
        // pg_advisory_lock / pg_try_advisory_lock, not the _xact_ kinds,
        // which end with their transaction.
        if contains_ci(sql, b"pg_advisory_lock") || contains_ci(sql, b"pg_try_advisory_lock") {
            return Some(Pin::AdvisoryLock);
        }
    }
    if contains_ci(sql, b"with hold") {
        return Some(Pin::HoldCursor);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_what_a_session_touches() {
        let mut t = Touched::default();
        t.note(b"select * from t where id = $1");
        t.note(b"update t set v = 1");
        assert!(t.settings.is_empty() && !t.listen && t.pins.is_empty());
        t.note(b"SET TIME ZONE 'UTC'; set search_path = app");
        t.note(b"select set_config('app.tenant', $1, false)");
        t.note(b"SET ROLE app; LISTEN jobs");
        assert_eq!(
            t.settings.iter().map(String::as_str).collect::<Vec<_>>(),
            ["app.tenant", "role", "search_path", "timezone"]
        );
        assert!(t.listen && !t.all_settings);
        t.note(b"select set_config(name, 'x', false) from s");
        assert!(t.all_settings);
        let mut p = Touched::default();
        p.note(b"create temp table x (i int)");
        p.note(b"select pg_advisory_lock(1)");
        p.note(b"PREPARE q AS select 1");
        assert!(p.sql_prepared);
        assert_eq!(p.pins.len(), 2);
    }

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        let sql = b"SET a = ';'; LISTEN \"x;y\" -- c;\n; select $f$ ; $f$; /* ; /* ; */ */ RESET b";
        let parts: Vec<&str> = statements(sql)
            .into_iter()
            .map(|s| std::str::from_utf8(s).unwrap().trim())
            .collect();
        assert_eq!(
            parts,
            [
                "SET a = ';'",
                "LISTEN \"x;y\" -- c;",
                "select $f$ ; $f$",
                "/* ; /* ; */ */ RESET b"
            ]
        );
        assert_eq!(statements(b"select 1;  "), vec![&b"select 1"[..]]);
        assert_eq!(statements(b"select 1;; /* only */ ; select 2").len(), 2);
        assert_eq!(detect(b"/* why */ -- note\n RESET ALL"), Some(Effect::ResetAll));
        assert_eq!(statements(b"select 'it''s;'").len(), 1);
        assert_eq!(statements(b"select $1; select 2").len(), 2);
    }

    #[test]
    fn detects_every_statement_of_a_query() {
        let all = detect_all(b"LISTEN a; select 1; SET x = 1").unwrap();
        assert_eq!(
            all,
            vec![
                Some(Effect::Listen("a".into())),
                None,
                Some(Effect::Set {
                    name: "x".into(),
                    statement: "SET x = 1".into()
                })
            ]
        );
        assert_eq!(detect_all(b"select 1; select 2"), None);
        assert_eq!(detect_all(b"select 1"), None);
    }

    #[test]
    fn recognises_session_statements() {
        assert_eq!(
            detect(b"  SET search_path TO app, public"),
            Some(Effect::Set {
                name: "search_path".into(),
                statement: "SET search_path TO app, public".into()
            })
        );
        assert_eq!(
            detect(b"set session statement_timeout=5"),
            Some(Effect::Set {
                name: "statement_timeout".into(),
                statement: "set session statement_timeout=5".into()
            })
        );
        assert_eq!(detect(b"SET LOCAL work_mem = '1MB'"), None);
        assert_eq!(detect(b"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), None);
        assert_eq!(detect(b"RESET ALL"), Some(Effect::ResetAll));
        assert_eq!(detect(b"reset work_mem;"), Some(Effect::Reset("work_mem".into())));
        assert_eq!(detect(b"LISTEN \"Chan\""), Some(Effect::Listen("Chan".into())));
        assert_eq!(detect(b"unlisten *"), Some(Effect::UnlistenAll));
        assert_eq!(detect(b"DISCARD ALL"), Some(Effect::DiscardAll));
        assert_eq!(detect(b"deallocate prepare s1"), Some(Effect::Deallocate("s1".into())));
        assert_eq!(detect(b"CREATE TEMP TABLE t(x int)"), Some(Effect::Pin(Pin::TempTable)));
        assert_eq!(
            detect(b"create local temporary table t(x int)"),
            Some(Effect::Pin(Pin::TempTable))
        );
        assert_eq!(detect(b"create table t(x int)"), None);
        assert_eq!(
            detect(b"select pg_advisory_lock(1)"),
            Some(Effect::Pin(Pin::AdvisoryLock))
        );
        assert_eq!(detect(b"select pg_advisory_xact_lock(1)"), None);
        assert_eq!(
            detect(b"DECLARE c CURSOR WITH HOLD FOR select 1"),
            Some(Effect::Pin(Pin::HoldCursor))
        );
        assert_eq!(detect(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1"), None);
        assert_eq!(detect(b""), None);
        assert_eq!(detect(b"\xff\xfe set"), None);
    }
}
