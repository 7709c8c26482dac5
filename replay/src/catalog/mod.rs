//! Catalog introspection: one consistent snapshot of the tables, keys,
//! foreign keys, triggers, rules, functions and sequences of a database's
//! user schemas, with cheap lookups. Capture asks it for each table's key and
//! whether a statement is safe; the replayer and mapping validation use it
//! to follow foreign keys and check columns.
//!
//! Names are raw catalog names (case-sensitive, unquoted): callers fold
//! unquoted SQL identifiers to lower case before looking them up, and quote
//! names with [`quote_ident`] / [`QualifiedName::qualified`] when writing SQL.

mod cache;
mod error;
mod ident;
mod load;
mod load_reach;
mod lookup;
mod reach;
mod sql;
mod types;

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

pub use cache::{CacheStats, CatalogCache, CatalogHealth};
pub use error::CatalogError;
pub use ident::{parse_search_path, quote_ident, quote_qualified};
pub use lookup::{LookedUp, TableLookup};
pub use reach::{Access, Reach, Reached, BUILTIN_WRITERS};
pub use types::{
    Column, ColumnRef, FkAction, ForeignKey, Function, Generated, Identity, Key, KeySource, QualifiedName, Rule,
    RuleEvent, Sequence, Table, TableKind, Trigger, TriggerFiring, TriggerTiming, Volatility,
};

/// The search path used when the caller has none: PostgreSQL's default.
pub const DEFAULT_SEARCH_PATH: &[&str] = &["$user", "public"];

/// A snapshot of a database's user-schema catalog, taken in one
/// repeatable-read transaction by [`Catalog::load`]. Immutable; refresh by
/// loading a new one (see [`CatalogCache`]).
#[derive(Clone, Debug)]
pub struct Catalog {
    tables: Vec<Table>,
    /// schema -> name -> index in `tables`.
    by_name: HashMap<String, HashMap<String, usize>>,
    by_oid: HashMap<u32, usize>,
    foreign_keys: Vec<ForeignKey>,
    functions: Vec<Function>,
    /// Function name -> indexes in `functions`, over all schemas.
    functions_by_name: HashMap<String, Vec<usize>>,
    sequences: Vec<Sequence>,
    current_user: String,
    server_version_num: i32,
    loaded_at: SystemTime,
    /// What relations, types, operators and functions can run unnamed.
    reach: Reach,
}

impl Catalog {
    /// Builds the lookup indexes over loaded objects.
    fn new(
        tables: Vec<Table>,
        foreign_keys: Vec<ForeignKey>,
        functions: Vec<Function>,
        sequences: Vec<Sequence>,
        current_user: String,
        server_version_num: i32,
    ) -> Catalog {
        let mut by_name: HashMap<String, HashMap<String, usize>> = HashMap::new();
        let mut by_oid = HashMap::with_capacity(tables.len());
        for (i, t) in tables.iter().enumerate() {
            by_name
                .entry(t.name.schema.clone())
                .or_default()
                .insert(t.name.name.clone(), i);
            by_oid.insert(t.oid, i);
        }
        let mut functions_by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, f) in functions.iter().enumerate() {
            functions_by_name.entry(f.name.name.clone()).or_default().push(i);
        }
        Catalog {
            tables,
            by_name,
            by_oid,
            foreign_keys,
            functions,
            functions_by_name,
            sequences,
            current_user,
            server_version_num,
            loaded_at: SystemTime::now(),
            reach: Reach::default(),
        }
    }

    /// The catalog with its function-reach graph.
    fn with_reach(mut self, reach: Reach) -> Catalog {
        self.reach = reach;
        self
    }

    /// A catalog of just these tables, for tests of code that reads catalogs.
    #[cfg(test)]
    pub(crate) fn for_tests(tables: Vec<Table>) -> Catalog {
        Catalog::new(tables, Vec::new(), Vec::new(), Vec::new(), "postgres".into(), 150000)
    }

    /// All tables, ordered by schema then name.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// All declared foreign keys, ordered by child table then name.
    pub fn foreign_keys(&self) -> &[ForeignKey] {
        &self.foreign_keys
    }

    /// All user functions, ordered by schema, name and arguments.
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// All sequences in user schemas, ordered by schema then name.
    pub fn sequences(&self) -> &[Sequence] {
        &self.sequences
    }

    /// The role the snapshot was loaded as; what `$user` in a search path
    /// resolves to.
    pub fn current_user(&self) -> &str {
        &self.current_user
    }

    /// The server's `server_version_num` (150004 for 15.4).
    pub fn server_version_num(&self) -> i32 {
        self.server_version_num
    }

    /// When the snapshot was taken (client clock).
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// The table `schema.name`, exactly.
    pub fn table_exact(&self, schema: &str, name: &str) -> Option<&Table> {
        let i = *self.by_name.get(schema)?.get(name)?;
        self.tables.get(i)
    }

    /// The table with this `pg_class` oid.
    pub fn table_by_oid(&self, oid: u32) -> Option<&Table> {
        self.tables.get(*self.by_oid.get(&oid)?)
    }

    /// Resolves a table name as the server would: a qualified name directly;
    /// an unqualified one through `search_path` (first schema holding it
    /// wins), where `$user` means [`Catalog::current_user`] and an empty
    /// path means [`DEFAULT_SEARCH_PATH`]. `pg_catalog` and `pg_temp` entries
    /// hold no user tables and are skipped: session temp tables, which the
    /// server finds first, are the caller's to track.
    pub fn table(&self, schema: Option<&str>, name: &str, search_path: &[String]) -> Option<&Table> {
        if let Some(schema) = schema {
            return self.table_exact(schema, name);
        }
        if search_path.is_empty() {
            return DEFAULT_SEARCH_PATH
                .iter()
                .find_map(|s| self.table_in_path_entry(s, name));
        }
        search_path.iter().find_map(|s| self.table_in_path_entry(s, name))
    }

    fn table_in_path_entry(&self, entry: &str, name: &str) -> Option<&Table> {
        let schema = match entry {
            "$user" => self.current_user.as_str(),
            s => s,
        };
        self.table_exact(schema, name)
    }

    /// The replica key of the table [`Catalog::table`] resolves, if it has one.
    pub fn key_of(&self, schema: Option<&str>, name: &str, search_path: &[String]) -> Option<&Key> {
        self.table(schema, name, search_path)?.key.as_ref()
    }

    /// The foreign keys that reference `parent` (whose rows a delete or
    /// re-key of `parent` can cascade to).
    pub fn referencing(&self, parent: &QualifiedName) -> Vec<&ForeignKey> {
        self.foreign_keys.iter().filter(|fk| &fk.parent == parent).collect()
    }

    /// The foreign keys declared on `child`.
    pub fn foreign_keys_of(&self, child: &QualifiedName) -> Vec<&ForeignKey> {
        self.foreign_keys.iter().filter(|fk| &fk.child == child).collect()
    }

    /// The volatility of user functions named `name` in any user schema; for
    /// overloads (or the same name in several schemas) the most dangerous
    /// one, since the caller cannot tell which is called. `None` if no user
    /// function has that name (built-ins are not listed).
    pub fn function_volatility(&self, name: &str) -> Option<Volatility> {
        self.functions_by_name
            .get(name)?
            .iter()
            .map(|&i| self.functions[i].volatility)
            .max()
    }

    /// Like [`Catalog::function_volatility`], restricted to one schema.
    pub fn function_volatility_in(&self, schema: &str, name: &str) -> Option<Volatility> {
        self.functions_by_name
            .get(name)?
            .iter()
            .map(|&i| &self.functions[i])
            .filter(|f| f.name.schema == schema)
            .map(|f| f.volatility)
            .max()
    }

    /// Whether calling `name` may write: some user function of that name is
    /// volatile.
    pub fn is_volatile(&self, name: &str) -> bool {
        self.function_volatility(name) == Some(Volatility::Volatile)
    }

    /// A function that may write what capture cannot see (user VOLATILE,
    /// not in `read_only`; or a built-in writer, see [`BUILTIN_WRITERS`])
    /// that using relation `schema.name` this way runs unnamed: through a
    /// view's definition (and the views it reads), a row-level security
    /// policy, a column default or generation expression, a check
    /// constraint, a column's domain (its checks and default). Resolved on
    /// `search_path` like [`Catalog::table`]; `None` for unknown names.
    pub fn relation_reaches(
        &self,
        schema: Option<&str>,
        name: &str,
        access: Access,
        search_path: &[String],
        read_only: &HashSet<QualifiedName>,
    ) -> Option<Reached> {
        self.reach
            .relation((schema, name), access, search_path, &self.current_user, read_only)
    }

    /// Like [`Catalog::relation_reaches`], for a cast to the user type
    /// `schema.name` (or a function-style cast `name(x)`): user casts to
    /// it, its domain checks and default, its base and element types, its
    /// fields' types.
    pub fn cast_reaches(
        &self,
        schema: Option<&str>,
        name: &str,
        search_path: &[String],
        read_only: &HashSet<QualifiedName>,
    ) -> Option<Reached> {
        self.reach
            .cast_to((schema, name), search_path, &self.current_user, read_only)
    }

    /// Like [`Catalog::relation_reaches`], for an operator symbol: any user
    /// operator with that symbol (operand types are not resolved).
    pub fn operator_reaches(&self, symbol: &str, read_only: &HashSet<QualifiedName>) -> Option<Reached> {
        self.reach.operator(symbol, read_only)
    }

    /// Like [`Catalog::relation_reaches`], for a function called by name:
    /// the user functions of that name (any overload; in `schema` if
    /// given, else in any schema), what their SQL-standard bodies use, or
    /// a built-in writer of that name.
    pub fn function_reaches(
        &self,
        schema: Option<&str>,
        name: &str,
        read_only: &HashSet<QualifiedName>,
    ) -> Option<Reached> {
        self.reach.function((schema, name), read_only)
    }

    /// Whether a user function `schema.name` exists (for checking the
    /// read-only list).
    pub fn has_function(&self, name: &QualifiedName) -> bool {
        self.reach.knows_function(name)
    }

    /// The sequence `schema.name`.
    pub fn sequence(&self, schema: &str, name: &str) -> Option<&Sequence> {
        self.sequences
            .iter()
            .find(|s| s.name.schema == schema && s.name.name == name)
    }

    /// The sequences owned by columns of `table`.
    pub fn sequences_of(&self, table: &QualifiedName) -> Vec<&Sequence> {
        self.sequences
            .iter()
            .filter(|s| s.owned_by.as_ref().is_some_and(|o| &o.table == table))
            .collect()
    }
}
