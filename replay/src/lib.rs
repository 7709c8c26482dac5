//! switchyard-replay: the capture-log format, catalog introspection, migration
//! mapping, the key-sync replayer, sequence sync and verification. The proxy depends on
//! this crate; it depends on nothing of the proxy's.
#![warn(missing_docs)]

pub mod catalog;
pub mod lag_window;
pub mod linger;
pub mod log;
pub mod mapping;
pub mod replayer;
pub mod sequences;
pub mod tls;
pub mod verify;

pub use tls::{DbTls, Dsn, SslMode, TlsError};

pub use log::{
    CommitRecord, Durability, Key, LogEntry, LogError, LogOptions, LogReader, LogStats, LogWriter, LogWriterHandle,
    Lsn, Marker, Record, TableKeys,
};

/// What a failed query or connection says, for an error message: the
/// database's message with its SQLSTATE, detail (but for integrity
/// violations, whose detail quotes row values) and hint when the database
/// answered; else the driver's error with its causes ("error connecting to
/// server: Connection refused (os error 111)"), where the driver's own
/// text alone would say only "db error" or "error connecting to server".
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        // An integrity violation's detail quotes row values ("Key
        // (email)=(...) already exists"): kept out of logs and replies.
        if let Some(detail) = db.detail().filter(|_| !db.code().code().starts_with("23")) {
            text.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    with_causes(e)
}

/// `e` followed by each of its causes, ": "-separated (for a database's
/// answer: "db error: ERROR: ...", the server's whole report).
pub fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The database's message alone when it answered, else as [`error_text`].
pub fn error_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| with_causes(e), |d| d.message().to_owned())
}

/// Aborts its tasks when dropped: tasks that must not outlive what started
/// them (a replayer's workers, a session's backend opening).
#[derive(Debug)]
pub struct AbortOnDrop(pub Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}
