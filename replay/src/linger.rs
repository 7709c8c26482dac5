//! Closing a connection that is done without paying for it at once: a
//! backend's exit costs its server a few milliseconds of CPU (its mappings
//! of shared memory torn down, its statistics flushed). Right after a
//! cutover that CPU is better spent on every session's first queries on
//! the target, so the control connections that end there close a little
//! later instead.

use std::time::Duration;

/// How long a finished control connection stays open before it closes.
pub const CLOSE_AFTER: Duration = Duration::from_millis(500);

/// Closes `client` after [`CLOSE_AFTER`], on a task of its own (at once
/// when no runtime runs).
pub fn close_later(client: tokio_postgres::Client) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            tokio::time::sleep(CLOSE_AFTER).await;
            drop(client);
        });
    }
}
