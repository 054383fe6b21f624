//! Pure decoding of what arrives on the wire into a TCP segment view.
//!
//! Entry points: [`decode_vxlan`] strips the VXLAN header of a UDP 4789 datagram (the form AWS
//! Traffic Mirroring delivers), [`decode_geneve`] the Geneve header of a UDP 6081 datagram (the
//! form AWS Gateway Load Balancer delivers to its appliances), [`Datagram::decode_with`] takes
//! either down to its TCP segment, and [`decode_capture_frame`] turns a link-layer frame (inner
//! Ethernet with 802.1Q/QinQ, or the link types a capture file may use) into a [`TcpSegment`]. All
//! borrow from the input and never allocate. Errors are small `Copy` values whose
//! [`DecodeError::as_str`] is a metric label.
//!
//! Inner checksums are never validated: AWS does not recompute them on truncated mirror packets. A
//! frame whose IP length is larger than the bytes present is *truncated*; the TCP payload bytes that
//! are missing are reported in [`TcpSegment::missing`] so reassembly can turn them into a gap.

mod datagram;
mod geneve;
mod vxlan;

pub use datagram::{Datagram, Encapsulation};
pub use geneve::{
    GENEVE_HEADER_LEN, GENEVE_PORT, GWLB_OPTION_CLASS, Geneve, GeneveOption, GeneveOptions,
    GwlbMetadata, PROTOCOL_ETHERNET, PROTOCOL_IPV4, PROTOCOL_IPV6, decode_geneve,
};
pub use vxlan::{VXLAN_HEADER_LEN, VXLAN_PORT, Vxlan, decode_vxlan};

use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pnet_packet::sll::SLLPacket;
use pnet_packet::sll2::SLL2Packet;
use std::net::{IpAddr, SocketAddr};

/// Why a datagram or frame did not yield a TCP segment. `Copy` and string-free so it can be
/// counted per reason. The declaration order is the order of [`DecodeError::ALL`] (the index is
/// the discriminant): new reasons go last.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecodeError {
    /// Fewer than 8 bytes: no VXLAN header.
    VxlanTooShort,
    /// The VXLAN I flag (VNI valid) is clear.
    VxlanNoVni,
    /// The link-layer header is cut short.
    LinkTruncated,
    /// The frame carries neither IPv4 nor IPv6 (ARP, LLDP, ...).
    NotIp,
    /// The IP header is cut short or inconsistent.
    IpMalformed,
    /// An IP fragment: mirrored TCP is never fragmented in practice, so fragments are not reassembled.
    IpFragment,
    /// IP carries something other than TCP (UDP, ICMP, ...).
    NotTcp,
    /// The TCP header is cut short or has an invalid data offset.
    TcpMalformed,
    /// A capture file frame of a link type this decoder does not know.
    UnsupportedLinkType,
    /// Fewer than 8 bytes: no Geneve header.
    GeneveTooShort,
    /// The Geneve version is not 0 (RFC 8926 section 3.4: a packet of an unknown version is dropped).
    GeneveVersion,
    /// The Geneve options run past the datagram, an option runs past the options, or an AWS
    /// Gateway Load Balancer option has the wrong length.
    GeneveOptions,
    /// The Geneve O bit is set: a control (OAM) message, which carries no traffic.
    GeneveOam,
    /// The Geneve protocol type is neither IPv4, IPv6 nor Ethernet (0x6558).
    GeneveProtocol,
}

impl DecodeError {
    /// All reasons, for pre-registering counters.
    pub const ALL: [DecodeError; 14] = [
        DecodeError::VxlanTooShort,
        DecodeError::VxlanNoVni,
        DecodeError::LinkTruncated,
        DecodeError::NotIp,
        DecodeError::IpMalformed,
        DecodeError::IpFragment,
        DecodeError::NotTcp,
        DecodeError::TcpMalformed,
        DecodeError::UnsupportedLinkType,
        DecodeError::GeneveTooShort,
        DecodeError::GeneveVersion,
        DecodeError::GeneveOptions,
        DecodeError::GeneveOam,
        DecodeError::GeneveProtocol,
    ];

    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeError::VxlanTooShort => "vxlan_too_short",
            DecodeError::VxlanNoVni => "vxlan_no_vni_flag",
            DecodeError::LinkTruncated => "link_truncated",
            DecodeError::NotIp => "not_ip",
            DecodeError::IpMalformed => "ip_malformed",
            DecodeError::IpFragment => "ip_fragment",
            DecodeError::NotTcp => "not_tcp",
            DecodeError::TcpMalformed => "tcp_malformed",
            DecodeError::UnsupportedLinkType => "unsupported_link_type",
            DecodeError::GeneveTooShort => "geneve_too_short",
            DecodeError::GeneveVersion => "geneve_version",
            DecodeError::GeneveOptions => "geneve_options",
            DecodeError::GeneveOam => "geneve_oam",
            DecodeError::GeneveProtocol => "geneve_protocol",
        }
    }

    /// Index into [`DecodeError::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for DecodeError {}

/// TCP control flags that matter to reassembly.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
}

/// A decoded TCP segment, borrowing its payload from the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    /// The acknowledgement number when the ACK flag is set.
    pub ack: Option<u32>,
    pub flags: TcpFlags,
    /// The payload bytes present in the frame.
    pub payload: &'a [u8],
    /// Payload bytes the IP header announces but the frame does not carry (truncated mirror packet).
    pub missing: u32,
}

/// Link types a capture file may use (pcap LINKTYPE_* values are mapped in [`LinkType::from_pcap`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    /// Raw IPv4 or IPv6, version from the first nibble.
    RawIp,
    /// BSD loopback: 4-byte address family in host byte order, then IP.
    Null,
    /// OpenBSD loopback: 4-byte address family in network byte order, then IP.
    Loop,
    LinuxSll,
    LinuxSll2,
}

impl LinkType {
    /// Every link type the decoder knows.
    pub const ALL: [LinkType; 6] = [
        LinkType::Ethernet,
        LinkType::RawIp,
        LinkType::Null,
        LinkType::Loop,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
    ];

    /// Maps a pcap/pcapng link type number.
    pub fn from_pcap(linktype: u32) -> Option<LinkType> {
        Some(match linktype {
            1 => LinkType::Ethernet,
            0 => LinkType::Null,
            108 => LinkType::Loop,
            12 | 14 | 101 | 228 | 229 => LinkType::RawIp,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            _ => return None,
        })
    }
}

/// What a frame of a capture file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum CaptureFrame<'a> {
    /// A UDP datagram to port 4789: its payload, to be passed to [`decode_vxlan`].
    Vxlan(&'a [u8]),
    /// A plain TCP segment.
    Tcp(TcpSegment<'a>),
}

/// Linux cooked capture header lengths (v1, v2).
const SLL_LEN: usize = 16;
const SLL2_LEN: usize = 20;

/// Decodes an Ethernet frame (the inner frame of a VXLAN datagram) into a TCP segment.
pub fn decode_ethernet(frame: &[u8]) -> Result<TcpSegment<'_>, DecodeError> {
    if let Some(CaptureFrame::Tcp(segment)) = plain_ethernet(frame) {
        return Ok(segment);
    }
    let packet = LaxSlicedPacket::from_ethernet(frame).map_err(|_| DecodeError::LinkTruncated)?;
    tcp_from_packet(&packet)
}

/// Decodes a capture frame: UDP to port 4789 is returned as VXLAN, TCP as a segment.
pub fn decode_capture_frame(link: LinkType, frame: &[u8]) -> Result<CaptureFrame<'_>, DecodeError> {
    if link == LinkType::Ethernet
        && let Some(decoded) = plain_ethernet(frame)
    {
        return Ok(decoded);
    }
    decode_lax(link, frame)
}

/// [`decode_capture_frame`] by etherparse's whole-packet slicer alone.
fn decode_lax(link: LinkType, frame: &[u8]) -> Result<CaptureFrame<'_>, DecodeError> {
    let packet = match link {
        LinkType::Ethernet => {
            LaxSlicedPacket::from_ethernet(frame).map_err(|_| DecodeError::LinkTruncated)?
        }
        LinkType::RawIp => LaxSlicedPacket::from_ip(frame).map_err(|_| DecodeError::IpMalformed)?,
        LinkType::Null | LinkType::Loop => {
            let family = frame.get(..4).ok_or(DecodeError::LinkTruncated)?;
            let family = [family[0], family[1], family[2], family[3]];
            let family = if link == LinkType::Null {
                // Written in the capturing host's byte order: accept either.
                u32::from_le_bytes(family).min(u32::from_be_bytes(family))
            } else {
                u32::from_be_bytes(family)
            };
            let ether_type = match family {
                2 => EtherType::IPV4,
                // AF_INET6 differs between BSDs (24, 28, 30) and Linux (10).
                10 | 24 | 28 | 30 => EtherType::IPV6,
                _ => return Err(DecodeError::NotIp),
            };
            LaxSlicedPacket::from_ether_type(ether_type, &frame[4..])
        }
        LinkType::LinuxSll => {
            // pnet_packet 0.35 under-counts SLL's minimum size and would index past a short
            // frame: check the length here.
            if frame.len() < SLL_LEN {
                return Err(DecodeError::LinkTruncated);
            }
            let sll = SLLPacket::new(frame).ok_or(DecodeError::LinkTruncated)?;
            let ether_type = EtherType(sll.get_protocol().0);
            LaxSlicedPacket::from_ether_type(ether_type, &frame[SLL_LEN..])
        }
        LinkType::LinuxSll2 => {
            if frame.len() < SLL2_LEN {
                return Err(DecodeError::LinkTruncated);
            }
            let sll = SLL2Packet::new(frame).ok_or(DecodeError::LinkTruncated)?;
            let ether_type = EtherType(sll.get_protocol_type().0);
            LaxSlicedPacket::from_ether_type(ether_type, &frame[SLL2_LEN..])
        }
    };
    if let Some(TransportSlice::Udp(udp)) = &packet.transport
        && udp.destination_port() == VXLAN_PORT
    {
        return Ok(CaptureFrame::Vxlan(udp.payload()));
    }
    tcp_from_packet(&packet).map(CaptureFrame::Tcp)
}

/// The common frame, decoded with etherparse's header slices alone: Ethernet II, a whole IPv4 or
/// IPv6 packet (not a fragment), then a whole TCP header, or UDP to the VXLAN port. `None` for
/// anything else (VLAN tags, a truncated packet, another protocol, any error), which
/// etherparse's whole-packet slicer then decodes as before. Its result, large and moved
/// around, cost more than the decoding itself; where this gives an answer it is the same.
fn plain_ethernet(frame: &[u8]) -> Option<CaptureFrame<'_>> {
    let eth = etherparse::Ethernet2Slice::from_slice_without_fcs(frame).ok()?;
    plain_ip(eth.ether_type(), eth.payload_slice())
}

/// [`plain_ethernet`] after the link layer: the IP packet of `ether_type`.
fn plain_ip(ether_type: EtherType, packet: &[u8]) -> Option<CaptureFrame<'_>> {
    use etherparse::{IpNumber, Ipv4Slice, Ipv6Slice, TcpSlice, UdpSlice};
    let (src, dst, payload) = match ether_type {
        EtherType::IPV4 => {
            let ip = Ipv4Slice::from_slice(packet).ok()?;
            let h = ip.header();
            let src = IpAddr::V4(h.source_addr());
            (src, IpAddr::V4(h.destination_addr()), ip.payload().clone())
        }
        EtherType::IPV6 => {
            let ip = Ipv6Slice::from_slice(packet).ok()?;
            let h = ip.header();
            let src = IpAddr::V6(h.source_addr());
            (src, IpAddr::V6(h.destination_addr()), ip.payload().clone())
        }
        _ => return None,
    };
    if payload.fragmented {
        return None;
    }
    match payload.ip_number {
        IpNumber::TCP => {
            let tcp = TcpSlice::from_slice(payload.payload).ok()?;
            Some(CaptureFrame::Tcp(segment(src, dst, &tcp, 0)))
        }
        IpNumber::UDP => {
            let udp = UdpSlice::from_slice(payload.payload).ok()?;
            (udp.destination_port() == VXLAN_PORT).then(|| CaptureFrame::Vxlan(udp.payload()))
        }
        _ => None,
    }
}

/// An IP packet without link layer whose type the encapsulation declares (`ether_type`, IPv4
/// or IPv6): [`decode_capture_frame`] of [`LinkType::RawIp`], by [`plain_ip`] where it answers.
/// A version nibble that contradicts the declared type is [`DecodeError::IpMalformed`].
fn decode_ip(ether_type: EtherType, packet: &[u8]) -> Result<CaptureFrame<'_>, DecodeError> {
    let version = match ether_type {
        EtherType::IPV4 => 4,
        EtherType::IPV6 => 6,
        _ => return Err(DecodeError::NotIp),
    };
    if packet.first().map(|b| b >> 4) != Some(version) {
        return Err(DecodeError::IpMalformed);
    }
    if let Some(decoded) = plain_ip(ether_type, packet) {
        return Ok(decoded);
    }
    decode_lax(LinkType::RawIp, packet)
}

fn segment<'a>(
    src: IpAddr,
    dst: IpAddr,
    tcp: &etherparse::TcpSlice<'a>,
    missing: usize,
) -> TcpSegment<'a> {
    TcpSegment {
        src: SocketAddr::new(src, tcp.source_port()),
        dst: SocketAddr::new(dst, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        flags: TcpFlags {
            syn: tcp.syn(),
            fin: tcp.fin(),
            rst: tcp.rst(),
        },
        payload: tcp.payload(),
        // A TCP segment never exceeds 64 KiB, except a malformed header claiming more.
        missing: u32::try_from(missing).unwrap_or(u32::MAX),
    }
}

fn tcp_from_packet<'a>(packet: &LaxSlicedPacket<'a>) -> Result<TcpSegment<'a>, DecodeError> {
    let (src, dst, ip_payload, declared_payload_len) = match &packet.net {
        None | Some(LaxNetSlice::Arp(_)) => {
            return Err(match packet.stop_err {
                Some((_, etherparse::err::Layer::Ethernet2Header))
                | Some((_, etherparse::err::Layer::VlanHeader)) => DecodeError::LinkTruncated,
                Some(_) => DecodeError::IpMalformed,
                None => DecodeError::NotIp,
            });
        }
        Some(LaxNetSlice::Ipv4(ip)) => {
            let header = ip.header();
            let payload = ip.payload();
            let header_start = header.slice().as_ptr() as usize;
            let consumed = (payload.payload.as_ptr() as usize).saturating_sub(header_start);
            let declared = usize::from(header.total_len()).saturating_sub(consumed);
            (
                IpAddr::V4(header.source_addr()),
                IpAddr::V4(header.destination_addr()),
                payload,
                declared,
            )
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let header = ip.header();
            let payload = ip.payload();
            let header_start = header.slice().as_ptr() as usize;
            let consumed = (payload.payload.as_ptr() as usize).saturating_sub(header_start);
            let declared = (40 + usize::from(header.payload_length())).saturating_sub(consumed);
            (
                IpAddr::V6(header.source_addr()),
                IpAddr::V6(header.destination_addr()),
                payload,
                declared,
            )
        }
    };
    if ip_payload.fragmented {
        return Err(DecodeError::IpFragment);
    }
    if ip_payload.ip_number != etherparse::IpNumber::TCP {
        return Err(DecodeError::NotTcp);
    }
    let tcp = match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => tcp,
        _ => return Err(DecodeError::TcpMalformed),
    };
    let payload = tcp.payload();
    let missing = if ip_payload.incomplete {
        let header_len = usize::from(tcp.data_offset()) * 4;
        declared_payload_len.saturating_sub(header_len + payload.len())
    } else {
        0
    };
    Ok(segment(src, dst, tcp, missing))
}

#[cfg(test)]
mod tests;
