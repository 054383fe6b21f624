//! Arbitrary bytes split into datagrams for `Pipeline::datagram` (and some capture frames for
//! `Pipeline::capture_frame`), with time steps, `expire` and a final `finish`. The flow table must
//! stay within `max_flows`, every exchange must encode to a valid record (see `check_exchange`),
//! and the pair counters must match the exchanges handed out.
//!
//! Input layout: `config: u8`, then records `ctl: u8, [link: u8 if kind 3], len: u16 BE, bytes`.
//! `ctl` bits 0-4: time step e (now += 2^e - 1 µs); bit 5: `expire` after; bits 6-7: kind
//! (0, 1: VXLAN datagram; 2: Ethernet capture frame; 3: capture frame of link type `link % 6`).
#![no_main]
// `..Default::default()` on config literals keeps the targets building when fields are added.
#![allow(clippy::needless_update)]

use libfuzzer_sys::fuzz_target;
use mirror_receiver::flow::{FlowConfig, ReassemblyConfig};
use mirror_receiver::http::HttpConfig;
use mirror_receiver::pipeline::{Pipeline, PipelineConfig};
use mirror_receiver::wire::LinkType;
use mirror_receiver_fuzz::check_exchanges;

fuzz_target!(|data: &[u8]| {
    let Some((&config, mut rest)) = data.split_first() else {
        return;
    };
    let small = config & 0x01 != 0;
    let cfg = PipelineConfig {
        flow: FlowConfig {
            idle_timeout_us: if small { 1_000_000 } else { 30_000_000 },
            max_flows: if small { 2 } else { 64 },
            reassembly: ReassemblyConfig {
                max_ooo_bytes: if small { 2048 } else { 64 * 1024 },
                max_ooo_segments: if small { 4 } else { 64 },
                reorder_timeout_us: if small { 100_000 } else { 2_000_000 },
                ..ReassemblyConfig::default()
            },
            // Fields added later (e.g. a memory budget) keep their defaults.
            ..FlowConfig::default()
        },
        http: HttpConfig {
            max_body_bytes: if small { 512 } else { 64 * 1024 },
            max_head_bytes: if small { 1024 } else { 16 * 1024 },
            max_pending_requests: if small { 4 } else { 64 },
            ..HttpConfig::default()
        },
    };
    let mut p = Pipeline::new(&cfg);
    let mut now: u64 = 1_700_000_000_000_000;
    while let Some((&ctl, r)) = rest.split_first() {
        rest = r;
        let kind = ctl >> 6;
        let link = if kind == 3 {
            let Some((&l, r)) = rest.split_first() else {
                break;
            };
            rest = r;
            LinkType::ALL[usize::from(l) % LinkType::ALL.len()]
        } else {
            LinkType::Ethernet
        };
        let Some((len, r)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_be_bytes(*len)).min(r.len());
        let (frame, r) = r.split_at(len);
        rest = r;
        now += (1u64 << (ctl & 0x1f)) - 1;
        match kind {
            0 | 1 => p.datagram(frame, now),
            _ => p.capture_frame(link, frame, 99, now),
        }
        if ctl & 0x20 != 0 {
            p.expire(now);
        }
        assert!(
            p.flows() <= cfg.flow.max_flows,
            "{} flows > max {}",
            p.flows(),
            cfg.flow.max_flows
        );
    }
    now += 1;
    p.finish(now);
    assert_eq!(p.flows(), 0, "flows left after finish");
    let stats = p.stats();
    assert_eq!(
        stats.wire.segments + stats.wire.dropped(),
        stats.wire.datagrams
    );
    check_exchanges(&mut p, &stats, cfg.http.max_body_bytes);
});
