//! Capture-log record types and their payload encoding.
//!
//! ```text
//! payload  = lsn:u64le kind:u8 body
//! commit   (kind 1) = session:varint time:zigzag ntables:varint table* nstmts:varint str*
//! table    = name:str ncols:varint str{ncols} nkeys:varint (value{ncols}){nkeys}
//! value    = varint 0 (NULL) | varint len+1, bytes[len]
//! marker   (kind 2) = tag:u8 time:zigzag      tags: 1 start, 2 stop, 3 barrier
//! str      = len:varint bytes[len]            (UTF-8)
//! ```
//!
//! To add a record kind, add a `Record` variant and a new kind byte; never
//! reuse or reinterpret a kind byte. Older readers refuse unknown kinds with
//! [`DecodeError::UnknownKind`] instead of skipping them.

use super::codec::{put_count, put_i64, put_str, put_varint, DecodeError, Decoder};
use super::error::InvalidRecord;
use super::Lsn;

const KIND_COMMIT: u8 = 1;
const KIND_MARKER: u8 = 2;
/// A commit record that ends with the backend pid (written from now on;
/// `KIND_COMMIT` records, without it, still decode).
const KIND_COMMIT_PID: u8 = 3;

const MARKER_CAPTURE_START: u8 = 1;
const MARKER_CAPTURE_STOP: u8 = 2;
const MARKER_BARRIER: u8 = 3;
const MARKER_SETTLED: u8 = 4;
const MARKER_CAPTURE_RESUME: u8 = 5;
const MARKER_FREEZE: u8 = 6;

/// The key column values of one row, in PostgreSQL text format, in the order
/// of the table's key columns; `None` is SQL NULL.
pub type Key = Vec<Option<String>>;

/// One record as stored in the log: its position and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Position assigned by the writer.
    pub lsn: Lsn,
    /// The record.
    pub record: Record,
}

/// The content of a log record. The writer assigns the LSN, so records are
/// submitted without one and come back as [`LogEntry`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// The keys one committed transaction wrote.
    Commit(CommitRecord),
    /// A point of interest in the capture's life.
    Marker(Marker),
}

/// The keys one transaction wrote, logged before its commit reaches the
/// database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitRecord {
    /// The proxy session that ran the transaction.
    pub session_id: u64,
    /// When the commit was sent, in microseconds since the Unix epoch.
    pub commit_time_micros: i64,
    /// Keys written, per table.
    pub tables: Vec<TableKeys>,
    /// The statement texts, for audit.
    pub statements: Vec<String>,
    /// The source backend that ran it (0: unknown), so that a reader can
    /// tell whether a commit never marked settled may still be running.
    pub backend_pid: i32,
}

/// The keys written in one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableKeys {
    /// Qualified table name, `schema.table`.
    pub table: String,
    /// Names of the key columns.
    pub key_columns: Vec<String>,
    /// One entry per row written; each has one value per key column.
    pub keys: Vec<Key>,
}

/// Markers in the capture's life, with their time in microseconds since the
/// Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Marker {
    /// Capture was switched on.
    CaptureStart {
        /// When, in Unix microseconds.
        time_micros: i64,
    },
    /// Capture was switched off.
    CaptureStop {
        /// When, in Unix microseconds.
        time_micros: i64,
    },
    /// Capture went on after an interruption: a proxy started again after a
    /// crash, or a failed log writable again. Commits logged before it and
    /// never settled may have lost their `Settled` marker: look at their
    /// backends at once.
    CaptureResume {
        /// When, in Unix microseconds.
        time_micros: i64,
    },
    /// The barrier was reached: no transaction older than capture is open.
    Barrier {
        /// When, in Unix microseconds.
        time_micros: i64,
    },
    /// The transaction of the commit record at `commit` has ended on the
    /// source (its COMMIT answered): its writes are visible to any snapshot
    /// taken from now on, or it rolled back. A commit record is written
    /// before the COMMIT goes to the database, so until this marker a reader
    /// of the source may still see the rows as they were.
    Settled {
        /// The commit record's position.
        commit: Lsn,
    },
    /// A cutover froze traffic: every session was at a transaction
    /// boundary when it was written, so every commit logged before it has
    /// ended on the source (committed or rolled back), settled or not.
    Freeze {
        /// When, in Unix microseconds.
        time_micros: i64,
    },
}

impl Record {
    /// Checks what encoding cannot: every key has one value per key column.
    pub fn validate(&self) -> Result<(), InvalidRecord> {
        let Record::Commit(commit) = self else {
            return Ok(());
        };
        for t in &commit.tables {
            if t.key_columns.is_empty() && !t.keys.is_empty() {
                return Err(InvalidRecord::KeysWithoutColumns { table: t.table.clone() });
            }
            if let Some(bad) = t.keys.iter().find(|k| k.len() != t.key_columns.len()) {
                return Err(InvalidRecord::KeyArity {
                    table: t.table.clone(),
                    columns: t.key_columns.len(),
                    values: bad.len(),
                });
            }
        }
        Ok(())
    }

    /// Appends the payload of this record at position `lsn` to `buf`.
    /// The record must have passed [`Record::validate`].
    pub fn encode_payload(&self, lsn: Lsn, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&lsn.0.to_le_bytes());
        match self {
            Record::Commit(c) => {
                buf.push(KIND_COMMIT_PID);
                encode_commit(c, buf);
            }
            Record::Marker(m) => {
                buf.push(KIND_MARKER);
                let (tag, time) = match *m {
                    Marker::CaptureStart { time_micros } => (MARKER_CAPTURE_START, time_micros),
                    Marker::CaptureStop { time_micros } => (MARKER_CAPTURE_STOP, time_micros),
                    Marker::Barrier { time_micros } => (MARKER_BARRIER, time_micros),
                    Marker::Settled { commit } => (MARKER_SETTLED, commit.0 as i64),
                    Marker::CaptureResume { time_micros } => (MARKER_CAPTURE_RESUME, time_micros),
                    Marker::Freeze { time_micros } => (MARKER_FREEZE, time_micros),
                };
                buf.push(tag);
                put_i64(buf, time);
            }
        }
    }
}

fn encode_commit(c: &CommitRecord, buf: &mut Vec<u8>) {
    put_varint(buf, c.session_id);
    put_i64(buf, c.commit_time_micros);
    put_count(buf, c.tables.len());
    for t in &c.tables {
        put_str(buf, &t.table);
        put_count(buf, t.key_columns.len());
        for col in &t.key_columns {
            put_str(buf, col);
        }
        put_count(buf, t.keys.len());
        for key in &t.keys {
            for value in key {
                match value {
                    None => put_varint(buf, 0),
                    Some(v) => {
                        put_varint(buf, v.len() as u64 + 1);
                        buf.extend_from_slice(v.as_bytes());
                    }
                }
            }
        }
    }
    put_count(buf, c.statements.len());
    for s in &c.statements {
        put_str(buf, s);
    }
    // Last, so that the older kind is this one without it.
    put_varint(buf, c.backend_pid.max(0) as u64);
}

/// The LSN a payload starts with, if it is long enough to have one.
pub(crate) fn payload_lsn(payload: &[u8]) -> Option<Lsn> {
    let b: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(Lsn(u64::from_le_bytes(b)))
}

impl LogEntry {
    /// Decodes one frame's payload. Never panics; garbage yields an error.
    pub fn decode(payload: &[u8]) -> Result<LogEntry, DecodeError> {
        let mut d = Decoder::new(payload);
        let lsn = Lsn(d.u64_le()?);
        let record = match d.u8()? {
            KIND_COMMIT => Record::Commit(decode_commit(&mut d, false)?),
            KIND_COMMIT_PID => Record::Commit(decode_commit(&mut d, true)?),
            KIND_MARKER => {
                let tag = d.u8()?;
                let time_micros = d.i64()?;
                Record::Marker(match tag {
                    MARKER_CAPTURE_START => Marker::CaptureStart { time_micros },
                    MARKER_CAPTURE_STOP => Marker::CaptureStop { time_micros },
                    MARKER_BARRIER => Marker::Barrier { time_micros },
                    MARKER_CAPTURE_RESUME => Marker::CaptureResume { time_micros },
                    MARKER_FREEZE => Marker::Freeze { time_micros },
                    MARKER_SETTLED => Marker::Settled {
                        commit: Lsn(time_micros as u64),
                    },
                    kind => return Err(DecodeError::UnknownMarker { kind }),
                })
            }
            kind => return Err(DecodeError::UnknownKind { kind }),
        };
        d.finish()?;
        Ok(LogEntry { lsn, record })
    }
}

fn decode_commit(d: &mut Decoder<'_>, with_pid: bool) -> Result<CommitRecord, DecodeError> {
    let session_id = d.varint()?;
    let commit_time_micros = d.i64()?;
    // A table entry takes at least 3 bytes: name length, column and key counts.
    let ntables = d.count(3)?;
    let mut tables = Vec::with_capacity(ntables);
    for _ in 0..ntables {
        tables.push(decode_table(d)?);
    }
    let nstmts = d.count(1)?;
    let mut statements = Vec::with_capacity(nstmts);
    for _ in 0..nstmts {
        statements.push(d.str()?.to_owned());
    }
    let backend_pid = if with_pid {
        i32::try_from(d.varint()?).unwrap_or(0)
    } else {
        0
    };
    Ok(CommitRecord {
        session_id,
        commit_time_micros,
        tables,
        statements,
        backend_pid,
    })
}

fn decode_table(d: &mut Decoder<'_>) -> Result<TableKeys, DecodeError> {
    let table = d.str()?.to_owned();
    let ncols = d.count(1)?;
    let mut key_columns = Vec::with_capacity(ncols);
    for _ in 0..ncols {
        key_columns.push(d.str()?.to_owned());
    }
    if ncols == 0 {
        // A key of no columns would take no bytes, so a garbage count could
        // loop for ever; such keys are refused on both sides.
        let at = d.pos();
        if d.varint()? != 0 {
            return Err(DecodeError::KeysWithoutColumns { at });
        }
        return Ok(TableKeys {
            table,
            key_columns,
            keys: Vec::new(),
        });
    }
    // Each key takes at least one byte per column.
    let nkeys = d.count(ncols)?;
    let mut keys = Vec::with_capacity(nkeys);
    for _ in 0..nkeys {
        let mut key = Vec::with_capacity(ncols);
        for _ in 0..ncols {
            key.push(match d.varint()? {
                0 => None,
                n => Some(d.str_of_len(usize::try_from(n - 1).unwrap_or(usize::MAX))?.to_owned()),
            });
        }
        keys.push(key);
    }
    Ok(TableKeys {
        table,
        key_columns,
        keys,
    })
}
