//! VXLAN (RFC 7348) header, as AWS Traffic Mirroring sends it on UDP 4789.

use super::DecodeError;
use pnet_packet::vxlan::VxlanPacket;

/// The IANA port for VXLAN, which AWS Traffic Mirroring uses.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The I flag: the VNI field is valid.
const FLAG_VNI_VALID: u8 = 0x08;

/// A checked VXLAN datagram: the VNI and the inner Ethernet frame.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Vxlan<'a> {
    pub vni: u32,
    pub inner: &'a [u8],
}

/// Checks the VXLAN header of a UDP payload. Only the I flag is required; reserved bits are
/// ignored (some senders set them, and RFC 7348 says receivers must ignore them).
pub fn decode_vxlan(datagram: &[u8]) -> Result<Vxlan<'_>, DecodeError> {
    let header = VxlanPacket::new(datagram).ok_or(DecodeError::VxlanTooShort)?;
    if header.get_flags() & FLAG_VNI_VALID == 0 {
        return Err(DecodeError::VxlanNoVni);
    }
    Ok(Vxlan {
        vni: header.get_vni(),
        inner: &datagram[VXLAN_HEADER_LEN..],
    })
}

/// A VXLAN datagram decoded once, down to its TCP segment: what the ingest steers by and the
/// pipeline then takes, so neither decodes it again.
#[derive(Debug)]
pub enum Datagram<'a> {
    /// The VXLAN header did not decode.
    NotVxlan(DecodeError),
    /// The session's VNI, and the inner frame's TCP segment or why it is not one.
    Inner {
        vni: u32,
        segment: Result<super::TcpSegment<'a>, DecodeError>,
    },
}

impl<'a> Datagram<'a> {
    /// Decodes the UDP payload of a datagram received on the VXLAN port.
    pub fn decode(payload: &'a [u8]) -> Datagram<'a> {
        match decode_vxlan(payload) {
            Err(e) => Datagram::NotVxlan(e),
            Ok(v) => Datagram::Inner {
                vni: v.vni,
                segment: super::decode_ethernet(v.inner),
            },
        }
    }

    /// The TCP segment, if the datagram carries one.
    pub fn segment(&self) -> Option<&super::TcpSegment<'a>> {
        match self {
            Datagram::Inner {
                segment: Ok(seg), ..
            } => Some(seg),
            _ => None,
        }
    }
}
