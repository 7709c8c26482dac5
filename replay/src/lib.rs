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
