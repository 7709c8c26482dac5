//! A mapping checked against the source and target catalogs.

use super::{split_name, Mapping, MappingError, TableSpec};
use crate::catalog::{Catalog, QualifiedName, Table};
use std::collections::BTreeMap;

/// Where a target column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSource {
    /// A source column of this name, as is.
    Column(String),
    /// A SQL expression over the source row.
    Expr(String),
}

/// How one source table maps to its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMap {
    /// The source table.
    pub source: QualifiedName,
    /// The target table.
    pub target: QualifiedName,
    /// The source key columns, in key order.
    pub source_key: Vec<String>,
    /// The target column each source key column goes to (same order).
    pub target_key: Vec<String>,
    /// Target column -> where its value comes from. Target columns not
    /// listed take their defaults.
    pub columns: Vec<(String, ColumnSource)>,
    /// Source column -> where its value comes from in the target row, for
    /// rollback; the errors if the mapping cannot be reversed.
    pub reverse: Result<Vec<(String, ColumnSource)>, Vec<MappingError>>,
}

impl TableMap {
    /// Whether some target column is computed by an SQL expression.
    pub fn has_expressions(&self) -> bool {
        self.columns.iter().any(|(_, c)| matches!(c, ColumnSource::Expr(_)))
    }
}

/// A whole mapping, resolved: one entry per source table.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// By source table.
    pub tables: BTreeMap<QualifiedName, TableMap>,
}

impl Resolved {
    /// The map of a source table.
    pub fn table(&self, source: &QualifiedName) -> Option<&TableMap> {
        self.tables.get(source)
    }

    /// Every reason the mapping cannot be reversed (empty when it can).
    pub fn reverse_errors(&self) -> Vec<&MappingError> {
        self.tables
            .values()
            .filter_map(|t| t.reverse.as_ref().err())
            .flatten()
            .collect()
    }
}

impl Mapping {
    /// Checks the mapping against both catalogs; every problem is reported,
    /// each naming its table and column.
    pub fn resolve(&self, source: &Catalog, target: &Catalog) -> Result<Resolved, Vec<MappingError>> {
        let mut errors = Vec::new();
        let mut specs: BTreeMap<QualifiedName, &TableSpec> = BTreeMap::new();
        for (name, spec) in &self.tables {
            let (schema, table) = split_name(name);
            if source.table_exact(&schema, &table).is_none() {
                errors.push(MappingError::table(name, "no such table in the source database"));
                continue;
            }
            specs.insert(QualifiedName::new(schema, table), spec);
        }
        let mut resolved = Resolved::default();
        let empty = TableSpec::default();
        for t in source.tables() {
            let spec = specs.get(&t.name).copied().unwrap_or(&empty);
            match resolve_table(t, spec, target) {
                Ok(map) => {
                    resolved.tables.insert(t.name.clone(), map);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(resolved)
        } else {
            Err(errors)
        }
    }
}

fn resolve_table(src: &Table, spec: &TableSpec, target: &Catalog) -> Result<TableMap, Vec<MappingError>> {
    let name = src.name.to_string();
    let mut errors = Vec::new();
    let target_name = match &spec.target {
        Some(t) => {
            let (s, n) = split_name(t);
            QualifiedName::new(s, n)
        }
        None => src.name.clone(),
    };
    let Some(dst) = target.table_exact(&target_name.schema, &target_name.name) else {
        return Err(vec![MappingError::table(
            &name,
            format!("target table {target_name} does not exist in the target database; create it or set `target`"),
        )]);
    };
    let Some(source_key) = &src.key else {
        return Err(vec![MappingError::table(
            &name,
            "has no primary key or non-null unique index, so its rows cannot be synced",
        )]);
    };
    for d in &spec.drop {
        if src.column(d).is_none() {
            errors.push(MappingError::column(
                &name,
                d,
                "listed in `drop` but the source table has no such column",
            ));
        }
    }
    for c in spec.columns.keys() {
        match dst.column(c) {
            None => errors.push(MappingError::column(
                &name,
                c,
                format!("mapped, but {target_name} has no such column"),
            )),
            Some(col) if col.generated.is_some() => errors.push(MappingError::column(
                &name,
                c,
                format!("is a generated column of {target_name}; the target computes it, do not map it"),
            )),
            _ => {}
        }
    }
    for (c, expr) in &spec.columns {
        if let ColumnSource::Column(from) = plain_or_expr(expr) {
            if src.column(&from).is_none() {
                errors.push(MappingError::column(
                    &name,
                    c,
                    format!(
                        "mapped from source column {from}, which {name} does not have (an SQL expression \
                         rather than a column goes in parentheses, e.g. \"({from})\")"
                    ),
                ));
            }
        }
    }
    let dropped = |c: &str| spec.drop.iter().any(|d| d == c);
    let mut columns = Vec::new();
    for col in &dst.columns {
        if col.generated.is_some() {
            continue;
        }
        if let Some(expr) = spec.columns.get(&col.name) {
            columns.push((col.name.clone(), plain_or_expr(expr)));
        } else if src.column(&col.name).is_some_and(|s| s.generated.is_none()) && !dropped(&col.name) {
            columns.push((col.name.clone(), ColumnSource::Column(col.name.clone())));
        } else if col.not_null && !col.is_defaulted() {
            errors.push(MappingError::column(
                &name,
                &col.name,
                format!(
                    "{target_name}.{} is NOT NULL without a default and no source column gives it a value; map it under [tables.\"{}\".columns]",
                    col.name, name
                ),
            ));
        }
    }
    for col in &src.columns {
        if col.generated.is_some() || dropped(&col.name) {
            continue;
        }
        let used = columns.iter().any(|(_, s)| match s {
            ColumnSource::Column(c) => c == &col.name,
            ColumnSource::Expr(e) => mentions(e, &col.name),
        });
        if !used {
            errors.push(MappingError::column(
                &name,
                &col.name,
                format!("no column of {target_name} takes this source column; map it or list it in `drop`"),
            ));
        }
    }
    let mut target_key = Vec::new();
    if let Some(dst_key) = &dst.key {
        for k in &source_key.columns {
            let to = columns
                .iter()
                .find(|(_, s)| s == &ColumnSource::Column(k.clone()))
                .map(|(t, _)| t.clone());
            match to {
                Some(t) if dst_key.columns.contains(&t) => target_key.push(t),
                _ => errors.push(MappingError::column(
                    &name,
                    k,
                    format!("source key column must be copied as is into a key column of {target_name}"),
                )),
            }
        }
        if target_key.len() == source_key.columns.len() && target_key.len() != dst_key.columns.len() {
            errors.push(MappingError::table(
                &name,
                format!(
                    "the key of {target_name} ({}) is not the source key mapped by column",
                    dst_key.columns.join(", ")
                ),
            ));
        }
    } else {
        errors.push(MappingError::table(
            &name,
            format!("target table {target_name} has no primary key or non-null unique index"),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let reverse = reverse_columns(&name, src, dst, spec, &columns);
    Ok(TableMap {
        source: src.name.clone(),
        target: target_name,
        source_key: source_key.columns.clone(),
        target_key,
        columns,
        reverse,
    })
}

/// Source column -> value from the target row: explicit `reverse` entries,
/// else the inverse of a plain column copy. Its errors concern only a
/// rollback: they are reported, never refused, so forward catch-up runs.
fn reverse_columns(
    name: &str,
    src: &Table,
    dst: &Table,
    spec: &TableSpec,
    forward: &[(String, ColumnSource)],
) -> Result<Vec<(String, ColumnSource)>, Vec<MappingError>> {
    let mut errors = Vec::new();
    for (c, expr) in &spec.reverse {
        if src.column(c).is_none() {
            errors.push(MappingError::column(
                name,
                c,
                "listed under `reverse` but the source table has no such column",
            ));
        }
        if let ColumnSource::Column(from) = plain_or_expr(expr) {
            if dst.column(&from).is_none() {
                errors.push(MappingError::column(
                    name,
                    c,
                    format!(
                        "rebuilt under `reverse` from column {from}, which {} does not have",
                        dst.name
                    ),
                ));
            }
        }
    }
    let mut out = Vec::new();
    for col in &src.columns {
        if col.generated.is_some() {
            continue;
        }
        if let Some(expr) = spec.reverse.get(&col.name) {
            out.push((col.name.clone(), plain_or_expr(expr)));
            continue;
        }
        let copied = forward
            .iter()
            .find(|(_, s)| s == &ColumnSource::Column(col.name.clone()));
        match copied {
            Some((t, _)) => out.push((col.name.clone(), ColumnSource::Column(t.clone()))),
            None if !col.not_null || col.is_defaulted() => {}
            None => errors.push(MappingError::column(
                name,
                &col.name,
                "cannot be rebuilt from the target row for rollback; give it an expression under [tables.\"...\".reverse]",
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Bare words that are SQL values, not column names.
const VALUE_KEYWORDS: &[&str] = &[
    "true",
    "false",
    "null",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "session_user",
    "user",
    "current_catalog",
    "current_schema",
];

/// A bare identifier is a column copy (but for the bare words of SQL that
/// are values: `true`, `null`, `current_timestamp`...); anything else an
/// expression.
fn plain_or_expr(expr: &str) -> ColumnSource {
    let e = expr.trim();
    if VALUE_KEYWORDS.contains(&e.to_ascii_lowercase().as_str()) {
        return ColumnSource::Expr(e.to_owned());
    }
    let bare = !e.is_empty()
        && e.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && e.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if bare {
        return ColumnSource::Column(e.to_owned());
    }
    if e.len() >= 2 && e.starts_with('"') && e.ends_with('"') && !e[1..e.len() - 1].contains('"') {
        return ColumnSource::Column(e[1..e.len() - 1].to_owned());
    }
    ColumnSource::Expr(e.to_owned())
}

/// Whether `expr` names `column` as a word (a conservative check: a false
/// "yes" only silences the unused-column error).
fn mentions(expr: &str, column: &str) -> bool {
    let lower = expr.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    lower.match_indices(&column.to_ascii_lowercase()).any(|(i, m)| {
        let before = i == 0 || !word(bytes[i - 1]);
        let after = i + m.len() >= bytes.len() || !word(bytes[i + m.len()]);
        before && after
    }) || expr.contains(&format!("\"{column}\""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, Key, KeySource, TableKind};

    fn col(name: &str, not_null: bool, default: bool) -> Column {
        Column {
            name: name.into(),
            type_name: "integer".into(),
            not_null,
            has_default: default,
            default: default.then(|| "0".into()),
            identity: None,
            generated: None,
            attnum: 0,
        }
    }

    fn table(name: &str, cols: Vec<Column>, key: &[&str]) -> Table {
        Table {
            name: QualifiedName::new("public", name),
            oid: 1,
            kind: TableKind::Table,
            columns: cols,
            key: Some(Key {
                columns: key.iter().map(|s| s.to_string()).collect(),
                source: KeySource::PrimaryKey,
            }),
            triggers: Vec::new(),
            rules: Vec::new(),
        }
    }

    fn catalog(tables: Vec<Table>) -> Catalog {
        Catalog::for_tests(tables)
    }

    #[test]
    fn same_tables_map_by_name() {
        let src = catalog(vec![table(
            "t",
            vec![col("id", true, false), col("v", false, false)],
            &["id"],
        )]);
        let dst = catalog(vec![table(
            "t",
            vec![col("id", true, false), col("v", false, false), col("added", true, true)],
            &["id"],
        )]);
        let r = Mapping::default().resolve(&src, &dst).unwrap();
        let m = r.table(&QualifiedName::new("public", "t")).unwrap();
        assert_eq!(m.target_key, vec!["id".to_string()]);
        assert_eq!(
            m.columns,
            vec![
                ("id".into(), ColumnSource::Column("id".into())),
                ("v".into(), ColumnSource::Column("v".into()))
            ]
        );
        assert!(m.reverse.is_ok());
    }

    #[test]
    fn renames_splits_and_drops() {
        let text = r#"
            [tables."t"]
            target = "public.t2"
            drop = ["legacy"]
            [tables."t".columns]
            ident = "id"
            first = "split_part(name, ' ', 1)"
            last = "split_part(name, ' ', 2)"
            [tables."t".reverse]
            name = "first || ' ' || last"
        "#;
        let m = Mapping::parse(text, "m.toml").unwrap();
        let src = catalog(vec![table(
            "t",
            vec![
                col("id", true, false),
                col("name", true, false),
                col("legacy", false, false),
            ],
            &["id"],
        )]);
        let dst = catalog(vec![table(
            "t2",
            vec![
                col("ident", true, false),
                col("first", true, false),
                col("last", true, false),
            ],
            &["ident"],
        )]);
        let r = m.resolve(&src, &dst).unwrap();
        let t = r.table(&QualifiedName::new("public", "t")).unwrap();
        assert_eq!(t.target, QualifiedName::new("public", "t2"));
        assert_eq!(t.target_key, vec!["ident".to_string()]);
        let rev = t.reverse.as_ref().unwrap();
        assert!(rev.contains(&("id".into(), ColumnSource::Column("ident".into()))));
        assert!(rev.contains(&("name".into(), ColumnSource::Expr("first || ' ' || last".into()))));
    }

    #[test]
    fn errors_name_table_and_column() {
        let text = r#"
            [tables."missing"]
            [tables."t".columns]
            nope = "id"
        "#;
        let m = Mapping::parse(text, "m.toml").unwrap();
        let src = catalog(vec![table(
            "t",
            vec![col("id", true, false), col("gone", false, false)],
            &["id"],
        )]);
        let dst = catalog(vec![table(
            "t",
            vec![col("id", true, false), col("needed", true, false)],
            &["id"],
        )]);
        let errs: Vec<String> = m
            .resolve(&src, &dst)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        let all = errs.join("\n");
        assert!(
            all.contains("mapping of missing: no such table in the source database"),
            "{all}"
        );
        assert!(
            all.contains("column nope: mapped, but public.t has no such column"),
            "{all}"
        );
        assert!(
            all.contains("column needed") && all.contains("NOT NULL without a default"),
            "{all}"
        );
        assert!(
            all.contains("column gone") && all.contains("list it in `drop`"),
            "{all}"
        );
    }

    #[test]
    fn a_column_copied_from_or_back_to_a_missing_column_is_named() {
        let text = r#"
            [tables."t".columns]
            full_name = "nme"
            [tables."t".reverse]
            name = "fulname"
            gone = "full_name"
        "#;
        let m = Mapping::parse(text, "m.toml").unwrap();
        let src = catalog(vec![table(
            "t",
            vec![col("id", true, false), col("name", false, false)],
            &["id"],
        )]);
        let dst = catalog(vec![table(
            "t",
            vec![col("id", true, false), col("full_name", false, false)],
            &["id"],
        )]);
        let all: Vec<String> = m
            .resolve(&src, &dst)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        let all = all.join("\n");
        assert!(
            all.contains("column full_name: mapped from source column nme, which public.t does not have"),
            "{all}"
        );
        // The reverse side's mistakes concern a rollback: reported with
        // the table's map, not refused.
        let fixed = Mapping::parse(&text.replace("\"nme\"", "\"name\""), "m.toml").unwrap();
        let r = fixed.resolve(&src, &dst).unwrap();
        let reverse: Vec<String> = r.reverse_errors().iter().map(|e| e.to_string()).collect();
        let reverse = reverse.join("\n");
        assert!(
            reverse.contains("column name: rebuilt under `reverse` from column fulname, which public.t does not have"),
            "{reverse}"
        );
        assert!(
            reverse.contains("column gone: listed under `reverse` but the source table has no such column"),
            "{reverse}"
        );
    }

    #[test]
    fn sql_value_words_are_expressions_not_columns() {
        let text = r#"
            [tables."t".columns]
            active = "true"
            note = "NULL"
            seen = "current_timestamp"
        "#;
        let m = Mapping::parse(text, "m.toml").unwrap();
        let src = catalog(vec![table("t", vec![col("id", true, false)], &["id"])]);
        let dst = catalog(vec![table(
            "t",
            vec![
                col("id", true, false),
                col("active", true, false),
                col("note", false, false),
                col("seen", false, false),
            ],
            &["id"],
        )]);
        let r = m.resolve(&src, &dst).unwrap();
        let t = r.table(&QualifiedName::new("public", "t")).unwrap();
        assert!(t
            .columns
            .contains(&("active".into(), ColumnSource::Expr("true".into()))));
        assert!(t.columns.contains(&("note".into(), ColumnSource::Expr("NULL".into()))));
        assert!(t
            .columns
            .contains(&("seen".into(), ColumnSource::Expr("current_timestamp".into()))));
    }

    #[test]
    fn target_key_must_come_from_the_source_key() {
        let text = r#"
            [tables."t".columns]
            id = "id * 10"
        "#;
        let m = Mapping::parse(text, "m.toml").unwrap();
        let src = catalog(vec![table("t", vec![col("id", true, false)], &["id"])]);
        let dst = catalog(vec![table("t", vec![col("id", true, false)], &["id"])]);
        let e = m.resolve(&src, &dst).unwrap_err();
        assert!(
            e[0].to_string().contains("source key column must be copied as is"),
            "{e:?}"
        );
    }

    #[test]
    fn names_split_like_sql() {
        assert_eq!(split_name("T"), ("public".into(), "t".into()));
        assert_eq!(split_name("App.\"My.T\""), ("app".into(), "My.T".into()));
    }
}
