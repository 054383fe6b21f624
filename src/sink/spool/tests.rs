use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn config(dir: &Path, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        segment_bytes,
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("record {i};")
        .repeat(1 + (i % 5) as usize)
        .into_bytes()
}

fn frame_len(payload: &[u8]) -> u64 {
    HEADER + payload.len() as u64
}

fn drain(spool: &mut Spool) -> Vec<SpooledRecord> {
    let mut out = Vec::new();
    while let Some(r) = spool.read_next().unwrap() {
        out.push(r);
    }
    out
}

fn keys(records: &[SpooledRecord]) -> Vec<u64> {
    records.iter().map(|r| r.key).collect()
}

/// Appends records `range` (key i, payload(i)) and flushes; returns their positions.
fn fill(spool: &mut Spool, range: std::ops::Range<u64>) -> Vec<SpoolPos> {
    let pos = range
        .map(|i| spool.append(i, &payload(i)).unwrap())
        .collect();
    spool.flush(false).unwrap();
    pos
}

fn segment_numbers(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| parse_segment_name(&e.unwrap().file_name()))
        .collect();
    v.sort_unstable();
    v
}

fn segment_file_bytes(dir: &Path) -> u64 {
    segment_numbers(dir)
        .iter()
        .map(|&n| fs::metadata(segment_path(dir, n)).unwrap().len())
        .sum()
}

fn write_at(dir: &Path, pos: SpoolPos, bytes: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir, pos.segment))
        .unwrap();
    f.write_all_at(bytes, pos.offset).unwrap();
}

fn flip_byte(dir: &Path, pos: SpoolPos, at: u64) {
    let path = segment_path(dir, pos.segment);
    let mut bytes = fs::read(&path).unwrap();
    bytes[(pos.offset + at) as usize] ^= 0x5a;
    fs::write(&path, bytes).unwrap();
}

#[test]
fn frame_layout_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    let pos = spool.append(0x0102_0304_0506_0708, b"abc").unwrap();
    assert_eq!(
        pos,
        SpoolPos {
            segment: 0,
            offset: 0
        }
    );
    spool.flush(false).unwrap();
    let bytes = fs::read(dir.path().join("spool-00000000000000000000.log")).unwrap();
    let mut expected = vec![15, 0, 0, 0];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[8, 7, 6, 5, 4, 3, 2, 1]);
    crc.update(b"abc");
    expected.extend_from_slice(&crc.finalize().to_le_bytes());
    expected.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
    expected.extend_from_slice(b"abc");
    assert_eq!(bytes, expected);
    assert_eq!(spool.bytes(), 19);
    assert_eq!(
        spool.append(1, b"").unwrap(),
        SpoolPos {
            segment: 0,
            offset: 19
        }
    );
}

#[test]
fn round_trip_in_order_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
    let positions = fill(&mut spool, 0..60);
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let segments = segment_numbers(dir.path());
    assert!(segments.len() >= 6, "{segments:?}");
    assert_eq!(segments, (0..segments.len() as u64).collect::<Vec<_>>());
    for &n in &segments {
        assert!(fs::metadata(segment_path(dir.path(), n)).unwrap().len() <= 256);
    }
    assert_eq!(spool.bytes(), segment_file_bytes(dir.path()));
    assert_eq!(spool.pending(), 60);

    let records = drain(&mut spool);
    assert_eq!(keys(&records), (0..60).collect::<Vec<_>>());
    for (r, &p) in records.iter().zip(&positions) {
        assert_eq!(r.payload, payload(r.key));
        assert_eq!(r.pos, p);
    }
    assert_eq!(spool.read_next().unwrap(), None);
    assert_eq!(spool.pending(), 60);
    assert_eq!(spool.stats().appended, 60);

    // Nothing acknowledged: everything comes back after a restart.
    drop(spool);
    let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
    assert_eq!(spool.stats().recovered_on_open, 60);
    assert_eq!(spool.pending(), 60);
    let again = drain(&mut spool);
    assert_eq!(again, records);
    assert_eq!(spool.stats().corrupt_frames, 0);
    assert_eq!(spool.stats().torn_bytes, 0);
}

#[test]
fn reads_only_what_was_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    spool.append(1, b"one").unwrap();
    assert_eq!(spool.read_next().unwrap(), None);
    assert_eq!(spool.pending(), 1);
    spool.flush(false).unwrap();
    assert_eq!(spool.read_next().unwrap().unwrap().key, 1);
    assert_eq!(spool.read_next().unwrap(), None);
    spool.append(2, b"two").unwrap();
    spool.flush(true).unwrap();
    assert_eq!(spool.read_next().unwrap().unwrap().key, 2);
}

#[test]
fn dropping_flushes_buffered_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    spool.append(1, b"one").unwrap();
    drop(spool);
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(keys(&drain(&mut spool)), vec![1]);
}

#[test]
fn killed_spool_keeps_flushed_records_and_loses_only_unflushed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    fill(&mut spool, 0..5);
    spool.append(5, &payload(5)).unwrap();
    spool.kill();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(keys(&drain(&mut spool)), vec![0, 1, 2, 3, 4]);
    assert_eq!(spool.stats().torn_bytes, 0);
}

#[test]
fn torn_last_frame_is_truncated_and_earlier_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    let positions = fill(&mut spool, 0..10);
    spool.kill();
    // A crash in the middle of writing record 9: 7 of its bytes made it.
    let last = positions[9];
    let file = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), last.segment))
        .unwrap();
    file.set_len(last.offset + 7).unwrap();

    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.stats().torn_bytes, 7);
    assert_eq!(spool.stats().corrupt_frames, 0);
    assert_eq!(spool.stats().recovered_on_open, 9);
    assert_eq!(
        fs::metadata(segment_path(dir.path(), 0)).unwrap().len(),
        last.offset
    );
    assert_eq!(spool.bytes(), last.offset);
    let records = drain(&mut spool);
    assert_eq!(keys(&records), (0..9).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r.payload == payload(r.key)));

    // Appending after the recovery works and lands where the torn frame was.
    assert_eq!(spool.append(100, b"after").unwrap(), last);
    spool.flush(false).unwrap();
    let r = spool.read_next().unwrap().unwrap();
    assert_eq!(
        (r.key, r.payload.as_slice(), r.pos),
        (100, &b"after"[..], last)
    );
    drop(spool);
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.stats().torn_bytes, 0);
    assert_eq!(
        keys(&drain(&mut spool)),
        (0..9).chain([100]).collect::<Vec<_>>()
    );
}

#[test]
fn torn_write_of_several_frames_keeps_the_whole_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    fill(&mut spool, 0..3);
    for i in 3..6 {
        spool.append(i, &payload(i)).unwrap();
    }
    // Records 3 and 4 whole, 3 bytes of record 5.
    let n = (frame_len(&payload(3)) + frame_len(&payload(4)) + 3) as usize;
    spool.kill_torn(n);
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.stats().torn_bytes, 3);
    assert_eq!(keys(&drain(&mut spool)), vec![0, 1, 2, 3, 4]);
}

#[test]
fn bad_checksum_in_the_last_frame_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    let positions = fill(&mut spool, 0..10);
    drop(spool);
    flip_byte(dir.path(), positions[9], frame_len(&payload(9)) - 1);

    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.stats().torn_bytes, frame_len(&payload(9)));
    assert_eq!(spool.stats().corrupt_frames, 0);
    assert_eq!(keys(&drain(&mut spool)), (0..9).collect::<Vec<_>>());
}

#[test]
fn corrupt_checksum_in_the_middle_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    let positions = fill(&mut spool, 0..5);
    drop(spool);
    flip_byte(dir.path(), positions[2], HEADER + 1);

    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.stats().torn_bytes, 0);
    assert_eq!(spool.pending(), 5);
    let records = drain(&mut spool);
    assert_eq!(keys(&records), vec![0, 1, 3, 4]);
    assert!(records.iter().all(|r| r.payload == payload(r.key)));
    assert_eq!(spool.stats().corrupt_frames, 1);
    assert_eq!(spool.pending(), 4);
    // A rewind does not count it again.
    spool.rewind();
    assert_eq!(keys(&drain(&mut spool)), vec![0, 1, 3, 4]);
    assert_eq!(spool.stats().corrupt_frames, 1);

    for r in &records {
        spool.ack(r.pos).unwrap();
    }
    assert_eq!(spool.pending(), 0);
    drop(spool);
    // The cursor went past the damaged frame: nothing comes back.
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.stats().recovered_on_open, 0);
    assert_eq!(spool.read_next().unwrap(), None);
    assert_eq!(spool.stats().corrupt_frames, 0);
}

#[test]
fn corrupt_checksum_in_an_older_segment_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
    let positions = fill(&mut spool, 0..30);
    drop(spool);
    // The last frame of segment 0: not a torn tail, segment 0 is not the newest.
    let victim = positions
        .iter()
        .rposition(|p| p.segment == 0)
        .expect("frames in segment 0");
    flip_byte(dir.path(), positions[victim], HEADER);

    let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
    assert_eq!(spool.stats().torn_bytes, 0);
    let got = keys(&drain(&mut spool));
    let want: Vec<u64> = (0..30).filter(|&i| i != victim as u64).collect();
    assert_eq!(got, want);
    assert_eq!(spool.stats().corrupt_frames, 1);
    assert_eq!(spool.pending(), 29);
}

#[test]
fn garbage_length_makes_the_rest_of_the_segment_unreadable() {
    for garbage in [u32::MAX, 5, 0] {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
        let positions = fill(&mut spool, 0..30);
        drop(spool);
        let seg0: Vec<usize> = (0..30).filter(|&i| positions[i].segment == 0).collect();
        assert!(seg0.len() >= 3);
        let seg0_len = fs::metadata(segment_path(dir.path(), 0)).unwrap().len();
        write_at(dir.path(), positions[1], &garbage.to_le_bytes());

        let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
        assert_eq!(
            spool.stats().corrupt_frames,
            0,
            "older segments are not scanned"
        );
        assert_eq!(
            spool.stats().recovered_on_open,
            30 - (seg0.len() as u64 - 1)
        );
        let got = keys(&drain(&mut spool));
        let want: Vec<u64> = (0..30)
            .filter(|&i| i == 0 || i >= seg0.len() as u64)
            .collect();
        assert_eq!(got, want, "garbage {garbage}");
        assert_eq!(spool.stats().corrupt_frames, 1);
        assert_eq!(spool.stats().torn_bytes, seg0_len - positions[1].offset);
        assert_eq!(spool.pending(), want.len() as u64);
    }
}

#[test]
fn garbage_length_in_the_newest_segment_is_truncated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    let positions = fill(&mut spool, 0..8);
    drop(spool);
    let len = fs::metadata(segment_path(dir.path(), 0)).unwrap().len();
    write_at(dir.path(), positions[3], &0xdead_beef_u32.to_le_bytes());

    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.stats().corrupt_frames, 1);
    assert_eq!(spool.stats().torn_bytes, len - positions[3].offset);
    assert_eq!(spool.pending(), 3);
    assert_eq!(spool.append(50, b"fresh").unwrap(), positions[3]);
    spool.flush(false).unwrap();
    assert_eq!(keys(&drain(&mut spool)), vec![0, 1, 2, 50]);
}

#[test]
fn any_segment_content_never_panics() {
    // Random bytes as segments, a cursor and an acknowledgement log: open and read must cope.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        for n in 0..3 {
            let len = (next() % 600) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 && len >= 4 {
                // Plausible lengths, so that some frames parse.
                let l = (next() % 40 + 12) as u32;
                bytes[..4].copy_from_slice(&l.to_le_bytes());
            }
            fs::write(segment_path(dir.path(), n), bytes).unwrap();
        }
        let junk: Vec<u8> = (0..(next() % 50)).map(|_| next() as u8).collect();
        fs::write(dir.path().join(CURSOR_FILE), &junk).unwrap();
        fs::write(dir.path().join(ACK_LOG_FILE), &junk).unwrap();
        let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
        let got = drain(&mut spool);
        for r in &got {
            spool.ack(r.pos).unwrap();
        }
        spool.append(7, b"still works").unwrap();
        spool.flush(false).unwrap();
        assert_eq!(keys(&drain(&mut spool)), vec![7], "round {round}");
    }
}

#[test]
fn empty_spool() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.read_next().unwrap(), None);
    assert_eq!(spool.pending(), 0);
    assert_eq!(spool.bytes(), 0);
    assert_eq!(spool.stats(), &SpoolStats::default());
    // Acknowledging what was never handed out does nothing.
    spool
        .ack(SpoolPos {
            segment: 0,
            offset: 0,
        })
        .unwrap();
    spool.rewind();
    spool.flush(true).unwrap();
    assert_eq!(spool.read_next().unwrap(), None);
    assert_eq!(spool.stats(), &SpoolStats::default());
    drop(spool);
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(spool.read_next().unwrap(), None);
    assert_eq!(spool.stats(), &SpoolStats::default());
    assert_eq!(segment_numbers(dir.path()), vec![0]);
}

#[test]
fn full_spool_refuses_and_loses_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let frame = frame_len(&[0; 40]);
    let cfg = SpoolConfig {
        dir: dir.path().to_path_buf(),
        max_bytes: 10 * frame,
        segment_bytes: 3 * frame,
    };
    let mut spool = Spool::open(cfg.clone()).unwrap();
    let mut positions = Vec::new();
    for i in 0..10u64 {
        positions.push(spool.append(i, &[i as u8; 40]).unwrap());
    }
    assert_eq!(spool.bytes(), 10 * frame);
    for i in 10..13u64 {
        assert!(matches!(
            spool.append(i, &[i as u8; 40]),
            Err(SpoolError::Full)
        ));
    }
    // A smaller record still fits nowhere: the bound is exact.
    assert!(matches!(spool.append(99, b""), Err(SpoolError::Full)));
    let stats = spool.stats().clone();
    assert_eq!(stats.dropped_full, 4);
    assert_eq!(stats.appended, 10);
    assert_eq!((stats.corrupt_frames, stats.torn_bytes), (0, 0));
    spool.flush(false).unwrap();
    assert_eq!(spool.bytes(), segment_file_bytes(dir.path()));
    let records = drain(&mut spool);
    assert_eq!(keys(&records), (0..10).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r.payload == vec![r.key as u8; 40]));

    // Acknowledging the first two segments (6 records) deletes them and makes room.
    for r in &records[..6] {
        spool.ack(r.pos).unwrap();
    }
    assert_eq!(spool.bytes(), 4 * frame);
    assert_eq!(segment_file_bytes(dir.path()), 4 * frame);
    for i in 20..26u64 {
        spool.append(i, &[i as u8; 40]).unwrap();
    }
    assert!(matches!(spool.append(26, &[0; 40]), Err(SpoolError::Full)));
    spool.flush(false).unwrap();
    assert_eq!(keys(&drain(&mut spool)), (20..26).collect::<Vec<_>>());
    drop(spool);
    let mut spool = Spool::open(cfg).unwrap();
    assert_eq!(
        keys(&drain(&mut spool)),
        (6..10).chain(20..26).collect::<Vec<_>>()
    );
}

#[test]
fn too_large_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 100)).unwrap();
    assert!(matches!(
        spool.append(1, &[0; 101]),
        Err(SpoolError::TooLarge { len: 101, max: 100 })
    ));
    // A payload of segment_bytes gets a segment of its own.
    spool.append(2, &[1; 10]).unwrap();
    let pos = spool.append(3, &[2; 100]).unwrap();
    assert_eq!(
        pos,
        SpoolPos {
            segment: 1,
            offset: 0
        }
    );
    spool.flush(false).unwrap();
    drop(spool);
    let mut spool = Spool::open(config(dir.path(), 100)).unwrap();
    assert_eq!(keys(&drain(&mut spool)), vec![2, 3]);
}

#[test]
fn out_of_order_acks_survive_a_restart() {
    for kill in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
        fill(&mut spool, 0..30);
        let records = drain(&mut spool);
        let acked = [5u64, 0, 1, 13, 2, 29, 7, 3, 14, 15];
        for &i in &acked {
            spool.ack(records[i as usize].pos).unwrap();
        }
        assert_eq!(spool.pending(), 20);
        assert_eq!(spool.stats().acked, 10);
        // Acknowledging again changes nothing.
        spool.ack(records[5].pos).unwrap();
        assert_eq!(spool.stats().acked, 10);
        if kill {
            spool.kill();
        } else {
            drop(spool);
        }

        let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
        assert_eq!(spool.stats().recovered_on_open, 20);
        assert_eq!(spool.pending(), 20);
        let again = drain(&mut spool);
        let want: Vec<u64> = (0..30).filter(|i| !acked.contains(i)).collect();
        assert_eq!(keys(&again), want, "kill {kill}");
        // Same positions as before the restart.
        for r in &again {
            assert_eq!(r, &records[r.key as usize]);
        }
        for r in &again {
            spool.ack(r.pos).unwrap();
        }
        assert_eq!(spool.pending(), 0);
        spool.kill();
        let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
        assert_eq!(spool.read_next().unwrap(), None);
        assert_eq!(spool.pending(), 0);
    }
}

#[test]
fn fully_acked_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
    let positions = fill(&mut spool, 0..40);
    let last_segment = positions[39].segment;
    assert!(last_segment >= 4);
    let records = drain(&mut spool);
    // Everything in segments 0 and 1, and one record of segment 2: 0 and 1 go.
    let upto = positions.iter().position(|p| p.segment == 2).unwrap() + 1;
    for r in &records[..upto] {
        spool.ack(r.pos).unwrap();
    }
    assert_eq!(
        segment_numbers(dir.path()),
        (2..=last_segment).collect::<Vec<_>>()
    );
    assert_eq!(spool.bytes(), segment_file_bytes(dir.path()));
    // Acknowledging a later segment wholly deletes nothing while segment 2 is not done.
    for r in records.iter().filter(|r| r.pos.segment == 3) {
        spool.ack(r.pos).unwrap();
    }
    assert_eq!(
        segment_numbers(dir.path()),
        (2..=last_segment).collect::<Vec<_>>()
    );
    // Everything: only the active segment stays.
    spool.ack_all(records.iter().map(|r| r.pos)).unwrap();
    assert_eq!(spool.pending(), 0);
    assert_eq!(segment_numbers(dir.path()), vec![last_segment]);
    assert_eq!(spool.bytes(), segment_file_bytes(dir.path()));
    drop(spool);
    let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
    assert_eq!(spool.read_next().unwrap(), None);
    assert_eq!(
        fs::metadata(dir.path().join(ACK_LOG_FILE)).unwrap().len(),
        0,
        "the acknowledgement log is compacted away"
    );
}

#[test]
fn drained_active_segment_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 256)).unwrap();
    // Four 64-byte frames fill segment 0 exactly, without a roll.
    for i in 0..4 {
        spool.append(i, &[i as u8; 48]).unwrap();
    }
    spool.flush(false).unwrap();
    assert_eq!(spool.bytes(), 256);
    let records = drain(&mut spool);
    spool.ack_all(records[..3].iter().map(|r| r.pos)).unwrap();
    assert_eq!(segment_numbers(dir.path()), vec![0]);
    spool.ack(records[3].pos).unwrap();
    assert_eq!(segment_numbers(dir.path()), vec![1]);
    assert_eq!(spool.bytes(), 0);
    assert_eq!(spool.pending(), 0);
    spool.append(9, b"next").unwrap();
    spool.flush(false).unwrap();
    assert_eq!(keys(&drain(&mut spool)), vec![9]);
}

#[test]
fn rewind_rereads_unacked_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 128)).unwrap();
    fill(&mut spool, 0..10);
    let records = drain(&mut spool);
    for i in [0, 2, 5] {
        spool.ack(records[i].pos).unwrap();
    }
    spool.rewind();
    let again = drain(&mut spool);
    assert_eq!(keys(&again), vec![1, 3, 4, 6, 7, 8, 9]);
    for r in &again {
        assert_eq!(r, &records[r.key as usize]);
    }
    spool.ack(records[1].pos).unwrap();
    spool.ack(records[8].pos).unwrap();
    // Records appended meanwhile come after the re-read ones.
    fill(&mut spool, 10..12);
    spool.rewind();
    assert_eq!(keys(&drain(&mut spool)), vec![3, 4, 6, 7, 9, 10, 11]);
    // Rewinding in the middle of re-reading starts over.
    spool.rewind();
    assert_eq!(spool.read_next().unwrap().unwrap().key, 3);
    spool.rewind();
    assert_eq!(keys(&drain(&mut spool)), vec![3, 4, 6, 7, 9, 10, 11]);
    assert_eq!(spool.pending(), 7);
    assert_eq!(spool.in_flight(), 7);
}

#[test]
fn damaged_cursor_file_delivers_again_never_loses() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    fill(&mut spool, 0..6);
    let records = drain(&mut spool);
    for r in &records[..3] {
        spool.ack(r.pos).unwrap();
    }
    spool.flush(false).unwrap();
    drop(spool);
    fs::write(dir.path().join(CURSOR_FILE), b"garbage").unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    // The acknowledged prefix comes back (at least once), nothing is lost.
    assert_eq!(keys(&drain(&mut spool)), (0..6).collect::<Vec<_>>());
}

#[test]
fn one_process_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    match Spool::open(config(dir.path(), 1 << 20)) {
        Err(SpoolError::Io(e)) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
        other => panic!("second open: {:?}", other.map(|_| ())),
    }
    drop(spool);
    Spool::open(config(dir.path(), 1 << 20)).unwrap();
}

#[test]
fn spool_is_send() {
    fn send<T: Send>() {}
    send::<Spool>();
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Flush(bool),
    Read,
    Ack(usize),
    AckAgain(usize),
    Rewind,
    Reopen,
    Kill,
    KillTorn(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..60).prop_map(Op::Append),
        2 => proptest::bool::weighted(0.1).prop_map(Op::Flush),
        6 => Just(Op::Read),
        4 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::AckAgain),
        1 => Just(Op::Rewind),
        1 => Just(Op::Reopen),
        1 => Just(Op::Kill),
        1 => any::<usize>().prop_map(Op::KillTorn),
    ]
}

/// What the spool must hold. Records are identified by their key.
#[derive(Default)]
struct Model {
    next_key: u64,
    /// Appended, not acknowledged, not known lost.
    unacked: BTreeMap<u64, Vec<u8>>,
    /// Appended since the last flush (may be unreadable yet; lost by a kill).
    unflushed: BTreeSet<u64>,
    /// Unflushed when the process was killed: each may or may not have survived (a prefix did).
    maybe: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    /// Last key read since open / rewind.
    read_cursor: Option<u64>,
    /// Read since open and not acknowledged.
    outstanding: Vec<(u64, SpoolPos)>,
    acked_positions: Vec<SpoolPos>,
}

impl Model {
    fn restarted(&mut self) {
        self.read_cursor = None;
        self.outstanding.clear();
        self.acked_positions.clear();
    }

    fn check_read(&mut self, got: Option<SpooledRecord>) {
        let after = self.read_cursor.map_or(0, |c| c + 1);
        match got {
            Some(r) => {
                let key = r.key;
                assert!(
                    !self.acked.contains(&key),
                    "acknowledged record {key} returned"
                );
                let want = self
                    .unacked
                    .get(&key)
                    .expect("a record never appended or lost");
                assert_eq!(&r.payload, want, "payload of {key}");
                let skipped: Vec<u64> = self.unacked.range(after..key).map(|(&k, _)| k).collect();
                for k in skipped {
                    // Only a record caught unflushed by a kill may be missing.
                    assert!(self.maybe.contains(&k), "record {k} skipped (read {key})");
                    self.maybe.remove(&k);
                    self.unacked.remove(&k);
                }
                self.maybe.remove(&key);
                self.read_cursor = Some(key);
                match self.outstanding.iter().find(|(k, _)| *k == key) {
                    Some(&(_, pos)) => assert_eq!(pos, r.pos),
                    None => self.outstanding.push((key, r.pos)),
                }
            }
            None => {
                let rest: Vec<u64> = self.unacked.range(after..).map(|(&k, _)| k).collect();
                for k in rest {
                    if self.maybe.remove(&k) {
                        // Everything on disk is readable after a restart: this one was lost.
                        self.unacked.remove(&k);
                    } else {
                        assert!(
                            self.unflushed.contains(&k),
                            "flushed record {k} not returned"
                        );
                    }
                }
            }
        }
    }
}

fn run_ops(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        dir: dir.path().to_path_buf(),
        max_bytes: 2048,
        segment_bytes: 256,
    };
    let mut spool = Spool::open(cfg.clone()).unwrap();
    let mut m = Model::default();
    for op in ops {
        match *op {
            Op::Append(len) => {
                let key = m.next_key;
                m.next_key += 1;
                let p: Vec<u8> = (0..len).map(|j| (key as usize * 31 + j) as u8).collect();
                match spool.append(key, &p) {
                    Ok(_) => {
                        m.unacked.insert(key, p);
                        m.unflushed.insert(key);
                    }
                    Err(SpoolError::Full) => {}
                    Err(e) => panic!("append: {e}"),
                }
            }
            Op::Flush(sync) => {
                spool.flush(sync).unwrap();
                m.unflushed.clear();
            }
            Op::Read => {
                let got = spool.read_next().unwrap();
                m.check_read(got);
            }
            Op::Ack(i) => {
                if !m.outstanding.is_empty() {
                    let (key, pos) = m.outstanding.remove(i % m.outstanding.len());
                    spool.ack(pos).unwrap();
                    m.unacked.remove(&key);
                    m.acked.insert(key);
                    m.acked_positions.push(pos);
                }
            }
            Op::AckAgain(i) => {
                if !m.acked_positions.is_empty() {
                    let before = spool.stats().acked;
                    spool
                        .ack(m.acked_positions[i % m.acked_positions.len()])
                        .unwrap();
                    assert_eq!(spool.stats().acked, before);
                }
            }
            Op::Rewind => {
                spool.rewind();
                m.read_cursor = None;
            }
            Op::Reopen => {
                drop(spool);
                spool = Spool::open(cfg.clone()).unwrap();
                m.unflushed.clear();
                m.restarted();
            }
            Op::Kill | Op::KillTorn(_) => {
                if let Op::KillTorn(n) = *op {
                    spool.kill_torn(n % 400);
                } else {
                    spool.kill();
                }
                spool = Spool::open(cfg.clone()).unwrap();
                m.maybe.extend(std::mem::take(&mut m.unflushed));
                m.restarted();
            }
        }
        assert!(spool.bytes() <= cfg.max_bytes);
        if m.maybe.is_empty() {
            assert_eq!(spool.pending(), m.unacked.len() as u64, "after {op:?}");
        }
    }
    // In the end every record not acknowledged comes back, once, in order, and no other.
    drop(spool);
    let mut spool = Spool::open(cfg.clone()).unwrap();
    m.unflushed.clear();
    m.restarted();
    let records = drain(&mut spool);
    for r in &records {
        m.check_read(Some(r.clone()));
    }
    m.check_read(None);
    assert_eq!(
        keys(&records),
        m.unacked.keys().copied().collect::<Vec<_>>()
    );
    assert_eq!(spool.pending(), records.len() as u64);
    spool.ack_all(records.iter().map(|r| r.pos)).unwrap();
    drop(spool);
    let mut spool = Spool::open(cfg).unwrap();
    assert_eq!(spool.read_next().unwrap(), None);
    assert_eq!(spool.pending(), 0);
    assert!(segment_numbers(dir.path()).len() <= 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_operations_never_lose_or_repeat_acknowledged(ops in proptest::collection::vec(op(), 1..150)) {
        run_ops(&ops);
    }
}

#[test]
fn damage_in_the_active_segment_moves_appends_to_a_fresh_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    let positions = fill(&mut spool, 0..6);
    let len = spool.bytes();
    // Buffered, not written yet: must survive the damage.
    spool.append(100, b"buffered").unwrap();
    assert_eq!(spool.pending(), 7);
    // Damage under a running spool: record 2's length becomes impossible.
    write_at(dir.path(), positions[2], &1u32.to_le_bytes());
    let got = drain(&mut spool);
    assert_eq!(keys(&got), vec![0, 1]);
    assert_eq!(spool.stats().corrupt_frames, 1);
    assert_eq!(spool.stats().torn_bytes, len - positions[2].offset);
    // Records 2..6 are gone; the buffered one moved to segment 1.
    assert_eq!(spool.pending(), 3);
    spool.flush(false).unwrap();
    let r = spool.read_next().unwrap().unwrap();
    assert_eq!(
        (r.key, r.pos),
        (
            100,
            SpoolPos {
                segment: 1,
                offset: 0
            }
        )
    );
    spool.append(101, b"later").unwrap();
    spool.flush(false).unwrap();
    assert_eq!(spool.read_next().unwrap().unwrap().key, 101);
    spool
        .ack_all(got.iter().map(|r| r.pos).chain([r.pos]))
        .unwrap();
    assert_eq!(spool.pending(), 1);
    drop(spool);
    let mut spool = Spool::open(config(dir.path(), 1 << 20)).unwrap();
    assert_eq!(keys(&drain(&mut spool)), vec![101]);
    assert_eq!(segment_numbers(dir.path()), vec![1]);
}
