//! Recovery from a failed capture log (a full disk, an I/O error): while
//! the log cannot be written every commit that wrote is refused (the
//! session rolls it back and answers 58030), and once a second a probe
//! reopens the log; when a marker can be written again the capture goes on
//! with the new writer. No commit that wrote got through meanwhile, so the
//! log has no gap and no new barrier is needed.

use super::control::{unix_micros, Active};
use std::path::PathBuf;
use std::sync::Weak;
use std::time::{Duration, SystemTime};
use switchyard_replay::log::{LogOptions, LogWriter, Marker, Record};
use tokio::sync::watch;

/// How often a failed log is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Probes the log of `active` while it is failed, until capture stops.
pub(crate) async fn watch_log(
    active: Weak<Active>,
    dir: PathBuf,
    options: LogOptions,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let Some(a) = active.upgrade() else { return };
        if a.failure().is_none() {
            continue;
        }
        match reopen(&a, &dir, &options).await {
            Ok(()) => tracing::info!(dir = %dir.display(), "capture log writable again; commits are let through"),
            Err(e) => tracing::debug!(error = %e, "capture log still not writable"),
        }
    }
}

/// Closes the failed writer (releasing the directory), opens a new one and
/// writes a resume marker with it; on success it replaces the failed one.
async fn reopen(a: &Active, dir: &std::path::Path, options: &LogOptions) -> Result<(), String> {
    let old = a.log();
    let bell = old.bell();
    let (d, o) = (dir.to_owned(), options.clone());
    let opened = tokio::task::spawn_blocking(move || {
        // Closing a failed writer only releases its lock; other clones then
        // fail with `Closed`, which refuses their commits as well.
        let _ = old.close();
        LogWriter::open(&d, o)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    if let Some(bell) = bell {
        opened.ring_on_write(bell);
    }
    let marker = Record::Marker(Marker::CaptureResume {
        time_micros: unix_micros(SystemTime::now()),
    });
    if let Err(e) = opened.append(marker).await {
        let _ = tokio::task::spawn_blocking(move || opened.close()).await;
        return Err(e.to_string());
    }
    a.replace_log(opened);
    Ok(())
}
