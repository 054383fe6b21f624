//! The command line as users and scripts meet it: the README's first command, errors on bad input,
//! `validate`, and the daemon receiving real UDP on loopback and shutting down on SIGTERM.

mod common;

use common::{
    Daemon, free_udp_port, receiver, sample, signal, vxlan_datagram, vxlan_payloads, wait_for,
};
use serde_json::Value;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

fn records(stdout: &[u8]) -> Vec<Value> {
    std::str::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (method, path, statusCode, is_pending) of a record.
type Exchange = (String, String, String, String);

fn summary(recs: &[Value]) -> Vec<Exchange> {
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

fn expected_sample() -> Vec<Exchange> {
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

/// The summary of `recs`, by path: the order the daemon wrote them in depends on its workers.
fn sorted_summary(mut recs: Vec<Value>) -> Vec<Exchange> {
    recs.sort_by_key(|r| r["path"].as_str().unwrap().to_owned());
    summary(&recs)
}

/// [`expected_sample`] by path.
fn sorted_summary_of_sample() -> Vec<Exchange> {
    let mut want = expected_sample();
    want.sort_by_key(|w| w.1.clone());
    want
}

/// Asserts that a command succeeded, showing its stderr if not.
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replay_of_the_shipped_sample_prints_its_records() {
    let out = receiver().arg("replay").arg(sample()).output().unwrap();
    assert_success(&out);
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
    let out = receiver()
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
    let out = receiver()
        .args(["replay", "/nonexistent/x.pcap"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/x.pcap"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("notes.txt");
    std::fs::write(&bogus, "this is not a capture").unwrap();
    let out = receiver().arg("replay").arg(&bogus).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a pcap or pcapng file"), "{err}");

    // A capture cut in the middle of a packet record.
    let data = std::fs::read(sample()).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &data[..data.len() - 30]).unwrap();
    let out = receiver().arg("replay").arg(&cut).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut.pcap"));
}

/// A command's arguments, a variable to set if any, and the setting its error must name.
type Rejected<'a> = (Vec<&'a str>, Option<(&'a str, &'a str)>, &'a str);

/// Each command fails, naming the bad setting.
fn assert_each_rejected(cases: &[Rejected]) {
    for (args, env, name) in cases {
        let mut c = receiver();
        c.args(args);
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
fn validate_names_the_bad_setting() {
    let ok = receiver().arg("validate").output().unwrap();
    assert!(ok.status.success());
    assert_each_rejected(&[
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
    ]);
    // Clap rejects unparsable flag values itself, naming the flag.
    let out = receiver()
        .args(["validate", "--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

/// `validate` checks that the brokers resolve; `validate --offline`, which the systemd unit runs
/// before the daemon (DNS may not answer yet at boot), checks everything else.
#[test]
fn validate_offline_skips_broker_resolution_only() {
    let spool = tempfile::tempdir().unwrap();
    let check = |extra: &[&str]| {
        let mut cmd = receiver();
        cmd.arg("validate")
            .args(["--kafka-brokers", "no-such-broker.invalid:9092"])
            .arg("--spool-dir")
            .arg(spool.path())
            .args(extra);
        cmd.output().unwrap()
    };
    let online = check(&[]);
    assert!(!online.status.success());
    let err = String::from_utf8_lossy(&online.stderr);
    assert!(
        err.contains("--kafka-brokers") && err.contains("no-such-broker.invalid"),
        "{err}"
    );
    let offline = check(&["--offline"]);
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
    assert!(String::from_utf8_lossy(&offline.stdout).contains("configuration is valid"));
    // Offline still checks the rest: the spool directory must be writable.
    let out = receiver()
        .args(["validate", "--offline", "--kafka-brokers", "b.invalid:9092"])
        .args(["--spool-dir", "/proc/no-spool-here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spool-dir"));
}

#[test]
fn help_shows_env_vars_and_defaults() {
    let out = receiver().args(["run", "--help"]).output().unwrap();
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

/// A daemon writing JSON lines to a file in a temporary directory.
struct Writing {
    daemon: Daemon,
    out_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Writing {
    /// A daemon with `workers` workers, started and bound.
    fn start(workers: &str) -> Writing {
        let dir = tempfile::tempdir().unwrap();
        let out_path = dir.path().join("records.jsonl");
        let daemon = Daemon::start(["--workers", workers, "--output", out_path.to_str().unwrap()]);
        Writing {
            daemon,
            out_path,
            _dir: dir,
        }
    }

    /// Waits (at most 10 s) until `n` records are written while running, stops the daemon with
    /// SIGTERM (a clean exit within 10 s), and returns all it wrote, and its stderr.
    fn records_after(mut self, n: usize, what: &str) -> (Vec<Value>, String) {
        wait_for(what, Duration::from_secs(10), || {
            std::fs::read_to_string(&self.out_path).map_or(0, |s| s.lines().count()) >= n
        });
        let stderr = self.daemon.stop(Duration::from_secs(10));
        (records(&std::fs::read(&self.out_path).unwrap()), stderr)
    }
}

#[test]
fn daemon_pairs_udp_traffic_and_flushes_pending_requests_on_sigterm() {
    let w = Writing::start("2");
    let port = w.daemon.port;
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in vxlan_payloads(&sample()) {
        sender.send_to(&p, ("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    // Garbage and non-VXLAN datagrams are counted, never fatal.
    sender.send_to(b"\x00\x01", ("127.0.0.1", port)).unwrap();
    sender.send_to(&[0x08u8; 300], ("127.0.0.1", port)).unwrap();
    // Every complete pair is written while running (the pending one needs the flow to end).
    let (recs, rest) = w.records_after(5, "the complete pairs written while running");
    assert!(rest.contains("stopped"), "{rest}");
    assert_eq!(sorted_summary(recs), sorted_summary_of_sample());
}

#[test]
fn daemon_takes_jumbo_frames_whole() {
    let w = Writing::start("1");
    let port = w.daemon.port;
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
    let d1 = vxlan_datagram(77, c, s, 1, 1, &request);
    assert_eq!(d1.len(), 8 + 14 + 9001);
    let d2 = vxlan_datagram(77, s, c, 1, 1 + request.len() as u32, response);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(&d1, ("127.0.0.1", port)).unwrap();
    sender.send_to(&d2, ("127.0.0.1", port)).unwrap();
    let (recs, _) = w.records_after(1, "a record of the jumbo frame");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["path"], "/jumbo");
    assert_eq!(recs[0]["akto_vxlan_id"], "77");
    assert_eq!(recs[0]["requestPayload"].as_str().unwrap().len(), body_len);
    assert!(recs[0].get("truncated").is_none());
}

#[test]
fn filters_drop_and_redact_before_records_leave() {
    let rule = r#"[{"key":{"eq":"user-agent","ifAbsent":"reject"},"value":{"regex":"^curl/"}}]"#;
    let out = receiver()
        .args(["replay", "--deny-path", "/api/cart", "--redact-default"])
        .env("AKTO_MODULE_DISCOVERY_CONFIG", rule)
        .arg(sample())
        .output()
        .unwrap();
    assert_success(&out);
    let recs = records(&out.stdout);
    // Only the first request carries `User-Agent: curl/...`; the cart paths are denied anyway.
    assert_eq!(summary(&recs), vec![expected_sample()[0].clone()]);
    let headers: Value = serde_json::from_str(recs[0]["requestHeaders"].as_str().unwrap()).unwrap();
    assert_eq!(headers["authorization"], "REDACTED");
    assert_eq!(headers["host"], "shop.example");

    let out = receiver()
        .args(["replay", "--ignore-ip-traffic", "--sample-rate", "0"])
        .arg(sample())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(records(&out.stdout).is_empty());
}

#[test]
fn invalid_filters_are_rejected_by_name() {
    assert_each_rejected(&[
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
    ]);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let out = receiver()
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
        let mut c = receiver();
        c.arg("--config")
            .arg(&file)
            .arg("replay")
            .args(extra)
            .arg(sample());
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert_success(&out);
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

    let validate = || {
        receiver()
            .arg("--config")
            .arg(&file)
            .arg("validate")
            .output()
            .unwrap()
    };
    std::fs::write(&file, "acount-id = \"777\"\n").unwrap();
    let out = validate();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("acount-id") && err.contains("no such setting"),
        "{err}"
    );
    std::fs::write(&file, "account-id = = 1\n").unwrap();
    let out = validate();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid TOML"));
}

#[test]
fn send_delivers_a_capture_to_a_running_daemon() {
    let w = Writing::start("2");
    let port = w.daemon.port;
    let out = receiver()
        .args(["send", "--rate", "2000", "--loop", "1", "--to"])
        .arg(format!("127.0.0.1:{port}"))
        .arg(sample())
        .output()
        .unwrap();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sent 20 datagrams"));
    let (recs, _) = w.records_after(5, "records of the sent datagrams");
    assert_eq!(sorted_summary(recs), sorted_summary_of_sample());

    // A capture without VXLAN says so.
    let plain = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/upstream.py");
    let out = receiver()
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
        let port = free_udp_port();
        let mut child = receiver()
            .args(["run", "--workers", "1", "--output", "/dev/null", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100 + delay_ms));
        signal(&child, libc::SIGTERM);
        let status = child.wait().unwrap();
        assert!(status.success(), "after {delay_ms} ms: {status:?}");
    }
}
