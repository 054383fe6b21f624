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

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mirror-receiver");

// ---------------------------------------------------------------------------------------------
// Prerequisites

/// Skips (or, with `TANSU_REQUIRED=1`, fails) a test whose prerequisite is missing.
fn skip(test: &str, why: &str) {
    if std::env::var("TANSU_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("{test}: {why} (TANSU_REQUIRED=1, so this is a failure, not a skip)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

fn tansu_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("TANSU_BIN={} is not a file", p.display()))
        };
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    {
        return Ok(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = Path::new(&home).join(".cargo/bin/tansu");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err("tansu not found (TANSU_BIN, PATH, ~/.cargo/bin); `cargo install tansu --locked`".into())
}

fn corpus_dir() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("MIRROR_CORPUS_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"),
    };
    if dir.join("real/real-nginx-small.pcap").is_file()
        && dir.join("vxlan/real-nginx-small.vxlan.pcap").is_file()
    {
        Ok(dir)
    } else {
        Err(format!("corpus not found at {}", dir.display()))
    }
}

/// tansu and the corpus, or `None` after reporting the skip.
fn prerequisites(test: &str) -> Option<(PathBuf, PathBuf)> {
    let tansu = tansu_bin().map_err(|e| skip(test, &e)).ok()?;
    let corpus = corpus_dir().map_err(|e| skip(test, &e)).ok()?;
    Some((tansu, corpus))
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A command with the receiver's configuration variables removed, so only the flags count.
fn receiver() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("MIRROR_")
            || n.starts_with("AKTO_")
            || n.starts_with("TRAFFIC_")
            || n == "RUST_LOG"
        {
            cmd.env_remove(&name);
        }
    }
    // Each receiver gets a spool directory of its own (a spool is locked by one process).
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let spool = std::env::temp_dir().join(format!("mr-kafka-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    cmd.env("NO_COLOR", "1")
        .env("MIRROR_SPOOL_DIR", &spool)
        .env("MIRROR_ADMIN_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    cmd
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn read_all(r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = BufReader::new(r).read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Waits for `child` at most `timeout`; kills it past that.
fn wait_until(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion within `timeout`, capturing its output.
fn run(cmd: &mut Command, timeout: Duration) -> Finished {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let out = read_all(child.stdout.take().unwrap());
    let err = read_all(child.stderr.take().unwrap());
    let status = wait_until(&mut child, timeout);
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let Some(status) = status else {
        panic!("{what} did not finish within {timeout:?}\nstderr:\n{stderr}");
    };
    Finished {
        status,
        stdout,
        stderr,
    }
}

fn run_ok(cmd: &mut Command, timeout: Duration) -> Finished {
    let what = format!("{cmd:?}");
    let f = run(cmd, timeout);
    assert!(
        f.status.success(),
        "{what} failed: {}\nstdout:\n{}\nstderr:\n{}",
        f.status,
        f.stdout,
        f.stderr
    );
    f
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// A tansu broker with in-memory storage, killed on drop.
struct Broker {
    child: Child,
    bin: PathBuf,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Broker {
    fn start(bin: &Path) -> Broker {
        // The port is chosen before tansu binds it: another process may take it in between, so
        // a broker that exits at once is retried on a new port.
        for _ in 0..3 {
            let port = free_tcp_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let log = tempfile::NamedTempFile::new().expect("broker log file");
            let child = Command::new(bin)
                .args(["broker", "--listener-url", &url])
                .args(["--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(log.reopen().unwrap())
                .stderr(log.reopen().unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut broker = Broker {
                child,
                bin: bin.to_owned(),
                port,
                log,
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if broker.child.try_wait().unwrap().is_some() {
                    eprintln!("tansu exited at start:\n{}", broker.log_text());
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return broker;
                }
                assert!(
                    Instant::now() < deadline,
                    "tansu did not accept connections on {addr} within 20 s:\n{}",
                    broker.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("tansu could not be started (see its output above)");
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn create_topic(&self, name: &str, partitions: u32) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut last = String::new();
        for _ in 0..5 {
            let f = run(
                Command::new(&self.bin)
                    .args(["topic", "create", name, "--broker", &url])
                    .args(["--partitions", &partitions.to_string()])
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null()),
                Duration::from_secs(20),
            );
            if f.status.success() {
                return;
            }
            last = format!("{}\n{}{}", f.status, f.stdout, f.stderr);
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "tansu topic create {name} failed: {last}\nbroker log:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running daemon, killed on drop if a test fails before stopping it.
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    fn start(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the daemon");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let all = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("  daemon: {line}");
                all.lock().unwrap().push_str(&line);
                all.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        Daemon {
            child,
            stderr,
            lines,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_for_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) if line.contains(needle) => return,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("daemon closed stderr before {needle:?}:\n{}", self.stderr())
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "daemon exited ({status}) before {needle:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} from the daemon within {timeout:?}:\n{}",
                self.stderr()
            );
        }
    }

    fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signalling our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill -TERM");
        wait_until(&mut self.child, timeout)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Records

/// The JSON lines a replay of `capture` writes (the reference for the Kafka runs).
fn replay_json_lines(capture: &Path) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    run_ok(
        receiver()
            .arg("replay")
            .arg(capture)
            .arg("--output")
            .arg(&out),
        Duration::from_secs(30),
    );
    let text = std::fs::read_to_string(&out).expect("reading the JSON-lines output");
    text.lines().map(str::to_owned).collect()
}

/// Parses a record and checks the shape every record has: an object of strings from mirroring.
fn parse_record(payload: &str) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_str(payload)
        .unwrap_or_else(|e| panic!("record is not JSON ({e}): {payload:.300}"));
    let Value::Object(map) = v else {
        panic!("record is not a JSON object: {payload:.300}");
    };
    for (k, v) in &map {
        assert!(v.is_string(), "field {k} is not a string: {v}");
    }
    assert_eq!(map["source"], "MIRRORING", "source of {payload:.300}");
    map
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

/// A consumed message.
struct Msg {
    partition: i32,
    key: Option<Vec<u8>>,
    payload: String,
}

/// Reads a topic from the beginning of every partition.
struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    msgs: Vec<Msg>,
}

impl TopicReader {
    fn new(bootstrap: &str, topic: &str) -> TopicReader {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set(
                "group.id",
                format!("mirror-receiver-test-{}-{nanos}", std::process::id()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("creating the consumer");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        assert!(partitions > 0, "topic {topic} has no partitions");
        // Explicit assignment from the start of each partition: no group rebalance to wait for.
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, i32::try_from(p).unwrap(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assigning partitions");
        TopicReader {
            consumer,
            topic: topic.to_owned(),
            msgs: Vec::new(),
        }
    }

    fn poll_once(&mut self) {
        match self.consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                assert_eq!(m.topic(), self.topic);
                let payload = m.payload().expect("message without payload");
                self.msgs.push(Msg {
                    partition: m.partition(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: String::from_utf8(payload.to_vec()).expect("UTF-8 payload"),
                });
            }
            Some(Err(e)) => eprintln!("  consumer: {e}"),
            None => {}
        }
    }

    /// Polls until `n` messages were read or `timeout` passed; returns whether `n` were.
    fn read_until(&mut self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.msgs.len() < n && Instant::now() < deadline {
            self.poll_once();
        }
        self.msgs.len() >= n
    }

    /// Keeps polling for `period` (to catch messages beyond the expected ones).
    fn linger(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            self.poll_once();
        }
    }
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

/// Asserts two multisets of records are equal, reporting the first difference readably.
fn assert_same_records(got: Vec<String>, want: Vec<String>, what: &str) {
    let (got, want) = (sorted(got), sorted(want));
    if got != want {
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).collect();
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
        panic!(
            "{what}: {} records, expected {}; first unexpected: {:.400}; first missing: {:.400}",
            got.len(),
            want.len(),
            extra.first().map_or("-", |s| s.as_str()),
            missing.first().map_or("-", |s| s.as_str()),
        );
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

    let port = free_udp_port();
    let mut cmd = receiver();
    cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--workers", "2"])
        .args(["--kafka-brokers", &broker.bootstrap(), "--topic", topic]);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_line("receiving VXLAN", Duration::from_secs(15));
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

    let status = daemon.terminate(Duration::from_secs(10));
    let stderr = daemon.stderr();
    let Some(status) = status else {
        panic!("daemon still running 10 s after SIGTERM:\n{stderr}");
    };
    assert!(
        status.success(),
        "daemon exit after SIGTERM: {status}\n{stderr}"
    );
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
    let tansu = match tansu_bin() {
        Ok(t) => t,
        Err(e) => return skip(test, &e),
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
    sink.flush(Duration::from_secs(20)).expect("flush");
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
