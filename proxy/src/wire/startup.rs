//! The untyped first packet of a connection: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest. It has a length but no type byte.

use super::{put_cstr, Reader, WireError};
use bytes::{BufMut, Bytes, BytesMut};

/// Protocol version 3.0.
pub const PROTOCOL_3_0: i32 = 196_608;
/// SSLRequest code.
pub const SSL_REQUEST: i32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: i32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// Longest startup packet, length prefix included: PostgreSQL's
/// `MAX_STARTUP_PACKET_LENGTH` (10000) plus the prefix.
pub const MAX_STARTUP_PACKET: usize = 10_004;

/// A parsed startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running in the session with this key.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        key: i32,
    },
    /// A request code or protocol major version the server does not speak
    /// (protocol 2, or an unknown request).
    Unsupported {
        /// The code or version as sent.
        version: i32,
    },
    /// Open a session.
    Startup {
        /// The protocol version asked for.
        version: i32,
        /// Parameters in the order given (user, database, options...).
        params: Vec<(String, String)>,
    },
}

/// Reads the length prefix of a startup packet: `Ok(None)` if fewer than 4
/// bytes are there, else the whole packet length (validated against `limit`).
pub fn packet_len(buf: &[u8], limit: usize) -> Result<Option<usize>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len < 8 {
        return Err(WireError::BadLength { tag: 0, len });
    }
    if len > limit {
        return Err(WireError::TooLarge { tag: 0, len, limit });
    }
    Ok(Some(len))
}

impl StartupPacket {
    /// Parses a whole packet (length prefix included).
    pub fn parse(packet: &[u8]) -> Result<StartupPacket, WireError> {
        let mut r = Reader::new(packet, "startup");
        let _len = r.i32()?;
        let code = r.i32()?;
        match code {
            SSL_REQUEST => Ok(StartupPacket::SslRequest),
            GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
            CANCEL_REQUEST => Ok(StartupPacket::Cancel {
                pid: r.i32()?,
                key: r.i32()?,
            }),
            version if version >> 16 == 3 => {
                let mut params = Vec::new();
                loop {
                    let name = r.cstr()?;
                    if name.is_empty() {
                        break;
                    }
                    let value = r.cstr()?;
                    params.push((name.to_owned(), value.to_owned()));
                }
                Ok(StartupPacket::Startup { version, params })
            }
            version => Ok(StartupPacket::Unsupported { version }),
        }
    }
}

/// PostgreSQL's words for a protocol version it does not speak (the
/// request codes read as versions too: a second SSLRequest is "1234.5679").
pub fn unsupported_protocol_message(version: i32) -> String {
    let (major, minor) = ((version as u32) >> 16, (version as u32) & 0xffff);
    format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")
}

/// An error in the protocol-2 format (`E`, then the text, then NUL), which
/// is what a client that asked for a protocol major version below 3 can
/// read; PostgreSQL answers such clients this way.
pub fn legacy_error(message: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(message.len() + 16);
    out.put_u8(b'E');
    out.put_slice(b"FATAL:  ");
    out.put_slice(message.as_bytes());
    out.put_slice(b"\n\0");
    out.freeze()
}

/// Builds a StartupMessage for protocol 3.0.
pub fn startup_message<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(&mut out, k.as_bytes());
        put_cstr(&mut out, v.as_bytes());
    }
    out.put_u8(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

/// Builds a CancelRequest.
pub fn cancel_request(pid: i32, key: i32) -> Bytes {
    let mut out = BytesMut::with_capacity(16);
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(key);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_startup_and_cancel() {
        let msg = startup_message([("user", "app"), ("database", "db")]);
        assert_eq!(
            StartupPacket::parse(&msg).unwrap(),
            StartupPacket::Startup {
                version: PROTOCOL_3_0,
                params: vec![("user".into(), "app".into()), ("database".into(), "db".into())],
            }
        );
        assert_eq!(
            StartupPacket::parse(&cancel_request(7, -9)).unwrap(),
            StartupPacket::Cancel { pid: 7, key: -9 }
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(packet_len(b"\0\0\0\x02", 1000).is_err());
        assert!(packet_len(b"\x7f\0\0\0", 1000).is_err());
        assert_eq!(
            StartupPacket::parse(b"\0\0\0\x08\x12\x34\x56\x78"),
            Ok(StartupPacket::Unsupported { version: 0x1234_5678 })
        );
        assert_eq!(
            unsupported_protocol_message(SSL_REQUEST),
            "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0"
        );
        assert!(packet_len(b"X\0\0\0\x04", MAX_STARTUP_PACKET).is_err());
        assert!(StartupPacket::parse(b"\0\0\0\x0a\0\x03\0\0us").is_err());
    }
}
