//! switchyard-replay: the capture-log format, catalog introspection, migration
//! mapping and the key-sync replayer. The proxy depends on this crate; it
//! depends on nothing of the proxy's.
#![warn(missing_docs)]

pub mod catalog;
pub mod log;
pub mod mapping;
pub mod replayer;

pub use log::{
    CommitRecord, Durability, Key, LogEntry, LogError, LogOptions, LogReader, LogStats, LogWriter, LogWriterHandle,
    Lsn, Marker, Record, TableKeys,
};
