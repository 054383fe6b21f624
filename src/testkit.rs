//! Builders the tests, fuzz targets and benches share (not part of the receiver's API): TCP
//! segments as the wire stage decodes them, the two sides of a connection with their sequence
//! numbers, and the packets a mirror session sends of them (Ethernet frames, VXLAN datagrams,
//! the outer Ethernet/IPv4/UDP of a capture taken on the receiver), written by etherparse, and
//! classic pcap files of them, written by pcap-file.

use crate::wire::{TcpFlags, TcpSegment};
use std::net::{IpAddr, SocketAddr};

pub const NO_FLAGS: TcpFlags = TcpFlags {
    syn: false,
    fin: false,
    rst: false,
};
pub const SYN: TcpFlags = TcpFlags {
    syn: true,
    ..NO_FLAGS
};
pub const FIN: TcpFlags = TcpFlags {
    fin: true,
    ..NO_FLAGS
};
pub const RST: TcpFlags = TcpFlags {
    rst: true,
    ..NO_FLAGS
};

/// A socket address from its text (`"10.0.0.1:40000"`, `"[fd00::1]:80"`); panics on a typo.
pub fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an address: {e}"))
}

/// A segment as `wire` decodes it, nothing missing.
pub fn segment<'a>(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: Option<u32>,
    flags: TcpFlags,
    payload: &'a [u8],
) -> TcpSegment<'a> {
    TcpSegment {
        src,
        dst,
        seq,
        ack,
        flags,
        payload,
        missing: 0,
    }
}

/// One segment of a [`Peers`] connection, prepared and not yet delivered: a test sends,
/// reorders, drops or cuts it as a mirror would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seg {
    pub from_client: bool,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    /// The peer's next sequence number (`None` on the client's SYN).
    pub ack: Option<u32>,
    pub flags: TcpFlags,
    pub data: Vec<u8>,
}

impl Seg {
    pub fn as_segment(&self) -> TcpSegment<'_> {
        segment(
            self.src, self.dst, self.seq, self.ack, self.flags, &self.data,
        )
    }
}

/// The two sides of a TCP connection and each one's next sequence number.
#[derive(Clone, Debug)]
pub struct Peers {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Next sequence number of the client and of the server.
    pub next: [u32; 2],
}

impl Peers {
    /// Initial sequence numbers 1000 (client) and 50,000 (server).
    pub fn new(client: SocketAddr, server: SocketAddr) -> Peers {
        Peers::with_isn(client, server, [1000, 50_000])
    }

    pub fn with_isn(client: SocketAddr, server: SocketAddr, isn: [u32; 2]) -> Peers {
        Peers {
            client,
            server,
            next: isn,
        }
    }

    /// A segment of `data` from one side, acknowledging all the other side has sent (but on the
    /// client's SYN); SYN and FIN take a sequence number each.
    pub fn seg(&mut self, from_client: bool, flags: TcpFlags, data: &[u8]) -> Seg {
        let (me, peer) = if from_client { (0, 1) } else { (1, 0) };
        let (src, dst) = if from_client {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        let ack = (!(flags.syn && from_client)).then_some(self.next[peer]);
        let seg = Seg {
            from_client,
            src,
            dst,
            seq: self.next[me],
            ack,
            flags,
            data: data.to_vec(),
        };
        let advance = data.len() as u32 + u32::from(flags.syn) + u32::from(flags.fin);
        self.next[me] = self.next[me].wrapping_add(advance);
        seg
    }

    /// `data` from one side in segments of at most `mss` bytes.
    pub fn send(&mut self, from_client: bool, data: &[u8], mss: usize) -> Vec<Seg> {
        data.chunks(mss.max(1))
            .map(|chunk| self.seg(from_client, NO_FLAGS, chunk))
            .collect()
    }
}

/// The Ethernet II frame of `seg` (IPv4 or IPv6 as its addresses are; PSH on data, ACK when it
/// acknowledges). Panics when the two addresses are of different families.
pub fn ethernet_frame(seg: &TcpSegment<'_>) -> Vec<u8> {
    let eth = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = match (seg.src.ip(), seg.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("{} -> {}: one address family per segment", seg.src, seg.dst),
    };
    let mut tcp = ip.tcp(seg.src.port(), seg.dst.port(), seg.seq, 65535);
    if let Some(ack) = seg.ack {
        tcp = tcp.ack(ack);
    }
    if !seg.payload.is_empty() {
        tcp = tcp.psh();
    }
    if seg.flags.syn {
        tcp = tcp.syn();
    }
    if seg.flags.fin {
        tcp = tcp.fin();
    }
    if seg.flags.rst {
        tcp = tcp.rst();
    }
    let mut out = Vec::with_capacity(tcp.size(seg.payload.len()));
    // Writing into a Vec fails only for a payload past what IP can carry.
    tcp.write(&mut out, seg.payload)
        .unwrap_or_else(|e| panic!("building a frame: {e}"));
    out
}

/// How [`shaped_frame`] dresses a frame: the shapes the kernel's steering program classifies
/// and those it leaves to the fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Plain,
    /// One 802.1Q tag (VLAN 100).
    Vlan,
    /// An 802.1ad tag (VLAN 10) over an 802.1Q tag (VLAN 100).
    QinQ,
    /// IPv4 with 4 bytes of options (IHL 6).
    Ipv4Options,
    /// IPv6 with an empty hop-by-hop extension header before TCP.
    Ipv6HopByHop,
    /// IPv4 with the more-fragments flag set.
    Ipv4Fragment,
}

impl Shape {
    pub const ALL: [Shape; 6] = [
        Shape::Plain,
        Shape::Vlan,
        Shape::QinQ,
        Shape::Ipv4Options,
        Shape::Ipv6HopByHop,
        Shape::Ipv4Fragment,
    ];
}

/// [`ethernet_frame`] of `seg` dressed as `shape`. Panics for a shape of the other address
/// family (IPv4 options or fragment on IPv6, hop-by-hop on IPv4).
pub fn shaped_frame(seg: &TcpSegment<'_>, shape: Shape) -> Vec<u8> {
    let mut f = ethernet_frame(seg);
    const IP: usize = 14;
    let v4 = seg.src.is_ipv4();
    let add_to_u16 = |f: &mut [u8], at: usize, n: u16| {
        let v = u16::from_be_bytes([f[at], f[at + 1]]) + n;
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    };
    match shape {
        Shape::Plain => {}
        Shape::Vlan => {
            f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        }
        Shape::QinQ => {
            f.splice(12..12, [0x88, 0xa8, 0x00, 0x0a, 0x81, 0x00, 0x00, 0x64]);
        }
        Shape::Ipv4Options | Shape::Ipv4Fragment => {
            assert!(v4, "{shape:?} on an IPv6 segment");
            let (mut h, _) = etherparse::Ipv4Header::from_slice(&f[IP..])
                .unwrap_or_else(|e| panic!("re-reading the IPv4 header: {e}"));
            let old_len = h.header_len();
            if shape == Shape::Ipv4Options {
                h.options = [1u8, 1, 1, 0][..].try_into().expect("4 bytes of options");
                h.total_len += 4;
            } else {
                h.more_fragments = true;
            }
            h.header_checksum = h.calc_header_checksum();
            f.splice(IP..IP + old_len, h.to_bytes());
        }
        Shape::Ipv6HopByHop => {
            assert!(!v4, "an IPv6 extension header on an IPv4 segment");
            f[IP + 6] = 0;
            f.splice(IP + 40..IP + 40, [6, 0, 1, 4, 0, 0, 0, 0]);
            add_to_u16(&mut f, IP + 4, 8);
        }
    }
    f
}

/// An HTTP/2 frame: type, flags, stream, payload (RFC 9113 section 4.1).
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("a frame payload under 16 MiB")
        .to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Bytes written in hexadecimal, whitespace ignored (RFC examples as they print them). Panics
/// on anything else.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).unwrap_or_default();
            u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("not hex: {pair:?}"))
        })
        .collect()
}

/// The VXLAN header of `vni` (I flag set).
pub fn vxlan_header(vni: u32) -> [u8; 8] {
    let v = vni.to_be_bytes();
    [0x08, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// The UDP payload a mirror target receives for `seg`: VXLAN header and inner frame.
pub fn vxlan_datagram(vni: u32, seg: &TcpSegment<'_>) -> Vec<u8> {
    let mut out = vxlan_header(vni).to_vec();
    out.extend(ethernet_frame(seg));
    out
}

/// A VXLAN datagram as a capture on the receiver shows it: outer Ethernet, IPv4 10.0.0.1 ->
/// 10.0.0.2, UDP from `outer_sport` to 4789.
pub fn outer_frame(outer_sport: u16, datagram: &[u8]) -> Vec<u8> {
    let udp = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(outer_sport, 4789);
    let mut out = Vec::with_capacity(udp.size(datagram.len()));
    udp.write(&mut out, datagram)
        .unwrap_or_else(|e| panic!("building a frame: {e}"));
    out
}

/// A classic pcap (Ethernet) written in memory, one frame every 50 µs.
pub struct Pcap {
    writer: pcap_file::pcap::PcapWriter<Vec<u8>>,
    ts_us: u64,
}

impl Default for Pcap {
    fn default() -> Pcap {
        let header = pcap_file::pcap::PcapHeader {
            datalink: pcap_file::DataLink::ETHERNET,
            ..Default::default()
        };
        Pcap {
            writer: pcap_file::pcap::PcapWriter::with_header(Vec::new(), header)
                .unwrap_or_else(|e| panic!("pcap header: {e}")),
            ts_us: 1_750_000_000_000_000,
        }
    }
}

impl Pcap {
    pub fn frame(&mut self, frame: &[u8]) {
        self.ts_us += 50;
        let packet = pcap_file::pcap::PcapPacket::new(
            std::time::Duration::from_micros(self.ts_us),
            frame.len() as u32,
            frame,
        );
        self.writer
            .write_packet(&packet)
            .unwrap_or_else(|e| panic!("pcap packet: {e}"));
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.writer.into_writer()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_ethernet, decode_vxlan};

    #[test]
    fn built_datagrams_decode_to_the_segments_they_were_built_from() {
        let mut peers = Peers::new(addr("10.0.0.1:40000"), addr("10.0.0.2:80"));
        let syn = peers.seg(true, SYN, b"");
        assert_eq!((syn.seq, syn.ack), (1000, None));
        let data = peers.seg(true, NO_FLAGS, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!((data.seq, data.ack), (1001, Some(50_000)));
        let answer = b"HTTP/1.1 204 No Content\r\n\r\n";
        let reply = peers.seg(false, FIN, answer);
        assert_eq!(reply.ack, Some(1001 + 18));
        assert_eq!(
            peers.next[1],
            50_000 + answer.len() as u32 + 1,
            "FIN takes a number"
        );
        let v6 = Peers::new(addr("[fd00::1]:40000"), addr("[fd00::2]:8080")).seg(true, RST, b"x");
        for seg in [syn, data, reply, v6] {
            let datagram = vxlan_datagram(5_569_041, &seg.as_segment());
            let vxlan = decode_vxlan(&datagram).unwrap();
            assert_eq!(vxlan.vni, 5_569_041);
            assert_eq!(decode_ethernet(vxlan.inner), Ok(seg.as_segment()));
        }
    }

    #[test]
    fn a_pcap_of_outer_frames_reads_back() {
        let mut pcap = Pcap::default();
        let seg = Peers::new(addr("10.1.0.1:1234"), addr("10.2.0.1:80")).seg(true, NO_FLAGS, b"hi");
        let datagram = vxlan_datagram(7, &seg.as_segment());
        pcap.frame(&outer_frame(65280, &datagram));
        pcap.frame(&outer_frame(65281, &datagram));
        let bytes = pcap.into_bytes();
        let mut reader = crate::capture::CaptureReader::from_reader(&bytes[..]).unwrap();
        let mut frames = 0;
        while let Some(frame) = reader.next_frame() {
            let frame = frame.unwrap();
            assert!(frame.data.ends_with(&datagram));
            frames += 1;
        }
        assert_eq!(frames, 2);
    }
}
