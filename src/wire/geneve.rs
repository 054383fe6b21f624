//! Geneve (RFC 8926) header, as AWS Gateway Load Balancer (GWLB) sends it to its appliances on
//! UDP 6081, and the GWLB metadata it carries in options.
//!
//! What this relies on:
//! - RFC 8926 section 3.4 (the 8-byte fixed header: 2-bit version, 6-bit option length in
//!   4-byte words not counting the fixed header, O and C bits, 16-bit protocol type as an
//!   EtherType, 24-bit VNI) and section 3.5 (each option: 16-bit class, 8-bit type whose high
//!   bit marks it critical, 3 reserved bits, 5-bit data length in 4-byte words not counting the
//!   4-byte option header).
//! - AWS, "Target groups for your Gateway Load Balancers" (docs.aws.amazon.com/
//!   elasticloadbalancing/latest/gateway/target-groups.html, "Routing configuration"): GENEVE on
//!   port 6081, metadata in TLVs of Option Class 0x0108. "Gateway Load Balancers" (same guide):
//!   IPv4 and IPv6 client traffic both go out in an IPv4 Geneve packet, and encapsulation adds
//!   68 bytes (20 IPv4 + 8 UDP + 8 Geneve + 32 of options: the three TLVs below, 12 + 12 + 8).
//! - AWS blog "Integrate your custom logic or appliance with AWS Gateway Load Balancer" and
//!   AWS's reference appliance (github.com/aws-samples/aws-gateway-load-balancer-tunnel-handler,
//!   `GenevePacket.cpp`): protocol type 0x0800 or 0x86DD (the original IP packet, no Ethernet
//!   header); class 0x0108 type 1 = GWLB endpoint (VPC endpoint) ID, 8 bytes; type 2 =
//!   attachment ID, 8 bytes; type 3 = flow cookie, 4 bytes; all big-endian.

use super::{CaptureFrame, Datagram, DecodeError, decode_ethernet};
use etherparse::EtherType;

/// The IANA port for Geneve, which AWS Gateway Load Balancer uses towards its appliances.
pub const GENEVE_PORT: u16 = 6081;
/// Bytes of the fixed Geneve header, before the options.
pub const GENEVE_HEADER_LEN: usize = 8;
/// The Geneve option class AWS Gateway Load Balancer's metadata options use.
pub const GWLB_OPTION_CLASS: u16 = 0x0108;
/// Protocol type of an IPv4 packet inside (what GWLB sends for IPv4 traffic).
pub const PROTOCOL_IPV4: u16 = 0x0800;
/// Protocol type of an IPv6 packet inside.
pub const PROTOCOL_IPV6: u16 = 0x86dd;
/// Protocol type of an Ethernet frame inside (Transparent Ethernet Bridging).
pub const PROTOCOL_ETHERNET: u16 = 0x6558;

/// GWLB option types of [`GWLB_OPTION_CLASS`].
const GWLB_ENDPOINT_ID: u8 = 1;
const GWLB_ATTACHMENT_ID: u8 = 2;
const GWLB_FLOW_COOKIE: u8 = 3;
/// The high bit of an option type: a tunnel endpoint that does not know the option must drop
/// the packet (RFC 8926 section 3.5.1).
const TYPE_CRITICAL: u8 = 0x80;
/// The 5-bit option length, in 4-byte words.
const OPTION_LEN_MASK: u8 = 0x1f;
const OPTION_HEADER_LEN: usize = 4;

/// The metadata AWS Gateway Load Balancer attaches to each packet (options of class
/// [`GWLB_OPTION_CLASS`]); each is `None` when its option is absent.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GwlbMetadata {
    /// Type 1: the GWLB endpoint (`vpce-...`) the traffic came through, as a 64-bit value.
    pub endpoint_id: Option<u64>,
    /// Type 2: the attachment ID.
    pub attachment_id: Option<u64>,
    /// Type 3: the flow cookie GWLB expects back with the flow's packets.
    pub flow_cookie: Option<u32>,
}

impl GwlbMetadata {
    /// All three options are present, as in every packet GWLB sends (AWS's reference
    /// appliance refuses a packet without them; this decoder only reports it).
    pub fn is_complete(&self) -> bool {
        self.endpoint_id.is_some() && self.attachment_id.is_some() && self.flow_cookie.is_some()
    }
}

/// A checked Geneve datagram: header fields, the options region and the inner payload. Built
/// by [`decode_geneve`], which has checked every option fits the options region.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Geneve<'a> {
    /// Always 0: [`decode_geneve`] refuses other versions.
    pub version: u8,
    /// The O bit: a control (OAM) message between tunnel endpoints, not traffic.
    pub oam: bool,
    /// The C bit: the sender says critical options are present.
    pub critical: bool,
    /// What `inner` holds, as an EtherType ([`PROTOCOL_IPV4`], [`PROTOCOL_IPV6`],
    /// [`PROTOCOL_ETHERNET`], or another the caller does not decode).
    pub protocol: u16,
    /// The 24-bit virtual network identifier (0 from GWLB in practice).
    pub vni: u32,
    /// The options region (`4 * Opt Len` bytes), to be walked by [`Geneve::iter_options`].
    pub options: &'a [u8],
    /// What follows the options.
    pub inner: &'a [u8],
    /// The GWLB options found.
    pub gwlb: GwlbMetadata,
    /// Options with the critical bit that this decoder does not know. A tunnel endpoint would
    /// drop the packet; a passive observer may still read it, and the caller decides.
    pub unknown_critical: u8,
}

impl<'a> Geneve<'a> {
    /// The options, in order.
    pub fn iter_options(&self) -> GeneveOptions<'a> {
        GeneveOptions { rest: self.options }
    }

    /// The session identifier the datagram's traffic is counted and recorded under: the
    /// Geneve VNI when nonzero, else the low 24 bits of the GWLB endpoint ID (GWLB sends VNI
    /// 0, and the endpoint tells the consumer VPCs apart), else 0.
    pub fn session_vni(&self) -> u32 {
        if self.vni != 0 {
            return self.vni;
        }
        self.gwlb
            .endpoint_id
            .map_or(0, |id| (id & 0x00ff_ffff) as u32)
    }
}

/// One Geneve option (RFC 8926 section 3.5).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    pub class: u16,
    /// The type, critical bit included (a critical and a non-critical type are different types).
    pub kind: u8,
    /// The option data: `4 * length` bytes.
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    /// The high bit of the type.
    pub fn critical(&self) -> bool {
        self.kind & TYPE_CRITICAL != 0
    }
}

/// The options of an options region, in order. Stops at the end of the region, or at an option
/// that does not fit in what is left of it ([`GeneveOptions::remaining`] is then not empty; it
/// always is for the options of a [`Geneve`] from [`decode_geneve`]).
#[derive(Clone, Debug)]
pub struct GeneveOptions<'a> {
    rest: &'a [u8],
}

impl<'a> GeneveOptions<'a> {
    /// Walks the options region `options`.
    pub fn new(options: &'a [u8]) -> GeneveOptions<'a> {
        GeneveOptions { rest: options }
    }

    /// The bytes not walked yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for GeneveOptions<'a> {
    type Item = GeneveOption<'a>;

    fn next(&mut self) -> Option<GeneveOption<'a>> {
        let (&[c0, c1, kind, len], after) = self.rest.split_first_chunk::<OPTION_HEADER_LEN>()?;
        let (data, rest) = after.split_at_checked(usize::from(len & OPTION_LEN_MASK) * 4)?;
        self.rest = rest;
        Some(GeneveOption {
            class: u16::from_be_bytes([c0, c1]),
            kind,
            data,
        })
    }
}

/// Checks the Geneve header of a UDP payload: at least 8 bytes, version 0, the options region
/// within the datagram, every option within the options region, and the GWLB options of their
/// fixed lengths. Reserved bits are ignored (RFC 8926: receivers must). The O bit and the
/// protocol type are reported, not judged: [`Datagram::decode_with`] does.
pub fn decode_geneve(datagram: &[u8]) -> Result<Geneve<'_>, DecodeError> {
    let (&[b0, b1, p0, p1, v0, v1, v2, _], rest) = datagram
        .split_first_chunk::<GENEVE_HEADER_LEN>()
        .ok_or(DecodeError::GeneveTooShort)?;
    let version = b0 >> 6;
    if version != 0 {
        return Err(DecodeError::GeneveVersion);
    }
    let (options, inner) = rest
        .split_at_checked(usize::from(b0 & 0x3f) * 4)
        .ok_or(DecodeError::GeneveOptions)?;
    let mut gwlb = GwlbMetadata::default();
    let mut unknown_critical = 0u8;
    let mut walk = GeneveOptions::new(options);
    for option in walk.by_ref() {
        // Duplicates: the last one counts, as in AWS's reference appliance.
        match (option.class, option.kind) {
            (GWLB_OPTION_CLASS, GWLB_ENDPOINT_ID) => {
                gwlb.endpoint_id = Some(u64::from_be_bytes(fixed(option.data)?));
            }
            (GWLB_OPTION_CLASS, GWLB_ATTACHMENT_ID) => {
                gwlb.attachment_id = Some(u64::from_be_bytes(fixed(option.data)?));
            }
            (GWLB_OPTION_CLASS, GWLB_FLOW_COOKIE) => {
                gwlb.flow_cookie = Some(u32::from_be_bytes(fixed(option.data)?));
            }
            _ if option.critical() => unknown_critical = unknown_critical.saturating_add(1),
            _ => {}
        }
    }
    if !walk.remaining().is_empty() {
        return Err(DecodeError::GeneveOptions);
    }
    Ok(Geneve {
        version,
        oam: b1 & 0x80 != 0,
        critical: b1 & 0x40 != 0,
        protocol: u16::from_be_bytes([p0, p1]),
        vni: u32::from_be_bytes([0, v0, v1, v2]),
        options,
        inner,
        gwlb,
        unknown_critical,
    })
}

/// The data of a fixed-length option, or [`DecodeError::GeneveOptions`] for another length.
fn fixed<const N: usize>(data: &[u8]) -> Result<[u8; N], DecodeError> {
    data.try_into().map_err(|_| DecodeError::GeneveOptions)
}

/// [`Datagram::decode_with`] for [`super::Encapsulation::Geneve`], documented there.
pub(super) fn datagram(payload: &[u8]) -> Datagram<'_> {
    let geneve = match decode_geneve(payload) {
        Ok(g) => g,
        Err(e) => return Datagram::BadHeader(e),
    };
    let vni = geneve.session_vni();
    if geneve.oam {
        return Datagram::Inner {
            vni,
            segment: Err(DecodeError::GeneveOam),
        };
    }
    let segment = match geneve.protocol {
        PROTOCOL_ETHERNET => decode_ethernet(geneve.inner),
        PROTOCOL_IPV4 | PROTOCOL_IPV6 => {
            match super::decode_ip(EtherType(geneve.protocol), geneve.inner) {
                // Traffic Mirroring through a GWLB endpoint: the mirror's VXLAN, whole.
                Ok(CaptureFrame::Vxlan(udp)) => match Datagram::decode(udp) {
                    inner @ Datagram::Inner { .. } => return inner,
                    // UDP to 4789 that is not VXLAN: as any other UDP.
                    Datagram::BadHeader(_) => Err(DecodeError::NotTcp),
                },
                Ok(CaptureFrame::Tcp(segment)) => Ok(segment),
                Err(e) => Err(e),
            }
        }
        _ => Err(DecodeError::GeneveProtocol),
    };
    Datagram::Inner { vni, segment }
}

#[cfg(test)]
mod tests;
