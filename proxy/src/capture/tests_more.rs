//! Unit tests for commands, unsafe statements and the token fallback.

use super::lex::{split_statements, tokenize};
use super::tests::{one, parses, reads, spliced, write};
use super::*;

fn unsafe_(kind: UnsafeKind) -> Class {
    Class::Unsafe(kind)
}

/// The token fallback's answer for a single DML statement.
fn by_tokens(sql: &str) -> Class {
    let toks = tokenize(sql).unwrap();
    let stmts = split_statements(&toks);
    assert_eq!(stmts.len(), 1);
    super::tests::without_refs(fallback::classify_dml(stmts[0]))
}

#[test]
fn transaction_control() {
    use TxControl::*;
    let tx = |sql: &str| match one(sql) {
        Class::TxControl(t) => t,
        other => panic!("{sql:?} -> {other:?}"),
    };
    assert_eq!(tx("BEGIN"), Begin);
    assert_eq!(tx("begin isolation level serializable"), Begin);
    assert_eq!(tx("START TRANSACTION READ ONLY"), Begin);
    assert_eq!(tx("COMMIT"), Commit { chain: false });
    assert_eq!(tx("END WORK"), Commit { chain: false });
    assert_eq!(tx("COMMIT AND CHAIN"), Commit { chain: true });
    assert_eq!(tx("COMMIT AND NO CHAIN"), Commit { chain: false });
    assert_eq!(tx("ROLLBACK"), Rollback { chain: false });
    assert_eq!(tx("ABORT AND CHAIN"), Rollback { chain: true });
    assert_eq!(tx("SAVEPOINT \"Sp 1\""), Savepoint("Sp 1".into()));
    assert_eq!(tx("ROLLBACK TO sp"), RollbackTo("sp".into()));
    assert_eq!(tx("ROLLBACK WORK TO SAVEPOINT SP"), RollbackTo("sp".into()));
    assert_eq!(tx("RELEASE sp"), Release("sp".into()));
    assert_eq!(tx("RELEASE SAVEPOINT sp"), Release("sp".into()));
    assert_eq!(tx("COMMIT PREPARED 'g1'"), CommitPrepared("g1".into()));
    assert_eq!(tx("ROLLBACK PREPARED 'g1'"), RollbackPrepared("g1".into()));
    assert_eq!(
        one("PREPARE TRANSACTION 'g1'"),
        unsafe_(UnsafeKind::PrepareTransaction { gid: "g1".into() })
    );
}

#[test]
fn utilities() {
    use Utility::*;
    assert_eq!(one("SET search_path = a, b"), Class::Utility(Set));
    assert_eq!(one("SET LOCAL statement_timeout = 0"), Class::Utility(Set));
    assert_eq!(one("RESET ALL"), Class::Utility(Reset));
    assert_eq!(one("SHOW server_version"), reads(&[]));
    assert_eq!(one("LISTEN \"Chan\""), Class::Utility(Listen("Chan".into())));
    assert_eq!(one("UNLISTEN *"), Class::Utility(Unlisten(None)));
    assert_eq!(one("UNLISTEN ch"), Class::Utility(Unlisten(Some("ch".into()))));
    assert_eq!(one("NOTIFY ch, 'x;y'"), Class::Utility(Notify));
    assert_eq!(one("DEALLOCATE ALL"), Class::Utility(Deallocate(None)));
    assert_eq!(
        one("DEALLOCATE PREPARE p1"),
        Class::Utility(Deallocate(Some("p1".into())))
    );
    assert_eq!(one("FETCH 10 FROM c"), Class::Utility(Cursor));
    assert_eq!(one("CLOSE c"), Class::Utility(Cursor));
    assert_eq!(one("MOVE NEXT IN c"), Class::Utility(Cursor));
    assert_eq!(one("DISCARD ALL"), Class::Utility(Discard));
    assert_eq!(one("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"), Class::Utility(Lock));
    assert_eq!(one("VACUUM (VERBOSE, ANALYZE) t"), Class::Utility(Maintenance));
    assert_eq!(one("ANALYZE t"), Class::Utility(Maintenance));
    assert_eq!(one("CHECKPOINT"), Class::Utility(Maintenance));
}

#[test]
fn ddl_and_other_unsafe_commands() {
    for sql in [
        "CREATE TABLE t (id int primary key)",
        "CREATE TABLE t2 AS SELECT * FROM t",
        "ALTER TABLE t ADD COLUMN c int",
        "DROP TABLE t",
        "GRANT SELECT ON t TO bob",
        "REVOKE ALL ON t FROM bob",
        "COMMENT ON TABLE t IS 'x'",
        "REINDEX TABLE t",
        "CLUSTER t USING t_pkey",
        "REFRESH MATERIALIZED VIEW CONCURRENTLY mv",
        "CREATE INDEX CONCURRENTLY i ON t (a)",
    ] {
        assert_eq!(one(sql), unsafe_(UnsafeKind::Ddl), "{sql}");
    }
    assert_eq!(one("CALL do_things(1)"), unsafe_(UnsafeKind::CallOrDo));
    assert_eq!(
        one("DO $$BEGIN INSERT INTO t VALUES (1); END$$"),
        unsafe_(UnsafeKind::CallOrDo)
    );
    assert_eq!(
        one("DO LANGUAGE plpgsql $$ BEGIN NULL; END $$"),
        unsafe_(UnsafeKind::CallOrDo)
    );
    assert_eq!(
        one("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE"),
        unsafe_(UnsafeKind::Merge)
    );
    assert_eq!(
        one("TRUNCATE TABLE ONLY a, s.b * RESTART IDENTITY CASCADE"),
        unsafe_(UnsafeKind::Truncate {
            tables: vec![QualName::bare("a"), QualName::qualified("s", "b")]
        })
    );
    assert_eq!(
        one("TRUNCATE \"T\""),
        unsafe_(UnsafeKind::Truncate {
            tables: vec![QualName::bare("T")]
        })
    );
    // Never guessed to be a read.
    assert_eq!(one("FROBNICATE t"), unsafe_(UnsafeKind::Unparsable));
    assert_eq!(one("\"SELECT\" 1"), unsafe_(UnsafeKind::Unparsable));
}

#[test]
fn create_function_with_atomic_body_is_one_statement() {
    let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC \
               INSERT INTO t VALUES (1); SELECT CASE WHEN true THEN 1 END; END; SELECT 2";
    let c = classify(sql);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[0].class, unsafe_(UnsafeKind::Ddl));
    assert!(sql[c[0].range.clone()].ends_with("END; END"));
    assert_eq!(c[1].class, reads(&[]));
    // A plain BEGIN is still just a transaction start.
    assert_eq!(classify("BEGIN; SELECT 1").len(), 2);
}

#[test]
fn copy() {
    assert_eq!(
        one("COPY s.t (a, \"B\") FROM STDIN WITH (FORMAT csv)"),
        unsafe_(UnsafeKind::CopyFrom {
            table: QualName::qualified("s", "t"),
            columns: vec!["a".into(), "B".into()]
        })
    );
    assert_eq!(
        one("COPY t FROM '/tmp/x'"),
        unsafe_(UnsafeKind::CopyFrom {
            table: QualName::bare("t"),
            columns: vec![]
        })
    );
    assert_eq!(one("COPY t TO STDOUT"), reads(&[]));
    assert_eq!(one("COPY (SELECT f(a) FROM t) TO STDOUT"), reads(&["f"]));
    assert_eq!(
        one("COPY (INSERT INTO t VALUES (1) RETURNING id) TO STDOUT"),
        unsafe_(UnsafeKind::WriteInCte)
    );
}

#[test]
fn explain() {
    assert_eq!(one("EXPLAIN SELECT f(1)"), reads(&["f"]));
    assert_eq!(one("EXPLAIN INSERT INTO t VALUES (g(1))"), reads(&["g"]));
    assert_eq!(one("EXPLAIN (COSTS OFF) DELETE FROM t"), reads(&[]));
    assert_eq!(one("EXPLAIN ANALYZE SELECT 1"), reads(&[]));
    assert_eq!(
        one("EXPLAIN ANALYZE UPDATE t SET a = 1"),
        unsafe_(UnsafeKind::ExplainAnalyze)
    );
    assert_eq!(
        one("EXPLAIN ANALYZE VERBOSE DELETE FROM t"),
        unsafe_(UnsafeKind::ExplainAnalyze)
    );
    assert_eq!(
        one("EXPLAIN (ANALYZE, BUFFERS) INSERT INTO t VALUES (1)"),
        unsafe_(UnsafeKind::ExplainAnalyze)
    );
    assert_eq!(one("EXPLAIN (ANALYZE false) INSERT INTO t VALUES (1)"), reads(&[]));
    assert_eq!(one("EXPLAIN ANALYZE EXECUTE p(1)"), unsafe_(UnsafeKind::ExplainAnalyze));
}

#[test]
fn prepare_execute_declare() {
    let sql = "PREPARE ins (int) AS INSERT INTO t VALUES ($1)";
    let Class::Prepare { name, statement } = one(sql) else {
        panic!()
    };
    assert_eq!(name, "ins");
    let Class::Write(w) = *statement else {
        panic!("{statement:?}")
    };
    assert_eq!(w.table, QualName::bare("t"));
    assert_eq!(
        splice_returning(sql, &w, &["id"]),
        format!("{sql} RETURNING \"t\".\"id\"")
    );
    assert_eq!(
        one("PREPARE q AS SELECT 1"),
        Class::Prepare {
            name: "q".into(),
            statement: Box::new(reads(&[]))
        }
    );
    assert_eq!(one("EXECUTE Ins(1)"), Class::Execute { name: "ins".into() });
    assert_eq!(
        one("DECLARE c CURSOR WITH HOLD FOR SELECT f(x) FROM t FOR UPDATE"),
        reads(&["f"])
    );
    assert_eq!(one("DECLARE c BINARY CURSOR FOR VALUES (1)"), reads(&[]));
}

#[test]
fn writes_in_ctes_are_unsafe() {
    for sql in [
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "WITH d AS (DELETE FROM t RETURNING *) INSERT INTO t2 SELECT * FROM d",
        "WITH u AS (UPDATE t SET a = 1 RETURNING id) SELECT count(*) FROM u",
        "WITH RECURSIVE x AS (SELECT 1), i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT 1",
    ] {
        assert_eq!(one(sql), unsafe_(UnsafeKind::WriteInCte), "{sql}");
        assert_eq!(by_tokens(sql), unsafe_(UnsafeKind::WriteInCte), "tokens: {sql}");
    }
}

#[test]
fn read_only_cte_before_a_write_is_capturable() {
    let sql = "WITH src AS (SELECT id FROM s WHERE f(id)) UPDATE t SET v = 1 FROM src WHERE t.id = src.id";
    let w = write(sql);
    assert_eq!(w.kind, WriteKind::Update);
    assert_eq!(w.table, QualName::bare("t"));
    assert_eq!(w.functions, vec![QualName::bare("f")]);
    assert!(parses(&spliced(sql, &["id"])));
    assert_eq!(by_tokens(sql), Class::Write(w));
    assert_eq!(one("WITH x AS (SELECT 1) SELECT * FROM x FOR UPDATE"), reads(&[]));
}

/// A fallback case: the SQL, what it writes, the table, the key column
/// asked for, two flags of the write, the columns spliced in.
type FallbackCase<'a> = (&'a str, WriteKind, QualName, Option<&'a str>, bool, bool, &'a [&'a str]);

/// Forms sqlparser 0.63 rejects; each must go through the token fallback.
#[test]
fn fallback_writes() {
    let cases: &[FallbackCase] = &[
        (
            "INSERT INTO t (id, v) VALUES (1, 2) ON CONFLICT (id) WHERE v > 0 DO UPDATE SET v = excluded.v WHERE t.v < 5",
            WriteKind::Insert, QualName::bare("t"), None, false, true, &["v"],
        ),
        (
            "UPDATE ONLY s.\"Parent\" * AS p SET id = 2, v[1] = 3, c.f = 4 WHERE id = 1 RETURNING v",
            WriteKind::Update, QualName::qualified("s", "Parent"), Some("p"), true, false, &["id", "v", "c"],
        ),
        (
            "DELETE FROM ONLY t WHERE CURRENT OF cur",
            WriteKind::Delete, QualName::bare("t"), None, false, false, &[],
        ),
        (
            "INSERT INTO t OVERRIDING SYSTEM VALUE VALUES (1)",
            WriteKind::Insert, QualName::bare("t"), None, false, false, &[],
        ),
    ];
    for (sql, kind, table, alias, ret, oc, cols) in cases {
        assert!(!parses(sql), "sqlparser now parses {sql:?}: move it to the AST tests");
        let w = write(sql);
        assert_eq!(w.kind, *kind, "{sql}");
        assert_eq!(&w.table, table, "{sql}");
        assert_eq!(w.alias.as_deref(), *alias, "{sql}");
        assert_eq!(w.has_returning, *ret, "{sql}");
        assert_eq!(w.on_conflict, *oc, "{sql}");
        assert_eq!(
            w.assigned_columns,
            cols.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "{sql}"
        );
        assert_eq!(w.splice_at, sql.len(), "{sql}");
    }
}

#[test]
fn fallback_agrees_with_the_ast_path() {
    for sql in [
        "INSERT INTO t (a, b) VALUES (1, 2)",
        "INSERT INTO s.t AS x SELECT a, f(b) FROM u ON CONFLICT (a) DO UPDATE SET b = excluded.b RETURNING *",
        "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
        "UPDATE t SET a = 1, (b, c) = (2, 3) FROM u WHERE u.id = t.id",
        "UPDATE \"T\" x SET a = g(1) WHERE x.id = 1 RETURNING a",
        "DELETE FROM t USING u WHERE u.id = t.id RETURNING t.id",
        "DELETE FROM t AS x WHERE x.id IN (SELECT id FROM u)",
        "SELECT a, f(b) FROM t WHERE g(c) FOR UPDATE",
        "SELECT * INTO x FROM t",
    ] {
        assert!(parses(sql), "{sql}");
        assert_eq!(by_tokens(sql), one(sql), "{sql}");
    }
}

#[test]
fn fallback_reads_and_failures() {
    // Lock strength sqlparser may not know: still a read.
    assert_eq!(
        by_tokens("SELECT * FROM t FOR NO KEY UPDATE OF t SKIP LOCKED"),
        reads(&[])
    );
    assert_eq!(by_tokens("SELECT 1 INTO TEMP x"), unsafe_(UnsafeKind::SelectInto));
    // A write whose target cannot be read is never guessed.
    assert_eq!(
        by_tokens("INSERT INTO (SELECT 1) VALUES (1)"),
        unsafe_(UnsafeKind::Unparsable)
    );
    assert_eq!(by_tokens("WITH broken AS SELECT 1"), unsafe_(UnsafeKind::Unparsable));
    assert_eq!(one("UPDATE"), unsafe_(UnsafeKind::Unparsable));
}

#[test]
fn columns_named_like_keywords_are_not_writes() {
    let sql = "UPDATE t SET \"update\" = 1, \"insert\" = 2";
    assert_eq!(write(sql).assigned_columns, vec!["update", "insert"]);
    assert_eq!(by_tokens(sql), one(sql));
}

#[test]
fn long_identifiers_are_truncated_like_postgres() {
    let long = "a".repeat(70);
    let w = write(&format!("INSERT INTO {long} VALUES (1)"));
    assert_eq!(w.table.name.len(), 63);
}

#[test]
fn crlf_tabs_nested_comments_and_placeholders() {
    let sql = "UPDATE t\r\n\tSET v = $1\r\n\tWHERE id = $2 /* outer /* nested; */ still; */\r\n;\r\nSELECT 'é'";
    let c = classify(sql);
    assert_eq!(c.len(), 2, "{c:?}");
    let Class::Write(w) = &c[0].class else { panic!("{c:?}") };
    assert_eq!(&sql[..w.splice_at], "UPDATE t\r\n\tSET v = $1\r\n\tWHERE id = $2");
    assert_eq!(&sql[c[1].range.clone()], "SELECT 'é'");
}

#[test]
fn lexing_follows_postgres_not_other_dialects() {
    // standard_conforming_strings: a backslash does not escape the quote,
    // so the DELETE is a real statement, not hidden in a string.
    let c = classify(r"SELECT 'abc\'; DELETE FROM t; SELECT '--'");
    assert_eq!(c.len(), 3, "{c:?}");
    assert!(matches!(&c[1].class, Class::Write(w) if w.kind == WriteKind::Delete));
    // `#` is an operator in PostgreSQL, not a comment.
    let c = classify("SELECT 1 # 2; DELETE FROM t");
    assert_eq!(c.len(), 2, "{c:?}");
    // `$` inside an identifier does not start a dollar quote.
    let c = classify("INSERT INTO a$b VALUES (1); SELECT 1");
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(matches!(&c[0].class, Class::Write(w) if w.table.name == "a$b"));
}

#[test]
fn cache_answers_the_same_as_the_parser() {
    let mut cache = super::ClassifyCache::default();
    let texts = [
        "UPDATE pgbench_accounts SET abalance = abalance + 12 WHERE aid = 345;",
        "UPDATE pgbench_accounts SET abalance = abalance + -7 WHERE aid = 9;",
        "  INSERT INTO h (a, b, t) VALUES (1, 'it''s', CURRENT_TIMESTAMP)  ",
        "INSERT INTO h (a, b, t) VALUES (22, 'x', CURRENT_TIMESTAMP)",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1.5e3",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 77",
        "DELETE FROM \"My T\" WHERE id = 3 RETURNING id",
        "DELETE FROM \"My T\" WHERE id = 4 RETURNING id",
        "BEGIN",
        "END;",
        "COMMIT PREPARED 'a'",
        "SELECT 1; SELECT 2",
        "SELECT E'\\n' FROM t",
        "INSERT INTO t VALUES (1) -- trailing",
    ];
    for _ in 0..2 {
        for t in texts {
            assert_eq!(cache.classify(t), super::classify(t), "{t}");
        }
    }
}
