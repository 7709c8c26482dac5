//! Token-level classification of SELECT / WITH / INSERT / UPDATE / DELETE
//! statements that sqlparser cannot parse (ON CONFLICT ... WHERE, FOR NO KEY
//! UPDATE, newer syntax...), and the token helpers shared with the
//! command classifier. Deliberately conservative: anything it does not
//! recognize is [`UnsafeKind::Unparsable`], and a possible nested write is
//! [`UnsafeKind::WriteInCte`].

use sqlparser::tokenizer::Token;

use super::lex::Tok;
use super::{Class, QualName, Refs, UnsafeKind, WriteKind, WriteStmt};

/// Classifies a DML-ish statement (first word SELECT, WITH, VALUES, TABLE,
/// INSERT, UPDATE, DELETE, or a `(`) from its tokens alone.
pub(crate) fn classify_dml(toks: &[Tok]) -> Class {
    let functions = functions(toks);
    let refs = refs(toks);
    let main = if toks[0].is_kw("WITH") {
        match skip_ctes(toks) {
            Some(main) => main,
            None => return Class::Unsafe(UnsafeKind::Unparsable),
        }
    } else {
        0
    };
    if (0..toks.len()).any(|i| i != main && is_write_word(toks, i)) {
        return Class::Unsafe(UnsafeKind::WriteInCte);
    }
    let head = &toks[main];
    if head.is_any_kw(&["INSERT", "UPDATE", "DELETE"]) {
        return match write_stmt(toks, main, functions, refs) {
            Some(w) => Class::Write(w),
            None => Class::Unsafe(UnsafeKind::Unparsable),
        };
    }
    if head.is_kw("MERGE") {
        return Class::Unsafe(UnsafeKind::Merge);
    }
    if head.is(&Token::LParen) || head.is_any_kw(&["SELECT", "VALUES", "TABLE"]) {
        if has_select_into(&toks[main..]) {
            return Class::Unsafe(UnsafeKind::SelectInto);
        }
        return Class::Read { functions, refs };
    }
    Class::Unsafe(UnsafeKind::Unparsable)
}

/// Index of the token that closes the parenthesis opened at `open`.
pub(crate) fn matching_paren(toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// For each token, the index of the token closing it if it is a `(`, in
/// one pass, so callers that look at every parenthesis stay linear.
fn closing_parens(toks: &[Tok]) -> Vec<Option<usize>> {
    let mut closes = vec![None; toks.len()];
    let mut open = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match t.token {
            Token::LParen => open.push(i),
            Token::RParen => {
                if let Some(o) = open.pop() {
                    closes[o] = Some(i);
                }
            }
            _ => {}
        }
    }
    closes
}

/// Parenthesis depth before each token (a `(` itself is at the outer depth).
pub(crate) fn depths(toks: &[Tok]) -> Vec<i32> {
    let mut d = 0;
    toks.iter()
        .map(|t| {
            if t.is(&Token::RParen) {
                d -= 1;
            }
            let here = d;
            if t.is(&Token::LParen) {
                d += 1;
            }
            here
        })
        .collect()
}

/// Parses `name`, `schema.name` or `catalog.schema.name` starting at `i`;
/// returns the name and the index after it.
pub(crate) fn qualname(toks: &[Tok], i: usize) -> Option<(QualName, usize)> {
    let mut parts = vec![toks.get(i)?.ident()?];
    let mut j = i + 1;
    while toks.get(j).is_some_and(|t| t.is(&Token::Period)) {
        parts.push(toks.get(j + 1)?.ident()?);
        j += 2;
    }
    let name = match parts.as_slice() {
        [n] => QualName::bare(n),
        [s, n] | [_, s, n] => QualName::qualified(s, n),
        _ => return None,
    };
    Some((name, j))
}

/// True if token `i` starts a data-modifying statement: INSERT INTO,
/// DELETE FROM, MERGE INTO, or UPDATE followed by a table name — but not
/// the UPDATE of `FOR [NO KEY] UPDATE` or `ON CONFLICT DO UPDATE`.
pub(crate) fn is_write_word(toks: &[Tok], i: usize) -> bool {
    let t = &toks[i];
    let next = toks.get(i + 1);
    let next_is = |kw: &str| next.is_some_and(|n| n.is_kw(kw));
    if t.is_kw("INSERT") || t.is_kw("MERGE") {
        return next_is("INTO");
    }
    if t.is_kw("DELETE") {
        return next_is("FROM");
    }
    if t.is_kw("UPDATE") {
        let prev_is = |kw: &str| i > 0 && toks[i - 1].is_kw(kw);
        if prev_is("FOR") || prev_is("KEY") || prev_is("DO") {
            return false;
        }
        return next.is_some_and(|n| {
            matches!(n.token, Token::Word(_)) && !n.is_any_kw(&["SET", "WHERE", "FROM", "RETURNING", "AND", "OR", "OF"])
        });
    }
    false
}

/// Skips `WITH [RECURSIVE] name [(cols)] AS [NOT] [MATERIALIZED] (...)
/// [SEARCH ...] [CYCLE ...], ...` and returns the index of the main
/// statement's first token.
fn skip_ctes(toks: &[Tok]) -> Option<usize> {
    let mut i = 1;
    if toks.get(i)?.is_kw("RECURSIVE") {
        i += 1;
    }
    loop {
        toks.get(i)?.ident()?;
        i += 1;
        if toks.get(i)?.is(&Token::LParen) {
            i = matching_paren(toks, i)? + 1;
        }
        if !toks.get(i)?.is_kw("AS") {
            return None;
        }
        i += 1;
        while toks.get(i)?.is_any_kw(&["NOT", "MATERIALIZED"]) {
            i += 1;
        }
        if !toks.get(i)?.is(&Token::LParen) {
            return None;
        }
        i = matching_paren(toks, i)? + 1;
        // SEARCH / CYCLE clauses run until the next CTE or the main statement.
        loop {
            let t = toks.get(i)?;
            if t.is(&Token::Comma) {
                i += 1;
                break;
            }
            if t.is(&Token::LParen)
                || t.is_any_kw(&["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE"])
            {
                return Some(i);
            }
            i += 1;
        }
    }
}

/// SELECT ... INTO at the top level (it creates a table). `INSERT INTO` /
/// `MERGE INTO` do not count.
fn has_select_into(toks: &[Tok]) -> bool {
    let d = depths(toks);
    toks.iter()
        .enumerate()
        .any(|(i, t)| d[i] == 0 && t.is_kw("INTO") && !(i > 0 && toks[i - 1].is_any_kw(&["INSERT", "MERGE"])))
}

/// Words that are followed by `(` without being function calls.
const NOT_FUNCTIONS: &[&str] = &[
    "ALL",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "BETWEEN",
    "BY",
    "CASE",
    "CONFLICT",
    "CUBE",
    "DISTINCT",
    "DO",
    "ELSE",
    "EXISTS",
    "FILTER",
    "FROM",
    "GROUPING",
    "IN",
    "INTO",
    "IS",
    "JOIN",
    "LATERAL",
    "LIKE",
    "ILIKE",
    "LIMIT",
    "MATERIALIZED",
    "NOT",
    "OFFSET",
    "ON",
    "ONLY",
    "OR",
    "OVER",
    "RECURSIVE",
    "RETURNING",
    "ROLLUP",
    "ROW",
    "SELECT",
    "SET",
    "SETS",
    "SIMILAR",
    "SOME",
    "TABLE",
    "THEN",
    "USING",
    "VALUES",
    "WHEN",
    "WHERE",
    "WITH",
    "WITHIN",
];

/// Function names called in the statement, found as a (qualified) name
/// followed by `(`. A superset: a type modifier after `::` or `AS` and
/// column lists after the INSERT target or a CTE name are excluded, but an
/// alias with a column list (`FROM t x(a, b)`) is reported; the caller only
/// looks the names up.
pub(crate) fn functions(toks: &[Tok]) -> Vec<QualName> {
    let mut out: Vec<QualName> = Vec::new();
    let closes = closing_parens(toks);
    for i in 0..toks.len() {
        if !toks.get(i + 1).is_some_and(|t| t.is(&Token::LParen)) {
            continue;
        }
        let t = &toks[i];
        let Token::Word(w) = &t.token else { continue };
        if w.quote_style.is_none() && t.is_any_kw(NOT_FUNCTIONS) {
            continue;
        }
        // Walk back over `a.b.` to the start of a qualified name.
        let mut s = i;
        while s >= 2 && toks[s - 1].is(&Token::Period) && toks[s - 2].ident().is_some() {
            s -= 2;
        }
        let prev = s.checked_sub(1).map(|p| &toks[p]);
        if prev.is_some_and(|p| p.is(&Token::DoubleColon) || p.is_any_kw(&["AS", "INTO", "TABLE", "ONLY"])) {
            continue;
        }
        // `name (cols) AS (` is a CTE header.
        if let Some(close) = closes[i + 1] {
            if toks.get(close + 1).is_some_and(|t| t.is_kw("AS"))
                && toks
                    .get(close + 2)
                    .is_some_and(|t| t.is(&Token::LParen) || t.is_any_kw(&["NOT", "MATERIALIZED"]))
            {
                continue;
            }
        }
        if let Some((name, _)) = qualname(toks, s) {
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// The relations, operators and types a statement references, from its
/// tokens: a superset. Relations are names after FROM, JOIN, UPDATE, INTO,
/// USING, TABLE or ONLY and after a comma in a FROM or USING list; types
/// are names after `::` or AS (aliases included); operators are every
/// operator token (a user may define any symbol for their own types).
pub(crate) fn refs(toks: &[Tok]) -> Refs {
    let mut refs = Refs::default();
    let mut in_from = false;
    for (i, t) in toks.iter().enumerate() {
        let relation_next = t.is_any_kw(&["FROM", "JOIN", "UPDATE", "INTO", "USING", "TABLE", "ONLY"]);
        if relation_next || (in_from && t.is(&Token::Comma)) {
            if let Some((name, _)) = qualname(toks, i + 1) {
                if !refs.relations.contains(&name) {
                    refs.relations.push(name);
                }
            }
        }
        if t.is(&Token::DoubleColon) || t.is_kw("AS") {
            if let Some((name, _)) = qualname(toks, i + 1) {
                if !refs.types.contains(&name) {
                    refs.types.push(name);
                }
            }
        }
        match &t.token {
            Token::Word(w) if w.quote_style.is_none() => {
                if t.is_any_kw(&["FROM", "USING"]) {
                    in_from = true;
                } else if w.keyword != sqlparser::keywords::Keyword::NoKeyword && !t.is_kw("ONLY") {
                    in_from = false;
                }
            }
            Token::Word(_)
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::Comma
            | Token::Period
            | Token::LParen
            | Token::RParen
            | Token::SemiColon
            | Token::DoubleColon
            | Token::Colon
            | Token::LBracket
            | Token::RBracket
            | Token::Placeholder(_) => {}
            other => {
                let symbol = other.to_string();
                if !refs.operators.contains(&symbol) {
                    refs.operators.push(symbol);
                }
            }
        }
    }
    refs
}

/// Reads the target of a write starting at `at` (its INSERT / UPDATE /
/// DELETE keyword) and the facts the capture tap needs.
fn write_stmt(toks: &[Tok], at: usize, functions: Vec<QualName>, refs: Refs) -> Option<WriteStmt> {
    let head = &toks[at];
    let (kind, mut i) = if head.is_kw("INSERT") && toks.get(at + 1)?.is_kw("INTO") {
        (WriteKind::Insert, at + 2)
    } else if head.is_kw("UPDATE") {
        (WriteKind::Update, at + 1)
    } else if head.is_kw("DELETE") && toks.get(at + 1)?.is_kw("FROM") {
        (WriteKind::Delete, at + 2)
    } else {
        return None;
    };
    if kind != WriteKind::Insert && toks.get(i)?.is_kw("ONLY") {
        i += 1;
    }
    let (table, mut j) = qualname(toks, i)?;
    if kind != WriteKind::Insert && toks.get(j).is_some_and(|t| t.is(&Token::Mul)) {
        j += 1;
    }
    let alias = match toks.get(j) {
        Some(t) if t.is_kw("AS") => Some(toks.get(j + 1)?.ident()?),
        Some(t)
            if kind != WriteKind::Insert
                && matches!(t.token, Token::Word(_))
                && !t.is_any_kw(&["SET", "USING", "WHERE", "RETURNING"]) =>
        {
            Some(t.ident()?)
        }
        _ => None,
    };
    let d = depths(toks);
    let top = |k: usize, kw: &str| k > at && d[k] == 0 && toks[k].is_kw(kw);
    let has_returning = (0..toks.len()).any(|k| top(k, "RETURNING"));
    let on_conflict = kind == WriteKind::Insert
        && (0..toks.len()).any(|k| top(k, "ON") && toks.get(k + 1).is_some_and(|t| t.is_kw("CONFLICT")));
    let set_at = (0..toks.len()).find(|&k| top(k, "SET") && (kind == WriteKind::Update || toks[k - 1].is_kw("UPDATE")));
    let assigned_columns = set_at.map(|k| assignments(toks, &d, k + 1)).unwrap_or_default();
    Some(WriteStmt {
        kind,
        table,
        alias,
        has_returning,
        splice_at: toks.last()?.end,
        on_conflict,
        assigned_columns,
        functions,
        refs,
    })
}

/// Column names assigned in a SET list starting at `i`: at the start of the
/// list and after each top-level comma, `col [.field | [sub]]... =` or
/// `(a, b, ...) =`. Stops at a top-level WHERE or RETURNING. (A FROM list
/// after SET cannot match the `name =` shape, so it needs no boundary,
/// which keeps `x IS DISTINCT FROM y` inside a value harmless.)
fn assignments(toks: &[Tok], d: &[i32], mut i: usize) -> Vec<String> {
    let mut cols = Vec::new();
    let mut at_item = true;
    while i < toks.len() {
        let t = &toks[i];
        if d[i] == 0 && t.is_any_kw(&["WHERE", "RETURNING"]) {
            break;
        }
        if at_item {
            if t.is(&Token::LParen) {
                if let Some(close) = matching_paren(toks, i) {
                    if toks.get(close + 1).is_some_and(|t| t.is(&Token::Eq)) {
                        let mut item_start = true;
                        for x in &toks[i + 1..close] {
                            if item_start {
                                cols.extend(x.ident());
                            }
                            item_start = x.is(&Token::Comma);
                        }
                    }
                }
            } else if let Some(name) = t.ident() {
                let mut k = i + 1;
                while let Some(x) = toks.get(k) {
                    match x.token {
                        Token::Period => k += 2,
                        Token::LBracket => {
                            while toks.get(k).is_some_and(|x| !x.is(&Token::RBracket)) {
                                k += 1;
                            }
                            k += 1;
                        }
                        _ => break,
                    }
                }
                if toks.get(k).is_some_and(|x| x.is(&Token::Eq)) {
                    cols.push(name);
                }
            }
        }
        at_item = d[i] == 0 && t.is(&Token::Comma);
        i += 1;
    }
    cols
}
