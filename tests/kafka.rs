//! End to end against a real Kafka-compatible broker: tansu (<https://github.com/tansu-io/tansu>),
//! started per test with in-memory storage.
//!
//! * `replay_to_kafka_matches_json_lines`: `replay` of a real nginx capture to Kafka delivers
//!   exactly the records the JSON-lines sink writes (as a multiset), keyed by connection.
//! * `daemon_to_kafka_then_clean_shutdown`: the `run` daemon receives the same traffic as VXLAN
//!   datagrams, delivers the records while running, and exits 0 on SIGTERM.
//! * `kafka_sink_record_size_limits`: the Kafka sink takes a record of the default
//!   `max_record_bytes`, and a record too large for Kafka fails alone, not the sink.
//!
//! The broker is found through `TANSU_BIN`, then `tansu` on PATH, then `~/.cargo/bin/tansu`
//! (`cargo install tansu --locked`). Without it the tests print why and pass, unless
//! `TANSU_REQUIRED=1` (set it in CI), which turns the skip into a failure. The captures come from
//! the shared corpus at `../shared/corpus` (or `MIRROR_CORPUS_DIR`), with the same rule.

mod common;

use common::{
    Broker, Daemon, Msg, Need, TopicReader, assert_same_records, kafka_prerequisites, parse_record,
    run_ok, skip, tansu_or_skip,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Prerequisites

/// tansu and the corpus, or `None` after reporting the skip.
fn prerequisites(test: &str) -> Option<(PathBuf, PathBuf)> {
    kafka_prerequisites(
        test,
        &[
            "real/real-nginx-small.pcap",
            "vxlan/real-nginx-small.vxlan.pcap",
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Processes

/// `common::receiver()` with a spool directory of its own (a spool is locked by one process).
fn receiver() -> Command {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let spool = std::env::temp_dir().join(format!("mr-kafka-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let mut cmd = common::receiver();
    cmd.env("MIRROR_SPOOL_DIR", &spool);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Records

/// The JSON lines a replay of `capture` writes (the reference for the Kafka runs).
fn replay_json_lines(capture: &Path) -> Vec<String> {
    common::replay_json_lines(capture, Duration::from_secs(30))
}

fn field<'a>(rec: &'a serde_json::Map<String, Value>, name: &str) -> &'a str {
    rec.get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("record without {name}"))
}

/// (method, path, statusCode) of a record.
type Exchange = (String, String, String);

fn exchange(rec: &serde_json::Map<String, Value>) -> Exchange {
    (
        field(rec, "method").to_owned(),
        field(rec, "path").to_owned(),
        field(rec, "statusCode").to_owned(),
    )
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// The exchanges of each TCP connection according to the corpus oracle (tshark), in capture
/// order, for the pairs that have a response. `None` when the oracle file is absent.
fn oracle_connections(corpus: &Path, name: &str) -> Option<Vec<Vec<Exchange>>> {
    let text = std::fs::read_to_string(corpus.join("oracle").join(format!("{name}.json"))).ok()?;
    let oracle: Value = serde_json::from_str(&text).expect("oracle JSON");
    let mut conns: BTreeMap<(String, String), Vec<Exchange>> = BTreeMap::new();
    for p in oracle["pairs"].as_array().expect("oracle pairs") {
        if p["response_found"] != true {
            continue;
        }
        let s = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        conns
            .entry((s(&p["client"]), s(&p["server"])))
            .or_default()
            .push((
                s(&p["request"]["method"]),
                s(&p["request"]["uri"]),
                s(&p["response"]["status"]),
            ));
    }
    Some(sorted(conns.into_values().collect()))
}

/// Checks the message keys: decimal connection ids, one partition per key, and the records of a
/// key are exactly the exchanges of one TCP connection (per the oracle), in order.
fn check_keys(msgs: &[Msg], corpus: &Path, oracle: &str) {
    let mut by_key: BTreeMap<String, (i32, Vec<Exchange>)> = BTreeMap::new();
    for m in msgs {
        let key = m.key.as_deref().expect("message without key");
        let key = std::str::from_utf8(key).expect("UTF-8 key").to_owned();
        assert!(!key.is_empty(), "empty key");
        assert!(
            key.parse::<u64>().is_ok(),
            "key {key:?} is not a connection id"
        );
        let rec = parse_record(&m.payload);
        let entry = by_key
            .entry(key.clone())
            .or_insert_with(|| (m.partition, Vec::new()));
        assert_eq!(entry.0, m.partition, "key {key} in two partitions");
        entry.1.push(exchange(&rec));
    }
    eprintln!(
        "  {} messages under {} keys in {} partitions",
        msgs.len(),
        by_key.len(),
        by_key
            .values()
            .map(|v| v.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    match oracle_connections(corpus, oracle) {
        Some(conns) => {
            let got = sorted(by_key.into_values().map(|v| v.1).collect());
            assert_eq!(
                got, conns,
                "records grouped by Kafka key differ from the capture's connections (oracle {oracle})"
            );
        }
        None => eprintln!("  oracle/{oracle}.json absent: key grouping not checked"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn replay_to_kafka_matches_json_lines() {
    let Some((tansu, corpus)) = prerequisites("replay_to_kafka_matches_json_lines") else {
        return;
    };
    let started = Instant::now();
    let capture = corpus.join("real/real-nginx-small.pcap");
    let broker = Broker::start(&tansu);
    broker.create_topic("akto.api.logs", 3);

    let want = replay_json_lines(&capture);
    assert!(
        want.len() >= 16,
        "JSON-lines replay gave {} records",
        want.len()
    );

    // The default topic, akto.api.logs.
    let f = run_ok(
        receiver()
            .arg("replay")
            .arg(&capture)
            .args(["--kafka-brokers", &broker.bootstrap()]),
        Duration::from_secs(30),
    );
    assert!(f.stdout.is_empty(), "records on stdout with Kafka set");

    let mut reader = TopicReader::new(&broker.bootstrap(), "akto.api.logs");
    let complete = reader.read_until(want.len(), Duration::from_secs(20));
    reader.linger(Duration::from_secs(1));
    assert!(
        complete,
        "{} of {} records in Kafka\nreplay stderr:\n{}\nbroker log:\n{}",
        reader.msgs.len(),
        want.len(),
        f.stderr,
        broker.log_text()
    );

    let got: Vec<String> = reader.msgs.iter().map(|m| m.payload.clone()).collect();
    for p in &got {
        parse_record(p);
    }
    assert_same_records(got, want, "replay to Kafka vs JSON lines");
    check_keys(&reader.msgs, &corpus, "real-nginx-small");
    eprintln!(
        "replay_to_kafka_matches_json_lines: {} records, {:.1?}",
        reader.msgs.len(),
        started.elapsed()
    );
}

#[test]
fn daemon_to_kafka_then_clean_shutdown() {
    let Some((tansu, corpus)) = prerequisites("daemon_to_kafka_then_clean_shutdown") else {
        return;
    };
    let sender = corpus.join("replay_udp.py");
    if !sender.is_file() || Command::new("python3").arg("-V").output().is_err() {
        skip(
            Need::Kafka,
            "daemon_to_kafka_then_clean_shutdown",
            "python3 or replay_udp.py missing",
        );
        return;
    }
    let started = Instant::now();
    let capture = corpus.join("vxlan/real-nginx-small.vxlan.pcap");
    let topic = "mirror.receiver.daemon.test";
    let broker = Broker::start(&tansu);
    broker.create_topic(topic, 3);

    let want = replay_json_lines(&capture);
    assert!(!want.is_empty(), "JSON-lines replay of the VXLAN capture");
    let want: Vec<_> = want.iter().map(|l| parse_record(l)).collect();

    let spool = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start([
        "--workers",
        "2",
        "--kafka-brokers",
        &broker.bootstrap(),
        "--topic",
        topic,
        "--spool-dir",
        spool.path().to_str().unwrap(),
    ]);
    let port = daemon.port;
    let mut reader = TopicReader::new(&broker.bootstrap(), topic);

    run_ok(
        Command::new("python3").arg(&sender).arg(&capture).args([
            "--port",
            &port.to_string(),
            "--pps",
            "2000",
        ]),
        Duration::from_secs(30),
    );
    // Every exchange of this capture completes, so its records go out while the daemon runs.
    let live = reader.read_until(want.len(), Duration::from_secs(15));
    assert!(
        live,
        "{} of {} records delivered while the daemon ran\ndaemon stderr:\n{}",
        reader.msgs.len(),
        want.len(),
        daemon.stderr()
    );

    let stderr = daemon.stop(Duration::from_secs(10));
    assert!(stderr.contains("stopped"), "no summary at exit:\n{stderr}");
    reader.linger(Duration::from_secs(1));

    let got: Vec<_> = reader
        .msgs
        .iter()
        .map(|m| parse_record(&m.payload))
        .collect();
    assert_eq!(
        got.len(),
        want.len(),
        "records in Kafka vs JSON-lines replay"
    );
    assert_eq!(
        sorted(got.iter().map(exchange).collect()),
        sorted(want.iter().map(exchange).collect::<Vec<_>>()),
        "(method, path, statusCode) of the daemon's records vs the replay's"
    );
    // Beyond the triples: the records are the replay's, except for `time` (the daemon stamps
    // arrival time, the replay capture time).
    let untimed = |recs: &[serde_json::Map<String, Value>]| -> Vec<String> {
        recs.iter()
            .map(|r| {
                let mut r = r.clone();
                r.remove("time");
                Value::Object(r).to_string()
            })
            .collect()
    };
    assert_same_records(
        untimed(&got),
        untimed(&want),
        "daemon vs replay, without time",
    );
    check_keys(&reader.msgs, &corpus, "real-nginx-small");
    eprintln!(
        "daemon_to_kafka_then_clean_shutdown: {} records, {:.1?}",
        reader.msgs.len(),
        started.elapsed()
    );
}

/// The Kafka sink takes a record of the default `max_record_bytes` with the longest key, and a
/// record Kafka cannot take costs that record only, not the sink.
#[test]
fn kafka_sink_record_size_limits() {
    use mirror_receiver::record::RecordConfig;
    use mirror_receiver::sink::kafka::{KafkaSettings, KafkaSink};
    use mirror_receiver::sink::{Sink, SinkStats};
    let test = "kafka_sink_record_size_limits";
    let Some(tansu) = tansu_or_skip(test) else {
        return;
    };
    let broker = Broker::start(&tansu);
    let topic = "mirror.receiver.big.records";
    broker.create_topic(topic, 1);
    let stats = Arc::new(SinkStats::default());
    let spool = tempfile::tempdir().unwrap();
    let settings = KafkaSettings {
        brokers: broker.bootstrap(),
        topic: topic.into(),
        batch_size: 1000,
        batch_time: Duration::from_millis(100),
        compression: mirror_receiver::sink::kafka::Compression::Lz4,
        options: Vec::new(),
        spool: mirror_receiver::sink::spool::SpoolConfig::new(spool.path()),
        spool_grace: Duration::from_secs(2),
        spool_always: false,
    };
    let mut sink = KafkaSink::new(&settings, stats.clone()).expect("producer");
    let max = RecordConfig::default().max_record_bytes;
    let full = vec![b'x'; max];
    sink.send(u64::MAX, &full)
        .expect("a record of the default max_record_bytes");
    let too_big = vec![b'y'; 4 * max];
    sink.send(1, &too_big)
        .expect("an oversized record fails alone, not the sink");
    sink.send(2, b"{}").expect("the sink works on");
    assert_eq!(
        sink.flush(Duration::from_secs(20)).expect("flush"),
        mirror_receiver::sink::Flushed::All
    );
    assert_eq!(SinkStats::get(&stats.records), 3);
    assert_eq!(SinkStats::get(&stats.delivered), 2);
    assert_eq!(SinkStats::get(&stats.failed), 1);
    assert_eq!(SinkStats::get(&stats.failed_too_large), 1);

    let mut reader = TopicReader::new(&broker.bootstrap(), topic);
    assert!(
        reader.read_until(2, Duration::from_secs(20)),
        "records in Kafka"
    );
    reader.linger(Duration::from_millis(500));
    let got: Vec<(Option<Vec<u8>>, usize)> = reader
        .msgs
        .iter()
        .map(|m| (m.key.clone(), m.payload.len()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(u64::MAX.to_string().into_bytes()), max),
            (Some(b"2".to_vec()), 2)
        ]
    );
}

/// Records sent after a quiet spell longer than `--spool-grace` are not an outage: the grace
/// clock starts when a record goes in flight, not at the last acknowledgement before the quiet.
#[test]
fn a_record_after_a_quiet_spell_is_not_taken_for_an_outage() {
    use mirror_receiver::sink::kafka::KafkaSink;
    use mirror_receiver::sink::{Sink, SinkStats};
    let test = "a_record_after_a_quiet_spell_is_not_taken_for_an_outage";
    let Some((_broker, _dir, settings)) = broker_and_sink_settings(test, "quiet") else {
        return;
    };
    let grace = settings.spool_grace;
    let stats = Arc::new(SinkStats::default());
    let mut sink = KafkaSink::new(&settings, stats.clone()).expect("kafka sink");
    let settle = |sink: &mut KafkaSink, stats: &SinkStats, delivered: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while SinkStats::get(&stats.delivered) < delivered && Instant::now() < deadline {
            sink.idle().unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    sink.send(1, b"{\"first\":1}").unwrap();
    settle(&mut sink, &stats, 1);
    assert_eq!(
        SinkStats::get(&stats.delivered),
        1,
        "the first record is delivered"
    );
    // Quiet for several grace periods, then one record and at once the idle tick the sink
    // thread runs when its queue is empty.
    std::thread::sleep(grace * 4);
    let spooled_before = SinkStats::get(&stats.spooled);
    sink.send(2, b"{\"second\":2}").unwrap();
    sink.idle().unwrap();
    settle(&mut sink, &stats, 2);
    assert_eq!(
        SinkStats::get(&stats.delivered),
        2,
        "the second record is delivered"
    );
    assert_eq!(
        SinkStats::get(&stats.spooled),
        spooled_before,
        "the record after the quiet spell did not go to the spool"
    );
    assert_eq!(SinkStats::get(&stats.destination_up), 1, "kafka stayed up");
    assert_eq!(
        sink.flush(Duration::from_secs(10)).unwrap(),
        mirror_receiver::sink::Flushed::All
    );
}

/// A broker that takes connections and never answers (SIGSTOPped) while records keep coming:
/// once librdkafka's queue is full, the sink does not wait out `message.timeout.ms` (30 s) with
/// the workers, and the kernel's queue, behind it. Past `--spool-grace` what librdkafka holds
/// and every new record go to the spool, and all of them reach Kafka once it answers again.
#[test]
fn a_stalled_broker_does_not_block_the_sink() {
    use mirror_receiver::sink::kafka::KafkaSink;
    use mirror_receiver::sink::{Sink, SinkStats};
    let test = "a_stalled_broker_does_not_block_the_sink";
    let Some((broker, _dir, mut settings)) = broker_and_sink_settings(test, "stall") else {
        return;
    };
    let grace = settings.spool_grace;
    // A small queue, so that it fills within the test.
    settings.options = vec![("queue.buffering.max.messages".into(), "20".into())];
    let stats = Arc::new(SinkStats::default());
    let mut sink = KafkaSink::new(&settings, stats.clone()).expect("kafka sink");
    let record = |i: u64| format!("{{\"n\":{i}}}");
    sink.send(0, record(0).as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while SinkStats::get(&stats.delivered) < 1 && Instant::now() < deadline {
        sink.idle().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        SinkStats::get(&stats.delivered),
        1,
        "kafka answers at first"
    );

    broker.pause();
    // Records without a pause and without the idle tick: the sink thread under load.
    let started = Instant::now();
    const RECORDS: u64 = 200;
    for i in 1..=RECORDS {
        sink.send(i, record(i).as_bytes()).unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < grace + Duration::from_secs(5),
        "{RECORDS} records took {took:?} with the broker stalled (grace {grace:?})"
    );
    assert!(
        SinkStats::get(&stats.queue_full) > 0,
        "librdkafka's queue filled up"
    );
    assert_eq!(
        SinkStats::get(&stats.destination_up),
        0,
        "kafka taken as down"
    );
    assert!(
        SinkStats::get(&stats.spooled) >= RECORDS - 20,
        "records past the queue went to the spool: {} spooled",
        SinkStats::get(&stats.spooled)
    );

    broker.resume();
    let mut reader = TopicReader::new(&broker.bootstrap(), "stall");
    let want: std::collections::BTreeSet<String> = (0..=RECORDS).map(record).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = std::collections::BTreeSet::new();
    while got.len() < want.len() && Instant::now() < deadline {
        sink.idle().unwrap();
        reader.poll_once();
        got = reader.msgs.iter().map(|m| m.payload.clone()).collect();
    }
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(missing.is_empty(), "records not in Kafka: {missing:?}");
    assert_eq!(
        sink.flush(Duration::from_secs(10)).unwrap(),
        mirror_receiver::sink::Flushed::All
    );
    assert_eq!(
        SinkStats::get(&stats.spool_pending),
        0,
        "the spool is drained"
    );
}

/// A record larger than a spool frame can hold fails alone and is counted; the sink goes on.
#[test]
fn a_record_too_large_for_the_spool_fails_alone() {
    use mirror_receiver::sink::kafka::{KafkaSettings, KafkaSink};
    use mirror_receiver::sink::spool::SpoolConfig;
    use mirror_receiver::sink::{Sink, SinkStats};
    let dir = tempfile::tempdir().unwrap();
    let settings = KafkaSettings {
        spool: SpoolConfig {
            segment_bytes: 4096,
            ..SpoolConfig::new(dir.path())
        },
        ..spool_only_settings("big", dir.path())
    };
    let stats = Arc::new(SinkStats::default());
    let mut sink = KafkaSink::new(&settings, stats.clone()).expect("kafka sink");
    sink.send(1, &[b'x'; 10_000])
        .expect("a record too large is not fatal");
    sink.send(2, b"{\"small\":1}").unwrap();
    assert_eq!(SinkStats::get(&stats.failed_too_large), 1);
    assert_eq!(SinkStats::get(&stats.failed), 1);
    assert_eq!(
        SinkStats::get(&stats.spooled),
        1,
        "the next record is spooled"
    );
}

/// Damage found in the spool at start (a torn last write) reaches the sink's counters, which
/// `/metrics` shows as mirror_spool_torn_bytes_total and mirror_spool_corrupt_frames_total.
#[test]
fn spool_damage_found_at_start_is_counted() {
    use mirror_receiver::sink::kafka::KafkaSink;
    use mirror_receiver::sink::{Sink, SinkStats};
    let dir = tempfile::tempdir().unwrap();
    let settings = spool_only_settings("torn", dir.path());
    let stats = Arc::new(SinkStats::default());
    let mut sink = KafkaSink::new(&settings, stats.clone()).expect("kafka sink");
    for i in 0..3u64 {
        sink.send(i, format!("{{\"n\":{i}}}").as_bytes()).unwrap();
    }
    assert!(
        matches!(
            sink.flush(Duration::ZERO),
            Ok(mirror_receiver::sink::Flushed::Spooled { records: 3, .. })
        ),
        "records left in the spool"
    );
    drop(sink);
    assert_eq!(SinkStats::get(&stats.spool_torn_bytes), 0);
    // A crash in the middle of the last write: its last 5 bytes never made it to disk.
    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("spool-") && name.ends_with(".log")
        })
        .max()
        .expect("a spool segment");
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let stats = Arc::new(SinkStats::default());
    let _sink = KafkaSink::new(&settings, stats.clone()).expect("kafka sink");
    assert!(
        SinkStats::get(&stats.spool_torn_bytes) > 0,
        "the torn frame is counted"
    );
    assert_eq!(
        SinkStats::get(&stats.spool_pending),
        2,
        "the two whole records remain"
    );
}

/// A tansu broker with topic `topic`, a spool directory, and sink settings for them with a 1 s
/// grace; `None` after reporting the skip when tansu is missing.
fn broker_and_sink_settings(
    test: &str,
    topic: &str,
) -> Option<(
    Broker,
    tempfile::TempDir,
    mirror_receiver::sink::kafka::KafkaSettings,
)> {
    let tansu = tansu_or_skip(test)?;
    let broker = Broker::start(&tansu);
    broker.create_topic(topic, 1);
    let dir = tempfile::tempdir().unwrap();
    let settings = sink_settings(
        &broker.bootstrap(),
        topic,
        dir.path(),
        Duration::from_secs(1),
    );
    Some((broker, dir, settings))
}

/// Sink settings that need no broker: with --spool-always every record is written to the spool
/// first (the broker address is one nothing listens on).
fn spool_only_settings(topic: &str, spool: &Path) -> mirror_receiver::sink::kafka::KafkaSettings {
    mirror_receiver::sink::kafka::KafkaSettings {
        spool_always: true,
        ..sink_settings("127.0.0.1:9", topic, spool, Duration::from_secs(2))
    }
}

/// Kafka sink settings for the tests that drive a `KafkaSink` directly.
fn sink_settings(
    brokers: &str,
    topic: &str,
    spool: &Path,
    grace: Duration,
) -> mirror_receiver::sink::kafka::KafkaSettings {
    use mirror_receiver::sink::kafka::{Compression, KafkaSettings};
    use mirror_receiver::sink::spool::SpoolConfig;
    KafkaSettings {
        brokers: brokers.into(),
        topic: topic.into(),
        batch_size: 1000,
        batch_time: Duration::from_millis(5),
        compression: Compression::None,
        options: Vec::new(),
        spool: SpoolConfig::new(spool),
        spool_grace: grace,
        spool_always: false,
    }
}
