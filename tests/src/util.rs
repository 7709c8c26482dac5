//! Small helpers: free ports, tracing for tests, SQL quoting.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::Once;

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process may
/// take it before it is used, so whoever binds it should retry on
/// "address in use" (the cluster does).
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Installs a `tracing` subscriber that writes through the test harness's
/// capture, filtered by `RUST_LOG` (default `info`). Safe to call from every
/// test; only the first call in a process installs it.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Another subscriber may already be set (a bench's main, say); keep it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// `name` as an SQL identifier: double-quoted, inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as an SQL string literal (with `standard_conforming_strings` on,
/// the default): single-quoted, inner quotes doubled.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `value` quoted for a libpq key/value connection string.
pub(crate) fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}
