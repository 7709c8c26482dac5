//! Reading source rows by key through the mapping: the SQL that catch-up
//! replay and verification share, so that what verification compares is
//! exactly what replay writes.
//!
//! Keys travel as text arrays, one per key column, unnested and cast to the
//! key columns' types on the server (`s.id = k.sy_k0::integer`), so one
//! statement reads any number of keys and uses the key's index. A target
//! column's value leaves the source as text (`s.col::text`, or
//! `(expression)::text`) and enters the target through the target column's
//! type (`u.c0::bigint`); comparing through the same text is comparing what
//! replay would have written.

use super::{ColumnSource, TableMap};
use crate::catalog::{quote_ident, Catalog, QualifiedName};
use tokio_postgres::types::{ToSql, Type};

/// A key's values as text, one per key column, in key order.
pub(crate) type KeyText = Vec<Option<String>>;

/// A statement parameter with its type, for `query_typed` / `execute_typed`.
pub(crate) type TypedParam<'a> = (&'a (dyn ToSql + Sync), Type);

/// `name` quoted for SQL.
pub(crate) fn q(name: &str) -> String {
    quote_ident(name)
}

/// The type of `table.column` as the catalog prints it; `text` for a column
/// the catalog does not know (the cast then leaves the value as it is).
pub(crate) fn type_of(catalog: &Catalog, table: &QualifiedName, column: &str) -> String {
    catalog
        .table_exact(&table.schema, &table.name)
        .and_then(|t| t.column(column))
        .map(|c| c.type_name.clone())
        .unwrap_or_else(|| "text".into())
}

/// Columns of `keys` as text arrays, one per key column.
pub(crate) fn key_arrays<'a>(keys: impl IntoIterator<Item = &'a KeyText>, width: usize) -> Vec<Vec<Option<String>>> {
    let mut out: Vec<Vec<Option<String>>> = vec![Vec::new(); width];
    for key in keys {
        for (i, column) in out.iter_mut().enumerate() {
            column.push(key.get(i).cloned().flatten());
        }
    }
    out
}

/// `arrays` as `text[]` parameters. Statements sent with their parameter
/// types go out as Parse, Bind and Execute in one round trip; `query` and
/// `execute` first prepare the statement to learn the types, a second round
/// trip per statement that dominated the time of small batches.
pub(crate) fn text_arrays(arrays: &[Vec<Option<String>>]) -> Vec<TypedParam<'_>> {
    arrays
        .iter()
        .map(|a| (a as &(dyn ToSql + Sync), Type::TEXT_ARRAY))
        .collect()
}

/// `unnest($first::text[], ...) WITH ORDINALITY AS k(sy_k0, ..., sy_n)`
/// over `width` key arrays: `k.sy_n` is the key's position (from 1) in the
/// arrays, for a caller that must tell which key a row answers whatever
/// the text it was given in. The `sy_` names cannot clash with a mapping
/// expression's column names in practice, which are resolved against both
/// relations of the join.
pub(crate) fn unnest_keys(width: usize, first: usize) -> String {
    let arrays: Vec<String> = (first..first + width).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (0..width).map(|i| format!("sy_k{i}")).collect();
    format!(
        "unnest({}) WITH ORDINALITY AS k({}, sy_n)",
        arrays.join(", "),
        names.join(", ")
    )
}

/// `alias.col = k.sy_k0::type AND ...`: `columns` (in key order) matched to
/// the unnested keys, each cast to its column's type in `table`.
pub(crate) fn key_match(alias: &str, columns: &[String], catalog: &Catalog, table: &QualifiedName) -> String {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{alias}.{} = k.sy_k{i}::{}", q(c), type_of(catalog, table, c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The text of one target column's value, computed from the source row `s`.
pub(crate) fn mapped_value(source: &ColumnSource) -> String {
    match source {
        ColumnSource::Column(c) => format!("s.{}::text", q(c)),
        ColumnSource::Expr(e) => format!("({e})::text"),
    }
}

/// Reads the source rows of the keys in parameters `$1..$width` (text
/// arrays, see [`key_arrays`]): per row found, the text of each mapped
/// target column (in `map.columns` order), then the source key as text,
/// then `extra` (expressions over `s`). Keys not found give no row.
pub(crate) fn read_by_keys_sql(
    map: &TableMap,
    source_catalog: &Catalog,
    extra: impl Iterator<Item = String>,
) -> String {
    let values = map.columns.iter().map(|(_, src)| mapped_value(src));
    let keys_out = map.source_key.iter().map(|c| format!("s.{}::text", q(c)));
    format!(
        "SELECT {} FROM {} s JOIN {} ON {}",
        values.chain(keys_out).chain(extra).collect::<Vec<_>>().join(", "),
        map.source.qualified(),
        unnest_keys(map.source_key.len(), 1),
        key_match("s", &map.source_key, source_catalog, &map.source)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, Key, KeySource, Table, TableKind};

    fn table(name: &str, cols: &[(&str, &str)]) -> Table {
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
                columns: vec!["a".into(), "b".into()],
                source: KeySource::PrimaryKey,
            }),
            triggers: Vec::new(),
            rules: Vec::new(),
        }
    }

    #[test]
    fn keys_become_one_array_per_column() {
        let keys = [vec![Some("1".into()), Some("x".into())], vec![Some("2".into()), None]];
        let arrays = key_arrays(keys.iter(), 2);
        assert_eq!(arrays[0], vec![Some("1".into()), Some("2".into())]);
        assert_eq!(arrays[1], vec![Some("x".into()), None]);
    }

    #[test]
    fn reads_mapped_values_then_the_key() {
        let catalog = Catalog::for_tests(vec![table(
            "Pair",
            &[("a", "integer"), ("b", "text"), ("n", "integer")],
        )]);
        let map = TableMap {
            source: QualifiedName::new("public", "Pair"),
            target: QualifiedName::new("public", "pair2"),
            source_key: vec!["a".into(), "b".into()],
            target_key: vec!["a".into(), "b".into()],
            columns: vec![
                ("a".into(), ColumnSource::Column("a".into())),
                ("b".into(), ColumnSource::Column("b".into())),
                ("hits".into(), ColumnSource::Expr("n * 2".into())),
            ],
            reverse: Ok(Vec::new()),
        };
        assert_eq!(
            read_by_keys_sql(&map, &catalog, std::iter::empty()),
            "SELECT s.a::text, s.b::text, (n * 2)::text, s.a::text, s.b::text FROM public.\"Pair\" s \
             JOIN unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(sy_k0, sy_k1, sy_n) ON s.a = k.sy_k0::integer AND s.b = k.sy_k1::text"
        );
    }
}
