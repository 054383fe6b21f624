//! Arbitrary bytes through every wire decoder: `decode_vxlan` (+ `decode_ethernet` on its inner
//! frame), `decode_ethernet` on the raw bytes, and `decode_capture_frame` for every `LinkType`
//! (a VXLAN result is decoded further, as the pipeline does). Besides "no panic", every borrowed
//! slice a decoder returns must lie inside its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_receiver::wire::{
    self, CaptureFrame, DecodeError, LinkType, TcpSegment, VXLAN_HEADER_LEN,
};
use mirror_receiver_fuzz::within;

fn check_segment(seg: &TcpSegment<'_>, frame: &[u8]) {
    assert!(within(seg.payload, frame), "TCP payload outside its frame");
    // The missing bytes come from a 16-bit IP length: never more than 64 KiB (plus an IPv6
    // jumbo-free header), except the documented u32::MAX saturation which cannot happen here.
    assert!(seg.missing <= 65_535 + 40, "missing = {}", seg.missing);
    let _ = (seg.src, seg.dst, seg.seq, seg.ack, seg.flags);
}

fn vxlan_then_ethernet(datagram: &[u8]) {
    match wire::decode_vxlan(datagram) {
        Ok(v) => {
            assert!(datagram.len() >= VXLAN_HEADER_LEN);
            assert_eq!(v.inner.len(), datagram.len() - VXLAN_HEADER_LEN);
            assert!(within(v.inner, datagram));
            assert!(v.vni < 1 << 24, "VNI is 24 bits: {}", v.vni);
            match wire::decode_ethernet(v.inner) {
                Ok(seg) => check_segment(&seg, v.inner),
                Err(e) => label(e),
            }
        }
        Err(e) => {
            assert!(matches!(
                e,
                DecodeError::VxlanTooShort | DecodeError::VxlanNoVni
            ));
            if e == DecodeError::VxlanTooShort {
                assert!(datagram.len() < VXLAN_HEADER_LEN);
            }
            label(e);
        }
    }
}

fn label(e: DecodeError) {
    assert!(!e.as_str().is_empty());
    assert_eq!(DecodeError::ALL[e.index()], e);
}

fuzz_target!(|data: &[u8]| {
    vxlan_then_ethernet(data);
    match wire::decode_ethernet(data) {
        Ok(seg) => check_segment(&seg, data),
        Err(e) => label(e),
    }
    for link in LinkType::ALL {
        match wire::decode_capture_frame(link, data) {
            Ok(CaptureFrame::Vxlan(payload)) => {
                assert!(within(payload, data), "VXLAN payload outside its frame");
                vxlan_then_ethernet(payload);
            }
            Ok(CaptureFrame::Tcp(seg)) => check_segment(&seg, data),
            Err(e) => label(e),
        }
    }
});
