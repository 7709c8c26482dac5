//! The demo's check of the target once the load has stopped, straight on
//! both servers: every table as the target holds it against the source as
//! the mapping makes it (the source took no write after the flip, so it is
//! the source at the flip), leaving out the rows the clients wrote from the
//! cutover on; every transaction a client saw committed, on the target;
//! and the order sequence going on from the source's value.

use super::load::{Effect, Tx, Written};
use super::shop::{COMPARED, DB, INITIAL_STOCK};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use switchyard_tests::Cluster;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Examples of differences kept for the report.
const EXAMPLES: usize = 5;

/// What the check found.
#[derive(Debug, Default)]
pub(super) struct Checked {
    /// Rows compared source (mapped) against target, and those equal.
    pub(super) rows_compared: u64,
    /// Rows left out: written by a transaction that ended after the
    /// cutover began, so they may differ from the source at the flip.
    pub(super) rows_written_after: u64,
    /// Committed transactions looked for on the target.
    pub(super) committed_checked: u64,
    /// The order sequence on the source (at the flip) and on the target.
    pub(super) source_sequence: i64,
    pub(super) target_sequence: i64,
    /// Orders placed on the target after the flip.
    pub(super) orders_on_target: u64,
    /// Every problem found; empty when the target is right.
    pub(super) problems: Vec<String>,
}

impl Checked {
    fn problem(&mut self, p: String) {
        if self.problems.len() < 3 * EXAMPLES {
            self.problems.push(p);
        }
    }
}

/// Checks the target against the source and the clients' record; `from_us`
/// is when the cutover command was sent and `flip_us` when it was
/// answered, on the load's clock.
pub(super) async fn check(
    source: &Cluster,
    target: &Cluster,
    txs: &[Tx],
    from_us: u64,
    flip_us: u64,
) -> Result<Checked> {
    let src = connect(source, "source").await?;
    let dst = connect(target, "target").await?;
    let mut checked = Checked::default();
    let later: BTreeSet<Written> = txs
        .iter()
        .filter(|t| t.end_us >= from_us)
        .flat_map(|t| t.written.iter().cloned())
        .collect();
    for c in &COMPARED {
        let (s, t) = (text_rows(&src, c.source).await?, text_rows(&dst, c.target).await?);
        compare_table(&mut checked, c.table, &s, &t, &later);
    }
    committed_on_target(&mut checked, &text_rows(&dst, COMPARED[2].target).await?, txs);
    stock_and_addresses(&mut checked, &dst, txs).await?;
    sequences(&mut checked, &src, &dst, txs, flip_us).await?;
    Ok(checked)
}

async fn connect(cluster: &Cluster, side: &str) -> Result<Client> {
    let client = cluster
        .connect(DB)
        .await
        .with_context(|| format!("connecting to the {side}"))?;
    // Timestamps read as text the same way on both servers.
    client
        .batch_execute("SET TIME ZONE 'UTC'")
        .await
        .with_context(|| format!("setting the time zone on the {side}"))?;
    Ok(client)
}

/// A table's rows by key (the first column), every column as text.
async fn text_rows(client: &Client, sql: &str) -> Result<BTreeMap<i64, Vec<Option<String>>>> {
    let mut rows = BTreeMap::new();
    for m in client
        .simple_query(sql)
        .await
        .with_context(|| format!("running {sql}"))?
    {
        let SimpleQueryMessage::Row(row) = m else { continue };
        let key: i64 = row
            .get(0)
            .and_then(|k| k.parse().ok())
            .with_context(|| format!("a row of `{sql}` has no numeric key"))?;
        rows.insert(key, (1..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
    }
    Ok(rows)
}

fn written(table: &str, key: i64) -> Written {
    match table {
        "customers" => Written::Customer(key),
        "products" => Written::Product(key),
        _ => Written::Order(key),
    }
}

/// Source against target row by row, except the rows written later.
fn compare_table(
    checked: &mut Checked,
    table: &str,
    source: &BTreeMap<i64, Vec<Option<String>>>,
    target: &BTreeMap<i64, Vec<Option<String>>>,
    later: &BTreeSet<Written>,
) {
    let keys: BTreeSet<i64> = source.keys().chain(target.keys()).copied().collect();
    for key in keys {
        if later.contains(&written(table, key)) {
            checked.rows_written_after += 1;
            continue;
        }
        match (source.get(&key), target.get(&key)) {
            (Some(s), Some(t)) if s == t => checked.rows_compared += 1,
            (Some(s), Some(t)) => checked.problem(format!("{table} {key} differs: source {s:?}, target {t:?}")),
            (Some(_), None) => checked.problem(format!("{table} {key} is on the source but not on the target")),
            (None, _) => checked.problem(format!(
                "{table} {key} is on the target but not on the source, and no client wrote it after the flip"
            )),
        }
    }
}

/// Every order a client saw committed, with its values, and the status its
/// last committed payment or shipment gave it.
fn committed_on_target(checked: &mut Checked, orders: &BTreeMap<i64, Vec<Option<String>>>, txs: &[Tx]) {
    let mut status: BTreeMap<i64, &str> = BTreeMap::new();
    for t in txs.iter().filter(|t| t.committed) {
        checked.committed_checked += 1;
        match &t.effect {
            Effect::Order {
                id,
                customer,
                product,
                quantity,
                tag,
            } => {
                status.entry(*id).or_insert("new");
                let want = [customer.to_string(), product.to_string(), quantity.to_string()];
                match orders.get(id) {
                    None => checked.problem(format!("order {id} ({tag}) was committed but is not on the target")),
                    Some(row) => {
                        let have: Vec<&str> = row.iter().take(3).map(|v| v.as_deref().unwrap_or("")).collect();
                        if have != want || row.get(6).and_then(|t| t.as_deref()) != Some(tag.as_str()) {
                            checked.problem(format!("order {id} ({tag}) differs on the target: {row:?}"));
                        }
                    }
                }
            }
            Effect::Status { id, status: s } => {
                status.insert(*id, s);
            }
            Effect::Email { .. } | Effect::None => {}
        }
    }
    for (id, want) in status {
        let have = orders.get(&id).and_then(|r| r.get(4)).and_then(|s| s.as_deref());
        if have != Some(want) {
            checked.problem(format!("order {id} should be `{want}` on the target, is {have:?}"));
        }
    }
}

/// Each product's stock is its initial stock less every committed order's
/// quantity, wherever it committed; and every customer's address is the
/// last one its client committed.
async fn stock_and_addresses(checked: &mut Checked, dst: &Client, txs: &[Tx]) -> Result<()> {
    let mut sold: BTreeMap<i32, i64> = BTreeMap::new();
    let mut emails: BTreeMap<i32, &str> = BTreeMap::new();
    for t in txs.iter().filter(|t| t.committed) {
        match &t.effect {
            Effect::Order { product, quantity, .. } => *sold.entry(*product).or_insert(0) += i64::from(*quantity),
            Effect::Email { customer, email } => {
                emails.insert(*customer, email);
            }
            _ => {}
        }
    }
    for row in dst
        .query("SELECT id, stock FROM products", &[])
        .await
        .context("reading the target's stock")?
    {
        let (id, stock): (i32, i64) = (row.try_get(0)?, row.try_get(1)?);
        let want = INITIAL_STOCK - sold.get(&id).copied().unwrap_or(0);
        if stock != want {
            checked.problem(format!(
                "product {id} has stock {stock} on the target; the committed orders leave {want}"
            ));
        }
    }
    let ids: Vec<i32> = emails.keys().copied().collect();
    let rows = dst
        .query("SELECT id, email FROM customers WHERE id = ANY($1)", &[&ids])
        .await
        .context("reading the target's customers")?;
    let have: BTreeMap<i32, String> = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    for (id, want) in emails {
        if have.get(&id).map(String::as_str) != Some(want) {
            checked.problem(format!(
                "customer {id} should have address {want} on the target, has {:?}",
                have.get(&id)
            ));
        }
    }
    Ok(())
}

/// The order sequence: orders placed after the flip got ids past the
/// source's last value, and the target's sequence is past them.
async fn sequences(checked: &mut Checked, src: &Client, dst: &Client, txs: &[Tx], flip_us: u64) -> Result<()> {
    checked.source_sequence = last_value(src).await?;
    checked.target_sequence = last_value(dst).await?;
    for t in txs.iter().filter(|t| t.committed && t.start_us > flip_us) {
        if let Effect::Order { id, tag, .. } = &t.effect {
            checked.orders_on_target += 1;
            if *id <= checked.source_sequence || *id > checked.target_sequence {
                let (s, d) = (checked.source_sequence, checked.target_sequence);
                checked.problem(format!(
                    "order {id} ({tag}) placed after the flip is not between the source's sequence {s} and the target's {d}"
                ));
            }
        }
    }
    Ok(())
}

async fn last_value(c: &Client) -> Result<i64> {
    c.query_one("SELECT last_value FROM orders_id_seq", &[])
        .await
        .context("reading orders_id_seq")?
        .try_get(0)
        .context("reading orders_id_seq's last_value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(rows: &[(i64, &str)]) -> BTreeMap<i64, Vec<Option<String>>> {
        rows.iter().map(|(k, v)| (*k, vec![Some((*v).to_owned())])).collect()
    }

    #[test]
    fn rows_written_after_the_cutover_are_left_out_and_the_rest_must_match() {
        let source = rows(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]);
        // 2 changed and 5 inserted on the target after the flip; 3 differs
        // and 4 is missing without a client having written them.
        let target = rows(&[(1, "a"), (2, "B"), (3, "x"), (5, "e")]);
        let later: BTreeSet<Written> = [Written::Order(2), Written::Order(5), Written::Customer(3)].into();
        let mut checked = Checked::default();
        compare_table(&mut checked, "orders", &source, &target, &later);
        assert_eq!((checked.rows_compared, checked.rows_written_after), (1, 2));
        assert_eq!(checked.problems.len(), 2, "{:?}", checked.problems);
        assert!(
            checked.problems[0].starts_with("orders 3 differs"),
            "{:?}",
            checked.problems
        );
        assert!(checked.problems[1].contains("orders 4 is on the source but not on the target"));
    }
}
