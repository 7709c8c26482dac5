//! Rewriting the server's row messages for capture: the key projection the
//! proxy appended is taken off RowDescription and DataRow before the client
//! sees them, and its values are read out. Also the frontend messages the
//! proxy rewrites (Parse with a spliced text, Bind with result formats for
//! the key columns) and the ones it injects.

use crate::wire::{put_cstr, write_message, Reader, WireError};
use bytes::BytesMut;

/// A DataRow's trailing `n` values (text, `None` for NULL) and the message
/// rebuilt without them (`None` if the client should see no row at all,
/// i.e. `keep_columns` is false).
pub fn split_data_row(
    body: &[u8],
    n: usize,
    keep_columns: bool,
) -> Result<(Vec<Option<String>>, Option<BytesMut>), WireError> {
    let mut r = Reader::new(body, "DataRow");
    let count = r.i16()?;
    let count = usize::try_from(count).map_err(|_| malformed("DataRow", "negative column count"))?;
    if count < n {
        return Err(malformed("DataRow", "fewer columns than the key projection"));
    }
    let keep = count - n;
    let mut kept_end = 2;
    let mut values = Vec::with_capacity(n);
    for i in 0..count {
        let len = r.i32()?;
        let v = if len < 0 { None } else { Some(r.bytes(len as usize)?) };
        if i < keep {
            kept_end = body.len() - r.remaining();
        } else {
            values.push(v.map(|b| String::from_utf8_lossy(b).into_owned()));
        }
    }
    if !keep_columns {
        return Ok((values, None));
    }
    let mut out = BytesMut::with_capacity(kept_end + 5);
    write_message(&mut out, b'D', |b| {
        b.extend_from_slice(&(keep as i16).to_be_bytes());
        b.extend_from_slice(&body[2..kept_end]);
    });
    Ok((values, Some(out)))
}

/// A RowDescription without its trailing `n` fields, and how many fields
/// it had.
pub fn strip_row_description(body: &[u8], n: usize) -> Result<(BytesMut, usize), WireError> {
    let mut r = Reader::new(body, "RowDescription");
    let count = r.i16()?;
    let count = usize::try_from(count).map_err(|_| malformed("RowDescription", "negative field count"))?;
    if count < n {
        return Err(malformed("RowDescription", "fewer fields than the key projection"));
    }
    let keep = count - n;
    let mut kept_end = 2;
    for _ in 0..keep {
        r.cstr_bytes()?;
        r.bytes(18)?;
        kept_end = body.len() - r.remaining();
    }
    let mut out = BytesMut::with_capacity(kept_end + 5);
    write_message(&mut out, b'T', |b| {
        b.extend_from_slice(&(keep as i16).to_be_bytes());
        b.extend_from_slice(&body[2..kept_end]);
    });
    Ok((out, count))
}

/// The NoData message.
pub fn no_data() -> BytesMut {
    let mut out = BytesMut::with_capacity(5);
    write_message(&mut out, b'n', |_| {});
    out
}

/// A Parse message like `body`'s but named `name` with query text `sql`.
pub fn rewrite_parse(body: &[u8], name: &str, sql: &[u8]) -> Result<BytesMut, WireError> {
    let mut r = Reader::new(body, "Parse");
    r.cstr_bytes()?;
    r.cstr_bytes()?;
    let rest = &body[body.len() - r.remaining()..];
    let mut out = BytesMut::with_capacity(body.len() + sql.len() + name.len());
    write_message(&mut out, b'P', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, sql);
        b.extend_from_slice(rest);
    });
    Ok(out)
}

/// The result-format codes a Bind asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultFormats {
    /// None given: all text.
    AllText,
    /// One code for all columns.
    All(i16),
    /// One code per column.
    PerColumn(Vec<i16>),
}

/// A Bind's statement name and result formats, and the offset where its
/// result-format section starts.
pub fn bind_formats(body: &[u8]) -> Result<(usize, ResultFormats), WireError> {
    let mut r = Reader::new(body, "Bind");
    r.cstr_bytes()?;
    r.cstr_bytes()?;
    let nf = r.i16()?.max(0) as usize;
    r.bytes(nf * 2)?;
    let np = r.i16()?.max(0) as usize;
    for _ in 0..np {
        let len = r.i32()?;
        if len > 0 {
            r.bytes(len as usize)?;
        }
    }
    let at = body.len() - r.remaining();
    let nr = r.i16()?.max(0) as usize;
    let mut codes = Vec::with_capacity(nr);
    for _ in 0..nr {
        codes.push(r.i16()?);
    }
    let formats = match codes.len() {
        0 => ResultFormats::AllText,
        1 => ResultFormats::All(codes[0]),
        _ => ResultFormats::PerColumn(codes),
    };
    Ok((at, formats))
}

/// A Bind like `body`'s with statement `statement` and result formats
/// `codes`.
pub fn rewrite_bind(
    body: &[u8],
    statement: &str,
    formats_at: usize,
    codes: Option<&[i16]>,
) -> Result<BytesMut, WireError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr_bytes()?;
    r.cstr_bytes()?;
    let params_at = body.len() - r.remaining();
    let mut out = BytesMut::with_capacity(body.len() + 64);
    write_message(&mut out, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement.as_bytes());
        match codes {
            Some(codes) => {
                b.extend_from_slice(&body[params_at..formats_at]);
                b.extend_from_slice(&(codes.len() as i16).to_be_bytes());
                for c in codes {
                    b.extend_from_slice(&c.to_be_bytes());
                }
            }
            None => b.extend_from_slice(&body[params_at..]),
        }
    });
    Ok(out)
}

/// Flush.
pub fn flush() -> BytesMut {
    let mut out = BytesMut::with_capacity(5);
    write_message(&mut out, b'H', |_| {});
    out
}

/// A simple Query.
pub fn query(sql: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(sql.len() + 6);
    write_message(&mut out, b'Q', |b| put_cstr(b, sql.as_bytes()));
    out
}

/// A simple Query of text in any client encoding.
pub fn query_bytes(sql: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(sql.len() + 6);
    write_message(&mut out, b'Q', |b| put_cstr(b, sql));
    out
}

/// Parse, Bind and Execute of `sql` as the unnamed statement and portal,
/// without parameters and with text results.
pub fn extended_once(sql: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(sql.len() + 40);
    write_message(&mut out, b'P', |b| {
        put_cstr(b, b"");
        put_cstr(b, sql.as_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
    });
    write_message(&mut out, b'B', |b| {
        b.extend_from_slice(b"\0\0");
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
    });
    write_message(&mut out, b'E', |b| {
        b.extend_from_slice(b"\0");
        b.extend_from_slice(&0i32.to_be_bytes());
    });
    out
}

/// Close of a prepared statement.
pub fn close_statement(name: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(name.len() + 7);
    write_message(&mut out, b'C', |b| {
        b.extend_from_slice(b"S");
        put_cstr(b, name.as_bytes());
    });
    out
}

/// SQL that fails with `message` in the server itself, so the client's
/// transaction fails exactly as it would on a real error.
pub fn raise_sql(code: &str, message: &str, hint: &str) -> String {
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    format!(
        "DO $switchyard$ BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}, HINT = {}; END $switchyard$",
        lit(code),
        lit(message),
        lit(hint)
    )
}

fn malformed(what: &'static str, why: &'static str) -> WireError {
    WireError::Malformed { what, why }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(s) => {
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
            }
        }
        b
    }

    #[test]
    fn data_row_keys_split_off() {
        let body = data_row(&[Some("a"), None, Some("16384"), Some("7")]);
        let (keys, row) = split_data_row(&body, 2, true).unwrap();
        assert_eq!(keys, vec![Some("16384".to_owned()), Some("7".to_owned())]);
        let row = row.unwrap();
        let mut want = BytesMut::new();
        write_message(&mut want, b'D', |b| b.extend_from_slice(&data_row(&[Some("a"), None])));
        assert_eq!(row, want);
        let (keys, row) = split_data_row(&body, 4, false).unwrap();
        assert_eq!(keys.len(), 4);
        assert!(row.is_none());
        assert!(split_data_row(&body, 5, true).is_err());
    }

    #[test]
    fn bind_formats_found_and_rewritten() {
        let mut body = Vec::new();
        body.extend_from_slice(b"p\0s\0");
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&42i32.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        body.extend_from_slice(&1i16.to_be_bytes());
        let (at, f) = bind_formats(&body).unwrap();
        assert_eq!(f, ResultFormats::All(1));
        let out = rewrite_bind(&body, "sy_1", at, Some(&[1, 0, 0])).unwrap();
        let (at2, f2) = bind_formats(&out[5..]).unwrap();
        assert_eq!(f2, ResultFormats::PerColumn(vec![1, 0, 0]));
        assert_eq!(&out[5..7], b"p\0");
        assert_eq!(&out[7..12], b"sy_1\0");
        assert_eq!(at2, at + 3);
    }
}
