//! Tokens with byte offsets, and the split of a query string into statements.
//!
//! sqlparser's tokenizer reports line/column locations counted in `char`s;
//! everything downstream (ranges, the splice point) needs byte offsets into
//! the original text, so the conversion lives here, in one forward pass that
//! mirrors the tokenizer's own counting (only `\n` starts a line).

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT_BYTES: usize = 63;

/// A significant token (not whitespace, not a comment) and its byte range.
#[derive(Debug, Clone)]
pub(crate) struct Tok {
    pub token: Token,
    pub start: usize,
    pub end: usize,
}

impl Tok {
    /// True if this token is the unquoted word `kw` (ASCII case-insensitive).
    ///
    /// Compared by text rather than sqlparser's `Keyword`, because some
    /// PostgreSQL words (ATOMIC, CONFLICT...) are not sqlparser keywords.
    pub fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
    }

    /// True if this token is one of the unquoted words in `kws`.
    pub fn is_any_kw(&self, kws: &[&str]) -> bool {
        kws.iter().any(|k| self.is_kw(k))
    }

    /// The identifier this token names, normalized as PostgreSQL does, if
    /// it is a word (quoted or not).
    pub fn ident(&self) -> Option<String> {
        match &self.token {
            Token::Word(w) => Some(normalize_ident(&w.value, w.quote_style.is_some())),
            _ => None,
        }
    }

    /// True for the given punctuation token.
    pub fn is(&self, t: &Token) -> bool {
        &self.token == t
    }
}

/// Normalizes an identifier as PostgreSQL's scanner does: unquoted names
/// are folded to lower case (ASCII only, as in a UTF8 database), quoted ones
/// are kept; both are truncated to 63 bytes on a character boundary.
pub(crate) fn normalize_ident(value: &str, quoted: bool) -> String {
    let mut s = if quoted {
        value.to_string()
    } else {
        value.to_ascii_lowercase()
    };
    if s.len() > MAX_IDENT_BYTES {
        let mut cut = MAX_IDENT_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Walks the text forward, converting the tokenizer's (line, column)
/// locations into byte offsets. Locations must be asked for in order.
struct ByteCursor<'a> {
    text: &'a str,
    line: u64,
    col: u64,
    byte: usize,
}

impl<'a> ByteCursor<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            line: 1,
            col: 1,
            byte: 0,
        }
    }

    fn offset_of(&mut self, loc: Location) -> usize {
        while (self.line, self.col) < (loc.line, loc.column) {
            let Some(ch) = self.text[self.byte..].chars().next() else {
                break;
            };
            self.byte += ch.len_utf8();
            if ch == '\n' {
                self.line += 1;
                self.col = 1;
            } else {
                self.col += 1;
            }
        }
        self.byte
    }
}

/// Tokenizes `text` with the PostgreSQL dialect and returns its significant
/// tokens (semicolons included) with byte offsets, or `None` if the text
/// cannot be tokenized (an unterminated quote or comment, for instance).
pub(crate) fn tokenize(text: &str) -> Option<Vec<Tok>> {
    let dialect = PostgreSqlDialect {};
    let raw = Tokenizer::new(&dialect, text)
        .with_unescape(true)
        .tokenize_with_location()
        .ok()?;
    let mut cursor = ByteCursor::new(text);
    let mut out = Vec::with_capacity(raw.len());
    for t in raw {
        // Offsets are computed for every token, skipped ones included, so
        // the cursor only ever moves forward.
        let start = cursor.offset_of(t.span.start);
        let end = cursor.offset_of(t.span.end);
        match t.token {
            Token::Whitespace(_) | Token::EOF => {}
            token => out.push(Tok { token, start, end }),
        }
    }
    Some(out)
}

/// Splits significant tokens into statements at top-level semicolons and
/// returns each statement's tokens (without the semicolon). Empty
/// statements (`;;`, a string of only comments) are dropped: PostgreSQL
/// runs nothing for them inside a multi-statement string.
///
/// Semicolons inside a SQL-standard function body (`CREATE FUNCTION ...
/// BEGIN ATOMIC ...; ...; END`) do not end the statement; they are found
/// with the same heuristic psql uses (count BEGIN/CASE against END at
/// parenthesis depth 0, only in CREATE [OR REPLACE] FUNCTION|PROCEDURE).
pub(crate) fn split_statements(toks: &[Tok]) -> Vec<&[Tok]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut paren = 0i32;
    let mut begin_depth = 0u32;
    for (i, t) in toks.iter().enumerate() {
        match &t.token {
            Token::LParen => paren += 1,
            Token::RParen => paren -= 1,
            Token::SemiColon if begin_depth == 0 => {
                if i > start {
                    out.push(&toks[start..i]);
                }
                start = i + 1;
                paren = 0;
                continue;
            }
            Token::Word(_) if paren == 0 && is_create_routine(&toks[start..i]) => {
                if t.is_kw("BEGIN") || (t.is_kw("CASE") && begin_depth >= 1) {
                    begin_depth += 1;
                } else if t.is_kw("END") && begin_depth > 0 {
                    begin_depth -= 1;
                }
            }
            _ => {}
        }
    }
    if start < toks.len() {
        out.push(&toks[start..]);
    }
    out
}

/// True if a statement's tokens so far start with
/// CREATE [OR REPLACE] FUNCTION|PROCEDURE.
fn is_create_routine(prefix: &[Tok]) -> bool {
    let routine = |t: Option<&Tok>| t.is_some_and(|t| t.is_any_kw(&["FUNCTION", "PROCEDURE"]));
    match prefix.first() {
        Some(t) if t.is_kw("CREATE") => {
            routine(prefix.get(1))
                || (prefix.get(1).is_some_and(|t| t.is_kw("OR"))
                    && prefix.get(2).is_some_and(|t| t.is_kw("REPLACE"))
                    && routine(prefix.get(3)))
        }
        _ => false,
    }
}

/// Statements whose [`depth_bound`] is above this are not classified: they
/// are [`super::UnsafeKind::TooComplex`]. An expression chain of this many
/// tokens (`1 + 1 + ...`, `a OR b OR ...`, `x::t::t...`, a run of UNIONs)
/// builds an AST about this deep, and the parser, the AST walk and the
/// AST's drop all recurse on it; a list of any length (`VALUES (..), (..)`,
/// `IN (1, 2, ...)`) stays shallow because each comma starts a new sibling.
pub(crate) const MAX_DEPTH: usize = 10_000;

/// Statements whose [`depth_bound`] is at most this are classified on the
/// caller's stack (a tokio worker's 2 MiB is ample for it); deeper ones on a
/// thread of their own with [`DEEP_STACK`] bytes of stack.
pub(crate) const INLINE_DEPTH: usize = 200;

/// The stack of the thread that classifies deep statements: room for an AST
/// [`MAX_DEPTH`] levels deep with a wide margin, even in a debug build.
/// Only the pages touched are ever backed by memory.
pub(crate) const DEEP_STACK: usize = 256 << 20;

/// What one parenthesis or bracket level adds to [`depth_bound`]: a nested
/// subquery wraps its expression in several AST nodes.
const LEVEL_WEIGHT: usize = 16;

/// A cheap upper bound, from tokens alone, on how deep the AST of a
/// statement can be, so that a statement too deep to walk safely is refused
/// before any recursive code sees it. Counts, at each point, the tokens
/// since the last comma at every open parenthesis / bracket level, plus a
/// weight per open level; returns the maximum. Linear, no recursion.
pub(crate) fn depth_bound(toks: &[Tok]) -> usize {
    // Tokens since the last comma at each open level; `total` is their sum.
    let mut levels: Vec<usize> = vec![0];
    let mut total = 0usize;
    let mut max = 0usize;
    for t in toks {
        match t.token {
            Token::LParen | Token::LBracket => {
                // The bracket itself counts (a subscript chains like an operator).
                if let Some(top) = levels.last_mut() {
                    *top += 1;
                }
                total += 1;
                levels.push(0);
            }
            Token::RParen | Token::RBracket => {
                if levels.len() > 1 {
                    total -= levels.pop().unwrap_or(0);
                }
            }
            Token::Comma => {
                if let Some(top) = levels.last_mut() {
                    total -= *top;
                    *top = 0;
                }
            }
            _ => {
                if let Some(top) = levels.last_mut() {
                    *top += 1;
                }
                total += 1;
            }
        }
        max = max.max(total + (levels.len() - 1) * LEVEL_WEIGHT);
    }
    max
}
