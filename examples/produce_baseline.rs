//! A standalone rdkafka producer: the baseline of `benches/line-rate.sh` for producer CPU per
//! record.
//!
//! Reads JSON lines (records as `mirror-receiver replay` prints them) from a file or stdin, and
//! produces each to a topic with the producer settings mirror-receiver's Kafka sink uses, built
//! by the same function (`sink::kafka::producer_config`): `acks=all`, `enable.idempotence=true`,
//! `compression.type` (lz4), `linger.ms` (100), `batch.num.messages` (1000),
//! `message.max.bytes=1048576`, `message.timeout.ms=30000`; a ThreadedProducer, the key a u64 in decimal (the receiver keys by
//! its connection id; records carry no ports, so here it is a hash of `ip`, `destIp` and
//! `akto_vxlan_id`), payload the line as read. It waits until every record is acknowledged and
//! exits non-zero if any failed. Prints `records=N delivered=D failed=F`.
//!
//! `--dry-run` does everything but producing (reads, parses each line as JSON, computes the key):
//! its CPU, subtracted from a real run's, leaves the producer's own.
//!
//! Usage: `cargo run --release --example produce_baseline -- --brokers HOST:PORT --topic T
//! [--compression lz4] [--linger-ms 100] [--batch-size 1000] [--dry-run] [FILE|-]`

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
struct Counter {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Counter {}

impl ProducerContext for Counter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A standalone rdkafka producer of JSON-lines records, with the receiver's producer settings.
#[derive(clap::Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "akto.api.logs")]
    topic: String,
    #[arg(long, default_value = "lz4")]
    compression: String,
    #[arg(long, default_value_t = 100)]
    linger_ms: u64,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Read and parse the records only, produce nothing.
    #[arg(long)]
    dry_run: bool,
    /// JSON lines to produce ("-": stdin).
    #[arg(default_value = "-")]
    input: String,
}

/// The record's key: a hash of the fields that stand for its connection, in decimal.
fn key_of(line: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_str(line)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in ["ip", "destIp", "akto_vxlan_id"] {
        v.get(f).and_then(|x| x.as_str()).unwrap_or("").hash(&mut h);
    }
    Ok(h.finish().to_string())
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let input: Box<dyn Read> = if args.input == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&args.input)?)
    };
    let reader = BufReader::with_capacity(1 << 20, input);

    let producer: Option<ThreadedProducer<Counter>> = if args.dry_run {
        None
    } else {
        Some(
            mirror_receiver::sink::kafka::producer_config(
                &args.brokers,
                &args.compression,
                Duration::from_millis(args.linger_ms),
                args.batch_size,
                &[],
            )
            .create_with_context(Counter::default())?,
        )
    };

    let mut records = 0u64;
    let mut checksum = 0u64;
    for line in reader.lines() {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let key = key_of(&line)?;
        records += 1;
        let Some(p) = &producer else {
            checksum = checksum.wrapping_add(key.len() as u64);
            continue;
        };
        loop {
            match p.send::<String, String>(BaseRecord::to(&args.topic).key(&key).payload(&line)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => anyhow::bail!("produce: {e}"),
            }
        }
    }
    let Some(p) = producer else {
        println!("records={records} delivered=0 failed=0 dry_run=1 ({checksum})");
        return Ok(());
    };
    p.flush(Duration::from_secs(60))?;
    let c = p.context();
    let (delivered, failed) = (
        c.delivered.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
    );
    println!("records={records} delivered={delivered} failed={failed}");
    if delivered != records {
        anyhow::bail!("{} of {records} records not delivered", records - delivered);
    }
    Ok(())
}
