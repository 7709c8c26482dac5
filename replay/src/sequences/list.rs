//! Listing a database's sequences (one catalog query) and matching each
//! source sequence with its target counterpart through the mapping.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Client;

use super::error::{SequenceError, SyncStep};
use super::{MatchedBy, PlannedSequence, SequenceShape, UnmappedSequence};
use crate::catalog::{ColumnRef, QualifiedName};
use crate::mapping::{ColumnSource, Resolved};

/// The proxy keeps its own bookkeeping (replay positions) in this schema on
/// each database; its sequences are not the application's.
const PROXY_SCHEMA: &str = "switchyard";

// One row per sequence, with its type and bounds from pg_sequence and the
// column owning it: deptype 'a' (serial, OWNED BY) or 'i' (identity). Temp
// and system schemas are left out, as in the catalog snapshot; catalogs are
// qualified so no search_path can shadow them.
const LIST: &str = "SELECT n.nspname::text, c.relname::text, \
    pg_catalog.format_type(q.seqtypid, NULL), q.seqmin, q.seqmax, q.seqincrement, \
    tn.nspname::text, t.relname::text, a.attname::text \
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_catalog.pg_sequence q ON q.seqrelid = c.oid \
    LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
    AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
    AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i') \
    LEFT JOIN pg_catalog.pg_class t ON t.oid = d.refobjid \
    LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace \
    LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
    WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) \
    AND n.nspname !~ '^pg_(toast|temp_)' \
    ORDER BY 1, 2";

/// One sequence as listed.
#[derive(Clone, Debug)]
pub(super) struct Listed {
    pub(super) name: QualifiedName,
    pub(super) shape: SequenceShape,
    pub(super) owned_by: Option<ColumnRef>,
}

/// Every sequence of the database `client` is connected to, by schema and
/// name.
pub(super) async fn list(client: &Client, step: SyncStep) -> Result<Vec<Listed>, SequenceError> {
    let rows = client
        .query_typed(LIST, &[(&PROXY_SCHEMA, tokio_postgres::types::Type::TEXT)])
        .await
        .map_err(|e| SequenceError::query(step, e))?;
    let mut out: Vec<Listed> = Vec::with_capacity(rows.len());
    for row in rows {
        let get_err = |e| SequenceError::query(step, e);
        let name = QualifiedName::new(
            row.try_get::<_, String>(0).map_err(get_err)?,
            row.try_get::<_, String>(1).map_err(get_err)?,
        );
        // A sequence has at most one owning column, but a catalog with two
        // would give two rows: keep the first rather than list it twice.
        if out.last().is_some_and(|l| l.name == name) {
            continue;
        }
        let shape = SequenceShape {
            type_name: row.try_get(2).map_err(get_err)?,
            min: row.try_get(3).map_err(get_err)?,
            max: row.try_get(4).map_err(get_err)?,
            increment: row.try_get(5).map_err(get_err)?,
        };
        let owned_by = match (
            row.try_get::<_, Option<String>>(6).map_err(get_err)?,
            row.try_get::<_, Option<String>>(7).map_err(get_err)?,
            row.try_get::<_, Option<String>>(8).map_err(get_err)?,
        ) {
            (Some(schema), Some(table), Some(column)) => Some(ColumnRef {
                table: QualifiedName::new(schema, table),
                column,
            }),
            _ => None,
        };
        out.push(Listed { name, shape, owned_by });
    }
    Ok(out)
}

/// The target's sequences, indexed the two ways a source sequence finds
/// its counterpart.
struct TargetIndex<'a> {
    by_name: HashMap<&'a QualifiedName, &'a Listed>,
    by_owner: HashMap<(&'a QualifiedName, &'a str), &'a Listed>,
}

impl<'a> TargetIndex<'a> {
    fn new(target: &'a [Listed]) -> Self {
        let by_name = target.iter().map(|t| (&t.name, t)).collect();
        let by_owner = target
            .iter()
            .filter_map(|t| t.owned_by.as_ref().map(|o| ((&o.table, o.column.as_str()), t)))
            .collect();
        TargetIndex { by_name, by_owner }
    }
}

/// Matches every source sequence with a target sequence.
///
/// A sequence owned by a column goes to the sequence owning the column that
/// column is copied into (through the table's rename, if any): that is the
/// sequence the target's inserts will draw from, whatever it is called.
/// When the target column owns none (the column is computed by an
/// expression, or the target sequence is not `OWNED BY`), and for
/// free-standing sequences, the same `schema.name` on the target is used —
/// for an owned source sequence only if that target sequence is free or
/// owned by a column of the mapped table: owned by another table, it is
/// that table's counter.
pub(super) fn match_all(
    source: &[Listed],
    target: &[Listed],
    resolved: &Resolved,
) -> Result<(Vec<PlannedSequence>, Vec<UnmappedSequence>), SequenceError> {
    let index = TargetIndex::new(target);
    let mut planned = Vec::new();
    let mut unmapped = Vec::new();
    for s in source {
        let mapped_column = s.owned_by.as_ref().and_then(|o| mapped_column(o, resolved));
        let by_owner = mapped_column
            .as_ref()
            .and_then(|c| index.by_owner.get(&(&c.table, c.column.as_str())));
        let table = s.owned_by.as_ref().map(|o| mapped_table(&o.table, resolved));
        let by_name = index.by_name.get(&s.name).filter(|t| match (&table, &t.owned_by) {
            (Some(table), Some(owner)) => owner.table == *table,
            _ => true,
        });
        let (found, matched_by) = match (by_owner, by_name, &s.owned_by, &mapped_column) {
            (Some(t), _, Some(src), Some(dst)) => (
                *t,
                MatchedBy::Owner {
                    source: src.clone(),
                    target: dst.clone(),
                },
            ),
            (_, Some(t), _, _) => (*t, MatchedBy::Name),
            _ => {
                unmapped.push(UnmappedSequence {
                    source: s.name.clone(),
                    source_owner: s.owned_by.clone(),
                    target_owner: mapped_column,
                    same_name_owned_by: index.by_name.get(&s.name).and_then(|t| t.owned_by.clone()),
                });
                continue;
            }
        };
        planned.push(PlannedSequence {
            source: s.name.clone(),
            target: found.name.clone(),
            source_shape: s.shape.clone(),
            target_shape: found.shape.clone(),
            matched_by,
        });
    }
    let mut by_target: BTreeMap<&QualifiedName, Vec<QualifiedName>> = BTreeMap::new();
    for p in &planned {
        by_target.entry(&p.target).or_default().push(p.source.clone());
    }
    if let Some((target, sources)) = by_target.into_iter().find(|(_, s)| s.len() > 1) {
        return Err(SequenceError::Ambiguous {
            target: target.clone(),
            sources,
        });
    }
    Ok((planned, unmapped))
}

/// The target column a source column is copied into: through the table's
/// map when the mapping has one (a renamed table, a column renamed by an
/// expression that is exactly the source column's name), else the same
/// table and column. `None` when the column is dropped or only feeds an
/// expression, since then no target column carries its values on.
fn mapped_column(owner: &ColumnRef, resolved: &Resolved) -> Option<ColumnRef> {
    let Some(map) = resolved.table(&owner.table) else {
        return Some(owner.clone());
    };
    map.columns
        .iter()
        .find(|(_, from)| matches!(from, ColumnSource::Column(c) if *c == owner.column))
        .map(|(to, _)| ColumnRef {
            table: map.target.clone(),
            column: to.clone(),
        })
}

/// The target table a source table maps to.
fn mapped_table(source: &QualifiedName, resolved: &Resolved) -> QualifiedName {
    resolved
        .table(source)
        .map_or_else(|| source.clone(), |m| m.target.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::TableMap;

    fn seq(schema: &str, name: &str, owner: Option<(&str, &str)>) -> Listed {
        Listed {
            name: QualifiedName::new(schema, name),
            shape: SequenceShape {
                type_name: "bigint".into(),
                min: 1,
                max: i64::MAX,
                increment: 1,
            },
            owned_by: owner.map(|(t, c)| ColumnRef {
                table: QualifiedName::new("public", t),
                column: c.into(),
            }),
        }
    }

    /// A mapping of `public.source` to `public.target` with these
    /// target <- source columns.
    fn resolved(source: &str, target: &str, columns: &[(&str, ColumnSource)]) -> Resolved {
        let mut r = Resolved::default();
        let name = QualifiedName::new("public", source);
        r.tables.insert(
            name.clone(),
            TableMap {
                source: name,
                target: QualifiedName::new("public", target),
                source_key: vec!["id".into()],
                target_key: vec!["id".into()],
                columns: columns.iter().map(|(t, s)| (t.to_string(), s.clone())).collect(),
                reverse: Ok(Vec::new()),
            },
        );
        r
    }

    #[test]
    fn owned_sequences_follow_table_and_column_renames() {
        let source = [seq("public", "t_n_seq", Some(("t", "n")))];
        let target = [
            seq("public", "t_n_seq", None),
            seq("public", "t2_num_seq", Some(("t2", "num"))),
        ];
        let map = resolved("t", "t2", &[("num", ColumnSource::Column("n".into()))]);
        let (planned, unmapped) = match_all(&source, &target, &map).unwrap();
        assert!(unmapped.is_empty());
        assert_eq!(planned[0].target, QualifiedName::new("public", "t2_num_seq"));
        assert!(matches!(&planned[0].matched_by, MatchedBy::Owner { target, .. } if target.column == "num"));
    }

    #[test]
    fn same_name_is_used_only_when_it_is_not_another_tables_counter() {
        // The column only feeds an expression, so no owner is looked for.
        let source = [seq("public", "t_n_seq", Some(("t", "n")))];
        let map = resolved("t", "t", &[("n2", ColumnSource::Expr("n * 2".into()))]);
        let target = [seq("public", "t_n_seq", Some(("t", "n2")))];
        let (planned, _) = match_all(&source, &target, &map).unwrap();
        assert_eq!(planned[0].matched_by, MatchedBy::Name);

        let target = [seq("public", "t_n_seq", Some(("other", "id")))];
        let (planned, unmapped) = match_all(&source, &target, &map).unwrap();
        assert!(planned.is_empty());
        assert_eq!(
            unmapped[0].same_name_owned_by.as_ref().map(|o| o.table.name.as_str()),
            Some("other")
        );
        let text = unmapped[0].to_string();
        assert!(text.contains("copies its column into no target column"), "{text}");
        assert!(text.contains("belongs to public.other.id"), "{text}");
    }

    #[test]
    fn two_sources_for_one_target_are_refused() {
        let source = [seq("public", "a", None), seq("public", "t_id_seq", Some(("t", "id")))];
        let target = [seq("public", "a", Some(("t", "id")))];
        let map = resolved("t", "t", &[("id", ColumnSource::Column("id".into()))]);
        let err = match_all(&source, &target, &map).unwrap_err();
        assert!(
            matches!(&err, SequenceError::Ambiguous { sources, .. } if sources.len() == 2),
            "{err}"
        );
        assert!(err.to_string().contains("public.a, public.t_id_seq"), "{err}");
    }
}
