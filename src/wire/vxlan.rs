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
