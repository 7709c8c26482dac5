//! Segment files: naming, listing, directory locking and removal of
//! segments the replayer no longer needs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::error::LogError;
use super::Lsn;

const SEGMENT_SUFFIX: &str = ".seg";
const NAME_DIGITS: usize = 20;
const LOCK_FILE: &str = "LOCK";

/// One segment file of a log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// LSN of the segment's first record (from its file name).
    pub first_lsn: Lsn,
    /// Path of the file.
    pub path: PathBuf,
    /// Size in bytes when listed.
    pub size: u64,
}

/// The path of the segment whose first record is `first`.
pub(crate) fn segment_path(dir: &Path, first: Lsn) -> PathBuf {
    dir.join(format!("{:0width$}{SEGMENT_SUFFIX}", first.0, width = NAME_DIGITS))
}

/// The first LSN a segment file name stands for, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// Lists the segments of a log directory, oldest first. Other files are
/// ignored, and so is a segment deleted while the directory is read.
pub fn list_segments(dir: impl AsRef<Path>) -> Result<Vec<SegmentInfo>, LogError> {
    let dir = dir.as_ref();
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(LogError::io("list", dir))? {
        let entry = entry.map_err(LogError::io("list", dir))?;
        let Some(first_lsn) = entry.file_name().to_str().and_then(parse_segment_name) else {
            continue;
        };
        let path = entry.path();
        let size = match entry.metadata() {
            Ok(meta) => meta.len(),
            // Deleted since the directory was read (retention runs
            // concurrently with readers): listed as it is now, without it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LogError::io("stat", &path)(e)),
        };
        out.push(SegmentInfo { first_lsn, path, size });
    }
    out.sort_by_key(|s| s.first_lsn);
    Ok(out)
}

/// The segments all of whose records have an LSN below `lsn`: those a
/// replayer whose next needed position is `lsn` may delete. A segment's last
/// LSN is known only from its successor's name, so the newest segment is
/// never among them.
pub fn segments_before(dir: impl AsRef<Path>, lsn: Lsn) -> Result<Vec<SegmentInfo>, LogError> {
    let mut segments = list_segments(dir)?;
    let keep_from = segments.windows(2).take_while(|w| w[1].first_lsn <= lsn).count();
    segments.truncate(keep_from);
    Ok(segments)
}

/// Deletes the segments [`segments_before`] lists and returns them. A reader
/// inside a deleted segment reads it to its end (the file stays open), then
/// gets [`LogError::LsnUnavailable`] if the next segment was deleted too, as
/// does a reader opened later below the oldest kept position.
pub fn remove_segments_before(dir: impl AsRef<Path>, lsn: Lsn) -> Result<Vec<SegmentInfo>, LogError> {
    let dir = dir.as_ref();
    let old = segments_before(dir, lsn)?;
    for seg in &old {
        fs::remove_file(&seg.path).map_err(LogError::io("remove", &seg.path))?;
        tracing::debug!(segment = %seg.path.display(), first_lsn = seg.first_lsn.0, "removed capture log segment");
    }
    if !old.is_empty() {
        sync_dir(dir)?;
    }
    Ok(old)
}

/// Makes the directory's entries (new or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(LogError::io("fsync directory", dir))
}

/// Writes `bytes` as `dir/name` so that a crash leaves the old file or the
/// new one, never a torn one: a temp file written and fsynced, renamed over
/// the old file, the directory fsynced. Each call has a temp file of its
/// own, so two writers of one file at once (a periodic write still in
/// flight as the last one starts, two processes on one directory) never
/// rename each other's; the last rename wins.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), LogError> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Relaxed);
    let tmp = dir.join(format!("{name}.{}.{n}.tmp", std::process::id()));
    let path = dir.join(name);
    let written = File::create(&tmp)
        .map_err(LogError::io("create", &tmp))
        .and_then(|mut f| {
            f.write_all(bytes).map_err(LogError::io("write", &tmp))?;
            f.sync_all().map_err(LogError::io("fsync", &tmp))
        })
        .and_then(|()| fs::rename(&tmp, &path).map_err(LogError::io("rename", &path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(dir)
}

/// Takes an exclusive `flock` on the directory's lock file; held while the
/// returned file is open. Two writers on one log would interleave LSNs.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(LogError::io("open lock file", &path))?;
    // SAFETY: flock takes a plain integer fd, valid while `file` lives, and
    // touches no memory of ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(LogError::Locked { dir: dir.to_path_buf() });
        }
        return Err(LogError::Io {
            op: "lock",
            path,
            source: err,
        });
    }
    Ok(file)
}
