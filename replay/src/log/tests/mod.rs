//! Unit tests of the capture log against real files in temporary directories.

mod codec;
mod recovery;
mod retention;
mod roundtrip;
mod writer;

use std::path::Path;

use super::{CommitRecord, LogEntry, LogOptions, LogReader, Lsn, Record, TableKeys};

/// A small deterministic PRNG (splitmix64), so failures reproduce.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub(super) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[char] = &['a', 'z', '0', '9', ' ', '\'', '"', 'é', '中', '🚂', '\n', '\0'];
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize])
            .collect()
    }
}

/// A commit record of random shape; `size` scales how many keys it has.
pub(super) fn random_commit(rng: &mut Rng, session_id: u64, size: usize) -> Record {
    let ntables = rng.below(4) as usize;
    let tables = (0..ntables)
        .map(|t| {
            let ncols = 1 + rng.below(3) as usize;
            let nkeys = rng.below(size as u64 + 1) as usize;
            TableKeys {
                table: format!("public.t{t}_{}", rng.text(3)),
                key_columns: (0..ncols).map(|c| format!("k{c}")).collect(),
                keys: (0..nkeys)
                    .map(|_| {
                        (0..ncols)
                            .map(|_| match rng.below(8) {
                                0 => None,
                                1 => Some(String::new()),
                                _ => {
                                    let len = 1 + rng.below(24) as usize;
                                    Some(rng.text(len))
                                }
                            })
                            .collect()
                    })
                    .collect(),
            }
        })
        .collect();
    let statements = (0..rng.below(3))
        .map(|_| format!("UPDATE t SET v = {}", rng.text(8)))
        .collect();
    Record::Commit(CommitRecord {
        session_id,
        commit_time_micros: rng.next_u64() as i64,
        tables,
        statements,
        backend_pid: (rng.next_u64() % 100_000) as i32,
    })
}

/// A commit with one table and `n` integer keys, tagged by session and sequence.
pub(super) fn tagged_commit(session_id: u64, seq: u64, n: usize) -> Record {
    Record::Commit(CommitRecord {
        session_id,
        commit_time_micros: seq as i64,
        tables: vec![TableKeys {
            table: "public.accounts".into(),
            key_columns: vec!["id".into()],
            keys: (0..n)
                .map(|i| vec![Some(format!("{}", seq * 1000 + i as u64))])
                .collect(),
        }],
        statements: vec![format!("UPDATE accounts SET n = n + 1 -- {session_id}/{seq}")],
        backend_pid: 0,
    })
}

/// Options with a small segment size, to exercise rollover.
pub(super) fn small_segments(segment_size: u64) -> LogOptions {
    LogOptions {
        segment_size,
        ..LogOptions::default()
    }
}

/// Every record currently in the log from `from`, stopping at the end.
pub(super) fn read_all(dir: &Path, from: Lsn) -> Vec<LogEntry> {
    let mut reader = LogReader::open(dir, from).expect("open reader");
    let mut out = Vec::new();
    while let Some(entry) = reader.next().expect("read") {
        out.push(entry);
    }
    out
}

/// The single newest segment file.
pub(super) fn last_segment(dir: &Path) -> std::path::PathBuf {
    super::list_segments(dir).expect("list").pop().expect("a segment").path
}
