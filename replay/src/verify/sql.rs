//! The statements of the online verification of one table: a checksum of
//! the rows in a key range on either side, and the rows themselves (key and
//! row hash) when a range must be narrowed to its differing keys.
//!
//! A range is `(lower, upper]` in the source key order, with either end
//! open. The source walks its key index (`ORDER BY key LIMIT n`) to find
//! where a range ends; the target takes the same bounds, cast to its key
//! columns' types, when its key orders like the source's (the same type, or
//! a widening such as int to bigint), and else compares its key cast back
//! to the source's type (in the source's order, without the key index). A
//! text key under different collations on the two sides would still make
//! rows near a range's ends look missing on one side and extra on the
//! other.
//!
//! A checksum is the row count and two 64-bit sums over `md5` of each row's
//! text (the two halves of the digest): a sum does not depend on the order
//! rows are read in, so neither side needs to sort by anything but its
//! index.

use super::Mapped;
use crate::mapping::rows::{mapped_value, q, type_of, KeyText, TypedParam};
use crate::mapping::{ColumnSource, TableMap};
use std::collections::HashSet;
use tokio_postgres::types::{ToSql, Type};

/// The aggregate over a relation of row hashes `sy_h`.
const CHECKSUM: &str = "count(*), \
    coalesce(sum(('x' || substr(sy_h, 1, 16))::bit(64)::bigint::numeric), 0)::text, \
    coalesce(sum(('x' || substr(sy_h, 17, 16))::bit(64)::bigint::numeric), 0)::text";

/// Rows in a key range, `(lower, upper]`; `None` is open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Range {
    /// Exclusive lower bound: source key values as text.
    pub(super) lower: Option<KeyText>,
    /// Inclusive upper bound.
    pub(super) upper: Option<KeyText>,
}

/// A statement and its parameters (text values, one per bound column).
pub(super) struct Statement {
    pub(super) sql: String,
    params: Vec<Option<String>>,
}

impl Statement {
    /// The parameters, typed, for `query_typed`.
    pub(super) fn params(&self) -> Vec<TypedParam<'_>> {
        self.params
            .iter()
            .map(|p| (p as &(dyn ToSql + Sync), Type::TEXT))
            .collect()
    }
}

/// One side's view of the table: relation, key columns and row text.
struct Side {
    /// `schema.table` quoted.
    relation: String,
    /// Key column references (`s.id`), in source key order.
    keys: Vec<String>,
    /// The key columns' types, same order, for casting bounds.
    key_types: Vec<String>,
    /// The key as the target's key types print it (`s.id::text`).
    key_text: Vec<String>,
    /// The compared columns as text, in `map.columns` order.
    row: Vec<String>,
}

impl Side {
    /// `(k0, k1) > ($1::t0, $2::t1) AND (k0, k1) <= (...)`, or `true`.
    fn bounds(&self, range: &Range) -> Statement {
        let mut conds = Vec::new();
        let mut params = Vec::new();
        for (op, bound) in [(">", &range.lower), ("<=", &range.upper)] {
            let Some(bound) = bound else { continue };
            let values: Vec<String> = self
                .key_types
                .iter()
                .enumerate()
                .map(|(i, ty)| format!("${}::{ty}", params.len() + i + 1))
                .collect();
            conds.push(format!("({}) {op} ({})", self.keys.join(", "), values.join(", ")));
            params.extend(bound.iter().cloned());
        }
        Statement {
            sql: if conds.is_empty() {
                "true".to_owned()
            } else {
                conds.join(" AND ")
            },
            params,
        }
    }

    fn row_hash(&self) -> String {
        format!("md5(ROW({})::text)", self.row.join(", "))
    }

    /// The checksum of the rows in `range`.
    fn checksum(&self, alias: &str, range: &Range) -> Statement {
        let b = self.bounds(range);
        Statement {
            sql: format!(
                "SELECT {CHECKSUM} FROM (SELECT {} AS sy_h FROM {} {alias} WHERE {}) r",
                self.row_hash(),
                self.relation,
                b.sql
            ),
            params: b.params,
        }
    }

    /// Key text and row hash of each row in `range`.
    fn rows(&self, alias: &str, range: &Range) -> Statement {
        let b = self.bounds(range);
        Statement {
            sql: format!(
                "SELECT {}, {} FROM {} {alias} WHERE {}",
                self.key_text.join(", "),
                self.row_hash(),
                self.relation,
                b.sql
            ),
            params: b.params,
        }
    }
}

/// Whether values of type `a` and their casts to type `b` sort alike: the
/// same type, or a change within the integers and numerics, or within the
/// variable-length strings (under one collation).
fn orders_alike(a: &str, b: &str) -> bool {
    let base = |t: &str| t.split('(').next().unwrap_or(t).trim().to_owned();
    let family = |t: &str| match base(t).as_str() {
        "smallint" | "integer" | "bigint" | "numeric" => Some("number"),
        "text" | "character varying" => Some("string"),
        _ => None,
    };
    a == b || (family(a).is_some() && family(a) == family(b))
}

/// The statements for one mapped table.
pub(super) struct TableSql {
    source: Side,
    target: Side,
    /// Target columns whose values are compared as the expression's text,
    /// since no type of that name exists on the source.
    pub(super) as_text: Vec<String>,
}

impl TableSql {
    /// `on_source`: the target column type names that also name a type on
    /// the source.
    pub(super) fn new(map: &TableMap, mapped: Mapped<'_>, on_source: &HashSet<String>) -> TableSql {
        let mut as_text = Vec::new();
        let source_row: Vec<String> = map
            .columns
            .iter()
            .map(|(t, from)| {
                let ty = type_of(mapped.target, &map.target, t);
                let text = mapped_value(from);
                let same_type = matches!(from, ColumnSource::Column(c) if type_of(mapped.source, &map.source, c) == ty);
                if same_type {
                    text
                } else if on_source.contains(&ty) {
                    // Read as the target column's type, as replay writes it:
                    // a widened, rounded or truncated value prints as the
                    // target prints it.
                    format!("(({text})::{ty})::text")
                } else {
                    as_text.push(t.clone());
                    text
                }
            })
            .collect();
        let position = |target_column: &String| map.columns.iter().position(|(t, _)| t == target_column);
        let source = Side {
            relation: map.source.qualified(),
            keys: map.source_key.iter().map(|c| format!("s.{}", q(c))).collect(),
            key_types: map
                .source_key
                .iter()
                .map(|c| type_of(mapped.source, &map.source, c))
                .collect(),
            key_text: map
                .target_key
                .iter()
                .map(|t| match position(t) {
                    Some(i) => source_row[i].clone(),
                    None => format!("s.{}::text", q(t)),
                })
                .collect(),
            row: source_row.clone(),
        };
        // The target's bounds compare its key columns as they are (and use
        // its key index) when they order like the source's; a key whose type
        // changed to one that orders differently (int to text) is compared
        // cast back to the source type, slower but in the source's order.
        let (keys, key_types) = map
            .target_key
            .iter()
            .zip(&source.key_types)
            .map(|(c, source_type)| {
                let ty = type_of(mapped.target, &map.target, c);
                if orders_alike(source_type, &ty) {
                    (format!("t.{}", q(c)), ty)
                } else {
                    (format!("t.{}::{source_type}", q(c)), source_type.clone())
                }
            })
            .unzip();
        let target = Side {
            relation: map.target.qualified(),
            keys,
            key_types,
            key_text: map.target_key.iter().map(|c| format!("t.{}::text", q(c))).collect(),
            row: map.columns.iter().map(|(t, _)| format!("t.{}::text", q(t))).collect(),
        };
        TableSql {
            source,
            target,
            as_text,
        }
    }

    /// The checksum of the next (at most) `limit` source rows after
    /// `lower`, then the last key among them as text (nulls when none).
    pub(super) fn source_next(&self, lower: Option<&KeyText>, limit: usize) -> Statement {
        let s = &self.source;
        let b = s.bounds(&Range {
            lower: lower.cloned(),
            upper: None,
        });
        let ordered: Vec<String> = (0..s.keys.len()).map(|i| format!("sy_o{i}")).collect();
        let picked: Vec<String> = s
            .keys
            .iter()
            .zip(&ordered)
            .map(|(k, o)| format!("{k} AS {o}"))
            .collect();
        // Output names of their own, and the order by the CTE's columns: an
        // ORDER BY naming an output column would sort its text ("999" after
        // "1000").
        let last: Vec<String> = ordered
            .iter()
            .enumerate()
            .map(|(i, o)| format!("{o}::text AS sy_l{i}"))
            .collect();
        let desc: Vec<String> = ordered.iter().map(|o| format!("r.{o} DESC")).collect();
        Statement {
            sql: format!(
                "WITH r AS MATERIALIZED (SELECT {}, {} AS sy_h FROM {} s WHERE {} ORDER BY {} LIMIT {limit}) \
                 SELECT a.*, l.* FROM (SELECT {CHECKSUM} FROM r) a \
                 LEFT JOIN (SELECT {} FROM r ORDER BY {} LIMIT 1) l ON true",
                picked.join(", "),
                s.row_hash(),
                s.relation,
                b.sql,
                s.keys.join(", "),
                last.join(", "),
                desc.join(", ")
            ),
            params: b.params,
        }
    }

    /// The source checksum of `range`.
    pub(super) fn source_checksum(&self, range: &Range) -> Statement {
        self.source.checksum("s", range)
    }

    /// The target checksum of `range`.
    pub(super) fn target_checksum(&self, range: &Range) -> Statement {
        self.target.checksum("t", range)
    }

    /// Key and row hash of the source rows in `range`.
    pub(super) fn source_rows(&self, range: &Range) -> Statement {
        self.source.rows("s", range)
    }

    /// Key and row hash of the target rows in `range`.
    pub(super) fn target_rows(&self, range: &Range) -> Statement {
        self.target.rows("t", range)
    }

    /// Key columns.
    pub(super) fn width(&self) -> usize {
        self.source.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Column, Key, KeySource, QualifiedName, Table, TableKind};
    use crate::mapping::Resolved;

    fn table(name: &str, cols: &[(&str, &str)], key: &[&str]) -> Table {
        Table {
            name: QualifiedName::new("public", name),
            oid: 1,
            kind: TableKind::Table,
            columns: cols
                .iter()
                .map(|(n, t)| Column {
                    name: (*n).into(),
                    type_name: (*t).into(),
                    not_null: true,
                    has_default: false,
                    default: None,
                    identity: None,
                    generated: None,
                    attnum: 0,
                })
                .collect(),
            key: Some(Key {
                columns: key.iter().map(|s| s.to_string()).collect(),
                source: KeySource::PrimaryKey,
            }),
            triggers: Vec::new(),
            rules: Vec::new(),
        }
    }

    fn fixture() -> (Catalog, Catalog, TableMap) {
        let source = Catalog::for_tests(vec![table("t", &[("id", "integer"), ("v", "text")], &["id"])]);
        let target = Catalog::for_tests(vec![table(
            "t2",
            &[("id", "bigint"), ("val", "mood"), ("extra", "text")],
            &["id"],
        )]);
        let map = TableMap {
            source: QualifiedName::new("public", "t"),
            target: QualifiedName::new("public", "t2"),
            source_key: vec!["id".into()],
            target_key: vec!["id".into()],
            columns: vec![
                ("id".into(), ColumnSource::Column("id".into())),
                ("val".into(), ColumnSource::Column("v".into())),
            ],
            reverse: Ok(Vec::new()),
        };
        (source, target, map)
    }

    #[test]
    fn source_rows_print_as_the_target_types() {
        let (source, target, map) = fixture();
        let resolved = Resolved::default();
        let mapped = Mapped {
            mapping: &resolved,
            source: &source,
            target: &target,
        };
        let on_source: HashSet<String> = ["bigint".to_string()].into();
        let sql = TableSql::new(&map, mapped, &on_source);
        assert_eq!(sql.as_text, vec!["val".to_string()]);
        let range = Range {
            lower: Some(vec![Some("10".into())]),
            upper: Some(vec![Some("20".into())]),
        };
        let s = sql.source_rows(&range);
        assert_eq!(
            s.sql,
            "SELECT ((s.id::text)::bigint)::text, md5(ROW(((s.id::text)::bigint)::text, s.v::text)::text) \
             FROM public.t s WHERE (s.id) > ($1::integer) AND (s.id) <= ($2::integer)"
        );
        assert_eq!(s.params, vec![Some("10".to_string()), Some("20".to_string())]);
        let t = sql.target_checksum(&Range::default());
        assert!(
            t.sql.ends_with(
                "FROM (SELECT md5(ROW(t.id::text, t.val::text)::text) AS sy_h FROM public.t2 t WHERE true) r"
            ),
            "{}",
            t.sql
        );
        assert!(t.params.is_empty());
    }

    #[test]
    fn key_types_that_sort_alike() {
        assert!(orders_alike("integer", "bigint"));
        assert!(orders_alike("integer", "numeric(12,0)"));
        assert!(orders_alike("character varying(20)", "text"));
        assert!(orders_alike("uuid", "uuid"));
        assert!(!orders_alike("integer", "text"));
        assert!(!orders_alike("character(5)", "text"));
    }

    #[test]
    fn a_key_that_sorts_differently_is_bounded_in_the_source_order() {
        let (source, _, mut map) = fixture();
        let target = Catalog::for_tests(vec![table("t2", &[("id", "text"), ("val", "text")], &["id"])]);
        map.columns[1].0 = "val".into();
        let resolved = Resolved::default();
        let mapped = Mapped {
            mapping: &resolved,
            source: &source,
            target: &target,
        };
        let sql = TableSql::new(&map, mapped, &HashSet::new());
        let t = sql.target_checksum(&Range {
            lower: Some(vec![Some("9".into())]),
            upper: None,
        });
        assert!(t.sql.contains("WHERE (t.id::integer) > ($1::integer)"), "{}", t.sql);
    }

    #[test]
    fn the_walk_orders_by_the_source_key() {
        let (source, target, map) = fixture();
        let resolved = Resolved::default();
        let mapped = Mapped {
            mapping: &resolved,
            source: &source,
            target: &target,
        };
        let sql = TableSql::new(&map, mapped, &HashSet::new());
        let s = sql.source_next(Some(&vec![Some("5".into())]), 100);
        assert!(
            s.sql.contains("WHERE (s.id) > ($1::integer) ORDER BY s.id LIMIT 100"),
            "{}",
            s.sql
        );
        assert!(
            s.sql
                .contains("SELECT sy_o0::text AS sy_l0 FROM r ORDER BY r.sy_o0 DESC LIMIT 1"),
            "{}",
            s.sql
        );
    }
}
