//! `RESUME`: reopen the gate closed by PAUSE.

use super::{AdminError, Reply};
use crate::server::Shared;

pub(super) fn execute(shared: &Shared) -> Result<Reply, AdminError> {
    let mut pause = shared.pause.lock().unwrap_or_else(|p| p.into_inner());
    match pause.take() {
        Some(p) if crate::gate::reopen_if_generation(&shared.gate, p.generation) => {
            // Also ends a PAUSE still draining: it fails with "aborted".
            tracing::info!(paused_ms = p.since.elapsed().as_millis() as u64, "resumed");
            Ok(Reply::Done("RESUME".into()))
        }
        _ => Err(AdminError::State("not paused".into())),
    }
}
