//! Capture log retention and disk space, watched while capture is on: once
//! a second the holds in the log directory are read (one per replayer, and
//! one per cutover that may be rolled back), segments every hold is past
//! are deleted (keeping the newest `capture.retain_records`), and the free
//! space of the filesystem holding the log is compared with
//! `capture.disk_warn_free_bytes`, so the DBA hears of a filling disk
//! before commits are refused for it.

use super::control::Active;
use crate::config::{CaptureConfig, Retention};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Weak};
use std::time::{Duration, SystemTime};
use switchyard_replay::log::{apply_retention, log_space, read_holds, Hold, LogSpace, Lsn, RetentionPass};
use tokio::sync::watch;

/// How often retention runs and the disk is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How often a low disk is warned about again in the proxy's log.
const WARN_AGAIN: Duration = Duration::from_secs(60);

/// The free space of the filesystem holding the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged writer may still use.
    pub free_bytes: u64,
    /// The filesystem's size, bytes.
    pub total_bytes: u64,
}

/// What the last look at the log directory found.
#[derive(Debug, Clone, Default)]
pub struct LogView {
    /// The segments on disk: count, bytes, oldest position kept.
    pub space: LogSpace,
    /// The holds, by name.
    pub holds: Vec<Hold>,
    /// The first position retention keeps (`None`: no hold, or `keep`).
    pub first_kept: Option<Lsn>,
    /// Segments deleted since capture started, and their bytes.
    pub deleted_segments: u64,
    /// Bytes of those segments.
    pub deleted_bytes: u64,
    /// The filesystem's free space, if it could be read.
    pub disk: Option<DiskSpace>,
    /// The free space is below `capture.disk_warn_free_bytes`.
    pub disk_low: bool,
    /// Why the last look failed, if it did.
    pub error: Option<String>,
    /// When it was taken.
    pub checked: Option<SystemTime>,
}

impl LogView {
    /// The warning SHOW CAPTURE shows while the disk is low.
    pub fn disk_warning(&self, threshold: u64) -> Option<String> {
        let disk = self.disk.filter(|_| self.disk_low)?;
        Some(format!(
            "the filesystem holding the capture log has {} bytes free, below capture.disk_warn_free_bytes = {threshold}: \
             free space (or let catch-up confirm, so old segments can be deleted) before commits are refused for a full disk",
            disk.free_bytes
        ))
    }
}

/// The latest [`LogView`] of one capture.
#[derive(Debug, Default)]
pub struct LogWatch {
    view: Mutex<LogView>,
}

impl LogWatch {
    /// The latest view.
    pub fn view(&self) -> LogView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The free space of the filesystem holding `dir`.
pub fn disk_space(dir: &Path) -> Result<DiskSpace, String> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| format!("statvfs {}: {e}", dir.display()))?;
    let unit = st.fragment_size() as u64;
    Ok(DiskSpace {
        free_bytes: (st.blocks_available() as u64).saturating_mul(unit),
        total_bytes: (st.blocks() as u64).saturating_mul(unit),
    })
}

/// One look at the log directory: retention (unless `keep`), the space the
/// log takes, the disk's free space.
fn look(dir: &Path, config: &CaptureConfig, last: Option<Lsn>) -> (Result<RetentionPass, String>, Option<DiskSpace>) {
    let pass = match config.retention {
        Retention::Confirmed => apply_retention(dir, last, config.retain_records),
        Retention::Keep => read_holds(dir).and_then(|holds| {
            Ok(RetentionPass {
                holds,
                space: log_space(dir)?,
                ..RetentionPass::default()
            })
        }),
    };
    let disk = disk_space(dir).ok();
    (pass.map_err(|e| e.to_string()), disk)
}

/// Runs retention and watches the disk for `active`'s log until capture stops.
pub(crate) async fn watch_log_dir(active: Weak<Active>, dir: PathBuf, mut stopped: watch::Receiver<bool>) {
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let Some(a) = active.upgrade() else { return };
        let last = a.log().stats().last_lsn;
        let config = a.config.clone();
        let d = dir.clone();
        let looked = tokio::task::spawn_blocking(move || {
            let out = look(&d, &config, last);
            (out, config)
        })
        .await;
        let Ok(((pass, disk), config)) = looked else { return };
        let threshold = config.disk_warn_free_bytes;
        let low = threshold > 0 && disk.is_some_and(|d| d.free_bytes < threshold);
        {
            let mut view = a.log_watch().view.lock().unwrap_or_else(|p| p.into_inner());
            match pass {
                Ok(p) => {
                    view.deleted_segments += p.removed.len() as u64;
                    view.deleted_bytes += p.removed.iter().map(|s| s.size).sum::<u64>();
                    view.space = p.space;
                    view.holds = p.holds;
                    view.first_kept = p.first_kept;
                    view.error = None;
                }
                Err(e) => {
                    if view.error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(dir = %dir.display(), error = %e, "capture log retention failed; nothing is deleted meanwhile");
                    }
                    view.error = Some(e);
                }
            }
            view.disk = disk;
            view.disk_low = low;
            view.checked = Some(SystemTime::now());
        }
        if low {
            if warned.is_none_or(|t| t.elapsed() >= WARN_AGAIN) {
                warned = Some(std::time::Instant::now());
                tracing::warn!(
                    dir = %dir.display(),
                    free_bytes = disk.map_or(0, |d| d.free_bytes),
                    threshold,
                    "the filesystem holding the capture log is running low; commits are refused once it is full"
                );
            }
        } else if warned.take().is_some() {
            tracing::info!(dir = %dir.display(), "the filesystem holding the capture log has enough free space again");
        }
        drop(a);
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_is_measured_and_a_low_one_is_worded_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk_space(dir.path()).unwrap();
        assert!(disk.total_bytes > 0 && disk.free_bytes <= disk.total_bytes, "{disk:?}");
        let err = disk_space(&dir.path().join("missing")).unwrap_err();
        assert!(err.contains("missing"), "{err}");
        let mut view = LogView {
            disk: Some(disk),
            ..LogView::default()
        };
        assert_eq!(view.disk_warning(u64::MAX), None);
        view.disk_low = true;
        let warning = view.disk_warning(u64::MAX).unwrap();
        assert!(warning.contains(&disk.free_bytes.to_string()), "{warning}");
        assert!(warning.contains("capture.disk_warn_free_bytes"), "{warning}");
    }
}
