//! The replayer's hold on the capture log: the position committed on the
//! target by every worker (what a restart resumes after), kept in the log
//! directory so that the proxy's capture deletes only segments this
//! replayer will never read again. One hold per target, as there is one
//! replayer per target: the proxy's catch-up and `switchyard catchup run`
//! onto the same target share it, as they share the target's position table.

use super::ReplayError;
use crate::log::{hold_name, remove_hold, write_hold, LogError, Lsn};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the hold is brought up to the committed position.
const KEEP_EVERY: Duration = Duration::from_millis(500);

/// This replayer's hold file.
#[derive(Debug, Clone)]
pub(super) struct LogHold {
    dir: PathBuf,
    name: String,
    description: String,
    /// The highest position this run has written (`None` once released),
    /// locked for the length of each write: the periodic write and the last
    /// one never overlap, a late one never puts the hold back, and none
    /// brings back a released hold.
    written: Arc<Mutex<Option<Lsn>>>,
}

impl LogHold {
    /// The hold of the replayer onto `target`, in the log at `dir`.
    pub(super) fn new(dir: PathBuf, target: &tokio_postgres::Config) -> LogHold {
        let host = match target.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = target.get_ports().first().copied().unwrap_or(5432);
        let db = target.get_dbname().or(target.get_user()).unwrap_or("postgres");
        LogHold {
            dir,
            name: hold_name(&format!("replayer-{db}@{host}:{port}")),
            description: format!("catch-up onto database {db} at {host}:{port}"),
            written: Arc::new(Mutex::new(Some(Lsn(0)))),
        }
    }

    /// The hold's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// [`LogHold::write`] on the calling thread.
    pub(super) fn write_blocking(&self, confirmed: Lsn) -> Result<(), LogError> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match *written {
            Some(w) if confirmed >= w => {}
            _ => return Ok(()),
        }
        write_hold(&self.dir, &self.name, confirmed, &self.description)?;
        *written = Some(confirmed);
        Ok(())
    }

    /// Records that every record up to `confirmed` is committed on the target.
    pub(super) async fn write(&self, confirmed: Lsn) -> Result<(), ReplayError> {
        let hold = self.clone();
        tokio::task::spawn_blocking(move || hold.write_blocking(confirmed))
            .await
            .unwrap_or_else(|e| {
                Err(LogError::Io {
                    op: "record the replayer's position in",
                    path: self.dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?;
        Ok(())
    }

    /// Keeps the hold at the lowest of the workers' committed positions,
    /// until aborted. A failed write leaves the older position in place
    /// (which holds more, never less), and is retried.
    pub(super) async fn keep(self, committed: Arc<Vec<AtomicU64>>, mut written: Lsn) {
        let mut warned = false;
        loop {
            tokio::time::sleep(KEEP_EVERY).await;
            let lowest = Lsn(committed.iter().map(|c| c.load(Relaxed)).min().unwrap_or(0));
            if lowest <= written {
                continue;
            }
            match self.write(lowest).await {
                Ok(()) => {
                    written = lowest;
                    warned = false;
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, hold = %self.name, "cannot record the replayer's position in the capture log directory; the log keeps the older position's segments");
                }
                Err(_) => {}
            }
        }
    }

    /// Removes the hold (the records it would keep are gone already).
    pub(super) async fn release(&self) {
        let hold = self.clone();
        let removed = tokio::task::spawn_blocking(move || {
            // After a periodic write still in flight, and before any later
            // one, which would each bring it back.
            let mut written = hold.written.lock().unwrap_or_else(|p| p.into_inner());
            *written = None;
            remove_hold(&hold.dir, &hold.name)
        })
        .await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(error = %e, hold = %self.name, "cannot remove the replayer's hold on the capture log");
        }
    }

    /// The lowest committed position, recorded once more at the end of a run.
    pub(super) async fn finish(&self, committed: &[AtomicU64]) -> Result<(), ReplayError> {
        let lowest = Lsn(committed.iter().map(|c| c.load(Relaxed)).min().unwrap_or(0));
        self.write(lowest).await
    }
}
