//! Unit tests for the classifier: reads, writes, splice points and the
//! splice itself (checked to re-parse with sqlparser where it can).

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::*;

/// Classifies a single statement, with its [`Refs`] cleared (see
/// [`refs_of`]) so that tests of other facts need not spell them.
pub(super) fn one(sql: &str) -> Class {
    without_refs(one_with_refs(sql))
}

/// `class` with its [`Refs`] cleared.
pub(super) fn without_refs(mut class: Class) -> Class {
    match &mut class {
        Class::Read { refs, .. } => *refs = Refs::default(),
        Class::Write(w) => w.refs = Refs::default(),
        _ => {}
    }
    class
}

/// Classifies a single statement.
pub(super) fn one_with_refs(sql: &str) -> Class {
    let mut v = classify(sql);
    assert_eq!(v.len(), 1, "expected one statement in {sql:?}: {v:?}");
    v.pop().unwrap().class
}

/// The references of a single read or write.
pub(super) fn refs_of(sql: &str) -> Refs {
    match one_with_refs(sql) {
        Class::Read { refs, .. } => refs,
        Class::Write(w) => w.refs,
        other => panic!("neither read nor write: {sql:?} -> {other:?}"),
    }
}

/// Classifies a single statement that must be a capturable write.
pub(super) fn write(sql: &str) -> WriteStmt {
    match one(sql) {
        Class::Write(w) => w,
        other => panic!("not a write: {sql:?} -> {other:?}"),
    }
}

/// Splices `keys` into the single write of `sql`.
pub(super) fn spliced(sql: &str, keys: &[&str]) -> String {
    splice_returning(sql, &write(sql), keys)
}

pub(super) fn parses(sql: &str) -> bool {
    Parser::parse_sql(&PostgreSqlDialect {}, sql).is_ok()
}

pub(super) fn reads(functions: &[&str]) -> Class {
    Class::Read {
        functions: functions.iter().map(|f| QualName::bare(f)).collect(),
        refs: Refs::default(),
    }
}

#[test]
fn plain_select_is_read() {
    assert_eq!(one("SELECT 1"), reads(&[]));
    assert_eq!(one("select a from t where b = 2"), reads(&[]));
    assert_eq!(one("VALUES (1), (2)"), reads(&[]));
    assert_eq!(one("TABLE t"), reads(&[]));
    assert_eq!(one("(SELECT 1) UNION (SELECT 2)"), reads(&[]));
}

#[test]
fn select_collects_functions() {
    assert_eq!(
        one("SELECT now(), my_fn(a), s.f(1) FROM generate_series(1, 3) g"),
        Class::Read {
            functions: vec![
                QualName::bare("now"),
                QualName::bare("my_fn"),
                QualName::qualified("s", "f"),
                QualName::bare("generate_series"),
            ],
            refs: Refs::default(),
        }
    );
    assert_eq!(one("SELECT \"MyFn\"(1), MyFn(2)"), reads(&["MyFn", "myfn"]));
}

#[test]
fn select_for_update_is_read() {
    assert_eq!(one("SELECT * FROM t WHERE id = 1 FOR UPDATE"), reads(&[]));
    assert_eq!(one("SELECT * FROM t FOR SHARE SKIP LOCKED"), reads(&[]));
    assert_eq!(one("SELECT * FROM t FOR NO KEY UPDATE"), reads(&[]));
    assert_eq!(one("SELECT * FROM t FOR KEY SHARE OF t NOWAIT"), reads(&[]));
}

#[test]
fn select_into_is_unsafe() {
    assert_eq!(one("SELECT * INTO newt FROM t"), Class::Unsafe(UnsafeKind::SelectInto));
}

#[test]
fn insert_basic() {
    let w = write("INSERT INTO t (a, b) VALUES (1, 2)");
    assert_eq!(w.kind, WriteKind::Insert);
    assert_eq!(w.table, QualName::bare("t"));
    assert_eq!(w.alias, None);
    assert!(!w.has_returning);
    assert!(!w.on_conflict);
    assert_eq!(w.splice_at, "INSERT INTO t (a, b) VALUES (1, 2)".len());
    assert_eq!(
        spliced("INSERT INTO t (a, b) VALUES (1, 2)", &["id"]),
        "INSERT INTO t (a, b) VALUES (1, 2) RETURNING \"t\".\"id\""
    );
}

#[test]
fn insert_select_and_functions() {
    let sql = "INSERT INTO t SELECT nextval('s'), x FROM src WHERE y > now()";
    let w = write(sql);
    assert_eq!(w.table, QualName::bare("t"));
    assert_eq!(w.functions, vec![QualName::bare("nextval"), QualName::bare("now")]);
    let out = spliced(sql, &["id"]);
    assert!(out.ends_with("now() RETURNING \"t\".\"id\""), "{out}");
    assert!(parses(&out));
}

#[test]
fn insert_on_conflict() {
    let sql = "INSERT INTO t (id, v) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET v = excluded.v, w = 2";
    let w = write(sql);
    assert!(w.on_conflict);
    assert_eq!(w.assigned_columns, vec!["v", "w"]);
    assert!(!w.assigns_any(&["id"]));
    assert!(parses(&spliced(sql, &["id"])));

    let w = write("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING");
    assert!(w.on_conflict);
    assert!(w.assigned_columns.is_empty());
}

#[test]
fn insert_with_alias_qualifies_by_alias() {
    let sql = "INSERT INTO t AS x VALUES (1) ON CONFLICT (id) DO UPDATE SET v = x.v + 1";
    let w = write(sql);
    assert_eq!(w.alias.as_deref(), Some("x"));
    assert!(spliced(sql, &["id"]).ends_with("x.v + 1 RETURNING \"x\".\"id\""));
}

#[test]
fn update_basic_and_alias() {
    let sql = "UPDATE t SET a = 1, b = b + 1 WHERE id = 3";
    let w = write(sql);
    assert_eq!(w.kind, WriteKind::Update);
    assert_eq!(w.assigned_columns, vec!["a", "b"]);
    assert!(w.assigns_any(&["b"]));

    let sql = "UPDATE public.t AS x SET id = id + 1 WHERE x.v = 2";
    let w = write(sql);
    assert_eq!(w.table, QualName::qualified("public", "t"));
    assert_eq!(w.alias.as_deref(), Some("x"));
    assert!(w.assigns_any(&["id"]));
    let out = spliced(sql, &["id"]);
    assert_eq!(out, format!("{sql} RETURNING \"x\".\"id\""));
    assert!(parses(&out));
}

#[test]
fn update_from_and_tuple_assignment() {
    let sql = "UPDATE t SET (a, b) = (s.a, s.b) FROM s WHERE s.id = t.id";
    let w = write(sql);
    assert_eq!(w.assigned_columns, vec!["a", "b"]);
    let out = spliced(sql, &["id", "k2"]);
    assert!(out.ends_with("s.id = t.id RETURNING \"t\".\"id\", \"t\".\"k2\""));
    assert!(parses(&out));
}

#[test]
fn delete_using_and_alias() {
    let sql = "DELETE FROM t USING s WHERE s.id = t.id";
    let w = write(sql);
    assert_eq!(w.kind, WriteKind::Delete);
    assert_eq!(w.table, QualName::bare("t"));
    assert!(parses(&spliced(sql, &["id"])));

    let w = write("DELETE FROM sch.t x WHERE x.id = 1");
    assert_eq!(w.table, QualName::qualified("sch", "t"));
    assert_eq!(w.alias.as_deref(), Some("x"));
}

#[test]
fn own_returning_gets_keys_appended() {
    let sql = "UPDATE t SET v = 2 WHERE id = 1 RETURNING v, now()";
    let w = write(sql);
    assert!(w.has_returning);
    let out = spliced(sql, &["id"]);
    assert_eq!(out, format!("{sql}, \"t\".\"id\""));
    assert!(parses(&out));

    let sql = "DELETE FROM t RETURNING *";
    assert_eq!(
        spliced(sql, &["a", "b"]),
        "DELETE FROM t RETURNING *, \"t\".\"a\", \"t\".\"b\""
    );
}

#[test]
fn quoted_and_schema_qualified_tables() {
    let w = write("INSERT INTO \"My Schema\".\"My Table\" VALUES (1)");
    assert_eq!(w.table, QualName::qualified("My Schema", "My Table"));
    let w = write("UPDATE MySchema.MyTable SET a = 1");
    assert_eq!(w.table, QualName::qualified("myschema", "mytable"));
    let w = write("DELETE FROM db.s.t");
    assert_eq!(w.table, QualName::qualified("s", "t"));
    let sql = "INSERT INTO \"My Table\" VALUES (1)";
    let out = spliced(sql, &["Id"]);
    assert_eq!(out, format!("{sql} RETURNING \"My Table\".\"Id\""));
    let sql = "INSERT INTO \"we\"\"ird\" VALUES (1)";
    let w = write(sql);
    assert_eq!(w.table.name, "we\"ird");
    assert_eq!(spliced(sql, &["id"]), format!("{sql} RETURNING \"we\"\"ird\".\"id\""));
}

#[test]
fn trailing_semicolon_whitespace_and_comments() {
    let body = "INSERT INTO t VALUES (1)";
    for tail in [
        ";",
        " ;  \n",
        " -- note\n",
        "/* c */;",
        "; -- after\n",
        "\n/* a */ -- b\n ; /* c */",
    ] {
        let sql = format!("{body}{tail}");
        let w = write(&sql);
        assert_eq!(w.splice_at, body.len(), "tail {tail:?}");
        let out = spliced(&sql, &["id"]);
        assert_eq!(out, format!("{body} RETURNING \"t\".\"id\"{tail}"));
    }
    let sql = "  /* lead */ DELETE FROM t -- why\n WHERE id = 1 -- done";
    let c = classify(sql);
    assert_eq!(&sql[c[0].range.clone()], "DELETE FROM t -- why\n WHERE id = 1");
}

#[test]
fn multibyte_text_before_the_splice_point() {
    let sql = "INSERT INTO café (nom) VALUES ('crème brûlée 🍮'), ('日本語') -- fin ✓";
    let w = write(sql);
    assert_eq!(w.table, QualName::bare("café"));
    let expected = sql.find(" -- fin").unwrap();
    assert_eq!(w.splice_at, expected);
    let out = spliced(sql, &["id"]);
    assert_eq!(
        out,
        "INSERT INTO café (nom) VALUES ('crème brûlée 🍮'), ('日本語') RETURNING \"café\".\"id\" -- fin ✓"
    );
    assert!(parses(&out));

    let sql = "SELECT 'ü';\nUPDATE t SET v = '€€€\n€' WHERE k = 'ß';";
    let c = classify(sql);
    assert_eq!(c.len(), 2);
    let Class::Write(w) = &c[1].class else { panic!("{c:?}") };
    assert_eq!(
        &sql[..w.splice_at],
        "SELECT 'ü';\nUPDATE t SET v = '€€€\n€' WHERE k = 'ß'"
    );
}

#[test]
fn dollar_quotes_and_strings_keep_semicolons() {
    let sql = "INSERT INTO t VALUES ($$a;b$$, $x$;;$x$, 'c;d', E'e\\';f'); SELECT 1";
    let c = classify(sql);
    assert_eq!(c.len(), 2, "{c:?}");
    let Class::Write(w) = &c[0].class else { panic!("{c:?}") };
    assert_eq!(
        &sql[..w.splice_at],
        "INSERT INTO t VALUES ($$a;b$$, $x$;;$x$, 'c;d', E'e\\';f')"
    );
    assert_eq!(c[1].class, reads(&[]));
}

#[test]
fn multi_statement_mixed_classes() {
    let sql = "BEGIN; INSERT INTO a VALUES (1); UPDATE b SET x = 1 RETURNING x; SAVEPOINT s1; \
               DELETE FROM c; ROLLBACK TO SAVEPOINT s1; SELECT 1; COMMIT;";
    let c = classify(sql);
    let classes: Vec<&Class> = c.iter().map(|c| &c.class).collect();
    assert_eq!(classes.len(), 8, "{c:?}");
    assert_eq!(classes[0], &Class::TxControl(TxControl::Begin));
    assert!(matches!(classes[1], Class::Write(w) if w.table.name == "a"));
    assert!(matches!(classes[2], Class::Write(w) if w.has_returning));
    assert_eq!(classes[3], &Class::TxControl(TxControl::Savepoint("s1".into())));
    assert!(matches!(classes[4], Class::Write(w) if w.kind == WriteKind::Delete));
    assert_eq!(classes[5], &Class::TxControl(TxControl::RollbackTo("s1".into())));
    assert_eq!(classes[6], &reads(&[]));
    assert_eq!(classes[7], &Class::TxControl(TxControl::Commit { chain: false }));

    let writes: Vec<&WriteStmt> = classes
        .iter()
        .filter_map(|c| match c {
            Class::Write(w) => Some(w),
            _ => None,
        })
        .collect();
    let keys: &[&str] = &["id"];
    let splices: Vec<(&WriteStmt, &[&str])> = writes.iter().rev().map(|w| (*w, keys)).collect();
    let out = splice_all(sql, &splices);
    assert_eq!(
        out,
        "BEGIN; INSERT INTO a VALUES (1) RETURNING \"a\".\"id\"; UPDATE b SET x = 1 RETURNING x, \"b\".\"id\"; \
         SAVEPOINT s1; DELETE FROM c RETURNING \"c\".\"id\"; ROLLBACK TO SAVEPOINT s1; SELECT 1; COMMIT;"
    );
    assert!(parses(&out));
}

#[test]
fn empty_statements_are_skipped() {
    assert!(classify("").is_empty());
    assert!(classify(" ;; -- nothing\n /* at all */ ;").is_empty());
    assert_eq!(classify(";SELECT 1;;").len(), 1);
}

#[test]
fn untokenizable_text_is_unparsable() {
    let c = classify("  SELECT 'unterminated ");
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].class, Class::Unsafe(UnsafeKind::Unparsable));
    assert_eq!(c[0].range, 2..22);
}

#[test]
fn references_are_collected() {
    let r = refs_of("SELECT * FROM v JOIN s.w ON true WHERE 1 ### 2 AND x::mytype = CAST(y AS s.other)");
    assert_eq!(r.relations, vec![QualName::bare("v"), QualName::qualified("s", "w")]);
    assert!(r.operators.contains(&"###".to_string()), "{r:?}");
    assert!(r.operators.contains(&"=".to_string()), "{r:?}");
    assert_eq!(
        r.types,
        vec![QualName::bare("mytype"), QualName::qualified("s", "other")]
    );
    let r = refs_of("SELECT 1 OPERATOR(s.###) 2, 'x'::int, int '1'");
    assert_eq!(r.operators, vec!["###".to_string()]);
    assert!(r.types.is_empty(), "{r:?}");
    let r = refs_of("INSERT INTO t (id) SELECT id FROM v WHERE id IN (1)");
    assert!(r.relations.contains(&QualName::bare("v")), "{r:?}");
    assert!(r.operators.contains(&"=".to_string()), "{r:?}");
}

#[test]
fn table_commands_reference_their_relation() {
    assert_eq!(refs_of("TABLE s.V").relations, vec![QualName::qualified("s", "v")]);
    let r = refs_of("TABLE \"V\" UNION TABLE w");
    assert_eq!(r.relations, vec![QualName::bare("V"), QualName::bare("w")]);
}

#[test]
fn fallback_references_are_a_superset() {
    let toks = lex::tokenize("SELECT a ### b FROM v, s.w WHERE c::mytype IS NOT NULL").unwrap();
    let r = fallback::refs(&toks);
    assert_eq!(r.relations, vec![QualName::bare("v"), QualName::qualified("s", "w")]);
    assert!(r.operators.contains(&"###".to_string()), "{r:?}");
    assert_eq!(r.types, vec![QualName::bare("mytype")]);
}
