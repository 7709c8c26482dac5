//! Opening a log after a crash: torn tails are cut, corruption is refused.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::super::frame::{check_frame, BadFrame, FrameCheck, SEGMENT_HEADER_LEN};
use super::super::{Corruption, LogError, LogReader, LogWriter, Lsn};
use super::{last_segment, read_all, small_segments, tagged_commit, Rng};

const RECORDS: u64 = 40;

/// A closed log of `RECORDS` tagged commits over a few segments.
fn sample_log() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogWriter::open(dir.path(), small_segments(1024)).unwrap();
    for i in 0..RECORDS {
        writer
            .append_blocking(tagged_commit(1, i, 1 + (i % 5) as usize))
            .unwrap();
    }
    writer.close().unwrap();
    dir
}

fn copy_log(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dst.path().join(entry.file_name())).unwrap();
    }
    dst
}

/// (offset, length) of every frame of a segment file.
fn frames(path: &Path) -> Vec<(usize, usize)> {
    let data = fs::read(path).unwrap();
    let mut off = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while let FrameCheck::Complete { len, .. } = check_frame(&data[off..]) {
        out.push((off, len));
        off += len;
    }
    assert_eq!(off, data.len(), "sample segment should be clean");
    out
}

fn patch(path: &Path, offset: usize, f: impl FnOnce(&mut u8)) {
    let mut data = fs::read(path).unwrap();
    f(&mut data[offset]);
    fs::write(path, data).unwrap();
}

/// Reopens, checks the recovery report, appends one record and checks that
/// the log holds `kept` original records then the new one.
fn assert_recovers(dir: &Path, kept: u64, cut_bytes: u64) {
    let writer = LogWriter::open(dir, small_segments(2048)).unwrap();
    let report = writer.recovery().clone();
    assert_eq!(report.next_lsn, Lsn(kept + 1));
    assert_eq!(report.truncated_bytes, cut_bytes);
    assert_eq!(report.truncated_segment.is_some(), cut_bytes > 0);
    assert_eq!(writer.append_blocking(tagged_commit(9, 9, 1)).unwrap(), Lsn(kept + 1));
    writer.close().unwrap();
    let entries = read_all(dir, Lsn::FIRST);
    assert_eq!(entries.len() as u64, kept + 1);
    for (i, e) in entries.iter().take(kept as usize).enumerate() {
        assert_eq!(e.record, tagged_commit(1, i as u64, 1 + i % 5));
    }
    assert_eq!(entries.last().unwrap().record, tagged_commit(9, 9, 1));
}

fn expect_corrupt<T>(result: Result<T, LogError>) -> (PathBuf, u64, Corruption) {
    match result {
        Err(LogError::Corrupt { path, offset, reason }) => (path, offset, reason),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, got success"),
    }
}

#[test]
fn torn_last_record_is_truncated_at_any_offset() {
    let original = sample_log();
    let seg = last_segment(original.path());
    let &(start, len) = frames(&seg).last().unwrap();
    let mut rng = Rng::new(3);
    let mut cuts: Vec<usize> = (0..12)
        .map(|_| start + 1 + rng.below(len as u64 - 1) as usize)
        .collect();
    cuts.extend([start + 1, start + 7, start + 8, start + len - 1]);
    for cut in cuts {
        let dir = copy_log(original.path());
        let seg = last_segment(dir.path());
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        // A reader sees the complete records and treats the rest as "not yet".
        assert_eq!(read_all(dir.path(), Lsn::FIRST).len() as u64, RECORDS - 1);
        assert_recovers(dir.path(), RECORDS - 1, (cut - start) as u64);
    }
    // Cut exactly at a record boundary: nothing to truncate.
    let dir = copy_log(original.path());
    OpenOptions::new()
        .write(true)
        .open(last_segment(dir.path()))
        .unwrap()
        .set_len(start as u64)
        .unwrap();
    assert_recovers(dir.path(), RECORDS - 1, 0);
}

#[test]
fn garbage_or_zeros_after_the_last_record_are_truncated() {
    let original = sample_log();
    let mut rng = Rng::new(5);
    for tail in [
        vec![0u8; 4096],
        vec![0u8; 3],
        rng.bytes(1),
        rng.bytes(700),
        rng.bytes(5000),
    ] {
        let dir = copy_log(original.path());
        let mut f = OpenOptions::new().append(true).open(last_segment(dir.path())).unwrap();
        f.write_all(&tail).unwrap();
        assert_recovers(dir.path(), RECORDS, tail.len() as u64);
    }
}

#[test]
fn bad_crc_in_the_last_record_is_a_torn_tail() {
    let dir = copy_log(sample_log().path());
    let seg = last_segment(dir.path());
    let &(start, len) = frames(&seg).last().unwrap();
    patch(&seg, start + len - 2, |b| *b ^= 0x40);
    // A tailing reader waits at it (recovery will cut it) rather than fail.
    assert_eq!(read_all(dir.path(), Lsn::FIRST).len() as u64, RECORDS - 1);
    assert_recovers(dir.path(), RECORDS - 1, len as u64);
}

#[test]
fn bad_crc_in_the_middle_is_corruption() {
    let dir = copy_log(sample_log().path());
    let seg = last_segment(dir.path());
    let all = frames(&seg);
    assert!(all.len() >= 3, "need records after the damaged one");
    let (start, len) = all[all.len() / 2];
    patch(&seg, start + 12, |b| *b ^= 0x01);

    let (path, offset, reason) = expect_corrupt(LogWriter::open(dir.path(), Default::default()));
    assert_eq!((path.as_path(), offset), (seg.as_path(), start as u64));
    assert!(matches!(
        reason,
        Corruption::BadFrameBeforeValidData { frame: BadFrame::Crc { .. }, next_valid_offset }
            if next_valid_offset == (start + len) as u64
    ));
    let message = LogError::Corrupt { path, offset, reason }.to_string();
    assert!(message.contains(&seg.display().to_string()) && message.contains(&format!("offset {start}")));

    // The reader returns everything before the damage, then the same error.
    let mut reader = LogReader::open(dir.path(), Lsn::FIRST).unwrap();
    let mut good = 0;
    let err = loop {
        match reader.next() {
            Ok(Some(_)) => good += 1,
            Ok(None) => panic!("reader stopped quietly at corruption"),
            Err(e) => break e,
        }
    };
    assert_eq!(good as usize + all.len() - all.len() / 2, RECORDS as usize);
    assert_eq!(expect_corrupt::<()>(Err(err)).1, start as u64);
}

#[test]
fn damaged_length_in_the_middle_is_corruption_not_a_torn_tail() {
    let original = sample_log();
    let seg = last_segment(original.path());
    let (start, _) = frames(&seg)[1];
    // Zero, too small, pointing past the end of the file, over the limit.
    for len in [0u32, 4, 0x00ff_ffff, u32::MAX] {
        let dir = copy_log(original.path());
        let seg = last_segment(dir.path());
        let mut data = fs::read(&seg).unwrap();
        data[start..start + 4].copy_from_slice(&len.to_le_bytes());
        fs::write(&seg, data).unwrap();
        let (path, offset, reason) = expect_corrupt(LogWriter::open(dir.path(), Default::default()));
        assert_eq!((path, offset), (seg, start as u64), "length {len}");
        assert!(matches!(reason, Corruption::BadFrameBeforeValidData { .. }));
    }
}

#[test]
fn damage_in_an_older_segment_is_reported_by_readers() {
    let original = sample_log();
    let first = super::super::list_segments(original.path()).unwrap()[0].path.clone();
    let (start, len) = frames(&first)[1];

    let dir = copy_log(original.path());
    patch(&dir.path().join(first.file_name().unwrap()), start + len - 1, |b| {
        *b ^= 0xff
    });
    let mut reader = LogReader::open(dir.path(), Lsn::FIRST).unwrap();
    assert!(reader.next().unwrap().is_some());
    let (_, offset, reason) = expect_corrupt(reader.next());
    assert_eq!(offset, start as u64);
    assert!(
        matches!(reason, Corruption::BadFrameInSealedSegment(BadFrame::Crc { .. })),
        "{reason}"
    );

    let dir = copy_log(original.path());
    let path = dir.path().join(first.file_name().unwrap());
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len((start + 5) as u64)
        .unwrap();
    let mut reader = LogReader::open(dir.path(), Lsn::FIRST).unwrap();
    assert!(reader.next().unwrap().is_some());
    assert_eq!(expect_corrupt(reader.next()).2, Corruption::TruncatedSealedSegment);

    // A missing segment in the middle is a gap, not a quiet end.
    let dir = copy_log(original.path());
    let segments = super::super::list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 3);
    fs::remove_file(&segments[1].path).unwrap();
    let err = read_all_result(dir.path());
    let (path, _, reason) = expect_corrupt(err);
    assert_eq!(path, segments[2].path);
    assert_eq!(
        reason,
        Corruption::LsnMismatch {
            expected: segments[1].first_lsn,
            found: segments[2].first_lsn
        }
    );
}

#[test]
fn torn_or_bad_segment_header() {
    let original = sample_log();
    // A segment created at rollover whose header write was cut short.
    let dir = copy_log(original.path());
    let next = dir.path().join(format!("{:020}.seg", RECORDS + 1));
    fs::write(&next, b"SYLOG1\x01").unwrap();
    assert_recovers(dir.path(), RECORDS, 7);

    let dir = copy_log(original.path());
    let seg = last_segment(dir.path());
    patch(&seg, 0, |b| *b = b'X');
    assert_eq!(
        expect_corrupt(LogWriter::open(dir.path(), Default::default())).2,
        Corruption::BadMagic
    );
    assert_eq!(expect_corrupt(read_all_result(dir.path())).2, Corruption::BadMagic);
}

fn read_all_result(dir: &Path) -> Result<usize, LogError> {
    let mut reader = LogReader::open(dir, Lsn::FIRST)?;
    let mut n = 0;
    while reader.next()?.is_some() {
        n += 1;
    }
    Ok(n)
}
