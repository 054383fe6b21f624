//! The daemon's ingest with several workers, on loopback: the kernel's steering program sends
//! each datagram to the worker of its inner flow, whatever outer source port each direction
//! has; what it cannot classify (QinQ, IPv6 extension headers) is handed to the owner and
//! counted; datagrams it cannot read (empty, junk, cut short) are counted and stall nobody.

mod common;

use common::{Daemon, get, parse_record};
use mirror_receiver::testkit::{NO_FLAGS, Peers, Shape, shaped_frame, vxlan_header};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const FLOWS: u16 = 16;
/// Outer sender sockets: each direction of a connection gets a different one.
const SENDERS: usize = 8;

/// (IPv6, shape, the program classifies it).
const SHAPES: [(bool, Shape, bool); 7] = [
    (false, Shape::Plain, true),
    (false, Shape::Vlan, true),
    (false, Shape::Ipv4Options, true),
    (true, Shape::Plain, true),
    (true, Shape::Vlan, true),
    (false, Shape::QinQ, false),
    (true, Shape::Ipv6HopByHop, false),
];

fn endpoint(v6: bool, host: u16, port: u16) -> SocketAddr {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 7, host))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 7, (host >> 8) as u8, host as u8))
    };
    SocketAddr::new(ip, port)
}

/// A datagram and the outer sender socket that sends it.
type Send = (usize, Vec<u8>);

/// Datagrams of one exchange per flow of each shape (requests, responses), and the path of
/// each exchange.
fn traffic() -> (Vec<Send>, Vec<Send>, Vec<String>) {
    let (mut requests, mut responses, mut paths) = (Vec::new(), Vec::new(), Vec::new());
    for (s, &(v6, shape, _)) in SHAPES.iter().enumerate() {
        for i in 0..FLOWS {
            let n = s * usize::from(FLOWS) + usize::from(i);
            let client = endpoint(v6, 1 + n as u16, 30_000 + n as u16);
            let mut peers = Peers::new(client, endpoint(v6, 0xfff0, 8443));
            let path = format!("/steer/{shape:?}/{}/{i}", if v6 { "v6" } else { "v4" });
            let req = format!("GET {path} HTTP/1.1\r\nHost: steer.test\r\n\r\n");
            let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            for (from_client, data, out, sender) in [
                (true, req.as_bytes(), &mut requests, n % SENDERS),
                (false, resp.as_bytes(), &mut responses, (n + 3) % SENDERS),
            ] {
                let seg = peers.seg(from_client, NO_FLAGS, data);
                let mut d = vxlan_header(5).to_vec();
                d.extend(shaped_frame(&seg.as_segment(), shape));
                out.push((sender, d));
            }
            paths.push(path);
        }
    }
    (requests, responses, paths)
}

fn metric(text: &str, name: &str) -> f64 {
    common::metric(text, name).unwrap_or(f64::NAN)
}

fn every_flow_pairs_with(workers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("records.jsonl");
    let mut daemon = Daemon::start([
        "--workers",
        &workers.to_string(),
        "--admin-listen",
        "127.0.0.1:0",
        "--output",
        out.to_str().unwrap(),
    ]);
    let to = ("127.0.0.1", daemon.port);
    let senders: Vec<UdpSocket> = (0..SENDERS)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    // First what no program can read: empty, junk, a bare VXLAN header, an IPv4 header cut
    // before its ports.
    let (requests, responses, paths) = traffic();
    let mut cut = requests[0].1.clone();
    cut.truncate(8 + 14 + 20);
    let unreadable = [Vec::new(), b"junk".to_vec(), vxlan_header(5).to_vec(), cut];
    for (i, d) in unreadable.iter().enumerate() {
        senders[i % SENDERS].send_to(d, to).unwrap();
    }
    for (sender, d) in &requests {
        senders[*sender].send_to(d, to).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    for (sender, d) in &responses {
        senders[*sender].send_to(d, to).unwrap();
    }
    let sent = (unreadable.len() + requests.len() + responses.len()) as f64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = get(&daemon.admin, "/metrics").1;
        if metric(&text, "mirror_datagrams_total") >= sent
            && metric(&text, "mirror_http_pairs_total") >= paths.len() as f64
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.stop(Duration::from_secs(20));

    let what = format!("{workers} workers");
    assert_eq!(
        metric(&text, "mirror_ingest_kernel_steering"),
        1.0,
        "{what}"
    );
    assert_eq!(
        metric(&text, "mirror_received_datagrams_total"),
        sent,
        "{what}"
    );
    assert_eq!(metric(&text, "mirror_datagrams_total"), sent, "{what}");
    assert_eq!(metric(&text, "mirror_kernel_drops_total"), 0.0, "{what}");
    let decode_drops: f64 = text
        .lines()
        .filter(|l| l.starts_with("mirror_decode_drops_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        decode_drops,
        unreadable.len() as f64,
        "{what}: unreadable datagrams counted"
    );
    // Only the shapes the program leaves to the kernel's outer hash can land on the wrong
    // socket, and with 2 x 2 x 16 datagrams from 8 sockets some of them do.
    let fallback = SHAPES.iter().filter(|s| !s.2).count() * usize::from(FLOWS) * 2;
    let handed = metric(&text, "mirror_ingest_handed_off_total");
    assert!(
        handed > 0.0 && handed <= fallback as f64,
        "{what}: {handed} handed off, of {fallback} the program cannot classify"
    );

    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        let r = parse_record(line);
        assert_eq!(
            (
                r["method"].as_str(),
                r["statusCode"].as_str(),
                r["is_pending"].as_str()
            ),
            (Some("GET"), Some("200"), Some("false")),
            "{what}: {line:.300}"
        );
        assert_eq!(r["responsePayload"], "ok", "{what}");
        *got.entry(r["path"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let want: BTreeMap<String, usize> = paths.into_iter().map(|p| (p, 1)).collect();
    assert_eq!(got, want, "{what}: one record per exchange");
}

#[test]
fn two_workers_pair_every_flow_whatever_its_outer_ports_and_shape() {
    every_flow_pairs_with(2);
}

#[test]
fn four_workers_pair_every_flow_whatever_its_outer_ports_and_shape() {
    every_flow_pairs_with(4);
}
