//! A worker thread: one pipeline shard, run to completion on each batch of its flows' datagrams.

use super::sink_thread::RecordsOut;
use super::{WorkerSlot, now_us};
use crate::ingest::{Batch, BatchPool};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::record::{Encoder, RecordConfig};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A worker: owns one pipeline shard, takes the batches of datagrams of its flows, and sends
/// their records to the sink thread.
pub(super) struct Worker<'a> {
    pub(super) rx: Receiver<Batch>,
    pub(super) pool: BatchPool,
    pub(super) records: Sender<Batch>,
    pub(super) record_pool: BatchPool,
    /// What the worker publishes: its counters, heartbeat and queue fill.
    pub(super) slot: &'a WorkerSlot,
    pub(super) records_too_large: &'a AtomicU64,
}

impl Worker<'_> {
    pub(super) fn run(
        self,
        pcfg: &PipelineConfig,
        filter: Arc<crate::filter::Filter>,
        rcfg: RecordConfig,
    ) {
        let Worker {
            rx,
            pool,
            records,
            record_pool,
            slot,
            records_too_large,
        } = self;
        let mut pipeline = Pipeline::new(pcfg).with_filter(filter);
        let encoder = Encoder::new(rcfg);
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut next_expire = 0;
        let mut out = RecordsOut {
            batch: record_pool.take(),
            pool: record_pool,
            tx: records,
        };
        let take = |pipeline: &mut Pipeline, batch: Batch, now: u64| {
            for d in batch.iter() {
                pipeline.datagram(d, now);
            }
            pool.give(batch);
        };
        loop {
            let msg = rx.recv_timeout(Duration::from_millis(200));
            let now = now_us();
            slot.heartbeat.store(now, Ordering::Relaxed);
            slot.queue_fill.store(rx.len() as u64, Ordering::Relaxed);
            match msg {
                Ok(batch) => {
                    take(&mut pipeline, batch, now);
                    // Take whatever else is queued before looking at the clock again.
                    for batch in rx.try_iter().take(16) {
                        take(&mut pipeline, batch, now);
                    }
                }
                // No datagrams for 200 ms: the spare record batches a burst needed are freed.
                Err(RecvTimeoutError::Timeout) => out.pool.shrink(1),
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if now >= next_expire {
                pipeline.expire(now);
                next_expire = now + 1_000_000;
                if let Ok(mut s) = slot.stats.lock() {
                    *s = pipeline.stats();
                }
            }
            if out
                .drain(&mut pipeline, &encoder, &mut buf, records_too_large)
                .is_err()
            {
                break;
            }
        }
        pipeline.finish(now_us());
        let _ = out.drain(&mut pipeline, &encoder, &mut buf, records_too_large);
        if let Ok(mut s) = slot.stats.lock() {
            *s = pipeline.stats();
        }
    }
}
