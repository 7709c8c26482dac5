//! The text splice: append the key projection to a write's RETURNING list
//! (or add one), in the original text, without re-printing any SQL.

use super::{quote_ident, WriteStmt};

/// The text inserted at [`WriteStmt::splice_at`]: ` RETURNING q."k1", q."k2"`,
/// or `, q."k1", q."k2"` after the client's own RETURNING list. Columns are
/// qualified by the alias if any, else by the (schema-qualified) table name,
/// so they cannot be ambiguous with UPDATE ... FROM / DELETE ... USING
/// tables; every identifier is quoted, so pass catalog names as they are.
/// Empty when `key_columns` is empty.
pub fn returning_suffix(stmt: &WriteStmt, key_columns: &[&str]) -> String {
    if key_columns.is_empty() {
        return String::new();
    }
    let qualifier = match &stmt.alias {
        Some(a) => quote_ident(a),
        None => stmt.table.quoted(),
    };
    let cols: Vec<String> = key_columns
        .iter()
        .map(|k| format!("{qualifier}.{}", quote_ident(k)))
        .collect();
    let lead = if stmt.has_returning { ", " } else { " RETURNING " };
    format!("{lead}{}", cols.join(", "))
}

/// Returns `sql` with the key projection spliced into one write statement.
/// `stmt` must come from [`super::classify`] of this same `sql`.
pub fn splice_returning(sql: &str, stmt: &WriteStmt, key_columns: &[&str]) -> String {
    splice_all(sql, &[(stmt, key_columns)])
}

/// Returns `sql` with the key projection spliced into each given write
/// (in any order) of a multi-statement string, offsets taken from the
/// original text. A splice point outside the text is ignored.
pub fn splice_all(sql: &str, splices: &[(&WriteStmt, &[&str])]) -> String {
    let mut points: Vec<(usize, String)> = splices
        .iter()
        .filter(|(w, _)| w.splice_at <= sql.len() && sql.is_char_boundary(w.splice_at))
        .map(|(w, keys)| (w.splice_at, returning_suffix(w, keys)))
        .collect();
    points.sort_by_key(|(at, _)| *at);
    let extra: usize = points.iter().map(|(_, s)| s.len()).sum();
    let mut out = String::with_capacity(sql.len() + extra);
    let mut from = 0;
    for (at, suffix) in points {
        out.push_str(&sql[from..at]);
        out.push_str(&suffix);
        from = at;
    }
    out.push_str(&sql[from..]);
    out
}
