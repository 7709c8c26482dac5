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
