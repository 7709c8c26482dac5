//! Capture across a proxy restart: the capture the log directory records as
//! on is resumed before any client is admitted, or left pending (its
//! database's sessions refused) until a DBA resumes or gives it up.

use super::{Active, Capture, CaptureError};
use crate::capture::state_file::{self, CaptureRecord};
use crate::registry::Registry;
use std::sync::Arc;
use std::time::SystemTime;

/// A capture that was on when the proxy last stopped and could not be
/// resumed at startup: sessions of its database are refused until a DBA
/// runs CAPTURE START (resume) or CAPTURE STOP (give it up).
#[derive(Debug, Clone)]
pub struct ResumePending {
    /// What the log directory recorded.
    pub record: CaptureRecord,
    /// Why resuming failed.
    pub error: String,
    /// When.
    pub since: SystemTime,
}

/// Where capture stands, for SHOW CAPTURE.
#[derive(Debug)]
pub enum CaptureState {
    /// Off: nothing recorded.
    Off,
    /// Recorded on, not resumed after a restart.
    ResumePending(ResumePending),
    /// On (possibly with a failed log: see [`Active::failure`]).
    On(Arc<Active>),
}

impl Capture {
    /// Where capture stands.
    pub fn state(&self) -> CaptureState {
        if let Some(a) = self.current() {
            return CaptureState::On(a);
        }
        match self.pending.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(p) => CaptureState::ResumePending(p),
            None => CaptureState::Off,
        }
    }

    /// Why a new session on `database` must be refused: a capture of that
    /// database is recorded on but could not be resumed, so its writes
    /// would go uncaptured.
    pub fn refusal_for(&self, database: &str) -> Option<String> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // An unreadable record names no database: refuse them all.
        let p = pending
            .as_ref()
            .filter(|p| p.record.database == database || p.record.database.is_empty())?;
        Some(format!(
            "switchyard: capture of database \"{database}\" may have been on when the proxy stopped and could not be resumed ({}); \
             sessions of this database are refused until a DBA runs CAPTURE START (resume) or CAPTURE STOP (give it up)",
            p.error
        ))
    }

    /// At proxy startup, before any client is admitted: resumes the capture
    /// the log directory records as on. If that fails, the capture is left
    /// pending (see [`Capture::refusal_for`]) and the error returned.
    pub async fn resume_recorded(&self, sessions: &Arc<Registry>) -> Result<Option<Arc<Active>>, CaptureError> {
        let dir = self.place().dir;
        let read = tokio::task::spawn_blocking(move || state_file::read(&dir))
            .await
            .map_err(|e| CaptureError::Log(e.to_string()))?;
        let record = match read {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => {
                // Unreadable: capture may have been on; refuse rather than guess.
                let database = self.proxy.capture_database().unwrap_or_default().to_owned();
                self.set_pending(
                    CaptureRecord {
                        database,
                        epoch: 0,
                        start_lsn: 0,
                        started_micros: 0,
                        barrier_micros: None,
                        resumes: 0,
                    },
                    &e.to_string(),
                );
                return Err(e.into());
            }
        };
        if let Some(configured) = self.proxy.capture_database().filter(|n| *n != record.database) {
            let e = CaptureError::RecordedOther {
                recorded: record.database.clone(),
                configured: configured.to_owned(),
            };
            self.set_pending(record, &e.to_string());
            return Err(e);
        }
        let _op = self.op.lock().await;
        match self
            .begin(sessions, record.database.clone(), Some(record.clone()))
            .await
        {
            Ok(a) => Ok(Some(a)),
            Err(e) => {
                self.set_pending(record, &e.to_string());
                Err(e)
            }
        }
    }

    fn set_pending(&self, record: CaptureRecord, error: &str) {
        tracing::error!(database = %record.database, error, "capture was on before the restart and could not be resumed");
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(ResumePending {
            record,
            error: error.to_owned(),
            since: SystemTime::now(),
        });
    }
}
