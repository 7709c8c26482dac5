//! Writing and reading back: rollover, positions, segment removal.

use super::super::frame::SEGMENT_HEADER_LEN;
use super::super::{list_segments, segments_before, LogError, LogReader, LogWriter, Lsn, Marker, Record};
use super::{random_commit, read_all, small_segments, tagged_commit, Rng};

#[test]
fn many_records_round_trip_across_rollovers() {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogWriter::open(dir.path(), small_segments(16 * 1024)).unwrap();
    let mut rng = Rng::new(42);
    let mut written = Vec::new();
    for i in 0..600u64 {
        // Mostly small, sometimes large (bigger than a segment).
        let size = match rng.below(50) {
            0 => 2000,
            1..=5 => 200,
            _ => 8,
        };
        let record = if i % 97 == 0 {
            Record::Marker(Marker::Barrier { time_micros: i as i64 })
        } else {
            random_commit(&mut rng, i, size)
        };
        let lsn = writer.append_blocking(record.clone()).unwrap();
        assert_eq!(lsn, Lsn(i + 1));
        written.push(record);
    }
    let stats = writer.stats();
    assert_eq!((stats.records, stats.last_lsn), (600, Some(Lsn(600))));
    writer.close().unwrap();

    let segments = list_segments(dir.path()).unwrap();
    assert!(
        segments.len() >= 5,
        "expected several rollovers, got {}",
        segments.len()
    );
    assert_eq!(segments[0].first_lsn, Lsn::FIRST);
    let on_disk: u64 = segments.iter().map(|s| s.size).sum();
    // Stats count everything written since open: all but the first header.
    assert_eq!(on_disk, stats.bytes + SEGMENT_HEADER_LEN as u64);

    let entries = read_all(dir.path(), Lsn::FIRST);
    assert_eq!(entries.len(), written.len());
    for (i, (entry, record)) in entries.iter().zip(&written).enumerate() {
        assert_eq!(entry.lsn, Lsn(i as u64 + 1));
        assert_eq!(&entry.record, record);
    }
    // Each segment is named by its first record's LSN: a reader started at
    // each segment's name sees that LSN first.
    for seg in &segments {
        let first = LogReader::open(dir.path(), seg.first_lsn)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(first.lsn, seg.first_lsn);
    }
}

#[test]
fn reader_starts_at_a_middle_position_and_reopen_continues() {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogWriter::open(dir.path(), small_segments(2048)).unwrap();
    for i in 0..100 {
        writer.append_blocking(tagged_commit(1, i, 3)).unwrap();
    }
    drop(writer);
    for from in [0, 1, 2, 37, 50, 99, 100] {
        let entries = read_all(dir.path(), Lsn(from));
        let first = from.max(1);
        assert_eq!(entries.len() as u64, 101 - first, "from {from}");
        for (k, entry) in entries.iter().enumerate() {
            assert_eq!(entry.lsn, Lsn(first + k as u64));
            assert_eq!(entry.record, tagged_commit(1, first + k as u64 - 1, 3));
        }
    }
    // Past the end: nothing yet, then the records as they come.
    let mut reader = LogReader::open(dir.path(), Lsn(102)).unwrap();
    assert_eq!(reader.next().unwrap(), None);

    let writer = LogWriter::open(dir.path(), small_segments(2048)).unwrap();
    assert_eq!(writer.recovery().next_lsn, Lsn(101));
    assert_eq!(writer.recovery().truncated_bytes, 0);
    assert_eq!(writer.stats().last_lsn, Some(Lsn(100)));
    assert_eq!(writer.append_blocking(tagged_commit(2, 0, 1)).unwrap(), Lsn(101));
    assert_eq!(writer.append_blocking(tagged_commit(2, 1, 1)).unwrap(), Lsn(102));
    let entry = reader.next().unwrap().expect("record 102");
    assert_eq!((entry.lsn, entry.record), (Lsn(102), tagged_commit(2, 1, 1)));
    assert_eq!(reader.position(), Lsn(103));
}

#[test]
fn empty_log_reader_waits_for_the_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut reader = LogReader::open(dir.path(), Lsn::FIRST).unwrap();
    assert_eq!(reader.next().unwrap(), None);
    let writer = LogWriter::open(dir.path(), Default::default()).unwrap();
    assert_eq!(reader.next().unwrap(), None);
    writer.append_blocking(tagged_commit(1, 1, 1)).unwrap();
    assert_eq!(reader.next().unwrap().map(|e| e.lsn), Some(Lsn::FIRST));
}

#[test]
fn old_segments_are_listed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogWriter::open(dir.path(), small_segments(1024)).unwrap();
    for i in 0..200 {
        writer.append_blocking(tagged_commit(1, i, 2)).unwrap();
    }
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() > 4);
    let cut = segments[3].first_lsn;

    // Nothing is wholly below the first segment's start or inside it.
    assert!(segments_before(dir.path(), segments[0].first_lsn).unwrap().is_empty());
    assert!(segments_before(dir.path(), Lsn(segments[1].first_lsn.0 - 1))
        .unwrap()
        .is_empty());
    assert_eq!(segments_before(dir.path(), cut).unwrap(), segments[..3].to_vec());
    assert_eq!(
        segments_before(dir.path(), Lsn(cut.0 + 1)).unwrap(),
        segments[..3].to_vec()
    );
    // The newest segment is never removable, even past the end.
    assert_eq!(
        segments_before(dir.path(), Lsn(u64::MAX)).unwrap().len(),
        segments.len() - 1
    );

    let mut reader = LogReader::open(dir.path(), Lsn::FIRST).unwrap();
    assert_eq!(reader.next().unwrap().map(|e| e.lsn), Some(Lsn(1)));
    let removed = reader.remove_segments_before(cut).unwrap();
    assert_eq!(removed, segments[..3].to_vec());
    assert_eq!(list_segments(dir.path()).unwrap(), segments[3..].to_vec());

    // A reader inside a removed segment reads to its end, then is told the
    // rest is gone rather than waiting for ever.
    let mut n = 1;
    let err = loop {
        match reader.next() {
            Ok(Some(entry)) => {
                n += 1;
                assert_eq!(entry.lsn, Lsn(n));
            }
            Ok(None) => panic!("reader stalled after removal"),
            Err(e) => break e,
        }
    };
    assert_eq!(n + 1, segments[1].first_lsn.0);
    assert!(matches!(err, LogError::LsnUnavailable { requested, oldest } if requested == Lsn(n + 1) && oldest == cut));
    // A reader inside a kept segment is unaffected.
    let mut reader = LogReader::open(dir.path(), Lsn(cut.0 + 1)).unwrap();
    assert_eq!(reader.next().unwrap().map(|e| e.lsn), Some(Lsn(cut.0 + 1)));
    match LogReader::open(dir.path(), Lsn(cut.0 - 1)) {
        Err(LogError::LsnUnavailable { requested, oldest }) => {
            assert_eq!((requested, oldest), (Lsn(cut.0 - 1), cut));
        }
        other => panic!("expected LsnUnavailable, got {:?}", other.map(|_| ())),
    }
    assert_eq!(read_all(dir.path(), cut).len() as u64, 201 - cut.0);

    // The writer still appends and a reopen still finds the end.
    assert_eq!(writer.append_blocking(tagged_commit(1, 200, 2)).unwrap(), Lsn(201));
    writer.close().unwrap();
    let writer = LogWriter::open(dir.path(), small_segments(1024)).unwrap();
    assert_eq!(writer.recovery().next_lsn, Lsn(202));
}
