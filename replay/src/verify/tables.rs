//! Online verification of whole tables: checksums over key ranges, a
//! re-check of the ranges that differ, and a row-by-row comparison of the
//! ranges that still do, with progress as it goes.

use super::report::{Progress, ProgressEvent, TableReport, VerifyOptions, VerifyReport};
use super::sql::{Range, Statement, TableSql};
use super::{db, Mapped, Mismatch, MismatchKind, VerifyError};
use crate::catalog::{QualifiedName, TableKind};
use crate::mapping::rows::{type_of, KeyText};
use crate::mapping::TableMap;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, Row};

/// Settings that change how values print: the target session takes the
/// source session's, so both sides print a value alike. `lc_monetary` is
/// set on its own, as the source's locale may not exist on the target.
const OUTPUT_SETTINGS: [&str; 5] = [
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "extra_float_digits",
    "bytea_output",
];

/// Verifies whole tables, source against mapped target, on connections of
/// its own (one to each side). `progress` is called after each range, and
/// before each re-check. Meant for a database in use: each range is read
/// on its own, so a range catch-up has not applied yet differs at first and
/// is re-checked; what still differs after the re-checks is reported.
pub async fn verify_tables<F>(
    source: impl Into<crate::Dsn>,
    target: impl Into<crate::Dsn>,
    mapped: Mapped<'_>,
    options: &VerifyOptions,
    mut progress: F,
) -> Result<VerifyReport, VerifyError>
where
    F: FnMut(&Progress) + Send,
{
    let started = Instant::now();
    let maps = tables_to_verify(mapped, options)?;
    let source = connect(&source.into(), "source").await?;
    let target = connect(&target.into(), "target").await?;
    align_output(&source, &target).await?;
    let on_source = types_on_source(&source, mapped, &maps).await?;
    let mut run = Run {
        source: &source,
        target: &target,
        options,
        progress: &mut progress,
        at: Progress {
            event: ProgressEvent::Range,
            table: QualifiedName::new("", ""),
            tables_done: 0,
            tables_total: maps.len(),
            table_rows: 0,
            rows_checked: 0,
            differing: 0,
        },
    };
    let mut tables = Vec::with_capacity(maps.len());
    for map in maps {
        let report = run.table(map, mapped, &on_source).await?;
        tables.push(report);
        run.at.tables_done += 1;
    }
    Ok(VerifyReport {
        tables,
        elapsed: started.elapsed(),
    })
}

/// The maps of the tables asked for, or of every verifiable table.
fn tables_to_verify<'a>(mapped: Mapped<'a>, options: &VerifyOptions) -> Result<Vec<&'a TableMap>, VerifyError> {
    if !options.tables.is_empty() {
        return options
            .tables
            .iter()
            .map(|t| {
                mapped
                    .mapping
                    .table(t)
                    .ok_or_else(|| VerifyError::Unmapped(t.to_string()))
            })
            .collect();
    }
    Ok(mapped
        .mapping
        .tables
        .values()
        .filter(|m| m.source.schema != "switchyard")
        .filter(|m| {
            let table = mapped.source.table_exact(&m.source.schema, &m.source.name);
            !matches!(table.map(|t| &t.kind), Some(TableKind::Partition { .. }))
        })
        .collect())
}

async fn connect(config: &crate::Dsn, what: &str) -> Result<Client, VerifyError> {
    config
        .connect("verify")
        .await
        .map_err(db(format!("connect to the {what}")))
}

/// Gives the target session the source session's output settings.
async fn align_output(source: &Client, target: &Client) -> Result<(), VerifyError> {
    let read: Vec<String> = OUTPUT_SETTINGS
        .iter()
        .chain(std::iter::once(&"lc_monetary"))
        .map(|s| format!("current_setting('{s}')"))
        .collect();
    let row = source
        .query_one(&format!("SELECT {}", read.join(", ")), &[])
        .await
        .map_err(db("read the source's output settings"))?;
    let values: Vec<String> = (0..=OUTPUT_SETTINGS.len())
        .map(|i| row.try_get(i))
        .collect::<Result<_, _>>()
        .map_err(db("read the source's output settings"))?;
    let set: Vec<String> = OUTPUT_SETTINGS
        .iter()
        .enumerate()
        .map(|(i, s)| format!("set_config('{s}', ${}, false)", i + 1))
        .collect();
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values[..OUTPUT_SETTINGS.len()]
        .iter()
        .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    target
        .query_one(&format!("SELECT {}", set.join(", ")), &params)
        .await
        .map_err(db("give the target session the source's output settings"))?;
    let monetary = &values[OUTPUT_SETTINGS.len()];
    if let Err(e) = target
        .query_one("SELECT set_config('lc_monetary', $1, false)", &[monetary])
        .await
    {
        tracing::warn!(lc_monetary = %monetary, error = %e, "the target cannot print money like the source; money columns may show as differing");
    }
    Ok(())
}

/// The target column types of `maps` that name a type on the source too.
async fn types_on_source(
    source: &Client,
    mapped: Mapped<'_>,
    maps: &[&TableMap],
) -> Result<HashSet<String>, VerifyError> {
    let names: Vec<String> = maps
        .iter()
        .flat_map(|m| m.columns.iter().map(|(t, _)| type_of(mapped.target, &m.target, t)))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let rows = source
        .query(
            "SELECT n FROM unnest($1::text[]) AS n WHERE to_regtype(n) IS NOT NULL",
            &[&names],
        )
        .await
        .map_err(db("look up the target's column types on the source"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Row count and the two hash sums of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checksum {
    rows: i64,
    sums: (String, String),
}

impl Checksum {
    fn from_row(row: &Row, what: &str) -> Result<Checksum, VerifyError> {
        let get = |e| db(what.to_owned())(e);
        Ok(Checksum {
            rows: row.try_get(0).map_err(get)?,
            sums: (row.try_get(1).map_err(get)?, row.try_get(2).map_err(get)?),
        })
    }
}

/// One verification in progress.
struct Run<'r, F> {
    source: &'r Client,
    target: &'r Client,
    options: &'r VerifyOptions,
    progress: &'r mut F,
    at: Progress,
}

impl<F: FnMut(&Progress) + Send> Run<'_, F> {
    fn report(&mut self, event: ProgressEvent) {
        self.at.event = event;
        (self.progress)(&self.at);
    }

    async fn table(
        &mut self,
        map: &TableMap,
        mapped: Mapped<'_>,
        on_source: &HashSet<String>,
    ) -> Result<TableReport, VerifyError> {
        let started = Instant::now();
        let sql = TableSql::new(map, mapped, on_source);
        let not_compared = mapped
            .target
            .table_exact(&map.target.schema, &map.target.name)
            .map(|t| {
                t.columns
                    .iter()
                    .filter(|c| !map.columns.iter().any(|(m, _)| m == &c.name))
                    .map(|c| c.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut report = TableReport {
            source: map.source.clone(),
            target: map.target.clone(),
            rows_checked: 0,
            target_rows: 0,
            ranges: 0,
            ranges_rechecked: 0,
            ranges_compared: 0,
            differing: Vec::new(),
            differing_total: 0,
            columns: map.columns.iter().map(|(t, _)| t.clone()).collect(),
            compared_as_text: sql.as_text.clone(),
            not_compared,
            elapsed: Duration::ZERO,
        };
        self.at.table = map.source.clone();
        self.at.table_rows = 0;
        let limit = self.options.rows_per_range.max(1);
        let mut lower: Option<KeyText> = None;
        loop {
            let (first, last) = self.source_next(map, &sql, lower.as_ref(), limit).await?;
            // A full range ends at its last key; a short one is the last
            // range and takes every target key above its lower bound.
            let range = Range {
                lower: lower.clone(),
                upper: if first.rows as usize >= limit { last } else { None },
            };
            let target = self
                .checksum(self.target, &sql.target_checksum(&range), map, "target")
                .await?;
            report.ranges += 1;
            report.rows_checked += first.rows as u64;
            report.target_rows += target.rows as u64;
            self.at.table_rows += first.rows as u64;
            self.at.rows_checked += first.rows as u64;
            if first != target {
                self.settle(map, &sql, &range, &mut report).await?;
            }
            self.report(ProgressEvent::Range);
            match range.upper {
                Some(upper) => lower = Some(upper),
                None => break,
            }
        }
        report.elapsed = started.elapsed();
        self.report(ProgressEvent::TableDone);
        Ok(report)
    }

    /// Checks a differing range again until it agrees or the re-checks run
    /// out, then compares it row by row.
    async fn settle(
        &mut self,
        map: &TableMap,
        sql: &TableSql,
        range: &Range,
        report: &mut TableReport,
    ) -> Result<(), VerifyError> {
        report.ranges_rechecked += 1;
        for attempt in 1..=self.options.rechecks {
            self.report(ProgressEvent::Recheck { attempt });
            tokio::time::sleep(self.options.recheck_wait).await;
            let (s, t) = (sql.source_checksum(range), sql.target_checksum(range));
            let (s, t) = tokio::try_join!(
                self.checksum(self.source, &s, map, "source"),
                self.checksum(self.target, &t, map, "target"),
            )?;
            if s == t {
                return Ok(());
            }
        }
        report.ranges_compared += 1;
        let mut found = self.compare(map, sql, range).await?;
        // Under load a key written just before the read may not be applied
        // yet; a key is reported only if a second comparison, after the wait,
        // finds it differing the same way.
        if !found.is_empty() {
            tokio::time::sleep(self.options.recheck_wait).await;
            let again: BTreeSet<Mismatch> = self.compare(map, sql, range).await?.into_iter().collect();
            found.retain(|m| again.contains(m));
        }
        for mismatch in found {
            report.differing_total += 1;
            self.at.differing += 1;
            if report.differing.len() < self.options.max_keys {
                report.differing.push(mismatch);
            }
        }
        Ok(())
    }

    /// The rows of `range` compared by key.
    async fn compare(&self, map: &TableMap, sql: &TableSql, range: &Range) -> Result<Vec<Mismatch>, VerifyError> {
        let (s, t) = (sql.source_rows(range), sql.target_rows(range));
        let (s, t) = tokio::try_join!(
            self.rows(self.source, &s, sql.width(), map, "source"),
            self.rows(self.target, &t, sql.width(), map, "target"),
        )?;
        Ok(differences(&s, &t))
    }

    /// The checksum of the next source range, and its last key.
    async fn source_next(
        &self,
        map: &TableMap,
        sql: &TableSql,
        lower: Option<&KeyText>,
        limit: usize,
    ) -> Result<(Checksum, Option<KeyText>), VerifyError> {
        let st = sql.source_next(lower, limit);
        let what = format!("checksum a key range of {} on the source", map.source);
        let row = self
            .source
            .query_typed(&st.sql, &st.params())
            .await
            .map_err(db(what.clone()))?
            .into_iter()
            .next();
        let Some(row) = row else {
            return Ok((
                Checksum {
                    rows: 0,
                    sums: ("0".into(), "0".into()),
                },
                None,
            ));
        };
        let sum = Checksum::from_row(&row, &what)?;
        let last: KeyText = (3..3 + sql.width()).map(|i| row.get::<_, Option<String>>(i)).collect();
        Ok((sum, last.iter().all(Option::is_some).then_some(last)))
    }

    async fn checksum(
        &self,
        client: &Client,
        st: &Statement,
        map: &TableMap,
        side: &str,
    ) -> Result<Checksum, VerifyError> {
        let what = format!("checksum a key range of {} on the {side}", map.source);
        let rows = client
            .query_typed(&st.sql, &st.params())
            .await
            .map_err(db(what.clone()))?;
        match rows.first() {
            Some(row) => Checksum::from_row(row, &what),
            None => Ok(Checksum {
                rows: 0,
                sums: ("0".into(), "0".into()),
            }),
        }
    }

    /// Key text -> row hash of the rows of a range.
    async fn rows(
        &self,
        client: &Client,
        st: &Statement,
        width: usize,
        map: &TableMap,
        side: &str,
    ) -> Result<BTreeMap<KeyText, Option<String>>, VerifyError> {
        let what = format!("compare rows of {} on the {side}", map.source);
        let rows = client
            .query_typed(&st.sql, &st.params())
            .await
            .map_err(db(what.clone()))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let key: KeyText = (0..width)
                .map(|i| row.try_get::<_, Option<String>>(i))
                .collect::<Result<_, _>>()
                .map_err(db(what.clone()))?;
            out.insert(key, row.try_get(width).map_err(db(what.clone()))?);
        }
        Ok(out)
    }
}

/// The keys whose rows differ between `source` and `target` (key text ->
/// row hash), in key-text order.
fn differences(
    source: &BTreeMap<KeyText, Option<String>>,
    target: &BTreeMap<KeyText, Option<String>>,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for (key, hash) in source {
        match target.get(key) {
            None => out.push(Mismatch {
                key: key.clone(),
                kind: MismatchKind::MissingOnTarget,
            }),
            Some(h) if h != hash => out.push(Mismatch {
                key: key.clone(),
                kind: MismatchKind::Differs,
            }),
            Some(_) => {}
        }
    }
    for key in target.keys().filter(|k| !source.contains_key(*k)) {
        out.push(Mismatch {
            key: key.clone(),
            kind: MismatchKind::ExtraOnTarget,
        });
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &str) -> KeyText {
        vec![Some(v.to_owned())]
    }

    #[test]
    fn differences_name_missing_extra_and_changed_keys() {
        let source: BTreeMap<KeyText, Option<String>> = [
            (k("1"), Some("a".into())),
            (k("2"), Some("b".into())),
            (k("3"), Some("c".into())),
        ]
        .into();
        let target: BTreeMap<KeyText, Option<String>> = [
            (k("1"), Some("a".into())),
            (k("3"), Some("x".into())),
            (k("4"), Some("d".into())),
        ]
        .into();
        assert_eq!(
            differences(&source, &target),
            vec![
                Mismatch {
                    key: k("2"),
                    kind: MismatchKind::MissingOnTarget
                },
                Mismatch {
                    key: k("3"),
                    kind: MismatchKind::Differs
                },
                Mismatch {
                    key: k("4"),
                    kind: MismatchKind::ExtraOnTarget
                },
            ]
        );
    }
}
