//! Kafka delivery through librdkafka (rdkafka's bundled build).
//!
//! Delivery model: `send` hands a record to librdkafka's queue (librdkafka copies the payload, so
//! the caller's encode buffer is reused); librdkafka batches by `linger.ms` / `batch.num.messages`,
//! retries transient errors itself, and reports each record's fate to the delivery callback, which
//! counts acknowledgements and permanent failures. A full queue is backpressure: the record is taken
//! back and offered again after serving callbacks, never dropped. The producer is idempotent with
//! `acks=all`, so librdkafka's own retries cannot duplicate or reorder records.

use super::{Sink, SinkError, SinkStats};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts deliveries.
pub struct DeliveryCounter {
    stats: Arc<SinkStats>,
    last_error_log: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => SinkStats::add(&self.stats.delivered, 1),
            Err((e, msg)) => self.failed(e, msg.topic()),
        }
    }
}

impl DeliveryCounter {
    /// Counts a record lost for good and logs it, one line per 10 s at most: a dead broker fails
    /// every record.
    fn failed(&self, e: &KafkaError, topic: &str) {
        SinkStats::add(&self.stats.failed, 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_error_log.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_error_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %e, topic, "kafka delivery failed");
        }
    }
}

/// Settings of the Kafka sink.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub batch_size: usize,
    pub batch_time: Duration,
}

pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    stats: Arc<SinkStats>,
}

impl KafkaSink {
    pub fn new(settings: &KafkaSettings, stats: Arc<SinkStats>) -> Result<KafkaSink, SinkError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", settings.batch_time.as_millis().to_string())
            .set("batch.num.messages", settings.batch_size.to_string())
            // librdkafka's default (1,000,000 bytes, key included) refuses a record of the
            // default --max-record-bytes (1,000,000) plus its key. 1 MiB takes it and stays under
            // the brokers' default limit (message.max.bytes 1,048,588).
            .set("message.max.bytes", "1048576")
            .create_with_context(DeliveryCounter {
                stats: stats.clone(),
                last_error_log: AtomicU64::new(0),
            })?;
        Ok(KafkaSink {
            producer,
            topic: settings.topic.clone(),
            stats,
        })
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, key: u64, record: &[u8]) -> Result<(), SinkError> {
        SinkStats::add(&self.stats.records, 1);
        let key = key.to_string();
        let mut rec = BaseRecord::to(&self.topic).key(&key).payload(record);
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    SinkStats::add(&self.stats.queue_full, 1);
                    std::thread::sleep(Duration::from_millis(10));
                    rec = back;
                }
                // This record only (a larger --max-record-bytes than Kafka takes): count it as
                // failed like a refused delivery; failing the sink would stop the whole daemon.
                Err((
                    e @ KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                    _,
                )) => {
                    self.producer.context().failed(&e, &self.topic);
                    return Ok(());
                }
                Err((e, _)) => {
                    SinkStats::add(&self.stats.failed, 1);
                    return Err(e.into());
                }
            }
        }
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), SinkError> {
        let _ = self.producer.flush(timeout);
        let left = u64::try_from(self.producer.in_flight_count()).unwrap_or(0);
        if left > 0 {
            return Err(SinkError::Undelivered(left));
        }
        Ok(())
    }
}
