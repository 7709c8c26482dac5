//! Payload encoding: round trips, edge values, and decoding garbage.

use super::super::codec::{put_i64, put_varint, DecodeError, Decoder};
use super::super::{CommitRecord, LogEntry, Lsn, Marker, Record, TableKeys};
use super::{random_commit, Rng};

fn encode(lsn: u64, record: &Record) -> Vec<u8> {
    let mut buf = Vec::new();
    record.encode_payload(Lsn(lsn), &mut buf);
    buf
}

#[test]
fn varints_round_trip_at_the_edges() {
    let unsigned = [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX - 1, u64::MAX];
    let signed = [0, 1, -1, 63, -64, 64, -65, i64::MAX, i64::MIN];
    let mut buf = Vec::new();
    for v in unsigned {
        put_varint(&mut buf, v);
    }
    for v in signed {
        put_i64(&mut buf, v);
    }
    let mut d = Decoder::new(&buf);
    for v in unsigned {
        assert_eq!(d.varint().unwrap(), v);
    }
    for v in signed {
        assert_eq!(d.i64().unwrap(), v);
    }
    d.finish().unwrap();
}

#[test]
fn overlong_varint_is_an_error() {
    let eleven = [0xff; 11];
    assert_eq!(
        Decoder::new(&eleven).varint(),
        Err(DecodeError::VarintOverflow { at: 0 })
    );
    let tenth_too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
    assert_eq!(
        Decoder::new(&tenth_too_big).varint(),
        Err(DecodeError::VarintOverflow { at: 0 })
    );
}

#[test]
fn records_round_trip() {
    let mut records = vec![
        Record::Commit(CommitRecord::default()),
        Record::Commit(CommitRecord {
            session_id: u64::MAX,
            commit_time_micros: -1,
            tables: vec![
                TableKeys {
                    table: "public.t".into(),
                    key_columns: vec!["a".into(), "b".into()],
                    keys: vec![
                        vec![None, Some(String::new())],
                        vec![Some("1".into()), Some("é中🚂\0".into())],
                    ],
                },
                TableKeys {
                    table: "s.empty".into(),
                    key_columns: vec![],
                    keys: vec![],
                },
            ],
            statements: vec!["".into(), "INSERT INTO t VALUES (1)".into()],
            backend_pid: i32::MAX,
        }),
        Record::Marker(Marker::CaptureStart {
            time_micros: 1_700_000_000_000_000,
        }),
        Record::Marker(Marker::CaptureStop { time_micros: i64::MIN }),
        Record::Marker(Marker::Barrier { time_micros: i64::MAX }),
    ];
    let mut rng = Rng::new(7);
    records.extend((0..200).map(|i| random_commit(&mut rng, i, 50)));
    for (i, record) in records.into_iter().enumerate() {
        let lsn = i as u64 * 7919 + 1;
        let entry = LogEntry::decode(&encode(lsn, &record)).expect("decode");
        assert_eq!(entry, LogEntry { lsn: Lsn(lsn), record });
    }
}

#[test]
fn every_truncation_of_a_valid_payload_is_an_error() {
    let mut rng = Rng::new(11);
    for i in 0..20 {
        let payload = encode(i + 1, &random_commit(&mut rng, i, 10));
        for cut in 0..payload.len() {
            assert!(
                LogEntry::decode(&payload[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert_eq!(LogEntry::decode(&longer), Err(DecodeError::TrailingBytes { count: 1 }));
    }
}

#[test]
fn unknown_kinds_and_bad_shapes_are_errors() {
    let mut p = 5u64.to_le_bytes().to_vec();
    p.push(0x7f);
    assert_eq!(LogEntry::decode(&p), Err(DecodeError::UnknownKind { kind: 0x7f }));

    let mut p = 5u64.to_le_bytes().to_vec();
    p.extend_from_slice(&[2, 9, 0]);
    assert_eq!(LogEntry::decode(&p), Err(DecodeError::UnknownMarker { kind: 9 }));

    // session 0, time 0, one table "t" with no key columns but 5 keys.
    let mut p = 5u64.to_le_bytes().to_vec();
    p.extend_from_slice(&[1, 0, 0, 1, 1, b't', 0, 5, 0]);
    assert!(matches!(
        LogEntry::decode(&p),
        Err(DecodeError::KeysWithoutColumns { .. })
    ));

    // A huge table count must be refused before anything is allocated.
    let mut p = 5u64.to_le_bytes().to_vec();
    p.extend_from_slice(&[1, 0, 0]);
    put_varint(&mut p, u64::MAX / 2);
    assert!(matches!(LogEntry::decode(&p), Err(DecodeError::CountTooLarge { .. })));

    // Invalid UTF-8 in a table name.
    let mut p = 5u64.to_le_bytes().to_vec();
    p.extend_from_slice(&[1, 0, 0, 1, 2, 0xc3, 0x28, 0, 0, 0]);
    assert!(matches!(LogEntry::decode(&p), Err(DecodeError::InvalidUtf8 { .. })));
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng::new(0x5eed);
    let mut decoded = 0;
    for _ in 0..20_000 {
        let len = rng.below(96) as usize;
        let mut bytes = rng.bytes(len);
        // Steer many inputs past the kind byte so the body decoders get fuzzed.
        if len > 8 && rng.below(2) == 0 {
            bytes[8] = 1 + rng.below(2) as u8;
        }
        decoded += LogEntry::decode(&bytes).is_ok() as usize;
    }
    // Mutations of valid payloads: flipped bits and overwritten bytes.
    for i in 0..3_000u64 {
        let mut payload = encode(i + 1, &random_commit(&mut rng, i, 6));
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(payload.len() as u64) as usize;
            if rng.below(2) == 0 {
                payload[at] ^= 1 << rng.below(8);
            } else {
                payload[at] = rng.next_u64() as u8;
            }
        }
        if let Ok(entry) = LogEntry::decode(&payload) {
            // Whatever decodes must re-encode to the same bytes or be a
            // non-canonical varint variant; at least it must re-decode.
            let again = encode(entry.lsn.0, &entry.record);
            assert_eq!(LogEntry::decode(&again).as_ref(), Ok(&entry));
            decoded += 1;
        }
    }
    assert!(decoded < 23_000, "garbage should mostly fail to decode");
}

#[test]
fn commit_records_without_a_backend_pid_still_decode() {
    let record = Record::Commit(CommitRecord {
        session_id: 7,
        commit_time_micros: 1,
        backend_pid: 0,
        ..Default::default()
    });
    let mut payload = Vec::new();
    record.encode_payload(Lsn(9), &mut payload);
    // The older kind: the same bytes without the trailing pid (0 is one byte).
    assert_eq!(payload[8], 3);
    payload[8] = 1;
    payload.pop();
    let entry = LogEntry::decode(&payload).unwrap();
    assert_eq!((entry.lsn, entry.record), (Lsn(9), record));
}
