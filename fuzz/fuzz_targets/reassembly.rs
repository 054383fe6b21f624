//! One direction's segments, in any order and multiplicity, through a `flow::Reassembler` with a
//! small `ReassemblyConfig` so the out-of-order bounds and the reorder timeout are hit.
//!
//! The segments are windows of one underlying stream (bytes drawn from the input, a fixed pattern
//! past its end), so what reassembly delivers can be checked against it. Invariants:
//! - data and gaps are contiguous: each Data event's sequence number is where the previous
//!   event ended, and its bytes are the stream's bytes there (unless a segment was corrupted);
//! - delivered data + gap lengths never exceed the span of the bytes offered (from the first
//!   segment's start to the furthest segment end);
//! - a start guessed from the peer's ack (`guess_start`) moves to an earlier segment or the SYN
//!   as long as nothing was delivered;
//! - nothing follows End (not even from `expire_holes` or `flush`); End comes only once the
//!   delivered position reached the FIN;
//! - the out-of-order buffer stays within `max_ooo_bytes` after every call, and is empty after
//!   `flush`; events are never empty.
#![no_main]
// `..Default::default()` on config literals keeps the targets building when fields are added.
#![allow(clippy::needless_update)]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mirror_receiver::flow::{
    Reassembler, ReassemblyConfig, ReassemblyStats, SegmentIn, Seq, StreamEvent,
};

#[derive(Arbitrary, Debug)]
struct Input {
    max_ooo_bytes: u16,
    max_ooo_segments: u8,
    reorder_timeout_us: u16,
    isn: u32,
    /// The stream's bytes (a pattern continues past them).
    stream: Vec<u8>,
    segments: Vec<Seg>,
}

#[derive(Arbitrary, Debug)]
struct Seg {
    /// Stream offset of the segment's first data byte (kept below 2^20: TCP's window is far
    /// smaller than the 2^31 within which sequence numbers compare).
    off: u32,
    /// Bytes present / announced but cut (truncated mirror packet).
    len: u16,
    missing: u16,
    syn: bool,
    fin: bool,
    /// Flip the payload's bytes: a retransmission that disagrees with the original.
    corrupt: bool,
    ack: Option<u32>,
    /// Microseconds since the previous segment.
    dt: u16,
    /// Call `expire_holes` after the segment.
    expire: bool,
    /// Before the segment, `guess_start` at this stream offset (as the flow table does with the
    /// other direction's acknowledgement number).
    guess: Option<u32>,
}

const OFF_MASK: u32 = (1 << 20) - 1;
const MAX_LEN: u16 = 4096;

fn stream_byte(stream: &[u8], off: u64) -> u8 {
    match stream.get(off as usize) {
        Some(&b) => b,
        None => (off.wrapping_mul(31).wrapping_add(7) >> 3) as u8,
    }
}

struct Checker<'s> {
    stream: &'s [u8],
    isn: u32,
    /// Offset of the first data byte of the first segment: where delivery starts.
    start: Option<u64>,
    /// Furthest end (offset) of any segment offered.
    max_end: u64,
    /// Offset where the next event must begin.
    pos: u64,
    /// Offset just past the last byte, per the latest FIN offered.
    fin: Option<u64>,
    ended: bool,
    corrupted: bool,
    /// The start is a guess (`guess_start`) and nothing was delivered yet.
    guessed: bool,
}

impl Checker<'_> {
    fn event(&mut self, ev: StreamEvent<'_>) {
        assert!(!self.ended, "event after End: {ev:?}");
        let start = self.start.expect("event before any segment");
        self.guessed = false;
        match ev {
            StreamEvent::Data(bytes, meta) => {
                assert!(!bytes.is_empty(), "empty Data");
                assert_eq!(
                    meta.seq,
                    Seq(self.isn.wrapping_add(self.pos as u32)),
                    "Data not contiguous: expected offset {}",
                    self.pos
                );
                if !self.corrupted {
                    for (i, &b) in bytes.iter().enumerate() {
                        let off = self.pos + i as u64;
                        assert_eq!(
                            b,
                            stream_byte(self.stream, off),
                            "wrong byte at offset {off}"
                        );
                    }
                }
                self.pos += bytes.len() as u64;
            }
            StreamEvent::Gap { len, .. } => {
                assert!(len > 0, "empty Gap");
                self.pos += len;
            }
            StreamEvent::End { .. } => {
                let fin = self.fin.expect("End without FIN");
                assert!(
                    self.pos >= fin,
                    "End at {} before the FIN at {fin}",
                    self.pos
                );
                self.ended = true;
            }
        }
        assert!(
            self.pos - start <= self.max_end.saturating_sub(start),
            "delivered {} bytes, but the bytes offered span only {}",
            self.pos - start,
            self.max_end.saturating_sub(start)
        );
    }
}

fuzz_target!(|input: Input| {
    if std::env::var_os("FUZZ_TRACE").is_some() {
        eprintln!("{input:#?}");
    }
    let cfg = ReassemblyConfig {
        max_ooo_bytes: usize::from(input.max_ooo_bytes % 8192),
        max_ooo_segments: usize::from(input.max_ooo_segments % 16),
        reorder_timeout_us: u64::from(input.reorder_timeout_us),
        ..ReassemblyConfig::default()
    };
    let mut stats = ReassemblyStats::default();
    let mut r = Reassembler::default();
    let mut chk = Checker {
        stream: &input.stream,
        isn: input.isn,
        start: None,
        max_end: 0,
        pos: 0,
        fin: None,
        ended: false,
        corrupted: false,
        guessed: false,
    };
    let mut now: u64 = 1_000_000;
    let mut payload = Vec::new();
    for seg in &input.segments {
        let off = u64::from(seg.off & OFF_MASK);
        let len = seg.len % (MAX_LEN + 1);
        let missing = seg.missing % (MAX_LEN + 1);
        payload.clear();
        payload.extend((0..u64::from(len)).map(|i| {
            let b = stream_byte(&input.stream, off + i);
            if seg.corrupt { !b } else { b }
        }));
        chk.corrupted |= seg.corrupt && len > 0;
        let end = off + u64::from(len) + u64::from(missing);
        if let Some(g) = seg.guess {
            let g = u64::from(g & OFF_MASK);
            r.guess_start(Seq(input.isn.wrapping_add(g as u32)));
            if chk.start.is_none() {
                chk.start = Some(g);
                chk.pos = g;
                chk.guessed = true;
            }
        }
        if chk.start.is_none() {
            chk.start = Some(off);
            chk.pos = off;
        } else if chk.guessed && !chk.ended && (seg.syn || off < chk.pos) {
            // A segment before a guessed start (or the SYN) moves the start to it.
            chk.start = Some(off);
            chk.pos = off;
            chk.guessed = false;
        }
        chk.max_end = chk.max_end.max(end);
        if seg.fin && !chk.ended {
            chk.fin = Some(end);
        }
        now += u64::from(seg.dt);
        // A SYN takes one sequence number before the first data byte.
        let seq = Seq(input
            .isn
            .wrapping_add(off as u32)
            .wrapping_sub(u32::from(seg.syn)));
        let inp = SegmentIn {
            seq,
            ack: seg.ack.map(Seq),
            syn: seg.syn,
            fin: seg.fin,
            payload: &payload,
            missing: u32::from(missing),
            ts: now,
        };
        r.segment(inp, &cfg, &mut stats, &mut |ev| chk.event(ev));
        assert!(
            r.buffered_bytes() <= cfg.max_ooo_bytes,
            "{} bytes buffered > {}",
            r.buffered_bytes(),
            cfg.max_ooo_bytes
        );
        if seg.expire {
            r.expire_holes(now, &cfg, &mut stats, &mut |ev| chk.event(ev));
        }
        assert_eq!(r.ended(), chk.ended);
    }
    now += 1;
    r.flush(now, &mut stats, &mut |ev| chk.event(ev));
    assert_eq!(r.buffered_bytes(), 0, "bytes left buffered after flush");
    assert_eq!(r.ended(), chk.ended);
});
