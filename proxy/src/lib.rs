//! switchyard-proxy: a PostgreSQL wire-protocol proxy for zero-downtime
//! migrations. Clients connect to it as if it were the database; it relays
//! their sessions to the current backend, tracks each session's state, and
//! can hold every session at a transaction boundary (the freeze gate).
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod capture;
pub mod catchup;
pub mod cli;
pub mod clone;
pub mod config;
pub mod control;
pub mod gate;
pub mod input;
pub mod metrics;
pub mod net;
pub mod progress;
pub mod registry;
pub mod server;
pub mod session;
pub mod slots;
pub mod stats;
pub mod wire;

pub use config::{
    AuthConfig, AuthMethod, CaptureConfig, CatchupConfig, Config, DatabaseConfig, DurabilityConfig, UnsafePolicy,
    UserConfig,
};
pub use server::Proxy;

/// What a failed query or connection says to a DBA: the database's own
/// message when the database answered, else the error (connect, I/O).
pub(crate) fn db_message(e: &tokio_postgres::Error) -> String {
    switchyard_replay::error_message(e)
}
