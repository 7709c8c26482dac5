//! The capture-state file in the log directory: while capture is on, it
//! says so (which database, from which log position and epoch, since when),
//! so that a proxy started again after a crash resumes capture before it
//! admits a client instead of coming back with capture silently off.
//!
//! Written atomically: a temp file is written and fsynced, renamed over the
//! old one, and the directory fsynced, so a crash leaves the old record or
//! the new one, never a torn one. CAPTURE STOP removes it.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use switchyard_replay::log::LogError;
use thiserror::Error;

/// The file's name inside the log directory.
pub const FILE_NAME: &str = "capture.state";

/// Why the state file could not be read or written.
#[derive(Debug, Error)]
pub enum StateFileError {
    /// A file-system call failed.
    #[error("capture state file {}: cannot {op}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's contents do not parse.
    #[error("capture state file {} is unreadable: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
}

impl StateFileError {
    /// SQLSTATE for a client or console refused because of it.
    pub fn sqlstate(&self) -> &'static str {
        "58030"
    }
}

/// A capture that is on, as recorded in the log directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRecord {
    /// The captured database.
    pub database: String,
    /// The capture epoch when it was last (re)started.
    pub epoch: u64,
    /// Log position of its CaptureStart marker.
    pub start_lsn: u64,
    /// When CAPTURE START ran, Unix microseconds.
    pub started_micros: i64,
    /// When the barrier was reached, Unix microseconds, once it was.
    pub barrier_micros: Option<i64>,
    /// How many times a restarted proxy resumed it.
    #[serde(default)]
    pub resumes: u64,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateFileError {
    let path = path.to_owned();
    move |source| StateFileError::Io { op, path, source }
}

/// Reads the record in `dir`; `None` when there is none (capture was off).
pub fn read(dir: &Path) -> Result<Option<CaptureRecord>, StateFileError> {
    let path = dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    toml::from_str(&text).map(Some).map_err(|e| StateFileError::Parse {
        path,
        message: e.to_string(),
    })
}

/// Writes `record` into `dir` atomically (see the module doc).
pub fn write(dir: &Path, record: &CaptureRecord) -> Result<(), StateFileError> {
    let text = toml::to_string(record).map_err(|e| StateFileError::Parse {
        path: dir.join(FILE_NAME),
        message: e.to_string(),
    })?;
    write_atomic(dir, FILE_NAME, &text)
}

/// Writes `text` as `dir/name` atomically: a crash leaves the old file or
/// the new one.
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<(), StateFileError> {
    switchyard_replay::log::replace_file(dir, name, text.as_bytes()).map_err(|e| match e {
        LogError::Io { op, path, source } => StateFileError::Io { op, path, source },
        other => StateFileError::Io {
            op: "write",
            path: dir.join(name),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// Removes the record from `dir` (capture is off).
pub fn clear(dir: &Path) -> Result<(), StateFileError> {
    let path = dir.join(FILE_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", &path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StateFileError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_write_and_read_and_clear_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let rec = CaptureRecord {
            database: "shop".into(),
            epoch: 3,
            start_lsn: 17,
            started_micros: 1_700_000_000_000_000,
            barrier_micros: None,
            resumes: 0,
        };
        write(dir.path(), &rec).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(rec.clone()));
        let rec2 = CaptureRecord {
            barrier_micros: Some(1_700_000_000_000_001),
            ..rec
        };
        write(dir.path(), &rec2).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(rec2));
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "a temp file was left behind");
        clear(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(FILE_NAME), "database = 1").unwrap();
        assert!(matches!(read(dir.path()), Err(StateFileError::Parse { .. })));
    }
}
