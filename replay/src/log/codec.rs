//! Compact binary encoding primitives for capture-log payloads: LEB128
//! varints, zig-zag signed integers and length-prefixed strings.
//!
//! Decoding is total: any malformed input yields a [`DecodeError`], never a
//! panic, and no count read from the input can make the decoder allocate or
//! loop more than the input's length allows (every element it announces must
//! consume at least one byte).

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ends in the middle of a field.
    #[error("payload ends early at byte {at}")]
    UnexpectedEnd {
        /// Offset in the payload where more bytes were needed.
        at: usize,
    },
    /// A varint is longer than ten bytes or does not fit 64 bits.
    #[error("varint at byte {at} overflows 64 bits")]
    VarintOverflow {
        /// Offset of the varint.
        at: usize,
    },
    /// A count or length announces more elements than bytes remain.
    #[error("count {count} at byte {at} exceeds the remaining payload")]
    CountTooLarge {
        /// Offset of the count.
        at: usize,
        /// The count read.
        count: u64,
    },
    /// A string field is not UTF-8.
    #[error("string at byte {at} is not valid UTF-8")]
    InvalidUtf8 {
        /// Offset of the string's bytes.
        at: usize,
    },
    /// The record kind byte is not one this version knows. Readers refuse it
    /// rather than skip it: skipping could lose written keys.
    #[error("unknown record kind {kind:#04x}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// The marker kind byte is not one this version knows.
    #[error("unknown marker kind {kind:#04x}")]
    UnknownMarker {
        /// The marker kind byte.
        kind: u8,
    },
    /// A table lists keys but no key columns.
    #[error("table entry at byte {at} has keys but no key columns")]
    KeysWithoutColumns {
        /// Offset of the table entry's key count.
        at: usize,
    },
    /// Bytes remain after a complete record.
    #[error("{count} unexpected bytes after the record")]
    TrailingBytes {
        /// How many bytes remain.
        count: usize,
    },
}

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends `v` zig-zag encoded, so small negative numbers stay short.
pub(crate) fn put_i64(buf: &mut Vec<u8>, v: i64) {
    put_varint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends a length-prefixed UTF-8 string.
pub(crate) fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_varint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// Appends a count of elements that follow.
pub(crate) fn put_count(buf: &mut Vec<u8>, n: usize) {
    put_varint(buf, n as u64);
}

/// A cursor over a payload that reads the primitives `put_*` write.
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::UnexpectedEnd { at: self.pos });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u64_le(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let at = self.pos;
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = self.u8()?;
            // The tenth byte may only carry the 64th bit.
            if i == 9 && byte > 1 {
                return Err(DecodeError::VarintOverflow { at });
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::VarintOverflow { at })
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        let z = self.varint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// Reads a count of elements that each take at least `min_elem_len`
    /// bytes, rejecting counts the remaining bytes cannot hold.
    pub(crate) fn count(&mut self, min_elem_len: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let count = self.varint()?;
        let max = self.remaining() / min_elem_len.max(1);
        if count > max as u64 {
            return Err(DecodeError::CountTooLarge { at, count });
        }
        Ok(count as usize)
    }

    /// Reads `len` bytes of UTF-8.
    pub(crate) fn str_of_len(&mut self, len: usize) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { at })
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.count(1)?;
        self.str_of_len(len)
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }
}
