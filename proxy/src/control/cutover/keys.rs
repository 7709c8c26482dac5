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
    let mut tail = Tail::at(dir, after)?;
    tail.read_to(upto)?;
    Ok(tail.keys(after, upto))
}

/// The log followed from the end of preflight on, so that the final sync
/// reads only the records written since: opening a reader scans its segment
/// from the start, megabytes into a busy log, which the pause would pay.
pub(super) struct Tail {
    dir: std::path::PathBuf,
    /// The position it follows from: commits after it.
    from: Lsn,
    reader: LogReader,
    /// The commits read, oldest first.
    commits: Vec<(Lsn, CommitKeys)>,
}

/// One commit's keys, per table as logged.
type CommitKeys = Vec<(String, Vec<Key>)>;

impl Tail {
    /// A tail of the commits after `after`, read up to the log's end.
    pub(super) fn open(dir: &Path, after: Lsn) -> Result<Tail, LogError> {
        let mut tail = Tail::at(dir, after)?;
        while let Some(entry) = tail.reader.next()? {
            tail.keep(entry);
        }
        Ok(tail)
    }

    /// A tail of the commits after `after`, nothing read yet.
    fn at(dir: &Path, after: Lsn) -> Result<Tail, LogError> {
        Ok(Tail {
            dir: dir.to_path_buf(),
            from: after,
            reader: LogReader::open(dir, after.next())?,
            commits: Vec::new(),
        })
    }

    /// What [`between`] reads, from the tail: the keys of every commit
    /// after `after` up to `upto`, with how many were logged. From the log
    /// itself when the tail cannot tell: `after` below where it started (a
    /// replayer that restarted from an older position), or the tail's
    /// segments gone (retention keeping few records).
    pub(super) fn between(mut self, after: Lsn, upto: Lsn) -> Result<(TableKeys, u64), LogError> {
        if after < self.from {
            return between(&self.dir, after, upto);
        }
        match self.read_to(upto) {
            Ok(()) => Ok(self.keys(after, upto)),
            Err(_) => between(&self.dir, after, upto),
        }
    }

    /// Reads on up to the record at `upto` (or the log's end).
    fn read_to(&mut self, upto: Lsn) -> Result<(), LogError> {
        while let Some(entry) = self.reader.next()? {
            let lsn = entry.lsn;
            if lsn > upto {
                break;
            }
            self.keep(entry);
            if lsn == upto {
                break;
            }
        }
        Ok(())
    }

    /// The keys of the commits read after `after` up to `upto`, with how
    /// many were logged.
    fn keys(self, after: Lsn, upto: Lsn) -> (TableKeys, u64) {
        let mut keys = TableKeys::new();
        let mut logged = 0;
        for (_, tables) in self.commits.into_iter().filter(|(lsn, _)| *lsn > after && *lsn <= upto) {
            for (table, k) in tables {
                logged += k.len() as u64;
                keys.entry(table).or_default().extend(k);
            }
        }
        (keys, logged)
    }

    fn keep(&mut self, entry: switchyard_replay::log::LogEntry) {
        if let Record::Commit(c) = entry.record {
            let tables = c.tables.into_iter().map(|t| (t.table, t.keys)).collect();
            self.commits.push((entry.lsn, tables));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_replay::log::{CommitRecord, LogOptions, LogWriter, Marker, TableKeys as LoggedKeys};

    fn commit(i: u64) -> Record {
        Record::Commit(CommitRecord {
            session_id: i % 3,
            commit_time_micros: i as i64,
            tables: vec![LoggedKeys {
                table: format!("public.t{}", i % 2),
                key_columns: vec!["id".to_owned()],
                keys: vec![vec![Some(i.to_string())], vec![Some((i / 2).to_string())]],
            }],
            statements: Vec::new(),
            backend_pid: 0,
        })
    }

    #[test]
    fn the_tail_reads_the_same_final_keys_as_a_reader_opened_at_the_freeze() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            segment_size: 4096,
            ..LogOptions::default()
        };
        let writer = LogWriter::open(dir.path(), options).unwrap();
        let append = |r: Record| writer.append_blocking(r).unwrap();
        for i in 0..300 {
            append(commit(i));
        }
        // Preflight ends with the replayer at 250: the tail starts there.
        let tail = Tail::open(dir.path(), Lsn(250)).unwrap();
        for i in 300..500 {
            append(commit(i));
        }
        for i in 500..640 {
            append(commit(i));
        }
        // The freeze: the replayer is at 600, the marker follows the commits.
        let marker = append(Record::Marker(Marker::Freeze { time_micros: 1 }));
        append(commit(9999));
        let from_tail = tail.between(Lsn(600), marker).unwrap();
        let read_at_freeze = between(dir.path(), Lsn(600), marker).unwrap();
        assert_eq!(from_tail, read_at_freeze);
        assert_eq!(from_tail.1, 80, "two keys for each of the 40 commits after 600");
        assert!(!from_tail.0.values().any(|k| k.contains(&vec![Some("9999".to_owned())])));
        assert!(list_segments_count(dir.path()) > 3, "the log rolled over meanwhile");
    }

    #[test]
    fn a_position_below_the_tails_start_is_read_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let writer = LogWriter::open(dir.path(), LogOptions::default()).unwrap();
        for i in 0..50 {
            writer.append_blocking(commit(i)).unwrap();
        }
        let tail = Tail::open(dir.path(), Lsn(40)).unwrap();
        let marker = writer
            .append_blocking(Record::Marker(Marker::Freeze { time_micros: 1 }))
            .unwrap();
        // The replayer restarted from 30: commits 31..=50 are the final ones.
        let (keys, logged) = tail.between(Lsn(30), marker).unwrap();
        assert_eq!((keys, logged), between(dir.path(), Lsn(30), marker).unwrap());
        assert_eq!(logged, 40);
    }

    fn list_segments_count(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }
}
