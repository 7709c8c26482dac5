//! The catalog queries [`Catalog::load`](super::Catalog::load) runs, one per
//! kind of object, all restricted to user schemas.

/// `WHERE` clause keeping user schemas, for the namespace alias `$n`: not
/// the system schemas, not TOAST or temp schemas (`pg_toast`,
/// `pg_toast_temp_N`, `pg_temp_N`; users cannot create `pg_*` schemas).
macro_rules! user_schema {
    ($n:literal) => {
        concat!(
            $n,
            ".nspname NOT IN ('pg_catalog', 'information_schema') AND ",
            $n,
            ".nspname !~ '^pg_(toast|temp_)'"
        )
    };
}

// The queries name catalogs unqualified; a search_path that puts a user
// schema before pg_catalog could shadow them, so the snapshot pins it.
pub(super) const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL search_path = pg_catalog";

pub(super) const SESSION: &str = "SELECT current_user::text, current_setting('server_version_num')::int4";

pub(super) const TABLES: &str = concat!(
    "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relispartition, ",
    "pn.nspname::text, pc.relname::text ",
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace ",
    "LEFT JOIN pg_inherits i ON c.relispartition AND i.inhrelid = c.oid ",
    "LEFT JOIN pg_class pc ON pc.oid = i.inhparent ",
    "LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace ",
    "WHERE c.relkind IN ('r', 'p') AND ",
    user_schema!("n"),
    " ORDER BY n.nspname, c.relname"
);

// atthasdef is also true for generated columns (their expression lives in
// pg_attrdef too), hence the split on attgenerated.
pub(super) const COLUMNS: &str = concat!(
    "SELECT a.attrelid, a.attnum, a.attname::text, format_type(a.atttypid, a.atttypmod), ",
    "a.attnotnull, a.attidentity::text, a.attgenerated::text, pg_get_expr(d.adbin, d.adrelid) ",
    "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid ",
    "JOIN pg_namespace n ON n.oid = c.relnamespace ",
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum ",
    "WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND ",
    user_schema!("n"),
    " ORDER BY a.attrelid, a.attnum"
);

// Candidate keys: the primary key and unique indexes that are valid, not
// partial and on plain columns only (INCLUDE columns are not part of the key).
pub(super) const KEYS: &str = concat!(
    "SELECT i.indrelid, ic.relname::text, i.indisprimary, ",
    "array(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ",
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ",
    "WHERE k.ord <= i.indnkeyatts ORDER BY k.ord) ",
    "FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid ",
    "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace ",
    "WHERE i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL ",
    "AND NOT (0 = ANY (i.indkey::int2[])) AND c.relkind IN ('r', 'p') AND ",
    user_schema!("n"),
    " ORDER BY i.indrelid, ic.relname"
);

pub(super) const TRIGGERS: &str = concat!(
    "SELECT t.tgrelid, t.tgname::text, t.tgtype::int4, t.tgenabled::text, ",
    "pn.nspname::text, p.proname::text ",
    "FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid ",
    "JOIN pg_namespace pn ON pn.oid = p.pronamespace ",
    "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace ",
    "WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND c.relkind IN ('r', 'p') AND ",
    user_schema!("n"),
    " ORDER BY t.tgrelid, t.tgname"
);

pub(super) const RULES: &str = concat!(
    "SELECT r.ev_class, r.rulename::text, r.ev_type::text, r.is_instead ",
    "FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class ",
    "JOIN pg_namespace n ON n.oid = c.relnamespace ",
    "WHERE r.ev_enabled <> 'D' AND c.relkind IN ('r', 'p') AND ",
    user_schema!("n"),
    " ORDER BY r.ev_class, r.rulename"
);

/// Builds the foreign-key query; `ON DELETE SET NULL (cols)` exists from
/// PostgreSQL 15 on. Clones on partitions (`conparentid <> 0`) are skipped.
pub(super) fn foreign_keys_sql(server_version_num: i32) -> String {
    let names = |attnums: &str, rel: &str| {
        format!(
            "array(SELECT a.attname::text FROM unnest({attnums}) WITH ORDINALITY k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = {rel} AND a.attnum = k.attnum ORDER BY k.ord)"
        )
    };
    let set_columns = if server_version_num >= 150000 {
        names("con.confdelsetcols", "con.conrelid")
    } else {
        "'{}'::text[]".to_owned()
    };
    format!(
        "SELECT con.conname::text, n.nspname::text, c.relname::text, {}, \
         pn.nspname::text, pc.relname::text, {}, con.confdeltype::text, con.confupdtype::text, {} \
         FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_class pc ON pc.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace \
         WHERE con.contype = 'f' AND con.conparentid = 0 AND {} \
         ORDER BY n.nspname, c.relname, con.conname",
        names("con.conkey", "con.conrelid"),
        names("con.confkey", "con.confrelid"),
        set_columns,
        user_schema!("n"),
    )
}

pub(super) const FUNCTIONS: &str = concat!(
    "SELECT n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid), ",
    "p.provolatile::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE ",
    user_schema!("n"),
    " ORDER BY 1, 2, 3"
);

// Owned sequences depend on their column: 'a' (serial, OWNED BY) or 'i'
// (identity).
pub(super) const SEQUENCES: &str = concat!(
    "SELECT n.nspname::text, s.relname::text, tn.nspname::text, t.relname::text, a.attname::text ",
    "FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace ",
    "LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid ",
    "AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i') ",
    "LEFT JOIN pg_class t ON t.oid = d.refobjid ",
    "LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace ",
    "LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid ",
    "WHERE s.relkind = 'S' AND ",
    user_schema!("n"),
    " ORDER BY 1, 2"
);

// What can reach a function without naming it (see `reach.rs`). Objects
// created by initdb are pinned and have no pg_depend rows, so these find
// only user objects and user functions; built-in functions that write (the
// `writers` list) are found in the expression trees instead.

/// User relations a statement can name, with row-level security state.
/// With their inheritance parents: a write through a parent writes its
/// partitions or children, whose checks and domains apply.
pub(super) const REACH_RELATIONS: &str = concat!(
    "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relrowsecurity, ",
    "coalesce(array_agg(i.inhparent) FILTER (WHERE i.inhparent IS NOT NULL), '{}') ",
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace ",
    "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid ",
    "WHERE c.relkind IN ('r', 'p', 'v', 'f', 'c') AND ",
    user_schema!("n"),
    " GROUP BY 1, 2, 3, 4, 5"
);

/// User types: domains (base type), composites (their relation), arrays
/// (element type).
pub(super) const REACH_TYPES: &str = concat!(
    "SELECT t.oid, n.nspname::text, t.typname::text, t.typtype::text, t.typbasetype, t.typrelid, t.typelem ",
    "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE ",
    user_schema!("n")
);

/// Columns whose type is a user type (a domain, a composite, an array).
pub(super) const REACH_COLUMN_TYPES: &str = concat!(
    "SELECT a.attrelid, a.attname::text, a.atttypid ",
    "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid ",
    "JOIN pg_namespace n ON n.oid = t.typnamespace ",
    "WHERE a.attnum > 0 AND NOT a.attisdropped AND ",
    user_schema!("n")
);

/// User functions by oid, with their volatility.
pub(super) const REACH_FUNCTIONS: &str = concat!(
    "SELECT p.oid, n.nspname::text, p.proname::text, pg_get_function_identity_arguments(p.oid), ",
    "p.provolatile::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE ",
    user_schema!("n")
);

/// User operators and the function each runs.
pub(super) const REACH_OPERATORS: &str = concat!(
    "SELECT o.oid, o.oprname::text, o.oprcode::oid FROM pg_operator o ",
    "JOIN pg_namespace n ON n.oid = o.oprnamespace WHERE o.oprcode <> 0 AND ",
    user_schema!("n")
);

/// User-defined casts run by a function (oids from 16384 on are not
/// initdb's), by target type.
pub(super) const REACH_CASTS: &str =
    "SELECT c.casttarget, c.castfunc FROM pg_cast c WHERE c.castfunc <> 0 AND c.oid >= 16384";

/// `WITH owners (...)`: every expression that runs when a relation or type
/// is used: a view's definition (its ON SELECT rule), a column default or
/// generation expression, a check constraint of a table or a domain, a
/// policy, a domain default (and base type), a SQL-standard function body;
/// with its stored tree as text (PostgreSQL inlines a CTE used once, so a
/// query that does not read `expr` does not pay for it).
macro_rules! reach_owners {
    () => {
        concat!(
            "WITH owners(kind, relid, typid, label, cmd, classid, objid, expr) AS (",
            "SELECT 'view', r.ev_class, 0::oid, '', '', 'pg_rewrite'::regclass, r.oid, r.ev_action::text ",
            "FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace ",
            "WHERE r.ev_type = '1' AND c.relkind = 'v' AND ",
            user_schema!("n"),
            " UNION ALL ",
            "SELECT 'default', d.adrelid, 0::oid, a.attname::text, a.attgenerated::text, 'pg_attrdef'::regclass, ",
            "d.oid, d.adbin::text FROM pg_attrdef d ",
            "JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum ",
            "JOIN pg_class c ON c.oid = d.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ",
            user_schema!("n"),
            " UNION ALL ",
            "SELECT 'check', k.conrelid, k.contypid, k.conname::text, '', 'pg_constraint'::regclass, k.oid, ",
            "coalesce(k.conbin::text, '') FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace ",
            "WHERE k.contype = 'c' AND ",
            user_schema!("n"),
            " UNION ALL ",
            "SELECT 'policy', p.polrelid, 0::oid, p.polname::text, p.polcmd::text, 'pg_policy'::regclass, p.oid, ",
            "coalesce(p.polqual::text, '') || coalesce(p.polwithcheck::text, '') FROM pg_policy p ",
            "JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE ",
            user_schema!("n"),
            " UNION ALL ",
            "SELECT 'type', 0::oid, t.oid, '', '', 'pg_type'::regclass, t.oid, coalesce(t.typdefaultbin::text, '') ",
            "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype = 'd' AND ",
            user_schema!("n"),
            " UNION ALL ",
            "SELECT 'function', 0::oid, 0::oid, '', '', 'pg_proc'::regclass, p.oid, '' ",
            "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE ",
            user_schema!("n"),
            ") "
        )
    };
}

/// What each expression of `owners` references, from pg_depend. Columns:
/// owner kind, relation, type, name, policy command or attgenerated,
/// referenced catalog, referenced oid, owner oid, and (always empty here)
/// the name of a referenced built-in writer.
pub(super) const REACH_EXPRESSIONS: &str = concat!(
    reach_owners!(),
    "SELECT o.kind, o.relid, o.typid, o.label, o.cmd, d.refclassid::regclass::text, d.refobjid, o.objid, '' ",
    "FROM owners o JOIN pg_depend d ON d.classid = o.classid AND d.objid = o.objid AND d.deptype = 'n' ",
    "WHERE d.refclassid IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_type'::regclass, ",
    "'pg_class'::regclass)"
);

/// The built-in writers (`$1`, names in pg_catalog) each expression of
/// `owners` calls, found as `:funcid N ` in its stored tree, since
/// pg_depend does not record pinned objects. Same columns as
/// [`REACH_EXPRESSIONS`].
pub(super) const REACH_WRITER_CALLS: &str = concat!(
    reach_owners!(),
    ", writers AS (SELECT oid, proname::text FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace ",
    "AND proname = ANY($1::text[])), ",
    "pattern AS (SELECT ':funcid (' || coalesce(string_agg(oid::text, '|'), '0') || ') ' AS re FROM writers) ",
    "SELECT o.kind, o.relid, o.typid, o.label, o.cmd, 'pg_proc', w.oid, o.objid, w.proname ",
    "FROM owners o CROSS JOIN pattern JOIN writers w ON strpos(o.expr, ':funcid ' || w.oid || ' ') > 0 ",
    "WHERE o.expr ~ pattern.re"
);
