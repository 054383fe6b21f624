//! Per-direction TCP reassembly.
//!
//! A [`Reassembler`] turns the segments of one direction, in whatever order and multiplicity they
//! arrive, into the byte stream the sender wrote, as a sequence of [`StreamEvent`]s: data in order,
//! gaps where bytes were never seen, and the end of the stream. Three cases per segment, as in
//! retina's conntrack:
//! - in order: delivered at once, borrowed from the caller (no copy), then any buffered segments
//!   that now follow are delivered too;
//! - in the future: copied into a bounded out-of-order buffer (an NLB reorders mirrored packets);
//! - in the past or overlapping: the part already delivered is trimmed (retransmission).
//!
//! A hole that is not filled before the buffer exceeds its bounds, or within the reorder timeout, is
//! given up: a [`StreamEvent::Gap`] of its length is emitted and delivery continues after it. Bytes a
//! truncated mirror packet announced but did not carry become a gap the same way.
//!
//! Pure: time comes in as `now` (microseconds), nothing is read from the clock.

use super::seq::Seq;
use std::collections::BTreeMap;

/// Limits of one direction's out-of-order buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReassemblyConfig {
    /// Bytes held out of order per direction before the oldest hole is declared a gap.
    /// Default 256 KiB: a few round trips of a fast sender, which is what an NLB can reorder.
    pub max_ooo_bytes: usize,
    /// Segments held out of order per direction (bounds bookkeeping for tiny segments). Default 512.
    pub max_ooo_segments: usize,
    /// How long (µs) a hole may stay unfilled while later bytes wait behind it. Default 2 s:
    /// mirrored reordering is milliseconds, while a lost mirror packet never comes back.
    pub reorder_timeout_us: u64,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        ReassemblyConfig {
            max_ooo_bytes: 256 * 1024,
            max_ooo_segments: 512,
            reorder_timeout_us: 2_000_000,
        }
    }
}

/// Counters kept by reassembly, summed over all directions of a table.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Segments that arrived ahead of a hole and were buffered.
    pub ooo_segments: u64,
    /// Payload bytes that had been delivered already (retransmissions and overlaps).
    pub retransmitted_bytes: u64,
    /// Holes given up on.
    pub gaps: u64,
    /// Bytes inside those holes, including bytes cut from truncated packets.
    pub gap_bytes: u64,
}

impl ReassemblyStats {
    pub fn add(&mut self, o: &ReassemblyStats) {
        self.ooo_segments += o.ooo_segments;
        self.retransmitted_bytes += o.retransmitted_bytes;
        self.gaps += o.gaps;
        self.gap_bytes += o.gap_bytes;
    }
}

/// Metadata of delivered bytes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DataMeta {
    /// Capture or arrival time of the segment that carried the bytes (µs since the epoch).
    pub ts: u64,
    /// Sequence number of the first delivered byte.
    pub seq: Seq,
    /// The segment's acknowledgement number (how much of the other direction its sender had).
    pub ack: Option<Seq>,
    /// These are the stream's first bytes and its SYN was not seen: the capture began inside
    /// the connection, and what came before them is unknown, as after a gap.
    pub midstream: bool,
}

/// What a direction's byte stream does next.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    Data(&'a [u8], DataMeta),
    /// `len` bytes were never seen.
    Gap {
        len: u64,
        ts: u64,
    },
    /// The sender's FIN: no bytes follow.
    End {
        ts: u64,
    },
}

/// One direction's incoming segment.
#[derive(Copy, Clone, Debug)]
pub struct SegmentIn<'a> {
    pub seq: Seq,
    pub ack: Option<Seq>,
    pub syn: bool,
    pub fin: bool,
    pub payload: &'a [u8],
    /// Payload bytes the segment announced but did not carry.
    pub missing: u32,
    pub ts: u64,
}

#[derive(Debug)]
struct Held {
    seq: Seq,
    data: Vec<u8>,
    missing: u32,
    ts: u64,
    ack: Option<Seq>,
}

impl Held {
    fn len(&self) -> u64 {
        self.data.len() as u64 + u64::from(self.missing)
    }
}

/// Reassembly state of one direction of a connection.
#[derive(Debug, Default)]
pub struct Reassembler {
    /// Next expected sequence number; `None` until the first segment fixes the stream's start.
    next: Option<Seq>,
    /// Stream offset of `next`, so held segments can be keyed without wrap-around.
    next_off: u64,
    /// Sequence number just past the last byte, once a FIN was seen.
    fin: Option<Seq>,
    /// When the FIN arrived.
    fin_ts: u64,
    ended: bool,
    held: BTreeMap<u64, Held>,
    held_bytes: usize,
    /// `next` was only guessed from the other direction's acknowledgement: until a byte is
    /// delivered, an earlier segment moves the start back instead of counting as old.
    guessed_start: bool,
    /// Initial sequence number, when the SYN was seen.
    isn: Option<Seq>,
}

impl Reassembler {
    /// True once the FIN was reached: the stream is complete.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Bytes currently buffered out of order.
    pub fn buffered_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Sets where the stream starts from the other direction's acknowledgement number, when no
    /// segment of this direction was seen yet. Without it, a capture that starts mid-connection
    /// would begin this direction at whatever segment arrives first, and bytes the mirror lost
    /// before it would go unnoticed instead of becoming a gap.
    pub fn guess_start(&mut self, ack: Seq) {
        if self.next.is_none() {
            self.next = Some(ack);
            self.guessed_start = true;
        }
    }

    /// Would a SYN with this sequence number start a different connection than the one this
    /// direction is following? (The 4-tuple was reused, and the old flow's end was not seen.)
    pub fn is_new_connection(&self, syn_seq: Seq) -> bool {
        match self.isn {
            // A retransmitted SYN carries the same initial sequence number.
            Some(isn) => isn != syn_seq,
            // Followed from mid-stream: a SYN after delivered bytes is a new connection.
            None => self.next_off > 0,
        }
    }

    /// Takes one segment, emitting whatever it makes deliverable.
    pub fn segment(
        &mut self,
        seg: SegmentIn<'_>,
        cfg: &ReassemblyConfig,
        stats: &mut ReassemblyStats,
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) {
        if self.ended {
            stats.retransmitted_bytes += seg.payload.len() as u64;
            return;
        }
        let data_seq = if seg.syn {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        if seg.syn && self.isn.is_none() {
            self.isn = Some(seg.seq);
        }
        if self.guessed_start
            && let Some(next) = self.next
            && (seg.syn || data_seq < next)
        {
            self.rewind(data_seq, next);
        }
        let next = *self.next.get_or_insert(data_seq);
        let len = seg.payload.len() as u64 + u64::from(seg.missing);
        if seg.fin {
            self.fin = Some(data_seq.wrapping_add(len));
            self.fin_ts = seg.ts;
        }
        let rel = data_seq.diff(next);
        if rel + len as i64 <= 0 {
            stats.retransmitted_bytes += seg.payload.len() as u64;
        } else if rel <= 0 {
            // In order, or overlapping what was delivered: trim the front and deliver the rest.
            let trim = rel.unsigned_abs();
            stats.retransmitted_bytes += trim.min(seg.payload.len() as u64);
            self.deliver(trim, seg.payload, seg.missing, seg.ts, seg.ack, stats, out);
            self.drain(stats, out);
        } else if len > 0 {
            stats.ooo_segments += 1;
            let key = self.next_off + rel as u64;
            let held = Held {
                seq: data_seq,
                data: seg.payload.to_vec(),
                missing: seg.missing,
                ts: seg.ts,
                ack: seg.ack,
            };
            // Of two segments starting at the same place keep the longer; the other is a duplicate.
            match self.held.get(&key) {
                Some(old) if old.len() >= held.len() => {
                    stats.retransmitted_bytes += seg.payload.len() as u64
                }
                _ => {
                    self.held_bytes += held.data.len();
                    if let Some(old) = self.held.insert(key, held) {
                        self.held_bytes -= old.data.len();
                        stats.retransmitted_bytes += old.data.len() as u64;
                    }
                }
            }
            while self.held_bytes > cfg.max_ooo_bytes || self.held.len() > cfg.max_ooo_segments {
                self.skip_hole(stats, out);
            }
        }
        self.check_end(seg.ts, out);
    }

    /// Moves a guessed start back to `start` (nothing was delivered yet, so nothing is lost).
    /// Nothing was delivered yet (`next_off` is 0), so held segments are re-keyed relative to the
    /// new start; a SYN can also move the start forward, and segments before it are dropped.
    fn rewind(&mut self, start: Seq, next: Seq) {
        let shift = next.diff(start);
        let mut held_bytes = 0;
        self.held = std::mem::take(&mut self.held)
            .into_iter()
            .filter_map(|(k, v)| {
                let key = u64::try_from(k as i64 + shift).ok()?;
                held_bytes += v.data.len();
                Some((key, v))
            })
            .collect();
        self.held_bytes = held_bytes;
        self.next = Some(start);
        self.guessed_start = false;
    }

    /// Gives up on holes whose following bytes have waited longer than the reorder timeout.
    pub fn expire_holes(
        &mut self,
        now: u64,
        cfg: &ReassemblyConfig,
        stats: &mut ReassemblyStats,
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) {
        while let Some((_, first)) = self.held.first_key_value() {
            if first.ts.saturating_add(cfg.reorder_timeout_us) > now {
                break;
            }
            self.skip_hole(stats, out);
        }
        if self.held.is_empty() && self.fin_ts.saturating_add(cfg.reorder_timeout_us) <= now {
            self.skip_to_fin(stats, out);
        }
        self.check_end(now, out);
    }

    /// The bytes between the last delivered and a FIN that came ahead of them were never seen:
    /// a gap, so the stream can end (a bare FIN after lost bytes).
    fn skip_to_fin(&mut self, stats: &mut ReassemblyStats, out: &mut dyn FnMut(StreamEvent<'_>)) {
        if let (Some(fin), Some(next)) = (self.fin, self.next)
            && !self.ended
            && fin > next
        {
            let hole = fin.diff(next) as u64;
            stats.gaps += 1;
            stats.gap_bytes += hole;
            out(StreamEvent::Gap {
                len: hole,
                ts: self.fin_ts,
            });
            self.advance(hole);
        }
    }

    /// Delivers everything held, turning every remaining hole into a gap (the flow is closing).
    pub fn flush(
        &mut self,
        now: u64,
        stats: &mut ReassemblyStats,
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) {
        while !self.held.is_empty() {
            self.skip_hole(stats, out);
        }
        self.skip_to_fin(stats, out);
        self.check_end(now, out);
    }

    /// Declares the hole before the first held segment a gap and delivers what follows it.
    fn skip_hole(&mut self, stats: &mut ReassemblyStats, out: &mut dyn FnMut(StreamEvent<'_>)) {
        let Some((&key, first)) = self.held.first_key_value() else {
            return;
        };
        let hole = key.saturating_sub(self.next_off);
        if hole > 0 {
            stats.gaps += 1;
            stats.gap_bytes += hole;
            out(StreamEvent::Gap {
                len: hole,
                ts: first.ts,
            });
            self.advance(hole);
        }
        self.drain(stats, out);
    }

    /// Delivers held segments that now start at or before `next`.
    fn drain(&mut self, stats: &mut ReassemblyStats, out: &mut dyn FnMut(StreamEvent<'_>)) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > self.next_off {
                break;
            }
            let key = *entry.key();
            let held = entry.remove();
            self.held_bytes -= held.data.len();
            let trim = self.next_off - key;
            if trim >= held.len() {
                stats.retransmitted_bytes += held.data.len() as u64;
                continue;
            }
            stats.retransmitted_bytes += trim.min(held.data.len() as u64);
            debug_assert_eq!(Some(held.seq.wrapping_add(trim)), self.next);
            self.deliver(
                trim,
                &held.data,
                held.missing,
                held.ts,
                held.ack,
                stats,
                out,
            );
        }
    }

    /// Delivers `payload[trim..]` followed by `missing` bytes of gap, trimming into the gap when
    /// `trim` exceeds the payload.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        trim: u64,
        payload: &[u8],
        missing: u32,
        ts: u64,
        ack: Option<Seq>,
        stats: &mut ReassemblyStats,
        out: &mut dyn FnMut(StreamEvent<'_>),
    ) {
        let present = payload.len() as u64;
        if trim < present {
            let bytes = &payload[trim as usize..];
            let seq = self.next.unwrap_or_default();
            let midstream = self.isn.is_none() && self.next_off == 0;
            out(StreamEvent::Data(
                bytes,
                DataMeta {
                    ts,
                    seq,
                    ack,
                    midstream,
                },
            ));
            self.advance(bytes.len() as u64);
        }
        let missing_left = (present + u64::from(missing)).saturating_sub(trim.max(present));
        if missing_left > 0 {
            stats.gaps += 1;
            stats.gap_bytes += missing_left;
            out(StreamEvent::Gap {
                len: missing_left,
                ts,
            });
            self.advance(missing_left);
        }
    }

    fn advance(&mut self, n: u64) {
        self.guessed_start = false;
        self.next = self.next.map(|s| s.wrapping_add(n));
        self.next_off += n;
    }

    fn check_end(&mut self, ts: u64, out: &mut dyn FnMut(StreamEvent<'_>)) {
        if let (Some(fin), Some(next)) = (self.fin, self.next)
            && !self.ended
            && next >= fin
        {
            self.ended = true;
            // Bytes beyond the FIN are not part of the stream.
            self.held.clear();
            self.held_bytes = 0;
            out(StreamEvent::End { ts });
        }
    }
}

#[cfg(test)]
mod tests;
