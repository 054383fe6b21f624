//! The command line as users and scripts meet it: the README's first command, errors on bad input,
//! `validate`, and the daemon receiving real UDP on loopback and shutting down on SIGTERM.

use mirror_receiver::capture::CaptureReader;
use mirror_receiver::wire::{CaptureFrame, decode_capture_frame};
use serde_json::Value;
use std::io::Read;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mirror-receiver");

fn sample() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/sample.vxlan.pcap")
}

/// A command with none of the receiver's variables inherited, so only the flags count.
fn cmd() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("MIRROR_") || k.starts_with("AKTO_") || k.starts_with("TRAFFIC_") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG");
    // Daemons in parallel tests must not share the default admin port.
    c.env("MIRROR_ADMIN_LISTEN", "127.0.0.1:0");
    c
}

fn records(stdout: &[u8]) -> Vec<Value> {
    std::str::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn summary(recs: &[Value]) -> Vec<(String, String, String, String)> {
    recs.iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_owned(),
                r["path"].as_str().unwrap().to_owned(),
                r["statusCode"].as_str().unwrap().to_owned(),
                r["is_pending"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expected_sample() -> Vec<(String, String, String, String)> {
    [
        ("GET", "/api/users/42?fields=name", "200", "false"),
        ("POST", "/api/cart", "201", "false"),
        ("GET", "/api/catalog", "200", "false"),
        ("GET", "/api/stream", "200", "false"),
        ("DELETE", "/api/cart/c-7", "204", "false"),
        ("GET", "/api/slow-report", "0", "true"),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect()
}

#[test]
fn replay_of_the_shipped_sample_prints_its_records() {
    let out = cmd().arg("replay").arg(sample()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = records(&out.stdout);
    assert_eq!(summary(&recs), expected_sample());
    for r in &recs {
        assert_eq!(r["akto_vxlan_id"], "1234");
        assert_eq!(r["ip"], "10.0.1.15");
        assert_eq!(r["destIp"], "10.0.2.40");
        assert_eq!(r["source"], "MIRRORING");
        assert_eq!(r["time"].as_str().unwrap().len(), 10);
    }
    // gzip decoded, chunked de-chunked.
    let catalog: Value =
        serde_json::from_str(recs[2]["responsePayload"].as_str().unwrap()).unwrap();
    assert_eq!(catalog["items"].as_array().unwrap().len(), 60);
    assert_eq!(recs[3]["responsePayload"], "{\"event\":1}\n{\"event\":2}\n");
    assert_eq!(
        recs[1]["requestPayload"],
        "{\"sku\":\"A-100\",\"quantity\":2}"
    );
}

#[test]
fn replay_writes_to_an_output_file_and_sets_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    let out = cmd()
        .args(["replay", "--account-id", "424242", "--output"])
        .arg(&path)
        .arg(sample())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let recs = records(&std::fs::read(&path).unwrap());
    assert_eq!(recs.len(), 6);
    assert!(recs.iter().all(|r| r["akto_account_id"] == "424242"));
}

#[test]
fn unreadable_captures_fail_with_a_clear_message() {
    let out = cmd()
        .args(["replay", "/nonexistent/x.pcap"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/x.pcap"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("notes.txt");
    std::fs::write(&bogus, "this is not a capture").unwrap();
    let out = cmd().arg("replay").arg(&bogus).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a pcap or pcapng file"), "{err}");

    // A capture cut in the middle of a packet record.
    let data = std::fs::read(sample()).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &data[..data.len() - 30]).unwrap();
    let out = cmd().arg("replay").arg(&cut).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut.pcap"));
}

#[test]
fn validate_names_the_bad_setting() {
    let ok = cmd().arg("validate").output().unwrap();
    assert!(ok.status.success());
    for (args, env, name) in [
        (vec!["validate", "--max-flows", "0"], None, "--max-flows"),
        (vec!["validate", "--account-id", "x1"], None, "--account-id"),
        (
            vec!["validate"],
            Some(("TRAFFIC_INACTIVITY_THRESHOLD", "soon")),
            "TRAFFIC_INACTIVITY_THRESHOLD",
        ),
        (
            vec!["validate", "--log-level", "chatty"],
            None,
            "--log-level",
        ),
    ] {
        let mut c = cmd();
        c.args(&args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{args:?}: {err}");
    }
    // Clap rejects unparsable flag values itself, naming the flag.
    let out = cmd()
        .args(["validate", "--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

#[test]
fn help_shows_env_vars_and_defaults() {
    let out = cmd().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "MIRROR_LISTEN",
        "0.0.0.0:4789",
        "MIRROR_KAFKA_BROKERS",
        "akto.api.logs",
        "MIRROR_FLOW_IDLE_TIMEOUT",
        "MIRROR_MAX_BODY_BYTES",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

/// The UDP payloads (VXLAN header + inner frame) of a VXLAN capture, as a mirror target gets them.
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

/// A daemon on a free loopback port writing JSON lines to a temporary file, started and bound.
struct Daemon {
    child: std::process::Child,
    stderr: std::process::ChildStderr,
    port: u16,
    out_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(workers: &str) -> Daemon {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("records.jsonl");
        let mut child = cmd()
            .args(["run", "--workers", workers, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--output")
            .arg(&out_path)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        // Wait for the socket to be bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut log = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&log).contains("receiving VXLAN") {
            assert!(Instant::now() < deadline, "daemon did not start");
            let n = stderr.read(&mut buf).unwrap();
            assert!(n > 0, "daemon exited: {}", String::from_utf8_lossy(&log));
            log.extend_from_slice(&buf[..n]);
        }
        Daemon {
            child,
            stderr,
            port,
            out_path,
            _dir: dir,
        }
    }
}

#[test]
fn daemon_pairs_udp_traffic_and_flushes_pending_requests_on_sigterm() {
    // The daemon's stderr stays open (bound) for as long as it runs.
    let Daemon {
        mut child,
        mut stderr,
        port,
        out_path,
        _dir,
    } = Daemon::start("2");
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in vxlan_payloads(&sample()) {
        sender.send_to(&p, ("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    // Garbage and non-VXLAN datagrams are counted, never fatal.
    sender.send_to(b"\x00\x01", ("127.0.0.1", port)).unwrap();
    sender.send_to(&[0x08u8; 300], ("127.0.0.1", port)).unwrap();
    // Every complete pair is written while running (the pending one needs the flow to end).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = std::fs::read_to_string(&out_path).map_or(0, |s| s.lines().count());
        if n >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "records not written while running: {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no exit within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped"), "{rest}");
    let mut recs = records(&std::fs::read(&out_path).unwrap());
    recs.sort_by_key(|r| r["path"].as_str().unwrap().to_owned());
    let mut want = expected_sample();
    want.sort_by_key(|w| w.1.clone());
    assert_eq!(summary(&recs), want);
}

/// One VXLAN datagram (VNI 77) carrying an Ethernet/IPv4/TCP frame with `payload`.
fn vxlan_datagram(
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.0, dst.0, 64)
        .tcp(src.1, dst.1, seq, 65535)
        .ack(ack)
        .psh();
    let mut out = vec![0x08, 0, 0, 0, 0, 0, 77, 0];
    builder.write(&mut out, payload).unwrap();
    out
}

#[test]
fn daemon_takes_jumbo_frames_whole() {
    // The daemon's stderr stays open (bound) for as long as it runs.
    let Daemon {
        mut child,
        stderr: _stderr,
        port,
        out_path,
        _dir,
    } = Daemon::start("1");
    // A 9001-byte IP packet (AWS's jumbo MTU): 40 bytes of headers and 8961 of payload.
    let head_len = "POST /jumbo HTTP/1.1\r\nContent-Length: 8915\r\n\r\n".len();
    let body_len = 8961 - head_len;
    let mut request =
        format!("POST /jumbo HTTP/1.1\r\nContent-Length: {body_len}\r\n\r\n").into_bytes();
    request.extend(std::iter::repeat_n(b'j', body_len));
    assert_eq!(request.len(), 8961);
    let c = ([10, 9, 0, 1], 40000);
    let s = ([10, 9, 0, 2], 8000);
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let d1 = vxlan_datagram(c, s, 1, 1, &request);
    assert_eq!(d1.len(), 8 + 14 + 9001);
    let d2 = vxlan_datagram(s, c, 1, 1 + request.len() as u32, response);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(&d1, ("127.0.0.1", port)).unwrap();
    sender.send_to(&d2, ("127.0.0.1", port)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&out_path).map_or(0, |s| s.lines().count()) < 1 {
        assert!(Instant::now() < deadline, "no record for the jumbo frame");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    let recs = records(&std::fs::read(&out_path).unwrap());
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["path"], "/jumbo");
    assert_eq!(recs[0]["akto_vxlan_id"], "77");
    assert_eq!(recs[0]["requestPayload"].as_str().unwrap().len(), body_len);
    assert!(recs[0].get("truncated").is_none());
}

#[test]
fn filters_drop_and_redact_before_records_leave() {
    let rule = r#"[{"key":{"eq":"user-agent","ifAbsent":"reject"},"value":{"regex":"^curl/"}}]"#;
    let out = cmd()
        .args(["replay", "--deny-path", "/api/cart", "--redact-default"])
        .env("AKTO_MODULE_DISCOVERY_CONFIG", rule)
        .arg(sample())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = records(&out.stdout);
    // Only the first request carries `User-Agent: curl/...`; the cart paths are denied anyway.
    assert_eq!(summary(&recs), vec![expected_sample()[0].clone()]);
    let headers: Value = serde_json::from_str(recs[0]["requestHeaders"].as_str().unwrap()).unwrap();
    assert_eq!(headers["authorization"], "REDACTED");
    assert_eq!(headers["host"], "shop.example");

    let out = cmd()
        .args(["replay", "--ignore-ip-traffic", "--sample-rate", "0"])
        .arg(sample())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(records(&out.stdout).is_empty());
}

#[test]
fn invalid_filters_are_rejected_by_name() {
    for (args, env, name) in [
        (
            vec!["validate", "--sample-rate", "2"],
            None,
            "--sample-rate",
        ),
        (
            vec!["validate", "--allow-path", "api"],
            None,
            "--allow-path",
        ),
        (
            vec!["validate"],
            Some(("AKTO_MODULE_DISCOVERY_CONFIG", "[{\"key\":")),
            "--discovery-config",
        ),
        (
            vec![
                "validate",
                "--discovery-config",
                r#"[{"key":{"eq":"host"},"value":{"regex":"("}}]"#,
            ],
            None,
            "--discovery-config",
        ),
    ] {
        let mut c = cmd();
        c.args(&args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{args:?}: {err}");
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let out = cmd()
        .args(["--log-format", "json", "replay"])
        .arg(sample())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Value = stderr
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("each log line is JSON"))
        .find(|v| v["message"] == "replay finished")
        .expect("summary line");
    assert_eq!(summary["pairs"], 5);
    assert_eq!(summary["level"], "INFO");
}

#[test]
fn config_file_fills_what_flags_and_variables_leave_unset() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("receiver.toml");
    std::fs::write(
        &file,
        "account-id = \"777\"\ndeny_path = [\"/api/cart\"]\nredact-default = true\nmax-body-bytes = 4096\n",
    )
    .unwrap();
    let run = |extra: &[&str], env: Option<(&str, &str)>| {
        let mut c = cmd();
        c.arg("--config")
            .arg(&file)
            .arg("replay")
            .args(extra)
            .arg(sample());
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        records(&out.stdout)
    };
    let recs = run(&[], None);
    assert_eq!(recs.len(), 4, "the cart paths are denied by the file");
    assert!(recs.iter().all(|r| r["akto_account_id"] == "777"));
    let h: Value = serde_json::from_str(recs[0]["requestHeaders"].as_str().unwrap()).unwrap();
    assert_eq!(h["authorization"], "REDACTED");
    // A flag wins over the file, and so does a MIRROR_* variable.
    assert!(
        run(&["--account-id", "1"], None)
            .iter()
            .all(|r| r["akto_account_id"] == "1")
    );
    assert!(
        run(&[], Some(("MIRROR_ACCOUNT_ID", "2")))
            .iter()
            .all(|r| r["akto_account_id"] == "2")
    );

    std::fs::write(&file, "acount-id = \"777\"\n").unwrap();
    let out = cmd()
        .arg("--config")
        .arg(&file)
        .arg("validate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("acount-id") && err.contains("no such setting"),
        "{err}"
    );
    std::fs::write(&file, "account-id = = 1\n").unwrap();
    let out = cmd()
        .arg("--config")
        .arg(&file)
        .arg("validate")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid TOML"));
}

#[test]
fn send_delivers_a_capture_to_a_running_daemon() {
    // The daemon's stderr stays open (bound) for as long as it runs.
    let Daemon {
        mut child,
        stderr: _stderr,
        port,
        out_path,
        _dir,
    } = Daemon::start("2");
    let out = cmd()
        .args(["send", "--rate", "2000", "--loop", "1", "--to"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(sample())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("sent 20 datagrams"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&out_path).map_or(0, |s| s.lines().count()) < 5 {
        assert!(Instant::now() < deadline, "records from sent datagrams");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    let mut recs = records(&std::fs::read(&out_path).unwrap());
    recs.sort_by_key(|r| r["path"].as_str().unwrap().to_owned());
    let mut want = expected_sample();
    want.sort_by_key(|w| w.1.clone());
    assert_eq!(summary(&recs), want);

    // A capture without VXLAN says so.
    let plain = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/upstream.py");
    let out = cmd()
        .args(["send", "--to", "127.0.0.1:9"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a pcap"), "{err}");
}

/// A SIGTERM soon after start, before the daemon is ready, is an orderly stop (the handlers are
/// installed before anything else; the delays leave the process time to reach `main`).
#[test]
fn sigterm_right_after_start_is_an_orderly_stop() {
    for delay_ms in [0u64, 30, 200] {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = cmd()
            .args(["run", "--workers", "1", "--output", "/dev/null", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100 + delay_ms));
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let status = child.wait().unwrap();
        assert!(status.success(), "after {delay_ms} ms: {status:?}");
    }
}
