//! `PAUSE [timeout] [DETACHED]`: close the gate, wait until no session is
//! busy, and keep it closed until RESUME, the timeout, shutdown, or (unless
//! detached) the end of the console session that paused. If the sessions do
//! not drain within the timeout, the gate reopens and PAUSE fails.

use super::{AdminError, PauseHold, Reply};
use crate::gate::{reopen_if_generation, GateError};
use crate::server::{PauseOwner, PauseState, Shared};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn execute(
    shared: &Arc<Shared>,
    timeout: Option<Duration>,
    hold: PauseHold,
    session: u64,
) -> Result<Reply, AdminError> {
    let timeout = timeout
        .unwrap_or(shared.config.limits.pause_timeout())
        .min(super::MAX_PAUSE);
    let since = Instant::now();
    let closed = shared
        .gate
        .close_now()
        .map_err(|_| AdminError::State("already paused (or a cutover holds the gate); RESUME first".into()))?;
    let generation = closed.generation();
    // Bounded above, so this cannot overflow; checked all the same.
    let until = since
        .checked_add(timeout)
        .ok_or_else(|| AdminError::InvalidParameter("PAUSE timeout out of range".into()))?;
    let owner = match hold {
        PauseHold::Attached => PauseOwner::Session(session),
        PauseHold::Detached => PauseOwner::Detached,
    };
    // Recorded before draining, so that RESUME can abort a drain that an
    // idle-in-transaction session holds up.
    *shared.pause.lock().unwrap_or_else(|p| p.into_inner()) = Some(PauseState {
        generation,
        since,
        until,
        owner,
    });
    // Cleared if this future is dropped mid-drain (its client left): the
    // `Closed` guard reopens the gate, and no stale pause may stay listed.
    let record = Record { shared, generation };
    if let Err(e) = closed.drain(timeout).await {
        drop(record);
        let why = match e {
            GateError::Aborted => "PAUSE aborted: RESUME reopened the gate before the sessions drained".to_string(),
            e => format!("PAUSE failed: {e}"),
        };
        return Err(AdminError::State(why));
    }
    std::mem::forget(record);
    closed.keep_closed();
    let waited = since.elapsed();
    tracing::info!(
        drain_ms = waited.as_millis() as u64,
        timeout_ms = timeout.as_millis() as u64,
        ?hold,
        "paused"
    );
    // The pause ends by itself at the deadline, so a forgotten PAUSE cannot
    // freeze the applications for good.
    let shared2 = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(until.into()).await;
        if end(&shared2, generation) {
            tracing::warn!("PAUSE timed out; gate reopened");
        }
    });
    Ok(Reply::Done("PAUSE".into()))
}

/// Ends the pause numbered `generation` if it is still the one in force:
/// forgets it and reopens the gate. Returns whether the gate reopened.
fn end(shared: &Shared, generation: u64) -> bool {
    let mut p = shared.pause.lock().unwrap_or_else(|p| p.into_inner());
    if p.is_some_and(|p| p.generation == generation) {
        *p = None;
    }
    reopen_if_generation(&shared.gate, generation)
}

/// Forgets a pause whose PAUSE did not complete (drain failed or dropped).
struct Record<'a> {
    shared: &'a Shared,
    generation: u64,
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        let mut p = self.shared.pause.lock().unwrap_or_else(|p| p.into_inner());
        if p.is_some_and(|p| p.generation == self.generation) {
            *p = None;
        }
    }
}

/// Held by a console session for its whole life: when it ends, a pause it
/// took without DETACHED ends with it.
pub(super) struct EndWithSession<'a> {
    shared: &'a Shared,
    session: u64,
}

impl<'a> EndWithSession<'a> {
    pub(super) fn new(shared: &'a Shared, session: u64) -> Self {
        EndWithSession { shared, session }
    }
}

impl Drop for EndWithSession<'_> {
    fn drop(&mut self) {
        let pause = *self.shared.pause.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pause.filter(|p| p.owner == PauseOwner::Session(self.session)) {
            if end(self.shared, p.generation) {
                tracing::info!(
                    session = self.session,
                    "the console session that paused left; gate reopened"
                );
            }
        }
    }
}
