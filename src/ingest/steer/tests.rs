use super::*;
use crate::ingest::tests::{
    assert_taken_by_owners, assert_taken_by_owners_in, flows, run_group, run_group_in,
};
use crate::testkit::Shape;
use std::sync::atomic::Ordering;

fn handed_off(taken: &[crate::ingest::tests::Taken]) -> u64 {
    taken
        .iter()
        .map(|t| t.counters.handed_off.load(Ordering::Relaxed))
        .sum()
}

#[test]
fn the_program_is_valid_classic_bpf() {
    for shards in [1, 2, 3, 4, 16, 255, 1024] {
        let p = program(shards).unwrap();
        assert!(p.len() < libc::BPF_MAXINSNS as usize);
        assert_eq!(
            p.last().map(|i| (i.code, i.k)),
            Some((RET_K, shards as u32))
        );
        for (i, insn) in p.iter().enumerate() {
            let targets = if insn.code == JA {
                vec![insn.k as usize]
            } else if insn.code & 0x07 == JEQ & 0x07 {
                vec![usize::from(insn.jt), usize::from(insn.jf)]
            } else {
                continue;
            };
            for t in targets {
                assert!(i + 1 + t < p.len(), "instruction {i} jumps past the end");
            }
        }
    }
}

/// The kernel's answer is ours: with the program attached, no datagram of a shape it
/// classifies lands on a socket other than its owner's, so none is handed off.
#[test]
fn the_kernel_steers_every_shape_it_classifies_to_the_owner() {
    for workers in [2, 3, 4] {
        let mut sent = Vec::new();
        for (v6, shape) in [
            (false, Shape::Plain),
            (false, Shape::Vlan),
            (false, Shape::Ipv4Options),
            (true, Shape::Plain),
            (true, Shape::Vlan),
        ] {
            sent.extend(flows(48, v6, shape));
        }
        let taken = run_group(workers, true, 2, &sent);
        let owned = assert_taken_by_owners(&taken, &sent);
        assert!(owned.iter().all(|&n| n > 0), "{workers} workers: {owned:?}");
        assert_eq!(
            handed_off(&taken),
            0,
            "{workers} workers: nothing handed off"
        );
        for (w, t) in taken.iter().enumerate() {
            assert_eq!(
                t.counters.received.load(Ordering::Relaxed),
                t.datagrams.len() as u64,
                "worker {w} took exactly what its socket received"
            );
        }
    }
}

/// QinQ and IPv6 extension headers are left to the kernel's hash of the outer addresses;
/// fragments, junk and short datagrams end on some socket (a load past the end answers 0).
/// All of them are taken once, the flows by their owners, through the counted hand-off.
#[test]
fn what_the_program_cannot_classify_is_handed_off_and_nothing_stalls() {
    const WORKERS: usize = 4;
    let mut sent: Vec<(usize, Vec<u8>)> = vec![
        (0, Vec::new()),
        (0, b"junk".to_vec()),
        (1, crate::testkit::vxlan_header(9).to_vec()),
        (1, {
            // An IPv4 header cut after its addresses: the program's port load fails.
            let mut d = flows(1, false, Shape::Plain)[0].1.clone();
            d.truncate(8 + 14 + 20);
            d
        }),
    ];
    sent.extend(flows(4, false, Shape::Ipv4Fragment));
    sent.extend(flows(24, false, Shape::QinQ));
    sent.extend(flows(24, true, Shape::Ipv6HopByHop));
    // And after them, flows it does classify: the workers still run.
    let classified = flows(24, false, Shape::Plain);
    sent.extend(classified.iter().cloned());
    let taken = run_group(WORKERS, true, 2, &sent);
    assert_taken_by_owners(&taken, &sent);
    let handed = handed_off(&taken);
    let fallback = 2 * 48;
    assert!(
        handed > 0 && handed <= fallback,
        "{handed} handed off, of {fallback} datagrams the program leaves to the kernel's hash"
    );
}

/// A VXLAN datagram as a Gateway Load Balancer delivers it when a mirror session's target is its
/// endpoint: Geneve with AWS's three options around the mirror's IPv4/UDP 4789 packet.
fn gwlb(vxlan: &[u8], mirror_port: u16) -> Vec<u8> {
    let mut d = vec![0x08, 0x00, 0x08, 0x00, 0, 0, 0, 0];
    for (kind, value) in [(1u8, &[7u8; 8][..]), (2, &[9u8; 8][..]), (3, &[5u8; 4][..])] {
        d.extend_from_slice(&[0x01, 0x08, kind, (value.len() / 4) as u8]);
        d.extend_from_slice(value);
    }
    let udp_len = (8 + vxlan.len()) as u16;
    let total = 20 + udp_len;
    d.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    d.extend_from_slice(&[10, 9, 0, 1, 10, 9, 0, 2]);
    d.extend_from_slice(&mirror_port.to_be_bytes());
    d.extend_from_slice(&crate::wire::VXLAN_PORT.to_be_bytes());
    d.extend_from_slice(&udp_len.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(vxlan);
    assert_eq!(d.len(), GWLB_INNER as usize - 8 + vxlan.len());
    d
}

#[test]
fn the_geneve_program_is_valid_classic_bpf() {
    for shards in [1, 2, 3, 4, 1024] {
        let p = program_for(shards, Encapsulation::Geneve).unwrap();
        assert!(p.len() < libc::BPF_MAXINSNS as usize);
        for (i, insn) in p.iter().enumerate() {
            if insn.code == JA {
                assert!(i + 1 + (insn.k as usize) < p.len());
            } else if insn.code & 0x07 == JEQ & 0x07 {
                assert!(i + 1 + usize::from(insn.jt.max(insn.jf)) < p.len());
            }
        }
    }
}

/// GWLB's nesting is steered by the mirrored connection too: both directions (different
/// outer senders, different mirror source ports) reach the owner and nothing is handed off;
/// Geneve of another shape (other options, an IP packet inside) takes the counted hand-off.
#[test]
fn the_kernel_steers_gwlb_geneve_by_the_mirrored_flow() {
    let wrap = |flows: Vec<(usize, Vec<u8>)>| -> Vec<(usize, Vec<u8>)> {
        flows
            .into_iter()
            .enumerate()
            .map(|(i, (sender, d))| (sender, gwlb(&d, 50_000 + i as u16)))
            .collect()
    };
    for workers in [2, 4] {
        let mut sent = wrap(flows(48, false, Shape::Plain));
        sent.extend(wrap(flows(16, true, Shape::Vlan)));
        let taken = run_group_in(Encapsulation::Geneve, workers, true, 2, &sent);
        let owned = assert_taken_by_owners_in(Encapsulation::Geneve, &taken, &sent);
        assert!(owned.iter().all(|&n| n > 0), "{workers} workers: {owned:?}");
        assert_eq!(
            handed_off(&taken),
            0,
            "{workers} workers: nothing handed off"
        );
    }
    // The same flows with a fourth option (36 bytes of options): the fallback.
    let mut sent = Vec::new();
    for (sender, mut d) in wrap(flows(24, false, Shape::Plain)) {
        d[0] = 0x09;
        d.splice(40..40, [0x01, 0x08, 0x7f, 0x00]);
        sent.push((sender, d));
    }
    let taken = run_group_in(Encapsulation::Geneve, 4, true, 2, &sent);
    assert_taken_by_owners_in(Encapsulation::Geneve, &taken, &sent);
    assert!(handed_off(&taken) > 0);
}
