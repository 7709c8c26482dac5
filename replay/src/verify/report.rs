//! What online verification is told and what it reports: its options,
//! its progress as it goes, and the per-table outcome.

use super::Mismatch;
use crate::catalog::QualifiedName;
use std::time::Duration;

/// How [`verify_tables`](super::verify_tables) runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Source rows per range (default 10,000): smaller ranges narrow a
    /// difference faster, larger ones cost fewer round trips.
    pub rows_per_range: usize,
    /// How many times a range that differs is checked again before it is
    /// compared row by row (default 5). The row-by-row comparison is made
    /// twice, a wait apart, and only keys that differ the same way both
    /// times are reported.
    pub rechecks: usize,
    /// The wait before each re-check, for catch-up to apply what it has in
    /// hand (default 500 ms).
    pub recheck_wait: Duration,
    /// Differing keys listed per table, at most (default 100); the report
    /// counts them all.
    pub max_keys: usize,
    /// The source tables to verify; empty (the default) means every mapped
    /// table.
    pub tables: Vec<QualifiedName>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            rows_per_range: 10_000,
            rechecks: 5,
            recheck_wait: Duration::from_millis(500),
            max_keys: 100,
            tables: Vec::new(),
        }
    }
}

/// What just happened, for a console or CLI to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressEvent {
    /// A range was checked (and, if it differed, re-checked and compared).
    Range,
    /// A range differs; it is checked again after the wait (`attempt` from 1).
    Recheck {
        /// Which re-check is next.
        attempt: usize,
    },
    /// A table is done.
    TableDone,
}

/// Where [`verify_tables`](super::verify_tables) is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// What just happened.
    pub event: ProgressEvent,
    /// The source table being verified.
    pub table: QualifiedName,
    /// Tables finished, before this one.
    pub tables_done: usize,
    /// Tables to verify.
    pub tables_total: usize,
    /// Source rows checked in this table so far.
    pub table_rows: u64,
    /// Source rows checked in all tables so far.
    pub rows_checked: u64,
    /// Differing keys found so far, in all tables.
    pub differing: u64,
}

/// One table's verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    /// The source table.
    pub source: QualifiedName,
    /// The target table.
    pub target: QualifiedName,
    /// Source rows checked.
    pub rows_checked: u64,
    /// Target rows checked.
    pub target_rows: u64,
    /// Key ranges checked.
    pub ranges: u64,
    /// Ranges that differed at first and were checked again.
    pub ranges_rechecked: u64,
    /// Ranges that still differed after every re-check and were compared
    /// row by row.
    pub ranges_compared: u64,
    /// Differing keys, at most [`VerifyOptions::max_keys`], range by range
    /// in key order, by key text within a range. Keys are printed as the target's key types print
    /// them (the source's text for an unchanged key type).
    pub differing: Vec<Mismatch>,
    /// All differing keys found.
    pub differing_total: u64,
    /// Target columns compared.
    pub columns: Vec<String>,
    /// Of those, the ones compared as the text of the source value, since
    /// their type exists on the target only.
    pub compared_as_text: Vec<String>,
    /// Target columns not compared: the ones the mapping lets take their
    /// defaults, and generated columns.
    pub not_compared: Vec<String>,
    /// Time taken.
    pub elapsed: Duration,
}

impl TableReport {
    /// Whether no key differs.
    pub fn is_clean(&self) -> bool {
        self.differing_total == 0
    }
}

/// The outcome of [`verify_tables`](super::verify_tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Per table, in source name order.
    pub tables: Vec<TableReport>,
    /// Time taken.
    pub elapsed: Duration,
}

impl VerifyReport {
    /// Whether no key of any table differs.
    pub fn is_clean(&self) -> bool {
        self.tables.iter().all(TableReport::is_clean)
    }

    /// Source rows checked, over all tables.
    pub fn rows_checked(&self) -> u64 {
        self.tables.iter().map(|t| t.rows_checked).sum()
    }

    /// Differing keys, over all tables.
    pub fn differing_total(&self) -> u64 {
        self.tables.iter().map(|t| t.differing_total).sum()
    }
}
