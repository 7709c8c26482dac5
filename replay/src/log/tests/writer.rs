//! The writer: concurrency, group commit, durability modes, tailing, failure.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use super::super::frame::SEGMENT_HEADER_LEN;
use super::super::{Durability, InvalidRecord, LogError, LogOptions, LogReader, LogWriter, Lsn, Record, TableKeys};
use super::{last_segment, read_all, small_segments, tagged_commit, CommitRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_unique_increasing_lsns() {
    const TASKS: u64 = 64;
    const EACH: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    // A tiny queue, so tasks also wait for room.
    let options = LogOptions {
        queue_capacity: 8,
        segment_size: 8 * 1024,
        ..Default::default()
    };
    let writer = LogWriter::open(dir.path(), options).unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let mut lsns = Vec::new();
                for seq in 0..EACH {
                    lsns.push(
                        writer
                            .append(tagged_commit(task, seq, 1 + (seq % 3) as usize))
                            .await
                            .unwrap(),
                    );
                }
                lsns
            })
        })
        .collect();
    let mut owner = vec![None; (TASKS * EACH) as usize + 1];
    for (task, handle) in tasks.into_iter().enumerate() {
        let lsns = handle.await.unwrap();
        assert!(lsns.windows(2).all(|w| w[0] < w[1]), "a task's LSNs must increase");
        for (seq, lsn) in lsns.into_iter().enumerate() {
            let slot = &mut owner[lsn.0 as usize];
            assert!(slot.is_none(), "LSN {lsn} given twice");
            *slot = Some((task as u64, seq as u64));
        }
    }
    assert!(owner[1..].iter().all(Option::is_some), "LSNs must be dense from 1");
    let stats = writer.stats();
    assert_eq!((stats.records, stats.last_lsn), (TASKS * EACH, Some(Lsn(TASKS * EACH))));
    assert!(stats.batches <= stats.records);
    let dir_path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || writer.close())
        .await
        .unwrap()
        .unwrap();

    let entries = read_all(&dir_path, Lsn::FIRST);
    assert_eq!(entries.len() as u64, TASKS * EACH);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.lsn, Lsn(i as u64 + 1));
        let (task, seq) = owner[i + 1].unwrap();
        assert_eq!(entry.record, tagged_commit(task, seq, 1 + (seq % 3) as usize));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsync_durability_syncs_once_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        durability: Durability::Fsync,
        segment_size: 4096,
        ..Default::default()
    };
    let writer = LogWriter::open(dir.path(), options).unwrap();
    let tasks: Vec<_> = (0..16u64)
        .map(|task| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for seq in 0..25 {
                    writer.append(tagged_commit(task, seq, 2)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = writer.stats();
    assert_eq!(stats.records, 400);
    // One sync per batch, plus one per rollover (the old segment is synced
    // before the next is created).
    let rollovers = super::super::list_segments(dir.path()).unwrap().len() as u64 - 1;
    assert!(stats.fsyncs >= 1 && stats.fsyncs <= stats.batches + rollovers);
    eprintln!(
        "fsync mode: {} records in {} batches, {} fsyncs",
        stats.records, stats.batches, stats.fsyncs
    );
    let path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || writer.close())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_all(&path, Lsn::FIRST).len(), 400);
}

#[test]
fn tailing_reader_follows_a_concurrent_writer() {
    const N: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let writer = LogWriter::open(dir.path(), small_segments(4096)).unwrap();
    let producer = std::thread::spawn(move || {
        for i in 0..N {
            writer
                .append_blocking(tagged_commit(7, i, 1 + (i % 4) as usize))
                .unwrap();
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let mut reader = LogReader::open(dir.path(), Lsn::FIRST).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut seen, mut idle_polls) = (0u64, 0u64);
    while seen < N {
        assert!(Instant::now() < deadline, "reader stalled at {seen} of {N}");
        match reader.next().unwrap() {
            Some(entry) => {
                assert_eq!(entry.lsn, Lsn(seen + 1));
                assert_eq!(entry.record, tagged_commit(7, seen, 1 + (seen % 4) as usize));
                seen += 1;
            }
            None => {
                idle_polls += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
    producer.join().unwrap();
    assert_eq!(reader.next().unwrap(), None);
    assert!(super::super::list_segments(dir.path()).unwrap().len() > 10);
    eprintln!("tailing: {N} records, {idle_polls} idle polls");
}

#[test]
fn reader_never_returns_a_partially_written_record() {
    // Take the frames a real writer produced, then feed them to a fresh
    // segment one byte at a time.
    let source = tempfile::tempdir().unwrap();
    let writer = LogWriter::open(source.path(), Default::default()).unwrap();
    for i in 0..4 {
        writer.append_blocking(tagged_commit(3, i, 40)).unwrap();
    }
    writer.close().unwrap();
    let bytes = fs::read(last_segment(source.path())).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join(last_segment(source.path()).file_name().unwrap());
    let mut file = OpenOptions::new().create(true).append(true).open(&seg).unwrap();
    let mut reader = LogReader::open(dir.path(), Lsn::FIRST).unwrap();
    let mut got = Vec::new();
    for (i, byte) in bytes.iter().enumerate() {
        file.write_all(&[*byte]).unwrap();
        if let Some(entry) = reader.next().unwrap() {
            got.push((i + 1, entry));
        }
    }
    assert_eq!(got.len(), 4);
    let ends: Vec<usize> = got.iter().map(|(end, _)| *end).collect();
    assert_eq!(
        *ends.last().unwrap(),
        bytes.len(),
        "last record appears only with its last byte"
    );
    assert!(ends[0] > SEGMENT_HEADER_LEN);
    for (k, (_, entry)) in got.into_iter().enumerate() {
        assert_eq!(
            (entry.lsn, entry.record),
            (Lsn(k as u64 + 1), tagged_commit(3, k as u64, 40))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failure_fails_every_waiter_and_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    // Every record after a segment's first rolls over to a new segment.
    let writer = LogWriter::open(dir.path(), small_segments(1)).unwrap();
    assert_eq!(writer.append(tagged_commit(1, 0, 1)).await.unwrap(), Lsn(1));
    // Something sits where the next segment must be created (works as root).
    let blocker = dir.path().join(format!("{:020}.seg", 2));
    fs::create_dir(&blocker).unwrap();

    let waiters: Vec<_> = (0..20)
        .map(|i| tokio::spawn(writer.append(tagged_commit(2, i, 1))))
        .collect();
    for w in waiters {
        match w.await.unwrap() {
            Err(LogError::WriterFailed(cause)) => {
                assert!(
                    matches!(
                        *cause,
                        LogError::Io {
                            op: "create segment",
                            ..
                        }
                    ),
                    "cause: {cause}"
                );
            }
            other => panic!("expected WriterFailed, got {other:?}"),
        }
    }
    let failure = writer.failure().expect("writer is failed");
    assert_eq!(LogError::WriterFailed(failure).sqlstate(), "58030");
    assert!(matches!(
        writer.append(tagged_commit(3, 0, 1)).await,
        Err(LogError::WriterFailed(_))
    ));
    assert_eq!(writer.stats().last_lsn, Some(Lsn(1)));
    let closed = tokio::task::spawn_blocking(move || writer.close()).await.unwrap();
    assert!(matches!(closed, Err(LogError::WriterFailed(_))));

    // Once the obstacle is gone, reopening recovers: nothing acked was lost.
    fs::remove_dir(&blocker).unwrap();
    let writer = LogWriter::open(dir.path(), small_segments(1)).unwrap();
    assert_eq!(writer.recovery().next_lsn, Lsn(2));
    assert_eq!(writer.append(tagged_commit(4, 0, 1)).await.unwrap(), Lsn(2));
    tokio::task::spawn_blocking(move || drop(writer)).await.unwrap();
    assert_eq!(read_all(dir.path(), Lsn::FIRST).len(), 2);
}

#[test]
fn oversized_and_invalid_records_are_refused_without_failing_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        max_record_bytes: 1000,
        ..Default::default()
    };
    let writer = LogWriter::open(dir.path(), options).unwrap();
    match writer.append_blocking(tagged_commit(1, 0, 500)) {
        Err(e @ LogError::RecordTooLarge { limit: 1000, .. }) => assert_eq!(e.sqlstate(), "54000"),
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    let bad_arity = Record::Commit(CommitRecord {
        tables: vec![TableKeys {
            table: "public.t".into(),
            key_columns: vec!["a".into(), "b".into()],
            keys: vec![vec![Some("1".into()), None], vec![Some("1".into())]],
        }],
        ..Default::default()
    });
    assert!(matches!(
        writer.append_blocking(bad_arity),
        Err(LogError::InvalidRecord(InvalidRecord::KeyArity {
            columns: 2,
            values: 1,
            ..
        }))
    ));
    // Neither consumed an LSN.
    assert_eq!(writer.append_blocking(tagged_commit(1, 1, 3)).unwrap(), Lsn(1));
    assert!(writer.failure().is_none());
}

#[test]
fn one_writer_per_directory_and_closed_handles_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogWriter::open(dir.path(), Default::default()).unwrap();
    assert!(matches!(
        LogWriter::open(dir.path(), Default::default()),
        Err(LogError::Locked { .. })
    ));
    let other = writer.clone();
    writer.append_blocking(tagged_commit(1, 0, 1)).unwrap();
    writer.close().unwrap();
    assert!(matches!(
        other.append_blocking(tagged_commit(1, 1, 1)),
        Err(LogError::Closed)
    ));
    drop(other);
    let writer = LogWriter::open(dir.path(), Default::default()).unwrap();
    assert_eq!(writer.append_blocking(tagged_commit(1, 1, 1)).unwrap(), Lsn(2));
}

#[test]
fn options_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        LogOptions {
            segment_size: 0,
            ..Default::default()
        },
        LogOptions {
            queue_capacity: 0,
            ..Default::default()
        },
        LogOptions {
            max_record_bytes: u32::MAX,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            LogWriter::open(dir.path(), bad),
            Err(LogError::InvalidOptions(_))
        ));
    }
}

#[test]
fn deferred_appends_go_out_with_the_next_write_or_a_flush() {
    use super::super::Marker;
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        durability: Durability::Write,
        ..Default::default()
    };
    let writer = LogWriter::open(dir.path(), options).unwrap();
    let settled = |n| Record::Marker(Marker::Settled { commit: Lsn(n) });
    let first = writer.append_blocking(tagged_commit(1, 0, 1)).unwrap();
    assert!(
        writer.append_deferred(settled(first.0)),
        "the first deferred append owes a flush"
    );
    assert!(!writer.append_deferred(settled(first.0)), "one flush is owed at a time");
    // Not written yet: the reader sees only the commit.
    assert_eq!(read_all(dir.path(), Lsn::FIRST).len(), 1);
    // The next append writes them first, in order.
    let next = writer.append_blocking(tagged_commit(1, 1, 1)).unwrap();
    assert_eq!(next, Lsn(4));
    assert_eq!(read_all(dir.path(), Lsn::FIRST).len(), 4);
    // A flush writes a lone deferred record; so does closing.
    assert!(!writer.append_deferred(settled(next.0)), "still owed from before");
    writer.flush_deferred();
    assert_eq!(read_all(dir.path(), Lsn::FIRST).len(), 5);
    assert!(writer.append_deferred(settled(next.0)));
    writer.close().unwrap();
    let entries = read_all(dir.path(), Lsn::FIRST);
    assert_eq!(entries.len(), 6);
    assert_eq!(entries[5].record, settled(next.0));
}

#[tokio::test(flavor = "current_thread")]
async fn the_last_handle_dropped_on_a_runtime_thread_loses_nothing_and_frees_the_directory() {
    // Dropped on a runtime's only thread (a session letting go of a
    // stopped capture), the writer finishes on a blocking thread; the
    // deferred records are written all the same, and the directory can be
    // opened again once it has.
    for durability in [Durability::Write, Durability::Fsync] {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            durability,
            ..Default::default()
        };
        let writer = LogWriter::open(dir.path(), options.clone()).unwrap();
        writer.append(tagged_commit(1, 0, 1)).await.unwrap();
        writer.append_deferred(tagged_commit(1, 1, 2));
        writer.append_deferred(tagged_commit(1, 2, 3));
        drop(writer);
        let deadline = Instant::now() + Duration::from_secs(5);
        let reopened = loop {
            match LogWriter::open(dir.path(), options.clone()) {
                Err(LogError::Locked { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => break other.unwrap(),
            }
        };
        assert_eq!(reopened.stats().last_lsn, Some(Lsn(3)), "{durability:?}");
        let seqs: Vec<i64> = read_all(dir.path(), Lsn::FIRST)
            .into_iter()
            .map(|e| match e.record {
                Record::Commit(c) => c.commit_time_micros,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, vec![0, 1, 2], "{durability:?}");
        tokio::task::spawn_blocking(move || reopened.close())
            .await
            .unwrap()
            .unwrap();
    }
}
