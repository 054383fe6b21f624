use super::*;
use proptest::prelude::*;

/// Collected stream: bytes with gaps as `None` runs, and whether it ended.
#[derive(Debug, Default, PartialEq, Eq)]
struct Collected {
    data: Vec<u8>,
    gaps: Vec<(usize, u64)>,
    ended: bool,
    seqs: Vec<u32>,
}

impl Collected {
    fn sink(&mut self) -> impl FnMut(StreamEvent<'_>) + '_ {
        |ev| match ev {
            StreamEvent::Data(b, meta) => {
                assert!(!self.ended, "data after end");
                self.seqs.push(meta.seq.0);
                self.data.extend_from_slice(b);
            }
            StreamEvent::Gap { len, .. } => {
                assert!(!self.ended, "gap after end");
                self.gaps.push((self.data.len(), len));
            }
            StreamEvent::End { .. } => self.ended = true,
        }
    }
}

fn seg(seq: u32, payload: &[u8]) -> SegmentIn<'_> {
    SegmentIn {
        seq: Seq(seq),
        ack: None,
        syn: false,
        fin: false,
        payload,
        missing: 0,
        ts: 0,
    }
}

fn syn(seq: u32) -> SegmentIn<'static> {
    SegmentIn {
        syn: true,
        ..seg(seq, b"")
    }
}

struct Harness {
    r: Reassembler,
    cfg: ReassemblyConfig,
    stats: ReassemblyStats,
    out: Collected,
}

impl Harness {
    fn new(cfg: ReassemblyConfig) -> Harness {
        Harness {
            r: Reassembler::default(),
            cfg,
            stats: ReassemblyStats::default(),
            out: Collected::default(),
        }
    }
    fn push(&mut self, s: SegmentIn<'_>) {
        let mut sink = self.out.sink();
        self.r.segment(s, &self.cfg, &mut self.stats, &mut sink);
    }
    fn expire(&mut self, now: u64) {
        let mut sink = self.out.sink();
        self.r
            .expire_holes(now, &self.cfg, &mut self.stats, &mut sink);
    }
    fn flush(&mut self) {
        let mut sink = self.out.sink();
        self.r.flush(0, &mut self.stats, &mut sink);
    }
}

#[test]
fn in_order_segments_are_delivered_at_once() {
    let mut h = Harness::new(ReassemblyConfig::default());
    h.push(syn(100));
    h.push(seg(101, b"GET / "));
    h.push(seg(107, b"HTTP/1.1\r\n"));
    assert_eq!(h.out.data, b"GET / HTTP/1.1\r\n");
    assert_eq!(h.out.seqs, vec![101, 107]);
    assert_eq!(h.r.buffered_bytes(), 0);
}

#[test]
fn out_of_order_segment_waits_for_the_hole() {
    let mut h = Harness::new(ReassemblyConfig::default());
    h.push(syn(0));
    h.push(seg(5, b"5678"));
    assert_eq!(h.out.data, b"");
    assert_eq!(h.r.buffered_bytes(), 4);
    h.push(seg(1, b"1234"));
    assert_eq!(h.out.data, b"12345678");
    assert_eq!(h.stats.ooo_segments, 1);
    assert_eq!(h.r.buffered_bytes(), 0);
}

#[test]
fn retransmissions_and_overlaps_are_trimmed() {
    let mut h = Harness::new(ReassemblyConfig::default());
    h.push(syn(0));
    h.push(seg(1, b"abcd"));
    h.push(seg(1, b"abcd"));
    h.push(seg(3, b"cdefg"));
    h.push(seg(9, b"ij"));
    h.push(seg(6, b"fghi"));
    assert_eq!(h.out.data, b"abcdefghij");
    assert_eq!(h.stats.retransmitted_bytes, 4 + 2 + 1 + 2);
}

#[test]
fn sequence_numbers_wrap_around() {
    let mut h = Harness::new(ReassemblyConfig::default());
    let isn = u32::MAX - 2;
    h.push(syn(isn));
    h.push(seg(isn.wrapping_add(5), b"def"));
    h.push(seg(isn.wrapping_add(1), b"abcd"));
    assert_eq!(h.out.data, b"abcddef");
    assert_eq!(h.out.seqs, vec![u32::MAX - 1, 2]);
}

#[test]
fn buffer_bound_turns_the_hole_into_a_gap() {
    let cfg = ReassemblyConfig {
        max_ooo_bytes: 8,
        ..ReassemblyConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.push(seg(1000, b"aa"));
    h.push(seg(1005, b"bbbb"));
    h.push(seg(1009, b"cccc"));
    // 8 bytes held: still waiting.
    assert_eq!(h.out.data, b"aa");
    h.push(seg(1013, b"d"));
    // Over the bound: the 3-byte hole is given up.
    assert_eq!(h.out.data, b"aabbbbccccd");
    assert_eq!(h.out.gaps, vec![(2, 3)]);
    assert_eq!(h.stats.gaps, 1);
    assert_eq!(h.stats.gap_bytes, 3);
    // A late segment for the hole is now old.
    h.push(seg(1002, b"xyz"));
    assert_eq!(h.out.data, b"aabbbbccccd");
}

#[test]
fn reorder_timeout_turns_the_hole_into_a_gap() {
    let mut h = Harness::new(ReassemblyConfig::default());
    h.push(seg(1, b"a"));
    h.push(SegmentIn {
        ts: 1_000_000,
        ..seg(10, b"z")
    });
    h.expire(2_999_999);
    assert_eq!(h.out.data, b"a");
    h.expire(3_000_000);
    assert_eq!(h.out.data, b"az");
    assert_eq!(h.out.gaps, vec![(1, 8)]);
}

#[test]
fn truncated_segment_becomes_a_gap_of_its_missing_bytes() {
    let mut h = Harness::new(ReassemblyConfig::default());
    h.push(SegmentIn {
        missing: 100,
        ..seg(1, b"HTTP/1.1 200 OK\r\n")
    });
    h.push(seg(118, b"next"));
    assert_eq!(h.out.data, b"HTTP/1.1 200 OK\r\nnext");
    assert_eq!(h.out.gaps, vec![(17, 100)]);
}

#[test]
fn fin_ends_the_stream_only_after_every_byte() {
    let mut h = Harness::new(ReassemblyConfig::default());
    h.push(syn(0));
    h.push(SegmentIn {
        fin: true,
        ..seg(4, b"de")
    });
    assert!(!h.out.ended);
    h.push(seg(1, b"abc"));
    assert!(h.out.ended);
    assert!(h.r.ended());
    assert_eq!(h.out.data, b"abcde");
}

#[test]
fn flush_delivers_everything_held_across_holes() {
    let mut h = Harness::new(ReassemblyConfig::default());
    h.push(seg(1, b"a"));
    h.push(seg(5, b"e"));
    h.push(seg(3, b"c"));
    h.flush();
    assert_eq!(h.out.data, b"ace");
    assert_eq!(h.out.gaps, vec![(1, 1), (2, 1)]);
    assert_eq!(h.r.buffered_bytes(), 0);
}

proptest! {
    /// Any permutation and duplication of a stream's segments, within the buffer bound,
    /// reassembles to the original bytes.
    #[test]
    fn permuted_and_duplicated_segments_reassemble_exactly(
        data in proptest::collection::vec(any::<u8>(), 1..3000),
        cuts in proptest::collection::vec(1usize..400, 1..40),
        isn in any::<u32>(),
        order in any::<u64>(),
        dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        // Split the stream into segments at the given lengths.
        let mut segments = Vec::new();
        let mut off = 0;
        for c in cuts.iter().cycle() {
            if off >= data.len() { break; }
            let end = (off + c).min(data.len());
            segments.push((off, end));
            off = end;
        }
        let mut delivery: Vec<(usize, usize)> = segments.clone();
        for d in &dups {
            delivery.push(segments[d.index(segments.len())]);
        }
        // Deterministic shuffle from `order`.
        let mut state = order | 1;
        for i in (1..delivery.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            delivery.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let cfg = ReassemblyConfig { max_ooo_bytes: 64 * 1024, max_ooo_segments: 8192, reorder_timeout_us: u64::MAX };
        let mut h = Harness::new(cfg);
        h.push(syn(isn));
        for (a, b) in delivery {
            h.push(seg(isn.wrapping_add(1).wrapping_add(a as u32), &data[a..b]));
        }
        prop_assert_eq!(&h.out.data, &data);
        prop_assert!(h.out.gaps.is_empty());
        prop_assert_eq!(h.r.buffered_bytes(), 0);
    }
}

#[test]
fn start_guessed_from_the_peer_ack_turns_unseen_bytes_into_a_gap() {
    let mut h = Harness::new(ReassemblyConfig::default());
    h.r.guess_start(Seq(500));
    h.push(seg(510, b"late"));
    assert_eq!(h.out.data, b"");
    h.flush();
    assert_eq!(h.out.gaps, vec![(0, 10)]);
    assert_eq!(h.out.data, b"late");
}

#[test]
fn a_guessed_start_moves_back_for_earlier_bytes() {
    // The peer's segment (acknowledging these bytes) was delivered before them.
    let mut h = Harness::new(ReassemblyConfig::default());
    h.r.guess_start(Seq(110));
    h.push(seg(114, b"efg"));
    h.push(seg(100, b"abcdefghij"));
    assert_eq!(h.out.data, b"abcdefghij");
    assert!(h.out.gaps.is_empty());
    // Once bytes are delivered the start is fixed: older bytes are retransmissions.
    h.push(seg(90, b"0123456789"));
    assert_eq!(h.out.data, b"abcdefghij");
}
