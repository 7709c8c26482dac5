//! The PostgreSQL wire protocol, pure: bytes in, messages out and back. No
//! sockets, no tokio. Every message is framed once by type byte + length and
//! kept as its original bytes, so forwarding is byte-exact; only the few
//! messages the proxy must understand are parsed further, on demand.

pub mod backend;
pub mod frontend;
pub mod startup;

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Errors in framing or parsing a message. They are the peer's fault.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// A length field below the protocol minimum.
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength {
        /// The message type byte (0 for startup packets).
        tag: u8,
        /// The length the peer sent.
        len: usize,
    },
    /// A message longer than the configured limit.
    #[error("message of type {tag:?} is {len} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The message type byte (0 for startup packets).
        tag: u8,
        /// The length the peer sent.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A message body that does not match its type's layout.
    #[error("malformed {what} message: {why}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// What the next bytes of a buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Not enough bytes yet; at least this many more are needed.
    Need(usize),
    /// A whole message of `len` bytes (type byte and length included).
    Ready {
        /// The message type byte.
        tag: u8,
        /// The total length of the message on the wire.
        len: usize,
    },
}

impl Header {
    /// Reads the header of a typed message (type byte + i32 length) at the start
    /// of `buf`. `limit` bounds the total message size.
    pub fn parse(buf: &[u8], limit: usize) -> Result<Header, WireError> {
        if buf.len() < 5 {
            return Ok(Header::Need(5 - buf.len()));
        }
        let tag = buf[0];
        let body_len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if body_len < 4 {
            return Err(WireError::BadLength { tag, len: body_len });
        }
        let len = body_len + 1;
        if len > limit {
            return Err(WireError::TooLarge { tag, len, limit });
        }
        if buf.len() < len {
            return Ok(Header::Need(len - buf.len()));
        }
        Ok(Header::Ready { tag, len })
    }
}

/// A whole typed message as it came off the wire: type byte, length, body.
/// The direction is carried by the wrapping type ([`frontend::FrontendMessage`],
/// [`backend::BackendMessage`]), because the same tag means different things
/// each way.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// Splits one whole message off the front of `buf`, or returns `None` when
    /// the buffer does not yet hold one.
    pub fn split(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, WireError> {
        match Header::parse(buf, limit)? {
            Header::Need(_) => Ok(None),
            Header::Ready { len, .. } => Ok(Some(Frame {
                bytes: buf.split_to(len).freeze(),
            })),
        }
    }

    /// Wraps bytes already known to hold exactly one message.
    pub fn from_bytes(bytes: Bytes) -> Result<Frame, WireError> {
        match Header::parse(&bytes, usize::MAX)? {
            Header::Ready { len, .. } if len == bytes.len() => Ok(Frame { bytes }),
            _ => Err(WireError::Malformed {
                what: "framed",
                why: "length field does not match the bytes",
            }),
        }
    }

    /// The message type byte.
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The body: everything after the type byte and length.
    pub fn body(&self) -> &[u8] {
        &self.bytes[5..]
    }

    /// The whole message as it goes on the wire.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The total length on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a frame has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the header: printing a frame must never parse its body.
        write!(f, "Frame({:?}, {} bytes)", self.tag() as char, self.len())
    }
}

/// A cursor over a message body, for the few messages the proxy parses.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn malformed(&self, why: &'static str) -> WireError {
        WireError::Malformed { what: self.what, why }
    }

    /// A NUL-terminated string, as raw bytes (without the NUL).
    pub(crate) fn cstr_bytes(&mut self) -> Result<&'a [u8], WireError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.malformed("string not terminated"))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<&'a str, WireError> {
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.malformed("string is not UTF-8"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        if self.buf.is_empty() {
            return Err(self.malformed("truncated"));
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn i16(&mut self) -> Result<i16, WireError> {
        if self.buf.len() < 2 {
            return Err(self.malformed("truncated"));
        }
        Ok(self.buf.get_i16())
    }

    pub(crate) fn i32(&mut self) -> Result<i32, WireError> {
        if self.buf.len() < 4 {
            return Err(self.malformed("truncated"));
        }
        Ok(self.buf.get_i32())
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(self.malformed("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest().len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// Appends a typed message to `out`: tag, length (filled in), body from `f`.
pub fn write_message(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    use bytes::BufMut;
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    f(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a NUL-terminated string.
pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    use bytes::BufMut;
    out.put_slice(s);
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_more_bytes() {
        assert_eq!(Header::parse(b"Q\0\0", 100), Ok(Header::Need(2)));
        assert_eq!(Header::parse(b"Q\0\0\0\x09abc", 100), Ok(Header::Need(2)));
    }

    #[test]
    fn header_rejects_bad_and_large_lengths() {
        assert!(matches!(
            Header::parse(b"Q\0\0\0\x03", 100),
            Err(WireError::BadLength { tag: b'Q', len: 3 })
        ));
        assert!(matches!(
            Header::parse(b"Q\x7f\0\0\0", 100),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn split_takes_whole_messages_only() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x05xS\0\0\0\x04Z\0"[..]);
        let a = Frame::split(&mut buf, 1024).unwrap().unwrap();
        assert_eq!((a.tag(), a.body()), (b'Q', &b"x"[..]));
        let b = Frame::split(&mut buf, 1024).unwrap().unwrap();
        assert_eq!((b.tag(), b.body()), (b'S', &b""[..]));
        assert_eq!(Frame::split(&mut buf, 1024).unwrap(), None);
        assert_eq!(&buf[..], b"Z\0");
    }

    #[test]
    fn write_message_fills_length() {
        let mut out = BytesMut::new();
        write_message(&mut out, b'Q', |b| put_cstr(b, b"select 1"));
        assert_eq!(&out[..], b"Q\0\0\0\x0dselect 1\0");
    }
}
