use crate::testkit::{NO_FLAGS, addr, ethernet_frame, outer_frame, segment, vxlan_datagram};
use crate::wire::*;

/// Geneve as GWLB sends it (RFC 8926 section 3.4, AWS's three class 0x0108 TLVs): version 0,
/// Opt Len 8 (32 bytes), no flags, protocol IPv4, VNI 0; endpoint ID, attachment ID, cookie.
const GWLB_HEADER: [u8; 40] = [
    0x08, 0x00, 0x08, 0x00, // Ver 0, Opt Len 8 | O 0, C 0 | protocol 0x0800
    0x00, 0x00, 0x00, 0x00, // VNI 0, reserved
    0x01, 0x08, 0x01, 0x02, // class 0x0108, type 1, length 2 words
    0x0e, 0x3c, 0x5b, 0x1a, 0x2f, 0x47, 0xa9, 0x01, // GWLBE endpoint ID
    0x01, 0x08, 0x02, 0x02, // class 0x0108, type 2, length 2 words
    0x00, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x78, // attachment ID
    0x01, 0x08, 0x03, 0x01, // class 0x0108, type 3, length 1 word
    0xde, 0xad, 0xbe, 0xef, // flow cookie
];
const ENDPOINT_ID: u64 = 0x0e3c_5b1a_2f47_a901;
const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

fn seg_v4() -> TcpSegment<'static> {
    segment(
        addr("10.1.0.5:40000"),
        addr("10.2.0.9:80"),
        1000,
        Some(2000),
        NO_FLAGS,
        PAYLOAD,
    )
}

fn seg_v6() -> TcpSegment<'static> {
    segment(
        addr("[fd00::5]:40000"),
        addr("[fd00::9]:8080"),
        7,
        Some(9),
        NO_FLAGS,
        PAYLOAD,
    )
}

/// The raw IP packet of `seg` (its Ethernet frame without the 14-byte Ethernet header).
fn ip_packet(seg: &TcpSegment<'_>) -> Vec<u8> {
    ethernet_frame(seg)[14..].to_vec()
}

/// GWLB_HEADER with another protocol type.
fn gwlb_header(protocol: u16) -> Vec<u8> {
    let mut h = GWLB_HEADER.to_vec();
    h[2..4].copy_from_slice(&protocol.to_be_bytes());
    h
}

#[test]
fn header_without_options_exposes_its_fields() {
    // Reserved bits all set: ignored.
    let d = [0x00, 0x3f, 0x65, 0x58, 0x12, 0x34, 0x56, 0xff, 1, 2, 3];
    let g = decode_geneve(&d).unwrap();
    assert_eq!(g.version, 0);
    assert!(!g.oam);
    assert!(!g.critical);
    assert_eq!(g.protocol, PROTOCOL_ETHERNET);
    assert_eq!(g.vni, 0x12_3456);
    assert_eq!(g.options, &[] as &[u8]);
    assert_eq!(g.inner, &[1, 2, 3]);
    assert_eq!(g.gwlb, GwlbMetadata::default());
    assert_eq!(g.unknown_critical, 0);
    assert_eq!(g.iter_options().count(), 0);
    // Exactly 8 bytes: an empty payload.
    assert_eq!(decode_geneve(&d[..8]).unwrap().inner, &[] as &[u8]);
}

#[test]
fn options_are_walked_in_order_and_unknown_ones_skipped() {
    let d = [
        0x03, 0x00, 0x08, 0x00, 0x00, 0x00, 0x07, 0x00, // Opt Len 3 (12 bytes), VNI 7
        0x01, 0x02, 0x05, 0x01, 0xaa, 0xbb, 0xcc, 0xdd, // class 0x0102 type 5, 1 word
        0xff, 0xff, 0x7f, 0xe0, // class 0xffff type 0x7f, 0 words (reserved bits set)
        0x45, // first byte of the payload
    ];
    let g = decode_geneve(&d).unwrap();
    assert_eq!(g.options.len(), 12);
    assert_eq!(g.inner, &[0x45]);
    let options: Vec<_> = g.iter_options().collect();
    assert_eq!(
        options,
        [
            GeneveOption {
                class: 0x0102,
                kind: 5,
                data: &[0xaa, 0xbb, 0xcc, 0xdd]
            },
            GeneveOption {
                class: 0xffff,
                kind: 0x7f,
                data: &[]
            },
        ]
    );
    assert!(!options[0].critical());
    assert_eq!(g.gwlb, GwlbMetadata::default());
    assert_eq!(g.unknown_critical, 0);
    assert_eq!(g.session_vni(), 7);
}

#[test]
fn unknown_critical_option_is_counted_and_decoding_goes_on() {
    let mut d = vec![
        0x02, 0x40, 0x08, 0x00, 0x00, 0x00, 0x09, 0x00, // Opt Len 2, C bit, VNI 9
        0x01, 0x01, 0x80, 0x00, // class 0x0101 (Open vSwitch), type 0x80 (critical), 0 words
        0x01, 0x08, 0x84, 0x00, // class 0x0108, unknown critical type 0x84
    ];
    d.extend(ip_packet(&seg_v4()));
    let g = decode_geneve(&d).unwrap();
    assert!(g.critical);
    assert_eq!(g.unknown_critical, 2);
    assert!(g.iter_options().all(|o| o.critical()));
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &d),
        Datagram::Inner {
            vni: 9,
            segment: Ok(seg_v4())
        }
    );
}

#[test]
fn option_running_past_the_options_region_is_malformed() {
    // Opt Len 1 (4 bytes), but the option says 1 word of data: it would take 4 payload bytes.
    let d = [
        0x01, 0x00, 0x08, 0x00, 0, 0, 0, 0, 0x01, 0x08, 0x03, 0x01, 0xde, 0xad, 0xbe, 0xef,
    ];
    assert_eq!(decode_geneve(&d), Err(DecodeError::GeneveOptions));
    // Opt Len 2 with a 4-byte option then half an option header: cannot happen (whole words),
    // but an option of 2 words in a region of 1 after the first can.
    let d = [
        0x02, 0x00, 0x08, 0x00, 0, 0, 0, 0, 0x01, 0x02, 0x01, 0x00, 0x01, 0x02, 0x02, 0x02, 1, 2,
        3, 4, 5, 6, 7, 8,
    ];
    assert_eq!(decode_geneve(&d), Err(DecodeError::GeneveOptions));
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &d),
        Datagram::BadHeader(DecodeError::GeneveOptions)
    );
}

#[test]
fn options_region_past_the_datagram_is_malformed() {
    // Opt Len 63 (252 bytes) in a 12-byte datagram.
    let d = [0x3f, 0x00, 0x08, 0x00, 0, 0, 0, 0, 0x01, 0x08, 0x03, 0x00];
    assert_eq!(decode_geneve(&d), Err(DecodeError::GeneveOptions));
    // The whole AWS header but the cookie's last byte.
    assert_eq!(
        decode_geneve(&GWLB_HEADER[..39]),
        Err(DecodeError::GeneveOptions)
    );
    // Exactly the options, nothing after: an empty payload.
    assert_eq!(decode_geneve(&GWLB_HEADER).unwrap().inner, &[] as &[u8]);
}

#[test]
fn only_version_zero_is_decoded() {
    for first in [0x40, 0x80, 0xc0, 0x48] {
        let d = [first, 0x00, 0x08, 0x00, 0, 0, 0, 0];
        assert_eq!(
            decode_geneve(&d),
            Err(DecodeError::GeneveVersion),
            "{first:#x}"
        );
    }
}

#[test]
fn control_packet_is_decoded_but_carries_no_traffic() {
    let mut d = vec![0x00, 0x80, 0x08, 0x00, 0x00, 0x00, 0x05, 0x00];
    d.extend(ip_packet(&seg_v4()));
    let g = decode_geneve(&d).unwrap();
    assert!(g.oam);
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &d),
        Datagram::Inner {
            vni: 5,
            segment: Err(DecodeError::GeneveOam)
        }
    );
}

#[test]
fn fewer_than_eight_bytes_is_too_short() {
    assert_eq!(decode_geneve(&[]), Err(DecodeError::GeneveTooShort));
    assert_eq!(
        decode_geneve(&GWLB_HEADER[..7]),
        Err(DecodeError::GeneveTooShort)
    );
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &GWLB_HEADER[..7]),
        Datagram::BadHeader(DecodeError::GeneveTooShort)
    );
}

#[test]
fn gwlb_options_read_back_exactly() {
    let g = decode_geneve(&GWLB_HEADER).unwrap();
    assert_eq!(g.protocol, PROTOCOL_IPV4);
    assert_eq!(g.vni, 0);
    assert_eq!(
        g.gwlb,
        GwlbMetadata {
            endpoint_id: Some(ENDPOINT_ID),
            attachment_id: Some(0x1234_5678),
            flow_cookie: Some(0xdead_beef),
        }
    );
    assert!(g.gwlb.is_complete());
    assert_eq!(g.unknown_critical, 0);
    assert_eq!(g.iter_options().count(), 3);
    // VNI 0: the session is the endpoint ID's low 24 bits.
    assert_eq!(g.session_vni(), 0x47_a901);
    // 68 bytes of encapsulation, as AWS documents: 20 IPv4 + 8 UDP + this header.
    assert_eq!(20 + 8 + GWLB_HEADER.len(), 68);
}

#[test]
fn gwlb_option_of_the_wrong_length_is_malformed() {
    // The cookie (type 3) with 2 words instead of 1.
    let mut d = GWLB_HEADER.to_vec();
    d[0] = 0x09;
    d[35] = 0x02;
    d.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(decode_geneve(&d), Err(DecodeError::GeneveOptions));
    // The endpoint ID (type 1) with 1 word instead of 2: the rest of the region still parses
    // (the endpoint ID's second word as an option header with 0 words).
    let mut d = GWLB_HEADER.to_vec();
    d[11] = 0x01;
    d[16..20].copy_from_slice(&[0x01, 0x08, 0x7e, 0x00]);
    assert_eq!(decode_geneve(&d), Err(DecodeError::GeneveOptions));
    // An unknown type of the AWS class, any length, is skipped.
    let mut d = GWLB_HEADER.to_vec();
    d[10] = 0x04;
    let g = decode_geneve(&d).unwrap();
    assert_eq!(g.gwlb.endpoint_id, None);
    assert_eq!(g.gwlb.flow_cookie, Some(0xdead_beef));
    assert!(!g.gwlb.is_complete());
    assert_eq!(g.session_vni(), 0);
}

#[test]
fn mirror_through_gwlb_decodes_the_nested_vxlan() {
    // Traffic Mirroring to a GWLB endpoint: GWLB carries the mirror's IPv4/UDP 4789/VXLAN.
    let vxlan = vxlan_datagram(42, &seg_v4());
    let carrier = outer_frame(54321, &vxlan)[14..].to_vec();
    let d = [&GWLB_HEADER[..], &carrier].concat();
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &d),
        Datagram::Inner {
            vni: 42,
            segment: Ok(seg_v4())
        }
    );
    // On the VXLAN port the same bytes are not mirror traffic: 0x08 reads as the I flag, and
    // the options as an Ethernet frame that is not IP.
    assert!(Datagram::decode(&d).segment().is_none());
}

#[test]
fn nested_vxlan_cut_short_counts_the_missing_bytes() {
    let vxlan = vxlan_datagram(42, &seg_v4());
    let carrier = outer_frame(54321, &vxlan)[14..].to_vec();
    let d = [&GWLB_HEADER[..], &carrier].concat();
    let cut = &d[..d.len() - 10];
    let dg = Datagram::decode_with(Encapsulation::Geneve, cut);
    let seg = dg.segment().unwrap();
    assert_eq!(seg.payload, &PAYLOAD[..PAYLOAD.len() - 10]);
    assert_eq!(seg.missing, 10);
}

#[test]
fn udp_to_4789_that_is_not_vxlan_is_not_tcp() {
    let mut vxlan = vxlan_datagram(42, &seg_v4());
    vxlan[0] = 0; // I flag clear
    let carrier = outer_frame(54321, &vxlan)[14..].to_vec();
    let d = [&GWLB_HEADER[..], &carrier].concat();
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &d),
        Datagram::Inner {
            vni: 0x47_a901,
            segment: Err(DecodeError::NotTcp)
        }
    );
}

#[test]
fn ipv4_packet_inside_decodes_directly_under_the_endpoint_vni() {
    let d = [&GWLB_HEADER[..], &ip_packet(&seg_v4())].concat();
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &d),
        Datagram::Inner {
            vni: 0x47_a901,
            segment: Ok(seg_v4())
        }
    );
}

#[test]
fn ipv6_packet_inside_decodes_directly() {
    // No options, VNI 0xabc, protocol IPv6.
    let header = [0x00, 0x00, 0x86, 0xdd, 0x00, 0x0a, 0xbc, 0x00];
    let d = [&header[..], &ip_packet(&seg_v6())].concat();
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &d),
        Datagram::Inner {
            vni: 0xabc,
            segment: Ok(seg_v6())
        }
    );
    // GWLB's options before it, as for IPv6 client traffic.
    let d = [&gwlb_header(PROTOCOL_IPV6)[..], &ip_packet(&seg_v6())].concat();
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &d).segment(),
        Some(&seg_v6())
    );
}

#[test]
fn protocol_type_that_contradicts_the_ip_version_is_malformed() {
    let d = [&gwlb_header(PROTOCOL_IPV4)[..], &ip_packet(&seg_v6())].concat();
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &d),
        Datagram::Inner {
            vni: 0x47_a901,
            segment: Err(DecodeError::IpMalformed)
        }
    );
    // Nothing after the header.
    assert_eq!(
        Datagram::decode_with(Encapsulation::Geneve, &GWLB_HEADER),
        Datagram::Inner {
            vni: 0x47_a901,
            segment: Err(DecodeError::IpMalformed)
        }
    );
}

#[test]
fn ethernet_frame_inside_decodes_like_vxlans_inner_frame() {
    // The Linux geneve device: no options, protocol 0x6558, VNI 0x10203.
    let header = [0x00, 0x00, 0x65, 0x58, 0x01, 0x02, 0x03, 0x00];
    for seg in [seg_v4(), seg_v6()] {
        let d = [&header[..], &ethernet_frame(&seg)].concat();
        assert_eq!(
            Datagram::decode_with(Encapsulation::Geneve, &d),
            Datagram::Inner {
                vni: 0x01_0203,
                segment: Ok(seg)
            }
        );
    }
}

#[test]
fn unsupported_protocol_type_counts_against_its_session() {
    // ARP (0x0806) and MPLS (0x8847).
    for protocol in [0x0806u16, 0x8847] {
        let d = [&gwlb_header(protocol)[..], &ip_packet(&seg_v4())].concat();
        assert_eq!(
            Datagram::decode_with(Encapsulation::Geneve, &d),
            Datagram::Inner {
                vni: 0x47_a901,
                segment: Err(DecodeError::GeneveProtocol)
            }
        );
    }
}

#[test]
fn vxlan_encapsulation_is_datagram_decode() {
    let vxlan = vxlan_datagram(42, &seg_v4());
    assert_eq!(
        Datagram::decode_with(Encapsulation::Vxlan, &vxlan),
        Datagram::decode(&vxlan)
    );
    assert_eq!(Datagram::decode(&vxlan).segment(), Some(&seg_v4()));
    // Read as Geneve, a VXLAN header is version 0, Opt Len 8 and protocol type 0: no segment.
    assert!(
        Datagram::decode_with(Encapsulation::Geneve, &vxlan)
            .segment()
            .is_none()
    );
}

#[test]
fn encapsulation_names_and_ports() {
    assert_eq!(Encapsulation::default(), Encapsulation::Vxlan);
    let named: Vec<_> = [Encapsulation::Vxlan, Encapsulation::Geneve]
        .iter()
        .map(|e| (e.as_str(), e.to_string()))
        .collect();
    assert_eq!(
        named,
        [
            ("vxlan", "vxlan".to_owned()),
            ("geneve", "geneve".to_owned())
        ]
    );
    assert_eq!(GENEVE_PORT, 6081);
}

#[test]
fn geneve_error_labels() {
    let labels: Vec<_> = [
        DecodeError::GeneveTooShort,
        DecodeError::GeneveVersion,
        DecodeError::GeneveOptions,
        DecodeError::GeneveOam,
        DecodeError::GeneveProtocol,
    ]
    .iter()
    .map(|e| (e.as_str(), e.index()))
    .collect();
    assert_eq!(
        labels,
        [
            ("geneve_too_short", 9),
            ("geneve_version", 10),
            ("geneve_options", 11),
            ("geneve_oam", 12),
            ("geneve_protocol", 13)
        ]
    );
    // The reasons that were there before keep their index.
    assert_eq!(DecodeError::UnsupportedLinkType.index(), 8);
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        if let Ok(g) = decode_geneve(&data) {
            proptest::prop_assert_eq!(g.options.len() + g.inner.len() + GENEVE_HEADER_LEN, data.len());
            proptest::prop_assert!(g.vni < 1 << 24);
            let walked: usize = g.iter_options().map(|o| 4 + o.data.len()).sum();
            proptest::prop_assert_eq!(walked, g.options.len());
        }
        let _ = Datagram::decode_with(Encapsulation::Geneve, &data);
    }

    /// A GWLB datagram of each kind, with bytes changed and cut: a value, never a panic, and
    /// a segment whose payload and missing bytes add up to at most the original payload.
    #[test]
    fn damaged_gwlb_datagrams_are_values(
        kind in 0usize..4,
        flips in proptest::collection::vec((0usize..160, proptest::num::u8::ANY), 0..4),
        cut in 0usize..160,
    ) {
        let seg = seg_v4();
        let mut d = match kind {
            0 => [&GWLB_HEADER[..], &outer_frame(1, &vxlan_datagram(42, &seg))[14..]].concat(),
            1 => [&GWLB_HEADER[..], &ip_packet(&seg)].concat(),
            2 => [&gwlb_header(PROTOCOL_IPV6)[..], &ip_packet(&seg_v6())].concat(),
            _ => [&gwlb_header(PROTOCOL_ETHERNET)[..], &ethernet_frame(&seg)].concat(),
        };
        for (i, b) in flips {
            if let Some(x) = d.get_mut(i) {
                *x = b;
            }
        }
        d.truncate(d.len().saturating_sub(cut));
        if let Some(s) = Datagram::decode_with(Encapsulation::Geneve, &d).segment() {
            proptest::prop_assert!(s.payload.len() as u64 + u64::from(s.missing) <= 65_535);
        }
    }
}
