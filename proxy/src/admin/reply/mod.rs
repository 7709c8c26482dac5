//! Typed console replies: SHOW STATUS, SHOW CAPTURE, SHOW LAG, SHOW
//! CUTOVER, and the outcome of CUTOVER and VERIFY. The console fills one
//! struct per reply and encodes it into the rows psql shows; the CLI
//! decodes the rows it receives back into the same struct. Each reply's
//! key names live only in its encode and decode, next to each other, so
//! that the two sides cannot drift apart. This layer is pure: no sockets,
//! no controllers.
//!
//! Values that the console formats from one fact are typed (numbers,
//! names, blanks as `None`); lines written for people that combine several
//! facts (a session holding the barrier, a step of a cutover's report) keep
//! their text, under a typed key.

mod capture;
mod cutover;
mod lag;
mod status;
mod verify;

pub use capture::{
    Bypassing, CaptureOff, CaptureOn, CapturePhase, CaptureReply, CatalogFacts, DiskSpace, LogDirFacts, LogSpace,
    ResumePending,
};
pub use cutover::{CutoverReply, ShowCutoverReply, StepLine};
pub use lag::{LagReply, LagWindow};
pub use status::{GateState, PauseClock, RoutePending, StatusCutover, StatusReply};
pub use verify::{VerifyReply, VerifyTable};

use super::ResultSet;
use crate::catchup::CatchupPhase;
use crate::session::route::Destination;
use std::fmt::Display;
use thiserror::Error;

/// A reply with a type: encoded by the console, decoded by a client.
pub trait ConsoleReply: Sized {
    /// The command it answers, as errors name it.
    const COMMAND: &'static str;

    /// The result set the console sends.
    fn to_rows(&self) -> ResultSet;

    /// Reads the reply back from the rows a client received.
    fn from_rows(rows: &ReplyRows) -> Result<Self, ReplyError>;
}

/// A reply as a client reads it: column names and text rows (NULL read as
/// the empty string, as the CLI's simple queries see it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyRows {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows of text.
    pub rows: Vec<Vec<String>>,
}

impl From<&ResultSet> for ReplyRows {
    fn from(rs: &ResultSet) -> ReplyRows {
        ReplyRows {
            columns: rs.columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: rs
                .rows
                .iter()
                .map(|r| r.iter().map(|v| v.clone().unwrap_or_default()).collect())
                .collect(),
        }
    }
}

/// Why rows do not read as the reply expected: the proxy answering may be
/// of another switchyard version than the client reading.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ReplyError {
    /// The reply has other columns than this client reads.
    #[error(
        "the {command} reply has columns ({found}), not ({expected}); is the proxy of another switchyard version?"
    )]
    Columns {
        /// The command answered.
        command: &'static str,
        /// The columns received.
        found: String,
        /// The columns expected.
        expected: String,
    },
    /// A row (or column) the reply always has is not there.
    #[error("the {command} reply has no \"{key}\"; is the proxy of another switchyard version?")]
    Missing {
        /// The command answered.
        command: &'static str,
        /// The key (or column) missing.
        key: String,
    },
    /// A value does not read as what its key holds.
    #[error("the {command} reply's \"{key}\" is \"{value}\", not {expected}")]
    Invalid {
        /// The command answered.
        command: &'static str,
        /// The key (or column and row).
        key: String,
        /// The value received.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}

/// A value of a reply, as the console writes it and a client reads it.
pub(crate) trait WireValue: Sized {
    /// What it is, for errors.
    const WHAT: &'static str;

    /// Reads it, `None` when the text is not one.
    fn read(text: &str) -> Option<Self>;
}

impl WireValue for String {
    const WHAT: &'static str = "text";

    fn read(text: &str) -> Option<Self> {
        Some(text.to_owned())
    }
}

impl WireValue for u64 {
    const WHAT: &'static str = "a whole number";

    fn read(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl WireValue for i32 {
    const WHAT: &'static str = "a process id";

    fn read(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl WireValue for f64 {
    const WHAT: &'static str = "a number";

    fn read(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl WireValue for bool {
    const WHAT: &'static str = "true or false";

    fn read(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl WireValue for Destination {
    const WHAT: &'static str = "source or target";

    fn read(text: &str) -> Option<Self> {
        Destination::from_name(text)
    }
}

impl WireValue for CatchupPhase {
    const WHAT: &'static str = "off, running, retrying or failed";

    fn read(text: &str) -> Option<Self> {
        CatchupPhase::from_name(text)
    }
}

/// One of a list of rows named `<prefix><id>`: the id, and what the
/// console says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<K> {
    /// The id, from the key.
    pub id: K,
    /// The value.
    pub detail: String,
}

impl<K> Entry<K> {
    /// An entry.
    pub fn new(id: K, detail: impl Into<String>) -> Entry<K> {
        Entry {
            id,
            detail: detail.into(),
        }
    }
}

/// Writes a reply of `key | value` rows.
pub(crate) struct Pairs(ResultSet);

impl Pairs {
    /// No rows yet, under these two column names.
    pub(crate) fn new(columns: [&'static str; 2]) -> Pairs {
        Pairs(ResultSet::new(&columns))
    }

    /// One row.
    pub(crate) fn put(&mut self, key: impl Into<String>, value: impl Display) {
        self.0.rows.push(vec![Some(key.into()), Some(value.to_string())]);
    }

    /// One row whose value is blank when there is none.
    pub(crate) fn put_blank(&mut self, key: impl Into<String>, value: Option<impl Display>) {
        self.put(key, value.map(|v| v.to_string()).unwrap_or_default());
    }

    /// One row per entry, keyed `<prefix><id>`.
    pub(crate) fn put_entries<K: Display>(&mut self, prefix: &str, entries: &[Entry<K>]) {
        for e in entries {
            self.put(format!("{prefix}{}", e.id), &e.detail);
        }
    }

    /// The result set.
    pub(crate) fn done(self) -> ResultSet {
        self.0
    }
}

/// Reads a reply of `key | value` rows. Keys it does not ask for are
/// ignored (a newer proxy may say more); a key asked for twice is read at
/// its first row.
pub(crate) struct Fields<'a> {
    command: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    /// The rows, checked to have these two columns.
    pub(crate) fn new(
        command: &'static str,
        columns: [&'static str; 2],
        rows: &'a ReplyRows,
    ) -> Result<Fields<'a>, ReplyError> {
        if rows.columns != columns {
            return Err(ReplyError::Columns {
                command,
                found: rows.columns.join(", "),
                expected: columns.join(", "),
            });
        }
        let pairs = rows
            .rows
            .iter()
            .map(|r| {
                let cell = |i: usize| r.get(i).map_or("", String::as_str);
                (cell(0), cell(1))
            })
            .collect();
        Ok(Fields { command, pairs })
    }

    /// The text of `key`, if there is such a row.
    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// The error for a value that does not read as `what`.
    pub(crate) fn invalid(&self, key: &str, value: &str, expected: &'static str) -> ReplyError {
        ReplyError::Invalid {
            command: self.command,
            key: key.to_owned(),
            value: value.to_owned(),
            expected,
        }
    }

    fn missing(&self, key: &str) -> ReplyError {
        ReplyError::Missing {
            command: self.command,
            key: key.to_owned(),
        }
    }

    fn value<T: WireValue>(&self, key: &str, text: &str) -> Result<T, ReplyError> {
        T::read(text).ok_or_else(|| self.invalid(key, text, T::WHAT))
    }

    /// A row the reply always has.
    pub(crate) fn req<T: WireValue>(&self, key: &str) -> Result<T, ReplyError> {
        let text = self.get(key).ok_or_else(|| self.missing(key))?;
        self.value(key, text)
    }

    /// A row the reply has only sometimes.
    pub(crate) fn opt<T: WireValue>(&self, key: &str) -> Result<Option<T>, ReplyError> {
        self.get(key).map(|text| self.value(key, text)).transpose()
    }

    /// A row the reply always has, blank when there is no value.
    pub(crate) fn blank<T: WireValue>(&self, key: &str) -> Result<Option<T>, ReplyError> {
        match self.get(key) {
            None => Err(self.missing(key)),
            Some("") => Ok(None),
            Some(text) => self.value(key, text).map(Some),
        }
    }

    /// Every row named `key`, in order.
    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
            .collect()
    }

    /// Every row named `<prefix><id>`, in order.
    pub(crate) fn entries<K: WireValue>(&self, prefix: &str) -> Result<Vec<Entry<K>>, ReplyError> {
        self.pairs
            .iter()
            .filter_map(|(k, v)| Some((*k, k.strip_prefix(prefix)?, *v)))
            .map(|(key, id, detail)| Ok(Entry::new(self.value(key, id)?, detail)))
            .collect()
    }
}

/// Formats a number of milliseconds (or seconds) with `decimals` digits
/// after the point, as every reply writes them.
pub(crate) fn fixed(value: f64, decimals: usize) -> String {
    format!("{value:.decimals$}")
}

/// Replies as tests build them.
#[cfg(test)]
pub(crate) mod samples {
    pub(crate) use super::capture::samples::*;
    pub(crate) use super::cutover::samples::*;
    pub(crate) use super::lag::samples::*;
    pub(crate) use super::status::samples::*;
}

#[cfg(test)]
pub(crate) mod testing {
    //! What every reply's tests check.

    use super::*;

    /// The reply encoded, read back as a client receives it, and decoded:
    /// the same reply, and the same rows when encoded again.
    pub(crate) fn round_trip<T: ConsoleReply + PartialEq + std::fmt::Debug>(reply: &T) {
        let rows = ReplyRows::from(&reply.to_rows());
        let back = T::from_rows(&rows).unwrap_or_else(|e| panic!("{e}\n{rows:?}"));
        assert_eq!(&back, reply, "{rows:?}");
        assert_eq!(ReplyRows::from(&back.to_rows()), rows);
    }

    /// The reply's rows with one more row, as a newer proxy might send.
    pub(crate) fn with_extra_row(reply: &impl ConsoleReply) -> ReplyRows {
        let mut rows = ReplyRows::from(&reply.to_rows());
        rows.rows
            .insert(1, vec!["added_by_a_newer_proxy".to_owned(), "42".to_owned()]);
        rows
    }

    /// The reply's rows without the rows named `key`.
    pub(crate) fn without(reply: &impl ConsoleReply, key: &str) -> ReplyRows {
        let mut rows = ReplyRows::from(&reply.to_rows());
        let before = rows.rows.len();
        rows.rows.retain(|r| r[0] != key);
        assert!(rows.rows.len() < before, "no {key} row to take out");
        rows
    }

    /// Decoding fails naming the key and the command.
    pub(crate) fn fails_naming<T: ConsoleReply + std::fmt::Debug>(rows: &ReplyRows, key: &str) {
        let e = T::from_rows(rows).expect_err("decoded without a required row");
        assert_eq!(
            e,
            ReplyError::Missing {
                command: T::COMMAND,
                key: key.to_owned()
            }
        );
        let text = e.to_string();
        assert!(text.contains(T::COMMAND) && text.contains(key), "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(pairs: &[(&str, &str)]) -> ReplyRows {
        ReplyRows {
            columns: vec!["key".to_owned(), "value".to_owned()],
            rows: pairs.iter().map(|(k, v)| vec![k.to_string(), v.to_string()]).collect(),
        }
    }

    #[test]
    fn fields_read_required_optional_blank_repeated_and_prefixed_rows() {
        let r = rows(&[
            ("n", "12"),
            ("blank", ""),
            ("item", "a"),
            ("item", "b"),
            ("pid.7", "x"),
            ("pid.9", "y"),
            ("bad", "twelve"),
        ]);
        let f = Fields::new("SHOW TEST", ["key", "value"], &r).unwrap();
        assert_eq!(f.req::<u64>("n"), Ok(12));
        assert_eq!(f.opt::<u64>("n"), Ok(Some(12)));
        assert_eq!(f.opt::<u64>("absent"), Ok(None));
        assert_eq!(f.blank::<u64>("blank"), Ok(None));
        assert_eq!(f.all("item"), ["a", "b"]);
        assert_eq!(
            f.entries::<i32>("pid."),
            Ok(vec![Entry::new(7, "x"), Entry::new(9, "y")])
        );
        let e = f.req::<u64>("bad").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the SHOW TEST reply's \"bad\" is \"twelve\", not a whole number"
        );
        let e = f.blank::<u64>("absent").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the SHOW TEST reply has no \"absent\"; is the proxy of another switchyard version?"
        );
    }

    #[test]
    fn other_columns_are_refused_by_name() {
        let mut r = rows(&[("state", "on")]);
        r.columns = vec!["stat".to_owned(), "value".to_owned()];
        let e = Fields::new("SHOW TEST", ["key", "value"], &r).err().unwrap();
        assert!(e.to_string().contains("columns (stat, value), not (key, value)"), "{e}");
    }

    #[test]
    fn fixed_point_values_read_back_as_written() {
        for (v, d, text) in [
            (38.25, 1, "38.2"),
            (0.04, 1, "0.0"),
            (1.0005, 3, "1.000"),
            (41.6, 0, "42"),
        ] {
            assert_eq!(fixed(v, d), text);
            let read = f64::read(text).unwrap();
            assert_eq!(fixed(read, d), text);
        }
    }
}
