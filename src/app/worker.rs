//! A worker thread: one pipeline shard fed by its own receive socket, each datagram run to
//! completion (decode, reassembly, pairing, encoding) on the thread that received it.

use super::sink_thread::RecordsOut;
use super::{Shared, now_us};
use crate::admission::Admission;
use crate::ingest::{BatchPool, Inlet, Link};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::record::{Encoder, RecordConfig};
use crate::wire::Datagram;
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A worker: receives on socket `me` (the kernel steers its flows there), owns one pipeline
/// shard, and sends its records to the sink thread.
pub(super) struct Worker {
    pub(super) me: usize,
    pub(super) socket: Arc<UdpSocket>,
    pub(super) admission: Arc<Admission>,
    pub(super) link: Link,
    /// Batches of handed-off datagrams.
    pub(super) pool: BatchPool,
    pub(super) records: RecordsOut,
    pub(super) shared: Arc<Shared>,
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
            socket,
            admission,
            link,
            pool,
            records: mut out,
            shared,
        } = self;
        let (slot, socket_slot) = (&shared.workers[me], &shared.sockets[me]);
        let mut inlet = Inlet::new(me, &socket, &admission, &socket_slot.counters, link, pool);
        let mut pipeline = Pipeline::new(pcfg).with_filter(filter);
        let encoder = Encoder::new(rcfg);
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut next_expire = 0;
        while !shared.stop.load(Ordering::Relaxed) {
            // The clock is read once per receive call, when its first datagram is taken.
            let mut stamp = None;
            let (received, alive) = inlet.receive(&mut |d: &[u8], dg: &Datagram<'_>| {
                let now = *stamp.get_or_insert_with(now_us);
                pipeline.decoded(d, dg, now);
            });
            let now = stamp.unwrap_or_else(now_us);
            slot.heartbeat.store(now, Ordering::Relaxed);
            slot.queue_fill
                .store(inlet.inbox_len() as u64, Ordering::Relaxed);
            if !alive {
                break;
            }
            if received == 0 {
                // No datagrams for a receive timeout: the spare record batches a burst needed
                // are freed.
                out.pool.shrink(1);
            }
            if now >= next_expire {
                pipeline.expire(now);
                next_expire = now + 1_000_000;
                if let Ok(mut s) = slot.stats.lock() {
                    *s = pipeline.stats();
                }
            }
            if out
                .drain(&mut pipeline, &encoder, &mut buf, &shared.records_too_large)
                .is_err()
            {
                break;
            }
        }
        let now = now_us();
        inlet.close(&mut |d: &[u8], dg: &Datagram<'_>| pipeline.decoded(d, dg, now));
        pipeline.finish(now_us());
        let _ = out.drain(&mut pipeline, &encoder, &mut buf, &shared.records_too_large);
        if let Ok(mut s) = slot.stats.lock() {
            *s = pipeline.stats();
        }
    }
}
