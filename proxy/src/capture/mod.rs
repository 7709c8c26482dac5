//! Statement classification for write capture: SQL text in, one
//! classification per statement out, with the byte offset where the capture
//! tap splices its `RETURNING <key columns>` projection. Pure code, no I/O.
//!
//! The AST (sqlparser, PostgreSQL dialect) is used to classify; the rewrite
//! is a text splice found with the tokenizer, never SQL re-printed from the
//! AST, so the server runs exactly what the client sent plus the projection.
//! Where sqlparser cannot parse a PostgreSQL form, a deliberate token-level
//! fallback classifies it, and a statement that neither understands is
//! reported as [`UnsafeKind::Unparsable`] — never guessed to be a read.
//!
//! Entry points: [`classify`], then [`splice_returning`] / [`splice_all`].

mod command;
pub mod control;
pub mod copy;
mod fallback;
mod lex;
mod log_health;
mod parse;
mod resolve;
pub mod retention;
pub mod rows;
pub(crate) mod session;
mod splice;
pub mod state_file;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_deep;
#[cfg(test)]
mod tests_more;

use std::ops::Range;

pub use splice::{returning_suffix, splice_all, splice_returning};

/// A schema-qualified name (table or function), normalized as PostgreSQL
/// does: unquoted identifiers folded to lower case, quoted ones kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualName {
    /// The schema, when the statement named one (a catalog prefix is dropped).
    pub schema: Option<String>,
    /// The object's own name.
    pub name: String,
}

impl QualName {
    /// A name without schema.
    pub fn bare(name: &str) -> Self {
        Self {
            schema: None,
            name: name.to_string(),
        }
    }

    /// A schema-qualified name.
    pub fn qualified(schema: &str, name: &str) -> Self {
        Self {
            schema: Some(schema.to_string()),
            name: name.to_string(),
        }
    }

    /// The name as SQL text with every part double-quoted.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

/// Double-quotes an identifier (doubling embedded quotes), so it means
/// exactly the given (already normalized) name to PostgreSQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One statement of a query string and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// Byte range of the statement in the text: from its first token to the
    /// end of its last token (no terminating `;`, no trailing comments).
    pub range: Range<usize>,
    /// What the statement is.
    pub class: Class,
}

/// What a statement is, as far as capture is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Class {
    /// Writes no rows: SELECT (also with FOR UPDATE / FOR SHARE: locks are
    /// not writes), VALUES, TABLE, SHOW, EXPLAIN without ANALYZE of a write,
    /// COPY ... TO, DECLARE CURSOR. `functions` are the functions the
    /// statement calls, so the caller can check their volatility.
    Read {
        /// Functions called anywhere in the statement, deduplicated.
        functions: Vec<QualName>,
        /// Relations, operators and types it references, which can reach
        /// functions it does not name.
        refs: Refs,
    },
    /// Transaction control.
    TxControl(TxControl),
    /// A session or maintenance command that writes no table rows.
    Utility(Utility),
    /// An INSERT / UPDATE / DELETE that capture handles with a splice.
    Write(WriteStmt),
    /// `PREPARE name AS statement`: `statement` is the classification of
    /// the prepared body (offsets into the same text, so a write body can be
    /// spliced in place).
    Prepare {
        /// The prepared statement's name (normalized).
        name: String,
        /// The body's classification.
        statement: Box<Class>,
    },
    /// `EXECUTE name`: what it does depends on the earlier PREPARE, which
    /// the caller tracks.
    Execute {
        /// The prepared statement's name (normalized).
        name: String,
    },
    /// A statement that writes (or may write) in a way the splice cannot
    /// capture.
    Unsafe(UnsafeKind),
}

/// Transaction-control statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxControl {
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT / END; `chain` for `AND CHAIN` (a new transaction starts).
    Commit {
        /// `AND CHAIN` was given.
        chain: bool,
    },
    /// ROLLBACK / ABORT; `chain` for `AND CHAIN`.
    Rollback {
        /// `AND CHAIN` was given.
        chain: bool,
    },
    /// SAVEPOINT name.
    Savepoint(String),
    /// ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name.
    RollbackTo(String),
    /// RELEASE [SAVEPOINT] name.
    Release(String),
    /// COMMIT PREPARED 'gid'.
    CommitPrepared(String),
    /// ROLLBACK PREPARED 'gid'.
    RollbackPrepared(String),
}

/// Session and maintenance commands that write no table rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Utility {
    /// SET (any form: SET LOCAL, SET TRANSACTION, SET ROLE, SET CONSTRAINTS).
    Set,
    /// RESET.
    Reset,
    /// LISTEN channel.
    Listen(String),
    /// UNLISTEN channel, or `None` for `UNLISTEN *`.
    Unlisten(Option<String>),
    /// NOTIFY.
    Notify,
    /// DEALLOCATE [PREPARE] name, or `None` for ALL.
    Deallocate(Option<String>),
    /// FETCH / MOVE / CLOSE on a cursor.
    Cursor,
    /// DISCARD.
    Discard,
    /// LOCK TABLE.
    Lock,
    /// VACUUM / ANALYZE / CHECKPOINT: rewrite storage, not row values.
    Maintenance,
}

/// Which data-modifying command a [`WriteStmt`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// INSERT (including ON CONFLICT).
    Insert,
    /// UPDATE (including UPDATE ... FROM).
    Update,
    /// DELETE (including DELETE ... USING).
    Delete,
}

/// A capturable write and where to splice the key projection.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteStmt {
    /// INSERT, UPDATE or DELETE.
    pub kind: WriteKind,
    /// The target table (temp or not: the classifier cannot know).
    pub table: QualName,
    /// The target's alias (`UPDATE t AS x`), which hides the table name, so
    /// the projection must be qualified with it.
    pub alias: Option<String>,
    /// The client wrote its own RETURNING: the projection is appended to its
    /// list as `, keys` and the caller strips the trailing columns.
    pub has_returning: bool,
    /// Byte offset in the whole text where the projection goes: the end of
    /// the statement's last token that is not whitespace, a comment or `;`.
    pub splice_at: usize,
    /// INSERT ... ON CONFLICT (DO NOTHING or DO UPDATE).
    pub on_conflict: bool,
    /// Columns assigned by SET (UPDATE, or INSERT ... ON CONFLICT DO
    /// UPDATE), so the caller can see whether a key column changes.
    pub assigned_columns: Vec<String>,
    /// Functions called anywhere in the statement, deduplicated.
    pub functions: Vec<QualName>,
    /// Relations (other than `table`), operators and types it references.
    pub refs: Refs,
}

/// What a statement references besides the functions it names, each of
/// which can call a function the statement does not name: a view's
/// definition or a row-level security policy (relations), an operator's
/// function, a cast's function or a domain's checks (types). Deduplicated;
/// a superset is harmless (the caller only looks the names up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    /// Relations read (tables, views, CTE names included).
    pub relations: Vec<QualName>,
    /// User-definable operator symbols (`###`, `OPERATOR(s.###)` as `###`).
    pub operators: Vec<String>,
    /// Types cast to (`x::t`, `CAST(x AS t)`, `t 'literal'`).
    pub types: Vec<QualName>,
}

impl Refs {
    /// Whether nothing is referenced.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty() && self.operators.is_empty() && self.types.is_empty()
    }
}

impl WriteStmt {
    /// True if the statement assigns any of `key_columns` (compared exactly:
    /// pass catalog names).
    pub fn assigns_any(&self, key_columns: &[&str]) -> bool {
        self.assigned_columns.iter().any(|c| key_columns.iter().any(|k| k == c))
    }
}

/// Why a statement cannot be captured by a RETURNING splice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsafeKind {
    /// CREATE / ALTER / DROP / GRANT / REVOKE / COMMENT / REINDEX / CLUSTER /
    /// REFRESH MATERIALIZED VIEW / SECURITY LABEL / IMPORT / LOAD / REASSIGN.
    Ddl,
    /// TRUNCATE of these tables.
    Truncate {
        /// The truncated tables.
        tables: Vec<QualName>,
    },
    /// A data-modifying statement inside WITH (or nested anywhere else).
    WriteInCte,
    /// MERGE.
    Merge,
    /// COPY ... FROM (STDIN or a file): the caller decides whether the
    /// table's key is defaulted (not in `columns`, or `columns` empty = all).
    CopyFrom {
        /// The target table.
        table: QualName,
        /// The column list, empty when none was given.
        columns: Vec<String>,
    },
    /// CALL or DO: arbitrary code.
    CallOrDo,
    /// PREPARE TRANSACTION 'gid'. It also ends the transaction block like a
    /// COMMIT, which a caller applying a `warn` policy must account for.
    PrepareTransaction {
        /// The global transaction id.
        gid: String,
    },
    /// SELECT ... INTO (creates and fills a table).
    SelectInto,
    /// EXPLAIN ANALYZE of a statement that is not a plain read (it runs it).
    ExplainAnalyze,
    /// Not understood: tokenizing or parsing failed, or an unknown command.
    Unparsable,
    /// Nested or chained too deeply to classify safely (past
    /// [`MAX_STATEMENT_DEPTH`]): refused unread, since deciding "read"
    /// would need the very analysis that is too deep to run.
    TooComplex,
}

/// Every kind name an unsafe statement can be counted under (SHOW CAPTURE,
/// `capture.policies` keys).
pub const UNSAFE_KINDS: &[&str] = &[
    "ddl",
    "truncate",
    "write-in-cte",
    "merge",
    "copy-from",
    "call",
    "prepare-transaction",
    "select-into",
    "explain-analyze",
    "unparsable",
    "too-complex",
    "volatile-function",
    "no-key",
    "unknown-table",
    "key-update",
    "trigger",
    "autocommit-in-script",
    "unknown-statement",
    "wrong-table",
];

impl UnsafeKind {
    /// The name SHOW CAPTURE and `capture.policies` use.
    pub fn name(&self) -> &'static str {
        match self {
            UnsafeKind::Ddl => "ddl",
            UnsafeKind::Truncate { .. } => "truncate",
            UnsafeKind::WriteInCte => "write-in-cte",
            UnsafeKind::Merge => "merge",
            UnsafeKind::CopyFrom { .. } => "copy-from",
            UnsafeKind::CallOrDo => "call",
            UnsafeKind::PrepareTransaction { .. } => "prepare-transaction",
            UnsafeKind::SelectInto => "select-into",
            UnsafeKind::ExplainAnalyze => "explain-analyze",
            UnsafeKind::Unparsable => "unparsable",
            UnsafeKind::TooComplex => "too-complex",
        }
    }
}

/// Classifies every statement of a (possibly multi-statement) query string.
///
/// Statements are split at top-level semicolons (strings, dollar quotes,
/// comments and `BEGIN ATOMIC` bodies respected); empty statements are
/// skipped. If the text cannot even be tokenized, the result is a single
/// [`UnsafeKind::Unparsable`] covering the whole (trimmed) text. A statement
/// nested or chained past [`MAX_STATEMENT_DEPTH`] is
/// [`UnsafeKind::TooComplex`]; however deep the text, nothing here recurses
/// without bound.
pub fn classify(sql: &str) -> Vec<Classified> {
    let Some(toks) = lex::tokenize(sql) else {
        let start = sql.len() - sql.trim_start().len();
        let end = sql.trim_end().len().max(start);
        return vec![Classified {
            range: start..end,
            class: Class::Unsafe(UnsafeKind::Unparsable),
        }];
    };
    lex::split_statements(&toks)
        .into_iter()
        .map(|stmt| Classified {
            range: stmt[0].start..stmt[stmt.len() - 1].end,
            class: if lex::depth_bound(stmt) > MAX_STATEMENT_DEPTH {
                Class::Unsafe(UnsafeKind::TooComplex)
            } else {
                classify_tokens(sql, stmt, 0)
            },
        })
        .collect()
}

/// The deepest statement [`classify`] analyzes, as a token-level bound on
/// its AST depth: an expression chain of about this many tokens without a
/// comma (`1 + 1 + ...`, `a OR b OR ...`, a run of UNIONs), or about a
/// sixteenth as many nested parentheses. Lists of any length are not deep.
pub const MAX_STATEMENT_DEPTH: usize = lex::MAX_DEPTH;

/// How many statements may nest inside one another (`EXPLAIN`, `PREPARE
/// ... AS`, `DECLARE ... FOR`, `COPY (...)`) before the statement is
/// [`UnsafeKind::TooComplex`]; real SQL nests one or two.
const MAX_NESTED_STATEMENTS: usize = 8;

/// Classifies one statement given its significant tokens (non-empty);
/// `nested` counts the statements it is inside of.
pub(crate) fn classify_tokens(sql: &str, toks: &[lex::Tok], nested: usize) -> Class {
    let Some(first) = toks.first() else {
        return Class::Unsafe(UnsafeKind::Unparsable);
    };
    if nested > MAX_NESTED_STATEMENTS {
        return Class::Unsafe(UnsafeKind::TooComplex);
    }
    if first.is(&sqlparser::tokenizer::Token::LParen)
        || first.is_any_kw(&["SELECT", "WITH", "VALUES", "TABLE", "INSERT", "UPDATE", "DELETE"])
    {
        let text = &sql[first.start..toks[toks.len() - 1].end];
        return match parse::classify_ast(text, toks) {
            Some(class) => class,
            None => fallback::classify_dml(toks),
        };
    }
    command::classify_command(sql, toks, nested)
}

/// The text to classify for query bytes in any client encoding: the text
/// itself when it is UTF-8, else an ASCII view of the same length (every
/// other byte read as `x`), so the statement's structure (keywords,
/// punctuation, quotes) and every offset are the original's and splices go
/// into the original bytes.
pub fn classify_view(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(s) => s.into(),
        Err(_) => raw
            .iter()
            .map(|&b| if b.is_ascii() { b as char } else { 'x' })
            .collect::<String>()
            .into(),
    }
}

/// Classifications of single statements by their shape (the text with its
/// literals blanked), so a statement sent again with other values is not
/// parsed again. Only statements whose class cannot depend on a literal are
/// kept (reads, writes, BEGIN / COMMIT / ROLLBACK), and only texts the
/// shape scanner fully understands: no comments, no dollar quotes or
/// escape strings, one statement.
#[derive(Debug, Default)]
pub struct ClassifyCache {
    map: std::collections::HashMap<String, Class>,
}

/// Entries a [`ClassifyCache`] holds before it starts over.
const CACHE_ENTRIES: usize = 512;

impl ClassifyCache {
    /// Like [`classify`], answered from the cache when the shape is known.
    pub fn classify(&mut self, sql: &str) -> Vec<Classified> {
        let Some((shape, range)) = shape_of(sql) else {
            return classify(sql);
        };
        if let Some(class) = self.map.get(&shape) {
            let mut class = class.clone();
            if let Class::Write(w) = &mut class {
                w.splice_at = range.end;
            }
            return vec![Classified { range, class }];
        }
        let classified = classify(sql);
        if let [one] = classified.as_slice() {
            let cacheable = match &one.class {
                Class::Read { .. } => true,
                Class::Write(w) => w.splice_at == range.end && one.range == range,
                Class::TxControl(t) => matches!(
                    t,
                    TxControl::Begin | TxControl::Commit { .. } | TxControl::Rollback { .. }
                ),
                _ => false,
            };
            if cacheable {
                if self.map.len() >= CACHE_ENTRIES {
                    self.map.clear();
                }
                self.map.insert(shape, one.class.clone());
            }
        }
        classified
    }
}

/// The shape of a one-statement text (literals replaced by `?`) and the
/// statement's range (trimmed, without the final `;`); `None` for anything
/// the scanner does not fully understand.
fn shape_of(sql: &str) -> Option<(String, Range<usize>)> {
    let b = sql.as_bytes();
    let start = b.iter().position(|c| !c.is_ascii_whitespace())?;
    let mut shape = String::with_capacity(sql.len());
    let mut i = start;
    let mut end = start;
    let mut prev_word = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                if prev_word && matches!(b[i - 1], b'e' | b'E') {
                    return None; // escape string: backslashes
                }
                i += 1;
                loop {
                    match b.get(i)? {
                        b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                shape.push('?');
                end = i;
                prev_word = false;
                continue;
            }
            b'"' => {
                let close = sql[i + 1..].find('"')? + i + 1;
                shape.push_str(&sql[i..=close]);
                i = close + 1;
                end = i;
                prev_word = false;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'$' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
            b';' => {
                if b[i + 1..].iter().any(|c| !c.is_ascii_whitespace() && *c != b';') {
                    return None;
                }
                break;
            }
            b'0'..=b'9' if !prev_word => {
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                if i < b.len() && matches!(b[i], b'e' | b'E') {
                    i += 1;
                    if i < b.len() && matches!(b[i], b'+' | b'-') {
                        i += 1;
                    }
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                shape.push('?');
                end = i;
                prev_word = false;
                continue;
            }
            c if c.is_ascii_whitespace() => {
                if !shape.ends_with(' ') {
                    shape.push(' ');
                }
                prev_word = false;
                i += 1;
                continue;
            }
            c if !c.is_ascii() => return None,
            _ => {}
        }
        prev_word = c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
        shape.push(c as char);
        i += 1;
        end = i;
    }
    Some((shape, start..end))
}
