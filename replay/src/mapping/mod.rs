//! Migration mapping: how a source row becomes a target row, per table.
//!
//! ```toml
//! [tables."public.accounts"]
//! target = "public.accounts_v2"        # default: the same name
//! drop = ["legacy_flag"]               # source columns not carried over
//! [tables."public.accounts".columns]   # target column = SQL over the source row
//! full_name = "first_name || ' ' || last_name"
//! balance = "balance::bigint"
//! [tables."public.accounts".reverse]   # for rollback: source column = SQL over the target row
//! first_name = "split_part(full_name, ' ', 1)"
//! ```
//!
//! Tables the file does not name map to the same table with the same
//! columns. [`Mapping::resolve`] checks a spec against both catalogs and
//! gives, per source table, the target table and one expression per target
//! column; errors name the table and column. Target columns with no source
//! column take their defaults; a target key column must come from a source
//! key column by name (so a deleted source row's target row can be found).

mod resolve;
pub(crate) mod rows;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use thiserror::Error;

pub use resolve::{ColumnSource, Resolved, TableMap};

/// A mapping file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Per source table (`schema.table`, or `table` for `public`).
    #[serde(default)]
    pub tables: BTreeMap<String, TableSpec>,
}

/// One table's entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Target table (`schema.table` or `table`); the source's name by default.
    pub target: Option<String>,
    /// Source columns that are not carried over.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Target column -> SQL expression over the source row.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Source column -> SQL expression over the target row, for rollback.
    #[serde(default)]
    pub reverse: BTreeMap<String, String>,
}

/// Why a mapping cannot be used.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum MappingError {
    /// The file could not be read or parsed.
    #[error("mapping file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong (the TOML parser names line and key).
        message: String,
    },
    /// A problem with one table (and column).
    #[error("mapping of {table}{}: {message}", column.as_ref().map(|c| format!(", column {c}")).unwrap_or_default())]
    Table {
        /// The source table.
        table: String,
        /// The column at fault, if one is.
        column: Option<String>,
        /// What is wrong and what to do.
        message: String,
    },
}

impl MappingError {
    pub(crate) fn table(table: &str, message: impl Into<String>) -> MappingError {
        MappingError::Table {
            table: table.to_owned(),
            column: None,
            message: message.into(),
        }
    }

    pub(crate) fn column(table: &str, column: &str, message: impl Into<String>) -> MappingError {
        MappingError::Table {
            table: table.to_owned(),
            column: Some(column.to_owned()),
            message: message.into(),
        }
    }
}

impl Mapping {
    /// Reads a mapping file.
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|e| MappingError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Mapping::parse(&text, &path.display().to_string())
    }

    /// Parses mapping text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Mapping, MappingError> {
        toml::from_str(text).map_err(|e| MappingError::File {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }
}

impl Resolved {
    /// Whether some table's mapping computes a column with an SQL
    /// expression (which [`Resolved::check_on_source`] checks).
    pub fn has_expressions(&self) -> bool {
        self.tables.values().any(TableMap::has_expressions)
    }

    /// Prepares on `source` the statement that reads each table whose
    /// mapping computes a column with an SQL expression, so that an
    /// expression the source cannot run (a misspelt column, a missing
    /// function, a type error: SQLSTATE classes 42 and 22) is reported
    /// now, naming its table with the database's own words, rather than
    /// when the first write comes. Plain column copies were checked against
    /// the catalogs already. Any other failure (a lost connection, a lock
    /// timeout) is the outer error.
    pub async fn check_on_source(
        &self,
        source: &tokio_postgres::Client,
        source_catalog: &crate::catalog::Catalog,
    ) -> Result<Result<(), Vec<MappingError>>, tokio_postgres::Error> {
        let mut errors = Vec::new();
        for map in self.tables.values().filter(|m| m.has_expressions()) {
            let sql = rows::read_by_keys_sql(map, source_catalog, std::iter::empty());
            let types = vec![tokio_postgres::types::Type::TEXT_ARRAY; map.source_key.len()];
            match source.prepare_typed(&sql, &types).await {
                Ok(_) => {}
                Err(e)
                    if e.code()
                        .is_some_and(|c| c.code().starts_with("42") || c.code().starts_with("22")) =>
                {
                    errors.push(MappingError::table(
                        &map.source.to_string(),
                        format!(
                            "its expressions under `columns` do not run on the source: {}",
                            crate::error_text(&e)
                        ),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(if errors.is_empty() { Ok(()) } else { Err(errors) })
    }
}

/// Splits `schema.table` (or `table`, meaning `public`); double quotes
/// keep case and dots.
pub(crate) fn split_name(name: &str) -> (String, String) {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c if quoted => cur.push(c),
            c => cur.push(c.to_ascii_lowercase()),
        }
    }
    parts.push(cur);
    match parts.len() {
        1 => ("public".to_owned(), parts.remove(0)),
        _ => {
            let table = parts.pop().unwrap_or_default();
            (parts.join("."), table)
        }
    }
}
