//! Keys of rows sent with COPY ... FROM STDIN, read from the client's own
//! CopyData in text or CSV format (default options only: tab or comma
//! delimiter, `\N` or empty-unquoted NULL, `"` quotes, optional HEADER).
//! Rows and line endings (`\n`, `\r`, `\r\n`) are split as PostgreSQL
//! splits them, also across CopyData messages.

/// The COPY data format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's text format: tab-separated, backslash escapes, `\N` NULL.
    Text,
    /// CSV: comma-separated, `"` quotes (doubled inside), unquoted empty NULL.
    Csv,
}

/// The options of a `COPY ... FROM STDIN` statement this reader supports,
/// or `None` (binary, other delimiters, NULL strings, quotes or escapes).
pub fn copy_options(text: &str) -> Option<(CopyFormat, bool)> {
    let lower = text.to_ascii_lowercase();
    let after = lower.split(" from ").nth(1)?.trim_start();
    if !after.starts_with("stdin") {
        return None;
    }
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    for unsupported in [
        "binary",
        "delimiter",
        "null",
        "quote",
        "escape",
        "force_not_null",
        "force_null",
        "encoding",
    ] {
        if words.contains(&unsupported) {
            return None;
        }
    }
    let format = if words.contains(&"csv") {
        CopyFormat::Csv
    } else {
        CopyFormat::Text
    };
    // HEADER (any value but false / off / 0, MATCH included) skips the first
    // line in both formats (text since PostgreSQL 15).
    let header = words
        .iter()
        .position(|w| *w == "header")
        .is_some_and(|at| !matches!(words.get(at + 1), Some(&("false" | "off" | "0"))));
    Some((format, header))
}

/// A row's key: the key columns' values, `None` for NULL.
pub type RowKey = Vec<Option<String>>;

/// The line ending PostgreSQL has settled on: it takes the style of the
/// first line and refuses a COPY whose later lines end otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    /// No line ended yet.
    Unknown,
    /// `\n`.
    Nl,
    /// A bare `\r`.
    Cr,
    /// `\r\n`.
    CrNl,
}

/// Where the reader is in the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The next line is the HEADER line, skipped.
    Header,
    /// Reading rows.
    Rows,
    /// Past the `\.` end marker, or past data PostgreSQL refuses (the COPY
    /// then fails and commits nothing): nothing more is read.
    Ended,
}

/// How far one line could be read.
enum Scan {
    /// More bytes are needed to tell.
    Need,
    /// A line whose content ends at `end` (exclusive); the next line starts
    /// at `next`. Offsets are into the reader's buffer.
    Line { end: usize, next: usize },
    /// The end marker; the content before it on its line ends at `end`.
    EndMarker { end: usize },
    /// The end of the data without a line ending; the content ends at `end`.
    Eof { end: usize },
    /// Data PostgreSQL refuses (mixed newline styles, a corrupt end marker).
    Refused,
}

/// What a `\.` at a place where it may end the data turns out to be.
enum Marker {
    /// The end marker.
    End,
    /// Ordinary data (CSV only).
    Data,
    /// A corrupt marker, or one in another newline style: PostgreSQL fails
    /// the COPY.
    Refused,
}

/// Splits COPY data into rows as PostgreSQL's `CopyReadLineText` does
/// (PostgreSQL 15) and picks the key fields out of each: a line ends at
/// `\n`, `\r` or `\r\n`, in the style of the first line; in text format a
/// backslash escapes the next byte (an escaped `\r` or `\n` is data) and
/// `\.` followed by the line ending ends the data; in CSV format line
/// endings inside quotes are data and `\.` ends the data only alone at the
/// start of a line. Rows and line endings may be split across CopyData
/// messages: bytes whose meaning depends on what follows are kept until it
/// comes. Where PostgreSQL would refuse the data, the COPY fails on the
/// server and commits nothing, so the reader stops there.
#[derive(Debug)]
pub struct CopyReader {
    format: CopyFormat,
    phase: Phase,
    eol: Eol,
    /// Field positions of the key columns, in key order.
    positions: Vec<usize>,
    /// The current line from its first byte, and any bytes after it.
    buf: Vec<u8>,
    /// Offset in the current line up to which it has been scanned.
    scanned: usize,
    /// CSV: inside quotes at `scanned`.
    in_quotes: bool,
}

impl CopyReader {
    /// A reader for rows whose key columns are at `positions`.
    pub fn new(format: CopyFormat, header: bool, positions: Vec<usize>) -> CopyReader {
        CopyReader {
            format,
            phase: if header { Phase::Header } else { Phase::Rows },
            eol: Eol::Unknown,
            positions,
            buf: Vec::new(),
            scanned: 0,
            in_quotes: false,
        }
    }

    /// Feeds one CopyData payload; returns the keys of the rows it completed.
    pub fn feed(&mut self, data: &[u8]) -> Vec<RowKey> {
        if self.phase == Phase::Ended {
            return Vec::new();
        }
        self.buf.extend_from_slice(data);
        self.read(false)
    }

    /// The end of the data (CopyDone): the keys of a last row without a
    /// line ending, or of one held back for a byte that never came.
    pub fn finish(&mut self) -> Vec<RowKey> {
        if self.phase == Phase::Ended {
            return Vec::new();
        }
        self.read(true)
    }

    /// Reads every line the buffer completes (all of it at the end of the
    /// data), then drops the bytes read.
    fn read(&mut self, at_end: bool) -> Vec<RowKey> {
        let mut keys = Vec::new();
        let mut start = 0;
        while self.phase != Phase::Ended {
            match self.scan(start, at_end) {
                Scan::Need => break,
                Scan::Line { end, next } => {
                    keys.extend(self.line(start, end));
                    start = next;
                    self.scanned = 0;
                    self.in_quotes = false;
                }
                Scan::EndMarker { end } => {
                    // The text before `\.` on its line is a row of its own.
                    if end > start {
                        keys.extend(self.line(start, end));
                    }
                    self.phase = Phase::Ended;
                }
                Scan::Eof { end } => {
                    if end > start {
                        keys.extend(self.line(start, end));
                    }
                    start = end;
                    break;
                }
                Scan::Refused => self.phase = Phase::Ended,
            }
        }
        if self.phase == Phase::Ended {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..start);
        }
        keys
    }

    /// The key of the line `buf[start..end]`, unless it is the header.
    fn line(&mut self, start: usize, end: usize) -> Option<RowKey> {
        if self.phase == Phase::Header {
            self.phase = Phase::Rows;
            return None;
        }
        let line = &self.buf[start..end];
        let fields = match self.format {
            CopyFormat::Text => text_fields(line),
            CopyFormat::Csv => csv_fields(line),
        };
        self.positions.iter().map(|&p| fields.get(p).cloned()).collect()
    }

    /// Scans the line starting at `buf[start]`, resuming where the last
    /// scan of it stopped.
    fn scan(&mut self, start: usize, at_end: bool) -> Scan {
        let csv = self.format == CopyFormat::Csv;
        let len = self.buf.len() - start;
        let mut i = self.scanned;
        let mut in_quotes = self.in_quotes;
        while i < len {
            let c = self.buf[start + i];
            if c == b'\\' && (!csv || i == 0) {
                let Some(next) = self.byte(start + i + 1, at_end) else {
                    return self.need(i, in_quotes);
                };
                if next == b'.' {
                    match self.end_marker(start + i + 2, at_end) {
                        None => return self.need(i, in_quotes),
                        Some(Marker::End) => return Scan::EndMarker { end: start + i },
                        Some(Marker::Refused) => return Scan::Refused,
                        Some(Marker::Data) => {}
                    }
                } else if !csv {
                    // The escaped byte is data, even a line ending.
                    i += 2;
                    continue;
                }
            }
            if csv && c == b'"' {
                in_quotes = !in_quotes;
            }
            let line = |skip: usize| Scan::Line {
                end: start + i,
                next: start + i + skip,
            };
            if c == b'\r' && !in_quotes {
                return match self.eol {
                    Eol::Unknown | Eol::CrNl => match self.byte(start + i + 1, at_end) {
                        None => self.need(i, in_quotes),
                        Some(b'\n') => {
                            self.eol = Eol::CrNl;
                            line(2)
                        }
                        Some(_) if self.eol == Eol::CrNl => Scan::Refused,
                        Some(_) => {
                            self.eol = Eol::Cr;
                            line(1)
                        }
                    },
                    Eol::Cr => line(1),
                    Eol::Nl => Scan::Refused,
                };
            }
            if c == b'\n' && !in_quotes {
                if matches!(self.eol, Eol::Cr | Eol::CrNl) {
                    return Scan::Refused;
                }
                self.eol = Eol::Nl;
                return line(1);
            }
            i += 1;
        }
        if at_end {
            Scan::Eof { end: self.buf.len() }
        } else {
            self.need(len, in_quotes)
        }
    }

    /// The byte at `k`, `None` if it has not come yet; past the end of the
    /// data PostgreSQL reads a NUL, which is never a line ending.
    fn byte(&self, k: usize, at_end: bool) -> Option<u8> {
        match self.buf.get(k) {
            Some(&c) => Some(c),
            None if at_end => Some(0),
            None => None,
        }
    }

    /// Remembers where the scan of the current line stopped for lack of bytes.
    fn need(&mut self, scanned: usize, in_quotes: bool) -> Scan {
        self.scanned = scanned;
        self.in_quotes = in_quotes;
        Scan::Need
    }

    /// After `\.` (its line ending would start at `buf[j]`): whether it
    /// ends the data, or `None` if more bytes are needed to tell.
    fn end_marker(&self, j: usize, at_end: bool) -> Option<Marker> {
        let not_marker = match self.format {
            CopyFormat::Csv => Marker::Data,
            CopyFormat::Text => Marker::Refused,
        };
        let mut j = j;
        if self.eol == Eol::CrNl {
            if self.byte(j, at_end)? != b'\r' {
                return Some(not_marker);
            }
            j += 1;
        }
        let c = self.byte(j, at_end)?;
        if c != b'\r' && c != b'\n' {
            return Some(not_marker);
        }
        let same_style = match self.eol {
            Eol::Unknown => true,
            Eol::Nl | Eol::CrNl => c == b'\n',
            Eol::Cr => c == b'\r',
        };
        Some(if same_style { Marker::End } else { Marker::Refused })
    }
}

/// The fields of a text-format line: split at tabs that are not escaped,
/// `\N` is NULL, escapes decoded.
fn text_fields(line: &[u8]) -> Vec<Option<String>> {
    let mut fields = Vec::new();
    let mut from = 0;
    let mut i = 0;
    while i <= line.len() {
        match line.get(i) {
            // An escaped byte (a tab too) is part of the field.
            Some(b'\\') => i = (i + 2).min(line.len()),
            Some(b'\t') | None => {
                let f = &line[from..i];
                fields.push(if f == b"\\N" { None } else { Some(unescape_text(f)) });
                i += 1;
                from = i;
            }
            Some(_) => i += 1,
        }
    }
    fields
}

fn unescape_text(f: &[u8]) -> String {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] != b'\\' || i + 1 == f.len() {
            out.push(f[i]);
            i += 1;
            continue;
        }
        let c = f[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < f.len() && (b'0'..=b'7').contains(&f[i]) {
                    v = v * 8 + u32::from(f[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < f.len() && f[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < f.len() && f[i].is_ascii_hexdigit() {
                    v = v * 16 + (f[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn csv_fields(line: &[u8]) -> Vec<Option<String>> {
    let mut fields = Vec::new();
    let mut cur = Vec::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if quoted {
            if b == b'"' {
                if line.get(i + 1) == Some(&b'"') {
                    cur.push(b'"');
                    i += 1;
                } else {
                    quoted = false;
                }
            } else {
                cur.push(b);
            }
        } else if b == b'"' {
            quoted = true;
            was_quoted = true;
        } else if b == b',' {
            fields.push(field(&mut cur, &mut was_quoted));
        } else {
            cur.push(b);
        }
        i += 1;
    }
    fields.push(field(&mut cur, &mut was_quoted));
    fields
}

fn field(cur: &mut Vec<u8>, was_quoted: &mut bool) -> Option<String> {
    let f = std::mem::take(cur);
    let quoted = std::mem::take(was_quoted);
    if f.is_empty() && !quoted {
        None
    } else {
        Some(String::from_utf8_lossy(&f).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    #[test]
    fn options_recognized() {
        assert_eq!(copy_options("COPY t FROM STDIN"), Some((CopyFormat::Text, false)));
        assert_eq!(
            copy_options("copy t (a, b) from stdin with (format csv, header)"),
            Some((CopyFormat::Csv, true))
        );
        assert_eq!(copy_options("COPY t FROM STDIN CSV"), Some((CopyFormat::Csv, false)));
        assert_eq!(copy_options("COPY t FROM STDIN (FORMAT binary)"), None);
        assert_eq!(copy_options("COPY t FROM STDIN WITH (DELIMITER '|')"), None);
        assert_eq!(copy_options("COPY t FROM '/tmp/x'"), None);
        assert_eq!(
            copy_options("COPY t FROM STDIN (HEADER)"),
            Some((CopyFormat::Text, true))
        );
        assert_eq!(
            copy_options("COPY t FROM STDIN (HEADER match)"),
            Some((CopyFormat::Text, true))
        );
        assert_eq!(
            copy_options("COPY t FROM STDIN (FORMAT csv, HEADER off)"),
            Some((CopyFormat::Csv, false))
        );
    }

    #[test]
    fn text_rows_across_messages() {
        let mut r = CopyReader::new(CopyFormat::Text, false, vec![1, 0]);
        assert_eq!(r.feed(b"1\ta\\tb\tx\n2\t"), vec![vec![s("a\tb"), s("1")]]);
        let keys = r.feed(b"\\N\ty\n3\tc");
        assert_eq!(keys, vec![vec![None, s("2")]]);
        assert_eq!(r.finish(), vec![vec![s("c"), s("3")]]);
        let mut r = CopyReader::new(CopyFormat::Text, false, vec![0]);
        assert_eq!(r.feed(b"a\\\\b\\101\n\\.\n9\n"), vec![vec![s("a\\bA")]]);
    }

    #[test]
    fn csv_rows_with_quotes_and_newlines() {
        let mut r = CopyReader::new(CopyFormat::Csv, true, vec![0, 1]);
        let keys = r.feed(b"a,b\n1,\"x,\"\"y\"\"\nz\"\n2,\n3,\"\"\n");
        assert_eq!(
            keys,
            vec![vec![s("1"), s("x,\"y\"\nz")], vec![s("2"), None], vec![s("3"), s("")]]
        );
    }

    /// Feeds `chunks` one message each, then the end of the data; the first
    /// key column of every row.
    fn keys(format: CopyFormat, header: bool, chunks: &[&[u8]]) -> Vec<String> {
        let mut r = CopyReader::new(format, header, vec![0]);
        let mut out: Vec<RowKey> = chunks.iter().flat_map(|c| r.feed(c)).collect();
        out.extend(r.finish());
        out.into_iter()
            .map(|k| k[0].clone().unwrap_or_else(|| "NULL".into()))
            .collect()
    }

    #[test]
    fn text_line_endings_as_postgresql_reads_them() {
        let t = |chunks: &[&[u8]]| keys(CopyFormat::Text, false, chunks);
        assert_eq!(t(&[b"1\ta\r2\tb\r3\tc\r"]), ["1", "2", "3"]);
        assert_eq!(t(&[b"1\ta\r\n2\tb\r\n"]), ["1", "2"]);
        assert_eq!(t(&[b"1\ta\r", b"\n2\tb\r", b"\n3\tc\r\n"]), ["1", "2", "3"]);
        assert_eq!(t(&[b"1\ta\r", b"2\tb\r1", b"3\tc"]), ["1", "2", "13"]);
        assert_eq!(t(&[b"1\r"]), ["1"]);
        // Escaped line endings and tabs are data.
        assert_eq!(t(&[b"1\\\r2\\\n3\r4\r"]), ["1\r2\n3", "4"]);
        assert_eq!(t(&[b"a\\\tb\tc\n"]), ["a\tb"]);
        assert_eq!(t(&[b"a\\"]), ["a\\"]);
        // The end marker in each style, split anywhere.
        assert_eq!(t(&[b"1\r\\.\r2\r"]), ["1"]);
        assert_eq!(t(&[b"1\r\n\\", b".", b"\r", b"\n2\r\n"]), ["1"]);
        assert_eq!(t(&[b"\\.\n1\n"]), Vec::<String>::new());
        assert_eq!(t(&[b"1\n2\\.\n3\n"]), ["1", "2"]);
        assert_eq!(t(&[b"1\n\\."]), ["1"]);
        assert_eq!(t(&[b"\\\\.\n"]), ["\\."]);
        // HEADER takes the first line, whatever its ending.
        assert_eq!(keys(CopyFormat::Text, true, &[b"id\r", b"\n7\r\n"]), ["7"]);
    }

    #[test]
    fn text_data_postgresql_refuses_ends_the_rows() {
        let t = |chunks: &[&[u8]]| keys(CopyFormat::Text, false, chunks);
        // Mixed newline styles and corrupt end markers fail the COPY.
        assert_eq!(t(&[b"1\n2\r\n3\n"]), ["1"]);
        assert_eq!(t(&[b"1\r\n2\n3\r\n"]), ["1"]);
        assert_eq!(t(&[b"1\r\n2\r3\r\n"]), ["1"]);
        assert_eq!(t(&[b"1\r2\n3\r"]), ["1"]);
        assert_eq!(t(&[b"1\r\n\\.\n2\r\n"]), ["1"]);
        assert_eq!(t(&[b"1\n\\.x\n2\n"]), ["1"]);
    }

    #[test]
    fn csv_line_endings_as_postgresql_reads_them() {
        let c = |chunks: &[&[u8]]| keys(CopyFormat::Csv, false, chunks);
        assert_eq!(c(&[b"1,a\r\"x\ry\",b\r3\r"]), ["1", "x\ry", "3"]);
        assert_eq!(c(&[b"1\r\n\"x\r\ny\"\r\n"]), ["1", "x\r\ny"]);
        assert_eq!(c(&[b"\"a\r", b"\n\"\r", b"\n2"]), ["a\r\n", "2"]);
        // `\.` ends CSV data only alone at the start of a line.
        assert_eq!(c(&[b"1\r\\.\r2\r"]), ["1"]);
        assert_eq!(c(&[b"1\r\n\\.\r\n2\r\n"]), ["1"]);
        assert_eq!(c(&[b"\\.x,1\r\\.,2\ra\\.\r"]), ["\\.x", "\\.", "a\\."]);
        assert_eq!(c(&[b"1\n\\.\r"]), ["1"]);
        assert_eq!(c(&[b"1\n2\r3\n"]), ["1"]);
        assert_eq!(keys(CopyFormat::Csv, true, &[b"id\r", b"\n", b"8\r\n9"]), ["8", "9"]);
    }
}
