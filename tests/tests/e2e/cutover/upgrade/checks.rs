//! What the upgrade cycle checks once the load has stopped: the clients'
//! journals against the rows on each side.

use super::load::{Account, Journal};
use crate::support::table;
use anyhow::{ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use tokio_postgres::Client;

async fn rows(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    Ok(table(c, sql).await?.rows)
}

/// No client saw an error; once a client wrote on the target it never
/// wrote on the source again; some writes happened after the flip.
pub fn check_ports(journals: &[Journal], target_port: i32) -> Result<()> {
    let mut after_flip = 0;
    for (me, j) in journals.iter().enumerate() {
        ensure!(j.errors.is_empty(), "client {me} saw errors: {:?}", j.errors);
        let first = j
            .ports
            .iter()
            .position(|p| *p == target_port)
            .with_context(|| format!("client {me} never reached the target"))?;
        ensure!(
            j.ports[first..].iter().all(|p| *p == target_port),
            "client {me} wrote to the source after the flip"
        );
        after_flip += j.ports.len() - first;
    }
    ensure!(after_flip > 0, "no write after the flip");
    Ok(())
}

/// The target holds every write a client saw committed, the source exactly
/// those it committed; the sequence went on across the flip; the migrated
/// column is right for every row last written on the source.
pub async fn check_data(
    journals: &[Journal],
    source: &Client,
    target: &Client,
    source_port: i32,
    target_port: i32,
) -> Result<()> {
    let mut all = BTreeMap::new();
    let mut before = BTreeMap::new();
    let mut last_port = BTreeMap::new();
    for j in journals {
        all.extend(j.accounts.clone());
        before.extend(j.accounts_source.clone());
        last_port.extend(j.last_port.clone());
    }
    let as_rows = |m: &BTreeMap<i32, Account>| -> Vec<Vec<Option<String>>> {
        m.iter()
            .map(|(id, (bal, note, tier))| {
                vec![
                    Some(id.to_string()),
                    Some(bal.to_string()),
                    Some(note.clone()),
                    Some(tier.clone()),
                ]
            })
            .collect()
    };
    let q = "SELECT id, balance, note, tier FROM account ORDER BY id";
    ensure!(
        rows(target, q).await? == as_rows(&all),
        "target account differs from what clients committed"
    );
    ensure!(
        rows(source, q).await? == as_rows(&before),
        "source account differs from what it committed"
    );
    // Columns the clients did not journal, compared side by side for every
    // row last written before the flip (the catch-up carried them over).
    let settled: Vec<i32> = all
        .keys()
        .filter(|id| last_port.get(*id) != Some(&target_port))
        .copied()
        .collect();
    let written = settled.iter().filter(|id| last_port.contains_key(*id)).count();
    ensure!(written > 0, "no account was last written before the flip: {settled:?}");
    let ids = settled.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    let q = format!("SELECT id, attrs::text, touched::text FROM account WHERE id IN ({ids}) ORDER BY id");
    ensure!(
        rows(target, &q).await? == rows(source, &q).await?,
        "jsonb or timestamptz differ between source and target"
    );
    let q = format!("SELECT count(*) FROM account WHERE id IN ({ids}) AND note_len <> length(note)");
    let bad = rows(target, &q).await?;
    ensure!(
        bad[0][0].as_deref() == Some("0"),
        "the mapped note_len is wrong: {bad:?}"
    );

    let mut labels = BTreeSet::new();
    let mut labels_before = BTreeSet::new();
    for j in journals {
        labels.extend(j.labels.clone());
        labels_before.extend(j.labels_source.clone());
    }
    let label_rows = |s: &BTreeSet<(i32, String)>| -> Vec<Vec<Option<String>>> {
        s.iter()
            .map(|(a, n)| vec![Some(a.to_string()), Some(n.clone())])
            .collect()
    };
    let q = "SELECT account, name FROM label ORDER BY account, name";
    ensure!(rows(target, q).await? == label_rows(&labels), "target label differs");
    ensure!(
        rows(source, q).await? == label_rows(&labels_before),
        "source label differs"
    );

    check_ledger(journals, source, target, source_port, target_port).await
}

/// Every ledger insert on its side; ids after the flip continue the
/// source's sequence, without a duplicate.
async fn check_ledger(
    journals: &[Journal],
    source: &Client,
    target: &Client,
    source_port: i32,
    target_port: i32,
) -> Result<()> {
    let mut ledger: Vec<_> = journals.iter().flat_map(|j| j.ledger.clone()).collect();
    ledger.sort();
    let expected = |only: Option<i32>| -> Vec<Vec<Option<String>>> {
        ledger
            .iter()
            .filter(|e| only.is_none_or(|p| e.5 == p))
            .map(|e| {
                vec![
                    Some(e.0.to_string()),
                    Some(e.1.to_string()),
                    Some(e.2.to_string()),
                    Some(format!("{}.{:02}", e.3 / 100, e.3 % 100)),
                    Some(e.4.clone()),
                ]
            })
            .collect()
    };
    let q = "SELECT id, client, seq, amount, memo FROM ledger ORDER BY id";
    ensure!(rows(target, q).await? == expected(None), "target ledger differs");
    ensure!(
        rows(source, q).await? == expected(Some(source_port)),
        "source ledger differs"
    );
    let last_before = ledger.iter().filter(|e| e.5 == source_port).map(|e| e.0).max();
    let first_after = ledger.iter().filter(|e| e.5 == target_port).map(|e| e.0).min();
    let (Some(last_before), Some(first_after)) = (last_before, first_after) else {
        anyhow::bail!("ledger entries on both sides expected: {last_before:?} / {first_after:?}");
    };
    ensure!(
        first_after > last_before,
        "the target's sequence gave {first_after} after the source's {last_before}"
    );
    Ok(())
}
