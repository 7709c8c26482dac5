//! Errors of sequence sync. A failed query is the database's doing; a value
//! that does not fit and an ambiguous mapping are the migration's, and say
//! what to change before the cutover is tried again.

use std::fmt;

use crate::catalog::QualifiedName;

/// Which part of a sync a query belonged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncStep {
    /// Listing the source's sequences (plan preparation).
    ListSource,
    /// Listing the target's sequences (plan preparation).
    ListTarget,
    /// Opening the target's sequences once (plan preparation).
    OpenTarget,
    /// Reading the source sequences' current values.
    Read,
    /// Setting the target sequences.
    Apply,
}

impl fmt::Display for SyncStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncStep::ListSource => "listing the source's sequences",
            SyncStep::ListTarget => "listing the target's sequences",
            SyncStep::OpenTarget => "opening the target's sequences",
            SyncStep::Read => "reading the source's sequence values",
            SyncStep::Apply => "setting the target's sequences",
        })
    }
}

/// A source value that the target sequence it maps to cannot take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutOfRange {
    /// The source sequence.
    pub source: QualifiedName,
    /// The target sequence it maps to.
    pub target: QualifiedName,
    /// The source's `last_value`.
    pub value: i64,
    /// The target sequence's type (`integer`, `bigint`, `smallint`).
    pub target_type: String,
    /// The target sequence's `MINVALUE`.
    pub min: i64,
    /// The target sequence's `MAXVALUE`.
    pub max: i64,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sequence {}: the source's value {} does not fit target sequence {} ({}, {} to {}); ",
            self.source, self.value, self.target, self.target_type, self.min, self.max
        )?;
        let fits_type = match self.target_type.as_str() {
            "smallint" => i16::try_from(self.value).is_ok(),
            "integer" => i32::try_from(self.value).is_ok(),
            _ => true,
        };
        match (fits_type, self.value > self.max) {
            (false, _) => write!(f, "widen it on the target: ALTER SEQUENCE {} AS bigint", self.target),
            (true, true) => write!(
                f,
                "raise its bound on the target: ALTER SEQUENCE {} MAXVALUE ...",
                self.target
            ),
            (true, false) => write!(
                f,
                "lower its bound on the target: ALTER SEQUENCE {} MINVALUE ...",
                self.target
            ),
        }
    }
}

/// Why sequences could not be planned or synced.
#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    /// A query failed on the server or the connection broke.
    #[error("sequences: {step} failed: {message} [SQLSTATE {}]{}", sqlstate.as_deref().unwrap_or("none"), hint(sqlstate.as_deref(), *step))]
    Query {
        /// The step the query was for.
        step: SyncStep,
        /// The server's message, or the client error when there is none.
        message: String,
        /// The SQLSTATE the server sent, if it sent one.
        sqlstate: Option<String>,
        /// The underlying error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Source values the target sequences cannot hold; nothing was set.
    #[error("sequences: {} source value(s) do not fit their target sequence, nothing was set:\n{}", .0.len(), list(.0))]
    OutOfRange(Vec<OutOfRange>),
    /// Several source sequences lead to the same target sequence, so the
    /// target could only hold one of their values.
    #[error(
        "sequences: target sequence {target} would be set from several source sequences ({}); \
         give each source sequence its own target sequence (OWNED BY the mapped column)",
        sources.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
    )]
    Ambiguous {
        /// The target sequence.
        target: QualifiedName,
        /// The source sequences that map to it.
        sources: Vec<QualifiedName>,
    },
    /// The server answered with something the plan did not ask for.
    #[error("sequences: {step} returned {found}, expected {expected}")]
    Unexpected {
        /// The step.
        step: SyncStep,
        /// What came back.
        found: String,
        /// What the plan expected.
        expected: String,
    },
}

impl SequenceError {
    /// Wraps a failed query, keeping the server's message and SQLSTATE.
    pub(crate) fn query(step: SyncStep, source: tokio_postgres::Error) -> Self {
        let message = match source.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => crate::error_message(&source),
        };
        SequenceError::Query {
            step,
            message,
            sqlstate: source.code().map(|c| c.code().to_owned()),
            source,
        }
    }
}

/// What to do about the errors a DBA can cause between preparing a plan and
/// running it.
fn hint(sqlstate: Option<&str>, step: SyncStep) -> &'static str {
    match (sqlstate, step) {
        // Undefined table: the read and apply name the sequences the plan
        // listed, so one was dropped or renamed since.
        (Some("42P01"), SyncStep::Read | SyncStep::OpenTarget | SyncStep::Apply) => {
            "; a sequence was dropped or renamed since the plan was prepared: prepare it again"
        }
        (Some("42501"), _) => "; the control role needs SELECT on the source sequences and UPDATE on the target's",
        _ => "",
    }
}

fn list(items: &[OutOfRange]) -> String {
    items.iter().map(|o| format!("  {o}")).collect::<Vec<_>>().join("\n")
}
