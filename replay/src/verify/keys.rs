//! The final-pass check inside the cutover freeze: given keys compared row
//! by row through the mapping, in one query per table on each side, every
//! table's query sent at once.
//!
//! The source is read exactly as catch-up reads it (the mapped values as
//! text, by key). The target then gets those values with the keys and
//! compares on its side: each value cast to its target column's type, as
//! replay writes it, and both rows printed by the target as `ROW(...)::text`,
//! so no output setting of either session can make equal rows look
//! different, and types without an equality operator (json, point) compare
//! too. Only the keys that differ come back.

use super::{db, Mapped, Mismatch, MismatchKind, VerifyError};
use crate::catalog::QualifiedName;
use crate::log::Key;
use crate::mapping::rows::{key_arrays, key_match, q, read_by_keys_sql, text_arrays, type_of, TypedParam};
use crate::mapping::TableMap;
use futures_util::future::try_join_all;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

/// The outcome of [`verify_keys`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeysReport {
    /// Per source table asked about (tables given no keys are left out).
    pub tables: BTreeMap<QualifiedName, TableKeysReport>,
    /// Time taken.
    pub elapsed: Duration,
}

impl KeysReport {
    /// Whether every key compared equal.
    pub fn is_clean(&self) -> bool {
        self.tables.values().all(|t| t.mismatches.is_empty())
    }

    /// Keys compared, over all tables.
    pub fn keys_checked(&self) -> u64 {
        self.tables.values().map(|t| t.keys_checked).sum()
    }

    /// Keys that differ, over all tables.
    pub fn mismatches(&self) -> usize {
        self.tables.values().map(|t| t.mismatches.len()).sum()
    }
}

/// One table's part of a [`KeysReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableKeysReport {
    /// The target table.
    pub target: QualifiedName,
    /// Distinct keys compared.
    pub keys_checked: u64,
    /// Every key that differs, in key-text order, with the text it was given in.
    pub mismatches: Vec<Mismatch>,
}

/// Compares the rows of `keys` (source key values as text, in source key
/// order, as the capture log holds them) on `source` and `target` through
/// the mapping. Two round trips in all: every table's source read goes out
/// at once, then every table's target comparison. Runs outside any
/// transaction of its own, so the caller decides what the reads see (inside
/// the freeze nothing writes).
pub async fn verify_keys(
    source: &Client,
    target: &Client,
    mapped: Mapped<'_>,
    keys: &BTreeMap<QualifiedName, Vec<Key>>,
) -> Result<KeysReport, VerifyError> {
    let started = Instant::now();
    let check = KeysCheck::new(mapped, keys)?;
    let read = check.read_source(source).await?;
    let mut report = check.compare(target, read).await?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// [`verify_keys`] in its two halves, for a caller that can read the source
/// side before the target is ready to be compared (the cutover reads it
/// while the final sync runs: the frozen source no longer changes).
pub struct KeysCheck<'a> {
    plans: Vec<Plan<'a>>,
}

/// The source side of a [`KeysCheck`]: per table, the mapped values of the
/// keys found, by key position.
pub struct SourceRows(Vec<BTreeMap<usize, Vec<Option<String>>>>);

impl<'a> KeysCheck<'a> {
    /// The statements for `keys` (as in [`verify_keys`]); fails on a table
    /// the mapping does not know or a key of the wrong width.
    pub fn new(mapped: Mapped<'a>, keys: &BTreeMap<QualifiedName, Vec<Key>>) -> Result<KeysCheck<'a>, VerifyError> {
        let mut plans = Vec::new();
        for (table, keys) in keys {
            let map = mapped
                .mapping
                .table(table)
                .ok_or_else(|| VerifyError::Unmapped(table.to_string()))?;
            let width = map.source_key.len();
            if let Some(bad) = keys.iter().find(|k| k.len() != width) {
                return Err(VerifyError::KeyWidth {
                    table: table.to_string(),
                    expected: width,
                    got: bad.len(),
                    columns: map.source_key.join(", "),
                });
            }
            let keys: Vec<Key> = keys.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
            if !keys.is_empty() {
                plans.push(Plan::new(map, mapped, keys));
            }
        }
        Ok(KeysCheck { plans })
    }

    /// Reads every table's keys from the source, all queries sent at once
    /// (one round trip).
    pub async fn read_source(&self, source: &Client) -> Result<SourceRows, VerifyError> {
        let read = try_join_all(self.plans.iter().map(|p| p.read_source(source))).await?;
        Ok(SourceRows(read))
    }

    /// Compares what the source held (`read`) with the target, every
    /// table's comparison sent at once (one round trip).
    pub async fn compare(&self, target: &Client, read: SourceRows) -> Result<KeysReport, VerifyError> {
        let started = Instant::now();
        let compared = try_join_all(
            self.plans
                .iter()
                .zip(read.0)
                .map(|(p, rows)| p.compare_on_target(target, rows)),
        )
        .await?;
        let mut report = KeysReport::default();
        for (plan, mismatches) in self.plans.iter().zip(compared) {
            report.tables.insert(
                plan.map.source.clone(),
                TableKeysReport {
                    target: plan.map.target.clone(),
                    keys_checked: plan.keys.len() as u64,
                    mismatches,
                },
            );
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }
}

/// One table's keys and statements.
struct Plan<'a> {
    map: &'a TableMap,
    /// Distinct, sorted.
    keys: Vec<Key>,
    /// Key value arrays, one per key column.
    arrays: Vec<Vec<Option<String>>>,
    source_sql: String,
    target_sql: String,
}

impl<'a> Plan<'a> {
    fn new(map: &'a TableMap, mapped: Mapped<'_>, keys: Vec<Key>) -> Plan<'a> {
        let width = map.source_key.len();
        let arrays = key_arrays(&keys, width);
        // The key's position comes back with each row: the source prints the
        // key in its own form, which need not be the text given.
        let source_sql = read_by_keys_sql(map, mapped.source, std::iter::once("k.sy_n".to_owned()));
        let ncols = map.columns.len();
        let arrays_in: Vec<String> = (1..=width)
            .map(|i| format!("${i}::text[]"))
            .chain(std::iter::once(format!("${}::bool[]", width + 1)))
            .chain((width + 2..width + 2 + ncols).map(|i| format!("${i}::text[]")))
            .collect();
        let names: Vec<String> = (0..width)
            .map(|i| format!("sy_k{i}"))
            .chain(std::iter::once("sy_found".to_owned()))
            .chain((0..ncols).map(|i| format!("sy_c{i}")))
            .chain(std::iter::once("sy_n".to_owned()))
            .collect();
        let mapped_row: Vec<String> = map
            .columns
            .iter()
            .enumerate()
            .map(|(i, (t, _))| format!("k.sy_c{i}::{}", type_of(mapped.target, &map.target, t)))
            .collect();
        let target_row: Vec<String> = map.columns.iter().map(|(t, _)| format!("t.{}", q(t))).collect();
        // Key columns are NOT NULL: a null one means no target row joined.
        let present = format!("t.{} IS NOT NULL", q(&map.target_key[0]));
        let target_sql = format!(
            "SELECT k.sy_n, k.sy_found, {present} FROM unnest({}) WITH ORDINALITY AS k({}) \
             LEFT JOIN {} t ON {} \
             WHERE (k.sy_found OR {present}) \
             AND NOT (k.sy_found AND {present} AND ROW({})::text = ROW({})::text)",
            arrays_in.join(", "),
            names.join(", "),
            map.target.qualified(),
            key_match("t", &map.target_key, mapped.target, &map.target),
            mapped_row.join(", "),
            target_row.join(", "),
        );
        Plan {
            map,
            keys,
            arrays,
            source_sql,
            target_sql,
        }
    }

    /// The mapped values of the keys found on the source, by key position
    /// (from 0).
    async fn read_source(&self, source: &Client) -> Result<BTreeMap<usize, Vec<Option<String>>>, VerifyError> {
        let rows = source
            .query_typed(&self.source_sql, &text_arrays(&self.arrays))
            .await
            .map_err(db(format!("read keys of {} from the source", self.map.source)))?;
        let ncols = self.map.columns.len();
        let at = ncols + self.map.source_key.len();
        let mut out = BTreeMap::new();
        for row in rows {
            let n: i64 = row
                .try_get(at)
                .map_err(db(format!("read keys of {} from the source", self.map.source)))?;
            let values = (0..ncols).map(|i| row.get::<_, Option<String>>(i)).collect();
            out.insert((n - 1) as usize, values);
        }
        Ok(out)
    }

    /// The keys whose target rows differ from `found` (the source's).
    async fn compare_on_target(
        &self,
        target: &Client,
        found: BTreeMap<usize, Vec<Option<String>>>,
    ) -> Result<Vec<Mismatch>, VerifyError> {
        let ncols = self.map.columns.len();
        let flags: Vec<bool> = (0..self.keys.len()).map(|i| found.contains_key(&i)).collect();
        let mut values: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(self.keys.len()); ncols];
        for i in 0..self.keys.len() {
            let row = found.get(&i);
            for (c, column) in values.iter_mut().enumerate() {
                column.push(row.and_then(|r| r.get(c).cloned().flatten()));
            }
        }
        let mut params: Vec<TypedParam<'_>> = text_arrays(&self.arrays);
        params.push((&flags as &(dyn ToSql + Sync), Type::BOOL_ARRAY));
        params.extend(text_arrays(&values));
        let what = || format!("compare keys of {} on the target", self.map.target);
        let rows = target
            .query_typed(&self.target_sql, &params)
            .await
            .map_err(db(what()))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let n: i64 = row.try_get(0).map_err(db(what()))?;
            let on_source: bool = row.try_get(1).map_err(db(what()))?;
            let on_target: bool = row.try_get(2).map_err(db(what()))?;
            let kind = match (on_source, on_target) {
                (true, false) => MismatchKind::MissingOnTarget,
                (false, true) => MismatchKind::ExtraOnTarget,
                _ => MismatchKind::Differs,
            };
            if let Some(key) = self.keys.get((n - 1) as usize) {
                out.push(Mismatch { key: key.clone(), kind });
            }
        }
        out.sort();
        Ok(out)
    }
}
