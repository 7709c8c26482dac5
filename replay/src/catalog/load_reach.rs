//! Loading the [`Reach`] graph: one query per kind of object (relations,
//! types, typed columns, functions, operators, casts, expressions), run in
//! the catalog's snapshot transaction, never one per object, so a database
//! with many objects loads as fast as one with few.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::load::Query;
use super::reach::{Access, Edge, Node, Reach, ReachFunction, BUILTIN_WRITERS};
use super::sql::{
    REACH_CASTS, REACH_COLUMN_TYPES, REACH_EXPRESSIONS, REACH_FUNCTIONS, REACH_OPERATORS, REACH_RELATIONS, REACH_TYPES,
    REACH_WRITER_CALLS,
};
use super::types::{QualifiedName, Volatility};
use super::CatalogError;

/// Every access a write of a relation implies (it reads the rows it
/// touches, and RETURNING reads what it wrote).
const WRITES: [Access; 3] = [Access::Insert, Access::Update, Access::Delete];

impl Reach {
    fn edge(&mut self, from: Node, to: Node, via: String) {
        self.edges.entry(from).or_default().push(Edge { to, via });
    }

    fn name_of(&self, oid: u32) -> String {
        self.names
            .get(&oid)
            .map(ToString::to_string)
            .unwrap_or_else(|| oid.to_string())
    }
}

/// Loads the graph in the current transaction.
pub(super) async fn load_reach(client: &Client) -> Result<Reach, CatalogError> {
    let mut reach = Reach::default();
    let rls = load_relations(client, &mut reach).await?;
    let rowtypes = load_types(client, &mut reach).await?;
    load_functions(client, &mut reach).await?;
    load_operators(client, &mut reach).await?;
    load_casts(client, &mut reach).await?;
    load_column_types(client, &mut reach, &rowtypes).await?;
    load_expressions(client, &mut reach, &rls).await?;
    Ok(reach)
}

/// Relations by name; returns those with row-level security enabled
/// (policies of the others never run).
async fn load_relations(client: &Client, reach: &mut Reach) -> Result<HashMap<u32, bool>, CatalogError> {
    let q = Query {
        what: "load relations for function reach",
        sql: REACH_RELATIONS,
    };
    let mut rls = HashMap::new();
    for row in q.rows(client).await? {
        let oid: u32 = q.get(&row, 0)?;
        let name = QualifiedName::new(q.get::<String>(&row, 1)?, q.get::<String>(&row, 2)?);
        rls.insert(oid, q.get::<bool>(&row, 4)?);
        if q.get::<String>(&row, 3)? != "c" {
            reach
                .relations
                .entry(name.schema.clone())
                .or_default()
                .insert(name.name.clone(), oid);
        }
        for access in WRITES {
            reach.edge(
                Node::Relation(oid, access),
                Node::Relation(oid, Access::Read),
                String::new(),
            );
        }
        let parents: Vec<u32> = q.get(&row, 5)?;
        for parent in parents {
            let via = format!("partition or child {name}");
            for access in [Access::Insert, Access::Update] {
                reach.edge(Node::Relation(parent, access), Node::Relation(oid, access), via.clone());
            }
        }
        reach.names.insert(oid, name);
    }
    Ok(rls)
}

/// Returns the composite types by their relation (a table's row type
/// included).
async fn load_types(client: &Client, reach: &mut Reach) -> Result<HashMap<u32, u32>, CatalogError> {
    let q = Query {
        what: "load types for function reach",
        sql: REACH_TYPES,
    };
    let mut composites = HashMap::new();
    for row in q.rows(client).await? {
        let oid: u32 = q.get(&row, 0)?;
        let name = QualifiedName::new(q.get::<String>(&row, 1)?, q.get::<String>(&row, 2)?);
        let base: u32 = q.get(&row, 4)?;
        let relid: u32 = q.get(&row, 5)?;
        let elem: u32 = q.get(&row, 6)?;
        if base != 0 {
            reach.edge(Node::Type(oid), Node::Type(base), format!("domain {name}"));
        }
        if elem != 0 {
            reach.edge(Node::Type(oid), Node::Type(elem), String::new());
        }
        if relid != 0 {
            composites.insert(relid, oid);
        }
        reach
            .types
            .entry(name.schema.clone())
            .or_default()
            .insert(name.name.clone(), oid);
        reach.names.insert(oid, name);
    }
    Ok(composites)
}

async fn load_functions(client: &Client, reach: &mut Reach) -> Result<(), CatalogError> {
    let q = Query {
        what: "load functions for function reach",
        sql: REACH_FUNCTIONS,
    };
    for row in q.rows(client).await? {
        let oid: u32 = q.get(&row, 0)?;
        let name = QualifiedName::new(q.get::<String>(&row, 1)?, q.get::<String>(&row, 2)?);
        let volatility = match q.get::<String>(&row, 4)?.as_str() {
            "i" => Volatility::Immutable,
            "s" => Volatility::Stable,
            "v" => Volatility::Volatile,
            other => return Err(CatalogError::unexpected("pg_proc.provolatile", other, &name)),
        };
        reach.functions_by_name.entry(name.name.clone()).or_default().push(oid);
        reach.functions.insert(
            oid,
            ReachFunction {
                arguments: q.get(&row, 3)?,
                volatility,
                name,
            },
        );
    }
    Ok(())
}

async fn load_operators(client: &Client, reach: &mut Reach) -> Result<(), CatalogError> {
    let q = Query {
        what: "load operators for function reach",
        sql: REACH_OPERATORS,
    };
    for row in q.rows(client).await? {
        let oid: u32 = q.get(&row, 0)?;
        let symbol: String = q.get(&row, 1)?;
        let code: u32 = q.get(&row, 2)?;
        reach.edge(Node::Operator(oid), Node::Function(code), String::new());
        reach.operators.entry(symbol).or_default().push(oid);
    }
    Ok(())
}

async fn load_casts(client: &Client, reach: &mut Reach) -> Result<(), CatalogError> {
    let q = Query {
        what: "load casts for function reach",
        sql: REACH_CASTS,
    };
    for row in q.rows(client).await? {
        let target: u32 = q.get(&row, 0)?;
        let function: u32 = q.get(&row, 1)?;
        let via = format!("cast to {}", reach.name_of(target));
        reach.edge(Node::Type(target), Node::Function(function), via);
    }
    Ok(())
}

/// A column of a user type: writing it coerces to the type (domain checks),
/// and an insert that omits it may run the domain's default.
/// A value coerced to a composite type (a table's row type too) coerces
/// its fields: the row type leads to its columns' types, not to the
/// table's defaults and checks.
async fn load_column_types(
    client: &Client,
    reach: &mut Reach,
    rowtypes: &HashMap<u32, u32>,
) -> Result<(), CatalogError> {
    let q = Query {
        what: "load typed columns for function reach",
        sql: REACH_COLUMN_TYPES,
    };
    for row in q.rows(client).await? {
        let relid: u32 = q.get(&row, 0)?;
        let column: String = q.get(&row, 1)?;
        let type_oid: u32 = q.get(&row, 2)?;
        let via = format!(
            "column {}.{} ({})",
            reach.name_of(relid),
            super::quote_ident(&column),
            reach.name_of(type_oid)
        );
        for access in [Access::Insert, Access::Update] {
            reach.edge(Node::Relation(relid, access), Node::Type(type_oid), via.clone());
        }
        if let Some(&rowtype) = rowtypes.get(&relid) {
            reach.edge(Node::Type(rowtype), Node::Type(type_oid), via);
        }
    }
    Ok(())
}

/// The node an expression's reference leads to, if it can run anything.
/// A relation referenced in an expression is read (a view's FROM list, a
/// subquery in a policy).
fn referenced(class: &str, oid: u32) -> Option<Node> {
    Some(match class {
        "pg_proc" => Node::Function(oid),
        "pg_operator" => Node::Operator(oid),
        "pg_type" => Node::Type(oid),
        "pg_class" => Node::Relation(oid, Access::Read),
        _ => return None,
    })
}

/// The expressions' references (pg_depend), then their calls of built-in
/// writers (stored trees); both come back in the same shape.
async fn load_expressions(client: &Client, reach: &mut Reach, rls: &HashMap<u32, bool>) -> Result<(), CatalogError> {
    let q = Query {
        what: "load expression dependencies for function reach",
        sql: REACH_EXPRESSIONS,
    };
    let rows = q.rows(client).await?;
    add_expressions(&q, rows, reach, rls)?;
    let q = Query {
        what: "load built-in writer calls for function reach",
        sql: REACH_WRITER_CALLS,
    };
    let writers: Vec<String> = BUILTIN_WRITERS.iter().map(|s| s.to_string()).collect();
    let rows = client
        .query(q.sql, &[&writers])
        .await
        .map_err(|e| CatalogError::query(q.what, q.sql, e))?;
    add_expressions(&q, rows, reach, rls)
}

fn add_expressions(
    q: &Query<'_>,
    rows: Vec<tokio_postgres::Row>,
    reach: &mut Reach,
    rls: &HashMap<u32, bool>,
) -> Result<(), CatalogError> {
    for row in rows {
        let kind: String = q.get(&row, 0)?;
        let relid: u32 = q.get(&row, 1)?;
        let typid: u32 = q.get(&row, 2)?;
        let label: String = q.get(&row, 3)?;
        let cmd: String = q.get(&row, 4)?;
        let class: String = q.get(&row, 5)?;
        let oid: u32 = q.get(&row, 6)?;
        let owner: u32 = q.get(&row, 7)?;
        let writer: String = q.get(&row, 8)?;
        if !writer.is_empty() {
            reach.writers.insert(oid, writer);
        }
        let rel = reach.name_of(relid);
        let (from, via): (Vec<Node>, String) = match kind.as_str() {
            "view" => (vec![Node::Relation(relid, Access::Read)], format!("view {rel}")),
            "default" => {
                let what = if cmd == "s" { "generated column" } else { "default of" };
                let via = format!("{what} {rel}.{}", super::quote_ident(&label));
                (
                    vec![
                        Node::Relation(relid, Access::Insert),
                        Node::Relation(relid, Access::Update),
                    ],
                    via,
                )
            }
            "check" if typid != 0 => (
                vec![Node::Type(typid)],
                format!(
                    "check constraint {} of domain {}",
                    super::quote_ident(&label),
                    reach.name_of(typid)
                ),
            ),
            "check" => (
                vec![
                    Node::Relation(relid, Access::Insert),
                    Node::Relation(relid, Access::Update),
                ],
                format!("check constraint {} on {rel}", super::quote_ident(&label)),
            ),
            "policy" if rls.get(&relid).copied().unwrap_or(false) => {
                let accesses: &[Access] = match cmd.as_str() {
                    "r" => &[Access::Read],
                    "a" => &[Access::Insert],
                    "w" => &[Access::Update],
                    "d" => &[Access::Delete],
                    _ => &[Access::Read, Access::Insert, Access::Update, Access::Delete],
                };
                let via = format!("policy {} on {rel}", super::quote_ident(&label));
                (accesses.iter().map(|&a| Node::Relation(relid, a)).collect(), via)
            }
            "type" => (vec![Node::Type(typid)], format!("domain {}", reach.name_of(typid))),
            // A SQL-standard body: follow the functions and relations it
            // uses, not its argument and result types.
            "function" if class == "pg_proc" || class == "pg_class" => (vec![Node::Function(owner)], String::new()),
            _ => continue,
        };
        for from in from {
            let Some(to) = referenced(&class, oid) else {
                continue;
            };
            if from == to {
                continue;
            }
            reach.edge(from, to, via.clone());
        }
    }
    Ok(())
}
