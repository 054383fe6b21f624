//! A flood: hundreds of thousands of one-sided, half-open flows and random garbage datagrams
//! sent to the daemon on loopback, with good traffic mixed in. The daemon must stay up, its RSS
//! must stay under the memory budget plus a fixed overhead, every bad datagram must be counted,
//! and the good traffic must still pair.

mod common;

use common::{Daemon, get, vxlan_datagram};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const FLOWS: u32 = 200_000;
const GARBAGE: u32 = 50_000;
const BUDGET_MIB: u64 = 2;
/// Process overhead beyond buffered stream bytes: code, allocator, per-flow bookkeeping of up to
/// --max-flows flows, channel and socket buffers that were touched.
const OVERHEAD_MIB: u64 = 160;
const VNI: u8 = 9;

/// The resident set size of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The value of a metric, 0 where the daemon has not rendered it.
fn metric(text: &str, name: &str) -> f64 {
    common::metric(text, name).unwrap_or(0.0)
}

#[test]
fn flood_of_half_open_flows_and_garbage_stays_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let budget = (BUDGET_MIB << 20).to_string();
    let mut daemon = Daemon::start([
        "--workers",
        "2",
        "--admin-listen",
        "127.0.0.1:0",
        "--memory-budget",
        &budget,
        "--max-flows",
        "50000",
        "--output",
        out.to_str().unwrap(),
    ]);
    let (port, admin) = (daemon.port, daemon.admin.clone());
    let rss_start = rss_kib(daemon.child.id());
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = ([10, 250, 0, 1], 8080);
    let good_client = ([10, 251, 0, 1], 40000);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let started = Instant::now();
    let mut good = 0;
    for i in 0..FLOWS {
        // One-sided flows: a request head that never ends, a different client each time.
        let c = (
            [10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8],
            1024 + (i % 60000) as u16,
        );
        let d = vxlan_datagram(VNI, c, server, 1, 1, b"GET /flood HTTP/1.1\r\nHost: victim\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        sender.send_to(&d, ("127.0.0.1", port)).unwrap();
        if i % 4 == 0 && i / 4 < GARBAGE {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 300) as usize;
            let junk: Vec<u8> = (0..len).map(|k| (rng >> (k % 56)) as u8).collect();
            sender.send_to(&junk, ("127.0.0.1", port)).unwrap();
        }
        // Good traffic in the middle of the flood: complete exchanges on one connection.
        if i % 20_000 == 0 {
            let seq = 1 + good * 27;
            let req = format!("GET /good/{good:04} HTTP/1.1\r\n\r\n");
            assert_eq!(req.len(), 27);
            let d1 = vxlan_datagram(VNI, good_client, server, seq, 1 + good * 38, req.as_bytes());
            let d2 = vxlan_datagram(
                VNI,
                server,
                good_client,
                1 + good * 38,
                seq + 27,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            );
            assert_eq!(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".len(), 38);
            sender.send_to(&d1, ("127.0.0.1", port)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
            sender.send_to(&d2, ("127.0.0.1", port)).unwrap();
            good += 1;
        }
        if i % 2000 == 0 {
            // Stay under the loopback receive buffer so the test measures the receiver.
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    eprintln!(
        "sent {FLOWS} flows and {GARBAGE} garbage datagrams in {:?}",
        started.elapsed()
    );
    let sent = (FLOWS + GARBAGE) as f64 + 2.0 * good as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text;
    loop {
        text = get(&admin, "/metrics").1;
        let received = metric(&text, "mirror_received_datagrams_total");
        let kernel_drops = metric(&text, "mirror_kernel_drops_total");
        let processed = metric(&text, "mirror_datagrams_total");
        if (received + kernel_drops >= sent && processed >= received) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss_end = rss_kib(daemon.child.id());
    eprintln!("RSS {rss_start} KiB at start, {rss_end} KiB after the flood");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    let datagrams = metric(&text, "mirror_datagrams_total");
    let segments = metric(&text, "mirror_segments_total");
    let drops: f64 = text
        .lines()
        .filter(|l| l.starts_with("mirror_decode_drops_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!("datagrams {datagrams} of {sent}, segments {segments}, decode drops {drops}");
    assert_eq!(
        datagrams,
        segments + drops,
        "every datagram decoded or counted"
    );
    let (received, kernel_drops) = (
        metric(&text, "mirror_received_datagrams_total"),
        metric(&text, "mirror_kernel_drops_total"),
    );
    eprintln!("received {received}, dropped by the kernel {kernel_drops}");
    assert_eq!(
        received + kernel_drops,
        sent,
        "every datagram sent was received or counted as dropped by the kernel"
    );
    assert_eq!(datagrams, received, "every datagram received was processed");
    assert!(datagrams > 0.9 * sent, "most datagrams reached the daemon");
    assert!(metric(&text, "mirror_flows_active") <= 50_000.0);
    let by_budget = metric(&text, "mirror_flows_closed_total{reason=\"memory_budget\"}");
    let by_count = metric(&text, "mirror_flows_closed_total{reason=\"evicted\"}");
    eprintln!("evicted: {by_budget} by the memory budget, {by_count} by --max-flows");
    assert!(by_budget > 0.0, "the budget was reached and enforced");
    assert!(
        metric(&text, "mirror_memory_budget_used_bytes") <= (BUDGET_MIB << 20) as f64,
        "buffered bytes within the budget"
    );
    assert!(
        rss_end < (BUDGET_MIB + OVERHEAD_MIB) << 10,
        "RSS {rss_end} KiB over budget + overhead"
    );
    daemon.stop(Duration::from_secs(120));
    let records = std::fs::read_to_string(&out).unwrap();
    let good_paths = records
        .lines()
        .filter(|l| l.contains("\"path\":\"/good/"))
        .count();
    let good_pairs = records
        .lines()
        .filter(|l| l.contains("\"path\":\"/good/") && l.contains("\"statusCode\":\"200\""))
        .count();
    eprintln!("good exchanges: {good_pairs} paired of {good} sent ({good_paths} records)");
    assert_eq!(good_pairs, good as usize, "good traffic still pairs");
}
