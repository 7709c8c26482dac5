//! Record framing and segment headers: pure functions over byte slices, no
//! I/O. An incomplete frame is a value (`FrameCheck::Incomplete`), not an
//! error, so the same code serves recovery and tailing readers.

use std::fmt;

use super::record::payload_lsn;
use super::Lsn;

/// Frame header: payload length then CRC-32C of the payload, both u32 LE.
pub(crate) const FRAME_HEADER_LEN: usize = 8;
/// The smallest payload: an LSN (8 bytes) and a kind byte.
pub(crate) const MIN_PAYLOAD_LEN: usize = 9;
/// The smallest frame there can be.
pub(crate) const MIN_FRAME_LEN: usize = FRAME_HEADER_LEN + MIN_PAYLOAD_LEN;
/// The largest payload the format allows; a length field above it marks the
/// frame invalid without reading further.
pub const MAX_PAYLOAD_LEN: u32 = 1 << 30;

/// Magic bytes opening every segment file.
pub(crate) const SEGMENT_MAGIC: &[u8; 6] = b"SYLOG1";
/// Current segment format version.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Magic, version, flags, first LSN.
pub(crate) const SEGMENT_HEADER_LEN: usize = 16;

/// Why a frame is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFrame {
    /// The length field is below the minimum payload or above the maximum.
    Length(u32),
    /// The payload does not match its CRC.
    Crc {
        /// CRC stored in the frame header.
        stored: u32,
        /// CRC computed over the payload.
        computed: u32,
    },
}

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadFrame::Length(n) => write!(f, "frame length {n} out of range"),
            BadFrame::Crc { stored, computed } => {
                write!(f, "CRC mismatch (stored {stored:08x}, computed {computed:08x})")
            }
        }
    }
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug)]
pub(crate) enum FrameCheck<'a> {
    /// A whole, valid frame of `len` bytes (header included).
    Complete { payload: &'a [u8], len: usize },
    /// Not all of the frame's bytes are there (or none at all).
    Incomplete,
    /// The bytes cannot be a valid frame.
    Invalid(BadFrame),
}

/// Examines the frame at the start of `buf`.
pub(crate) fn check_frame(buf: &[u8]) -> FrameCheck<'_> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return FrameCheck::Incomplete;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let stored = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if (len as usize) < MIN_PAYLOAD_LEN || len > MAX_PAYLOAD_LEN {
        return FrameCheck::Invalid(BadFrame::Length(len));
    }
    let total = FRAME_HEADER_LEN + len as usize;
    let Some(payload) = buf.get(FRAME_HEADER_LEN..total) else {
        return FrameCheck::Incomplete;
    };
    let computed = crc32c::crc32c(payload);
    if computed != stored {
        return FrameCheck::Invalid(BadFrame::Crc { stored, computed });
    }
    FrameCheck::Complete { payload, len: total }
}

/// Reserves a frame header at the end of `buf`; returns where it starts.
pub(crate) fn begin_frame(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    start
}

/// Fills in the header reserved by [`begin_frame`] for the payload that
/// follows it; returns the payload length.
pub(crate) fn finish_frame(buf: &mut [u8], start: usize) -> usize {
    let payload_start = start + FRAME_HEADER_LEN;
    let len = buf.len() - payload_start;
    let crc = crc32c::crc32c(&buf[payload_start..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
    len
}

/// The header of a segment whose first record is `first`.
pub(crate) fn segment_header(first: Lsn) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..6].copy_from_slice(SEGMENT_MAGIC);
    h[6] = FORMAT_VERSION;
    h[8..].copy_from_slice(&first.0.to_le_bytes());
    h
}

/// Why a segment header is unusable.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    Short,
    /// Wrong magic.
    Magic,
    /// Unknown version.
    Version(u8),
}

/// Parses a segment header; returns the first LSN it declares.
pub(crate) fn parse_segment_header(buf: &[u8]) -> Result<Lsn, HeaderError> {
    let Some(h) = buf.get(..SEGMENT_HEADER_LEN) else {
        return Err(HeaderError::Short);
    };
    if &h[..6] != SEGMENT_MAGIC {
        return Err(HeaderError::Magic);
    }
    if h[6] != FORMAT_VERSION {
        return Err(HeaderError::Version(h[6]));
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&h[8..]);
    Ok(Lsn(u64::from_le_bytes(lsn)))
}

/// What the bytes from a bad or incomplete frame to the end of a file are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Nothing valid follows: the remains of an interrupted write.
    Torn,
    /// A valid frame follows at this offset (relative to the bad frame).
    Corrupt { valid_frame_at: usize },
}

/// Decides whether the bad frame at the start of `rest` (whose LSN should be
/// `expected`) is a torn tail or corruption: corruption if any later offset
/// holds a valid frame with a plausible LSN.
///
/// Following the length chain is not enough: a flipped bit in a length field
/// could point past the end and pass a whole segment off as torn. So every
/// offset is tried, cheaply: a candidate must have a plausible length and an
/// LSN in `[expected, expected + rest.len() / MIN_FRAME_LEN]` before its CRC
/// is computed, which random bytes almost never do.
pub(crate) fn classify_tail(rest: &[u8], expected: Lsn) -> Tail {
    let max_lsn = expected.0.saturating_add((rest.len() / MIN_FRAME_LEN) as u64);
    for at in 1..rest.len().saturating_sub(MIN_FRAME_LEN - 1) {
        let cand = &rest[at..];
        let len = u32::from_le_bytes([cand[0], cand[1], cand[2], cand[3]]) as usize;
        if len < MIN_PAYLOAD_LEN || FRAME_HEADER_LEN + len > cand.len() {
            continue;
        }
        match payload_lsn(&cand[FRAME_HEADER_LEN..]) {
            Some(lsn) if lsn >= expected && lsn.0 <= max_lsn => {}
            _ => continue,
        }
        if let FrameCheck::Complete { .. } = check_frame(cand) {
            return Tail::Corrupt { valid_frame_at: at };
        }
    }
    Tail::Torn
}
