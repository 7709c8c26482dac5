//! What capture makes of one statement before it is sent: the table it
//! writes and the keys to splice a RETURNING for, what it changes in name
//! resolution, or why it cannot be captured.

use super::{CopyTap, Rejection, SessionCapture, StmtInfo, Tap};
use crate::capture::control::shorten;
use crate::capture::copy::copy_options;
use crate::capture::resolve;
use crate::capture::{quote_ident, Class, QualName, Refs, TxControl, UnsafeKind, Utility, WriteKind, WriteStmt};
use crate::config::UnsafePolicy;
use std::sync::Arc;
use switchyard_replay::catalog::{parse_search_path, Access, Catalog, Reached};

impl SessionCapture {
    /// Classifies one statement for capture: its tap and splice, its
    /// transaction control, or its rejection.
    pub(super) fn analyze(
        &mut self,
        catalog: &Catalog,
        class: &Class,
        text: &str,
    ) -> (StmtInfo, Option<(usize, String)>) {
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
            Class::Utility(Utility::Set | Utility::Reset | Utility::Discard) => {
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
            text: shorten(text, 1000),
        }));
        (info, Some((w.splice_at, suffix)))
    }

    fn is_temp(&self, table: &QualName) -> bool {
        match &table.schema {
            Some(s) => s.starts_with("pg_temp"),
            None => self.temp_tables.contains(&table.name),
        }
    }

    /// How to read the keys of a COPY FROM STDIN from its data, when the
    /// table has a key, every key column is in the data, and the options
    /// are ones [`CopyReader`](crate::capture::copy::CopyReader) reads.
    fn copy_tap(&self, catalog: &Catalog, table: &QualName, columns: &[String], text: &str) -> Option<CopyTap> {
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
                text: shorten(text, 1000),
            }),
            format,
            header,
            positions,
        })
    }

    /// The first function that may write (user VOLATILE and not declared
    /// read-only, or a built-in writer) that a statement calls, or runs
    /// unnamed through a relation it reads, an operator or a cast.
    fn reaches(&self, catalog: &Catalog, functions: &[QualName], refs: &Refs) -> Option<Reached> {
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
    fn target_reaches(&self, catalog: &Catalog, table: &QualName, access: Access) -> Option<Reached> {
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

    pub(super) fn saw_unsafe(&self, kind: &'static str, text: &str) -> UnsafePolicy {
        tracing::debug!(session = self.session_id, kind, statement = %shorten(text, 200), "unsafe statement while capturing");
        self.active.saw_unsafe(kind, text)
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
pub(super) fn key_text(hex: &str) -> String {
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
pub(super) fn apply_splices(text: &[u8], from: usize, splices: &[(usize, String)]) -> Vec<u8> {
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
            apply_splices(&sql.as_bytes()[..at + 2], 0, &[(at, " RETURNING id".into())]),
            b"BEGIN; INSERT INTO t VALUES (1) RETURNING id; "
        );
        assert_eq!(apply_splices(sql.as_bytes(), at + 2, &[]), b"COMMIT");
    }
}
