//! Where records go: Kafka ([`kafka::KafkaSink`]) or JSON lines on stdout or a file
//! ([`JsonLines`]). A sink takes encoded records with a key (the connection id, so a connection's
//! records stay in order within a Kafka partition) and flushes on shutdown.

pub mod kafka;
pub mod spool;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Delivery counters shared between a sink and whoever reports them.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records handed to the sink.
    pub records: AtomicU64,
    /// Records handed to librdkafka (new and replayed from the spool).
    pub produced: AtomicU64,
    /// Records the destination confirmed (Kafka acknowledgements; written lines).
    pub delivered: AtomicU64,
    /// Records that failed for good (too large for the broker, invalid).
    pub failed: AtomicU64,
    /// Of those, records too large for the broker (or librdkafka's message.max.bytes).
    pub failed_too_large: AtomicU64,
    /// Of those, records the broker refused as invalid.
    pub failed_invalid: AtomicU64,
    /// Records written to the spool because Kafka could not take them (or `--spool-always`).
    pub spooled: AtomicU64,
    /// Spooled records Kafka acknowledged.
    pub replayed: AtomicU64,
    /// New records dropped because the spool was full.
    pub dropped_spool_full: AtomicU64,
    /// Times a full producer queue made a record wait (backpressure, not loss).
    pub queue_full: AtomicU64,
    /// Bytes of the spool on disk (gauge).
    pub spool_bytes: AtomicU64,
    /// Records in the spool not yet acknowledged (gauge).
    pub spool_pending: AtomicU64,
    /// The spool's size limit (0 without a spool).
    pub spool_max_bytes: AtomicU64,
    /// Spool frames found damaged (bad checksum, impossible length) and skipped, since start.
    pub spool_corrupt_frames: AtomicU64,
    /// Spool bytes truncated away (a torn last write) or skipped as unreadable, since start.
    pub spool_torn_bytes: AtomicU64,
    /// 1 while the destination takes records (Kafka acknowledges; the file is writable).
    pub destination_up: AtomicU64,
    /// Epoch second of the last successful Kafka metadata fetch (0: never; unused for files).
    pub metadata_ok_at: AtomicU64,
}

/// Seconds since the epoch.
pub fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SinkStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Lets a repeated log line through at most once per period.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl RateLimit {
    pub fn new(period: Duration) -> RateLimit {
        RateLimit {
            period,
            last: std::sync::Mutex::new(None),
        }
    }

    /// True when the line may be logged now.
    pub fn ready(&self) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        if last.is_some_and(|l| now.duration_since(l) < self.period) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing records failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("spool: {0}")]
    Spool(#[from] spool::SpoolError),
}

/// How a flush ended. Both are successes: nothing is lost either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flushed {
    /// The destination has every record.
    All,
    /// The destination did not take everything before the flush ended; the rest is safe in the
    /// spool at `dir` and is delivered on the next start.
    Spooled {
        records: u64,
        dir: std::path::PathBuf,
    },
}

/// A destination for encoded records.
pub trait Sink: Send {
    fn send(&mut self, key: u64, record: &[u8]) -> Result<(), SinkError>;
    /// Delivers everything buffered, waiting at most `timeout`.
    fn flush(&mut self, timeout: Duration) -> Result<Flushed, SinkError>;
    /// No record is waiting: a chance to push out what is buffered without blocking. A JSON-lines
    /// file is flushed here so records appear while traffic is quiet, not only at shutdown.
    fn idle(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Records as JSON lines (the embedded mode: no Kafka needed).
pub struct JsonLines {
    out: std::io::BufWriter<Box<dyn Write + Send>>,
    stats: std::sync::Arc<SinkStats>,
}

impl JsonLines {
    /// `path` is a file to append to, or `-` for stdout.
    pub fn open(path: &str, stats: std::sync::Arc<SinkStats>) -> std::io::Result<JsonLines> {
        let out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        SinkStats::set(&stats.destination_up, 1);
        Ok(JsonLines {
            out: std::io::BufWriter::with_capacity(256 * 1024, out),
            stats,
        })
    }
}

impl Sink for JsonLines {
    fn send(&mut self, _key: u64, record: &[u8]) -> Result<(), SinkError> {
        SinkStats::add(&self.stats.records, 1);
        self.out.write_all(record)?;
        self.out.write_all(b"\n")?;
        SinkStats::add(&self.stats.delivered, 1);
        Ok(())
    }

    fn flush(&mut self, _timeout: Duration) -> Result<Flushed, SinkError> {
        self.out.flush()?;
        Ok(Flushed::All)
    }

    fn idle(&mut self) -> Result<(), SinkError> {
        self.out.flush()?;
        Ok(())
    }
}
