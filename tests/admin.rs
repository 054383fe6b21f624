//! The admin endpoint of the daemon: /healthz, /readyz and /metrics, against real traffic on
//! loopback and, for readiness, a real Kafka-compatible broker (tansu) stopped and resumed.

mod common;

use common::{
    Broker, Daemon, Need, get, metric, sample, skip, tansu_or_skip, vxlan_payloads, wait_for,
};
use std::net::UdpSocket;
use std::time::Duration;

/// A daemon with two workers and its admin endpoint on a free port, given by the flag.
fn start(extra: &[&str]) -> Daemon {
    Daemon::start(
        ["--workers", "2", "--admin-listen", "127.0.0.1:0"]
            .iter()
            .chain(extra),
    )
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
        sender.send_to(p, ("127.0.0.1", d.port)).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    sender.send_to(b"junk", ("127.0.0.1", d.port)).unwrap();
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
    // Every session's counts add up to the totals: pairs before the filters, records after.
    assert_eq!(metric(&text, "mirror_filter_passed_total"), Some(written));
    assert_eq!(
        metric(&text, "mirror_vni_filter_passed_total{vni=\"1234\"}"),
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

#[test]
fn readyz_follows_the_broker() {
    let Some(tansu) = tansu_or_skip("readyz_follows_the_broker") else {
        return;
    };
    let broker = Broker::start(&tansu);
    broker.create_topic("ready.test", 3);
    let spool = tempfile::tempdir().unwrap();
    let d = start(&[
        "--kafka-brokers",
        &broker.bootstrap(),
        "--topic",
        "ready.test",
        "--spool-dir",
        spool.path().to_str().unwrap(),
    ]);
    wait_for("ready with the broker up", Duration::from_secs(20), || {
        get(&d.admin, "/readyz").0 == 200
    });
    broker.pause();
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
    broker.resume();
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
            sender.send_to(p, ("127.0.0.1", d.port)).unwrap();
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

#[test]
fn records_too_large_are_counted_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    // The smallest record limit `validate` accepts; the first exchange's request head alone
    // is larger, the second's fits.
    let d = start(&[
        "--max-record-bytes",
        "1024",
        "--output",
        out.to_str().unwrap(),
    ]);
    let (client, server) = (([10, 0, 0, 2], 41000), ([10, 0, 0, 9], 8080));
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: h\r\nX-Fill: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let small = "GET /small HTTP/1.1\r\nHost: h\r\n\r\n";
    let resp = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (mut c, mut s) = (1u32, 1u32);
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for req in [big.as_str(), small] {
        let d1 = common::vxlan_datagram(7, client, server, c, s, req.as_bytes());
        c += req.len() as u32;
        let d2 = common::vxlan_datagram(7, server, client, s, c, resp.as_bytes());
        s += resp.len() as u32;
        for dg in [d1, d2] {
            sender.send_to(&dg, ("127.0.0.1", d.port)).unwrap();
        }
    }
    let mut text = String::new();
    wait_for(
        "the oversized record to be counted",
        Duration::from_secs(15),
        || {
            text = get(&d.admin, "/metrics").1;
            metric(&text, "mirror_http_pairs_total") == Some(2.0)
                && metric(&text, "mirror_records_too_large_total") == Some(1.0)
        },
    );
    // The metrics above were read when the pipeline had counted both pairs; the sink thread
    // may take the other record a little later.
    wait_for("the other record written", Duration::from_secs(15), || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() == 1)
            && metric(&get(&d.admin, "/metrics").1, "mirror_sink_records_total")
                .is_some_and(|n| n >= 1.0)
    });
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("/small"), "{written}");
    let text = get(&d.admin, "/metrics").1;
    assert_eq!(metric(&text, "mirror_sink_records_total"), Some(1.0));
    assert_eq!(metric(&text, "mirror_records_too_large_total"), Some(1.0));
}

/// The Python that parses the exposition with the Prometheus project's own OpenMetrics parser
/// (`prometheus_client`): `MIRROR_METRICS_PYTHON`, else the venv `.ci/run` creates. Without it
/// the test skips, and fails instead when `MIRROR_INFRA_REQUIRE=1` (as CI sets).
fn openmetrics_python() -> Option<String> {
    const INSTALL: &str = "python3 -m venv /opt/mirror-receiver-ci-venv && \
                           /opt/mirror-receiver-ci-venv/bin/pip install prometheus_client";
    let python = std::env::var("MIRROR_METRICS_PYTHON")
        .unwrap_or_else(|_| "/opt/mirror-receiver-ci-venv/bin/python".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    let why = format!("{python} cannot import prometheus_client; install: {INSTALL}");
    skip(Need::Infra, "the OpenMetrics check", &why);
    None
}

/// Every sample of `/metrics`, as the reference parser reads it: (family type, value) by sample
/// name with its labels rendered as in the exposition.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % kv for kv in s.labels.items())
        out[s.name + ("{%s}" % labels if labels else "")] = [fam.type, s.value]
print(json.dumps(out))
"#;

#[test]
fn metrics_are_valid_openmetrics() {
    let Some(python) = openmetrics_python() else {
        return;
    };
    let d = start(&["--output", "/dev/null"]);
    let payloads = vxlan_payloads(&sample());
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in &payloads {
        sender.send_to(p, ("127.0.0.1", d.port)).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    let mut text = String::new();
    wait_for("metrics to show the pairs", Duration::from_secs(15), || {
        text = get(&d.admin, "/metrics").1;
        metric(&text, "mirror_http_pairs_total") == Some(5.0)
    });
    let mut child = std::process::Command::new(&python)
        .args(["-c", PARSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap();
    // Every sample line, read by both, with the same value.
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        let theirs = parsed
            .get(name)
            .unwrap_or_else(|| panic!("{name} not parsed"));
        assert_eq!(theirs[1].as_f64(), value.parse::<f64>().ok(), "{line}");
        samples += 1;
    }
    assert_eq!(
        samples,
        parsed.len(),
        "samples the parser saw that we did not"
    );
    let kind = |name: &str| parsed[name][0].as_str().unwrap().to_owned();
    assert_eq!(kind("mirror_datagrams_total"), "counter");
    assert_eq!(kind("mirror_flows_active"), "gauge");
    assert_eq!(kind("mirror_vni_pairs_total{vni=\"1234\"}"), "counter");
    assert!(
        parsed
            .keys()
            .any(|k| k.starts_with("mirror_build_info{version=")),
        "{parsed:?}"
    );
    assert_eq!(parsed["mirror_vni_pairs_total{vni=\"1234\"}"][1], 5.0);
}
