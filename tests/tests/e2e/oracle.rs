//! Ground truth for write capture: which rows did committed transactions
//! really write? PostgreSQL answers through logical decoding. A slot with the
//! built-in `test_decoding` plugin, created before the writes, is read back
//! with `pg_logical_slot_get_changes` and its text output parsed into
//! transactions, changes and column values. The source cluster needs
//! `wal_level = logical` and a free replication slot.
//!
//! Only committed transactions are decoded; rolled-back ones never show up.
//! Values are the column types' text output, unquoted: the text a
//! `RETURNING` column carries in text format. Two exceptions in what
//! `test_decoding` prints are undone: booleans come as `true`/`false`
//! (mapped back to `t`/`f`) and bit strings as `B'0101'` (mapped to `0101`).
//! Output that depends on settings (`TimeZone`, `DateStyle`,
//! `extra_float_digits`) follows the settings of the session that drains.
//! Writes to a partitioned table are reported against the leaf partition.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use switchyard_replay::log::{LogReader, Lsn, Record};
use tokio_postgres::Client;

/// A set of written rows: `(schema.table, key column values as text)`, the
/// values in the order of the table's key columns, `None` for NULL.
pub type KeySet = HashSet<(String, Vec<Option<String>>)>;

/// A logical replication slot decoded with `test_decoding`.
#[derive(Debug)]
pub struct WalOracle {
    slot: String,
}

impl WalOracle {
    /// Creates the logical slot `slot` with the `test_decoding` plugin
    /// (`pg_create_logical_replication_slot`). Changes committed after this
    /// returns are the ones [`WalOracle::drain`] reports.
    pub async fn create(client: &Client, slot: &str) -> Result<WalOracle> {
        client
            .execute(
                "SELECT 1 FROM pg_create_logical_replication_slot($1, 'test_decoding')",
                &[&slot],
            )
            .await
            .with_context(|| format!("create logical replication slot {slot:?}"))?;
        Ok(WalOracle { slot: slot.to_owned() })
    }

    /// Consumes everything decoded since the slot was created or last
    /// drained, and returns the committed transactions in commit order.
    ///
    /// Decoding stops at the WAL flushed to disk, and the testkit's clusters
    /// commit asynchronously, so this first flushes everything written so
    /// far: a synchronously committed transaction that writes a logical
    /// message (skipped by the parser) makes its commit flush all WAL before it.
    pub async fn drain(&self, client: &Client) -> Result<Vec<WalTx>> {
        client
            .batch_execute(
                "BEGIN; SET LOCAL synchronous_commit = on; \
                 SELECT pg_logical_emit_message(true, 'switchyard-oracle', 'flush'); COMMIT",
            )
            .await
            .context("flush WAL before decoding")?;
        let rows = client
            .query(
                "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL, \
                 'include-xids', '1', 'include-timestamp', '1', 'skip-empty-xacts', '1')",
                &[&self.slot],
            )
            .await
            .with_context(|| format!("read changes from slot {:?}", self.slot))?;
        let data = rows
            .iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        parse_output(data.iter().map(String::as_str)).with_context(|| format!("decode slot {:?}", self.slot))
    }

    /// Drops the slot, so the server stops retaining WAL for it.
    pub async fn drop_slot(&self, client: &Client) -> Result<()> {
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&self.slot])
            .await
            .with_context(|| format!("drop replication slot {:?}", self.slot))?;
        Ok(())
    }
}

/// One committed transaction as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalTx {
    /// The transaction id.
    pub xid: u64,
    /// The commit time as PostgreSQL printed it, e.g. `2026-11-22 07:00:00.123456+00`.
    pub commit_time: String,
    /// The row changes, in the order they were made.
    pub changes: Vec<WalChange>,
}

/// One row change (or, for [`WalOp::Truncate`], one truncated table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalChange {
    /// The table as `schema.table`, identifier quotes removed.
    pub table: String,
    /// What happened to the row.
    pub op: WalOp,
    /// Column names and values (`None` is NULL). INSERT and UPDATE: the new
    /// row, every column. DELETE: the old row's replica identity (the primary
    /// key by default; NULL columns are left out). Empty for TRUNCATE and when
    /// PostgreSQL logged no tuple (`(no-tuple-data)`, e.g. a DELETE on a table
    /// without replica identity).
    pub columns: Vec<(String, Option<String>)>,
    /// UPDATE only: the old row's replica identity, logged when the update
    /// changed it (or the table has `REPLICA IDENTITY FULL`). NULL columns
    /// are left out.
    pub old_key: Option<Vec<(String, Option<String>)>>,
    /// Columns of the new row that PostgreSQL did not log because they are
    /// stored out of line and were not changed (`unchanged-toast-datum`);
    /// their entry in `columns` reads `None`.
    pub unchanged_toast: Vec<String>,
}

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalOp {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// The table was truncated.
    Truncate,
}

/// The keys the transactions wrote: for each INSERT, UPDATE and DELETE on a
/// table for which `key_columns` returns the key columns, the values of
/// those columns in the logged tuple, and for an UPDATE that logged its old
/// key also the old values. TRUNCATE and tables `key_columns` declines are
/// skipped.
///
/// Panics if a key column is missing from a tuple: then the key is not
/// covered by the table's replica identity, or PostgreSQL logged no tuple,
/// and the written row cannot be known.
pub fn written_keys(txs: &[WalTx], key_columns: impl Fn(&str) -> Option<Vec<String>>) -> KeySet {
    let mut keys = KeySet::new();
    for change in txs.iter().flat_map(|tx| &tx.changes) {
        if change.op == WalOp::Truncate {
            continue;
        }
        let Some(columns) = key_columns(&change.table) else {
            continue;
        };
        let key = columns
            .iter()
            .map(|column| key_value(change, column))
            .collect::<Vec<_>>();
        keys.insert((change.table.clone(), key));
        if let Some(old) = &change.old_key {
            let key = columns
                .iter()
                .map(|column| match lookup(old, column) {
                    Some(value) => value.clone(),
                    None => panic!(
                        "UPDATE on {}: key column {column:?} is not in the logged old key {old:?}",
                        change.table
                    ),
                })
                .collect::<Vec<_>>();
            keys.insert((change.table.clone(), key));
        }
    }
    keys
}

/// The value of key column `column` in the tuple `change` logged.
fn key_value(change: &WalChange, column: &str) -> Option<String> {
    if change.unchanged_toast.iter().any(|c| c == column) {
        // An out-of-line key value makes PostgreSQL log the old key with it.
        return match change.old_key.as_deref().and_then(|old| lookup(old, column)) {
            Some(value) => value.clone(),
            None => panic!(
                "UPDATE on {}: key column {column:?} is unchanged-toast-datum and has no old value",
                change.table
            ),
        };
    }
    match lookup(&change.columns, column) {
        Some(value) => value.clone(),
        None => panic!(
            "{:?} on {}: key column {column:?} was not logged (NULL, or not in the replica identity): {:?}",
            change.op, change.table, change.columns
        ),
    }
}

fn lookup<'a>(tuple: &'a [(String, Option<String>)], column: &str) -> Option<&'a Option<String>> {
    tuple.iter().find(|(name, _)| name == column).map(|(_, value)| value)
}

/// Every key in the capture log in `dir`: the `(table, key)` pairs of all
/// its commit records, read from the first record to the current end.
pub fn logged_keys(dir: &Path) -> Result<KeySet> {
    let mut reader = LogReader::open(dir, Lsn::FIRST).with_context(|| format!("open capture log {}", dir.display()))?;
    let mut keys = KeySet::new();
    while let Some(entry) = reader
        .next()
        .with_context(|| format!("read capture log {}", dir.display()))?
    {
        if let Record::Commit(commit) = entry.record {
            for table in commit.tables {
                for key in table.keys {
                    keys.insert((table.table.clone(), key));
                }
            }
        }
    }
    Ok(keys)
}

/// Parses the `data` column of `pg_logical_slot_get_changes` rows from a
/// `test_decoding` slot read with `include-xids` and `include-timestamp` on.
/// Each row is one output message (a value may span lines). Logical
/// messages (`pg_logical_emit_message`) carry no row changes and are skipped.
pub fn parse_output<'a>(rows: impl IntoIterator<Item = &'a str>) -> Result<Vec<WalTx>> {
    let mut txs = Vec::new();
    let mut open: Option<WalTx> = None;
    for (i, row) in rows.into_iter().enumerate() {
        parse_row(row, &mut open, &mut txs).with_context(|| format!("test_decoding row {i}: {row:?}"))?;
    }
    if let Some(tx) = open {
        bail!("transaction {} has no COMMIT", tx.xid);
    }
    Ok(txs)
}

fn parse_row(row: &str, open: &mut Option<WalTx>, txs: &mut Vec<WalTx>) -> Result<()> {
    if let Some(rest) = row.strip_prefix("BEGIN ") {
        if let Some(tx) = open {
            bail!("BEGIN inside transaction {}", tx.xid);
        }
        let xid = rest.parse().context("transaction id")?;
        *open = Some(WalTx {
            xid,
            commit_time: String::new(),
            changes: Vec::new(),
        });
    } else if let Some(rest) = row.strip_prefix("COMMIT ") {
        let mut tx = open.take().ok_or_else(|| anyhow!("COMMIT outside a transaction"))?;
        let (xid, time) = rest
            .split_once(" (at ")
            .ok_or_else(|| anyhow!("COMMIT without a commit time"))?;
        let xid: u64 = xid.parse().context("transaction id")?;
        ensure!(xid == tx.xid, "COMMIT {xid} closes transaction {}", tx.xid);
        let time = time.strip_suffix(')').context("unterminated commit time")?;
        tx.commit_time = time.to_owned();
        txs.push(tx);
    } else if row.starts_with("table ") {
        let tx = open.as_mut().ok_or_else(|| anyhow!("change outside a transaction"))?;
        tx.changes.extend(parse_change(row)?);
    } else if row.starts_with("message: ") {
        // A logical message; it writes no rows.
    } else {
        bail!("unrecognized test_decoding output");
    }
    Ok(())
}

/// Parses one `table ...` row: one change, or one per table for TRUNCATE.
fn parse_change(row: &str) -> Result<Vec<WalChange>> {
    let mut sc = Scanner::new(row);
    sc.expect("table ")?;
    let mut tables = vec![sc.qualified_name()?];
    while sc.eat(", ") {
        tables.push(sc.qualified_name()?);
    }
    sc.expect(": ")?;
    let op = if sc.eat("INSERT:") {
        WalOp::Insert
    } else if sc.eat("UPDATE:") {
        WalOp::Update
    } else if sc.eat("DELETE:") {
        WalOp::Delete
    } else if sc.eat("TRUNCATE:") {
        WalOp::Truncate
    } else {
        bail!("unknown change kind at byte {}", sc.pos);
    };
    if op == WalOp::Truncate {
        // Flags: " (no-flags)", or " restart_seqs" and/or " cascade".
        let flags = sc.rest();
        ensure!(
            flags == " (no-flags)" || flags.split(' ').skip(1).all(|f| f == "restart_seqs" || f == "cascade"),
            "unknown TRUNCATE flags {flags:?}"
        );
        return Ok(tables
            .into_iter()
            .map(|table| WalChange {
                table,
                op,
                columns: Vec::new(),
                old_key: None,
                unchanged_toast: Vec::new(),
            })
            .collect());
    }
    ensure!(tables.len() == 1, "{op:?} names several tables");
    let table = tables.pop().expect("one table");
    let old_key = if op == WalOp::Update && sc.eat(" old-key:") {
        let (old, toast) = sc.tuple(true)?;
        ensure!(toast.is_empty(), "unchanged-toast-datum in an old key");
        sc.expect(" new-tuple:")?;
        Some(old)
    } else {
        None
    };
    let (columns, unchanged_toast) = if sc.rest() == " (no-tuple-data)" {
        (Vec::new(), Vec::new())
    } else {
        sc.tuple(false)?
    };
    Ok(vec![WalChange {
        table,
        op,
        columns,
        old_key,
        unchanged_toast,
    }])
}

/// Column names and values of one logged tuple.
type Columns = Vec<(String, Option<String>)>;

/// A tuple column value as printed.
enum Value {
    Null,
    UnchangedToast,
    Text(String),
}

/// A cursor over one output row. Delimiters are ASCII, so byte positions
/// found by scanning bytes are always character boundaries.
struct Scanner<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(s: &'a str) -> Self {
        Scanner { s, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, lit: &str) -> bool {
        let found = self.rest().starts_with(lit);
        if found {
            self.pos += lit.len();
        }
        found
    }

    fn expect(&mut self, lit: &str) -> Result<()> {
        ensure!(self.eat(lit), "expected {lit:?} at byte {}", self.pos);
        Ok(())
    }

    /// `lit` as a whole word: followed by a space or the end.
    fn eat_word(&mut self, lit: &str) -> bool {
        let rest = self.rest();
        let found = rest.starts_with(lit) && matches!(rest.as_bytes().get(lit.len()), None | Some(b' '));
        if found {
            self.pos += lit.len();
        }
        found
    }

    /// A string in `quote` characters, the quote doubled inside; returns
    /// the content with the doubling undone.
    fn quoted(&mut self, quote: u8) -> Result<String> {
        let bytes = self.s.as_bytes();
        let open = self.pos;
        ensure!(
            bytes.get(open) == Some(&quote),
            "expected {} at byte {open}",
            quote as char
        );
        let mut out = String::new();
        let mut start = open + 1;
        let mut i = start;
        loop {
            match bytes.get(i) {
                None => bail!("unterminated {} quote opened at byte {open}", quote as char),
                Some(&b) if b == quote => {
                    out.push_str(&self.s[start..i]);
                    if bytes.get(i + 1) == Some(&quote) {
                        out.push(quote as char);
                        i += 2;
                        start = i;
                    } else {
                        self.pos = i + 1;
                        return Ok(out);
                    }
                }
                Some(_) => i += 1,
            }
        }
    }

    /// An identifier as `quote_identifier` prints it: double-quoted, or bare
    /// up to one of `stops` (bare identifiers are lower-case letters, digits
    /// and underscores, so they never contain a stop).
    fn identifier(&mut self, stops: &[u8]) -> Result<String> {
        if self.peek() == Some(b'"') {
            return self.quoted(b'"');
        }
        let start = self.pos;
        let len = self.rest().bytes().take_while(|b| !stops.contains(b)).count();
        ensure!(len > 0, "expected an identifier at byte {start}");
        self.pos += len;
        Ok(self.s[start..self.pos].to_owned())
    }

    /// `schema.table`, returned with quotes removed.
    fn qualified_name(&mut self) -> Result<String> {
        let schema = self.identifier(b".:, ")?;
        self.expect(".")?;
        let table = self.identifier(b".:, ")?;
        Ok(format!("{schema}.{table}"))
    }

    /// A type name as `format_type_be` prints it, after the opening `[`, up
    /// to and including the matching `]`. It may hold spaces, brackets
    /// (`character varying[]`) and quoted identifiers (`"char"`).
    fn type_name(&mut self) -> Result<String> {
        let bytes = self.s.as_bytes();
        let start = self.pos;
        let mut depth = 0usize;
        let mut in_quotes = false;
        let mut i = start;
        loop {
            let Some(&b) = bytes.get(i) else {
                bail!("unterminated type name starting at byte {start}");
            };
            match b {
                b'"' if in_quotes && bytes.get(i + 1) == Some(&b'"') => i += 1,
                b'"' => in_quotes = !in_quotes,
                b'[' if !in_quotes => depth += 1,
                b']' if !in_quotes && depth == 0 => {
                    self.pos = i + 1;
                    return Ok(self.s[start..i].to_owned());
                }
                b']' if !in_quotes => depth -= 1,
                _ => {}
            }
            i += 1;
        }
    }

    /// A column value of type `type_name`.
    fn value(&mut self, type_name: &str) -> Result<Value> {
        if self.eat_word("null") {
            return Ok(Value::Null);
        }
        if self.eat_word("unchanged-toast-datum") {
            return Ok(Value::UnchangedToast);
        }
        let text = match self.peek() {
            Some(b'\'') => self.quoted(b'\'')?,
            Some(b'B') if self.rest().starts_with("B'") => {
                self.pos += 1;
                self.quoted(b'\'')?
            }
            _ => {
                let start = self.pos;
                let len = self.rest().bytes().take_while(|&b| b != b' ').count();
                ensure!(len > 0, "expected a value at byte {start}");
                self.pos += len;
                let token = &self.s[start..self.pos];
                match (type_name, token) {
                    ("boolean", "true") => "t".to_owned(),
                    ("boolean", "false") => "f".to_owned(),
                    _ => token.to_owned(),
                }
            }
        };
        ensure!(
            matches!(self.peek(), None | Some(b' ')),
            "expected a space after the value at byte {}",
            self.pos
        );
        Ok(Value::Text(text))
    }

    /// A sequence of ` name[type]:value` up to the end of the row (or, for
    /// an old key, up to ` new-tuple:`). Returns the columns and the names
    /// of those printed as `unchanged-toast-datum`.
    fn tuple(&mut self, old_key: bool) -> Result<(Columns, Vec<String>)> {
        let mut columns = Vec::new();
        let mut toast = Vec::new();
        while self.pos < self.s.len() {
            // A bare column name cannot contain '-', so this is the marker.
            if old_key && self.rest().starts_with(" new-tuple:") {
                break;
            }
            self.expect(" ")?;
            let name = self.identifier(b"[")?;
            self.expect("[")?;
            let type_name = self.type_name()?;
            self.expect(":")?;
            let value = match self.value(&type_name).with_context(|| format!("column {name:?}"))? {
                Value::Null => None,
                Value::UnchangedToast => {
                    toast.push(name.clone());
                    None
                }
                Value::Text(text) => Some(text),
            };
            columns.push((name, value));
        }
        Ok((columns, toast))
    }
}

mod tests {
    use super::*;
    use switchyard_replay::log::{CommitRecord, LogOptions, LogWriter, Marker, TableKeys};
    use switchyard_tests::{init_tracing, Cluster};
    use tokio_postgres::SimpleQueryMessage;

    fn col(name: &str, value: Option<&str>) -> (String, Option<String>) {
        (name.to_owned(), value.map(str::to_owned))
    }

    fn change(row: &str) -> WalChange {
        let mut changes = parse_change(row).unwrap();
        assert_eq!(changes.len(), 1, "{changes:?}");
        changes.pop().unwrap()
    }

    fn key(table: &str, values: &[Option<&str>]) -> (String, Vec<Option<String>>) {
        (table.to_owned(), values.iter().map(|v| v.map(str::to_owned)).collect())
    }

    #[test]
    fn transactions_and_commit_times() {
        let txs = parse_output([
            "BEGIN 735",
            "table public.t: INSERT: id[integer]:1",
            "COMMIT 735 (at 2026-11-22 07:00:00.123456+00)",
            "message: transactional: 0 prefix: p, sz: 1 content:x",
            "BEGIN 736",
            "table public.t: DELETE: id[integer]:1",
            "table public.t: INSERT: id[integer]:2",
            "COMMIT 736 (at 2026-11-22 07:00:01+00)",
        ])
        .unwrap();
        assert_eq!(txs.len(), 2);
        assert_eq!(
            (txs[0].xid, txs[0].commit_time.as_str()),
            (735, "2026-11-22 07:00:00.123456+00")
        );
        assert_eq!(
            (txs[1].xid, txs[1].commit_time.as_str()),
            (736, "2026-11-22 07:00:01+00")
        );
        assert_eq!(txs[0].changes, vec![change("table public.t: INSERT: id[integer]:1")]);
        let ops: Vec<_> = txs[1].changes.iter().map(|c| c.op).collect();
        assert_eq!(ops, vec![WalOp::Delete, WalOp::Insert]);
    }

    #[test]
    fn malformed_streams_are_errors() {
        let bad: &[&[&str]] = &[
            &["table public.t: INSERT: id[integer]:1"],
            &["BEGIN 1", "table public.t: INSERT: id[integer]:1"],
            &["BEGIN 1", "BEGIN 2"],
            &["COMMIT 1 (at x)"],
            &["BEGIN 1", "COMMIT 2 (at x)"],
            &["BEGIN 1", "COMMIT 1"],
            &["BEGIN x"],
            &["BEGIN 1", "something else", "COMMIT 1 (at x)"],
            &["BEGIN 1", "table public.t: INSERT: name[text]:'open", "COMMIT 1 (at x)"],
            &["BEGIN 1", "table public.t: INSERT: id[integer:1", "COMMIT 1 (at x)"],
            &["BEGIN 1", "table public.t: UPSERT: id[integer]:1", "COMMIT 1 (at x)"],
            &["BEGIN 1", "table public.t: INSERT: a[text]:'x'y", "COMMIT 1 (at x)"],
            &["BEGIN 1", "table t: INSERT: id[integer]:1", "COMMIT 1 (at x)"],
        ];
        for rows in bad {
            assert!(parse_output(rows.iter().copied()).is_err(), "accepted {rows:?}");
        }
    }

    #[test]
    fn insert_with_quotes_nulls_and_odd_types() {
        let c = change(
            "table public.t: INSERT: id[integer]:1 name[text]:'it''s' note[text]:null \
             tags[character varying[]]:'{\"a b\",\"c\\\"d\"}' at[timestamp with time zone]:'2024-01-01 00:00:00+00' \
             n[numeric]:-1.50 f[double precision]:NaN ok[boolean]:true no[boolean]:false bits[bit]:B'1010' \
             c[\"char\"]:'q' m[public.\"My]Type\"[]]:'{}' e[text]:''",
        );
        assert_eq!(c.table, "public.t");
        assert_eq!(c.op, WalOp::Insert);
        assert_eq!(c.old_key, None);
        assert!(c.unchanged_toast.is_empty());
        assert_eq!(
            c.columns,
            vec![
                col("id", Some("1")),
                col("name", Some("it's")),
                col("note", None),
                col("tags", Some("{\"a b\",\"c\\\"d\"}")),
                col("at", Some("2024-01-01 00:00:00+00")),
                col("n", Some("-1.50")),
                col("f", Some("NaN")),
                col("ok", Some("t")),
                col("no", Some("f")),
                col("bits", Some("1010")),
                col("c", Some("q")),
                col("m", Some("{}")),
                col("e", Some("")),
            ]
        );
    }

    #[test]
    fn values_keep_spaces_newlines_and_lookalikes() {
        let c = change("table public.t: INSERT: a[text]:'x y: z[text]:1' b[text]:'line\nnext \\ ''' c[text]:'null'");
        assert_eq!(
            c.columns,
            vec![
                col("a", Some("x y: z[text]:1")),
                col("b", Some("line\nnext \\ '")),
                col("c", Some("null")),
            ]
        );
    }

    #[test]
    fn quoted_identifiers() {
        let c = change(
            "table \"My Schema\".\"T\": INSERT: \"Col\"[integer]:1 \"user\"[text]:'u' \"a\"\"b [c]: d\"[integer]:2",
        );
        assert_eq!(c.table, "My Schema.T");
        assert_eq!(
            c.columns,
            vec![
                col("Col", Some("1")),
                col("user", Some("u")),
                col("a\"b [c]: d", Some("2"))
            ]
        );
        let c = change("table \"a.b\".\"c\"\"d: e, f\": DELETE: id[integer]:1");
        assert_eq!(c.table, "a.b.c\"d: e, f");
    }

    #[test]
    fn update_with_and_without_old_key() {
        let c = change(
            "table public.p: UPDATE: old-key: a[integer]:1 b[text]:'it''s' new-tuple: a[integer]:3 b[text]:'it''s' v[text]:null",
        );
        assert_eq!(c.op, WalOp::Update);
        assert_eq!(c.old_key, Some(vec![col("a", Some("1")), col("b", Some("it's"))]));
        assert_eq!(
            c.columns,
            vec![col("a", Some("3")), col("b", Some("it's")), col("v", None)]
        );

        let c = change("table public.t: UPDATE: id[integer]:1 \"new-tuple:\"[text]:'x'");
        assert_eq!(c.old_key, None);
        assert_eq!(c.columns, vec![col("id", Some("1")), col("new-tuple:", Some("x"))]);

        let c = change(
            "table public.big: UPDATE: old-key: k[text]:'long' new-tuple: k[text]:unchanged-toast-datum v[text]:'b'",
        );
        assert_eq!(c.old_key, Some(vec![col("k", Some("long"))]));
        assert_eq!(c.columns, vec![col("k", None), col("v", Some("b"))]);
        assert_eq!(c.unchanged_toast, vec!["k".to_owned()]);
    }

    #[test]
    fn delete_and_no_tuple_data() {
        let c = change("table public.p: DELETE: a[integer]:3 b[text]:'x'");
        assert_eq!(
            (c.op, c.columns),
            (WalOp::Delete, vec![col("a", Some("3")), col("b", Some("x"))])
        );
        let c = change("table public.nk: DELETE: (no-tuple-data)");
        assert_eq!((c.op, c.columns.len()), (WalOp::Delete, 0));
    }

    #[test]
    fn truncate_lists_tables_and_flags() {
        let changes = parse_change("table public.p, \"S\".\"a, b\": TRUNCATE: (no-flags)").unwrap();
        let tables: Vec<_> = changes.iter().map(|c| (c.table.as_str(), c.op)).collect();
        assert_eq!(tables, vec![("public.p", WalOp::Truncate), ("S.a, b", WalOp::Truncate)]);
        let changes = parse_change("table public.p: TRUNCATE: restart_seqs cascade").unwrap();
        assert_eq!(changes.len(), 1);
        assert!(parse_change("table public.p: TRUNCATE: sideways").is_err());
    }

    #[test]
    fn written_keys_cover_composite_old_and_toasted_keys() {
        let txs = parse_output([
            "BEGIN 1",
            "table public.p: INSERT: a[integer]:1 b[text]:'it''s' v[text]:null",
            "table public.p: UPDATE: old-key: a[integer]:1 b[text]:'it''s' new-tuple: a[integer]:3 b[text]:'it''s' v[text]:null",
            "table public.p: UPDATE: a[integer]:3 b[text]:'it''s' v[text]:'w'",
            "table public.p: DELETE: a[integer]:4 b[text]:'z'",
            "table public.big: UPDATE: old-key: k[text]:'long' new-tuple: k[text]:unchanged-toast-datum v[text]:'b'",
            "table public.other: INSERT: x[integer]:1",
            "table public.p: TRUNCATE: (no-flags)",
            "COMMIT 1 (at 2026-01-01 00:00:00+00)",
        ])
        .unwrap();
        let keys = written_keys(&txs, |table| match table {
            "public.p" => Some(vec!["a".into(), "b".into()]),
            "public.big" => Some(vec!["k".into()]),
            _ => None,
        });
        let expected: KeySet = [
            key("public.p", &[Some("1"), Some("it's")]),
            key("public.p", &[Some("3"), Some("it's")]),
            key("public.p", &[Some("4"), Some("z")]),
            key("public.big", &[Some("long")]),
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, expected);
    }

    #[test]
    #[should_panic(expected = "was not logged")]
    fn written_keys_refuse_a_delete_without_its_key() {
        let txs = parse_output(["BEGIN 1", "table public.nk: DELETE: (no-tuple-data)", "COMMIT 1 (at x)"]).unwrap();
        written_keys(&txs, |_| Some(vec!["code".into()]));
    }

    const SCHEMA: &str = r#"
        CREATE TABLE pair (a int, b text, v text, PRIMARY KEY (a, b));
        CREATE SCHEMA "My Schema";
        CREATE TABLE "My Schema"."Tags" ("Code" text PRIMARY KEY, hits int NOT NULL DEFAULT 0);
        CREATE TABLE flags (k bool, n int, PRIMARY KEY (k, n));
        CREATE TABLE scratch (x int);
        INSERT INTO pair VALUES (50, 'before the slot', null);
    "#;

    fn wal_key_columns(table: &str) -> Option<Vec<String>> {
        match table {
            "public.pair" => Some(vec!["a".into(), "b".into()]),
            "My Schema.Tags" => Some(vec!["Code".into()]),
            "public.flags" => Some(vec!["k".into(), "n".into()]),
            _ => None,
        }
    }

    /// The text values of the first column of the rows a simple query returned.
    fn first_column(messages: &[SimpleQueryMessage]) -> Vec<Option<String>> {
        messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn decodes_committed_writes_of_a_real_cluster() -> Result<()> {
        init_tracing();
        let cluster = Cluster::builder()
            .setting("wal_level", "logical")
            .setting("max_replication_slots", "4")
            .start()
            .await?;
        let client = cluster.connect("postgres").await?;
        client.batch_execute(SCHEMA).await?;
        let oracle = WalOracle::create(&client, "oracle_test").await?;

        // One query per transaction: a multi-statement query string would
        // run its autocommit statements as one implicit transaction.
        for sql in [
            r#"INSERT INTO pair VALUES (1, 'x', null), (2, 'it''s "q"', 'v')"#,
            r#"INSERT INTO "My Schema"."Tags" ("Code") VALUES ('a b'), (E'back\\slash\nnewline')"#,
            "UPDATE pair SET v = 'w' WHERE a = 2",
            "UPDATE pair SET a = 10 WHERE a = 1",
            r#"DELETE FROM "My Schema"."Tags" WHERE "Code" = 'a b'"#,
            "BEGIN; INSERT INTO pair VALUES (3, 'y', null); DELETE FROM pair WHERE a = 3 AND b = 'y'; COMMIT",
            r#"BEGIN;
               INSERT INTO pair VALUES (99, 'rolled back', null);
               UPDATE "My Schema"."Tags" SET "Code" = 'gone' WHERE "Code" = E'back\\slash\nnewline';
               DELETE FROM pair WHERE a = 10;
               ROLLBACK"#,
            "INSERT INTO scratch VALUES (1)",
            "TRUNCATE scratch",
        ] {
            client.batch_execute(sql).await.with_context(|| sql.to_owned())?;
        }
        // The oracle's values are what RETURNING sends as text.
        let returned_code = first_column(
            &client
                .simple_query(r#"INSERT INTO "My Schema"."Tags" ("Code") VALUES ('O''Brien') RETURNING "Code""#)
                .await?,
        );
        let returned_flags = first_column(
            &client
                .simple_query("INSERT INTO flags VALUES (true, 1), (false, 2) RETURNING k")
                .await?,
        );
        assert_eq!(returned_code, vec![Some("O'Brien".to_owned())]);
        assert_eq!(returned_flags, vec![Some("t".to_owned()), Some("f".to_owned())]);

        let txs = oracle.drain(&client).await?;
        // Draining consumes: nothing new, nothing again.
        assert_eq!(oracle.drain(&client).await?, vec![]);
        oracle.drop_slot(&client).await?;

        let keys = written_keys(&txs, wal_key_columns);
        let expected: KeySet = [
            key("public.pair", &[Some("1"), Some("x")]),
            key("public.pair", &[Some("2"), Some("it's \"q\"")]),
            key("public.pair", &[Some("10"), Some("x")]),
            key("public.pair", &[Some("3"), Some("y")]),
            key("My Schema.Tags", &[Some("a b")]),
            key("My Schema.Tags", &[Some("back\\slash\nnewline")]),
            key("My Schema.Tags", &[Some("O'Brien")]),
            key("public.flags", &[Some("t"), Some("1")]),
            key("public.flags", &[Some("f"), Some("2")]),
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, expected);
        // Neither the rolled-back transaction nor writes before the slot.
        for absent in [
            key("public.pair", &[Some("99"), Some("rolled back")]),
            key("My Schema.Tags", &[Some("gone")]),
            key("public.pair", &[Some("50"), Some("before the slot")]),
        ] {
            assert!(!keys.contains(&absent), "{absent:?}");
        }

        // One transaction per autocommit statement and explicit block, in
        // commit order, with increasing transaction ids.
        let shapes: Vec<Vec<(&str, WalOp)>> = txs
            .iter()
            .map(|tx| tx.changes.iter().map(|c| (c.table.as_str(), c.op)).collect())
            .collect();
        use WalOp::*;
        assert_eq!(
            shapes,
            vec![
                vec![("public.pair", Insert), ("public.pair", Insert)],
                vec![("My Schema.Tags", Insert), ("My Schema.Tags", Insert)],
                vec![("public.pair", Update)],
                vec![("public.pair", Update)],
                vec![("My Schema.Tags", Delete)],
                vec![("public.pair", Insert), ("public.pair", Delete)],
                vec![("public.scratch", Insert)],
                vec![("public.scratch", Truncate)],
                vec![("My Schema.Tags", Insert)],
                vec![("public.flags", Insert), ("public.flags", Insert)],
            ]
        );
        assert!(txs.windows(2).all(|w| w[0].xid < w[1].xid), "{txs:?}");
        assert!(txs
            .iter()
            .all(|tx| tx.commit_time.len() >= "2026-01-01 00:00:00+00".len()));
        // Only the key-changing update logged its old key.
        assert_eq!(txs[2].changes[0].old_key, None);
        assert_eq!(
            txs[3].changes[0].old_key,
            Some(vec![col("a", Some("1")), col("b", Some("x"))])
        );
        assert_eq!(
            txs[3].changes[0].columns,
            vec![col("a", Some("10")), col("b", Some("x")), col("v", None)]
        );
        Ok(())
    }

    fn commit(session_id: u64, tables: Vec<TableKeys>) -> Record {
        Record::Commit(CommitRecord {
            session_id,
            commit_time_micros: 1_000 * session_id as i64,
            tables,
            statements: vec!["-- audit".into()],
            backend_pid: 0,
        })
    }

    fn table_keys(table: &str, key_columns: &[&str], keys: &[&[Option<&str>]]) -> TableKeys {
        TableKeys {
            table: table.into(),
            key_columns: key_columns.iter().map(|c| c.to_string()).collect(),
            keys: keys
                .iter()
                .map(|k| k.iter().map(|v| v.map(str::to_owned)).collect())
                .collect(),
        }
    }

    #[test]
    fn logged_keys_collects_every_commit() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let writer = LogWriter::open(dir.path(), LogOptions::default())?;
        writer.append_blocking(Record::Marker(Marker::CaptureStart { time_micros: 0 }))?;
        writer.append_blocking(commit(
            1,
            vec![
                table_keys(
                    "public.pair",
                    &["a", "b"],
                    &[&[Some("1"), Some("it's")], &[Some("2"), None]],
                ),
                table_keys("My Schema.Tags", &["Code"], &[&[Some("a b")]]),
            ],
        ))?;
        writer.append_blocking(Record::Marker(Marker::Barrier { time_micros: 1 }))?;
        writer.append_blocking(commit(
            2,
            vec![
                table_keys(
                    "public.pair",
                    &["a", "b"],
                    &[&[Some("1"), Some("it's")], &[Some("3"), Some("")]],
                ),
                table_keys("public.nokey", &[], &[]),
            ],
        ))?;
        writer.close()?;

        let expected: KeySet = [
            key("public.pair", &[Some("1"), Some("it's")]),
            key("public.pair", &[Some("2"), None]),
            key("public.pair", &[Some("3"), Some("")]),
            key("My Schema.Tags", &[Some("a b")]),
        ]
        .into_iter()
        .collect();
        assert_eq!(logged_keys(dir.path())?, expected);
        Ok(())
    }
}
