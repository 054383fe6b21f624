//! Kafka delivery that loses nothing while the disk has room.
//!
//! Delivery model. Records are produced through librdkafka (rdkafka's bundled build) with
//! `acks=all` and idempotence on, so librdkafka's own retries neither duplicate nor reorder records;
//! the message key is the connection id, so one connection's records stay in order within a
//! partition. librdkafka copies each payload, so the caller's encode buffer is reused. Every
//! record's fate comes back through the delivery callback, which only forwards it to the sink
//! thread as an [`Event`]; all decisions and all disk IO happen in the sink thread.
//!
//! Kafka is *healthy* while it acknowledges. It is taken as unavailable when librdkafka reports all
//! brokers down, or when records are in flight and nothing was acknowledged for `--spool-grace`.
//! Then the records still inside librdkafka's queue are purged, and their delivery reports (and
//! those of records that failed retriably) put them in the on-disk [`Spool`]; new records go to the
//! spool directly. So at most the last grace window is in memory only, should the process be
//! killed. `--spool-always` writes every record to the spool first (fsynced in batches) and
//! produces only from the spool: no window at all, for the cost of writing every record to disk.
//!
//! While Kafka is unavailable one spooled record at a time is produced as a canary; its
//! acknowledgement marks Kafka healthy again, and the spool then drains in order, a bounded number
//! of records in flight, while new records keep flowing. A broker that fences the producer
//! instance (refuses its epoch, as tansu does after librdkafka bumps the epoch over records purged
//! in flight) refuses every later record too: once nothing is in flight, a new producer instance
//! (a new producer id) replaces it. A spooled record leaves the spool only
//! when Kafka acknowledged it, so delivery is at least once: a record in flight when Kafka went
//! away may arrive twice.
//!
//! A full librdkafka queue is backpressure: the record is taken back and offered again, never
//! dropped. A record the broker can never take (too large, invalid) is a permanent failure: counted
//! by kind, logged (rate-limited), not retried. When the spool is full, new records are dropped,
//! counted and logged (rate-limited); nothing already spooled is touched.

mod health;

use super::spool::{Spool, SpoolConfig, SpoolError, SpoolPos};
use super::{Flushed, RateLimit, Sink, SinkError, SinkStats};
use crossbeam_channel::{Receiver, Sender, unbounded};
use health::{Change, ErrorClass, Fate, Health, Now, Route, Seen};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::{ClientContext, Message};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Compression codecs librdkafka offers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
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
    pub compression: Compression,
    /// librdkafka settings passed through as given (TLS, SASL, timeouts...), applied last.
    pub options: Vec<(String, String)>,
    pub spool: SpoolConfig,
    /// Time without any acknowledgement, while records are in flight, after which Kafka is taken
    /// as unavailable and records go to the spool.
    pub spool_grace: Duration,
    /// Write every record to the spool before producing it.
    pub spool_always: bool,
}

/// The producer's librdkafka settings: the one place they are written, for the sink and for
/// `examples/produce_baseline.rs`, which measures rdkafka alone with them. `options`
/// (`--kafka-option`: TLS, SASL, timeouts...) are applied last, so they override.
pub fn producer_config(
    brokers: &str,
    compression: &str,
    linger: Duration,
    batch_size: usize,
    options: &[(String, String)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", compression)
        .set("linger.ms", linger.as_millis().to_string())
        .set("batch.num.messages", batch_size.to_string())
        // librdkafka's default message.max.bytes (1,000,000) counts the key too, so a record
        // of the default --max-record-bytes would be refused; 1 MiB stays under the brokers'
        // default limit (message.max.bytes 1,048,588).
        .set("message.max.bytes", "1048576")
        // Records that cannot be delivered come back to the spool instead of waiting the
        // default five minutes in memory.
        .set("message.timeout.ms", "30000");
    for (k, v) in options {
        config.set(k, v);
    }
    config
}

/// What a delivery report or a client error tells the sink thread.
#[derive(Debug)]
pub(crate) enum Event {
    Delivered {
        pos: Option<SpoolPos>,
    },
    Failed {
        key: u64,
        payload: Vec<u8>,
        pos: Option<SpoolPos>,
        error: KafkaError,
    },
    BrokersDown,
}

/// Per-record value carried through librdkafka to the delivery callback.
pub struct Opaque {
    key: u64,
    /// Where the record is in the spool, when it was produced from there.
    pos: Option<SpoolPos>,
}

/// Forwards delivery reports and client errors to the sink thread.
pub(crate) struct Forwarder {
    events: Sender<Event>,
    error_log: RateLimit,
}

impl ClientContext for Forwarder {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            let _ = self.events.send(Event::BrokersDown);
        }
        if self.error_log.ready() {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl ProducerContext for Forwarder {
    type DeliveryOpaque = Box<Opaque>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Box<Opaque>) {
        let event = match result {
            Ok(_) => Event::Delivered { pos: opaque.pos },
            Err((error, msg)) => Event::Failed {
                key: opaque.key,
                payload: msg.payload().unwrap_or_default().to_vec(),
                pos: opaque.pos,
                error: error.clone(),
            },
        };
        let _ = self.events.send(event);
    }
}

/// Fetches the topic's metadata every 2 s and records when it last succeeded: readiness wants
/// proof that Kafka answers even while no record is in flight. Ends with the sink.
fn spawn_metadata_probe(
    producer: Arc<ThreadedProducer<Forwarder>>,
    topic: String,
    stats: Arc<SinkStats>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kafka-probe".into())
        .spawn(move || {
            while Arc::strong_count(&producer) > 1 {
                if producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .is_ok()
                {
                    SinkStats::set(&stats.metadata_ok_at, super::epoch_secs());
                }
                for _ in 0..20 {
                    if Arc::strong_count(&producer) == 1 {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
    Ok(())
}

/// Creates a producer instance and its metadata probe.
fn start_producer(
    config: &ClientConfig,
    events: Sender<Event>,
    topic: &str,
    stats: &Arc<SinkStats>,
) -> Result<Arc<ThreadedProducer<Forwarder>>, SinkError> {
    let producer: ThreadedProducer<Forwarder> = config.create_with_context(Forwarder {
        events,
        error_log: RateLimit::new(Duration::from_secs(10)),
    })?;
    let producer = Arc::new(producer);
    spawn_metadata_probe(producer.clone(), topic.to_owned(), stats.clone())?;
    Ok(producer)
}

/// The spool's size and damage counters, for `/metrics`.
fn publish_spool(stats: &SinkStats, spool: &Spool) {
    SinkStats::set(&stats.spool_bytes, spool.bytes());
    SinkStats::set(&stats.spool_pending, spool.pending());
    let damage = spool.stats();
    SinkStats::set(&stats.spool_corrupt_frames, damage.corrupt_frames);
    SinkStats::set(&stats.spool_torn_bytes, damage.torn_bytes);
}

pub struct KafkaSink {
    producer: Arc<ThreadedProducer<Forwarder>>,
    /// What a new producer instance is created from.
    config: ClientConfig,
    events_tx: Sender<Event>,
    topic: String,
    events: Receiver<Event>,
    spool: Spool,
    spool_dir: std::path::PathBuf,
    /// Every decision about Kafka's health, the spool and the producer instance.
    health: Health,
    spool_dirty: bool,
    stats: Arc<SinkStats>,
    drop_log: RateLimit,
    fail_log: RateLimit,
}

impl KafkaSink {
    pub fn new(settings: &KafkaSettings, stats: Arc<SinkStats>) -> Result<KafkaSink, SinkError> {
        let spool = Spool::open(settings.spool.clone())?;
        let recovered = spool.pending();
        if recovered > 0 {
            tracing::info!(
                records = recovered,
                dir = %settings.spool.dir.display(),
                "spool holds records from an earlier run; they are delivered first"
            );
        }
        let (tx, events) = unbounded();
        let config = producer_config(
            &settings.brokers,
            settings.compression.as_str(),
            settings.batch_time,
            settings.batch_size,
            &settings.options,
        );
        let producer = start_producer(&config, tx.clone(), &settings.topic, &stats)?;
        publish_spool(&stats, &spool);
        SinkStats::set(&stats.spool_max_bytes, settings.spool.max_bytes);
        SinkStats::set(&stats.destination_up, 1);
        Ok(KafkaSink {
            producer,
            config,
            events_tx: tx,
            topic: settings.topic.clone(),
            events,
            spool,
            spool_dir: settings.spool.dir.clone(),
            health: Health::new(settings.spool_grace, settings.spool_always, Now::read()),
            spool_dirty: false,
            stats,
            drop_log: RateLimit::new(Duration::from_secs(10)),
            fail_log: RateLimit::new(Duration::from_secs(10)),
        })
    }

    /// Applies a transition decided by [`Health`]: the one place each is logged and shown.
    fn apply(&mut self, change: Change, error: Option<&KafkaError>) {
        match change {
            Change::Unavailable(why) => {
                tracing::warn!(
                    why = why.as_str(),
                    "kafka unavailable: records go to the spool"
                );
                SinkStats::set(&self.stats.destination_up, 0);
                // Whatever librdkafka still holds comes back through delivery reports and is
                // spooled.
                self.producer
                    .purge(PurgeConfig::default().queue().inflight());
            }
            Change::Recovered(how) => {
                match how {
                    health::How::Acknowledged => {
                        tracing::info!("kafka acknowledges again: draining the spool")
                    }
                    health::How::MetadataAnswers => tracing::info!("kafka answers again"),
                }
                SinkStats::set(&self.stats.destination_up, 1);
            }
            Change::Fenced => {
                let error = error.map(ToString::to_string).unwrap_or_default();
                tracing::warn!(
                    error,
                    "kafka fenced the producer: a new producer instance takes over"
                );
            }
        }
    }

    /// Hands a record to librdkafka, waiting while its queue is full.
    fn produce(
        &mut self,
        key: u64,
        payload: &[u8],
        pos: Option<SpoolPos>,
    ) -> Result<(), SinkError> {
        let mut now = Now::read();
        self.health
            .before_produce(now, self.producer.in_flight_count() as usize);
        // The key as decimal text, formatted on the stack (not a String per record).
        let mut key_buf = itoa::Buffer::new();
        let key_text = key_buf.format(key);
        let mut opaque = Box::new(Opaque { key, pos });
        loop {
            let record = BaseRecord::with_opaque_to(&self.topic, opaque)
                .key(key_text)
                .payload(payload);
            let error = match self.producer.send(record) {
                Ok(()) => {
                    SinkStats::add(&self.stats.produced, 1);
                    self.health.produced(now, pos.is_some());
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    SinkStats::add(&self.stats.queue_full, 1);
                    opaque = back.delivery_opaque;
                    // A broker that takes connections and never acknowledges fills the queue:
                    // past the grace, what librdkafka holds and this record go to the spool
                    // instead of waiting out message.timeout.ms here while datagrams are lost.
                    self.pump()?;
                    self.check_grace()?;
                    match self.health.queue_full(pos.is_some()) {
                        None => std::thread::sleep(Duration::from_millis(5)),
                        Some(fate) => return self.settle(fate, key, payload, pos, None),
                    }
                    now = Now::read();
                    continue;
                }
                Err((error, _)) => error,
            };
            let fate = self
                .health
                .not_produced(ErrorClass::of(&error), pos.is_some());
            self.settle(fate, key, payload, pos, Some(&error))?;
            return match fate {
                Fate::Refused(_) => Ok(()),
                // Neither refused for good nor backpressure: the caller hears of it, and the
                // record is kept in the spool meanwhile.
                Fate::Rewind | Fate::Spool => Err(SinkError::Kafka(error)),
            };
        }
    }

    /// Carries out a record's [`Fate`].
    fn settle(
        &mut self,
        fate: Fate,
        key: u64,
        payload: &[u8],
        pos: Option<SpoolPos>,
        error: Option<&KafkaError>,
    ) -> Result<(), SinkError> {
        match fate {
            Fate::Refused(class) => {
                SinkStats::add(&self.stats.failed, 1);
                let kind = match class {
                    ErrorClass::TooLarge => &self.stats.failed_too_large,
                    _ => &self.stats.failed_invalid,
                };
                SinkStats::add(kind, 1);
                if let Some(pos) = pos {
                    self.spool.ack(pos)?;
                }
                if self.fail_log.ready() {
                    let error = error.map(ToString::to_string).unwrap_or_default();
                    tracing::warn!(
                        error,
                        "record refused by kafka for good; counted, not retried"
                    );
                }
                Ok(())
            }
            Fate::Spool => self.spool_record(key, payload),
            // Already in the spool: handed out again later.
            Fate::Rewind => Ok(()),
        }
    }

    /// Puts a record in the spool, or counts it dropped when the spool is full.
    fn spool_record(&mut self, key: u64, payload: &[u8]) -> Result<(), SinkError> {
        match self.spool.append(key, payload) {
            Ok(_) => {
                SinkStats::add(&self.stats.spooled, 1);
                self.spool_dirty = true;
                Ok(())
            }
            Err(SpoolError::Full) => {
                SinkStats::add(&self.stats.dropped_spool_full, 1);
                if self.drop_log.ready() {
                    tracing::error!(
                        dir = %self.spool_dir.display(),
                        "spool full: dropping new records (counted in dropped_spool_full)"
                    );
                }
                Ok(())
            }
            // Larger than a spool frame can hold (far past any broker's limit): the record
            // fails alone, as one Kafka refuses for its size, and the daemon goes on.
            Err(SpoolError::TooLarge { len, max }) => {
                SinkStats::add(&self.stats.failed, 1);
                SinkStats::add(&self.stats.failed_too_large, 1);
                if self.fail_log.ready() {
                    tracing::warn!(
                        len,
                        max,
                        "record too large for the spool; counted, not kept"
                    );
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Applies every delivery report received so far.
    fn pump(&mut self) -> Result<(), SinkError> {
        // Spooled records acknowledged by Kafka: marked in the spool's ack log with one write.
        let mut acked = Vec::new();
        // One clock reading for the reports at hand: they are applied without waiting.
        let now = Now::read();
        while let Ok(event) = self.events.try_recv() {
            match event {
                Event::Delivered { pos } => {
                    SinkStats::add(&self.stats.delivered, 1);
                    if let Some(pos) = pos {
                        SinkStats::add(&self.stats.replayed, 1);
                        acked.push(pos);
                    }
                    if let Some(change) = self.health.delivered(now, pos.is_some()) {
                        self.apply(change, None);
                    }
                }
                Event::Failed {
                    key,
                    payload,
                    pos,
                    error,
                } => {
                    let (fate, changes) =
                        self.health
                            .failed(now, pos.is_some(), ErrorClass::of(&error));
                    for change in changes {
                        self.apply(change, Some(&error));
                    }
                    self.settle(fate, key, &payload, pos, Some(&error))?;
                }
                Event::BrokersDown => {
                    if let Some(change) = self.health.brokers_down(now) {
                        self.apply(change, None);
                    }
                }
            }
        }
        self.spool.ack_all(acked)?;
        if self.health.take_rewind() {
            self.spool.rewind();
        }
        Ok(())
    }

    /// The grace check (call after [`Self::pump`], so that the last reports count); when it
    /// takes Kafka as unavailable, the purged records' reports are applied at once.
    fn check_grace(&mut self) -> Result<(), SinkError> {
        let in_flight = self.producer.in_flight_count() as usize;
        if let Some(change) = self.health.check_grace(Now::read(), in_flight) {
            self.apply(change, None);
            self.pump()?;
        }
        Ok(())
    }

    /// Housekeeping: reports, the health decisions, spool writes and draining.
    fn tick(&mut self) -> Result<(), SinkError> {
        self.pump()?;
        let seen = Seen {
            in_flight: self.producer.in_flight_count() as usize,
            spool_pending: self.spool.pending(),
            metadata_ok_at: SinkStats::get(&self.stats.metadata_ok_at),
        };
        if let Some(change) = self.health.tick(Now::read(), seen) {
            self.apply(change, None);
            self.pump()?;
        }
        if self
            .health
            .replace_producer(self.producer.in_flight_count() as usize)
        {
            // The old instance goes with its last reference (its metadata probe stops with it).
            self.producer = start_producer(
                &self.config,
                self.events_tx.clone(),
                &self.topic,
                &self.stats,
            )?;
            self.health.producer_replaced();
        }
        if self.spool_dirty {
            // fdatasync in batches: the spool survives a host crash, not only a process kill.
            self.spool.flush(true)?;
            self.spool_dirty = false;
        }
        self.drain()?;
        publish_spool(&self.stats, &self.spool);
        Ok(())
    }

    /// Produces spooled records as far as [`Health::drain_budget`] allows.
    fn drain(&mut self) -> Result<(), SinkError> {
        let now = Now::read();
        while self.health.drain_budget(now) > 0 {
            let Some(rec) = self.spool.read_next()? else {
                break;
            };
            self.produce(rec.key, &rec.payload, Some(rec.pos))?;
        }
        Ok(())
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, key: u64, record: &[u8]) -> Result<(), SinkError> {
        SinkStats::add(&self.stats.records, 1);
        self.pump()?;
        match self.health.route() {
            Route::Spool => self.spool_record(key, record),
            Route::Produce => self.produce(key, record, None),
        }
    }

    fn idle(&mut self) -> Result<(), SinkError> {
        self.tick()
    }

    /// Delivers what it can within `timeout`; whatever is left stays in the spool, on disk, for
    /// the next start ([`Flushed::Spooled`] says how much).
    fn flush(&mut self, timeout: Duration) -> Result<Flushed, SinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.tick()?;
            let in_flight = self.producer.in_flight_count() as usize;
            if self.health.flush_may_stop(in_flight, self.spool.pending()) && !self.spool_dirty {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Out of time or Kafka away: what librdkafka still holds goes to the spool.
        if self.producer.in_flight_count() > 0 {
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            let until = Instant::now() + Duration::from_secs(2);
            while (self.producer.in_flight_count() > 0 || !self.events.is_empty())
                && Instant::now() < until
            {
                self.pump()?;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.pump()?;
        self.spool.flush(true)?;
        publish_spool(&self.stats, &self.spool);
        match self.spool.pending() {
            0 => Ok(Flushed::All),
            records => Ok(Flushed::Spooled {
                records,
                dir: self.spool_dir.clone(),
            }),
        }
    }
}
