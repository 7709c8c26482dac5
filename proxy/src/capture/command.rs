//! Classification of everything that is not SELECT / WITH / INSERT /
//! UPDATE / DELETE, by its leading keywords: transaction control, session
//! utilities, DDL, COPY, EXPLAIN, PREPARE / EXECUTE, DECLARE, CALL / DO,
//! TRUNCATE, MERGE. An unknown command is [`UnsafeKind::Unparsable`]: it
//! may write, so it is never taken for a read.

use sqlparser::tokenizer::Token;

use super::fallback::{matching_paren, qualname};
use super::lex::Tok;
use super::{classify_tokens, Class, TxControl, UnsafeKind, Utility};

/// Commands that change the schema or privileges, or load arbitrary code.
const DDL: &[&str] = &[
    "ALTER", "CLUSTER", "COMMENT", "CREATE", "DROP", "GRANT", "IMPORT", "LOAD", "REASSIGN", "REFRESH", "REINDEX",
    "REVOKE", "SECURITY",
];

/// Classifies a statement that is not DML by its leading keywords.
/// `nested` counts the statements this one is inside of.
pub(crate) fn classify_command(sql: &str, toks: &[Tok], nested: usize) -> Class {
    let first = &toks[0];
    let at = |i: usize| toks.get(i);
    let kw_at = |i: usize, kw: &str| at(i).is_some_and(|t| t.is_kw(kw));
    let unparsable = Class::Unsafe(UnsafeKind::Unparsable);
    let Token::Word(w) = &first.token else {
        return unparsable;
    };
    if w.quote_style.is_some() {
        return unparsable;
    }
    match w.value.to_ascii_uppercase().as_str() {
        "BEGIN" => Class::TxControl(TxControl::Begin),
        "START" if kw_at(1, "TRANSACTION") => Class::TxControl(TxControl::Begin),
        "COMMIT" | "END" => match prepared_gid(toks) {
            Some(gid) => Class::TxControl(TxControl::CommitPrepared(gid)),
            None => Class::TxControl(TxControl::Commit { chain: and_chain(toks) }),
        },
        "ROLLBACK" | "ABORT" => {
            if let Some(gid) = prepared_gid(toks) {
                return Class::TxControl(TxControl::RollbackPrepared(gid));
            }
            match (1..toks.len()).find(|&i| toks[i].is_kw("TO")) {
                Some(to) => {
                    let name_at = if kw_at(to + 1, "SAVEPOINT") { to + 2 } else { to + 1 };
                    match at(name_at).and_then(Tok::ident) {
                        Some(name) => Class::TxControl(TxControl::RollbackTo(name)),
                        None => unparsable,
                    }
                }
                None => Class::TxControl(TxControl::Rollback { chain: and_chain(toks) }),
            }
        }
        "SAVEPOINT" => match at(1).and_then(Tok::ident) {
            Some(name) => Class::TxControl(TxControl::Savepoint(name)),
            None => unparsable,
        },
        "RELEASE" => {
            let name_at = if kw_at(1, "SAVEPOINT") { 2 } else { 1 };
            match at(name_at).and_then(Tok::ident) {
                Some(name) => Class::TxControl(TxControl::Release(name)),
                None => unparsable,
            }
        }
        "PREPARE" => prepare(sql, toks, nested),
        "EXECUTE" => match at(1).and_then(Tok::ident) {
            Some(name) => Class::Execute { name },
            None => unparsable,
        },
        "DEALLOCATE" => {
            let name_at = if kw_at(1, "PREPARE") { 2 } else { 1 };
            match at(name_at) {
                Some(t) if t.is_kw("ALL") => Class::Utility(Utility::Deallocate(None)),
                Some(t) => match t.ident() {
                    Some(name) => Class::Utility(Utility::Deallocate(Some(name))),
                    None => unparsable,
                },
                None => unparsable,
            }
        }
        "SET" => Class::Utility(Utility::Set),
        "RESET" => Class::Utility(Utility::Reset),
        "SHOW" => Class::Read {
            functions: Vec::new(),
            refs: Default::default(),
        },
        "LISTEN" => match at(1).and_then(Tok::ident) {
            Some(ch) => Class::Utility(Utility::Listen(ch)),
            None => unparsable,
        },
        "UNLISTEN" => match at(1) {
            Some(t) if t.is(&Token::Mul) => Class::Utility(Utility::Unlisten(None)),
            Some(t) => match t.ident() {
                Some(ch) => Class::Utility(Utility::Unlisten(Some(ch))),
                None => unparsable,
            },
            None => unparsable,
        },
        "NOTIFY" => Class::Utility(Utility::Notify),
        "FETCH" | "MOVE" | "CLOSE" => Class::Utility(Utility::Cursor),
        "DISCARD" => Class::Utility(Utility::Discard),
        "LOCK" => Class::Utility(Utility::Lock),
        "VACUUM" | "ANALYZE" | "ANALYSE" | "CHECKPOINT" => Class::Utility(Utility::Maintenance),
        "DECLARE" => declare(sql, toks, nested),
        "EXPLAIN" => explain(sql, toks, nested),
        "COPY" => copy(sql, toks, nested),
        "CALL" | "DO" => Class::Unsafe(UnsafeKind::CallOrDo),
        "TRUNCATE" => truncate(toks),
        "MERGE" => Class::Unsafe(UnsafeKind::Merge),
        kw if DDL.contains(&kw) => Class::Unsafe(UnsafeKind::Ddl),
        _ => unparsable,
    }
}

/// The gid of `COMMIT PREPARED 'gid'` / `ROLLBACK PREPARED 'gid'`.
fn prepared_gid(toks: &[Tok]) -> Option<String> {
    if !toks.get(1)?.is_kw("PREPARED") {
        return None;
    }
    match &toks.get(2)?.token {
        Token::SingleQuotedString(s) | Token::EscapedStringLiteral(s) => Some(s.clone()),
        _ => None,
    }
}

/// `... AND CHAIN` (and not `AND NO CHAIN`).
fn and_chain(toks: &[Tok]) -> bool {
    toks.windows(2).any(|w| w[0].is_kw("AND") && w[1].is_kw("CHAIN"))
}

/// `PREPARE TRANSACTION 'gid'` or `PREPARE name [(types)] AS statement`.
fn prepare(sql: &str, toks: &[Tok], nested: usize) -> Class {
    if toks.get(1).is_some_and(|t| t.is_kw("TRANSACTION")) {
        return match toks.get(2).map(|t| &t.token) {
            Some(Token::SingleQuotedString(gid)) | Some(Token::EscapedStringLiteral(gid)) => {
                Class::Unsafe(UnsafeKind::PrepareTransaction { gid: gid.clone() })
            }
            _ => Class::Unsafe(UnsafeKind::Unparsable),
        };
    }
    let Some(name) = toks.get(1).and_then(Tok::ident) else {
        return Class::Unsafe(UnsafeKind::Unparsable);
    };
    let mut i = 2;
    if toks.get(i).is_some_and(|t| t.is(&Token::LParen)) {
        match matching_paren(toks, i) {
            Some(close) => i = close + 1,
            None => return Class::Unsafe(UnsafeKind::Unparsable),
        }
    }
    if !toks.get(i).is_some_and(|t| t.is_kw("AS")) || i + 1 >= toks.len() {
        return Class::Unsafe(UnsafeKind::Unparsable);
    }
    Class::Prepare {
        name,
        statement: Box::new(classify_tokens(sql, &toks[i + 1..], nested + 1)),
    }
}

/// `DECLARE name ... CURSOR ... FOR query`: a read if the query is one.
fn declare(sql: &str, toks: &[Tok], nested: usize) -> Class {
    let cursor = toks.iter().position(|t| t.is_kw("CURSOR"));
    let for_at = cursor.and_then(|c| (c + 1..toks.len()).find(|&i| toks[i].is_kw("FOR")));
    match for_at {
        Some(f) if f + 1 < toks.len() => match classify_tokens(sql, &toks[f + 1..], nested + 1) {
            read @ Class::Read { .. } => read,
            _ => Class::Unsafe(UnsafeKind::Unparsable),
        },
        _ => Class::Unsafe(UnsafeKind::Unparsable),
    }
}

/// `EXPLAIN [ANALYZE] [VERBOSE] stmt` or `EXPLAIN (options) stmt`. Without
/// ANALYZE nothing runs, so it is a read whatever the statement; with
/// ANALYZE the statement runs, so only a read stays a read.
fn explain(sql: &str, toks: &[Tok], nested: usize) -> Class {
    let mut i = 1;
    let mut analyze = false;
    if toks.get(i).is_some_and(|t| t.is(&Token::LParen)) {
        let Some(close) = matching_paren(toks, i) else {
            return Class::Unsafe(UnsafeKind::Unparsable);
        };
        for k in i + 1..close {
            if toks[k].is_any_kw(&["ANALYZE", "ANALYSE"]) {
                let off = toks.get(k + 1).is_some_and(|v| {
                    v.is_any_kw(&["FALSE", "OFF"]) || matches!(&v.token, Token::Number(n, _) if n == "0")
                });
                analyze |= !off;
            }
        }
        i = close + 1;
    } else {
        while toks
            .get(i)
            .is_some_and(|t| t.is_any_kw(&["ANALYZE", "ANALYSE", "VERBOSE"]))
        {
            analyze |= !toks[i].is_kw("VERBOSE");
            i += 1;
        }
    }
    if i >= toks.len() {
        return Class::Unsafe(UnsafeKind::Unparsable);
    }
    match classify_tokens(sql, &toks[i..], nested + 1) {
        read @ Class::Read { .. } => read,
        Class::Write(w) if !analyze => Class::Read {
            functions: w.functions,
            refs: w.refs,
        },
        Class::Unsafe(UnsafeKind::Unparsable) => Class::Unsafe(UnsafeKind::Unparsable),
        _ if !analyze => Class::Read {
            functions: Vec::new(),
            refs: Default::default(),
        },
        _ => Class::Unsafe(UnsafeKind::ExplainAnalyze),
    }
}

/// `COPY table [(cols)] FROM ...` / `COPY table TO ...` /
/// `COPY (query) TO ...`.
fn copy(sql: &str, toks: &[Tok], nested: usize) -> Class {
    if toks.get(1).is_some_and(|t| t.is(&Token::LParen)) {
        let Some(close) = matching_paren(toks, 1) else {
            return Class::Unsafe(UnsafeKind::Unparsable);
        };
        if close <= 2 || !toks.get(close + 1).is_some_and(|t| t.is_kw("TO")) {
            return Class::Unsafe(UnsafeKind::Unparsable);
        }
        // COPY (INSERT ... RETURNING ...) TO STDOUT writes, and its output
        // cannot carry the projection.
        return match classify_tokens(sql, &toks[2..close], nested + 1) {
            read @ Class::Read { .. } => read,
            Class::Write(_) => Class::Unsafe(UnsafeKind::WriteInCte),
            other => other,
        };
    }
    let Some((table, mut i)) = qualname(toks, 1) else {
        return Class::Unsafe(UnsafeKind::Unparsable);
    };
    let mut columns = Vec::new();
    if toks.get(i).is_some_and(|t| t.is(&Token::LParen)) {
        let Some(close) = matching_paren(toks, i) else {
            return Class::Unsafe(UnsafeKind::Unparsable);
        };
        columns = toks[i + 1..close].iter().filter_map(Tok::ident).collect();
        i = close + 1;
    }
    match toks.get(i) {
        Some(t) if t.is_kw("FROM") => Class::Unsafe(UnsafeKind::CopyFrom { table, columns }),
        Some(t) if t.is_kw("TO") => Class::Read {
            functions: Vec::new(),
            refs: Default::default(),
        },
        _ => Class::Unsafe(UnsafeKind::Unparsable),
    }
}

/// `TRUNCATE [TABLE] [ONLY] name [*] [, ...] [RESTART IDENTITY] [CASCADE]`.
fn truncate(toks: &[Tok]) -> Class {
    let mut i = 1;
    if toks.get(i).is_some_and(|t| t.is_kw("TABLE")) {
        i += 1;
    }
    let mut tables = Vec::new();
    loop {
        if toks.get(i).is_some_and(|t| t.is_kw("ONLY")) {
            i += 1;
        }
        let Some((name, next)) = qualname(toks, i) else {
            return Class::Unsafe(UnsafeKind::Unparsable);
        };
        tables.push(name);
        i = next;
        if toks.get(i).is_some_and(|t| t.is(&Token::Mul)) {
            i += 1;
        }
        if toks.get(i).is_some_and(|t| t.is(&Token::Comma)) {
            i += 1;
        } else {
            break;
        }
    }
    Class::Unsafe(UnsafeKind::Truncate { tables })
}
