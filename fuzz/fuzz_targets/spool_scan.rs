//! Arbitrary bytes as the segment files of a spool directory, then `sink::spool::Spool::open`
//! (the recovery scan) and `read_next` until the end. Besides "no panic": a model of the frame
//! format and of the recovery rules of the module documentation ([`expect`]) predicts every
//! record read (position, key, payload: only frames whose checksum checks), the
//! `corrupt_frames`, `torn_bytes` and `recovered_on_open` counters, the newest segment's length
//! after its torn tail is cut, and `pending()` (the frames found on open, then the records
//! read). Then the records the input picks are acknowledged, the spool is dropped and opened
//! again: exactly the others come back, in order, and a record appended after them reads back.
//!
//! Input layout: `config: u8` (bits 0-1: `segment_bytes` 32, 256, 4096 or the default; bits 2-3:
//! 1 to 4 segment files), `acks: u8` (record i is acknowledged when bit i % 8 is set), then the
//! segments 0, 1, ...: each but the last `len: u16 LE, bytes`, the last the rest of the input.
//!
//! `MIRROR_FUZZ_SPOOL_SEEDS=DIR` makes the binary write seed inputs (segment files the real
//! spool wrote, whole, cut and with a byte flipped) to DIR and exit; `seed.sh` runs it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_receiver::sink::spool::{Spool, SpoolConfig, SpoolPos, segment_path};
use std::path::{Path, PathBuf};

const SEGMENT_BYTES: [u64; 4] = [32, 256, 4096, SpoolConfig::DEFAULT_SEGMENT_BYTES];

/// A record as the model expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    pos: SpoolPos,
    key: u64,
    payload: Vec<u8>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Expect {
    records: Vec<Rec>,
    corrupt_frames: u64,
    torn_bytes: u64,
    /// Frames the open scan counts (headers sound; the newest file's last frame checked).
    found: u64,
    /// The newest segment's length once its torn or unreadable tail is cut.
    newest_len: u64,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// `u32 LE rest | u32 LE crc32(key LE ++ payload) | u64 LE key | payload`: sound when the
/// checksum checks.
fn checksum_ok(frame: &[u8]) -> bool {
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[8..]);
    h.finalize() == le_u32(frame, 4)
}

/// The module documentation's recovery rules for fresh segment files (no cursor, no
/// acknowledgement log), segment i numbered i.
fn expect(segments: &[&[u8]], segment_bytes: u64) -> Expect {
    let max_rest = segment_bytes.min(u64::from(u32::MAX) - 12) + 12;
    let sound_len = |rest: u64| (12..=max_rest).contains(&rest);
    let mut e = Expect::default();
    let newest = segments.len() - 1;
    for (n, &seg) in segments.iter().enumerate() {
        let len = seg.len() as u64;
        let mut end = len;
        // The open scan: headers only, from the start.
        let mut off = 0u64;
        loop {
            if off >= len {
                break;
            }
            if len - off < 4 {
                // A length field cut short: a torn tail.
                end = off;
                break;
            }
            let rest = u64::from(le_u32(seg, off as usize));
            if !sound_len(rest) {
                // An impossible length: the rest of the file is unreadable.
                end = off;
                if n == newest {
                    e.corrupt_frames += 1;
                }
                break;
            }
            let next = off + 4 + rest;
            if next > len {
                end = off;
                break;
            }
            if n == newest && next == len && !checksum_ok(&seg[off as usize..next as usize]) {
                // The newest file's last frame, with a bad checksum: a torn write.
                end = off;
                break;
            }
            e.found += 1;
            off = next;
        }
        if n == newest {
            // Cut away on open; what is left reads frame by frame.
            e.torn_bytes += len - end;
            e.newest_len = end;
        }
        // Reading: from the start to the readable end (the newest file as cut).
        let readable = if n == newest { end } else { len };
        let mut off = 0u64;
        while off < readable {
            let at = off as usize;
            let unreadable = readable - off < 16 || {
                let rest = u64::from(le_u32(seg, at));
                !sound_len(rest) || off + 4 + rest > readable
            };
            if unreadable {
                e.corrupt_frames += 1;
                e.torn_bytes += readable - off;
                break;
            }
            let next = off + 4 + u64::from(le_u32(seg, at));
            let frame = &seg[at..next as usize];
            if checksum_ok(frame) {
                e.records.push(Rec {
                    pos: SpoolPos {
                        segment: n as u64,
                        offset: off,
                    },
                    key: le_u64(frame, 8),
                    payload: frame[16..].to_vec(),
                });
            } else {
                e.corrupt_frames += 1;
            }
            off = next;
        }
    }
    e
}

/// The input's configuration and segments.
fn parse(data: &[u8]) -> Option<(u64, u8, Vec<&[u8]>)> {
    let (&config, rest) = data.split_first()?;
    let (&acks, mut rest) = rest.split_first()?;
    let segment_bytes = SEGMENT_BYTES[usize::from(config & 3)];
    let count = usize::from((config >> 2) & 3) + 1;
    let mut segments = Vec::with_capacity(count);
    for _ in 1..count {
        let Some((len, r)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len)).min(r.len());
        let (seg, r) = r.split_at(len);
        segments.push(seg);
        rest = r;
    }
    segments.push(rest);
    Some((segment_bytes, acks, segments))
}

/// A directory of this process's own (on tmpfs when there is one).
fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("mirror-receiver-fuzz-spool-{}", std::process::id()))
}

fn config(dir: &Path, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        segment_bytes,
        ..SpoolConfig::new(dir)
    }
}

fn run(data: &[u8], dir: &Path) {
    let Some((segment_bytes, acks, segments)) = parse(data) else {
        return;
    };
    let want = expect(&segments, segment_bytes);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (n, seg) in segments.iter().enumerate() {
        std::fs::write(segment_path(dir, n as u64), seg).unwrap();
    }

    let mut spool = Spool::open(config(dir, segment_bytes)).expect("open");
    let stats = spool.stats().clone();
    assert_eq!(stats.recovered_on_open, want.found, "frames found on open");
    assert_eq!(spool.pending(), want.found, "pending after open");
    let newest = segment_path(dir, segments.len() as u64 - 1);
    assert_eq!(
        std::fs::metadata(&newest).unwrap().len(),
        want.newest_len,
        "the newest segment's length after open"
    );
    let mut got = Vec::new();
    while let Some(r) = spool.read_next().expect("read") {
        got.push(Rec {
            pos: r.pos,
            key: r.key,
            payload: r.payload,
        });
        assert!(
            got.len() <= want.records.len(),
            "more records than sound frames"
        );
    }
    assert_eq!(got, want.records, "records read");
    assert_eq!(spool.read_next().expect("read").map(|r| r.pos), None);
    let stats = spool.stats();
    assert_eq!(stats.corrupt_frames, want.corrupt_frames, "corrupt_frames");
    assert_eq!(stats.torn_bytes, want.torn_bytes, "torn_bytes");
    let total: u64 = segments.iter().map(|s| s.len() as u64).sum();
    let framed: u64 = got.iter().map(|r| 16 + r.payload.len() as u64).sum();
    assert!(
        framed + stats.torn_bytes <= total,
        "records and torn bytes past the input"
    );
    assert_eq!((stats.appended, stats.acked, stats.dropped_full), (0, 0, 0));
    assert_eq!(
        spool.pending(),
        got.len() as u64,
        "pending after reading all"
    );
    assert_eq!(spool.in_flight(), got.len());

    // Acknowledge the records the input picks; a restart hands out exactly the others.
    let (acked, kept): (Vec<_>, Vec<_>) = got
        .iter()
        .enumerate()
        .partition(|(i, _)| (acks >> (i % 8)) & 1 == 1);
    spool
        .ack_all(acked.iter().map(|(_, r)| r.pos))
        .expect("ack");
    assert_eq!(spool.pending(), kept.len() as u64, "pending after acks");
    drop(spool);
    let mut spool = Spool::open(config(dir, segment_bytes)).expect("reopen");
    // Damaged frames after the cursor are found again (and skipped again).
    assert!(
        spool.pending() >= kept.len() as u64,
        "pending after reopening"
    );
    for (i, r) in &kept {
        let again = spool
            .read_next()
            .expect("read")
            .unwrap_or_else(|| panic!("record {i} (not acknowledged) missing after reopening"));
        assert_eq!(
            (again.pos, again.key, &again.payload),
            (r.pos, r.key, &r.payload)
        );
    }
    assert_eq!(
        spool.read_next().expect("read").map(|r| r.pos),
        None,
        "an acknowledged record came back"
    );
    assert_eq!(
        spool.pending(),
        kept.len() as u64,
        "pending after reading again"
    );
    let pos = spool.append(u64::MAX, b"after").expect("append");
    spool.flush(false).expect("flush");
    let last = spool
        .read_next()
        .expect("read")
        .expect("the record appended");
    assert_eq!(
        (last.pos, last.key, &last.payload[..]),
        (pos, u64::MAX, &b"after"[..])
    );
    assert!(spool.read_next().expect("read").is_none());
    drop(spool);
    let _ = std::fs::remove_dir_all(dir);
}

/// Seed inputs from segment files the real spool writes.
fn write_seeds(out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    let work = scratch().with_extension("seeds");
    let mut n = 0;
    let mut put = |config: u8, acks: u8, segments: &[Vec<u8>]| {
        let mut input = vec![config | ((segments.len() as u8 - 1) << 2), acks];
        for (i, s) in segments.iter().enumerate() {
            if i + 1 < segments.len() {
                input.extend_from_slice(&(s.len() as u16).to_le_bytes());
            }
            input.extend_from_slice(s);
        }
        std::fs::write(out.join(format!("spool-seed-{n}")), input).unwrap();
        n += 1;
    };
    // (config bits 0-1, records, segment files kept)
    for (size, records, keep) in [(2u8, 6u64, 1usize), (1, 24, 4), (3, 9, 1), (0, 5, 3)] {
        let _ = std::fs::remove_dir_all(&work);
        let segment_bytes = SEGMENT_BYTES[usize::from(size)];
        let mut spool = Spool::open(config(&work, segment_bytes)).unwrap();
        for i in 0..records {
            let payload = format!("record {i};").repeat((i % 4) as usize);
            spool.append(i * 0x0101, payload.as_bytes()).unwrap();
        }
        spool.flush(false).unwrap();
        drop(spool);
        let segs: Vec<Vec<u8>> = (0..keep as u64)
            .map_while(|i| std::fs::read(segment_path(&work, i)).ok())
            .filter(|s| s.len() < 60_000)
            .collect();
        if segs.is_empty() {
            continue;
        }
        put(size, 0x5a, &segs);
        // A torn tail, and a flipped byte in the first frame's payload or checksum.
        let mut torn = segs.clone();
        let last = torn.last_mut().unwrap();
        last.truncate(last.len().saturating_sub(3));
        put(size, 0x0f, &torn);
        let mut flipped = segs.clone();
        if flipped[0].len() > 6 {
            flipped[0][6] ^= 0x40;
        }
        put(size, 0xff, &flipped);
    }
    let _ = std::fs::remove_dir_all(&work);
}

fuzz_target!(
    init: {
        if let Some(out) = std::env::var_os("MIRROR_FUZZ_SPOOL_SEEDS") {
            write_seeds(Path::new(&out));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        run(data, &scratch());
    }
);
