//! Errors of the capture log, with the SQLSTATE a client should see when a
//! commit cannot be logged.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::codec::DecodeError;
use super::frame::BadFrame;
use super::Lsn;

/// Everything that can go wrong reading or writing the capture log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An operating-system call on a log file or directory failed.
    #[error("capture log: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "fsync", "create segment"...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The log's bytes are not what the writer wrote (not a torn tail).
    #[error("capture log corrupt: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset in that file.
        offset: u64,
        /// What is wrong there.
        reason: Corruption,
    },
    /// A frame passed its CRC but its payload could not be decoded: written
    /// by an incompatible version, or a bug.
    #[error("capture log: undecodable record in {} at offset {offset}: {source}", path.display())]
    Decode {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the frame in that file.
        offset: u64,
        /// Why decoding failed.
        #[source]
        source: DecodeError,
    },
    /// Another writer (in this process or another) holds the log directory.
    #[error("capture log {} is already open for writing by another writer", dir.display())]
    Locked {
        /// The log directory.
        dir: PathBuf,
    },
    /// The requested position is older than the oldest segment kept: the
    /// records were deleted by retention (or by hand).
    #[error(
        "capture log position {requested} is no longer in the log: the oldest position kept is {oldest} \
         (older segments were deleted once every replayer holding the log had confirmed them). \
         A replayer that needs them cannot catch up from this log: re-clone the target from a new capture \
         (CAPTURE STOP, an empty log directory, CAPTURE START, switchyard clone) and start catch-up again; \
         capture.retention = \"keep\" keeps the whole log"
    )]
    LsnUnavailable {
        /// The position asked for.
        requested: Lsn,
        /// The first position still in the log.
        oldest: Lsn,
    },
    /// A record's encoding exceeds the configured per-record limit.
    #[error("capture record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Encoded payload size.
        size: usize,
        /// The configured limit.
        limit: u32,
    },
    /// The record handed to the writer is malformed (caller's bug).
    #[error("invalid capture record: {0}")]
    InvalidRecord(#[from] InvalidRecord),
    /// The writer failed earlier and accepts no more records; the cause is
    /// the first error it met. Reopen the log to recover.
    #[error("capture log writer has failed and accepts no more records: {0}")]
    WriterFailed(#[source] Arc<LogError>),
    /// The writer was closed.
    #[error("capture log writer is closed")]
    Closed,
    /// The writer thread panicked.
    #[error("capture log writer thread exited unexpectedly")]
    WriterGone,
    /// The options passed to [`super::LogWriter::open`] are unusable.
    #[error("invalid capture log options: {0}")]
    InvalidOptions(&'static str),
}

impl LogError {
    /// The SQLSTATE to send a client whose commit could not be logged.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            LogError::WriterFailed(cause) => cause.sqlstate(),
            LogError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => "53100",
            LogError::Io { .. } => "58030",
            LogError::Corrupt { .. } | LogError::Decode { .. } => "XX001",
            LogError::RecordTooLarge { .. } => "54000",
            LogError::Locked { .. } | LogError::Closed | LogError::WriterGone => "57P03",
            LogError::LsnUnavailable { .. } | LogError::InvalidRecord(_) | LogError::InvalidOptions(_) => "XX000",
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { op, path, source }
    }
}

/// What exactly is corrupt in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Corruption {
    /// The segment does not start with the `SYLOG1` magic.
    BadMagic,
    /// The segment's format version is not supported.
    UnsupportedVersion(u8),
    /// The LSN in the segment header disagrees with the file name.
    HeaderLsnMismatch {
        /// LSN from the file name.
        named: Lsn,
        /// LSN from the header.
        header: Lsn,
    },
    /// An invalid frame is followed by valid data, so it is not a torn tail.
    BadFrameBeforeValidData {
        /// What is wrong with the frame.
        frame: BadFrame,
        /// File offset of the next valid frame found after it.
        next_valid_offset: u64,
    },
    /// An invalid frame in a segment that a later segment follows.
    BadFrameInSealedSegment(BadFrame),
    /// A segment that a later segment follows ends in a partial frame.
    TruncatedSealedSegment,
    /// A valid frame carries an unexpected LSN (gap or reordering).
    LsnMismatch {
        /// The LSN that should come next.
        expected: Lsn,
        /// The LSN found.
        found: Lsn,
    },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Corruption::BadMagic => f.write_str("segment header lacks the SYLOG1 magic"),
            Corruption::UnsupportedVersion(v) => {
                write!(f, "unsupported segment format version {v}")
            }
            Corruption::HeaderLsnMismatch { named, header } => {
                write!(f, "segment named for LSN {named} but its header says {header}")
            }
            Corruption::BadFrameBeforeValidData {
                frame,
                next_valid_offset,
            } => write!(
                f,
                "{frame}, yet a valid record follows at offset {next_valid_offset} \
                 (corruption, not a torn tail)"
            ),
            Corruption::BadFrameInSealedSegment(frame) => {
                write!(f, "{frame} in a segment that is followed by a newer one")
            }
            Corruption::TruncatedSealedSegment => {
                f.write_str("partial record at the end of a segment followed by a newer one")
            }
            Corruption::LsnMismatch { expected, found } => {
                write!(f, "expected LSN {expected}, found {found}")
            }
        }
    }
}

/// Why a record handed to the writer was refused before being logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecord {
    /// A key has a different number of values than the table has key columns.
    #[error("table {table}: a key has {values} values for {columns} key columns")]
    KeyArity {
        /// The table.
        table: String,
        /// Number of key columns.
        columns: usize,
        /// Number of values in the offending key.
        values: usize,
    },
    /// A table lists keys but no key columns.
    #[error("table {table}: keys given without key columns")]
    KeysWithoutColumns {
        /// The table.
        table: String,
    },
}
