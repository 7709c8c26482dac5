//! A result set the console sends back: text columns and rows, encoded as
//! RowDescription, DataRows and CommandComplete.

use crate::wire::backend as bmsg;
use bytes::BytesMut;

/// Rows of text to send as one query result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultSet {
    /// Column names.
    pub columns: Vec<&'static str>,
    /// Rows; `None` is NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// Command tag; defaults to `SHOW`.
    pub tag: String,
}

impl ResultSet {
    /// An empty result with these columns.
    pub fn new(columns: &[&'static str]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
            tag: "SHOW".into(),
        }
    }

    /// Adds a row of values.
    pub fn row<I, S>(&mut self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        self.rows
            .push(values.into_iter().map(|v| Some(v.to_string())).collect());
    }

    /// Appends the wire encoding.
    pub fn encode(&self, out: &mut BytesMut) {
        bmsg::row_description(out, &self.columns);
        for row in &self.rows {
            bmsg::data_row(out, row);
        }
        bmsg::command_complete(out, &self.tag);
    }
}

/// What a console command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Rows.
    Rows(ResultSet),
    /// Only a command tag (e.g. `PAUSE`, `RESUME`).
    Done(String),
}

impl Reply {
    /// Appends the wire encoding.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Rows(r) => r.encode(out),
            Reply::Done(tag) => bmsg::command_complete(out, tag),
        }
    }
}
