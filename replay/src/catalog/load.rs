//! Loading a [`Catalog`]: the queries of `sql.rs`, run in one read-only
//! repeatable-read transaction so that tables, keys and foreign keys all come
//! from the same snapshot, and the decoding of their rows.

use std::collections::HashMap;

use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, Row};

use super::sql::{foreign_keys_sql, BEGIN, COLUMNS, FUNCTIONS, KEYS, RULES, SEQUENCES, SESSION, TABLES, TRIGGERS};
use super::types::{
    Column, ColumnRef, FkAction, ForeignKey, Function, Generated, Identity, Key, KeySource, QualifiedName, Rule,
    RuleEvent, Sequence, Table, TableKind, Trigger, TriggerFiring, TriggerTiming, Volatility,
};
use super::{Catalog, CatalogError};

/// One catalog query: its purpose and text, for errors.
pub(super) struct Query<'a> {
    pub(super) what: &'static str,
    pub(super) sql: &'a str,
}

impl Query<'_> {
    pub(super) async fn rows(&self, client: &Client) -> Result<Vec<Row>, CatalogError> {
        client
            .query(self.sql, &[])
            .await
            .map_err(|e| CatalogError::query(self.what, self.sql, e))
    }

    /// Column `idx` of `row`; a type mismatch is reported like a failed query.
    pub(super) fn get<'r, T: FromSql<'r>>(&self, row: &'r Row, idx: usize) -> Result<T, CatalogError> {
        row.try_get(idx)
            .map_err(|e| CatalogError::query(self.what, self.sql, e))
    }
}

impl Catalog {
    /// Loads a snapshot of the database `client` is connected to.
    ///
    /// Runs `BEGIN ... COMMIT` on `client`, so the client must not be inside
    /// a transaction of its own (use a dedicated control connection), and
    /// the future should be run to completion: dropped midway, it leaves the
    /// connection inside the read-only transaction. On error the transaction
    /// is rolled back.
    pub async fn load(client: &Client) -> Result<Catalog, CatalogError> {
        client
            .batch_execute(BEGIN)
            .await
            .map_err(|e| CatalogError::query("begin the catalog snapshot", BEGIN, e))?;
        let loaded = load_in_snapshot(client).await;
        let end = if loaded.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = client
            .batch_execute(end)
            .await
            .map_err(|e| CatalogError::query("end the catalog snapshot", end, e));
        let catalog = loaded?;
        ended?;
        Ok(catalog)
    }
}

async fn load_in_snapshot(client: &Client) -> Result<Catalog, CatalogError> {
    let q = Query {
        what: "read the session",
        sql: SESSION,
    };
    let row = q.rows(client).await?;
    let (current_user, version): (String, i32) = match row.first() {
        Some(row) => (q.get(row, 0)?, q.get(row, 1)?),
        None => (String::new(), 0),
    };
    let mut tables = load_tables(client).await?;
    load_columns(client, &mut tables).await?;
    load_keys(client, &mut tables).await?;
    load_triggers(client, &mut tables).await?;
    load_rules(client, &mut tables).await?;
    let fk_sql = foreign_keys_sql(version);
    let foreign_keys = load_foreign_keys(client, &fk_sql).await?;
    let functions = load_functions(client).await?;
    let sequences = load_sequences(client).await?;
    let reach = super::load_reach::load_reach(client).await?;
    let tables = tables.into_values().map(|(_, t)| t).collect::<Vec<_>>();
    let mut tables = tables;
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Catalog::new(tables, foreign_keys, functions, sequences, current_user, version).with_reach(reach))
}

/// Tables by oid, with their unique-index candidates kept aside until the
/// columns' NOT NULL flags are known.
pub(super) type Tables = HashMap<u32, (Vec<Candidate>, Table)>;

/// A unique index that may become a table's key.
#[derive(Debug)]
pub(super) struct Candidate {
    index: String,
    primary: bool,
    columns: Vec<String>,
}

async fn load_tables(client: &Client) -> Result<Tables, CatalogError> {
    let q = Query {
        what: "load tables",
        sql: TABLES,
    };
    decode_tables(&q, q.rows(client).await?)
}

/// Rows of [`TABLES`] (or a query with its columns) as tables.
pub(super) fn decode_tables(q: &Query<'_>, rows: Vec<Row>) -> Result<Tables, CatalogError> {
    let mut tables = HashMap::new();
    for row in rows {
        let oid: u32 = q.get(&row, 0)?;
        let name = QualifiedName::new(q.get::<String>(&row, 1)?, q.get::<String>(&row, 2)?);
        let relkind: String = q.get(&row, 3)?;
        let is_partition: bool = q.get(&row, 4)?;
        let parent_schema: Option<String> = q.get(&row, 5)?;
        let parent_name: Option<String> = q.get(&row, 6)?;
        let partitioned = match relkind.as_str() {
            "r" => false,
            "p" => true,
            other => return Err(CatalogError::unexpected("pg_class.relkind", other, &name)),
        };
        let kind = match (is_partition, parent_schema, parent_name) {
            (true, Some(schema), Some(parent)) => TableKind::Partition {
                parent: QualifiedName::new(schema, parent),
                partitioned,
            },
            _ if partitioned => TableKind::Partitioned,
            _ => TableKind::Table,
        };
        let table = Table {
            name,
            oid,
            kind,
            columns: Vec::new(),
            key: None,
            triggers: Vec::new(),
            rules: Vec::new(),
        };
        tables.insert(oid, (Vec::new(), table));
    }
    Ok(tables)
}

async fn load_columns(client: &Client, tables: &mut Tables) -> Result<(), CatalogError> {
    let q = Query {
        what: "load columns",
        sql: COLUMNS,
    };
    decode_columns(&q, q.rows(client).await?, tables)
}

/// Rows of [`COLUMNS`] (or a query with its columns) into `tables`.
pub(super) fn decode_columns(q: &Query<'_>, rows: Vec<Row>, tables: &mut Tables) -> Result<(), CatalogError> {
    for row in rows {
        let oid: u32 = q.get(&row, 0)?;
        let Some((_, table)) = tables.get_mut(&oid) else {
            continue;
        };
        let name: String = q.get(&row, 2)?;
        let identity = match q.get::<String>(&row, 5)?.as_str() {
            "" => None,
            "a" => Some(Identity::Always),
            "d" => Some(Identity::ByDefault),
            other => return Err(CatalogError::unexpected("pg_attribute.attidentity", other, &name)),
        };
        let expr: Option<String> = q.get(&row, 7)?;
        let (default, generated) = match q.get::<String>(&row, 6)?.as_str() {
            "" => (expr, None),
            "s" => (
                None,
                Some(Generated::Stored {
                    expr: expr.unwrap_or_default(),
                }),
            ),
            other => return Err(CatalogError::unexpected("pg_attribute.attgenerated", other, &name)),
        };
        table.columns.push(Column {
            attnum: q.get(&row, 1)?,
            type_name: q.get(&row, 3)?,
            not_null: q.get(&row, 4)?,
            has_default: default.is_some(),
            default,
            identity,
            generated,
            name,
        });
    }
    Ok(())
}

async fn load_keys(client: &Client, tables: &mut Tables) -> Result<(), CatalogError> {
    let q = Query {
        what: "load keys",
        sql: KEYS,
    };
    decode_keys(&q, q.rows(client).await?, tables)
}

/// Rows of [`KEYS`] (or a query with its columns) into `tables`, choosing
/// each table's key; run after the columns are in.
pub(super) fn decode_keys(q: &Query<'_>, rows: Vec<Row>, tables: &mut Tables) -> Result<(), CatalogError> {
    for row in rows {
        let oid: u32 = q.get(&row, 0)?;
        if let Some((candidates, _)) = tables.get_mut(&oid) {
            candidates.push(Candidate {
                index: q.get(&row, 1)?,
                primary: q.get(&row, 2)?,
                columns: q.get(&row, 3)?,
            });
        }
    }
    for (candidates, table) in tables.values_mut() {
        table.key = choose_key(std::mem::take(candidates), &table.columns);
    }
    Ok(())
}

/// The replica key: the primary key, else the unique index whose columns
/// are all NOT NULL with the fewest columns, ties broken by index name.
fn choose_key(mut candidates: Vec<Candidate>, columns: &[Column]) -> Option<Key> {
    if let Some(pk) = candidates.iter().position(|c| c.primary) {
        let pk = candidates.swap_remove(pk);
        return Some(Key {
            columns: pk.columns,
            source: KeySource::PrimaryKey,
        });
    }
    let not_null = |name: &String| columns.iter().any(|c| &c.name == name && c.not_null);
    candidates
        .into_iter()
        .filter(|c| !c.columns.is_empty() && c.columns.iter().all(not_null))
        .min_by(|a, b| (a.columns.len(), &a.index).cmp(&(b.columns.len(), &b.index)))
        .map(|c| Key {
            columns: c.columns,
            source: KeySource::UniqueIndex(c.index),
        })
}

async fn load_triggers(client: &Client, tables: &mut Tables) -> Result<(), CatalogError> {
    let q = Query {
        what: "load triggers",
        sql: TRIGGERS,
    };
    decode_triggers(&q, q.rows(client).await?, tables)
}

/// Rows of [`TRIGGERS`] (or a query with its columns) into `tables`.
pub(super) fn decode_triggers(q: &Query<'_>, rows: Vec<Row>, tables: &mut Tables) -> Result<(), CatalogError> {
    // tgtype bits, from PostgreSQL's pg_trigger.h.
    const ROW: i32 = 1 << 0;
    const BEFORE: i32 = 1 << 1;
    const INSERT: i32 = 1 << 2;
    const DELETE: i32 = 1 << 3;
    const UPDATE: i32 = 1 << 4;
    const TRUNCATE: i32 = 1 << 5;
    const INSTEAD: i32 = 1 << 6;
    for row in rows {
        let oid: u32 = q.get(&row, 0)?;
        let Some((_, table)) = tables.get_mut(&oid) else {
            continue;
        };
        let name: String = q.get(&row, 1)?;
        let tgtype: i32 = q.get(&row, 2)?;
        let firing = match q.get::<String>(&row, 3)?.as_str() {
            "O" => TriggerFiring::Origin,
            "A" => TriggerFiring::Always,
            "R" => TriggerFiring::Replica,
            other => return Err(CatalogError::unexpected("pg_trigger.tgenabled", other, &name)),
        };
        let timing = if tgtype & INSTEAD != 0 {
            TriggerTiming::InsteadOf
        } else if tgtype & BEFORE != 0 {
            TriggerTiming::Before
        } else {
            TriggerTiming::After
        };
        table.triggers.push(Trigger {
            function: QualifiedName::new(q.get::<String>(&row, 4)?, q.get::<String>(&row, 5)?),
            timing,
            for_each_row: tgtype & ROW != 0,
            on_insert: tgtype & INSERT != 0,
            on_update: tgtype & UPDATE != 0,
            on_delete: tgtype & DELETE != 0,
            on_truncate: tgtype & TRUNCATE != 0,
            firing,
            name,
        });
    }
    Ok(())
}

async fn load_rules(client: &Client, tables: &mut Tables) -> Result<(), CatalogError> {
    let q = Query {
        what: "load rules",
        sql: RULES,
    };
    decode_rules(&q, q.rows(client).await?, tables)
}

/// Rows of [`RULES`] (or a query with its columns) into `tables`.
pub(super) fn decode_rules(q: &Query<'_>, rows: Vec<Row>, tables: &mut Tables) -> Result<(), CatalogError> {
    for row in rows {
        let oid: u32 = q.get(&row, 0)?;
        let Some((_, table)) = tables.get_mut(&oid) else {
            continue;
        };
        let name: String = q.get(&row, 1)?;
        let event = match q.get::<String>(&row, 2)?.as_str() {
            "1" => RuleEvent::Select,
            "2" => RuleEvent::Update,
            "3" => RuleEvent::Insert,
            "4" => RuleEvent::Delete,
            other => return Err(CatalogError::unexpected("pg_rewrite.ev_type", other, &name)),
        };
        table.rules.push(Rule {
            event,
            instead: q.get(&row, 3)?,
            name,
        });
    }
    Ok(())
}

fn fk_action(code: &str, constraint: &str) -> Result<FkAction, CatalogError> {
    Ok(match code {
        "a" => FkAction::NoAction,
        "r" => FkAction::Restrict,
        "c" => FkAction::Cascade,
        "n" => FkAction::SetNull,
        "d" => FkAction::SetDefault,
        other => return Err(CatalogError::unexpected("pg_constraint.confdeltype", other, constraint)),
    })
}

async fn load_foreign_keys(client: &Client, sql: &str) -> Result<Vec<ForeignKey>, CatalogError> {
    let q = Query {
        what: "load foreign keys",
        sql,
    };
    let mut out = Vec::new();
    for row in q.rows(client).await? {
        let name: String = q.get(&row, 0)?;
        out.push(ForeignKey {
            child: QualifiedName::new(q.get::<String>(&row, 1)?, q.get::<String>(&row, 2)?),
            child_columns: q.get(&row, 3)?,
            parent: QualifiedName::new(q.get::<String>(&row, 4)?, q.get::<String>(&row, 5)?),
            parent_columns: q.get(&row, 6)?,
            on_delete: fk_action(&q.get::<String>(&row, 7)?, &name)?,
            on_update: fk_action(&q.get::<String>(&row, 8)?, &name)?,
            on_delete_columns: q.get(&row, 9)?,
            name,
        });
    }
    Ok(out)
}

async fn load_functions(client: &Client) -> Result<Vec<Function>, CatalogError> {
    let q = Query {
        what: "load functions",
        sql: FUNCTIONS,
    };
    let mut out = Vec::new();
    for row in q.rows(client).await? {
        let name = QualifiedName::new(q.get::<String>(&row, 0)?, q.get::<String>(&row, 1)?);
        let volatility = match q.get::<String>(&row, 3)?.as_str() {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            "v" => Volatility::Volatile,
            other => return Err(CatalogError::unexpected("pg_proc.provolatile", other, &name)),
        };
        out.push(Function {
            arguments: q.get(&row, 2)?,
            volatility,
            name,
        });
    }
    Ok(out)
}

async fn load_sequences(client: &Client) -> Result<Vec<Sequence>, CatalogError> {
    let q = Query {
        what: "load sequences",
        sql: SEQUENCES,
    };
    let mut out = Vec::new();
    for row in q.rows(client).await? {
        let name = QualifiedName::new(q.get::<String>(&row, 0)?, q.get::<String>(&row, 1)?);
        let owned_by = match (
            q.get::<Option<String>>(&row, 2)?,
            q.get::<Option<String>>(&row, 3)?,
            q.get::<Option<String>>(&row, 4)?,
        ) {
            (Some(schema), Some(table), Some(column)) => Some(ColumnRef {
                table: QualifiedName::new(schema, table),
                column,
            }),
            _ => None,
        };
        out.push(Sequence { name, owned_by });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, not_null: bool) -> Column {
        Column {
            name: name.into(),
            type_name: "integer".into(),
            not_null,
            has_default: false,
            default: None,
            identity: None,
            generated: None,
            attnum: 1,
        }
    }

    fn cand(index: &str, primary: bool, columns: &[&str]) -> Candidate {
        Candidate {
            index: index.into(),
            primary,
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn primary_key_wins() {
        let cols = [col("a", true), col("b", true)];
        let key = choose_key(vec![cand("u", false, &["a"]), cand("pk", true, &["a", "b"])], &cols);
        assert_eq!(
            key,
            Some(Key {
                columns: vec!["a".into(), "b".into()],
                source: KeySource::PrimaryKey
            })
        );
    }

    #[test]
    fn fewest_not_null_columns_then_name() {
        let cols = [col("a", true), col("b", true), col("c", false), col("d", true)];
        let key = choose_key(
            vec![
                cand("z_ab", false, &["a", "b"]),
                cand("a_c", false, &["c"]),
                cand("m_d", false, &["d"]),
                cand("k_b", false, &["b"]),
            ],
            &cols,
        );
        assert_eq!(
            key,
            Some(Key {
                columns: vec!["b".into()],
                source: KeySource::UniqueIndex("k_b".into())
            })
        );
        assert_eq!(choose_key(vec![cand("a_c", false, &["c"])], &cols), None);
        assert_eq!(choose_key(vec![], &cols), None);
    }
}
