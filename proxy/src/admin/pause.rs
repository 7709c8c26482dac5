//! `PAUSE [timeout]`: close the gate, wait until no session is busy, and
//! keep it closed until RESUME, the timeout, or shutdown. If the sessions do
//! not drain within the timeout, the gate reopens and PAUSE fails.

use super::{AdminError, Reply};
use crate::gate::{reopen_if_generation, GateError};
use crate::server::{PauseState, Shared};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn execute(shared: &Arc<Shared>, timeout: Option<Duration>) -> Result<Reply, AdminError> {
    let timeout = timeout.unwrap_or(shared.config.limits.pause_timeout());
    let since = Instant::now();
    let closed = shared.gate.close(timeout).await.map_err(|e| match e {
        GateError::AlreadyClosed => AdminError::State("already paused; RESUME first".into()),
        e @ GateError::DrainTimeout { .. } => AdminError::State(format!("PAUSE failed: {e}")),
    })?;
    let generation = closed.keep_closed();
    let until = since + timeout;
    *shared.pause.lock().unwrap_or_else(|p| p.into_inner()) = Some(PauseState {
        generation,
        since,
        until,
    });
    let waited = since.elapsed();
    tracing::info!(drain_ms = waited.as_millis() as u64, timeout_ms = timeout.as_millis() as u64, "paused");
    // The pause ends by itself at the deadline, so a forgotten PAUSE cannot
    // freeze the applications for good.
    let shared2 = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(until.into()).await;
        if reopen_if_generation(&shared2.gate, generation) {
            tracing::warn!("PAUSE timed out; gate reopened");
        }
        let mut p = shared2.pause.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_some_and(|p| p.generation == generation) {
            *p = None;
        }
    });
    Ok(Reply::Done("PAUSE".into()))
}
