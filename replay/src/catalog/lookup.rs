//! Reading one table on demand: a table created after the last snapshot is
//! looked up by name (through a search path) or by oid, with the same
//! queries and decoding as a full load restricted to that table, and added
//! to a copy of the snapshot.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::load::{decode_columns, decode_keys, decode_rules, decode_tables, decode_triggers, Query, Tables};
use super::sql::{BEGIN, COLUMNS, KEYS, RULES, TABLES, TRIGGERS};
use super::{Catalog, CatalogError, Table};

/// What a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookedUp {
    /// A table of a user schema.
    Table(Box<Table>),
    /// A temporary table (some session's own; never captured).
    Temporary,
    /// No such table (or a view, or a system table).
    Missing,
}

/// Which table to look up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TableLookup {
    /// `schema.name`, or `name` in the first schema of `path` that has a
    /// relation of that name (as the server resolves it; entries must be
    /// plain schema names, `"$user"` already replaced).
    Name {
        /// The schema, if the name was qualified.
        schema: Option<String>,
        /// The table's name (raw).
        name: String,
        /// The search path for an unqualified name.
        path: Vec<String>,
    },
    /// The table with this `pg_class` oid.
    Oid(u32),
}

const BY_QUALIFIED_NAME: &str = "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = $2";

// The first schema of the path holding any relation of that name wins, as
// in the server: a view there hides a table further on.
const BY_PATH: &str = "SELECT c.oid FROM unnest($1::text[]) WITH ORDINALITY s(nsp, ord) \
     JOIN pg_namespace n ON n.nspname = s.nsp \
     JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = $2 \
     ORDER BY s.ord LIMIT 1";

impl Catalog {
    /// Reads the table `what` names, if it exists in a user schema, in one
    /// read-only transaction on `client` (which must not be inside one).
    pub async fn lookup_table(client: &Client, what: &TableLookup) -> Result<LookedUp, CatalogError> {
        client
            .batch_execute(BEGIN)
            .await
            .map_err(|e| CatalogError::query("begin the table lookup", BEGIN, e))?;
        let found = lookup_in_snapshot(client, what).await;
        let end = if found.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = client
            .batch_execute(end)
            .await
            .map_err(|e| CatalogError::query("end the table lookup", end, e));
        let found = found?;
        ended?;
        Ok(found)
    }

    /// A copy of this snapshot with `table` added (or replacing the table
    /// of the same oid or name).
    pub fn with_table(&self, table: Table) -> Catalog {
        let mut tables: Vec<Table> = self
            .tables
            .iter()
            .filter(|t| t.oid != table.oid && t.name != table.name)
            .cloned()
            .collect();
        tables.push(table);
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        let mut c = Catalog::new(
            tables,
            self.foreign_keys.clone(),
            self.functions.clone(),
            self.sequences.clone(),
            self.current_user.clone(),
            self.server_version_num,
        );
        c.loaded_at = self.loaded_at;
        c
    }
}

async fn rows(
    client: &Client,
    what: &'static str,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, CatalogError> {
    client
        .query(sql, params)
        .await
        .map_err(|e| CatalogError::query(what, sql, e))
}

const IS_TEMPORARY: &str = "SELECT n.nspname ~ '^pg_temp_' FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1";

async fn lookup_in_snapshot(client: &Client, what: &TableLookup) -> Result<LookedUp, CatalogError> {
    let oid: u32 = match what {
        TableLookup::Oid(oid) => *oid,
        TableLookup::Name { schema, name, path } => {
            let found = match schema {
                Some(s) => rows(client, "look up a table", BY_QUALIFIED_NAME, &[s, name]).await?,
                None => rows(client, "look up a table", BY_PATH, &[path, name]).await?,
            };
            match found.first() {
                Some(row) => row
                    .try_get(0)
                    .map_err(|e| CatalogError::query("look up a table", BY_PATH, e))?,
                None => return Ok(LookedUp::Missing),
            }
        }
    };
    // The load queries, restricted to this one table.
    let one = |sql: &str, column: &str, order: &str| {
        format!("SELECT * FROM ({sql}) q WHERE q.{column} = $1 ORDER BY {order}")
    };
    let tables_sql = one(TABLES, "oid", "1");
    let q = Query {
        what: "look up a table",
        sql: &tables_sql,
    };
    let mut tables: Tables = decode_tables(&q, rows(client, q.what, q.sql, &[&oid]).await?)?;
    if tables.is_empty() {
        let temp = rows(client, "look up a table", IS_TEMPORARY, &[&oid]).await?;
        let temporary = match temp.first() {
            Some(row) => row
                .try_get::<_, bool>(0)
                .map_err(|e| CatalogError::query("look up a table", IS_TEMPORARY, e))?,
            None => false,
        };
        return Ok(if temporary {
            LookedUp::Temporary
        } else {
            LookedUp::Missing
        });
    }
    let columns_sql = one(COLUMNS, "attrelid", "q.attnum");
    let q = Query {
        what: "look up a table's columns",
        sql: &columns_sql,
    };
    decode_columns(&q, rows(client, q.what, q.sql, &[&oid]).await?, &mut tables)?;
    let keys_sql = one(KEYS, "indrelid", "2");
    let q = Query {
        what: "look up a table's keys",
        sql: &keys_sql,
    };
    decode_keys(&q, rows(client, q.what, q.sql, &[&oid]).await?, &mut tables)?;
    let triggers_sql = one(TRIGGERS, "tgrelid", "2");
    let q = Query {
        what: "look up a table's triggers",
        sql: &triggers_sql,
    };
    decode_triggers(&q, rows(client, q.what, q.sql, &[&oid]).await?, &mut tables)?;
    let rules_sql = one(RULES, "ev_class", "2");
    let q = Query {
        what: "look up a table's rules",
        sql: &rules_sql,
    };
    decode_rules(&q, rows(client, q.what, q.sql, &[&oid]).await?, &mut tables)?;
    Ok(match tables.into_values().next() {
        Some((_, t)) => LookedUp::Table(Box::new(t)),
        None => LookedUp::Missing,
    })
}
