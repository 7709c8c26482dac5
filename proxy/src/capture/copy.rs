//! Keys of rows sent with COPY ... FROM STDIN, read from the client's own
//! CopyData in text or CSV format (default options only: tab or comma
//! delimiter, `\N` or empty-unquoted NULL, `"` quotes, optional HEADER).
//! Rows may span CopyData messages; the reader keeps the partial row.

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
    let header = words.contains(&"header");
    if header && format == CopyFormat::Text {
        return None; // HEADER is CSV-only before PostgreSQL 15's text HEADER; keep it simple
    }
    Some((format, header))
}

/// Splits COPY data into rows and picks the key fields out of each.
#[derive(Debug)]
pub struct CopyReader {
    format: CopyFormat,
    skip_header: bool,
    /// Field positions of the key columns, in key order.
    positions: Vec<usize>,
    partial: Vec<u8>,
    in_quotes: bool,
    done: bool,
}

impl CopyReader {
    /// A reader for rows whose key columns are at `positions`.
    pub fn new(format: CopyFormat, header: bool, positions: Vec<usize>) -> CopyReader {
        CopyReader {
            format,
            skip_header: header,
            positions,
            partial: Vec::new(),
            in_quotes: false,
            done: false,
        }
    }

    /// Feeds one CopyData payload; returns the keys of the rows it completed.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Vec<Option<String>>> {
        let mut keys = Vec::new();
        for &b in data {
            if self.format == CopyFormat::Csv && b == b'"' {
                self.in_quotes = !self.in_quotes;
            }
            if b == b'\n' && !self.in_quotes {
                let line = std::mem::take(&mut self.partial);
                if let Some(k) = self.row(&line) {
                    keys.push(k);
                }
            } else {
                self.partial.push(b);
            }
        }
        keys
    }

    /// The end of the data: a last row without a newline.
    pub fn finish(&mut self) -> Vec<Vec<Option<String>>> {
        let line = std::mem::take(&mut self.partial);
        if line.is_empty() {
            return Vec::new();
        }
        self.row(&line).into_iter().collect()
    }

    fn row(&mut self, line: &[u8]) -> Option<Vec<Option<String>>> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.done {
            return None;
        }
        if self.skip_header {
            self.skip_header = false;
            return None;
        }
        if line == b"\\." {
            self.done = true;
            return None;
        }
        let fields = match self.format {
            CopyFormat::Text => text_fields(line),
            CopyFormat::Csv => csv_fields(line),
        };
        self.positions.iter().map(|&p| fields.get(p).cloned()).collect()
    }
}

fn text_fields(line: &[u8]) -> Vec<Option<String>> {
    line.split(|&b| b == b'\t')
        .map(|f| if f == b"\\N" { None } else { Some(unescape_text(f)) })
        .collect()
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
}
