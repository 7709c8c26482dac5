//! Fuzzes the statement classifier: any bytes, as a simple Query or Parse
//! text in any client encoding, through `classify`, the shape cache and the
//! splices, must give a classification whose ranges and splice points lie
//! in the text, and never panic or overflow the stack.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_proxy::capture::{classify, classify_view, splice_all, Class, ClassifyCache, WriteStmt};

fuzz_target!(|data: &[u8]| {
    let view = classify_view(data);
    let sql: &str = &view;
    assert_eq!(sql.len(), data.len(), "the view keeps every offset");
    let classified = classify(sql);
    for c in &classified {
        assert!(c.range.start <= c.range.end && c.range.end <= sql.len());
        assert!(sql.is_char_boundary(c.range.start) && sql.is_char_boundary(c.range.end));
    }
    let mut cache = ClassifyCache::default();
    // Twice: the second answer comes from the cache when the shape is kept.
    let first = cache.classify(sql);
    let second = cache.classify(sql);
    assert_eq!(first, second, "the cache answers as the classifier did");
    let writes: Vec<&WriteStmt> = classified
        .iter()
        .filter_map(|c| match &c.class {
            Class::Write(w) => Some(w),
            Class::Prepare { statement, .. } => match statement.as_ref() {
                Class::Write(w) => Some(w),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let keys: &[&str] = &["id", "Weird \"key\""];
    let splices: Vec<(&WriteStmt, &[&str])> = writes.iter().map(|w| (*w, keys)).collect();
    let spliced = splice_all(sql, &splices);
    assert!(spliced.len() >= sql.len());
});
