//! A received datagram decoded once, through its encapsulation (VXLAN or Geneve), down to its
//! TCP segment.

use super::{DecodeError, TcpSegment, decode_ethernet, decode_vxlan, geneve};

/// How mirrored traffic reaches the receiver's UDP socket.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Encapsulation {
    /// VXLAN (RFC 7348) on UDP 4789, as AWS Traffic Mirroring sends it to a mirror target.
    #[default]
    Vxlan,
    /// Geneve (RFC 8926) on UDP 6081, as AWS Gateway Load Balancer sends it to its appliances:
    /// see [`Datagram::decode_with`] for what may be inside.
    Geneve,
}

impl Encapsulation {
    /// Stable name for configuration, metrics and logs: "vxlan", "geneve".
    pub fn as_str(self) -> &'static str {
        match self {
            Encapsulation::Vxlan => "vxlan",
            Encapsulation::Geneve => "geneve",
        }
    }
}

impl std::fmt::Display for Encapsulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A datagram decoded once, down to its TCP segment: what the ingest steers by and the
/// pipeline then takes, so neither decodes it again.
#[derive(Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// The encapsulation's header (VXLAN's, or Geneve's for [`Encapsulation::Geneve`]) did not
    /// decode.
    BadHeader(DecodeError),
    /// The session's VNI, and the inner frame's TCP segment or why it is not one.
    Inner {
        vni: u32,
        segment: Result<TcpSegment<'a>, DecodeError>,
    },
}

impl<'a> Datagram<'a> {
    /// Decodes the UDP payload of a datagram received on the VXLAN port:
    /// `decode_with(Encapsulation::Vxlan, payload)`.
    pub fn decode(payload: &'a [u8]) -> Datagram<'a> {
        match decode_vxlan(payload) {
            Err(e) => Datagram::BadHeader(e),
            Ok(v) => Datagram::Inner {
                vni: v.vni,
                segment: decode_ethernet(v.inner),
            },
        }
    }

    /// Decodes the UDP payload of a datagram encapsulated as `encap`.
    ///
    /// Geneve ([`super::decode_geneve`]) may carry, by its protocol type:
    /// - an IPv4 or IPv6 packet (0x0800, 0x86DD; what Gateway Load Balancer carries). When it
    ///   is a UDP datagram to port 4789 whose payload is VXLAN, it is a Traffic Mirror session
    ///   whose target is a Gateway Load Balancer endpoint (Geneve, IPv4, UDP 4789, VXLAN,
    ///   Ethernet, IP, TCP): that VXLAN is decoded as [`Datagram::decode`] would, and the VNI is
    ///   the VXLAN one, the mirror session's. Any other packet is decoded as a raw IP packet.
    /// - an Ethernet frame (0x6558, Transparent Ethernet Bridging, as the Linux geneve device
    ///   sends it), decoded as VXLAN's inner frame is.
    ///
    /// Unless nested VXLAN gives it, the VNI is [`super::Geneve::session_vni`]: the Geneve VNI
    /// when nonzero, else the low 24 bits of the Gateway Load Balancer endpoint ID option, else
    /// 0. A header that decodes but is a control message (O bit) or of another protocol type is
    /// `Inner` with [`DecodeError::GeneveOam`] or [`DecodeError::GeneveProtocol`], so it counts
    /// against its session. Unknown options, critical ones included, are skipped: a passive
    /// observer is not the tunnel endpoint RFC 8926 section 3.5.1 asks to drop them
    /// ([`super::Geneve::unknown_critical`] tells).
    pub fn decode_with(encap: Encapsulation, payload: &'a [u8]) -> Datagram<'a> {
        match encap {
            Encapsulation::Vxlan => Datagram::decode(payload),
            Encapsulation::Geneve => geneve::datagram(payload),
        }
    }

    /// The TCP segment, if the datagram carries one.
    pub fn segment(&self) -> Option<&TcpSegment<'a>> {
        match self {
            Datagram::Inner {
                segment: Ok(seg), ..
            } => Some(seg),
            _ => None,
        }
    }
}
