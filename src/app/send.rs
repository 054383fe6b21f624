//! `mirror-receiver send`: a capture's VXLAN datagrams, paced, to a receiver.

use crate::capture::CaptureReader;
use crate::wire;
use anyhow::{Context, Result};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// `mirror-receiver send`: the VXLAN datagrams of a capture, paced, to `--to`. Returns how many
/// were sent.
pub fn send(args: &crate::config::SendArgs) -> Result<u64> {
    use std::net::ToSocketAddrs;
    let to = args
        .to
        .to_socket_addrs()
        .with_context(|| format!("--to {}: not an address", args.to))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--to {}: resolves to no address", args.to))?;
    let mut payloads = Vec::new();
    let mut reader = CaptureReader::open(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    while let Some(frame) = reader.next_frame() {
        let frame = frame.with_context(|| format!("reading {}", args.file.display()))?;
        if let Some(link) = frame.link
            && let Ok(wire::CaptureFrame::Vxlan(p)) = wire::decode_capture_frame(link, &frame.data)
        {
            payloads.push(p.to_vec());
        }
    }
    if payloads.is_empty() {
        anyhow::bail!(
            "{} holds no VXLAN datagrams (UDP to port 4789)",
            args.file.display()
        );
    }
    let bind: std::net::SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    let start = Instant::now();
    let mut sent = 0u64;
    for _ in 0..args.loops {
        for p in &payloads {
            if args.rate > 0 {
                // Pace against the clock, not per datagram, so the average rate holds.
                let due = start + Duration::from_secs_f64(sent as f64 / args.rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            socket
                .send_to(p, to)
                .with_context(|| format!("sending to {to}"))?;
            sent += 1;
        }
    }
    Ok(sent)
}
