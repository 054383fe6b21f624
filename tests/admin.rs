//! The admin endpoint of the daemon: /healthz, /readyz and /metrics, against real traffic on
//! loopback and, for readiness, a real Kafka-compatible broker (tansu) stopped and resumed.

use mirror_receiver::capture::CaptureReader;
use mirror_receiver::wire::{CaptureFrame, decode_capture_frame};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mirror-receiver");

struct Daemon {
    child: Child,
    admin: String,
    udp: u16,
    _lines: mpsc::Receiver<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

fn start(extra: &[&str]) -> Daemon {
    let udp = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("MIRROR_") || k.starts_with("AKTO_") || k.starts_with("TRAFFIC_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args([
            "run",
            "--workers",
            "2",
            "--admin-listen",
            "127.0.0.1:0",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{udp}"))
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(strip_ansi(&line));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let admin = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("daemon did not report its admin endpoint");
        if let Some(rest) = line.split("admin=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    Daemon {
        child,
        admin,
        udp,
        _lines: rx,
    }
}

/// (status code, body) of GET `path`.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |b| b.1).to_owned();
    (code, body)
}

/// The value of a metric line `name` (with labels, exactly as rendered).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sample.vxlan.pcap")
}

fn vxlan_payloads(path: &Path) -> Vec<Vec<u8>> {
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

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_count_what_was_sent_and_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let d = start(&["--output", out.to_str().unwrap()]);
    assert_eq!(get(&d.admin, "/healthz").0, 200);
    let (code, body) = get(&d.admin, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&d.admin, "/nope").0, 404);

    let payloads = vxlan_payloads(&sample());
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in &payloads {
        sender.send_to(p, ("127.0.0.1", d.udp)).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    sender.send_to(b"junk", ("127.0.0.1", d.udp)).unwrap();
    let sent = payloads.len() as f64 + 1.0;
    let mut text = String::new();
    wait_for(
        "metrics to show every datagram",
        Duration::from_secs(15),
        || {
            text = get(&d.admin, "/metrics").1;
            metric(&text, "mirror_datagrams_total") == Some(sent)
        },
    );
    assert_eq!(metric(&text, "mirror_received_datagrams_total"), Some(sent));
    assert_eq!(metric(&text, "mirror_kernel_drops_total"), Some(0.0));
    let written = std::fs::read_to_string(&out).unwrap().lines().count() as f64;
    assert_eq!(
        written, 5.0,
        "the five answered requests are written while running"
    );
    assert_eq!(metric(&text, "mirror_http_pairs_total"), Some(written));
    assert_eq!(
        metric(&text, "mirror_vni_pairs_total{vni=\"1234\"}"),
        Some(written)
    );
    assert_eq!(
        metric(&text, "mirror_vni_datagrams_total{vni=\"1234\"}"),
        Some(payloads.len() as f64)
    );
    assert_eq!(
        metric(
            &text,
            "mirror_decode_drops_total{reason=\"vxlan_too_short\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "mirror_sink_records_total"), Some(written));
    assert_eq!(metric(&text, "mirror_sink_delivered_total"), Some(written));
    assert_eq!(metric(&text, "mirror_flows_active"), Some(1.0));
    // Per mirror session: two connections opened, one closed by its FINs, one still open.
    assert_eq!(
        metric(&text, "mirror_vni_flows_opened_total{vni=\"1234\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            "mirror_vni_flows_closed_total{vni=\"1234\",reason=\"fin\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "mirror_vni_flows_active{vni=\"1234\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "mirror_vni_http_requests_total{vni=\"1234\"}"),
        Some(6.0)
    );
    assert!(text.contains("mirror_build_info{version="), "{text}");
}

fn tansu() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("TANSU_BIN").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/tansu")),
        Some(PathBuf::from("/usr/local/bin/tansu")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("TANSU_REQUIRED").is_none(),
            "TANSU_REQUIRED is set but tansu is missing"
        );
        eprintln!("SKIP: tansu not found (cargo install tansu --features dynostore)");
    }
    found
}

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, which may be stopped.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGCONT);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn readyz_follows_the_broker() {
    let Some(tansu) = tansu() else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let broker = Broker(
        Command::new(&tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the broker port", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let topic_ok = Command::new(&tansu)
        .args(["topic", "create", "ready.test", "--broker", &url])
        .status()
        .unwrap();
    assert!(topic_ok.success());
    let spool = tempfile::tempdir().unwrap();
    let d = start(&[
        "--kafka-brokers",
        &format!("127.0.0.1:{port}"),
        "--topic",
        "ready.test",
        "--spool-dir",
        spool.path().to_str().unwrap(),
    ]);
    wait_for("ready with the broker up", Duration::from_secs(20), || {
        get(&d.admin, "/readyz").0 == 200
    });
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(broker.0.id() as i32, libc::SIGSTOP);
    }
    let mut body = String::new();
    wait_for(
        "503 with the broker stopped",
        Duration::from_secs(30),
        || {
            let (code, b) = get(&d.admin, "/readyz");
            body = b;
            code == 503
        },
    );
    assert!(
        body.contains("\"ready\":false") && body.contains("kafka"),
        "{body}"
    );
    assert_eq!(get(&d.admin, "/healthz").0, 200, "alive while not ready");
    // SAFETY: as above.
    unsafe {
        libc::kill(broker.0.id() as i32, libc::SIGCONT);
    }
    wait_for(
        "ready again with the broker back",
        Duration::from_secs(30),
        || get(&d.admin, "/readyz").0 == 200,
    );
}

#[test]
fn datagrams_from_unlisted_sources_or_vnis_are_refused_and_counted() {
    let payloads = vxlan_payloads(&sample());
    for (flag, value, reason) in [
        ("--allow-source", "192.0.2.0/24", "source_not_allowed"),
        ("--allow-vni", "7,100-200", "vni_not_allowed"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("records.jsonl");
        let d = start(&[flag, value, "--output", out.to_str().unwrap()]);
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for p in &payloads {
            sender.send_to(p, ("127.0.0.1", d.udp)).unwrap();
        }
        let name = format!("mirror_ingest_refused_total{{reason=\"{reason}\"}}");
        wait_for("refusals counted", Duration::from_secs(15), || {
            metric(&get(&d.admin, "/metrics").1, &name) == Some(payloads.len() as f64)
        });
        let text = get(&d.admin, "/metrics").1;
        assert_eq!(metric(&text, "mirror_datagrams_total"), Some(0.0), "{flag}");
        assert_eq!(
            metric(&text, "mirror_received_datagrams_total"),
            Some(payloads.len() as f64),
            "refused datagrams were received first"
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap_or_default(), "");
    }
}
