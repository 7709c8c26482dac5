//! Verification: is the target the source, mapped? Two uses.
//!
//! - [`verify_tables`], online, before the freeze, while traffic runs and
//!   catch-up replays: whole tables compared by checksums over key ranges
//!   (as Vitess VDiff and pt-table-checksum do). Ranges are chunks of the
//!   source key order; a range whose checksums differ is checked again a
//!   few times after a short wait (catch-up may still be applying it), and
//!   if it still differs it is compared row by row to name the keys. It is
//!   the DBA's evidence that the target is right, and too slow for a pause.
//! - [`verify_keys`], inside the cutover freeze: the given keys of each
//!   table (the ones synced in the final pass and a sample of earlier ones)
//!   compared row by row, in one query per table on each side.
//!
//! What is compared: for each mapped table, the target columns the mapping
//! gives a value ([`TableMap::columns`](crate::mapping::TableMap)) — each
//! target column against the value the mapping computes from the source
//! row. Target columns the mapping lets take their defaults (target columns
//! absent from the source) and generated columns are not compared, since
//! nothing on the source says what they should hold; a report lists them.
//! Rows are matched by key; a key present on one side only is a mismatch,
//! a key absent from both is not.
//!
//! Values are compared as text, in the form replay writes them: a mapped
//! value leaves the source as text and is read as the target column's type.
//! [`verify_keys`] does exactly that on the target (the source's text cast
//! to the target column's type, both rows printed by the target).
//! [`verify_tables`] cannot move every row, so each side prints its rows
//! itself: the source casts its text to the target column's type where a
//! type of that name exists on the source too (else it compares the text of
//! the expression as it is, which for a type the migration created, such
//! as a new enum or domain, is what the target prints when its input and
//! output agree), and the target session takes the source session's output
//! settings (DateStyle, IntervalStyle, TimeZone, extra_float_digits,
//! bytea_output, lc_monetary) so that both print values alike.
//!
//! Online, the two sides are read a moment apart while catch-up trails the
//! source by its lag: a key written again and again (a hot counter) can
//! differ at every re-check, and is then reported although replay would
//! bring it level. The online report is evidence; the final pass, inside
//! the freeze where nothing writes, is the check that gates the cutover.
//!
//! Tables in the proxy's own schema `switchyard` are not verified, and a
//! partition is verified through the partitioned table it belongs to (its
//! rows are captured and replayed under that table).

mod keys;
mod report;
mod sql;
mod tables;

pub use keys::{verify_keys, KeysCheck, KeysReport, SourceRows, TableKeysReport};
pub use report::{Progress, ProgressEvent, TableReport, VerifyOptions, VerifyReport};
pub use tables::verify_tables;

use crate::catalog::Catalog;
use crate::log::Key;
use crate::mapping::Resolved;
use thiserror::Error;

/// What verification reads tables through: the resolved mapping and the
/// two catalogs it was resolved against (for the columns' types).
#[derive(Debug, Clone, Copy)]
pub struct Mapped<'a> {
    /// The mapping, resolved against `source` and `target`.
    pub mapping: &'a Resolved,
    /// The source catalog.
    pub source: &'a Catalog,
    /// The target catalog.
    pub target: &'a Catalog,
}

/// How a row differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MismatchKind {
    /// The source has the key, the target does not.
    MissingOnTarget,
    /// The target has the key, the source does not.
    ExtraOnTarget,
    /// Both have the key; some compared column differs.
    Differs,
}

impl std::fmt::Display for MismatchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MismatchKind::MissingOnTarget => "missing on the target",
            MismatchKind::ExtraOnTarget => "extra on the target",
            MismatchKind::Differs => "differs",
        })
    }
}

/// One key whose rows differ.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mismatch {
    /// The key's values as text, in source key order.
    pub key: Key,
    /// How it differs.
    pub kind: MismatchKind,
}

/// Why verification could not run (a difference found is not an error: it
/// is in the report).
#[derive(Debug, Error)]
pub enum VerifyError {
    /// A database call failed.
    #[error("{what}: {}", crate::error_text(error))]
    Db {
        /// What was being done.
        what: String,
        /// The driver's error, rendered in the message (not a `source`:
        /// a chain printed with `{:#}` would say it twice).
        error: tokio_postgres::Error,
    },
    /// A table asked for is not in the mapping.
    #[error("table {0} is not in the mapping; name a source table, or re-resolve the mapping with the current source catalog")]
    Unmapped(String),
    /// A key has the wrong number of values.
    #[error("a key of {table} has {got} values, but the table's key has {expected} columns ({columns}); give one value per key column, in key order")]
    KeyWidth {
        /// The source table.
        table: String,
        /// Key columns of the table.
        expected: usize,
        /// Values in the key given.
        got: usize,
        /// The key columns, comma-separated.
        columns: String,
    },
}

pub(crate) fn db(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> VerifyError {
    let what = what.into();
    move |error| VerifyError::Db { what, error }
}
