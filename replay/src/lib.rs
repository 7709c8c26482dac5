//! switchyard-replay: the capture-log format, catalog introspection, migration
//! mapping, the key-sync replayer, sequence sync and verification. The proxy depends on
//! this crate; it depends on nothing of the proxy's.
#![warn(missing_docs)]

pub mod catalog;
pub mod lag_window;
pub mod log;
pub mod mapping;
pub mod replayer;
pub mod sequences;
pub mod verify;

pub use log::{
    CommitRecord, Durability, Key, LogEntry, LogError, LogOptions, LogReader, LogStats, LogWriter, LogWriterHandle,
    Lsn, Marker, Record, TableKeys,
};

/// Connects with `config` and drives the connection on its own task; its
/// end is logged at debug level under `label` (e.g. "replay").
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
    label: &'static str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "{label} connection ended");
        }
    });
    Ok(client)
}
