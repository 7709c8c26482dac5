//! Retention: which segments of a log may go. Every reader that must not
//! lose records (a replayer, a cutover that may be rolled back) keeps a
//! *hold* in the log directory: a small file naming the last position it no
//! longer needs. Segments wholly below every hold, and outside the window of
//! the newest records always kept, may be deleted; with no hold at all,
//! nothing is (a replayer not started yet needs the whole log).
//!
//! Holds live in `holds/` under the log directory, one `<name>.hold` file
//! each, written atomically (a temp file written and fsynced, renamed over
//! the old one, the directory fsynced), so a crash leaves the old position
//! or the new one. A hold file that cannot be read holds everything.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::LogError;
use super::segment::{list_segments, remove_segments_before, replace_file, sync_dir, SegmentInfo};
use super::Lsn;

/// The holds' directory inside a log directory.
pub const HOLDS_DIR: &str = "holds";
const HOLD_SUFFIX: &str = ".hold";

/// One reader's claim on the log: it may still need every record after
/// `confirmed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The file's name without `.hold`: who holds.
    pub name: String,
    /// The last position the holder no longer needs; `Lsn(0)` holds the
    /// whole log.
    pub confirmed: Lsn,
    /// When it was last written, Unix microseconds (0 when unreadable).
    pub updated_micros: i64,
    /// What the holder is, in words (e.g. the target a replayer applies to).
    pub description: String,
    /// Why the file could not be read, when it could not: it then holds
    /// everything until it is fixed or removed.
    pub unreadable: Option<String>,
}

/// The file as written.
#[derive(Debug, Serialize, Deserialize)]
struct HoldFile {
    confirmed_lsn: u64,
    updated_micros: i64,
    #[serde(default)]
    description: String,
}

/// A hold name as it may appear in a file name: letters, digits, `.`, `_`,
/// `-`, `@` and `:` are kept, anything else becomes `_`.
pub fn hold_name(raw: &str) -> String {
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match name.trim_start_matches('.') {
        "" => "_".to_owned(),
        n => n.to_owned(),
    }
}

fn hold_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(HOLDS_DIR).join(format!("{name}{HOLD_SUFFIX}"))
}

/// Records (atomically) that the holder `name` no longer needs the records
/// up to `confirmed`. `name` must come from [`hold_name`].
pub fn write_hold(dir: impl AsRef<Path>, name: &str, confirmed: Lsn, description: &str) -> Result<(), LogError> {
    let holds = dir.as_ref().join(HOLDS_DIR);
    fs::create_dir_all(&holds).map_err(LogError::io("create directory", &holds))?;
    let file = HoldFile {
        confirmed_lsn: confirmed.0,
        updated_micros: unix_micros_now(),
        description: description.to_owned(),
    };
    let path = hold_path(dir.as_ref(), name);
    let text = toml::to_string(&file).map_err(|e| LogError::Io {
        op: "encode",
        path: path.clone(),
        source: std::io::Error::new(ErrorKind::InvalidData, e),
    })?;
    replace_file(&holds, &format!("{name}{HOLD_SUFFIX}"), text.as_bytes())
}

/// Removes the hold `name`; true if there was one.
pub fn remove_hold(dir: impl AsRef<Path>, name: &str) -> Result<bool, LogError> {
    let path = hold_path(dir.as_ref(), name);
    match fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(&dir.as_ref().join(HOLDS_DIR))?;
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LogError::Io {
            op: "remove",
            path,
            source: e,
        }),
    }
}

/// Every hold of the log at `dir`, by name.
pub fn read_holds(dir: impl AsRef<Path>) -> Result<Vec<Hold>, LogError> {
    let holds = dir.as_ref().join(HOLDS_DIR);
    let entries = match fs::read_dir(&holds) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(LogError::Io {
                op: "list",
                path: holds,
                source: e,
            })
        }
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(LogError::io("list", &holds))?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(HOLD_SUFFIX)) else {
            continue;
        };
        let parsed = fs::read_to_string(entry.path())
            .map_err(|e| e.to_string())
            .and_then(|text| toml::from_str::<HoldFile>(&text).map_err(|e| e.to_string()));
        out.push(match parsed {
            Ok(f) => Hold {
                name: name.to_owned(),
                confirmed: Lsn(f.confirmed_lsn),
                updated_micros: f.updated_micros,
                description: f.description,
                unreadable: None,
            },
            // A hold that cannot be read may be anyone's: keep everything.
            Err(e) => Hold {
                name: name.to_owned(),
                confirmed: Lsn(0),
                updated_micros: 0,
                description: String::new(),
                unreadable: Some(e),
            },
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The first position to keep, given the holds and the log's last position:
/// the position after the lowest hold, or the start of the window of the
/// newest `keep_records` records if that is lower. `None` (keep everything)
/// without any hold.
pub fn first_kept(holds: &[Hold], last: Option<Lsn>, keep_records: u64) -> Option<Lsn> {
    let lowest = holds.iter().map(|h| h.confirmed).min()?;
    let end = last.map_or(Lsn::FIRST, Lsn::next);
    let window = Lsn(end.0.saturating_sub(keep_records).max(Lsn::FIRST.0));
    Some(lowest.next().min(window))
}

/// The log's footprint on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSpace {
    /// Segment files.
    pub segments: usize,
    /// Their total size, bytes.
    pub bytes: u64,
    /// The first position still in the log (that of its oldest segment).
    pub oldest: Option<Lsn>,
}

/// Measures the segments of the log at `dir`.
pub fn log_space(dir: impl AsRef<Path>) -> Result<LogSpace, LogError> {
    let segments = list_segments(dir)?;
    Ok(space_of(&segments))
}

fn space_of(segments: &[SegmentInfo]) -> LogSpace {
    LogSpace {
        segments: segments.len(),
        bytes: segments.iter().map(|s| s.size).sum(),
        oldest: segments.first().map(|s| s.first_lsn),
    }
}

/// What one retention pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPass {
    /// The holds read.
    pub holds: Vec<Hold>,
    /// The first position kept (`None`: no hold, everything kept).
    pub first_kept: Option<Lsn>,
    /// The segments deleted by this pass.
    pub removed: Vec<SegmentInfo>,
    /// The log afterwards.
    pub space: LogSpace,
}

/// Deletes the segments of the log at `dir` that every hold is past and
/// that lie outside the newest `keep_records` records (`last` is the log's
/// last position). Deletes nothing without a hold; never deletes the newest
/// segment.
pub fn apply_retention(dir: impl AsRef<Path>, last: Option<Lsn>, keep_records: u64) -> Result<RetentionPass, LogError> {
    let dir = dir.as_ref();
    let holds = read_holds(dir)?;
    let first_kept = first_kept(&holds, last, keep_records);
    let removed = match first_kept {
        Some(cut) if cut > Lsn::FIRST => remove_segments_before(dir, cut)?,
        _ => Vec::new(),
    };
    if !removed.is_empty() {
        tracing::info!(
            dir = %dir.display(),
            segments = removed.len(),
            bytes = removed.iter().map(|s| s.size).sum::<u64>(),
            first_kept = first_kept.map_or(0, |l| l.0),
            "capture log segments every replayer has confirmed were deleted"
        );
    }
    let space = log_space(dir)?;
    Ok(RetentionPass {
        holds,
        first_kept,
        removed,
        space,
    })
}

fn unix_micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
