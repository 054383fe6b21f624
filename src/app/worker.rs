//! A worker thread: one pipeline shard fed by its own source, each datagram or frame run to
//! completion (decode, reassembly, pairing, encoding) on the thread that received it. The
//! source is a receive socket of one `--listen` group (the kernel steers its flows there, or
//! the group's workers hand them over), or a capture handle of the interface's fanout group.

use super::Shared;
use super::sink_thread::RecordsOut;
use crate::admission::Admission;
use crate::ingest::live::LiveCapture;
use crate::ingest::now_us;
use crate::ingest::{BatchPool, Inlet, Link};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::record::{Encoder, RecordConfig};
use crate::wire::{Datagram, Encapsulation};
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Where a worker's traffic comes from.
pub(super) enum Source {
    /// Socket `shard` of a `--listen` group, at `slot` in the daemon's sockets.
    Udp {
        shard: usize,
        slot: usize,
        socket: Arc<UdpSocket>,
        encap: Encapsulation,
        admission: Arc<Admission>,
        link: Link,
        /// Batches of handed-off datagrams.
        pool: BatchPool,
    },
    /// A capture handle, at `slot` in the daemon's captures; frames not in VXLAN are recorded
    /// with `vni`.
    Live {
        slot: usize,
        capture: LiveCapture,
        vni: u32,
    },
}

/// A worker: worker slot `me`, its source, its records' way to the sink thread.
pub(super) struct Worker {
    pub(super) me: usize,
    pub(super) source: Source,
    pub(super) records: RecordsOut,
    pub(super) shared: Arc<Shared>,
}

/// What every worker's loop does besides receiving: the timers, the published counters, the
/// records.
struct Shard<'a> {
    me: usize,
    shared: &'a Shared,
    pipeline: Pipeline,
    encoder: Encoder,
    out: RecordsOut,
    buf: Vec<u8>,
    next_expire: u64,
}

impl Shard<'_> {
    /// After each receive call: heartbeat, expiry and published counters once a second, records
    /// to the sink. False once the sink thread is gone.
    fn turn(&mut self, now: u64, received: usize) -> bool {
        let slot = &self.shared.workers[self.me];
        slot.heartbeat.store(now, Ordering::Relaxed);
        if received == 0 {
            // Nothing for a receive timeout: the spare record batches a burst needed are freed.
            self.out.pool.shrink(1);
        }
        if now >= self.next_expire {
            self.pipeline.expire(now);
            self.next_expire = now + 1_000_000;
            self.publish();
        }
        self.drain()
    }

    fn drain(&mut self) -> bool {
        self.out
            .drain(
                &mut self.pipeline,
                &self.encoder,
                &mut self.buf,
                &self.shared.records_too_large,
            )
            .is_ok()
    }

    fn publish(&self) {
        if let Ok(mut s) = self.shared.workers[self.me].stats.lock() {
            *s = self.pipeline.stats();
        }
    }

    /// At shutdown: what is still open is reported, the records sent, the counters published.
    fn finish(mut self) {
        self.pipeline.finish(now_us());
        self.drain();
        self.publish();
    }
}

impl Worker {
    pub(super) fn run(
        self,
        pcfg: &PipelineConfig,
        filter: Arc<crate::filter::Filter>,
        rcfg: RecordConfig,
    ) {
        let Worker {
            me,
            source,
            records,
            shared,
        } = self;
        let mut shard = Shard {
            me,
            shared: &shared,
            pipeline: Pipeline::new(pcfg).with_filter(filter),
            encoder: Encoder::new(rcfg),
            out: records,
            buf: Vec::with_capacity(64 * 1024),
            next_expire: 0,
        };
        match source {
            Source::Udp {
                shard: index,
                slot,
                socket,
                encap,
                admission,
                link,
                pool,
            } => {
                let counters = &shared.sockets[slot].counters;
                let inlet = Inlet::new(index, &socket, &admission, counters, link, pool)
                    .with_encapsulation(encap);
                run_udp(&mut shard, inlet);
            }
            Source::Live { slot, capture, vni } => run_live(&mut shard, slot, capture, vni),
        }
        shard.finish();
    }
}

fn run_udp(shard: &mut Shard<'_>, mut inlet: Inlet<'_>) {
    let shared = shard.shared;
    let slot = &shared.workers[shard.me];
    while !shared.stop.load(Ordering::Relaxed) {
        // The clock is read once per receive call, when its first datagram is taken.
        let mut stamp = None;
        let pipeline = &mut shard.pipeline;
        let (received, alive) = inlet.receive(&mut |d: &[u8], dg: &Datagram<'_>| {
            let now = *stamp.get_or_insert_with(now_us);
            pipeline.decoded(d, dg, now);
        });
        slot.queue_fill
            .store(inlet.inbox_len() as u64, Ordering::Relaxed);
        if !alive || !shard.turn(stamp.unwrap_or_else(now_us), received) {
            break;
        }
    }
    let now = now_us();
    let pipeline = &mut shard.pipeline;
    inlet.close(&mut |d: &[u8], dg: &Datagram<'_>| pipeline.decoded(d, dg, now));
}

fn run_live(shard: &mut Shard<'_>, slot: usize, mut capture: LiveCapture, vni: u32) {
    let shared = shard.shared;
    let counters = &shared.captures[slot];
    let link = capture.link();
    // Capture times drive the pipeline, never stepping back (the ring's blocks may interleave
    // a little).
    let mut last = now_us();
    let mut next_publish = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let pipeline = &mut shard.pipeline;
        let received = capture.receive(counters, &mut |frame: &[u8], ts: u64| {
            last = last.max(ts);
            pipeline.capture_frame(link, frame, vni, last);
        });
        let now = now_us().max(last);
        if now >= next_publish {
            capture.publish(counters);
            next_publish = now + 1_000_000;
        }
        if !shard.turn(now, received) {
            return;
        }
    }
    // What the ring still holds is taken too, so every frame the kernel gave the ring is
    // either reported on or counted as dropped.
    let now = now_us();
    let pipeline = &mut shard.pipeline;
    while capture.drain(counters, &mut |frame: &[u8], _| {
        pipeline.capture_frame(link, frame, vni, now)
    }) > 0
    {}
    capture.publish(counters);
}
