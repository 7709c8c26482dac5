//! Which functions a statement can run without naming them. A view runs its
//! definition, a write runs column defaults, check constraints and domain
//! checks, a policy runs its expressions, an operator and a cast run their
//! functions. PostgreSQL refuses writes inside STABLE and IMMUTABLE SQL and
//! PL/pgSQL functions, so a user function that is VOLATILE (and not declared
//! read-only by the DBA) is where capture loses sight of what a statement
//! writes; so is a built-in function that writes large objects or runs
//! arbitrary SQL text. [`Reach`] follows the dependencies the catalog
//! records (pg_depend, pg_operator, pg_cast, pg_type), transitively, and
//! answers with the path to the first such function it finds.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::types::{QualifiedName, Volatility};
use super::DEFAULT_SEARCH_PATH;

/// Built-in functions (pg_catalog) that write what capture cannot see:
/// large objects (`pg_largeobject`, no key capture knows), and functions
/// that run SQL text given as an argument, which may call anything.
/// `lo_open` is listed whatever its mode: the mode is a run-time value.
pub const BUILTIN_WRITERS: &[&str] = &[
    "lo_creat",
    "lo_create",
    "lo_from_bytea",
    "lo_import",
    "lo_open",
    "lo_put",
    "lo_truncate",
    "lo_truncate64",
    "lo_unlink",
    "lowrite",
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "ts_rewrite",
    "ts_stat",
];

/// What a statement does with a relation it references.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Reads it: a view's definition and SELECT policies run.
    Read,
    /// Inserts into it: column defaults (the table's and its domains'),
    /// generated columns, check constraints, domain checks and INSERT
    /// policies run.
    Insert,
    /// Updates it: as an insert (a `SET c = DEFAULT` runs the default),
    /// with UPDATE policies.
    Update,
    /// Deletes from it: DELETE policies run.
    Delete,
}

/// A function a statement reaches that may write what capture cannot see,
/// and how it was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reached {
    /// The function, with its identity arguments: `public.bump()`.
    pub function: String,
    /// Why it may write: `VOLATILE`, or what the built-in writes.
    pub why: &'static str,
    /// The objects passed on the way, outermost first: `view public.v`.
    pub path: Vec<String>,
}

impl fmt::Display for Reached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{} calls ", self.path.join(" → "))?;
        } else {
            f.write_str("calls ")?;
        }
        write!(f, "{} ({})", self.function, self.why)
    }
}

/// A node of the dependency graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Node {
    /// A relation, used one way.
    Relation(u32, Access),
    /// A type a value is coerced to: its casts, domain checks and default,
    /// base type, element type, composite columns.
    Type(u32),
    /// An operator (its function).
    Operator(u32),
    /// A function: a hit if it may write, else its own dependencies
    /// (SQL-standard bodies record them).
    Function(u32),
}

/// An edge: the node it leads to and the object it passes, for the path.
#[derive(Clone, Debug)]
pub(super) struct Edge {
    pub(super) to: Node,
    pub(super) via: String,
}

/// A user function, by oid.
#[derive(Clone, Debug)]
pub(super) struct ReachFunction {
    pub(super) name: QualifiedName,
    pub(super) arguments: String,
    pub(super) volatility: Volatility,
}

/// The dependency graph of a catalog snapshot.
#[derive(Clone, Debug, Default)]
pub struct Reach {
    pub(super) edges: HashMap<Node, Vec<Edge>>,
    /// Relations by schema, then name.
    pub(super) relations: HashMap<String, HashMap<String, u32>>,
    /// User types by schema, then name.
    pub(super) types: HashMap<String, HashMap<String, u32>>,
    /// User operators by symbol.
    pub(super) operators: HashMap<String, Vec<u32>>,
    /// User functions by oid.
    pub(super) functions: HashMap<u32, ReachFunction>,
    /// User functions by name, over all schemas.
    pub(super) functions_by_name: HashMap<String, Vec<u32>>,
    /// Built-in functions that write, by oid: their names.
    pub(super) writers: HashMap<u32, String>,
    /// Names of relations and types, by oid, for paths.
    pub(super) names: HashMap<u32, QualifiedName>,
}

/// A search for a function that may write.
struct Search<'a> {
    reach: &'a Reach,
    read_only: &'a HashSet<QualifiedName>,
    seen: HashSet<Node>,
}

impl Search<'_> {
    fn hit(&self, node: Node) -> Option<Reached> {
        let Node::Function(oid) = node else { return None };
        if let Some(name) = self.reach.writers.get(&oid) {
            return Some(Reached {
                function: format!("pg_catalog.{name}"),
                why: "built-in that writes outside the tables capture sees",
                path: Vec::new(),
            });
        }
        let f = self.reach.functions.get(&oid)?;
        (f.volatility == Volatility::Volatile && !self.read_only.contains(&f.name)).then(|| Reached {
            function: format!("{}({})", f.name, f.arguments),
            why: "VOLATILE",
            path: Vec::new(),
        })
    }

    /// Depth-first from `node`; the path is filled in on the way back. A
    /// node without edges (most tables) costs one lookup and no allocation:
    /// this runs for every statement while capture is on.
    fn from(&mut self, node: Node) -> Option<Reached> {
        if let Some(hit) = self.hit(node) {
            return Some(hit);
        }
        let edges = self.reach.edges.get(&node)?;
        if !self.seen.insert(node) {
            return None;
        }
        for edge in edges {
            if let Some(mut hit) = self.from(edge.to) {
                if !edge.via.is_empty() && hit.path.first() != Some(&edge.via) {
                    hit.path.insert(0, edge.via.clone());
                }
                return Some(hit);
            }
        }
        None
    }
}

impl Reach {
    fn search<'a>(&'a self, read_only: &'a HashSet<QualifiedName>) -> Search<'a> {
        Search {
            reach: self,
            read_only,
            seen: HashSet::new(),
        }
    }

    /// Resolves `schema.name` or `name` on `search_path` in `map`, as
    /// [`super::Catalog::table`] resolves tables.
    fn resolve(
        map: &HashMap<String, HashMap<String, u32>>,
        schema: Option<&str>,
        name: &str,
        search_path: &[String],
        current_user: &str,
    ) -> Option<u32> {
        if let Some(schema) = schema {
            return map.get(schema)?.get(name).copied();
        }
        let lookup = |entry: &str| {
            let schema = if entry == "$user" { current_user } else { entry };
            map.get(schema)?.get(name).copied()
        };
        if search_path.is_empty() {
            return DEFAULT_SEARCH_PATH.iter().find_map(|s| lookup(s));
        }
        search_path.iter().find_map(|s| lookup(s))
    }

    /// A function that may write, reached by using relation `name` this way.
    pub(super) fn relation(
        &self,
        (schema, name): (Option<&str>, &str),
        access: Access,
        search_path: &[String],
        current_user: &str,
        read_only: &HashSet<QualifiedName>,
    ) -> Option<Reached> {
        let oid = Reach::resolve(&self.relations, schema, name, search_path, current_user)?;
        self.search(read_only).from(Node::Relation(oid, access))
    }

    /// A function that may write, reached by a cast to type `name`.
    pub(super) fn cast_to(
        &self,
        (schema, name): (Option<&str>, &str),
        search_path: &[String],
        current_user: &str,
        read_only: &HashSet<QualifiedName>,
    ) -> Option<Reached> {
        let oid = Reach::resolve(&self.types, schema, name, search_path, current_user)?;
        self.search(read_only).from(Node::Type(oid))
    }

    /// A function that may write, reached through an operator `symbol`.
    /// By name only: which operator runs depends on the operand types,
    /// which the classifier does not know, so every user operator with
    /// that symbol counts (conservative).
    pub(super) fn operator(&self, symbol: &str, read_only: &HashSet<QualifiedName>) -> Option<Reached> {
        let mut search = self.search(read_only);
        self.operators.get(symbol)?.iter().find_map(|&oid| {
            let mut hit = search.from(Node::Operator(oid))?;
            hit.path.insert(0, format!("operator {symbol}"));
            Some(hit)
        })
    }

    /// A function that may write among the user functions called `name`
    /// (in `schema`, else in any schema: overloads and search paths are
    /// not resolved), or among what their SQL-standard bodies reach; and
    /// the built-in writers, when no user function has the name.
    pub(super) fn function(
        &self,
        (schema, name): (Option<&str>, &str),
        read_only: &HashSet<QualifiedName>,
    ) -> Option<Reached> {
        let mut search = self.search(read_only);
        let user: Vec<u32> = self
            .functions_by_name
            .get(name)
            .into_iter()
            .flatten()
            .copied()
            .filter(|oid| schema.is_none_or(|s| self.functions.get(oid).is_some_and(|f| f.name.schema == s)))
            .collect();
        if let Some(hit) = user.iter().find_map(|&oid| search.from(Node::Function(oid))) {
            return Some(hit);
        }
        if user.is_empty() && schema.is_none_or(|s| s == "pg_catalog") && BUILTIN_WRITERS.contains(&name) {
            return Some(Reached {
                function: format!("pg_catalog.{name}"),
                why: "built-in that writes outside the tables capture sees",
                path: Vec::new(),
            });
        }
        None
    }

    /// A user function named in `read_only` lists that the catalog does
    /// not know.
    pub(super) fn knows_function(&self, name: &QualifiedName) -> bool {
        self.functions.values().any(|f| &f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Reach {
        let mut r = Reach::default();
        r.relations
            .entry("public".into())
            .or_default()
            .extend([("v2".to_string(), 2), ("v1".to_string(), 1)]);
        let edge = |to, via: &str| Edge {
            to,
            via: via.to_string(),
        };
        r.edges.insert(
            Node::Relation(2, Access::Read),
            vec![edge(Node::Relation(1, Access::Read), "view public.v2")],
        );
        r.edges.insert(
            Node::Relation(1, Access::Read),
            vec![
                edge(Node::Relation(1, Access::Read), "view public.v1"),
                edge(Node::Function(10), "view public.v1"),
            ],
        );
        r.functions.insert(
            10,
            ReachFunction {
                name: QualifiedName::new("public", "bump"),
                arguments: String::new(),
                volatility: Volatility::Volatile,
            },
        );
        r.functions_by_name.insert("bump".into(), vec![10]);
        r
    }

    #[test]
    fn follows_views_over_views_and_names_the_path() {
        let r = graph();
        let none = HashSet::new();
        let hit = r
            .relation((None, "v2"), Access::Read, &[], "postgres", &none)
            .expect("reached");
        assert_eq!(
            hit.to_string(),
            "view public.v2 → view public.v1 calls public.bump() (VOLATILE)"
        );
        assert!(r
            .relation((None, "nope"), Access::Read, &[], "postgres", &none)
            .is_none());
    }

    #[test]
    fn read_only_functions_are_not_hits() {
        let r = graph();
        let allowed: HashSet<_> = [QualifiedName::new("public", "bump")].into();
        assert!(r
            .relation((None, "v2"), Access::Read, &[], "postgres", &allowed)
            .is_none());
        assert!(r.function((Some("public"), "bump"), &allowed).is_none());
        assert!(r.function((None, "bump"), &HashSet::new()).is_some());
        assert!(r.function((Some("other"), "bump"), &HashSet::new()).is_none());
    }

    #[test]
    fn builtin_writers_are_hits_unless_shadowed() {
        let r = graph();
        let none = HashSet::new();
        let hit = r.function((None, "lo_create"), &none).expect("lo_create");
        assert!(hit.to_string().contains("pg_catalog.lo_create"), "{hit}");
        assert!(r.function((Some("pg_catalog"), "lowrite"), &none).is_some());
        assert!(r.function((None, "lo_get"), &none).is_none());
    }
}
