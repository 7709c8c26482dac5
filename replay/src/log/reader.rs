//! Reading the capture log from any position, and tailing it while the
//! writer appends.
//!
//! The reader follows LSNs: the segment after one that ends at LSN `n` is
//! the file named `n + 1`. Bytes the writer has not finished writing are
//! "not yet" (`Ok(None)`), never an error: a segment counts as finished only
//! once a later segment exists, because the writer completes each segment's
//! writes before creating the next. The directory is listed only when the
//! reader has caught up, to notice that next segment (or a gap, or segments
//! removed under it, which are errors rather than a silent stall).

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{Corruption, LogError};
use super::frame::{
    check_frame, classify_tail, parse_segment_header, BadFrame, FrameCheck, HeaderError, Tail, FRAME_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use super::record::{payload_lsn, LogEntry};
use super::segment::{list_segments, remove_segments_before, segment_path, segments_before, SegmentInfo};
use super::Lsn;

/// How much to read from a segment at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Reads records in LSN order from a starting position, across segments,
/// and picks up records appended later.
pub struct LogReader {
    dir: PathBuf,
    /// Records below this are skipped.
    from_lsn: Lsn,
    /// The LSN of the next frame in file order.
    next_lsn: Lsn,
    /// The segment being read; `None` until the one holding `next_lsn` exists.
    cursor: Option<Cursor>,
}

impl LogReader {
    /// A reader of the records with LSN >= `from_lsn` in the log at `dir`.
    /// Fails with [`LogError::LsnUnavailable`] if those records' segments
    /// were removed. Positions past the end are fine: the reader waits.
    pub fn open(dir: impl AsRef<Path>, from_lsn: Lsn) -> Result<LogReader, LogError> {
        let dir = dir.as_ref().to_path_buf();
        let from_lsn = from_lsn.max(Lsn::FIRST);
        let segments = list_segments(&dir)?;
        let start = match segments.iter().rev().find(|s| s.first_lsn <= from_lsn) {
            Some(seg) => seg.first_lsn,
            None => match segments.first() {
                Some(oldest) => {
                    return Err(LogError::LsnUnavailable {
                        requested: from_lsn,
                        oldest: oldest.first_lsn,
                    })
                }
                None => Lsn::FIRST,
            },
        };
        Ok(LogReader {
            dir,
            from_lsn,
            next_lsn: start,
            cursor: None,
        })
    }

    /// The next record, or `Ok(None)` if there is none yet; call again later
    /// to pick up what the writer appends.
    #[allow(clippy::should_implement_trait)] // Ok(None) means "not yet", not "end".
    pub fn next(&mut self) -> Result<Option<LogEntry>, LogError> {
        loop {
            let cursor = match &mut self.cursor {
                Some(c) => c,
                None => match Cursor::open(&self.dir, self.next_lsn)? {
                    Some(c) => self.cursor.insert(c),
                    None => return self.missing_segment(),
                },
            };
            let offset = cursor.offset();
            match cursor.step()? {
                Step::Frame { len } => {
                    let payload = &cursor.buf[cursor.pos + FRAME_HEADER_LEN..cursor.pos + len];
                    let found = payload_lsn(payload).unwrap_or_default();
                    if found != self.next_lsn {
                        let reason = Corruption::LsnMismatch {
                            expected: self.next_lsn,
                            found,
                        };
                        return Err(cursor.corrupt(offset, reason));
                    }
                    let entry = if found >= self.from_lsn {
                        let path = &cursor.path;
                        Some(LogEntry::decode(payload).map_err(|source| LogError::Decode {
                            path: path.clone(),
                            offset,
                            source,
                        })?)
                    } else {
                        None
                    };
                    cursor.pos += len;
                    self.next_lsn = found.next();
                    if entry.is_some() {
                        return Ok(entry);
                    }
                }
                Step::End { clean } => {
                    let successor = cursor.successor(&self.dir, self.next_lsn)?;
                    if !cursor.sealed {
                        if let Successor::None = successor {
                            cursor.forget_unread();
                            return Ok(None);
                        }
                        // A later segment exists, so all of this one was
                        // written before it: read once more, then trust it.
                        cursor.sealed = true;
                        continue;
                    }
                    if !clean {
                        return Err(cursor.corrupt(offset, Corruption::TruncatedSealedSegment));
                    }
                    match successor {
                        Successor::Next => self.cursor = None,
                        Successor::Gap { path, found } => {
                            let reason = Corruption::LsnMismatch {
                                expected: self.next_lsn,
                                found,
                            };
                            return Err(LogError::Corrupt {
                                path,
                                offset: 0,
                                reason,
                            });
                        }
                        Successor::Removed { oldest } => {
                            return Err(LogError::LsnUnavailable {
                                requested: self.next_lsn,
                                oldest,
                            })
                        }
                        // The later segment vanished (deleted by hand?): wait.
                        Successor::None => {
                            cursor.sealed = false;
                            cursor.forget_unread();
                            return Ok(None);
                        }
                    }
                }
                Step::Bad(bad) => return self.bad_frame(bad, offset),
            }
        }
    }

    /// The segment holding the next position is not there: "not yet" while
    /// the log has not reached it, an error once segments after it exist
    /// and it was deleted (never a silent wait for records that are gone).
    fn missing_segment(&self) -> Result<Option<LogEntry>, LogError> {
        let segments = list_segments(&self.dir)?;
        match segments.iter().find(|s| s.first_lsn > self.next_lsn) {
            Some(_) if segments[0].first_lsn > self.next_lsn => Err(LogError::LsnUnavailable {
                requested: self.position(),
                oldest: segments[0].first_lsn,
            }),
            Some(later) => Err(LogError::Corrupt {
                path: later.path.clone(),
                offset: 0,
                reason: Corruption::LsnMismatch {
                    expected: self.next_lsn,
                    found: later.first_lsn,
                },
            }),
            None => Ok(None),
        }
    }

    /// An invalid frame at `offset`: "not yet" if it can be the torn tail of
    /// the newest segment (which the writer's recovery will cut), else an error.
    fn bad_frame(&mut self, bad: BadFrame, offset: u64) -> Result<Option<LogEntry>, LogError> {
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(None);
        };
        let sealed = !matches!(cursor.successor(&self.dir, self.next_lsn)?, Successor::None);
        if sealed || cursor.sealed {
            return Err(cursor.corrupt(offset, Corruption::BadFrameInSealedSegment(bad)));
        }
        let rest = cursor.read_rest(offset)?;
        match classify_tail(&rest, self.next_lsn) {
            Tail::Torn => {
                cursor.forget_unread();
                Ok(None)
            }
            Tail::Corrupt { valid_frame_at } => {
                let next_valid_offset = offset + valid_frame_at as u64;
                let reason = Corruption::BadFrameBeforeValidData {
                    frame: bad,
                    next_valid_offset,
                };
                Err(cursor.corrupt(offset, reason))
            }
        }
    }

    /// The LSN of the next record this reader will return.
    pub fn position(&self) -> Lsn {
        self.next_lsn.max(self.from_lsn)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// See [`segments_before`](super::segments_before).
    pub fn segments_before(&self, lsn: Lsn) -> Result<Vec<SegmentInfo>, LogError> {
        segments_before(&self.dir, lsn)
    }

    /// See [`remove_segments_before`](super::remove_segments_before).
    pub fn remove_segments_before(&self, lsn: Lsn) -> Result<Vec<SegmentInfo>, LogError> {
        remove_segments_before(&self.dir, lsn)
    }
}

/// What the directory holds after the segment being read.
enum Successor {
    /// Nothing yet: this is the newest segment.
    None,
    /// The segment starting right after the last record read.
    Next,
    /// A later segment, but not the next one: records are missing.
    Gap { path: PathBuf, found: Lsn },
    /// The segment being read was deleted, and its successor too.
    Removed { oldest: Lsn },
}

/// What the bytes at the cursor hold.
enum Step {
    /// A valid frame of `len` bytes at `cursor.buf[cursor.pos..]`.
    Frame { len: usize },
    /// No whole frame before the end of the file; `clean` if no bytes at all.
    End { clean: bool },
    /// An invalid frame.
    Bad(BadFrame),
}

/// A read position in one segment file, with a read-ahead buffer.
struct Cursor {
    file: File,
    path: PathBuf,
    /// LSN of the segment's first record.
    first: Lsn,
    /// Bytes read ahead; `buf[0]` is at file offset `buf_offset`.
    buf: Vec<u8>,
    buf_offset: u64,
    /// Start of the next frame in `buf`.
    pos: usize,
    /// The successor segment exists, so this one is complete.
    sealed: bool,
}

impl Cursor {
    /// Opens the segment starting at `first`; `None` if it does not exist
    /// yet or its header is not written yet.
    fn open(dir: &Path, first: Lsn) -> Result<Option<Cursor>, LogError> {
        let path = segment_path(dir, first);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(LogError::Io {
                    op: "open",
                    path,
                    source: e,
                })
            }
        };
        let mut c = Cursor {
            file,
            path,
            first,
            buf: Vec::new(),
            buf_offset: 0,
            pos: 0,
            sealed: false,
        };
        while c.buf.len() < SEGMENT_HEADER_LEN {
            if c.fill()? == 0 {
                break;
            }
        }
        let header = match parse_segment_header(&c.buf) {
            Ok(header) => header,
            Err(HeaderError::Short) => return Ok(None),
            Err(HeaderError::Magic) => return Err(c.corrupt(0, Corruption::BadMagic)),
            Err(HeaderError::Version(v)) => return Err(c.corrupt(0, Corruption::UnsupportedVersion(v))),
        };
        if header != first {
            return Err(c.corrupt(0, Corruption::HeaderLsnMismatch { named: first, header }));
        }
        c.pos = SEGMENT_HEADER_LEN;
        Ok(Some(c))
    }

    /// What follows this segment, given `next`, the LSN after its last
    /// record read so far. Lists the directory: called only when the reader
    /// has caught up (or hit damage), not per record.
    fn successor(&self, dir: &Path, next: Lsn) -> Result<Successor, LogError> {
        let segments = list_segments(dir)?;
        let Some(later) = segments.iter().find(|s| s.first_lsn > self.first) else {
            return Ok(Successor::None);
        };
        if later.first_lsn == next {
            return Ok(Successor::Next);
        }
        if !segments.iter().any(|s| s.first_lsn == self.first) {
            // This segment and the one after it were removed under us.
            return Ok(Successor::Removed {
                oldest: segments[0].first_lsn,
            });
        }
        Ok(Successor::Gap {
            path: later.path.clone(),
            found: later.first_lsn,
        })
    }

    /// File offset of the next frame.
    fn offset(&self) -> u64 {
        self.buf_offset + self.pos as u64
    }

    fn step(&mut self) -> Result<Step, LogError> {
        loop {
            match check_frame(&self.buf[self.pos..]) {
                FrameCheck::Complete { len, .. } => return Ok(Step::Frame { len }),
                FrameCheck::Invalid(bad) => return Ok(Step::Bad(bad)),
                FrameCheck::Incomplete => {
                    if self.fill()? == 0 {
                        return Ok(Step::End {
                            clean: self.pos == self.buf.len(),
                        });
                    }
                }
            }
        }
    }

    /// Reads more of the file into the buffer; returns how many bytes (0 at
    /// the current end of the file).
    fn fill(&mut self) -> Result<usize, LogError> {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.buf_offset += self.pos as u64;
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let at = self.buf_offset + old as u64;
        let read = loop {
            match self.file.read_at(&mut self.buf[old..], at) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(old);
                return Err(LogError::Io {
                    op: "read",
                    path: self.path.clone(),
                    source: e,
                });
            }
        };
        self.buf.truncate(old + n);
        Ok(n)
    }

    /// Drops read-ahead bytes past the next frame, so they are read afresh:
    /// the writer may yet complete them, or recovery cut and rewrite them.
    fn forget_unread(&mut self) {
        self.buf_offset += self.pos as u64;
        self.buf.clear();
        self.pos = 0;
    }

    /// All bytes from `offset` to the end of the file.
    fn read_rest(&self, offset: u64) -> Result<Vec<u8>, LogError> {
        let io_err = LogError::io("read", &self.path);
        let rest = (|| -> io::Result<Vec<u8>> {
            let len = self.file.metadata()?.len();
            let mut rest = vec![0; len.saturating_sub(offset) as usize];
            self.file.read_exact_at(&mut rest, offset)?;
            Ok(rest)
        })();
        rest.map_err(io_err)
    }

    fn corrupt(&self, offset: u64, reason: Corruption) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            offset,
            reason,
        }
    }
}
