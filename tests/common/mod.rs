//! The harness the integration tests share: the receiver's command with a clean environment,
//! commands run with a time limit, a daemon started on loopback and followed through its stderr,
//! its admin endpoint and metrics, VXLAN datagrams, and for the Kafka tests a tansu broker and a
//! reader of a topic.
//!
//! Each test binary includes this module (`mod common;`) and uses only a subset of it, so what
//! one binary leaves unused is not dead code.
#![allow(dead_code)]

pub mod secure_broker;

use mirror_receiver::capture::CaptureReader;
use mirror_receiver::wire::{CaptureFrame, decode_capture_frame};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mirror-receiver");

// ---------------------------------------------------------------------------------------------
// Commands and processes

/// `mirror-receiver` with none of its configuration variables inherited (`MIRROR_*`, `AKTO_*`,
/// `TRAFFIC_*`, `RUST_LOG`), so only the flags count; no colours, stdin closed, and the admin
/// endpoint on a free port (`MIRROR_ADMIN_LISTEN`), not the default 8080 other daemons may hold.
pub fn receiver() -> Command {
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
    cmd.env("NO_COLOR", "1")
        .env("MIRROR_ADMIN_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null());
    cmd
}

/// The capture shipped in the repository: VXLAN, VNI 1234, six HTTP exchanges.
pub fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sample.vxlan.pcap")
}

/// Status and output of a finished command.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Reads `r` to its end on a thread of its own.
fn read_all(r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = BufReader::new(r).read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// [`run`], as the standard library's `Output` (for tests that hand it on as one).
pub fn run_output(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let f = run(cmd, timeout);
    std::process::Output {
        status: f.status,
        stdout: f.stdout.into_bytes(),
        stderr: f.stderr.into_bytes(),
    }
}

/// An `Output`'s exit code and both streams, for a failure message.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command (stdin closed) to completion within `timeout`, capturing its output; panics
/// past the timeout, after killing it.
pub fn run(cmd: &mut Command, timeout: Duration) -> Finished {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
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

/// [`run`], asserting that the command succeeded.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Finished {
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

/// Waits for `child` at most `timeout`; kills it past that.
pub fn wait_until(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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

/// Sends `sig` to a child that has not been reaped yet.
pub fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// A TCP port free on loopback when asked.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free TCP port")
        .port()
}

/// A UDP port free on loopback when asked.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// Polls `cond` every 100 ms until it holds; panics after `timeout`, naming `what`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `s` without ANSI escape sequences (CSI: ESC [ parameters final-byte).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// A running `mirror-receiver run`, its stderr echoed and collected line by line; killed on drop
/// if a test fails before stopping it.
pub struct Daemon {
    pub child: Child,
    /// The loopback UDP port it receives on.
    pub port: u16,
    /// Its admin endpoint, `host:port`.
    pub admin: String,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    /// `receiver()` running `run --listen 127.0.0.1:<free UDP port>` with `args`, started and
    /// bound (see [`Daemon::spawn`]).
    pub fn start<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Daemon {
        let port = free_udp_port();
        let mut cmd = receiver();
        cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .args(args);
        Daemon::spawn(cmd, port)
    }

    /// Spawns `cmd`, a daemon receiving on UDP `port`, and waits until it says it receives VXLAN
    /// and where its admin endpoint answers.
    pub fn spawn(mut cmd: Command, port: u16) -> Daemon {
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
                let line = strip_ansi(&line);
                eprintln!("  daemon: {line}");
                let mut all = all.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send(line);
            }
        });
        let mut daemon = Daemon {
            child,
            port,
            admin: String::new(),
            stderr,
            lines,
        };
        daemon.wait_for_line("receiving VXLAN", Duration::from_secs(15));
        let line = daemon.wait_for_line("admin=", Duration::from_secs(15));
        daemon.admin = line
            .split("admin=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no admin address in {line:?}"))
            .to_owned();
        daemon
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) if line.contains(needle) => return line,
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

    /// SIGTERM; waits at most `timeout` for the exit (killing it past that), then for the last
    /// lines of its stderr.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        signal(&self.child, libc::SIGTERM);
        let status = wait_until(&mut self.child, timeout);
        // Once the process is gone its stderr closes: the reader thread ends and drops the sender.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
        {}
        status
    }

    /// SIGTERM; asserts a clean exit within `timeout` and returns its whole stderr.
    pub fn stop(&mut self, timeout: Duration) -> String {
        let status = self.terminate(timeout);
        let stderr = self.stderr();
        let Some(status) = status else {
            panic!("daemon still running {timeout:?} after SIGTERM:\n{stderr}");
        };
        assert!(
            status.success(),
            "daemon exit after SIGTERM: {status}\n{stderr}"
        );
        stderr
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The admin endpoint

/// (status code, body) of `GET path` from the admin endpoint at `addr`.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |b| b.1).to_owned();
    (code, body)
}

/// The value of the Prometheus metric line `name` (with labels, exactly as rendered) in `text`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Traffic

/// The UDP payloads (VXLAN header + inner frame) of a VXLAN capture, as a mirror target gets them.
pub fn vxlan_payloads(path: &Path) -> Vec<Vec<u8>> {
    let mut reader = CaptureReader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(frame) = reader.next_frame() {
        let frame = frame.unwrap();
        if let Ok(CaptureFrame::Vxlan(p)) = decode_capture_frame(frame.link.unwrap(), &frame.data) {
            out.push(p.to_vec());
        }
    }
    out
}

/// One VXLAN datagram (VNI `vni`) carrying an Ethernet/IPv4/TCP frame (ACK `ack`, PSH) with
/// `payload` (built by `mirror_receiver::testkit`).
pub fn vxlan_datagram(
    vni: u8,
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    use mirror_receiver::testkit::{NO_FLAGS, segment, vxlan_datagram};
    let (src, dst) = (SocketAddr::from(src), SocketAddr::from(dst));
    vxlan_datagram(
        vni.into(),
        &segment(src, dst, seq, Some(ack), NO_FLAGS, payload),
    )
}

// ---------------------------------------------------------------------------------------------
// Kafka: tansu, the corpus, and reading a topic back

/// What a test needs that a machine may lack, each with the variable that turns its absence
/// from a skip into a failure. CI (`.ci/run`) sets them all, so there nothing skips.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// tansu (and the corpus the Kafka tests replay).
    Kafka,
    /// Root, network namespaces and the real peers of the end-to-end tests.
    E2e,
    /// systemd-analyze.
    Systemd,
    /// cfn-lint, checkov, packer, moto, prometheus_client: the infrastructure checkers.
    Infra,
    /// The shared capture corpus (`../shared/corpus`, or `MIRROR_CORPUS_DIR`).
    Corpus,
}

impl Need {
    pub fn var(self) -> &'static str {
        match self {
            Need::Kafka => "TANSU_REQUIRED",
            Need::E2e => "MIRROR_E2E_REQUIRE",
            Need::Systemd => "MIRROR_SYSTEMD_REQUIRE",
            Need::Infra => "MIRROR_INFRA_REQUIRE",
            Need::Corpus => "MIRROR_CORPUS_REQUIRE",
        }
    }

    /// The variable is set (to anything but empty or `0`).
    pub fn required(self) -> bool {
        std::env::var(self.var()).is_ok_and(|v| !v.is_empty() && v != "0")
    }
}

/// The one skip rule of the tests: `test` cannot run because of `why` (what is missing, and how
/// to install it). It is skipped, saying so on stderr, unless `need`'s variable is set, when it
/// fails instead.
pub fn skip(need: Need, test: &str, why: &str) {
    let var = need.var();
    if need.required() {
        panic!("{test}: {why} ({var} is set, so this is a failure, not a skip)");
    }
    eprintln!("SKIPPED {test}: {why} (set {var}=1 to make this a failure)");
}

/// tansu, or `None` after [`skip`] said why `test` cannot run.
pub fn tansu_or_skip(test: &str) -> Option<PathBuf> {
    tansu_bin().map_err(|e| skip(Need::Kafka, test, &e)).ok()
}

/// tansu and the corpus holding `captures`, or `None` after [`skip`] said why `test` cannot run.
pub fn kafka_prerequisites(test: &str, captures: &[&str]) -> Option<(PathBuf, PathBuf)> {
    let tansu = tansu_or_skip(test)?;
    let corpus = corpus_dir(captures)
        .map_err(|e| skip(Need::Kafka, test, &e))
        .ok()?;
    Some((tansu, corpus))
}

/// The tansu binary: `TANSU_BIN`, else `tansu` on PATH, else `~/.cargo/bin/tansu`.
pub fn tansu_bin() -> Result<PathBuf, String> {
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

/// The shared capture corpus (`MIRROR_CORPUS_DIR`, else `../shared/corpus`), if it holds every
/// file of `needed` (paths relative to it).
pub fn corpus_dir(needed: &[&str]) -> Result<PathBuf, String> {
    let dir = match std::env::var_os("MIRROR_CORPUS_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"),
    };
    if needed.iter().all(|f| dir.join(f).is_file()) {
        Ok(dir)
    } else {
        Err(format!(
            "corpus ({}) not found at {}",
            needed.join(", "),
            dir.display()
        ))
    }
}

/// Parses a record and checks the shape every record has: an object of strings from mirroring.
pub fn parse_record(payload: &str) -> serde_json::Map<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(payload)
        .unwrap_or_else(|e| panic!("record is not JSON ({e}): {payload:.300}"));
    let serde_json::Value::Object(map) = v else {
        panic!("record is not a JSON object: {payload:.300}");
    };
    for (k, v) in &map {
        assert!(v.is_string(), "field {k} is not a string: {v}");
    }
    assert_eq!(map["source"], "MIRRORING", "source of {payload:.300}");
    map
}

/// Asserts two multisets of records are equal, reporting the first difference readably.
pub fn assert_same_records(got: Vec<String>, want: Vec<String>, what: &str) {
    let (mut got, mut want) = (got, want);
    got.sort();
    want.sort();
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

/// The JSON lines `replay` of `capture` writes, within `timeout`.
pub fn replay_json_lines(capture: &Path, timeout: Duration) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    run_ok(
        receiver()
            .arg("replay")
            .arg(capture)
            .arg("--output")
            .arg(&out),
        timeout,
    );
    let text = std::fs::read_to_string(&out).expect("reading the JSON-lines output");
    text.lines().map(str::to_owned).collect()
}

/// A tansu broker with in-memory storage, killed on drop.
pub struct Broker {
    child: Child,
    bin: PathBuf,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Broker {
    /// A broker on a port of its own.
    pub fn start(bin: &Path) -> Broker {
        // The port is chosen before tansu binds it: another process may take it in between, so
        // a broker that exits at once is retried on a new port.
        for _ in 0..3 {
            if let Some(b) = Broker::try_start(bin, free_tcp_port()) {
                return b;
            }
        }
        panic!("tansu could not be started (see its output above)");
    }

    /// A broker on `port` (where a daemon already looks for it).
    pub fn start_on(bin: &Path, port: u16) -> Broker {
        Broker::try_start(bin, port)
            .unwrap_or_else(|| panic!("tansu could not be started on port {port}"))
    }

    /// A broker on `port` accepting connections, or `None` if it exited at start.
    fn try_start(bin: &Path, port: u16) -> Option<Broker> {
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
                return None;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Some(broker);
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not accept connections on {addr} within 20 s:\n{}",
                broker.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port` for `--kafka-brokers` and consumers.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the broker has printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Creates topic `name` with `partitions` partitions (retried: tansu may not be ready yet).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut last = String::new();
        for _ in 0..5 {
            let f = run(
                Command::new(&self.bin)
                    .args(["topic", "create", name, "--broker", &url])
                    .args(["--partitions", &partitions.to_string()])
                    .env_remove("RUST_LOG"),
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

    /// SIGSTOP: connections stay open, nothing is answered.
    pub fn pause(&self) {
        signal(&self.child, libc::SIGSTOP);
    }

    /// SIGCONT after [`Broker::pause`].
    pub fn resume(&self) {
        signal(&self.child, libc::SIGCONT);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A consumed message.
pub struct Msg {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: String,
}

/// Reads a topic from the beginning of every partition.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    /// The messages read so far, in the order read.
    pub msgs: Vec<Msg>,
}

impl TopicReader {
    /// A consumer of `topic` with every partition assigned from its start.
    pub fn new(bootstrap: &str, topic: &str) -> TopicReader {
        TopicReader::with_options(bootstrap, topic, &[], "")
    }

    /// The same with librdkafka `options` (TLS, SASL...); `logs` is shown when the topic's
    /// metadata cannot be read.
    pub fn with_options(
        bootstrap: &str,
        topic: &str,
        options: &[(String, String)],
        logs: &str,
    ) -> TopicReader {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set(
                "group.id",
                format!("mirror-receiver-test-{}-{nanos}", std::process::id()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false");
        for (k, v) in options {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config.create().expect("creating the consumer");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("topic metadata: {e}\n{logs}"));
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

    /// Polls once (at most 100 ms); true when a message was read.
    pub fn poll_once(&mut self) -> bool {
        match self.consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                assert_eq!(m.topic(), self.topic);
                let payload = m.payload().expect("message without payload");
                self.msgs.push(Msg {
                    partition: m.partition(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: String::from_utf8(payload.to_vec()).expect("UTF-8 payload"),
                });
                true
            }
            Some(Err(e)) => {
                eprintln!("  consumer: {e}");
                false
            }
            None => false,
        }
    }

    /// Polls until `done` holds for the messages read or `timeout` passed; returns whether it
    /// holds.
    pub fn poll_until(&mut self, timeout: Duration, mut done: impl FnMut(&[Msg]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.msgs) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.poll_once();
        }
    }

    /// Polls until `n` messages were read or `timeout` passed; returns whether `n` were.
    pub fn read_until(&mut self, n: usize, timeout: Duration) -> bool {
        self.poll_until(timeout, |msgs| msgs.len() >= n)
    }

    /// Polls until nothing new came for `quiet`, at most `timeout`.
    pub fn read_until_quiet(&mut self, quiet: Duration, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = Instant::now();
        while Instant::now() < deadline && last.elapsed() < quiet {
            if self.poll_once() {
                last = Instant::now();
            }
        }
    }

    /// Keeps polling for `period` (to catch messages beyond the expected ones).
    pub fn linger(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            self.poll_once();
        }
    }
}
