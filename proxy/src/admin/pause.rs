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
    let closed = shared
        .gate
        .close_now()
        .map_err(|_| AdminError::State("already paused (or a cutover holds the gate); RESUME first".into()))?;
    let generation = closed.generation();
    let until = since + timeout;
    // Recorded before draining, so that RESUME can abort a drain that an
    // idle-in-transaction session holds up.
    *shared.pause.lock().unwrap_or_else(|p| p.into_inner()) = Some(PauseState {
        generation,
        since,
        until,
    });
    if let Err(e) = closed.drain(timeout).await {
        let mut p = shared.pause.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_some_and(|p| p.generation == generation) {
            *p = None;
        }
        let why = match e {
            GateError::Aborted => "PAUSE aborted: RESUME reopened the gate before the sessions drained".to_string(),
            e => format!("PAUSE failed: {e}"),
        };
        return Err(AdminError::State(why));
    }
    closed.keep_closed();
    let waited = since.elapsed();
    tracing::info!(
        drain_ms = waited.as_millis() as u64,
        timeout_ms = timeout.as_millis() as u64,
        "paused"
    );
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
