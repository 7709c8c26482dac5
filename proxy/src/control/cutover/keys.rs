//! The keys the verify step compares, read from the capture log: those of
//! the commits the final pass synced, and a random sample of earlier ones.

use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use switchyard_replay::log::{Key, LogError, LogReader, Lsn, Record};

/// Keys per table (`schema.table` as logged).
pub(super) type TableKeys = BTreeMap<String, BTreeSet<Key>>;

/// How far back, in log records, the sample reaches.
pub(super) const SAMPLE_WINDOW: u64 = 200_000;

/// The keys of every commit after `after` up to `upto`, with how many
/// keys were logged (before de-duplication).
pub(super) fn between(dir: &Path, after: Lsn, upto: Lsn) -> Result<(TableKeys, u64), LogError> {
    let mut keys = TableKeys::new();
    let mut logged = 0;
    let mut reader = LogReader::open(dir, after.next())?;
    while let Some(entry) = reader.next()? {
        if entry.lsn > upto {
            break;
        }
        if let Record::Commit(c) = entry.record {
            for t in c.tables {
                logged += t.keys.len() as u64;
                keys.entry(t.table).or_default().extend(t.keys);
            }
        }
    }
    Ok((keys, logged))
}

/// At most `n` keys drawn uniformly (reservoir sampling) from the commits
/// of the last [`SAMPLE_WINDOW`] records up to `upto`.
pub(super) fn sample(dir: &Path, upto: Lsn, n: usize) -> Result<TableKeys, LogError> {
    let mut picked: Vec<(String, Key)> = Vec::with_capacity(n);
    if n == 0 || upto.0 == 0 {
        return Ok(TableKeys::new());
    }
    let from = Lsn(upto.0.saturating_sub(SAMPLE_WINDOW).max(1));
    // A log whose oldest segments were deleted (retention keeping fewer
    // records than the window) starts later: sample from its oldest record.
    let mut reader = match LogReader::open(dir, from) {
        Err(LogError::LsnUnavailable { oldest, .. }) => LogReader::open(dir, oldest)?,
        other => other?,
    };
    let mut rng = rand::rng();
    let mut seen = 0u64;
    while let Some(entry) = reader.next()? {
        if entry.lsn > upto {
            break;
        }
        let Record::Commit(c) = entry.record else { continue };
        for t in c.tables {
            for key in t.keys {
                seen += 1;
                if picked.len() < n {
                    picked.push((t.table.clone(), key));
                } else {
                    let j = rng.random_range(0..seen);
                    if (j as usize) < n {
                        picked[j as usize] = (t.table.clone(), key);
                    }
                }
            }
        }
    }
    let mut keys = TableKeys::new();
    for (table, key) in picked {
        keys.entry(table).or_default().insert(key);
    }
    Ok(keys)
}

/// Adds `more` to `keys`.
pub(super) fn merge(keys: &mut TableKeys, more: TableKeys) {
    for (table, k) in more {
        keys.entry(table).or_default().extend(k);
    }
}

/// How many keys in all.
pub(super) fn count(keys: &TableKeys) -> u64 {
    keys.values().map(|k| k.len() as u64).sum()
}
