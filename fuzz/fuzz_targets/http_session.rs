//! Two HTTP byte streams (client and server, taken from the input) cut into TCP segments by a
//! script (also from the input): in-order sends, losses (gaps), truncated mirror packets,
//! retransmissions (possibly disagreeing), segments ahead of a hole, SYN/FIN/RST, time steps and
//! expiry. Segments go through `Pipeline::segment` (flow table -> reassembly -> `http::Session`),
//! then `finish()`. Every exchange is encoded with `record::Encoder` (max_record_bytes 2048) and
//! the record checked: JSON, all values strings, within the size limit, `truncated` naming exactly
//! the damage of each message. Losses and truncation inside bodies drive the parser's damaged
//! paths (bodies kept up to the gap, chunked framing recovered); server bytes sent before the
//! client's drive held responses (released by their request, the timeout, the cap or a gap).
//!
//! Input layout (so seeds can be real request/response streams):
//! `flags: u8, client_len: u16 BE, server_len: u16 BE, client bytes, server bytes, script...`
//! The script is a sequence of `Op`s decoded with `arbitrary`; when it runs out, the rest of both
//! streams is sent in order (unless flags bit 2) and both sides send FIN.
#![no_main]
// `..Default::default()` on config literals keeps the targets building when fields are added.
#![allow(clippy::needless_update)]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mirror_receiver::flow::{FlowConfig, ReassemblyConfig};
use mirror_receiver::http::HttpConfig;
use mirror_receiver::pipeline::{Pipeline, PipelineConfig};
use mirror_receiver::wire::{TcpFlags, TcpSegment};
use mirror_receiver_fuzz::check_exchanges;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Arbitrary, Debug)]
enum Op {
    /// The next `len` bytes, in order.
    Send {
        server: bool,
        len: u16,
        fin: bool,
    },
    /// The next `len` bytes are never mirrored: a gap.
    Lose {
        server: bool,
        len: u16,
    },
    /// The next `len` bytes, of which only the first `keep` are captured (AWS truncation).
    Truncate {
        server: bool,
        len: u16,
        keep: u16,
    },
    /// `len` bytes from `back` bytes before the cursor again, possibly different.
    Retransmit {
        server: bool,
        back: u16,
        len: u16,
        corrupt: bool,
    },
    /// `len` bytes starting `skip` bytes past the cursor (out of order; cursor unchanged).
    Ahead {
        server: bool,
        skip: u16,
        len: u16,
    },
    /// A segment with no payload and the given flags at the cursor.
    Control {
        server: bool,
        syn: bool,
        fin: bool,
        rst: bool,
    },
    /// A segment whose ack acknowledges nothing of the other side (or a random value).
    StaleAck {
        server: bool,
        len: u16,
        ack: Option<u32>,
    },
    Tick {
        us: u32,
    },
    Expire,
}

struct Dir<'a> {
    addr: SocketAddr,
    isn: u32,
    stream: &'a [u8],
    /// Next offset to send in order.
    cursor: usize,
}

struct Conn<'a> {
    dirs: [Dir<'a>; 2],
    now: u64,
    buf: Vec<u8>,
}

impl Conn<'_> {
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        p: &mut Pipeline,
        server: bool,
        off: usize,
        len: usize,
        keep: usize,
        corrupt: bool,
        flags: TcpFlags,
        ack: Option<Option<u32>>,
    ) {
        let (me, other) = if server { (1, 0) } else { (0, 1) };
        let d = &self.dirs[me];
        let end = (off + len).min(d.stream.len());
        let off = off.min(end);
        let present = (end - off).min(keep);
        self.buf.clear();
        self.buf.extend_from_slice(&d.stream[off..off + present]);
        if corrupt {
            for b in &mut self.buf {
                *b ^= 0x20;
            }
        }
        let o = &self.dirs[other];
        let ack = ack.unwrap_or(Some(o.isn.wrapping_add(o.cursor as u32)));
        let seg = TcpSegment {
            src: d.addr,
            dst: o.addr,
            seq: d
                .isn
                .wrapping_add(off as u32)
                .wrapping_sub(u32::from(flags.syn)),
            ack,
            flags,
            payload: &self.buf,
            missing: (end - off - present) as u32,
        };
        self.now += 1000;
        if std::env::var_os("FUZZ_TRACE").is_some() {
            eprintln!(
                "{} seq={} off={} len={} missing={} ack={:?} {:?}",
                if server { "S" } else { "C" },
                seg.seq,
                off,
                seg.payload.len(),
                seg.missing,
                seg.ack,
                seg.flags
            );
        }
        p.segment(7, &seg, self.now);
    }
}

fn clamp_len(len: u16) -> usize {
    1 + usize::from(len) % 3000
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let flags = data[0];
    let rest = &data[5..];
    let clen = usize::from(u16::from_be_bytes([data[1], data[2]])).min(rest.len());
    let (client, rest) = rest.split_at(clen);
    let slen = usize::from(u16::from_be_bytes([data[3], data[4]])).min(rest.len());
    let (server, script) = rest.split_at(slen);

    let small = flags & 0x08 != 0;
    let http = if small {
        HttpConfig {
            max_body_bytes: 256,
            max_head_bytes: 512,
            max_pending_requests: 3,
            hold_timeout_us: 200_000,
            max_held_bytes: 1024,
            ..HttpConfig::default()
        }
    } else {
        HttpConfig {
            max_body_bytes: 64 * 1024,
            max_head_bytes: 16 * 1024,
            max_pending_requests: 64,
            hold_timeout_us: 200_000,
            max_held_bytes: 16 * 1024,
            ..HttpConfig::default()
        }
    };
    let cfg = PipelineConfig {
        flow: FlowConfig {
            idle_timeout_us: 5_000_000,
            max_flows: 4,
            reassembly: ReassemblyConfig {
                max_ooo_bytes: if small { 1024 } else { 16 * 1024 },
                max_ooo_segments: if small { 4 } else { 32 },
                reorder_timeout_us: 200_000,
                ..ReassemblyConfig::default()
            },
            // Fields added later (e.g. a memory budget) keep their defaults.
            ..FlowConfig::default()
        },
        http,
    };
    let (cip, sip): (IpAddr, IpAddr) = if flags & 0x01 != 0 {
        (
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2).into(),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(),
        )
    } else {
        (
            Ipv4Addr::new(10, 0, 0, 2).into(),
            Ipv4Addr::new(10, 0, 0, 1).into(),
        )
    };
    // Bit 1 swaps which endpoint sorts first in the flow key.
    let (cport, sport) = if flags & 0x02 != 0 {
        (80, 8080)
    } else {
        (51000, 80)
    };
    let mut conn = Conn {
        dirs: [
            Dir {
                addr: SocketAddr::new(cip, cport),
                isn: 0x1000_0000,
                stream: client,
                cursor: 0,
            },
            Dir {
                addr: SocketAddr::new(sip, sport),
                isn: 0xffff_f000,
                stream: server,
                cursor: 0,
            },
        ],
        now: 1_700_000_000_000_000,
        buf: Vec::new(),
    };
    let mut p = Pipeline::new(&cfg);
    let none = TcpFlags::default();
    if flags & 0x10 != 0 {
        let syn = TcpFlags { syn: true, ..none };
        conn.send(&mut p, false, 0, 0, 0, false, syn, Some(None));
        conn.send(&mut p, true, 0, 0, 0, false, syn, None);
    }

    let mut u = Unstructured::new(script);
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        match op {
            Op::Send { server, len, fin } => {
                let i = usize::from(server);
                let off = conn.dirs[i].cursor;
                let len = clamp_len(len);
                conn.send(
                    &mut p,
                    server,
                    off,
                    len,
                    usize::MAX,
                    false,
                    TcpFlags { fin, ..none },
                    None,
                );
                let d = &mut conn.dirs[i];
                d.cursor = (off + len).min(d.stream.len());
            }
            Op::Lose { server, len } => {
                let d = &mut conn.dirs[usize::from(server)];
                d.cursor = (d.cursor + clamp_len(len)).min(d.stream.len());
            }
            Op::Truncate { server, len, keep } => {
                let i = usize::from(server);
                let off = conn.dirs[i].cursor;
                let len = clamp_len(len);
                conn.send(
                    &mut p,
                    server,
                    off,
                    len,
                    usize::from(keep) % len,
                    false,
                    none,
                    None,
                );
                let d = &mut conn.dirs[i];
                d.cursor = (off + len).min(d.stream.len());
            }
            Op::Retransmit {
                server,
                back,
                len,
                corrupt,
            } => {
                let off = conn.dirs[usize::from(server)]
                    .cursor
                    .saturating_sub(usize::from(back));
                conn.send(
                    &mut p,
                    server,
                    off,
                    clamp_len(len),
                    usize::MAX,
                    corrupt,
                    none,
                    None,
                );
            }
            Op::Ahead { server, skip, len } => {
                let off = conn.dirs[usize::from(server)].cursor + 1 + usize::from(skip) % 8192;
                conn.send(
                    &mut p,
                    server,
                    off,
                    clamp_len(len),
                    usize::MAX,
                    false,
                    none,
                    None,
                );
            }
            Op::Control {
                server,
                syn,
                fin,
                rst,
            } => {
                let off = conn.dirs[usize::from(server)].cursor;
                conn.send(
                    &mut p,
                    server,
                    off,
                    0,
                    0,
                    false,
                    TcpFlags { syn, fin, rst },
                    None,
                );
            }
            Op::StaleAck { server, len, ack } => {
                let i = usize::from(server);
                let off = conn.dirs[i].cursor;
                let len = clamp_len(len);
                let ack = ack.or(Some(conn.dirs[1 - i].isn));
                conn.send(&mut p, server, off, len, usize::MAX, false, none, Some(ack));
                let d = &mut conn.dirs[i];
                d.cursor = (off + len).min(d.stream.len());
            }
            Op::Tick { us } => conn.now += u64::from(us),
            Op::Expire => p.expire(conn.now),
        }
    }
    if flags & 0x04 == 0 {
        for server in [false, true] {
            let i = usize::from(server);
            while conn.dirs[i].cursor < conn.dirs[i].stream.len() {
                let off = conn.dirs[i].cursor;
                conn.send(&mut p, server, off, 1460, usize::MAX, false, none, None);
                conn.dirs[i].cursor = (off + 1460).min(conn.dirs[i].stream.len());
            }
        }
        for server in [false, true] {
            let off = conn.dirs[usize::from(server)].cursor;
            conn.send(
                &mut p,
                server,
                off,
                0,
                0,
                false,
                TcpFlags { fin: true, ..none },
                None,
            );
        }
    }
    conn.now += 1;
    p.finish(conn.now);
    assert_eq!(p.flows(), 0, "flows left after finish");

    let stats = p.stats();
    check_exchanges(&mut p, &stats, cfg.http.max_body_bytes);
});
