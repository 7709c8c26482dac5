//! Retention: holds, the deletion boundary, and readers below the cut.

use super::{read_all, small_segments, tagged_commit};
use crate::log::{
    apply_retention, first_kept, hold_name, list_segments, read_holds, remove_hold, write_hold, LogError, LogReader,
    LogWriter, Lsn, HOLDS_DIR,
};

/// A log of `n` records in 1 KiB segments.
fn log_of(n: u64) -> (tempfile::TempDir, crate::log::LogWriterHandle) {
    let dir = tempfile::tempdir().unwrap();
    let writer = LogWriter::open(dir.path(), small_segments(1024)).unwrap();
    for i in 0..n {
        writer.append_blocking(tagged_commit(1, i, 2)).unwrap();
    }
    (dir, writer)
}

#[test]
fn holds_are_written_atomically_read_back_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    assert!(read_holds(dir.path()).unwrap().is_empty());
    let name = hold_name("replayer shop@127.0.0.1:5433/../x");
    assert_eq!(name, "replayer_shop@127.0.0.1:5433_.._x");
    write_hold(dir.path(), &name, Lsn(7), "catch-up onto shop").unwrap();
    write_hold(dir.path(), &name, Lsn(42), "catch-up onto shop").unwrap();
    write_hold(dir.path(), "cutover", Lsn(40), "freeze marker").unwrap();
    let holds = read_holds(dir.path()).unwrap();
    let got: Vec<(&str, Lsn)> = holds.iter().map(|h| (h.name.as_str(), h.confirmed)).collect();
    assert_eq!(got, vec![("cutover", Lsn(40)), (name.as_str(), Lsn(42))]);
    assert!(holds.iter().all(|h| h.unreadable.is_none() && h.updated_micros > 0));
    assert_eq!(holds[1].description, "catch-up onto shop");
    // No temp file is left behind.
    let files: Vec<_> = std::fs::read_dir(dir.path().join(HOLDS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(remove_hold(dir.path(), "cutover").unwrap());
    assert!(!remove_hold(dir.path(), "cutover").unwrap());
    assert_eq!(read_holds(dir.path()).unwrap().len(), 1);
}

#[test]
fn writers_of_one_hold_at_once_never_fail_each_other() {
    // A replayer's periodic write can still be in flight when its last one
    // starts (and a cutover's hold is written beside them): each write must
    // land whole, and none may take another's temp file.
    let dir = tempfile::tempdir().unwrap();
    let name = hold_name("replayer-shop@127.0.0.1:5433");
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (dir, name) = (dir.path(), name.as_str());
            s.spawn(move || {
                for i in 0..100u64 {
                    write_hold(dir, name, Lsn(t * 1000 + i), "catch-up onto shop").unwrap();
                }
            });
        }
    });
    let holds = read_holds(dir.path()).unwrap();
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert!(
        holds[0].unreadable.is_none() && holds[0].confirmed.0 % 1000 == 99,
        "{holds:?}"
    );
    let files = std::fs::read_dir(dir.path().join(HOLDS_DIR)).unwrap().count();
    assert_eq!(files, 1, "temp files left behind");
}

#[test]
fn an_unreadable_hold_holds_everything() {
    let (dir, writer) = log_of(300);
    write_hold(dir.path(), "a", Lsn(250), "").unwrap();
    std::fs::write(dir.path().join(HOLDS_DIR).join("b.hold"), "confirmed_lsn = \"x\"").unwrap();
    let holds = read_holds(dir.path()).unwrap();
    assert_eq!(holds[1].confirmed, Lsn(0));
    assert!(holds[1].unreadable.is_some());
    let before = list_segments(dir.path()).unwrap();
    let pass = apply_retention(dir.path(), writer.stats().last_lsn, 0).unwrap();
    assert_eq!(pass.first_kept, Some(Lsn::FIRST));
    assert!(pass.removed.is_empty());
    assert_eq!(list_segments(dir.path()).unwrap(), before);
}

#[test]
fn the_first_kept_position_is_the_lowest_hold_or_the_window() {
    let hold = |n: u64| crate::log::Hold {
        name: format!("h{n}"),
        confirmed: Lsn(n),
        updated_micros: 1,
        description: String::new(),
        unreadable: None,
    };
    // No hold: keep everything.
    assert_eq!(first_kept(&[], Some(Lsn(1000)), 0), None);
    // The lowest hold wins; the position after it is still needed.
    assert_eq!(first_kept(&[hold(500), hold(300)], Some(Lsn(1000)), 0), Some(Lsn(301)));
    // A hold of 0 (nothing confirmed) keeps everything.
    assert_eq!(first_kept(&[hold(900), hold(0)], Some(Lsn(1000)), 0), Some(Lsn(1)));
    // The window of the newest records is kept even when every hold is past it.
    assert_eq!(first_kept(&[hold(1000)], Some(Lsn(1000)), 200), Some(Lsn(801)));
    assert_eq!(first_kept(&[hold(1000)], Some(Lsn(1000)), 5000), Some(Lsn(1)));
    // A hold ahead of the log (another log's position) is bounded by its end.
    assert_eq!(first_kept(&[hold(9999)], Some(Lsn(1000)), 0), Some(Lsn(1001)));
    assert_eq!(first_kept(&[hold(5)], None, 0), Some(Lsn(1)));
}

#[test]
fn without_a_hold_nothing_is_deleted() {
    let (dir, writer) = log_of(300);
    let before = list_segments(dir.path()).unwrap();
    assert!(before.len() > 4);
    let pass = apply_retention(dir.path(), writer.stats().last_lsn, 0).unwrap();
    assert_eq!(pass.first_kept, None);
    assert!(pass.removed.is_empty());
    assert_eq!(list_segments(dir.path()).unwrap(), before);
    assert_eq!(pass.space.segments, before.len());
    assert_eq!(pass.space.bytes, before.iter().map(|s| s.size).sum::<u64>());
    assert_eq!(pass.space.oldest, Some(Lsn::FIRST));
}

#[test]
fn a_replayer_that_confirmed_nothing_holds_everything() {
    let (dir, writer) = log_of(300);
    let before = list_segments(dir.path()).unwrap();
    write_hold(dir.path(), "fast", Lsn(300), "").unwrap();
    write_hold(dir.path(), "new", Lsn(0), "").unwrap();
    let pass = apply_retention(dir.path(), writer.stats().last_lsn, 0).unwrap();
    assert!(pass.removed.is_empty());
    assert_eq!(list_segments(dir.path()).unwrap(), before);
    assert_eq!(read_all(dir.path(), Lsn::FIRST).len(), 300);
}

#[test]
fn segments_wholly_below_every_hold_are_deleted_and_no_more() {
    let (dir, writer) = log_of(300);
    let segments = list_segments(dir.path()).unwrap();
    // The slow replayer confirmed up to the last record of segment 3 plus one
    // record of segment 4: it needs segment 4 from its second record on.
    let boundary = segments[3].first_lsn;
    write_hold(dir.path(), "fast", Lsn(299), "").unwrap();
    write_hold(dir.path(), "slow", boundary, "").unwrap();
    let pass = apply_retention(dir.path(), writer.stats().last_lsn, 0).unwrap();
    assert_eq!(pass.first_kept, Some(boundary.next()));
    assert_eq!(pass.removed, segments[..3].to_vec());
    assert_eq!(list_segments(dir.path()).unwrap(), segments[3..].to_vec());
    assert_eq!(pass.space.oldest, Some(boundary));
    // Every record the slow replayer still needs is there, in order.
    let rest = read_all(dir.path(), boundary.next());
    assert_eq!(rest.first().map(|e| e.lsn), Some(boundary.next()));
    assert_eq!(rest.len() as u64, 300 - boundary.0);

    // Confirming exactly up to the record before a segment frees that one
    // segment's predecessors, not the segment itself.
    let s5 = segments[5].first_lsn;
    write_hold(dir.path(), "slow", Lsn(s5.0 - 1), "").unwrap();
    let pass = apply_retention(dir.path(), writer.stats().last_lsn, 0).unwrap();
    assert_eq!(pass.removed, segments[3..5].to_vec());
    assert_eq!(pass.space.oldest, Some(s5));

    // The window keeps the newest records whatever the holds say.
    write_hold(dir.path(), "slow", Lsn(300), "").unwrap();
    let pass = apply_retention(dir.path(), writer.stats().last_lsn, 100).unwrap();
    assert_eq!(pass.first_kept, Some(Lsn(201)));
    let oldest = pass.space.oldest.unwrap();
    assert!(oldest <= Lsn(201), "{oldest} > 201");
    assert_eq!(read_all(dir.path(), Lsn(201)).len(), 100);

    // Everything confirmed, no window: only the newest segment stays, and
    // the writer goes on.
    let pass = apply_retention(dir.path(), writer.stats().last_lsn, 0).unwrap();
    assert_eq!(pass.space.segments, 1);
    assert_eq!(writer.append_blocking(tagged_commit(1, 300, 2)).unwrap(), Lsn(301));
}

#[test]
fn a_reader_below_the_cut_gets_an_error_naming_the_oldest_position_kept() {
    let (dir, writer) = log_of(300);
    let segments = list_segments(dir.path()).unwrap();
    // A reader opened before the deletion, not started yet.
    let mut early = LogReader::open(dir.path(), Lsn(2)).unwrap();
    let cut = segments[4].first_lsn;
    write_hold(dir.path(), "r", Lsn(cut.0 - 1), "").unwrap();
    apply_retention(dir.path(), writer.stats().last_lsn, 0).unwrap();

    let err = match LogReader::open(dir.path(), Lsn::FIRST) {
        Err(e) => e,
        Ok(_) => panic!("a reader below the cut opened"),
    };
    assert!(matches!(err, LogError::LsnUnavailable { requested: Lsn(1), oldest } if oldest == cut));
    let text = err.to_string();
    assert!(text.contains(&format!("oldest position kept is {cut}")), "{text}");
    assert!(text.contains("re-clone"), "{text}");

    // The reader opened before the deletion is told too, instead of waiting
    // for ever for a segment that is gone.
    match early.next() {
        Err(LogError::LsnUnavailable { requested, oldest }) => assert_eq!((requested, oldest), (Lsn(2), cut)),
        other => panic!("expected LsnUnavailable, got {other:?}"),
    }
    // At the cut, reading works.
    assert_eq!(read_all(dir.path(), cut).len() as u64, 301 - cut.0);
}

#[test]
fn listing_while_segments_are_deleted_never_fails() {
    // Retention deletes segments while readers list the directory; a file
    // gone between the listing and its stat is not an error.
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<std::path::PathBuf> = (1..=64u64)
        .map(|i| dir.path().join(format!("{:020}.seg", i * 100)))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let names = names.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 20_000 {
                for n in &names {
                    std::fs::write(n, b"x").unwrap();
                }
                for n in &names {
                    std::fs::remove_file(n).unwrap();
                }
                rounds += 1;
            }
        })
    };
    let mut seen = 0usize;
    for _ in 0..2_000 {
        let listed = list_segments(dir.path()).expect("listing while segments are deleted");
        assert!(listed.windows(2).all(|w| w[0].first_lsn < w[1].first_lsn));
        seen += listed.len();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    assert!(seen > 0, "the listings saw none of the churned segments");
}
