//! Messages from the server to the client: the tags the proxy watches, the
//! few it parses, and builders for the messages the proxy itself sends
//! (errors, authentication, the admin console's result sets).

use super::{put_cstr, write_message, Frame, Reader, WireError};
use bytes::{BufMut, BytesMut};

/// Backend message type bytes.
pub mod tag {
    /// Authentication request or result.
    pub const AUTHENTICATION: u8 = b'R';
    /// Cancellation key.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// Bind finished.
    pub const BIND_COMPLETE: u8 = b'2';
    /// Close finished.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// A command finished.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// COPY data.
    pub const COPY_DATA: u8 = b'd';
    /// COPY done.
    pub const COPY_DONE: u8 = b'c';
    /// COPY FROM STDIN started.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// COPY TO STDOUT started.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// COPY BOTH (replication) started.
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// A row.
    pub const DATA_ROW: u8 = b'D';
    /// The query string was empty.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// An error.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// Fast-path function result.
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    /// Protocol minor version / option negotiation.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// Describe of a statement or portal that returns no rows.
    pub const NO_DATA: u8 = b'n';
    /// A notice.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// LISTEN/NOTIFY notification.
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// Statement parameter types.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// A run-time parameter's value.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// Parse finished.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// Execute stopped at its row limit.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// Ready for a new query, with the transaction status.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// Result columns.
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// A message from the server: a view of its original bytes, already framed.
#[derive(Debug, Clone, Copy)]
pub struct BackendMessage<'a>(&'a [u8]);

/// Transaction status as reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// 'I': not in a transaction block.
    Idle,
    /// 'T': in a transaction block.
    InTransaction,
    /// 'E': in a failed transaction block.
    Failed,
}

impl TxStatus {
    /// The status byte.
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }

    /// A short name for SHOW SESSIONS.
    pub fn name(self) -> &'static str {
        match self {
            TxStatus::Idle => "idle",
            TxStatus::InTransaction => "in transaction",
            TxStatus::Failed => "failed transaction",
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse the proxy looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// Severity (non-localized if the server sent it).
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
}

impl<'a> BackendMessage<'a> {
    /// Views one whole framed message (as found by [`super::Header::parse`]).
    pub fn new(whole: &'a [u8]) -> BackendMessage<'a> {
        debug_assert!(whole.len() >= 5);
        BackendMessage(whole)
    }

    /// Views an owned frame.
    pub fn of(frame: &'a Frame) -> BackendMessage<'a> {
        BackendMessage(frame.bytes())
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

    /// The status of a ReadyForQuery.
    pub fn ready_status(&self) -> Result<TxStatus, WireError> {
        match self.body() {
            [b'I'] => Ok(TxStatus::Idle),
            [b'T'] => Ok(TxStatus::InTransaction),
            [b'E'] => Ok(TxStatus::Failed),
            _ => Err(WireError::Malformed {
                what: "ReadyForQuery",
                why: "unknown transaction status",
            }),
        }
    }

    /// The (pid, key) of a BackendKeyData.
    pub fn backend_key(&self) -> Result<(i32, i32), WireError> {
        let mut r = Reader::new(self.body(), "BackendKeyData");
        Ok((r.i32()?, r.i32()?))
    }

    /// The (name, value) of a ParameterStatus.
    pub fn parameter_status(&self) -> Result<(&'a str, &'a str), WireError> {
        let mut r = Reader::new(self.body(), "ParameterStatus");
        Ok((r.cstr()?, r.cstr()?))
    }

    /// The tag of a CommandComplete, e.g. "INSERT 0 1".
    pub fn command_tag(&self) -> Result<&'a str, WireError> {
        Reader::new(self.body(), "CommandComplete").cstr()
    }

    /// The severity, code and message of an ErrorResponse or NoticeResponse.
    pub fn error_fields(&self) -> Result<ErrorFields, WireError> {
        let mut r = Reader::new(self.body(), "ErrorResponse");
        let mut fields = ErrorFields::default();
        let mut localized = String::new();
        loop {
            let kind = r.u8()?;
            if kind == 0 {
                break;
            }
            let value = String::from_utf8_lossy(r.cstr_bytes()?).into_owned();
            match kind {
                b'V' => fields.severity = value,
                b'S' => localized = value,
                b'C' => fields.code = value,
                b'M' => fields.message = value,
                _ => {}
            }
        }
        if fields.severity.is_empty() {
            fields.severity = localized;
        }
        Ok(fields)
    }

    /// The (pid, channel, payload) of a NotificationResponse.
    pub fn notification(&self) -> Result<(i32, &'a [u8], &'a [u8]), WireError> {
        let mut r = Reader::new(self.body(), "NotificationResponse");
        Ok((r.i32()?, r.cstr_bytes()?, r.cstr_bytes()?))
    }

    /// The values of a DataRow (`None` for NULL).
    pub fn data_row(&self) -> Result<Vec<Option<&'a [u8]>>, WireError> {
        let mut r = Reader::new(self.body(), "DataRow");
        let n = r.i16()?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            let len = r.i32()?;
            out.push(if len < 0 { None } else { Some(r.bytes(len as usize)?) });
        }
        Ok(out)
    }

    /// The parameter type OIDs of a ParameterDescription.
    pub fn parameter_types(&self) -> Result<Vec<u32>, WireError> {
        let mut r = Reader::new(self.body(), "ParameterDescription");
        let n = r.i16()?;
        (0..n.max(0)).map(|_| r.i32().map(|o| o as u32)).collect()
    }

    /// The columns of a RowDescription: (name, type OID, type modifier).
    pub fn row_columns(&self) -> Result<Vec<(Vec<u8>, u32, i32)>, WireError> {
        let mut r = Reader::new(self.body(), "RowDescription");
        let n = r.i16()?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            let name = r.cstr_bytes()?.to_vec();
            r.bytes(6)?; // table oid, column number
            let oid = r.i32()? as u32;
            r.bytes(2)?; // type size
            let typmod = r.i32()?;
            r.bytes(2)?; // format
            out.push((name, oid, typmod));
        }
        Ok(out)
    }

    /// The authentication request code and its data.
    pub fn authentication(&self) -> Result<(i32, &'a [u8]), WireError> {
        let mut r = Reader::new(self.body(), "Authentication");
        let code = r.i32()?;
        Ok((code, r.rest()))
    }
}

/// Authentication request codes.
pub mod auth {
    /// Authentication succeeded.
    pub const OK: i32 = 0;
    /// Cleartext password requested.
    pub const CLEARTEXT: i32 = 3;
    /// MD5 password requested (4-byte salt follows).
    pub const MD5: i32 = 5;
    /// SASL: list of mechanisms follows.
    pub const SASL: i32 = 10;
    /// SASL: server challenge follows.
    pub const SASL_CONTINUE: i32 = 11;
    /// SASL: server final message follows.
    pub const SASL_FINAL: i32 = 12;
}

/// Severity of a message the proxy builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Ends the statement.
    Error,
    /// Ends the session.
    Fatal,
    /// Informational.
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
        }
    }
}

/// Appends a NotificationResponse.
pub fn notification_response(out: &mut BytesMut, pid: i32, channel: &[u8], payload: &[u8]) {
    write_message(out, tag::NOTIFICATION_RESPONSE, |b| {
        b.put_i32(pid);
        put_cstr(b, channel);
        put_cstr(b, payload);
    });
}

/// Appends an ErrorResponse (or NoticeResponse for `Severity::Notice`).
pub fn error_response(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let t = if severity == Severity::Notice {
        tag::NOTICE_RESPONSE
    } else {
        tag::ERROR_RESPONSE
    };
    write_message(out, t, |b| {
        for (k, v) in [
            (b'S', severity.as_str()),
            (b'V', severity.as_str()),
            (b'C', code),
            (b'M', message),
        ] {
            b.put_u8(k);
            put_cstr(b, v.as_bytes());
        }
        b.put_u8(0);
    });
}

/// Appends an ErrorResponse that names where in PostgreSQL's source it
/// comes from (`F`ile and `R`outine fields): drivers recognise some errors
/// by their routine.
pub fn error_response_from(out: &mut BytesMut, code: &str, message: &str, file: &str, routine: &str) {
    write_message(out, tag::ERROR_RESPONSE, |b| {
        for (k, v) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', code),
            (b'M', message),
            (b'F', file),
            (b'R', routine),
        ] {
            b.put_u8(k);
            put_cstr(b, v.as_bytes());
        }
        b.put_u8(0);
    });
}

/// Appends an Authentication message with a code and data.
pub fn authentication(out: &mut BytesMut, code: i32, data: &[u8]) {
    write_message(out, tag::AUTHENTICATION, |b| {
        b.put_i32(code);
        b.put_slice(data);
    });
}

/// Appends AuthenticationSASL offering SCRAM-SHA-256.
pub fn auth_sasl_scram(out: &mut BytesMut) {
    authentication(out, auth::SASL, b"SCRAM-SHA-256\0\0");
}

/// Appends a NegotiateProtocolVersion: the newest protocol version supported
/// (major << 16 | minor, as PostgreSQL sends it) and the protocol options
/// not recognised.
pub fn negotiate_protocol_version(out: &mut BytesMut, version: i32, unsupported: &[&str]) {
    write_message(out, tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.put_i32(version);
        b.put_i32(unsupported.len() as i32);
        for name in unsupported {
            put_cstr(b, name.as_bytes());
        }
    });
}

/// Appends a ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    write_message(out, tag::PARAMETER_STATUS, |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

/// Appends a BackendKeyData.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, key: i32) {
    write_message(out, tag::BACKEND_KEY_DATA, |b| {
        b.put_i32(pid);
        b.put_i32(key);
    });
}

/// Appends a ReadyForQuery.
pub fn ready_for_query(out: &mut BytesMut, status: TxStatus) {
    write_message(out, tag::READY_FOR_QUERY, |b| b.put_u8(status.byte()));
}

/// Appends a CommandComplete.
pub fn command_complete(out: &mut BytesMut, command_tag: &str) {
    write_message(out, tag::COMMAND_COMPLETE, |b| put_cstr(b, command_tag.as_bytes()));
}

/// Appends an EmptyQueryResponse.
pub fn empty_query_response(out: &mut BytesMut) {
    write_message(out, tag::EMPTY_QUERY_RESPONSE, |_| {});
}

/// OID of `text`, the type of every column the admin console returns.
const TEXT_OID: i32 = 25;

/// Appends a RowDescription of text columns.
pub fn row_description(out: &mut BytesMut, columns: &[&str]) {
    write_message(out, tag::ROW_DESCRIPTION, |b| {
        b.put_i16(columns.len() as i16);
        for name in columns {
            put_cstr(b, name.as_bytes());
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(TEXT_OID);
            b.put_i16(-1); // type size: variable
            b.put_i32(-1); // type modifier
            b.put_i16(0); // text format
        }
    });
}

/// Appends a DataRow of text values (`None` is NULL).
pub fn data_row<S: AsRef<str>>(out: &mut BytesMut, values: &[Option<S>]) {
    write_message(out, tag::DATA_ROW, |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    let v = v.as_ref().as_bytes();
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trips() {
        let mut out = BytesMut::new();
        error_response(&mut out, Severity::Fatal, "08P01", "bad message");
        let frame = Frame::from_bytes(out.freeze()).unwrap();
        assert_eq!(
            BackendMessage::of(&frame).error_fields().unwrap(),
            ErrorFields {
                severity: "FATAL".into(),
                code: "08P01".into(),
                message: "bad message".into()
            }
        );
    }

    #[test]
    fn ready_for_query_status() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, TxStatus::Failed);
        let frame = Frame::from_bytes(out.freeze()).unwrap();
        assert_eq!(BackendMessage::of(&frame).ready_status(), Ok(TxStatus::Failed));
        assert!(BackendMessage::new(b"Z\0\0\0\x05X").ready_status().is_err());
    }
}
