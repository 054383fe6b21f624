//! Delivery through broker failures, end to end: the `run` daemon receives mirrored traffic as
//! VXLAN datagrams on loopback (sent by the corpus' `replay_udp.py`), and its records are consumed
//! back from a real Kafka-compatible broker (tansu, in-memory storage) and compared with what
//! `mirror-receiver replay` of the same capture writes as JSON lines. Records are compared whole
//! except `time` (the daemon stamps arrival time, a replay capture time). The daemon runs with its
//! production producer settings (idempotence on); `--spool-grace 2`.
//!
//! * `broker_down_at_start`: no broker when the daemon starts; traffic arrives and goes to the
//!   spool; the broker comes up on that address 10 s later: every record arrives exactly once.
//! * `broker_paused_while_traffic_flows`: the broker is SIGSTOPped for 10 s in the middle of the
//!   traffic and resumed: every record arrives at least once and nothing else does; duplicates
//!   (records purged in flight that the broker stored after all) are counted and printed. tansu
//!   fences the producer after librdkafka bumps its epoch over the purged records (Kafka accepts
//!   the bump), so this also covers the sink replacing a fenced producer.
//! * `receiver_killed_with_records_spooled`: with the broker down, the daemon is SIGKILLed once
//!   every record is in the spool files; restarted on the same spool with a broker up, it delivers
//!   every spooled record, once.
//! * `spool_full_drops_are_counted`: a 1 MiB spool and no broker while ~7.7 MB of records (the
//!   corpus' `real-load-10k`) arrive, then a broker: the records that reach Kafka plus
//!   `dropped_spool_full` equal the records received, exactly. Then a restart on the same spool
//!   (the drained segment still on disk) and a second outage: the spool takes records again.
//! * `oversized_record_fails_alone`: records larger than the producer's `message.max.bytes`
//!   (lowered with `--kafka-option`) are counted in `failed` and every other record, before and
//!   after them, is delivered. tansu 0.6 enforces no message size limit (its storage never answers
//!   MESSAGE_TOO_LARGE), so the refusal comes from librdkafka's own check at produce time, not
//!   from a broker's delivery report.
//! * `sigterm_during_outage_keeps_spool`: SIGTERM with the broker down and a canary in flight: the
//!   daemon exits 0 at once, every record stays in the spool, and the next start delivers them.
//!
//! Every record of the synthetic captures is unique (its path names connection and request), so
//! loss and duplication are seen record by record; `real-load-10k` has only 3 distinct records
//! (apart from `time`), compared as a multiset.
//!
//! The tests share ports and the CPU and run one at a time. Prerequisites as in tests/kafka.rs:
//! tansu (`TANSU_BIN`, PATH, `~/.cargo/bin/tansu`), the corpus at `../shared/corpus` (or
//! `MIRROR_CORPUS_DIR`) and python3; without them the tests say why and pass, unless
//! `TANSU_REQUIRED=1`. `DELIVERY_KAFKA_DEBUG=eos,msg,broker` turns on librdkafka's debug log in
//! the daemons.

mod common;

use common::{
    Broker, Daemon, Msg, Need, TopicReader, free_tcp_port, kafka_prerequisites, skip, wait_until,
};
use mirror_receiver::sink::spool::parse_segment_name;
use mirror_receiver::testkit::{FIN, NO_FLAGS, Pcap, Peers, SYN, Seg, outer_frame, vxlan_datagram};
use mirror_receiver::wire::TcpFlags;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One test at a time: they bind ports, start brokers and load the CPU.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Prerequisites

const LOAD_CAPTURE: &str = "vxlan/real-load-10k.vxlan.pcap";

/// What every test needs, or `None` after reporting the skip.
struct Env {
    tansu: PathBuf,
    corpus: PathBuf,
    /// When the test got its turn.
    started: Instant,
    _serial: MutexGuard<'static, ()>,
}

fn prerequisites(test: &str) -> Option<Env> {
    let (tansu, corpus) = kafka_prerequisites(test, &["replay_udp.py", LOAD_CAPTURE])?;
    if Command::new("python3")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        skip(
            Need::Kafka,
            test,
            "python3 not found (needed by replay_udp.py)",
        );
        return None;
    }
    let _serial = serial();
    Some(Env {
        tansu,
        corpus,
        started: Instant::now(),
        _serial,
    })
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The delivery flags every daemon of these tests gets.
struct DaemonConfig<'a> {
    brokers: String,
    topic: &'a str,
    spool_dir: &'a Path,
    spool_max_bytes: u64,
    extra: Vec<String>,
}

impl DaemonConfig<'_> {
    /// The `run` flags (beyond `--listen`) of a daemon with this configuration.
    fn args(&self) -> Vec<String> {
        let mut args = [
            "--workers",
            "2",
            "--kafka-brokers",
            &self.brokers,
            "--topic",
            self.topic,
            "--spool-dir",
            self.spool_dir.to_str().expect("UTF-8 spool path"),
            "--spool-grace",
            "2",
            "--spool-max-bytes",
            &self.spool_max_bytes.to_string(),
            "--flow-idle-timeout",
            "5",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(self.extra.iter().cloned());
        if !self.extra.iter().any(|a| a == "--shutdown-timeout") {
            args.extend(["--shutdown-timeout".into(), "20".into()]);
        }
        // DELIVERY_KAFKA_DEBUG=eos,msg,broker (librdkafka debug contexts) to see why a test fails.
        if let Some(contexts) = std::env::var_os("DELIVERY_KAFKA_DEBUG") {
            args.extend([
                "--log-level".into(),
                "debug".into(),
                "--kafka-option".into(),
            ]);
            args.push(format!("debug={}", contexts.to_string_lossy()));
        }
        args
    }
}

/// A daemon with the flags of `cfg` on a free UDP port, started and receiving.
fn start_daemon(cfg: &DaemonConfig) -> Daemon {
    Daemon::start(cfg.args())
}

/// SIGTERM; asserts a clean exit within `timeout` and returns the counters of the summary.
fn stop(daemon: &mut Daemon, timeout: Duration) -> Summary {
    Summary::parse(&daemon.stop(timeout))
}

/// The counters of the daemon's summary line at exit.
#[derive(Debug)]
struct Summary(BTreeMap<String, u64>);

impl Summary {
    fn parse(stderr: &str) -> Summary {
        let line = stderr
            .lines()
            .rev()
            .find(|l| l.contains(" stopped") && l.contains("records="))
            .unwrap_or_else(|| panic!("no summary line at exit:\n{stderr}"));
        let counters = line
            .split_whitespace()
            .filter_map(|t| t.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect();
        Summary(counters)
    }

    fn get(&self, name: &str) -> u64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no {name}= in the summary {:?}", self.0))
    }

    fn show(&self) -> String {
        [
            "records",
            "produced",
            "delivered",
            "failed",
            "spooled",
            "replayed",
            "dropped_spool_full",
            "spool_pending",
            "queue_full",
        ]
        .iter()
        .map(|k| format!("{k}={}", self.0.get(*k).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// `replay_udp.py` sending a capture to the daemon, killed on drop.
struct Sender {
    child: Child,
    started: Instant,
}

impl Sender {
    fn start(env: &Env, capture: &Path, port: u16, pps: u32) -> Sender {
        let child = Command::new("python3")
            .arg(env.corpus.join("replay_udp.py"))
            .arg(capture)
            .args(["--port", &port.to_string(), "--pps", &pps.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting replay_udp.py");
        Sender {
            child,
            started: Instant::now(),
        }
    }

    fn finish(&mut self, timeout: Duration) {
        let status = wait_until(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("replay_udp.py did not finish within {timeout:?}"));
        assert!(status.success(), "replay_udp.py: {status}");
        eprintln!("  traffic sent in {:.1?}", self.started.elapsed());
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a whole capture and waits for the sender.
fn send_all(env: &Env, capture: &Path, port: u16, pps: u32) {
    Sender::start(env, capture, port, pps).finish(Duration::from_secs(60));
}

// ---------------------------------------------------------------------------------------------
// Synthetic traffic

/// Writes a VXLAN capture (as a mirror target receives it) of `conns` keep-alive HTTP/1.1
/// connections with `per_conn` exchanges each, interleaved across connections. Every request has
/// a path of its own (`/delivery/<tag>/c<conn>/r<i>`), so every record is unique; the response
/// body of exchange (conn, i) is `body(conn, i)` bytes of JSON.
fn synth_capture(
    path: &Path,
    tag: &str,
    conns: u32,
    per_conn: u32,
    body: impl Fn(u32, u32) -> usize,
) {
    let mut pcap = Pcap::default();
    let mut flows: Vec<Tcp> = (0..conns).map(Tcp::new).collect();
    for f in &mut flows {
        f.segment(&mut pcap, true, SYN, b"");
        f.segment(&mut pcap, false, SYN, b"");
        f.segment(&mut pcap, true, NO_FLAGS, b"");
    }
    for i in 0..per_conn {
        for (c, f) in (0..conns).zip(&mut flows) {
            let req = format!(
                "GET /delivery/{tag}/c{c}/r{i} HTTP/1.1\r\nHost: delivery.test\r\n\
                 User-Agent: delivery-test/1.0\r\nAccept: application/json\r\n\r\n"
            );
            f.send(&mut pcap, true, req.as_bytes());
            let head = format!("{{\"conn\":{c},\"req\":{i},\"pad\":\"");
            let pad = body(c, i).saturating_sub(head.len() + 2);
            let body = format!("{head}{}\"}}", "x".repeat(pad));
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            f.send(&mut pcap, false, resp.as_bytes());
        }
    }
    for f in &mut flows {
        f.segment(&mut pcap, true, FIN, b"");
        f.segment(&mut pcap, false, FIN, b"");
        f.segment(&mut pcap, true, NO_FLAGS, b"");
    }
    std::fs::write(path, pcap.into_bytes()).expect("writing the capture");
}

const MSS: usize = 1448;

/// One TCP connection of the synthetic capture.
struct Tcp {
    peers: Peers,
    /// Outer UDP source port (AWS: one per flow).
    outer_sport: u16,
}

impl Tcp {
    fn new(c: u32) -> Tcp {
        let [_, _, hi, lo] = c.to_be_bytes();
        let client = SocketAddr::from(([10, 1, hi, lo], 40000 + u16::try_from(c % 20000).unwrap()));
        let server = SocketAddr::from(([10, 2, 0, 1], 80));
        Tcp {
            peers: Peers::with_isn(client, server, [1_000_000 * c, 2_000_000 + 1_000_000 * c]),
            outer_sport: 65280 + u16::try_from(c % 256).unwrap(),
        }
    }

    /// One segment, as the receiver's capture shows it: VXLAN (VNI 7) on UDP 4789.
    fn segment(&mut self, pcap: &mut Pcap, from_client: bool, flags: TcpFlags, data: &[u8]) {
        let seg = self.peers.seg(from_client, flags, data);
        self.write(pcap, &seg);
    }

    fn send(&mut self, pcap: &mut Pcap, from_client: bool, data: &[u8]) {
        for seg in self.peers.send(from_client, data, MSS) {
            self.write(pcap, &seg);
        }
    }

    fn write(&self, pcap: &mut Pcap, seg: &Seg) {
        let datagram = vxlan_datagram(7, &seg.as_segment());
        pcap.frame(&outer_frame(self.outer_sport, &datagram));
    }
}

// ---------------------------------------------------------------------------------------------
// Records

/// The JSON lines a replay of `capture` writes (the reference for the daemon's records).
fn replay_json_lines(capture: &Path) -> Vec<String> {
    common::replay_json_lines(capture, Duration::from_secs(60))
}

/// A record without its `time` (keys sorted), after checking it is a record at all.
fn untimed(payload: &str) -> String {
    let v: Value = serde_json::from_str(payload)
        .unwrap_or_else(|e| panic!("record is not JSON ({e}): {payload:.300}"));
    let Value::Object(mut map) = v else {
        panic!("record is not a JSON object: {payload:.300}");
    };
    assert_eq!(map["source"], "MIRRORING", "source of {payload:.300}");
    assert!(map.remove("time").is_some(), "record without time");
    Value::Object(map).to_string()
}

fn counts<'a>(records: impl IntoIterator<Item = &'a String>) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r.as_str()).or_insert(0) += 1;
    }
    m
}

/// How the records read from Kafka compare with the expected ones (both untimed).
#[derive(Debug, Default)]
struct Comparison {
    /// Expected records never read.
    missing: usize,
    /// Records read beyond the number of times they were expected (at least once: duplicates).
    duplicates: usize,
    /// Records read that were never expected.
    unexpected: usize,
    first_missing: Option<String>,
    first_unexpected: Option<String>,
}

impl Comparison {
    fn new(got: &[String], want: &[String]) -> Comparison {
        let (g, w) = (counts(got), counts(want));
        let mut c = Comparison::default();
        for (rec, &n) in &w {
            let have = g.get(rec).copied().unwrap_or(0);
            if have < n {
                c.missing += n - have;
                c.first_missing.get_or_insert_with(|| (*rec).to_owned());
            }
        }
        for (rec, &n) in &g {
            match w.get(rec) {
                Some(&m) if n > m => c.duplicates += n - m,
                Some(_) => {}
                None => {
                    c.unexpected += n;
                    c.first_unexpected.get_or_insert_with(|| (*rec).to_owned());
                }
            }
        }
        c
    }

    /// Asserts every record arrived exactly once and nothing else did.
    fn assert_exact(&self, what: &str) {
        assert_eq!(
            (self.missing, self.duplicates, self.unexpected),
            (0, 0, 0),
            "{what}: {}",
            self.describe()
        );
    }

    fn describe(&self) -> String {
        format!(
            "missing {}, duplicates {}, unexpected {}; first missing: {:.300}; first unexpected: {:.300}",
            self.missing,
            self.duplicates,
            self.unexpected,
            self.first_missing.as_deref().unwrap_or("-"),
            self.first_unexpected.as_deref().unwrap_or("-"),
        )
    }
}

/// The record of a message read back, untimed, after checking its key is a connection id.
fn record(m: &Msg) -> String {
    let key = m.key.as_deref().expect("message without key");
    assert!(
        std::str::from_utf8(key).is_ok_and(|k| k.parse::<u64>().is_ok()),
        "key {key:?} is not a connection id"
    );
    untimed(&m.payload)
}

/// The records `reader` has read, untimed.
fn records(reader: &TopicReader) -> Vec<String> {
    reader.msgs.iter().map(record).collect()
}

/// Polls until every record of `want` was read at least once, or `timeout` passed; returns
/// whether they were.
fn read_all_of(reader: &mut TopicReader, want: &[String], timeout: Duration) -> bool {
    let want = counts(want);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut counted = 0;
    reader.poll_until(timeout, |msgs| {
        for m in &msgs[counted..] {
            *seen.entry(record(m)).or_insert(0) += 1;
        }
        counted = msgs.len();
        want.iter()
            .all(|(r, &n)| seen.get(*r).is_some_and(|&s| s >= n))
    })
}

/// Bytes the spool's segment files hold (as the OS sees them).
fn spool_segment_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| parse_segment_name(&e.file_name()).is_some())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Bytes a spool frame of `record` takes: length, checksum, key, payload.
fn frame_bytes(record: &str) -> u64 {
    16 + record.len() as u64
}

fn untimed_all(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| untimed(l)).collect()
}

/// What a delivery test starts from: its prerequisites, a work directory with the spool's place,
/// a synthetic capture ([`synth_capture`]) and the JSON lines a replay of it writes (the
/// reference for the daemon's records).
struct Scenario {
    test: &'static str,
    env: Env,
    _work: tempfile::TempDir,
    capture: PathBuf,
    spool: PathBuf,
    lines: Vec<String>,
}

impl Scenario {
    /// `None` when a prerequisite is missing: the test is skipped (see `common::skip`).
    fn new(
        test: &'static str,
        tag: &str,
        conns: u32,
        per_conn: u32,
        body: impl Fn(u32, u32) -> usize,
    ) -> Option<Scenario> {
        let env = prerequisites(test)?;
        let work = tempfile::tempdir().unwrap();
        let capture = work.path().join("traffic.pcap");
        synth_capture(&capture, tag, conns, per_conn, body);
        let lines = replay_json_lines(&capture);
        Some(Scenario {
            test,
            env,
            spool: work.path().join("spool"),
            _work: work,
            capture,
            lines,
        })
    }

    /// A daemon's settings: `brokers`, `topic`, this scenario's spool (1 GiB), `extra` flags.
    fn daemon<'a>(&'a self, brokers: String, topic: &'a str, extra: &[&str]) -> DaemonConfig<'a> {
        DaemonConfig {
            brokers,
            topic,
            spool_dir: &self.spool,
            spool_max_bytes: 1 << 30,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Bytes the spool frames of every record take.
    fn frame_bytes(&self) -> u64 {
        // `time` is ten digits in both, so a daemon's record is as long as the replay's.
        self.lines.iter().map(|l| frame_bytes(l)).sum()
    }

    fn passed(&self) {
        eprintln!(
            "{}: passed in {:.1?}",
            self.test,
            self.env.started.elapsed()
        );
    }
}

/// What [`read_back`] found.
struct ReadBack {
    reader: TopicReader,
    cmp: Comparison,
    summary: Summary,
}

/// The end of every delivery test: reads `topic` until every record of `want` arrived (at most
/// `timeout`; failing with the daemon's stderr and the broker's log otherwise), then stops the
/// daemon (within `stop_timeout`) and reports what was read, and when, after `since`.
fn read_back(
    sc: &Scenario,
    daemon: &mut Daemon,
    (broker, topic): (&Broker, &str),
    want: &[String],
    (timeout, stop_timeout): (Duration, Duration),
    (since, what): (Instant, &str),
) -> ReadBack {
    let mut reader = TopicReader::new(&broker.bootstrap(), topic);
    let complete = read_all_of(&mut reader, want, timeout);
    let all_in = since.elapsed();
    reader.linger(Duration::from_secs(2));
    let cmp = Comparison::new(&records(&reader), want);
    assert!(
        complete,
        "not every record arrived within {timeout:?}: {}\ndaemon stderr:\n{}\nbroker log:\n{:.3000}",
        cmp.describe(),
        daemon.stderr(),
        broker.log_text()
    );
    let summary = stop(daemon, stop_timeout);
    eprintln!(
        "{}: {} records read, all in {all_in:.1?} after {what}; {}; summary {}",
        sc.test,
        reader.msgs.len(),
        cmp.describe(),
        summary.show()
    );
    ReadBack {
        reader,
        cmp,
        summary,
    }
}

/// The end of an outage test: every record was received, went through the spool and left it,
/// none dropped or failed.
fn assert_delivered_through_the_spool(summary: &Summary, want: &[String]) {
    assert_eq!(
        summary.get("records"),
        want.len() as u64,
        "records received"
    );
    assert!(summary.get("spooled") > 0, "nothing was spooled");
    assert_eq!(summary.get("spool_pending"), 0, "left in the spool");
    assert_eq!(summary.get("dropped_spool_full"), 0);
    assert_eq!(summary.get("failed"), 0);
}

// ---------------------------------------------------------------------------------------------
// Tests

/// No broker at start; traffic arrives and goes to the spool; the broker comes up on the
/// configured address 10 s later: every record arrives, exactly once.
#[test]
fn broker_down_at_start() {
    let test = "broker_down_at_start";
    let Some(sc) = Scenario::new(test, "down-at-start", 40, 100, |_, _| 400) else {
        return;
    };
    let (env, capture) = (&sc.env, &sc.capture);
    let want = untimed_all(&sc.lines);
    assert_eq!(want.len(), 4000, "records of the synthetic capture");

    let kafka_port = free_tcp_port();
    let topic = "delivery.down.at.start";
    let mut daemon = start_daemon(&sc.daemon(format!("127.0.0.1:{kafka_port}"), topic, &[]));
    let traffic_start = Instant::now();
    send_all(env, capture, daemon.port, 10_000);
    daemon.wait_for_line("kafka unavailable", Duration::from_secs(15));

    std::thread::sleep(Duration::from_secs(10).saturating_sub(traffic_start.elapsed()));
    let broker = Broker::start_on(&env.tansu, kafka_port);
    broker.create_topic(topic, 3);
    let up = Instant::now();
    eprintln!(
        "  broker up {:.1?} after the traffic started",
        traffic_start.elapsed()
    );

    let got = read_back(
        &sc,
        &mut daemon,
        (&broker, topic),
        &want,
        (Duration::from_secs(45), Duration::from_secs(25)),
        (up, "the broker came up"),
    );
    assert_delivered_through_the_spool(&got.summary, &want);
    got.cmp.assert_exact("exactly the records sent");
    sc.passed();
}

/// The broker is SIGSTOPped for 10 s while traffic flows: every record arrives at least once.
#[test]
fn broker_paused_while_traffic_flows() {
    let test = "broker_paused_while_traffic_flows";
    let Some(sc) = Scenario::new(test, "paused", 60, 100, |_, _| 400) else {
        return;
    };
    let want = untimed_all(&sc.lines);
    assert_eq!(want.len(), 6000, "records of the synthetic capture");

    let broker = Broker::start(&sc.env.tansu);
    let topic = "delivery.paused";
    broker.create_topic(topic, 3);
    let mut daemon = start_daemon(&sc.daemon(broker.bootstrap(), topic, &[]));
    // About 12,300 datagrams at 1,000 a second: the pause falls in the middle of the traffic.
    let mut sender = Sender::start(&sc.env, &sc.capture, daemon.port, 1000);
    std::thread::sleep(Duration::from_secs(2));
    broker.pause();
    let paused = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    broker.resume();
    eprintln!(
        "  broker paused {:.1?}, from {:.1?} after the traffic started",
        paused.elapsed(),
        paused.duration_since(sender.started)
    );
    sender.finish(Duration::from_secs(30));
    let resumed = Instant::now();

    let ReadBack {
        mut reader,
        summary,
        ..
    } = read_back(
        &sc,
        &mut daemon,
        (&broker, topic),
        &want,
        (Duration::from_secs(45), Duration::from_secs(25)),
        (resumed, "the traffic ended"),
    );
    // Records still reported at shutdown count too (at least once: duplicates are allowed).
    reader.linger(Duration::from_secs(1));
    let cmp = Comparison::new(&records(&reader), &want);
    eprintln!(
        "{test}: {} records read for {} sent; DUPLICATES (at least once): {}; {}",
        reader.msgs.len(),
        want.len(),
        cmp.duplicates,
        cmp.describe()
    );
    assert!(
        daemon.stderr().contains("kafka unavailable"),
        "the pause was not noticed"
    );
    assert_delivered_through_the_spool(&summary, &want);
    assert_eq!(cmp.missing, 0, "{}", cmp.describe());
    assert_eq!(cmp.unexpected, 0, "{}", cmp.describe());
    sc.passed();
}

/// With the broker down and every record in the spool files, the daemon is SIGKILLed; restarted
/// on the same spool with a broker up, it delivers every spooled record.
#[test]
fn receiver_killed_with_records_spooled() {
    let test = "receiver_killed_with_records_spooled";
    let Some(sc) = Scenario::new(test, "killed", 40, 100, |_, _| 400) else {
        return;
    };
    let (env, spool) = (&sc.env, &sc.spool);
    let want = untimed_all(&sc.lines);
    assert_eq!(want.len(), 4000, "records of the synthetic capture");
    let want_bytes = sc.frame_bytes();

    let topic = "delivery.killed";
    let down = format!("127.0.0.1:{}", free_tcp_port());
    let mut first = start_daemon(&sc.daemon(down, topic, &[]));
    send_all(env, &sc.capture, first.port, 10_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while spool_segment_bytes(spool) < want_bytes {
        assert!(
            Instant::now() < deadline,
            "the spool holds {} bytes, {want_bytes} expected, 30 s after the traffic\n{}",
            spool_segment_bytes(spool),
            first.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let spooled = spool_segment_bytes(spool);
    first.kill();
    eprintln!("  killed with {spooled} bytes in the spool ({want_bytes} expected)");
    assert_eq!(spooled, want_bytes, "spool bytes: each record once");

    let broker = Broker::start(&env.tansu);
    broker.create_topic(topic, 3);
    let restarted = Instant::now();
    let mut second = start_daemon(&sc.daemon(broker.bootstrap(), topic, &[]));
    assert!(
        second
            .stderr()
            .contains("spool holds records from an earlier run"),
        "no recovery logged:\n{}",
        second.stderr()
    );
    let got = read_back(
        &sc,
        &mut second,
        (&broker, topic),
        &want,
        (Duration::from_secs(45), Duration::from_secs(25)),
        (restarted, "the restart"),
    );
    let summary = &got.summary;
    assert_eq!(summary.get("records"), 0, "no new traffic");
    assert_eq!(summary.get("replayed"), want.len() as u64, "replayed");
    assert_eq!(summary.get("spool_pending"), 0, "left in the spool");
    got.cmp.assert_exact("exactly the records spooled");
    sc.passed();
}

/// A 1 MiB spool and two outages. First `real-load-10k` (10,000 records of ~770 bytes) arrives
/// with no broker; then a broker comes up and the spool drains. The daemon is stopped and started
/// again on the same spool (its acknowledged records still on disk), again with no broker, and a
/// synthetic capture (3,000 unique records of ~1 KB) arrives; then a broker comes up. In each
/// outage the spool fills and drops: the records that reach Kafka plus `dropped_spool_full` are
/// exactly the records received, and the second outage spools again (the acknowledged records of
/// the first must not keep the spool full).
#[test]
fn spool_full_drops_are_counted() {
    let test = "spool_full_drops_are_counted";
    let Some(env) = prerequisites(test) else {
        return;
    };
    let load = env.corpus.join(LOAD_CAPTURE);
    let want1 = untimed_all(&replay_json_lines(&load));
    assert_eq!(want1.len(), 10_000, "records of {LOAD_CAPTURE}");
    let work = tempfile::tempdir().unwrap();
    let synth = work.path().join("traffic.pcap");
    synth_capture(&synth, "spool-full", 30, 100, |_, _| 600);
    let want2 = untimed_all(&replay_json_lines(&synth));
    assert_eq!(want2.len(), 3000, "records of the synthetic capture");

    let spool = work.path().join("spool");
    let max_bytes = 1 << 20;
    let outage = |capture: &Path, want: &[String], what: &str| {
        let kafka_port = free_tcp_port();
        let topic = "delivery.spool.full";
        let mut daemon = start_daemon(&DaemonConfig {
            brokers: format!("127.0.0.1:{kafka_port}"),
            topic,
            spool_dir: &spool,
            spool_max_bytes: max_bytes,
            extra: Vec::new(),
        });
        send_all(&env, capture, daemon.port, 20_000);
        daemon.wait_for_line("spool full", Duration::from_secs(20));
        let in_spool = settled_spool_bytes(&spool);
        assert!(
            in_spool <= max_bytes,
            "spool files {in_spool} > {max_bytes}"
        );
        let broker = Broker::start_on(&env.tansu, kafka_port);
        broker.create_topic(topic, 3);
        let mut reader = TopicReader::new(&broker.bootstrap(), topic);
        reader.read_until_quiet(Duration::from_secs(4), Duration::from_secs(30));
        let summary = stop(&mut daemon, Duration::from_secs(25));
        let dropped = summary.get("dropped_spool_full");
        let received = summary.get("records");
        // Whatever the flush at exit still delivered.
        reader.read_until(
            usize::try_from(received.saturating_sub(dropped)).unwrap(),
            Duration::from_secs(15),
        );
        reader.linger(Duration::from_secs(1));
        let cmp = Comparison::new(&records(&reader), want);
        eprintln!(
            "{test}, {what}: spool files {in_spool} bytes (at most {max_bytes}); {} records read \
             + {dropped} dropped = {} of {} sent; {}; summary {}",
            reader.msgs.len(),
            reader.msgs.len() as u64 + dropped,
            want.len(),
            cmp.describe(),
            summary.show()
        );
        assert_eq!(received, want.len() as u64, "{what}: records received");
        assert!(dropped > 0, "{what}: the spool never filled");
        assert!(
            summary.get("spooled") > 0 && !reader.msgs.is_empty(),
            "{what}: nothing was spooled and delivered"
        );
        assert_eq!(summary.get("spool_pending"), 0, "{what}: left in the spool");
        assert_eq!(summary.get("failed"), 0, "{what}: failed");
        assert_eq!(cmp.unexpected, 0, "{what}: {}", cmp.describe());
        assert_eq!(cmp.duplicates, 0, "{what}: {}", cmp.describe());
        assert_eq!(
            reader.msgs.len() as u64 + dropped,
            want.len() as u64,
            "{what}: records in Kafka + dropped_spool_full vs records sent"
        );
    };
    outage(&load, &want1, "first outage");
    // The drained spool still holds the first outage's acknowledged records on disk.
    eprintln!(
        "  spool files after the first outage: {} bytes",
        spool_segment_bytes(&spool)
    );
    outage(&synth, &want2, "second outage, after a restart");
    eprintln!("{test}: passed in {:.1?}", env.started.elapsed());
}

/// The spool files' size once it stopped changing for a second (at most 20 s).
fn settled_spool_bytes(dir: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = spool_segment_bytes(dir);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = spool_segment_bytes(dir);
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// Records larger than the producer's `message.max.bytes` are refused for good (counted in
/// `failed`); every other record, before and after them, is delivered.
#[test]
fn oversized_record_fails_alone() {
    let test = "oversized_record_fails_alone";
    let big = |c: u32, i: u32| c == 3 && i % 25 == 7;
    let Some(sc) = Scenario::new(test, "oversized", 20, 100, |c, i| {
        if big(c, i) { 60_000 } else { 400 }
    }) else {
        return;
    };
    let lines = &sc.lines;
    assert_eq!(lines.len(), 2000, "records of the synthetic capture");
    let limit = 32_768;
    let (large, small): (Vec<String>, Vec<String>) =
        lines.iter().cloned().partition(|l| l.len() > limit);
    assert_eq!(large.len(), 4, "records over {limit} bytes");
    let want = untimed_all(&small);

    let broker = Broker::start(&sc.env.tansu);
    let topic = "delivery.oversized";
    broker.create_topic(topic, 3);
    let max_bytes = format!("message.max.bytes={limit}");
    let cfg = sc.daemon(broker.bootstrap(), topic, &["--kafka-option", &max_bytes]);
    let mut daemon = start_daemon(&cfg);
    let started = Instant::now();
    send_all(&sc.env, &sc.capture, daemon.port, 10_000);
    let got = read_back(
        &sc,
        &mut daemon,
        (&broker, topic),
        &want,
        (Duration::from_secs(30), Duration::from_secs(25)),
        (started, "the traffic started"),
    );
    let (summary, cmp) = (&got.summary, &got.cmp);
    assert!(
        daemon.stderr().contains("record refused by kafka for good"),
        "permanent failure not logged"
    );
    assert_eq!(
        summary.get("records"),
        lines.len() as u64,
        "records received"
    );
    assert_eq!(summary.get("failed"), large.len() as u64, "failed");
    assert_eq!(summary.get("delivered"), want.len() as u64, "delivered");
    assert_eq!(summary.get("spooled"), 0, "spooled");
    cmp.assert_exact("every record but the oversized ones, once");
    sc.passed();
}

/// SIGTERM while the broker is down and a canary is in flight: the daemon exits 0 within
/// `--shutdown-timeout`, leaving every record in the spool, and the next start delivers them.
#[test]
fn sigterm_during_outage_keeps_spool() {
    let test = "sigterm_during_outage_keeps_spool";
    let Some(sc) = Scenario::new(test, "sigterm", 20, 100, |_, _| 400) else {
        return;
    };
    let (env, spool) = (&sc.env, &sc.spool);
    let want = untimed_all(&sc.lines);
    assert_eq!(want.len(), 2000, "records of the synthetic capture");
    let want_bytes = sc.frame_bytes();

    let topic = "delivery.sigterm";
    let cfg = |brokers: String| sc.daemon(brokers, topic, &["--shutdown-timeout", "5"]);
    let mut first = start_daemon(&cfg(format!("127.0.0.1:{}", free_tcp_port())));
    send_all(env, &sc.capture, first.port, 10_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while spool_segment_bytes(spool) < want_bytes {
        assert!(
            Instant::now() < deadline,
            "the spool holds {} bytes, {want_bytes} expected, 30 s after the traffic",
            spool_segment_bytes(spool)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past --spool-grace: a canary is in flight towards the missing broker.
    std::thread::sleep(Duration::from_secs(3));
    let term = Instant::now();
    let summary = stop(&mut first, Duration::from_secs(10));
    let took = term.elapsed();
    eprintln!(
        "  stopped {took:.1?} after SIGTERM; summary {}",
        summary.show()
    );
    assert!(
        took < Duration::from_secs(5),
        "SIGTERM took {took:.1?} with Kafka down and --shutdown-timeout 5"
    );
    assert_eq!(
        summary.get("records"),
        want.len() as u64,
        "records received"
    );
    assert_eq!(
        summary.get("spool_pending"),
        want.len() as u64,
        "records left in the spool"
    );
    assert!(
        first
            .stderr()
            .contains("left in the spool for the next start"),
        "no word of the records left in the spool"
    );

    let broker = Broker::start(&env.tansu);
    broker.create_topic(topic, 3);
    let restarted = Instant::now();
    let mut second = start_daemon(&cfg(broker.bootstrap()));
    let got = read_back(
        &sc,
        &mut second,
        (&broker, topic),
        &want,
        (Duration::from_secs(30), Duration::from_secs(10)),
        (restarted, "the restart"),
    );
    assert_eq!(got.summary.get("replayed"), want.len() as u64, "replayed");
    assert_eq!(got.summary.get("spool_pending"), 0, "left in the spool");
    got.cmp.assert_exact("exactly the records spooled");
    sc.passed();
}
