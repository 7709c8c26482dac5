//! What a cutover must leave behind, checked after the load: the target
//! holds the source as it was at the switch plus exactly the writes made
//! after it, and every transaction a client saw committed.
//!
//! A plain table compare cannot work once the load goes on writing the
//! target after the switch. Instead, with the source untouched since the
//! switch (the proxy, or PgBouncer, sends nothing there any more):
//!
//! - every `pgbench_history` row of the source is on the target, equal
//!   column for column (the rows committed before the switch);
//! - the target's other history rows are the writes after the switch, and
//!   every account, teller and branch on the target has the source's
//!   balance plus the deltas of those rows for it (a full compare of every
//!   row of the three tables, through the history);
//! - pgbench's own invariant holds on the target: each balance is the sum of
//!   its history deltas (`pgbench -i` starts every balance at 0);
//! - every transaction the load generator saw committed has its tagged
//!   history row on the target exactly once, and no transaction that failed
//!   left one.

use super::load::{parse_tag, Outcome, Tx};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use tokio_postgres::Client;

/// Examples of differences kept for the report.
const KEPT_EXAMPLES: usize = 10;

/// The balance tables, each with its key and balance column.
const BALANCES: [(&str, &str, &str); 3] = [
    ("pgbench_accounts", "aid", "abalance"),
    ("pgbench_tellers", "tid", "tbalance"),
    ("pgbench_branches", "bid", "bbalance"),
];

/// What the check found.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Verdict {
    /// Rows of the target that differ from the source at the switch plus
    /// the later writes: history rows missing or changed, balances off, and
    /// the difference in row counts of the balance tables.
    pub(super) rows_differing: u64,
    /// Balances on the target that are not the sum of their history deltas.
    pub(super) invariant_violations: u64,
    /// Transactions seen committed whose history row is not on the target.
    pub(super) committed_missing: u64,
    /// Transactions whose history row is on the target more than once.
    pub(super) committed_duplicated: u64,
    /// History rows on the target of transactions the client saw fail.
    pub(super) failed_but_present: u64,
    /// Transactions seen committed.
    pub(super) committed: u64,
    /// History rows on the source (committed before the switch).
    pub(super) history_before_switch: u64,
    /// History rows on the target that are not on the source.
    pub(super) history_after_switch: u64,
    /// A few of the differences, for diagnosis.
    pub(super) examples: Vec<String>,
}

impl Verdict {
    /// Nothing lost, nothing changed, nothing extra.
    pub(super) fn is_clean(&self) -> bool {
        self.rows_differing == 0
            && self.invariant_violations == 0
            && self.committed_missing == 0
            && self.committed_duplicated == 0
            && self.failed_but_present == 0
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < KEPT_EXAMPLES {
            self.examples.push(text);
        }
    }
}

/// One history row, its key apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct History {
    tid: i32,
    bid: i32,
    aid: i32,
    delta: i32,
    filler: String,
}

/// One side's tables: history by `hid`, and each balance table's non-zero
/// balances by key with its row count.
struct Side {
    history: BTreeMap<i64, History>,
    balances: Vec<(HashMap<i32, i64>, i64)>,
}

impl Side {
    async fn read(client: &Client, what: &str) -> Result<Side> {
        let rows = client
            .query(
                "SELECT hid, tid, bid, aid, delta, coalesce(rtrim(filler), '') FROM pgbench_history",
                &[],
            )
            .await
            .with_context(|| format!("reading pgbench_history on the {what}"))?;
        let mut history = BTreeMap::new();
        for r in rows {
            history.insert(
                r.try_get::<_, i64>(0)?,
                History {
                    tid: r.try_get(1)?,
                    bid: r.try_get(2)?,
                    aid: r.try_get(3)?,
                    delta: r.try_get(4)?,
                    filler: r.try_get::<_, String>(5)?.trim_end().to_owned(),
                },
            );
        }
        let mut balances = Vec::new();
        for (table, key, balance) in BALANCES {
            // Balances are int4: summed as int8 so that no sum overflows.
            let sql = format!("SELECT {key}, {balance}::int8 FROM {table} WHERE {balance} <> 0");
            let rows = client
                .query(&sql, &[])
                .await
                .with_context(|| format!("reading {table} on the {what}"))?;
            let map = rows
                .iter()
                .map(|r| Ok((r.try_get::<_, i32>(0)?, r.try_get::<_, i64>(1)?)))
                .collect::<Result<HashMap<_, _>>>()?;
            let count: i64 = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .with_context(|| format!("counting {table} on the {what}"))?
                .try_get(0)?;
            balances.push((map, count));
        }
        Ok(Side { history, balances })
    }
}

/// The history row's key in balance table `i` (accounts, tellers, branches).
fn key_of(h: &History, i: usize) -> i32 {
    match i {
        0 => h.aid,
        1 => h.tid,
        _ => h.bid,
    }
}

/// Checks the target against the source at the switch and the generator's
/// record; see the module comment for what is compared.
pub(super) async fn verify(source: &Client, target: &Client, txs: &[Tx]) -> Result<Verdict> {
    let before = Side::read(source, "source").await?;
    let after = Side::read(target, "target").await?;
    let mut v = Verdict {
        history_before_switch: before.history.len() as u64,
        ..Verdict::default()
    };
    for (hid, row) in &before.history {
        if after.history.get(hid) != Some(row) {
            v.rows_differing += 1;
            v.example(format!(
                "history hid {hid}: source {row:?}, target {:?}",
                after.history.get(hid)
            ));
        }
    }
    let later: Vec<&History> = after
        .history
        .iter()
        .filter(|(hid, _)| !before.history.contains_key(hid))
        .map(|(_, h)| h)
        .collect();
    v.history_after_switch = later.len() as u64;
    for (i, (table, key, _)) in BALANCES.iter().enumerate() {
        let (src, src_count) = &before.balances[i];
        let (dst, dst_count) = &after.balances[i];
        v.rows_differing += src_count.abs_diff(*dst_count);
        let expected = add_deltas(src.clone(), later.iter().copied(), i);
        let from_history = add_deltas(HashMap::new(), after.history.values(), i);
        for (k, want, got) in differences(&expected, dst) {
            v.rows_differing += 1;
            v.example(format!(
                "{table} {key} {k}: source at the switch plus later deltas {want}, target {got}"
            ));
        }
        for (k, want, got) in differences(&from_history, dst) {
            v.invariant_violations += 1;
            v.example(format!(
                "{table} {key} {k}: sum of history deltas {want}, balance {got}"
            ));
        }
    }
    check_committed(&mut v, &after, txs);
    Ok(v)
}

/// `base` plus each history row's delta under its key in table `i`, zeros
/// dropped (the sides list only non-zero balances).
fn add_deltas<'a>(mut base: HashMap<i32, i64>, rows: impl Iterator<Item = &'a History>, i: usize) -> HashMap<i32, i64> {
    for h in rows {
        *base.entry(key_of(h, i)).or_insert(0) += i64::from(h.delta);
    }
    base.retain(|_, b| *b != 0);
    base
}

/// Keys whose balance differs between `want` and `got` (absent is 0).
fn differences(want: &HashMap<i32, i64>, got: &HashMap<i32, i64>) -> Vec<(i32, i64, i64)> {
    let keys: HashSet<i32> = want.keys().chain(got.keys()).copied().collect();
    let mut out: Vec<(i32, i64, i64)> = keys
        .into_iter()
        .filter_map(|k| {
            let (w, g) = (want.get(&k).copied().unwrap_or(0), got.get(&k).copied().unwrap_or(0));
            (w != g).then_some((k, w, g))
        })
        .collect();
    out.sort_unstable();
    out
}

/// Every committed transaction's tag on the target once; no failed one's.
fn check_committed(v: &mut Verdict, after: &Side, txs: &[Tx]) {
    let mut seen: HashMap<(u16, u32), u32> = HashMap::new();
    for h in after.history.values() {
        if let Some(tag) = parse_tag(&h.filler) {
            *seen.entry(tag).or_insert(0) += 1;
        }
    }
    for t in txs {
        let n = seen.get(&(t.client, t.seq)).copied().unwrap_or(0);
        match t.outcome {
            Outcome::Committed => {
                v.committed += 1;
                if n == 0 {
                    v.committed_missing += 1;
                    v.example(format!(
                        "transaction {}-{} was committed at {} us and is not on the target",
                        t.client, t.seq, t.end_us
                    ));
                }
            }
            Outcome::Failed if n > 0 => {
                v.failed_but_present += 1;
                v.example(format!(
                    "transaction {}-{} failed but its history row is on the target",
                    t.client, t.seq
                ));
            }
            Outcome::Failed | Outcome::Unknown => {}
        }
        if n > 1 {
            v.committed_duplicated += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(aid: i32, delta: i32) -> History {
        History {
            tid: 1,
            bid: 1,
            aid,
            delta,
            filler: String::new(),
        }
    }

    #[test]
    fn deltas_add_up_and_zeros_drop() {
        let rows = [h(1, 5), h(1, -5), h(2, 3)];
        let sums = add_deltas(HashMap::from([(3, 7)]), rows.iter(), 0);
        assert_eq!(sums, HashMap::from([(2, 3), (3, 7)]));
    }

    #[test]
    fn differences_treat_absent_as_zero() {
        let want = HashMap::from([(1, 5), (2, 3)]);
        let got = HashMap::from([(1, 5), (4, -1)]);
        assert_eq!(differences(&want, &got), vec![(2, 3, 0), (4, 0, -1)]);
    }
}
