//! Messages from the client to the server. Only the kinds the proxy acts on
//! are parsed; everything else is forwarded as its bytes.

use super::{put_cstr, write_message, Frame, Reader, WireError};
use bytes::{BufMut, Bytes, BytesMut};

/// Frontend message type bytes.
pub mod tag {
    /// Bind a portal.
    pub const BIND: u8 = b'B';
    /// Close a statement or portal.
    pub const CLOSE: u8 = b'C';
    /// COPY data.
    pub const COPY_DATA: u8 = b'd';
    /// COPY done.
    pub const COPY_DONE: u8 = b'c';
    /// COPY failed.
    pub const COPY_FAIL: u8 = b'f';
    /// Describe a statement or portal.
    pub const DESCRIBE: u8 = b'D';
    /// Execute a portal.
    pub const EXECUTE: u8 = b'E';
    /// Flush the server's output.
    pub const FLUSH: u8 = b'H';
    /// Fast-path function call.
    pub const FUNCTION_CALL: u8 = b'F';
    /// Parse a statement.
    pub const PARSE: u8 = b'P';
    /// Password, SASL initial response or SASL response (by context).
    pub const PASSWORD: u8 = b'p';
    /// Simple query.
    pub const QUERY: u8 = b'Q';
    /// Sync: end of an extended-protocol batch.
    pub const SYNC: u8 = b'S';
    /// Terminate the session.
    pub const TERMINATE: u8 = b'X';
}

/// A message from the client: a view of its original bytes, already framed
/// (type byte, length, body).
#[derive(Debug, Clone, Copy)]
pub struct FrontendMessage<'a>(&'a [u8]);

impl<'a> FrontendMessage<'a> {
    /// Views one whole framed message (as found by [`super::Header::parse`]).
    pub fn new(whole: &'a [u8]) -> FrontendMessage<'a> {
        debug_assert!(whole.len() >= 5);
        FrontendMessage(whole)
    }

    /// Views an owned frame.
    pub fn of(frame: &'a Frame) -> FrontendMessage<'a> {
        FrontendMessage(frame.bytes())
    }

    /// The type byte.
    pub fn tag(&self) -> u8 {
        self.0[0]
    }

    /// The original bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The body, after type and length.
    pub fn body(&self) -> &'a [u8] {
        &self.0[5..]
    }

    /// The SQL of a simple Query.
    pub fn query(&self) -> Result<&'a str, WireError> {
        Reader::new(self.body(), "Query").cstr()
    }

    /// Parse: statement name, SQL text. The text is kept as bytes: it is in
    /// the session's client_encoding, which need not be UTF-8.
    pub fn parse(&self) -> Result<Parse<'a>, WireError> {
        let mut r = Reader::new(self.body(), "Parse");
        let name = r.cstr()?;
        let query = r.cstr_bytes()?;
        let n = r.i16()?;
        if n < 0 {
            return Err(WireError::Malformed {
                what: "Parse",
                why: "negative parameter count",
            });
        }
        r.bytes(n as usize * 4)?;
        Ok(Parse { name, query })
    }

    /// Bind: portal and statement names.
    pub fn bind(&self) -> Result<Bind<'a>, WireError> {
        let mut r = Reader::new(self.body(), "Bind");
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        Ok(Bind { portal, statement })
    }

    /// Describe or Close: the target kind and name.
    pub fn target(&self) -> Result<Target<'a>, WireError> {
        let what = if self.tag() == tag::CLOSE { "Close" } else { "Describe" };
        let mut r = Reader::new(self.body(), what);
        let kind = match r.u8()? {
            b'S' => TargetKind::Statement,
            b'P' => TargetKind::Portal,
            _ => {
                return Err(WireError::Malformed {
                    what,
                    why: "target is neither 'S' nor 'P'",
                })
            }
        };
        let name = r.cstr()?;
        Ok(Target { kind, name })
    }
}

/// The parts of a Parse message the proxy uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name ("" for the unnamed statement).
    pub name: &'a str,
    /// SQL text, in the session's client_encoding (any bytes but NUL).
    pub query: &'a [u8],
}

/// The parts of a Bind message the proxy uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Portal name.
    pub portal: &'a str,
    /// Statement name.
    pub statement: &'a str,
}

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A prepared statement ('S').
    Statement,
    /// A portal ('P').
    Portal,
}

/// The target of a Describe or Close.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// Statement or portal.
    pub kind: TargetKind,
    /// Its name.
    pub name: &'a str,
}

/// Builds a simple Query message.
pub fn query(sql: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(sql.len() + 6);
    write_message(&mut out, tag::QUERY, |b| put_cstr(b, sql.as_bytes()));
    out.freeze()
}

/// Builds a password message (also used for SASL responses).
pub fn password(data: &[u8], nul_terminated: bool) -> Bytes {
    let mut out = BytesMut::new();
    write_message(&mut out, tag::PASSWORD, |b| {
        b.put_slice(data);
        if nul_terminated {
            b.put_u8(0);
        }
    });
    out.freeze()
}

/// Builds a SASLInitialResponse.
pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    write_message(&mut out, tag::PASSWORD, |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
    out.freeze()
}

/// Reads a SASLInitialResponse body: mechanism and initial data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), WireError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.cstr()?;
    let len = r.i32()?;
    let data = if len < 0 { &[][..] } else { r.bytes(len as usize)? };
    Ok((mechanism, data))
}

/// The parameter type OIDs a Parse message declares (0 = unspecified).
pub fn parse_param_types(msg: &FrontendMessage<'_>) -> Result<Vec<u32>, WireError> {
    let mut r = Reader::new(msg.body(), "Parse");
    r.cstr_bytes()?;
    r.cstr_bytes()?;
    let n = r.i16()?;
    (0..n.max(0)).map(|_| r.i32().map(|o| o as u32)).collect()
}

/// A copy of the Parse message `msg` with its parameter type OIDs passed
/// through `map` (the statement name and text unchanged).
pub fn parse_with_types(msg: &FrontendMessage<'_>, map: impl Fn(u32) -> u32) -> Result<Bytes, WireError> {
    let mut r = Reader::new(msg.body(), "Parse");
    let name = r.cstr_bytes()?;
    let query = r.cstr_bytes()?;
    let n = r.i16()?;
    let types: Vec<u32> = (0..n.max(0))
        .map(|_| r.i32().map(|o| o as u32))
        .collect::<Result<_, _>>()?;
    let mut out = BytesMut::with_capacity(msg.bytes().len());
    write_message(&mut out, tag::PARSE, |b| {
        put_cstr(b, name);
        put_cstr(b, query);
        b.put_i16(n);
        for t in types {
            b.put_i32(map(t) as i32);
        }
    });
    Ok(out.freeze())
}

/// A Describe of the prepared statement `name`.
pub fn describe_statement(out: &mut BytesMut, name: &str) {
    write_message(out, tag::DESCRIBE, |b| {
        b.put_u8(b'S');
        put_cstr(b, name.as_bytes());
    });
}

/// An unnamed Parse, Bind and Execute of `sql` (no parameters, text
/// results).
pub fn parse_bind_execute(out: &mut BytesMut, sql: &str) {
    write_message(out, tag::PARSE, |b| {
        put_cstr(b, b"");
        put_cstr(b, sql.as_bytes());
        b.put_i16(0);
    });
    write_message(out, tag::BIND, |b| {
        put_cstr(b, b"");
        put_cstr(b, b"");
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    });
    write_message(out, tag::EXECUTE, |b| {
        put_cstr(b, b"");
        b.put_i32(0);
    });
}

/// A Flush.
pub fn flush(out: &mut BytesMut) {
    write_message(out, tag::FLUSH, |_| {});
}

/// The Terminate message.
pub fn terminate() -> Bytes {
    Bytes::from_static(b"X\0\0\0\x04")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Frame {
        let mut out = BytesMut::new();
        write_message(&mut out, tag, |b| b.put_slice(body));
        Frame::from_bytes(out.freeze()).unwrap()
    }

    #[test]
    fn parses_parse_and_bind() {
        let p = msg(tag::PARSE, b"s1\0select $1\0\0\x01\0\0\0\x17");
        let p = FrontendMessage::of(&p);
        assert_eq!(
            p.parse().unwrap(),
            Parse {
                name: "s1",
                query: b"select $1"
            }
        );
        let b = msg(tag::BIND, b"\0s1\0\0\0\0\0\0\0");
        let b = FrontendMessage::of(&b);
        assert_eq!(
            b.bind().unwrap(),
            Bind {
                portal: "",
                statement: "s1"
            }
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(FrontendMessage::of(&msg(tag::PARSE, b"s1\0select")).parse().is_err());
        assert!(FrontendMessage::of(&msg(tag::PARSE, b"s1\0q\0\0\x05")).parse().is_err());
        assert!(FrontendMessage::of(&msg(tag::CLOSE, b"Xname\0")).target().is_err());
        assert!(FrontendMessage::of(&msg(tag::DESCRIBE, b"")).target().is_err());
        assert!(FrontendMessage::of(&msg(tag::QUERY, b"\xff\xfe\0")).query().is_err());
    }

    #[test]
    fn parse_text_in_another_client_encoding_is_kept_as_bytes() {
        let p = msg(tag::PARSE, b"\0select 'caf\xe9'\0\0\0");
        assert_eq!(FrontendMessage::of(&p).parse().unwrap().query, b"select 'caf\xe9'");
    }
}
