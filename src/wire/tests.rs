use super::*;

/// VXLAN header: I flag, VNI 42.
const VXLAN: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00];
/// Ethernet II, IPv4.
const ETH: [u8; 14] = [0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
/// IPv4, total length 58, TCP, 10.0.0.1 -> 10.0.0.2, checksum left 0 (never validated).
const IPV4: [u8; 20] = [
    0x45, 0x00, 0x00, 0x3a, 0x00, 0x01, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 10, 0, 0, 1, 10, 0, 0,
    2,
];
/// TCP 50000 -> 80, seq 1000, ack 2000, PSH|ACK, no options.
const TCP: [u8; 20] = [
    0xc3, 0x50, 0x00, 0x50, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x07, 0xd0, 0x50, 0x18, 0xff, 0xff,
    0x00, 0x00, 0x00, 0x00,
];
const PAYLOAD: &[u8; 18] = b"GET / HTTP/1.1\r\n\r\n";

fn frame(eth: &[u8], ip: &[u8], tcp: &[u8], payload: &[u8]) -> Vec<u8> {
    [eth, ip, tcp, payload].concat()
}

#[test]
fn vxlan_datagram_decodes_to_tcp_segment() {
    let datagram = [&VXLAN[..], &frame(&ETH, &IPV4, &TCP, PAYLOAD)].concat();
    let v = decode_vxlan(&datagram).unwrap();
    assert_eq!(v.vni, 42);
    let seg = decode_ethernet(v.inner).unwrap();
    assert_eq!(seg.src, "10.0.0.1:50000".parse().unwrap());
    assert_eq!(seg.dst, "10.0.0.2:80".parse().unwrap());
    assert_eq!(seg.seq, 1000);
    assert_eq!(seg.ack, Some(2000));
    assert_eq!(seg.flags, TcpFlags::default());
    assert_eq!(seg.payload, PAYLOAD);
    assert_eq!(seg.missing, 0);
}

#[test]
fn vxlan_needs_eight_bytes_and_the_i_flag() {
    assert_eq!(decode_vxlan(&VXLAN[..7]), Err(DecodeError::VxlanTooShort));
    assert_eq!(
        decode_vxlan(&[0x00, 0, 0, 0, 0, 0, 1, 0]),
        Err(DecodeError::VxlanNoVni)
    );
    // Exactly 8 bytes is a valid header with an empty inner frame.
    assert_eq!(decode_vxlan(&VXLAN).unwrap().inner, &[] as &[u8]);
}

#[test]
fn vxlan_reserved_bits_are_ignored_and_vni_kept() {
    // Flags 0xff with reserved bytes set (as in suricata's non-zero-reserved capture).
    let header = [0xff, 0x01, 0xff, 0xff, 0xab, 0xcd, 0xef, 0x77];
    let v = decode_vxlan(&header).unwrap();
    assert_eq!(v.vni, 0x00ab_cdef);
}

#[test]
fn vlan_and_qinq_tags_are_skipped() {
    // 802.1Q tag VLAN 100.
    let vlan = [
        0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x81, 0x00, 0x00, 0x64, 0x08, 0x00,
    ];
    let f = frame(&vlan, &IPV4, &TCP, PAYLOAD);
    let seg = decode_ethernet(&f).unwrap();
    assert_eq!(seg.payload, PAYLOAD);
    // 802.1ad outer tag, 802.1Q inner tag.
    let qinq = [
        0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xa8, 0x00, 0x0a, 0x81, 0x00, 0x00,
        0x14, 0x08, 0x00,
    ];
    let f = frame(&qinq, &IPV4, &TCP, PAYLOAD);
    let seg = decode_ethernet(&f).unwrap();
    assert_eq!(seg.dst.port(), 80);
    assert_eq!(seg.payload, PAYLOAD);
}

#[test]
fn ipv6_with_extension_header_decodes() {
    let eth6 = [0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
    // IPv6: payload length 8 (hop-by-hop) + 20 (TCP) + 18, next header 0 (hop-by-hop).
    let mut ip6 = vec![0x60, 0, 0, 0, 0x00, 46, 0x00, 64];
    ip6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    ip6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    // Hop-by-hop: next header TCP (6), length 0 (8 bytes), PadN.
    let hbh = [0x06, 0x00, 0x01, 0x04, 0, 0, 0, 0];
    let f = [&eth6[..], &ip6, &hbh, &TCP, PAYLOAD].concat();
    let seg = decode_ethernet(&f).unwrap();
    assert_eq!(seg.src, "[2001:db8::1]:50000".parse().unwrap());
    assert_eq!(seg.payload, PAYLOAD);
    assert_eq!(seg.missing, 0);
}

#[test]
fn truncated_frame_reports_missing_payload_bytes() {
    // IP says 58 bytes; the mirror packet was cut after 8 payload bytes.
    let full = frame(&ETH, &IPV4, &TCP, PAYLOAD);
    let cut = &full[..14 + 20 + 20 + 8];
    let seg = decode_ethernet(cut).unwrap();
    assert_eq!(seg.payload, &PAYLOAD[..8]);
    assert_eq!(seg.missing, 10);
}

#[test]
fn cut_tcp_header_is_malformed() {
    let full = frame(&ETH, &IPV4, &TCP, PAYLOAD);
    assert_eq!(
        decode_ethernet(&full[..14 + 20 + 10]),
        Err(DecodeError::TcpMalformed)
    );
    assert_eq!(
        decode_ethernet(&full[..10]),
        Err(DecodeError::LinkTruncated)
    );
}

#[test]
fn non_tcp_and_non_ip_are_told_apart() {
    let mut udp_ip = IPV4;
    udp_ip[9] = 17;
    let udp = [0xc3, 0x50, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, 1, 2, 3, 4];
    let mut f = [&ETH[..], &udp_ip, &udp].concat();
    f[14 + 3] = 32;
    assert_eq!(decode_ethernet(&f), Err(DecodeError::NotTcp));
    let mut arp = ETH;
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let arp_frame = [
        &arp[..],
        &[
            0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
        ],
    ]
    .concat();
    assert_eq!(decode_ethernet(&arp_frame), Err(DecodeError::NotIp));
    let mut lldp = ETH;
    lldp[12..14].copy_from_slice(&[0x88, 0xcc]);
    assert_eq!(
        decode_ethernet(&[&lldp[..], &[0u8; 20]].concat()),
        Err(DecodeError::NotIp)
    );
}

#[test]
fn ip_fragments_are_counted_not_reassembled() {
    let mut ip = IPV4;
    ip[6] = 0x20; // more fragments
    assert_eq!(
        decode_ethernet(&frame(&ETH, &ip, &TCP, PAYLOAD)),
        Err(DecodeError::IpFragment)
    );
}

#[test]
fn capture_link_types_decode() {
    let ip_packet = [&IPV4[..], &TCP, PAYLOAD].concat();
    let expect = |f: CaptureFrame<'_>| match f {
        CaptureFrame::Tcp(seg) => assert_eq!(seg.payload, PAYLOAD),
        other => panic!("{other:?}"),
    };
    expect(decode_capture_frame(LinkType::RawIp, &ip_packet).unwrap());
    // BSD loopback: AF_INET = 2 in little-endian host order.
    expect(
        decode_capture_frame(LinkType::Null, &[&[2, 0, 0, 0][..], &ip_packet].concat()).unwrap(),
    );
    expect(
        decode_capture_frame(LinkType::Loop, &[&[0, 0, 0, 2][..], &ip_packet].concat()).unwrap(),
    );
    // Linux cooked v1: 16 bytes, protocol last.
    let sll = [0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
    expect(decode_capture_frame(LinkType::LinuxSll, &[&sll[..], &ip_packet].concat()).unwrap());
    // Linux cooked v2: 20 bytes, protocol first.
    let sll2 = [
        0x08, 0x00, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0,
    ];
    expect(decode_capture_frame(LinkType::LinuxSll2, &[&sll2[..], &ip_packet].concat()).unwrap());
    expect(decode_capture_frame(LinkType::Ethernet, &frame(&ETH, &IPV4, &TCP, PAYLOAD)).unwrap());
    assert_eq!(LinkType::from_pcap(1), Some(LinkType::Ethernet));
    assert_eq!(LinkType::from_pcap(147), None);
}

#[test]
fn udp_to_port_4789_in_a_capture_is_vxlan() {
    let inner = frame(&ETH, &IPV4, &TCP, PAYLOAD);
    let udp_len = (8 + 8 + inner.len()) as u16;
    let mut ip = IPV4;
    ip[9] = 17;
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    let mut udp = vec![0xff, 0x10, 0x12, 0xb5];
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    let outer = [&ETH[..], &ip, &udp, &VXLAN, &inner].concat();
    match decode_capture_frame(LinkType::Ethernet, &outer).unwrap() {
        CaptureFrame::Vxlan(payload) => {
            assert_eq!(decode_vxlan(payload).unwrap().vni, 42);
            assert_eq!(
                decode_ethernet(decode_vxlan(payload).unwrap().inner)
                    .unwrap()
                    .seq,
                1000
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn error_labels_are_distinct() {
    let labels: std::collections::BTreeSet<_> =
        DecodeError::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(labels.len(), DecodeError::ALL.len());
    for (i, e) in DecodeError::ALL.iter().enumerate() {
        assert_eq!(e.index(), i);
    }
}

/// A VXLAN datagram to port 4789 in an Ethernet frame, as a capture holds it.
fn outer_frame() -> Vec<u8> {
    let datagram = [&VXLAN[..], &frame(&ETH, &IPV4, &TCP, PAYLOAD)].concat();
    crate::testkit::outer_frame(54321, &datagram)
}

#[test]
fn plain_frames_take_the_fast_path() {
    let tcp = frame(&ETH, &IPV4, &TCP, PAYLOAD);
    assert!(matches!(plain_ethernet(&tcp), Some(CaptureFrame::Tcp(_))));
    let outer = outer_frame();
    assert!(matches!(
        plain_ethernet(&outer),
        Some(CaptureFrame::Vxlan(_))
    ));
    assert_eq!(
        decode_capture_frame(LinkType::Ethernet, &outer),
        decode_lax(LinkType::Ethernet, &outer)
    );
    // A truncated packet is left to the lax slicer, which counts the missing bytes.
    assert_eq!(plain_ethernet(&tcp[..tcp.len() - 4]), None);
}

proptest::proptest! {
    /// Wherever the fast path answers, etherparse's lax slicer gives the same answer: on valid
    /// frames (TCP, VXLAN, IPv6 with an extension header) with bytes changed, cut or added.
    #[test]
    fn the_fast_path_agrees_with_the_lax_slicer(
        base in 0usize..3,
        flips in proptest::collection::vec((0usize..200, proptest::num::u8::ANY), 0..4),
        cut in 0usize..80,
        extra in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
    ) {
        let mut f = match base {
            0 => frame(&ETH, &IPV4, &TCP, PAYLOAD),
            1 => outer_frame(),
            _ => {
                let eth6 = [0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x86, 0xdd];
                let mut ip6 = vec![0x60, 0, 0, 0, 0x00, 46, 0x00, 64];
                ip6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
                ip6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
                [&eth6[..], &ip6, &[0x06, 0x00, 0x01, 0x04, 0, 0, 0, 0], &TCP, PAYLOAD].concat()
            }
        };
        for (i, b) in flips {
            if let Some(x) = f.get_mut(i) {
                *x = b;
            }
        }
        // Half the cases cut the frame short, anywhere.
        if cut < 40 {
            f.truncate(f.len().saturating_sub(cut * 2));
        }
        f.extend_from_slice(&extra);
        if let Some(fast) = plain_ethernet(&f) {
            proptest::prop_assert_eq!(Ok(fast), decode_lax(LinkType::Ethernet, &f));
        }
        // The IP packet alone, as Geneve carries it: the same agreement with the raw IP slicer.
        if let Some(ip) = f.get(14..) {
            for ether_type in [EtherType::IPV4, EtherType::IPV6] {
                if let Some(fast) = plain_ip(ether_type, ip) {
                    proptest::prop_assert_eq!(Ok(fast), decode_lax(LinkType::RawIp, ip));
                }
            }
        }
        if let Ok(seg) = decode_ethernet(&f) {
            let lax = decode_lax(LinkType::Ethernet, &f);
            proptest::prop_assert!(
                lax == Ok(CaptureFrame::Tcp(seg.clone())) || matches!(lax, Ok(CaptureFrame::Vxlan(_))),
                "{:?} vs {:?}", seg, lax
            );
        }
    }

    /// Found by this test: pnet_packet's SLL view indexes past frames shorter than 16 bytes.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
        let _ = decode_vxlan(&data).map(|v| decode_ethernet(v.inner));
        let _ = decode_ethernet(&data);
        for link in LinkType::ALL {
            let _ = decode_capture_frame(link, &data);
        }
    }

    #[test]
    fn any_truncation_of_a_valid_frame_is_a_value(cut in 0usize..=72) {
        let full = frame(&ETH, &IPV4, &TCP, PAYLOAD);
        if let Ok(seg) = decode_ethernet(&full[..cut]) {
            proptest::prop_assert_eq!(seg.payload.len() as u32 + seg.missing, 18);
        }
    }
}
