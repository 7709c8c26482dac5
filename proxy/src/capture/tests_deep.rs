//! Unit tests for statements nested or chained deeply: every shape is
//! classified without unbounded recursion (too deep ones as too-complex,
//! never as reads), and long flat statements are classified normally.

use super::*;

/// `n` copies of `unit` joined by `sep`.
fn rep(unit: &str, sep: &str, n: usize) -> String {
    vec![unit; n].join(sep)
}

/// Shapes that build a deep AST (or make the parser recurse), each about
/// `bytes` long.
fn deep_shapes(bytes: usize) -> Vec<(&'static str, String)> {
    let n = |unit: usize| bytes / unit;
    vec![
        ("plus chain", format!("select 1{}", "+1".repeat(n(2)))),
        (
            "or chain",
            format!("select * from t where {}", rep("a = 1", " or ", n(10))),
        ),
        (
            "and chain in a delete",
            format!("delete from t where {}", rep("a = 1", " and ", n(11))),
        ),
        (
            "parentheses",
            format!("select {}1{}", "(".repeat(n(2)), ")".repeat(n(2))),
        ),
        (
            "subqueries",
            format!("select {}1{}", "(select ".repeat(n(9)), ")".repeat(n(9))),
        ),
        (
            "case",
            format!(
                "select {}1{}",
                "case when true then ".repeat(n(25)),
                " end".repeat(n(25))
            ),
        ),
        (
            "arrays",
            format!("select {}1{}", "array[".repeat(n(7)), "]".repeat(n(7))),
        ),
        ("not", format!("select {}true", "not ".repeat(n(4)))),
        ("minus", format!("select {}1", "- ".repeat(n(2)))),
        ("json", format!("select '{{}}'::jsonb{}", " -> 'a'".repeat(n(7)))),
        ("casts", format!("select 1{}", "::int".repeat(n(5)))),
        ("subscripts", format!("select a{} from t", "[1]".repeat(n(3)))),
        ("unions", rep("select 1", " union ", n(15))),
        (
            "functions",
            format!("select {}1{}", "f(".repeat(n(3)), ")".repeat(n(3))),
        ),
        ("insert value", format!("insert into t values (1{})", "+1".repeat(n(2)))),
        ("update set", format!("update t set a = 1{}", "||1".repeat(n(3)))),
        ("explain", format!("{}select 1", "explain ".repeat(n(8)))),
        (
            "copy",
            format!("copy {}select 1{} to stdout", "(".repeat(n(2)), ")".repeat(n(2))),
        ),
        ("prepare", format!("{}select 1", "prepare p as ".repeat(n(13)))),
        (
            "cte",
            format!("with a as ({}select 1{}) select 1", "(".repeat(n(2)), ")".repeat(n(2))),
        ),
    ]
}

/// A deep statement is refused unread: too complex (or not understood),
/// never a read and never a crash.
fn assert_refused(name: &str, sql: &str) {
    let classified = classify(sql);
    assert_eq!(classified.len(), 1, "{name}");
    match &classified[0].class {
        Class::Unsafe(UnsafeKind::TooComplex) => {}
        other => panic!("{name} ({} bytes) -> {other:?}", sql.len()),
    }
    let mut cache = ClassifyCache::default();
    let cached = cache.classify(sql);
    assert_eq!(cached[0].class, classified[0].class, "{name}");
}

#[test]
fn deep_statements_of_300_kb_are_too_complex() {
    for (name, sql) in deep_shapes(300_000) {
        assert_refused(name, &sql);
    }
}

#[test]
fn deep_statements_of_3_mb_are_too_complex() {
    // A few shapes only: tokenizing 3 MB takes a while in a debug build.
    let shapes = ["plus chain", "parentheses"];
    for (name, sql) in deep_shapes(3_000_000) {
        if shapes.contains(&name) {
            assert_refused(name, &sql);
        }
    }
}

#[test]
fn deep_statements_under_the_bound_are_classified() {
    // Deeper than the inline bound, so classified on the deep-stack
    // thread, and just under the limit.
    let reads = [
        format!("select 1{}", "+1".repeat(4_990)),
        format!("select * from t where {}", rep("a = 1", " or ", 2_490)),
        rep("select 1", " union ", 3_300),
        format!("select 1{}", "::int".repeat(4_990)),
        format!("select '{{}}'::jsonb{}", " -> 'a'".repeat(4_990)),
    ];
    for sql in &reads {
        assert!(matches!(classify(sql)[0].class, Class::Read { .. }), "{}", &sql[..40]);
    }
    let sql = format!("delete from t where {}", rep("a = 1", " or ", 2_400));
    match &classify(&sql)[0].class {
        Class::Write(w) => assert_eq!((w.kind, w.splice_at), (WriteKind::Delete, sql.len())),
        other => panic!("{other:?}"),
    }
    // Parenthesized past sqlparser's own limit: the token fallback answers.
    let sql = format!("select {}1{}", "(".repeat(100), ")".repeat(100));
    assert!(matches!(classify(&sql)[0].class, Class::Read { .. }));
}

#[test]
fn long_flat_statements_are_classified_normally() {
    let rows: Vec<String> = (0..10_000).map(|i| format!("({i}, 'v{i}', now())")).collect();
    let sql = format!("insert into t (id, v, at) values {}", rows.join(", "));
    match &classify(&sql)[0].class {
        Class::Write(w) => {
            assert_eq!((w.kind, w.splice_at), (WriteKind::Insert, sql.len()));
            assert_eq!(w.functions, vec![QualName::bare("now")]);
        }
        other => panic!("{other:?}"),
    }
    let list: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let sql = format!("select * from t where id in ({})", list.join(", "));
    assert!(matches!(classify(&sql)[0].class, Class::Read { .. }));
    let sql = format!("update t set v = 'x' where id in ({})", list.join(","));
    assert!(matches!(classify(&sql)[0].class, Class::Write(_)));
    let sets: Vec<String> = (0..2_000).map(|i| format!("c{i} = {i}")).collect();
    let sql = format!("update t set {} where id = 1", sets.join(", "));
    match &classify(&sql)[0].class {
        Class::Write(w) => assert_eq!(w.assigned_columns.len(), 2_000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn many_statements_in_one_string_are_each_classified() {
    let sql = rep("insert into t values (1)", "; ", 10_000);
    let classified = classify(&sql);
    assert_eq!(classified.len(), 10_000);
    assert!(classified.iter().all(|c| matches!(c.class, Class::Write(_))));
}
