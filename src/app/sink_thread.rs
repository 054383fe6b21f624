//! The sink thread and the way to it: records encoded by the workers (or by replay) travel in
//! pooled batches over one bounded queue to the one thread that owns the sink.

use crate::config::OutputArgs;
use crate::http::Exchange;
use crate::ingest::{Batch, BatchPool};
use crate::record::Encoder;
use crate::sink::kafka::{KafkaSettings, KafkaSink};
use crate::sink::spool::SpoolConfig;
use crate::sink::{Flushed, JsonLines, Sink, SinkError, SinkStats};
use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Records a worker hands to the sink thread at once, at most.
pub(super) const RECORDS_PER_BATCH: usize = 64;
/// Bytes of records in a batch after which it is handed over, however few records it holds
/// (records may reach `--max-record-bytes`, 1 MB by default).
pub(super) const RECORD_BATCH_BYTES: usize = 256 * 1024;
/// Record batches the sink thread's queue holds: with the two limits above, about 8 MiB of
/// records (plus one record per batch) wait for the sink at most. Past that the workers wait,
/// their queues fill, then the receive sockets' queues, whose drops the kernel counts.
pub(super) const RECORD_QUEUE_BATCHES: usize = 32;

/// Opens the configured sink.
pub(super) fn open_sink(out: &OutputArgs, stats: Arc<SinkStats>) -> Result<Box<dyn Sink>> {
    match &out.kafka_brokers {
        Some(brokers) => {
            let settings = KafkaSettings {
                brokers: brokers.clone(),
                topic: out.topic.clone(),
                batch_size: out.batch_size,
                batch_time: Duration::from_secs_f64(out.batch_time),
                compression: out.compression,
                options: out.kafka_options()?,
                spool: SpoolConfig {
                    max_bytes: out.spool_max_bytes,
                    ..SpoolConfig::new(&out.spool_dir)
                },
                spool_grace: Duration::from_secs_f64(out.spool_grace),
                spool_always: out.spool_always,
            };
            Ok(Box::new(KafkaSink::new(&settings, stats).with_context(
                || {
                    format!(
                        "starting Kafka delivery (spool at {})",
                        out.spool_dir.display()
                    )
                },
            )?))
        }
        None => Ok(Box::new(
            JsonLines::open(&out.output, stats)
                .with_context(|| format!("opening --output {}", out.output))?,
        )),
    }
}

/// Encodes one exchange, hands the record to `deliver` and recycles the exchange's buffers: the
/// one path from an exchange to a sink, for the daemon and for replay. A record too large for
/// any payload is counted in `records_too_large`, not sent.
pub(super) fn deliver_record(
    ex: Exchange,
    encoder: &Encoder,
    buf: &mut Vec<u8>,
    records_too_large: &AtomicU64,
    deliver: &mut impl FnMut(u64, &[u8]) -> Result<(), SinkError>,
) -> Result<(), SinkError> {
    let delivered = match encoder.encode(&ex, buf) {
        Ok(()) => deliver(ex.connection_id, buf),
        Err(_) => {
            records_too_large.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    };
    // Its buffers serve the thread's next messages.
    ex.recycle();
    delivered
}

/// A worker's encoded records on their way to the sink thread: copied into a pooled batch and
/// handed over [`RECORDS_PER_BATCH`] or [`RECORD_BATCH_BYTES`] at a time, whichever comes first,
/// and whatever is left after each drain.
pub(super) struct RecordsOut {
    pub(super) batch: Batch,
    pub(super) pool: BatchPool,
    pub(super) tx: Sender<Batch>,
}

impl RecordsOut {
    pub(super) fn push(&mut self, key: u64, record: &[u8]) -> Result<(), SinkError> {
        self.batch.push_tagged(key, record);
        if self.batch.len() < RECORDS_PER_BATCH && self.batch.bytes() < RECORD_BATCH_BYTES {
            return Ok(());
        }
        self.flush()
    }

    /// Encodes the pipeline's finished exchanges into batches and hands over what is left.
    /// Records too large for any payload are counted in `records_too_large` as they happen, so
    /// a running daemon shows them.
    pub(super) fn drain(
        &mut self,
        pipeline: &mut crate::pipeline::Pipeline,
        encoder: &Encoder,
        buf: &mut Vec<u8>,
        records_too_large: &AtomicU64,
    ) -> Result<(), SinkError> {
        let mut push = |k: u64, r: &[u8]| self.push(k, r);
        for ex in pipeline.exchanges() {
            deliver_record(ex, encoder, buf, records_too_large, &mut push)?;
        }
        self.flush()
    }

    pub(super) fn flush(&mut self) -> Result<(), SinkError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.batch, self.pool.take());
        self.tx
            .send(full)
            .map_err(|_| SinkError::Io(std::io::ErrorKind::BrokenPipe.into()))
    }
}

/// The sink thread: sends every batch's records, runs the sink's housekeeping when the queue is
/// empty (and at least every 100 ms), and flushes once the workers are gone.
pub(super) fn sink_loop(
    mut sink: Box<dyn Sink>,
    records: Receiver<Batch>,
    pool: &BatchPool,
    flush: Duration,
) -> Result<()> {
    // Housekeeping (delivery reports, the grace check, spool writes) runs whenever the queue is
    // empty, and at least this often under a load that never lets it empty.
    const IDLE_EVERY: Duration = Duration::from_millis(100);
    let mut last_idle = Instant::now();
    loop {
        match records.recv_timeout(IDLE_EVERY) {
            Ok(batch) => {
                for (key, record) in batch.iter_tagged() {
                    sink.send(key, record)?;
                }
                pool.give(batch);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if records.is_empty() || last_idle.elapsed() >= IDLE_EVERY {
            sink.idle()?;
            last_idle = Instant::now();
        }
    }
    // By design: undelivered records wait in the spool for the next start.
    if let Flushed::Spooled { records, dir } = sink.flush(flush)? {
        tracing::warn!(records, dir = %dir.display(), "left in the spool for the next start");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    #[test]
    fn record_batches_are_bounded_in_count_and_bytes() {
        let (tx, rx) = bounded::<Batch>(RECORD_QUEUE_BATCHES);
        let mut out = RecordsOut {
            batch: Batch::default(),
            pool: BatchPool::new(2, RECORDS_PER_BATCH, 1024),
            tx,
        };
        // Small records: handed over 64 at a time.
        for i in 0..RECORDS_PER_BATCH as u64 * 2 + 5 {
            out.push(i, b"{}").unwrap();
        }
        let sizes: Vec<usize> = rx.try_iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [RECORDS_PER_BATCH, RECORDS_PER_BATCH]);
        out.flush().unwrap();
        assert_eq!(rx.try_iter().map(|b| b.len()).collect::<Vec<_>>(), [5]);
        // Large records: handed over once the batch passes the byte limit.
        let big = vec![b'x'; RECORD_BATCH_BYTES / 2 + 1];
        for i in 0..5 {
            out.push(i, &big).unwrap();
        }
        let batches: Vec<Batch> = rx.try_iter().collect();
        assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), [2, 2]);
        assert!(batches.iter().all(|b| b.bytes() == 2 * big.len()));
        assert_eq!(out.batch.len(), 1, "the fifth waits for more");
    }
}
