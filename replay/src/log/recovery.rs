//! Opening a log for writing: find the newest segment, cut off a torn tail,
//! and work out the next LSN.
//!
//! Only the newest segment can have a torn tail: the writer finishes and
//! syncs a segment before it creates the next one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::{Corruption, LogError};
use super::frame::{
    check_frame, classify_tail, parse_segment_header, segment_header, FrameCheck, HeaderError, Tail, SEGMENT_HEADER_LEN,
};
use super::record::payload_lsn;
use super::segment::{list_segments, segment_path, sync_dir};
use super::Lsn;

/// What opening the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in the directory.
    pub segments: usize,
    /// The LSN the next record will get.
    pub next_lsn: Lsn,
    /// Bytes cut off the newest segment as a torn tail (0 if clean).
    pub truncated_bytes: u64,
    /// The segment that was cut, if any.
    pub truncated_segment: Option<PathBuf>,
}

/// The segment the writer appends to after recovery.
pub(crate) struct TailSegment {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    /// Valid bytes, header included.
    pub(crate) len: u64,
    /// Records in it.
    pub(crate) records: u64,
}

/// Recovers the log in `dir` (creating its first segment if it has none).
pub(crate) fn recover(dir: &Path) -> Result<(RecoveryReport, TailSegment), LogError> {
    let segments = list_segments(dir)?;
    let Some(last) = segments.last() else {
        let tail = create_segment(dir, Lsn::FIRST)?;
        let report = RecoveryReport {
            segments: 1,
            next_lsn: Lsn::FIRST,
            truncated_bytes: 0,
            truncated_segment: None,
        };
        return Ok((report, tail));
    };
    let path = last.path.clone();
    let data = fs::read(&path).map_err(LogError::io("read", &path))?;
    let corrupt = |offset: u64, reason| LogError::Corrupt {
        path: path.clone(),
        offset,
        reason,
    };

    let first = match parse_segment_header(&data) {
        Ok(first) if first == last.first_lsn => first,
        Ok(header) => {
            return Err(corrupt(
                0,
                Corruption::HeaderLsnMismatch {
                    named: last.first_lsn,
                    header,
                },
            ))
        }
        Err(HeaderError::Magic) => return Err(corrupt(0, Corruption::BadMagic)),
        Err(HeaderError::Version(v)) => return Err(corrupt(0, Corruption::UnsupportedVersion(v))),
        Err(HeaderError::Short) => {
            // Created but its header never fully written: start it afresh.
            tracing::warn!(segment = %path.display(), cut_bytes = data.len(), "capture log segment has a torn header; rewriting it");
            fs::remove_file(&path).map_err(LogError::io("remove", &path))?;
            let tail = create_segment(dir, last.first_lsn)?;
            let report = RecoveryReport {
                segments: segments.len(),
                next_lsn: last.first_lsn,
                truncated_bytes: data.len() as u64,
                truncated_segment: Some(path),
            };
            return Ok((report, tail));
        }
    };

    let (valid_len, next_lsn, records) = scan_frames(&data, first, &corrupt)?;
    let cut = data.len() - valid_len;
    if cut > 0 {
        tracing::warn!(
            segment = %path.display(),
            offset = valid_len,
            cut_bytes = cut,
            next_lsn = next_lsn.0,
            "capture log ends in a torn record; truncating it"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(LogError::io("open", &path))?;
        f.set_len(valid_len as u64).map_err(LogError::io("truncate", &path))?;
        f.sync_all().map_err(LogError::io("fsync", &path))?;
    }
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(LogError::io("open", &path))?;
    let report = RecoveryReport {
        segments: segments.len(),
        next_lsn,
        truncated_bytes: cut as u64,
        truncated_segment: (cut > 0).then(|| path.clone()),
    };
    Ok((
        report,
        TailSegment {
            file,
            path,
            len: valid_len as u64,
            records,
        },
    ))
}

/// Walks the frames of a segment; returns the length of its valid prefix,
/// the LSN after its last valid record, and how many records it holds.
fn scan_frames(
    data: &[u8],
    first: Lsn,
    corrupt: &dyn Fn(u64, Corruption) -> LogError,
) -> Result<(usize, Lsn, u64), LogError> {
    let mut off = SEGMENT_HEADER_LEN;
    let mut expected = first;
    let mut records = 0;
    loop {
        let bad = match check_frame(&data[off..]) {
            FrameCheck::Complete { payload, len } => {
                let found = payload_lsn(payload).unwrap_or_default();
                if found != expected {
                    return Err(corrupt(off as u64, Corruption::LsnMismatch { expected, found }));
                }
                expected = expected.next();
                records += 1;
                off += len;
                continue;
            }
            FrameCheck::Incomplete if off == data.len() => return Ok((off, expected, records)),
            FrameCheck::Incomplete => None,
            FrameCheck::Invalid(bad) => Some(bad),
        };
        return match classify_tail(&data[off..], expected) {
            Tail::Torn => Ok((off, expected, records)),
            Tail::Corrupt { valid_frame_at } => {
                let next_valid_offset = (off + valid_frame_at) as u64;
                // An incomplete frame followed by valid data has a bad length.
                let frame = bad.unwrap_or(super::frame::BadFrame::Length(frame_len_field(&data[off..])));
                Err(corrupt(
                    off as u64,
                    Corruption::BadFrameBeforeValidData {
                        frame,
                        next_valid_offset,
                    },
                ))
            }
        };
    }
}

fn frame_len_field(buf: &[u8]) -> u32 {
    match buf.get(..4) {
        Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// Creates a segment file with its header, and makes its name durable.
pub(crate) fn create_segment(dir: &Path, first: Lsn) -> Result<TailSegment, LogError> {
    let path = segment_path(dir, first);
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(LogError::io("create segment", &path))?;
    file.write_all(&segment_header(first))
        .map_err(LogError::io("write", &path))?;
    sync_dir(dir)?;
    Ok(TailSegment {
        file,
        path,
        len: SEGMENT_HEADER_LEN as u64,
        records: 0,
    })
}
