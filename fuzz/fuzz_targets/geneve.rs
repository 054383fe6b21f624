//! Arbitrary bytes through `wire::decode_geneve` and `Datagram::decode_with(Geneve)`, and the
//! same bytes behind a fixed AWS Gateway Load Balancer header (so the inner decoders, nested
//! VXLAN included, get most of the input). Besides "no panic": returned slices lie inside the
//! input and tile it (header, options, inner); the options walk the whole region; the
//! datagram's VNI and segment agree with what `decode_geneve` and the inner decoders say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_receiver::wire::{
    self, CaptureFrame, Datagram, DecodeError, Encapsulation, GENEVE_HEADER_LEN, GWLB_OPTION_CLASS,
    GwlbMetadata, LinkType, PROTOCOL_ETHERNET, PROTOCOL_IPV4, PROTOCOL_IPV6, TcpSegment,
};
use mirror_receiver_fuzz::within;

/// Version 0, Opt Len 8, protocol IPv4, VNI 0, and the three GWLB options.
const GWLB_HEADER: [u8; 40] = [
    0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x01, 0x02, 0x0e, 0x3c, 0x5b, 0x1a,
    0x2f, 0x47, 0xa9, 0x01, 0x01, 0x08, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x78,
    0x01, 0x08, 0x03, 0x01, 0xde, 0xad, 0xbe, 0xef,
];

fn label(e: DecodeError) {
    assert!(!e.as_str().is_empty());
    assert_eq!(DecodeError::ALL[e.index()], e);
}

fn check_segment(seg: &TcpSegment<'_>, data: &[u8]) {
    assert!(
        within(seg.payload, data),
        "TCP payload outside the datagram"
    );
    assert!(seg.missing <= 65_535 + 40, "missing = {}", seg.missing);
}

fn geneve(data: &[u8]) {
    // The VXLAN encapsulation is `Datagram::decode`.
    assert_eq!(
        Datagram::decode_with(Encapsulation::Vxlan, data),
        Datagram::decode(data)
    );
    let header = wire::decode_geneve(data);
    match &header {
        Ok(g) => {
            assert_eq!(g.version, 0);
            assert!(g.vni < 1 << 24, "VNI is 24 bits: {}", g.vni);
            assert!(within(g.options, data) && within(g.inner, data));
            assert_eq!(
                GENEVE_HEADER_LEN + g.options.len() + g.inner.len(),
                data.len()
            );
            assert_eq!(g.options.len() % 4, 0);
            let mut walk = g.iter_options();
            let (mut walked, mut critical, mut gwlb) = (0, 0u8, GwlbMetadata::default());
            for o in walk.by_ref() {
                assert!(within(o.data, g.options));
                walked += 4 + o.data.len();
                if o.class == GWLB_OPTION_CLASS && matches!(o.kind, 1..=3) {
                    let want = if o.kind == 3 { 4 } else { 8 };
                    assert_eq!(o.data.len(), want, "GWLB option {} accepted", o.kind);
                    let mut value = [0u8; 8];
                    value[8 - want..].copy_from_slice(o.data);
                    let value = u64::from_be_bytes(value);
                    match o.kind {
                        1 => gwlb.endpoint_id = Some(value),
                        2 => gwlb.attachment_id = Some(value),
                        _ => gwlb.flow_cookie = u32::try_from(value).ok(),
                    }
                } else if o.critical() {
                    critical += 1;
                }
            }
            assert!(walk.remaining().is_empty());
            assert_eq!(walked, g.options.len());
            assert_eq!(critical, g.unknown_critical);
            assert_eq!(gwlb, g.gwlb);
        }
        Err(e) => {
            assert!(matches!(
                e,
                DecodeError::GeneveTooShort
                    | DecodeError::GeneveVersion
                    | DecodeError::GeneveOptions
            ));
            assert_eq!(
                *e == DecodeError::GeneveTooShort,
                data.len() < GENEVE_HEADER_LEN
            );
            label(*e);
        }
    }
    let datagram = Datagram::decode_with(Encapsulation::Geneve, data);
    match (&datagram, header) {
        (Datagram::BadHeader(e), Err(h)) => assert_eq!(*e, h),
        (Datagram::Inner { vni, segment }, Ok(g)) => {
            assert!(*vni < 1 << 24);
            match segment {
                Ok(seg) => check_segment(seg, data),
                Err(e) => label(*e),
            }
            if g.oam {
                assert_eq!(*segment, Err(DecodeError::GeneveOam));
                assert_eq!(*vni, g.session_vni());
                return;
            }
            match g.protocol {
                PROTOCOL_ETHERNET => {
                    assert_eq!(*vni, g.session_vni());
                    assert_eq!(*segment, wire::decode_ethernet(g.inner));
                }
                PROTOCOL_IPV4 | PROTOCOL_IPV6 => {
                    // The raw IP decoder, once the version agrees with the protocol type.
                    let version = if g.protocol == PROTOCOL_IPV4 { 4 } else { 6 };
                    if g.inner.first().map(|b| b >> 4) != Some(version) {
                        assert_eq!(*vni, g.session_vni());
                        assert_eq!(*segment, Err(DecodeError::IpMalformed));
                        return;
                    }
                    match wire::decode_capture_frame(LinkType::RawIp, g.inner) {
                        Ok(CaptureFrame::Vxlan(udp)) => match wire::decode_vxlan(udp) {
                            // Nested VXLAN: the VNI and segment are the VXLAN datagram's.
                            Ok(v) => {
                                assert_eq!(*vni, v.vni);
                                assert_eq!(*segment, wire::decode_ethernet(v.inner));
                            }
                            Err(_) => {
                                assert_eq!(*vni, g.session_vni());
                                assert_eq!(*segment, Err(DecodeError::NotTcp));
                            }
                        },
                        Ok(CaptureFrame::Tcp(seg)) => {
                            assert_eq!(*vni, g.session_vni());
                            assert_eq!(*segment, Ok(seg));
                        }
                        Err(e) => {
                            assert_eq!(*vni, g.session_vni());
                            assert_eq!(*segment, Err(e));
                        }
                    }
                }
                _ => {
                    assert_eq!(*vni, g.session_vni());
                    assert_eq!(*segment, Err(DecodeError::GeneveProtocol));
                }
            }
        }
        (d, h) => panic!("datagram {d:?} but header {h:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    geneve(data);
    // Behind a valid GWLB header, with the first input byte choosing the protocol type.
    let (&pick, rest) = data.split_first().unwrap_or((&0, &[]));
    let mut framed = GWLB_HEADER.to_vec();
    let protocol = [PROTOCOL_IPV4, PROTOCOL_IPV6, PROTOCOL_ETHERNET, 0x0806][usize::from(pick & 3)];
    framed[2..4].copy_from_slice(&protocol.to_be_bytes());
    framed.extend_from_slice(rest);
    geneve(&framed);
});
