//! The capture log: a durable, append-only log of the keys that committed
//! transactions wrote, in segment files under one directory.
//!
//! # On-disk format (version 1)
//!
//! A log is a directory of segment files, each named by the LSN of its first
//! record as 20 zero-padded decimal digits (`00000000000000000001.seg`), so a
//! reader finds the segment that follows another from the next LSN alone.
//!
//! ```text
//! segment = header frame*
//! header  = "SYLOG1" version:u8 flags:u8 first_lsn:u64le          (16 bytes)
//! frame   = len:u32le crc:u32le payload[len]        crc = crc32c(payload)
//! payload = lsn:u64le kind:u8 body                  (see `record`)
//! ```
//!
//! LSNs start at 1 and increase by exactly one per record, across segments.
//! Only the newest segment is ever appended to; the writer rolls over to a
//! new segment once the current one would exceed the configured size (a
//! record larger than a segment gets a segment of its own). A crash can leave
//! a torn record at the end of the newest segment: opening the writer
//! truncates it; an invalid frame followed by valid data is corruption and a
//! hard error.
//!
//! Readers that must not lose records keep a hold in `holds/` (see
//! `retention`); segments wholly below every hold and outside the window of
//! newest records kept may be deleted. A reader asked for a deleted position
//! gets [`LogError::LsnUnavailable`], never a silent skip.

mod bell;
mod codec;
mod error;
mod frame;
mod reader;
mod record;
mod recovery;
mod retention;
mod segment;
mod writer;
mod writer_thread;

#[cfg(test)]
mod tests;

use std::fmt;

pub use bell::LogBell;
pub use codec::DecodeError;
pub use error::{Corruption, InvalidRecord, LogError};
pub use frame::{BadFrame, MAX_PAYLOAD_LEN};
pub use reader::LogReader;
pub use record::{CommitRecord, Key, LogEntry, Marker, Record, TableKeys};
pub use recovery::RecoveryReport;
pub use retention::{
    apply_retention, first_kept, hold_name, log_space, read_holds, remove_hold, write_hold, Hold, LogSpace,
    RetentionPass, HOLDS_DIR,
};
pub use segment::{list_segments, remove_segments_before, replace_file, segments_before, SegmentInfo};
pub use writer::{Durability, LogOptions, LogStats, LogWriter, LogWriterHandle};

/// A position in the capture log: the sequence number of one record.
///
/// LSNs start at [`Lsn::FIRST`] and increase by one per record; `Lsn(0)` is
/// never assigned and reads as "before everything".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position of the first record ever written to a log.
    pub const FIRST: Lsn = Lsn(1);

    /// The position right after this one.
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }

    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}
