//! Sequence sync for the cutover: the target's sequences are set from the
//! source's real state (`last_value`, `is_called`, read from each sequence
//! relation), never from `max(id)` of a table, which misses values handed
//! out by rolled-back inserts and cannot tell a sequence never called.
//!
//! The work is split so the freeze pays only for what must happen inside
//! it. [`SequencePlan::prepare`] runs before the freeze: it lists the
//! sequences of both databases, matches each source sequence with its
//! target counterpart through the resolved mapping (following table and
//! column renames), builds the statements, prepares the read on the source
//! connection, opens every target sequence once, and checks today's values
//! against the target sequences' bounds, so a problem shows at preflight.
//! [`SequencePlan::sync`] runs inside the freeze: one query reads every
//! source sequence, one statement sets every target sequence — two round
//! trips whatever the number of sequences.
//!
//! `setval` is not transactional (a failed statement keeps the calls it has
//! already made), so every value is checked against its target sequence's
//! bounds before the statement is sent; if one does not fit, nothing is set.

mod error;
mod list;

use std::fmt;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use crate::catalog::{quote_qualified, ColumnRef, QualifiedName};
use crate::mapping::Resolved;
use list::Listed;

pub use error::{OutOfRange, SequenceError, SyncStep};

/// A sequence's type and bounds (`pg_sequence`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceShape {
    /// The type as `format_type` prints it (`smallint`, `integer`, `bigint`).
    pub type_name: String,
    /// `MINVALUE`.
    pub min: i64,
    /// `MAXVALUE`.
    pub max: i64,
    /// `INCREMENT BY`.
    pub increment: i64,
}

/// How a source sequence found its target sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchedBy {
    /// Through the column owning it: the target sequence owns the target
    /// column the source column is copied into.
    Owner {
        /// The source column owning the source sequence.
        source: ColumnRef,
        /// The target column owning the target sequence.
        target: ColumnRef,
    },
    /// By the same `schema.name` on the target.
    Name,
}

/// One source sequence and the target sequence it sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedSequence {
    /// The source sequence.
    pub source: QualifiedName,
    /// The target sequence.
    pub target: QualifiedName,
    /// The source sequence's type and bounds.
    pub source_shape: SequenceShape,
    /// The target sequence's type and bounds, which its value must fit.
    pub target_shape: SequenceShape,
    /// How the two were matched.
    pub matched_by: MatchedBy,
}

impl PlannedSequence {
    /// Whether the target sequence steps differently from the source one, so
    /// that after the sync its next value will not be the one the source
    /// would have given (the value is carried over either way).
    pub fn increment_differs(&self) -> bool {
        self.source_shape.increment != self.target_shape.increment
    }
}

/// A source sequence with no counterpart on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmappedSequence {
    /// The source sequence.
    pub source: QualifiedName,
    /// The source column owning it, if one does.
    pub source_owner: Option<ColumnRef>,
    /// The target column whose sequence was looked for (where the mapping
    /// copies `source_owner`); `None` for a free-standing sequence or a
    /// column the mapping drops or only uses in an expression.
    pub target_owner: Option<ColumnRef>,
    /// When the target has a sequence of the same name that was not used
    /// because another table's column owns it: that column.
    pub same_name_owned_by: Option<ColumnRef>,
}

impl fmt::Display for UnmappedSequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(o) = &self.source_owner {
            write!(f, " (owned by {}.{})", o.table, o.column)?;
        }
        f.write_str(": ")?;
        match (&self.source_owner, &self.target_owner) {
            (Some(_), Some(t)) => write!(f, "no target sequence is owned by {}.{}, and ", t.table, t.column)?,
            (Some(_), None) => f.write_str("the mapping copies its column into no target column, and ")?,
            (None, _) => {}
        }
        match &self.same_name_owned_by {
            Some(o) => write!(f, "target sequence {} belongs to {}.{}", self.source, o.table, o.column),
            None => write!(f, "the target has no sequence {}", self.source),
        }
    }
}

/// A target sequence as set by [`SequencePlan::sync`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSequence {
    /// The source sequence read.
    pub source: QualifiedName,
    /// The target sequence set.
    pub target: QualifiedName,
    /// The value set (the source's `last_value`).
    pub last_value: i64,
    /// Whether `last_value` was already handed out; when `false` the next
    /// `nextval` returns `last_value` itself.
    pub is_called: bool,
}

/// What a sync did and how long each step took.
#[derive(Clone, Debug, Default)]
pub struct SequenceReport {
    /// Every target sequence set, in source order.
    pub set: Vec<SetSequence>,
    /// Source sequences left alone because the target has no counterpart;
    /// the caller decides whether that is acceptable.
    pub unmapped: Vec<UnmappedSequence>,
    /// All of [`SequencePlan::prepare`] (listing, matching, the first read
    /// and check, opening the targets), done before the freeze.
    pub prepare: Duration,
    /// Reading the source values (one round trip).
    pub read: Duration,
    /// Checking them against the target bounds (no round trip).
    pub check: Duration,
    /// Setting the target sequences (one round trip).
    pub apply: Duration,
}

impl SequenceReport {
    /// Time spent inside [`SequencePlan::sync`]: read, check and apply.
    pub fn sync_time(&self) -> Duration {
        self.read + self.check + self.apply
    }
}

/// The sequences to sync and the statements that do it, prepared ahead of
/// the freeze. It holds names, not oids, so it stays valid across
/// reconnects; a sequence dropped or renamed after it was prepared makes
/// the sync fail (nothing set) with a message to prepare again.
///
/// The read is also prepared as a server-side statement on the source
/// connection given to [`SequencePlan::prepare`]: planning a `UNION ALL`
/// over hundreds of relations costs several times its execution, and a
/// statement without parameters keeps its plan, so a sync through that
/// same connection pays only for the execution. Through any other
/// connection the read is sent as text and planned again.
#[derive(Clone, Debug)]
pub struct SequencePlan {
    planned: Vec<PlannedSequence>,
    unmapped: Vec<UnmappedSequence>,
    /// One `UNION ALL` branch per planned sequence, tagged with its index.
    read_sql: String,
    /// `read_sql` prepared on the source connection `prepare` was given.
    read_statement: Option<ReadStatement>,
    prepared_in: Duration,
}

/// A prepared read and the connection it belongs to.
#[derive(Clone, Debug)]
struct ReadStatement {
    /// The address of the `Client` it was prepared on. Only compared: a
    /// different client that happens to reuse the address after the first
    /// was dropped lacks the statement, and the read falls back to text.
    client: usize,
    statement: Statement,
}

impl SequencePlan {
    /// Lists the sequences of `source` and `target` (one query each) and
    /// matches them through `resolved` (a table absent from it maps to
    /// itself), then reads the source values once and checks them against
    /// the target bounds, so a value that cannot be set fails here, at
    /// preflight, rather than inside the freeze. Five round trips in all:
    /// three on the source (list, prepare the read, read), two on the
    /// target (list, open every target sequence once).
    ///
    /// Skips the proxy's own `switchyard` schema, system and temp schemas.
    /// Fails when two source sequences would set the same target sequence.
    pub async fn prepare(source: &Client, target: &Client, resolved: &Resolved) -> Result<SequencePlan, SequenceError> {
        let started = Instant::now();
        let (source_list, target_list): (Vec<Listed>, Vec<Listed>) = tokio::try_join!(
            list::list(source, SyncStep::ListSource),
            list::list(target, SyncStep::ListTarget)
        )?;
        let (planned, unmapped) = list::match_all(&source_list, &target_list, resolved)?;
        let read_sql = read_sql(&planned);
        let read_statement = if planned.is_empty() {
            None
        } else {
            Some(ReadStatement {
                client: client_id(source),
                statement: source
                    .prepare(&read_sql)
                    .await
                    .map_err(|e| SequenceError::query(SyncStep::Read, e))?,
            })
        };
        let mut plan = SequencePlan {
            planned,
            unmapped,
            read_sql,
            read_statement,
            prepared_in: Duration::ZERO,
        };
        // Also plans and caches the prepared read, out of the freeze.
        let values = plan.read(source).await?;
        plan.check(&values)?;
        plan.open_targets(target).await?;
        plan.prepared_in = started.elapsed();
        Ok(plan)
    }

    /// The sequences a sync sets, in source order.
    pub fn sequences(&self) -> &[PlannedSequence] {
        &self.planned
    }

    /// The source sequences the target has no counterpart for.
    pub fn unmapped(&self) -> &[UnmappedSequence] {
        &self.unmapped
    }

    /// Reads every planned source sequence in one query, checks every value
    /// against its target sequence and sets them all in one statement.
    /// Meant to run while writes are frozen: a value read while the source
    /// still hands out numbers could be behind by the time the target
    /// takes over. If any value does not fit, nothing is set.
    pub async fn sync(&self, source: &Client, target: &Client) -> Result<SequenceReport, SequenceError> {
        let mut report = SequenceReport {
            unmapped: self.unmapped.clone(),
            prepare: self.prepared_in,
            ..SequenceReport::default()
        };
        if self.planned.is_empty() {
            return Ok(report);
        }
        let started = Instant::now();
        let values = self.read(source).await?;
        report.read = started.elapsed();

        let started = Instant::now();
        self.check(&values)?;
        let apply_sql = apply_sql(&self.planned, &values);
        report.check = started.elapsed();

        let started = Instant::now();
        let rows = target
            .query_typed(&apply_sql, &[])
            .await
            .map_err(|e| SequenceError::query(SyncStep::Apply, e))?;
        let count = rows
            .first()
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()
            .map_err(|e| SequenceError::query(SyncStep::Apply, e))?;
        report.apply = started.elapsed();
        if count != Some(self.planned.len() as i64) {
            return Err(SequenceError::Unexpected {
                step: SyncStep::Apply,
                found: format!("{count:?} sequences set"),
                expected: format!("{}", self.planned.len()),
            });
        }
        report.set = self
            .planned
            .iter()
            .zip(&values)
            .map(|(p, &(last_value, is_called))| SetSequence {
                source: p.source.clone(),
                target: p.target.clone(),
                last_value,
                is_called,
            })
            .collect();
        Ok(report)
    }

    /// `(last_value, is_called)` of every planned sequence, in plan order.
    async fn read(&self, source: &Client) -> Result<Vec<(i64, bool)>, SequenceError> {
        if self.planned.is_empty() {
            return Ok(Vec::new());
        }
        let prepared = self.read_statement.as_ref().filter(|r| r.client == client_id(source));
        let rows = match prepared {
            Some(r) => match source.query(&r.statement, &[]).await {
                // 26000: no such prepared statement, on a new client at the
                // old one's address.
                Err(e) if e.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) => None,
                other => Some(other),
            },
            None => None,
        };
        let rows = match rows {
            Some(rows) => rows,
            // query_typed sends the text unnamed with its execution in one
            // flight: one round trip, where a prepare would add another.
            None => source.query_typed(&self.read_sql, &[]).await,
        }
        .map_err(|e| SequenceError::query(SyncStep::Read, e))?;
        let mut values: Vec<Option<(i64, bool)>> = vec![None; self.planned.len()];
        for row in &rows {
            let get = |i| {
                row.try_get::<_, i64>(i)
                    .map_err(|e| SequenceError::query(SyncStep::Read, e))
            };
            let index = get(0)?;
            let value = (
                get(1)?,
                row.try_get(2).map_err(|e| SequenceError::query(SyncStep::Read, e))?,
            );
            match usize::try_from(index).ok().and_then(|i| values.get_mut(i)) {
                Some(slot @ None) => *slot = Some(value),
                _ => {
                    return Err(SequenceError::Unexpected {
                        step: SyncStep::Read,
                        found: format!("a row for sequence number {index}"),
                        expected: format!("one row for each of {} sequences", self.planned.len()),
                    })
                }
            }
        }
        values
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| SequenceError::Unexpected {
                step: SyncStep::Read,
                found: format!("{} rows", rows.len()),
                expected: format!("one row for each of {} sequences", self.planned.len()),
            })
    }

    /// Opens every target sequence once without changing it. This checks
    /// at preflight that each name still resolves and may be read, and
    /// fills the target connection's caches (relation descriptors, the
    /// session's sequence table), which otherwise make the first `setval`
    /// statement several times slower than the next, inside the freeze.
    async fn open_targets(&self, target: &Client) -> Result<(), SequenceError> {
        if self.planned.is_empty() {
            return Ok(());
        }
        let rows: Vec<String> = self
            .planned
            .iter()
            .map(|p| format!("({}::pg_catalog.regclass)", target_literal(p)))
            .collect();
        let sql = format!(
            "SELECT pg_catalog.count(pg_catalog.pg_sequence_last_value(v.seq))::int8 FROM (VALUES {}) AS v(seq)",
            rows.join(", ")
        );
        target
            .query_typed(&sql, &[])
            .await
            .map_err(|e| SequenceError::query(SyncStep::OpenTarget, e))?;
        Ok(())
    }

    /// Every value that its target sequence cannot take, all at once.
    fn check(&self, values: &[(i64, bool)]) -> Result<(), SequenceError> {
        let bad: Vec<OutOfRange> = self
            .planned
            .iter()
            .zip(values)
            .filter(|(p, (v, _))| *v < p.target_shape.min || *v > p.target_shape.max)
            .map(|(p, &(value, _))| OutOfRange {
                source: p.source.clone(),
                target: p.target.clone(),
                value,
                target_type: p.target_shape.type_name.clone(),
                min: p.target_shape.min,
                max: p.target_shape.max,
            })
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(SequenceError::OutOfRange(bad))
        }
    }
}

/// Tells clients apart for [`ReadStatement`].
fn client_id(client: &Client) -> usize {
    client as *const Client as usize
}

/// `SELECT i, last_value, is_called FROM <seq i> UNION ALL ...`. The
/// sequence relation itself is read: `pg_sequences.last_value` shows NULL
/// for a sequence not yet called and so hides `is_called`.
fn read_sql(planned: &[PlannedSequence]) -> String {
    let branches: Vec<String> = planned
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "SELECT {i}::int8, last_value, is_called FROM {}",
                quote_qualified(&p.source.schema, &p.source.name)
            )
        })
        .collect();
    branches.join(" UNION ALL ")
}

/// One statement setting every target sequence. The names are `regclass`
/// literals, resolved when the statement is parsed, so a missing sequence
/// fails it before any `setval` runs; a `VALUES` list rather than one
/// select-list entry per sequence, which PostgreSQL caps at 1664.
fn apply_sql(planned: &[PlannedSequence], values: &[(i64, bool)]) -> String {
    let rows: Vec<String> = planned
        .iter()
        .zip(values)
        .map(|(p, (value, called))| format!("({}::pg_catalog.regclass, {value}::int8, {called})", target_literal(p)))
        .collect();
    format!(
        "SELECT pg_catalog.count(pg_catalog.setval(v.seq, v.value, v.called))::int8 FROM (VALUES {}) AS v(seq, value, called)",
        rows.join(", ")
    )
}

/// The target sequence's name as a `regclass` input literal.
fn target_literal(p: &PlannedSequence) -> String {
    quote_literal(&quote_qualified(&p.target.schema, &p.target.name))
}

/// `text` as a string literal that means the same whatever
/// `standard_conforming_strings` says: backslashes force the `E''` form,
/// as PostgreSQL's own `quote_literal` does.
fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(schema: &str, name: &str) -> PlannedSequence {
        let shape = SequenceShape {
            type_name: "integer".into(),
            min: 1,
            max: i32::MAX as i64,
            increment: 1,
        };
        PlannedSequence {
            source: QualifiedName::new(schema, name),
            target: QualifiedName::new(schema, name),
            source_shape: shape.clone(),
            target_shape: shape,
            matched_by: MatchedBy::Name,
        }
    }

    #[test]
    fn literals_survive_any_string_setting() {
        assert_eq!(quote_literal("a.b"), "'a.b'");
        assert_eq!(quote_literal("\"it's\".x"), "'\"it''s\".x'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn statements_quote_odd_names() {
        let p = vec![planned("App", "Odd \"seq\""), planned("public", "it's")];
        let read = read_sql(&p);
        assert_eq!(
            read,
            "SELECT 0::int8, last_value, is_called FROM \"App\".\"Odd \"\"seq\"\"\" UNION ALL \
             SELECT 1::int8, last_value, is_called FROM public.\"it's\""
        );
        let apply = apply_sql(&p, &[(5, true), (1, false)]);
        assert!(
            apply.contains("('\"App\".\"Odd \"\"seq\"\"\"'::pg_catalog.regclass, 5::int8, true)"),
            "{apply}"
        );
        assert!(
            apply.contains("('public.\"it''s\"'::pg_catalog.regclass, 1::int8, false)"),
            "{apply}"
        );
    }
}
