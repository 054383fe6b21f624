//! The admin endpoint of the daemon: /healthz, /readyz and /metrics, against real traffic on
//! loopback and, for readiness, a real Kafka-compatible broker (tansu) stopped and resumed.

mod common;

use common::{Broker, Daemon, get, metric, sample, tansu_bin, vxlan_payloads, wait_for};
use std::net::UdpSocket;
use std::path::PathBuf;
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

/// tansu, or `None` after saying why the test is skipped (a failure when `TANSU_REQUIRED` is set).
fn tansu() -> Option<PathBuf> {
    let found = tansu_bin();
    if let Err(why) = &found {
        assert!(
            std::env::var_os("TANSU_REQUIRED").is_none(),
            "TANSU_REQUIRED is set but tansu is missing"
        );
        eprintln!("SKIP: {why}");
    }
    found.ok()
}

#[test]
fn readyz_follows_the_broker() {
    let Some(tansu) = tansu() else {
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
