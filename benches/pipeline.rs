//! Throughput of each stage and of the whole pipeline, on real captures.
//!
//! Groups (one benchmark per capture in each):
//! - `decode`: VXLAN header + inner Ethernet/VLAN/IP/TCP decode of every datagram (bytes/s of
//!   datagrams).
//! - `reassembly`: the flow table and per-direction reassembly fed every decoded segment, in
//!   capture order and with the data segments of each direction swapped pairwise (bytes/s of TCP
//!   payload), into a handler that only counts what is delivered.
//! - `http_session`: the reassembled streams of both directions replayed into one HTTP
//!   [`Session`] per connection, parse and pairing (bytes/s of stream bytes).
//! - `record`: encoding every exchange into its Akto JSON record (records/s and bytes/s of JSON).
//! - `pipeline`: [`Pipeline`] over every datagram, expiring once a second of capture time as
//!   `replay` does, then `finish` (pairs/s and bytes/s of datagrams); `records/` adds the record
//!   encoding (everything `replay` does but the sink).
//!
//! - `http2`: an HTTP/2 connection of 1,000 streams (HPACK with the dynamic table, as
//!   loona-hpack's encoder writes it; a 300-byte JSON body per response), both directions fed
//!   in 1,400-byte pieces into [`mirror_receiver::http2::Connection`] (streams/s).
//!
//! Captures: `samples/sample.vxlan.pcap`, plus `../shared/corpus/vxlan/real-load-10k.vxlan.pcap`
//! when it exists, or instead of it the VXLAN captures listed in `MIRROR_BENCH_CAPTURES`
//! (`:`-separated; empty for the sample only).
//!
//! Run with `cargo bench --bench pipeline` (`-- --quick` for a fast pass, or a filter such as
//! `-- pipeline/`).

use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use mirror_receiver::capture::CaptureReader;
use mirror_receiver::flow::{
    CloseReason, DataMeta, FlowConfig, FlowKey, FlowTable, Side, StreamEvent, StreamHandler,
};
use mirror_receiver::http::{Exchange, HttpConfig, HttpCtx, Session};
use mirror_receiver::pipeline::{Pipeline, PipelineConfig};
use mirror_receiver::record::{Encoder, RecordConfig};
use mirror_receiver::wire::{self, CaptureFrame, TcpSegment};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `Pipeline::expire` is called once per second of capture time, as `replay` does.
const EXPIRE_EVERY_US: u64 = 1_000_000;

/// The VXLAN datagrams (UDP payloads) of a capture, with their capture times.
struct Capture {
    name: String,
    datagrams: Vec<(u64, Vec<u8>)>,
}

impl Capture {
    fn load(path: &Path) -> Capture {
        let mut reader =
            CaptureReader::open(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut datagrams = Vec::new();
        let mut last_ts = 0u64;
        while let Some(frame) = reader.next_frame() {
            let frame = frame.unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            // Capture time never goes back, as in `replay`.
            last_ts = last_ts.max(frame.ts);
            let Some(link) = frame.link else { continue };
            if let Ok(CaptureFrame::Vxlan(payload)) = wire::decode_capture_frame(link, &frame.data)
            {
                datagrams.push((last_ts, payload.to_vec()));
            }
        }
        assert!(
            !datagrams.is_empty(),
            "{}: no VXLAN datagram",
            path.display()
        );
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .unwrap_or("capture")
            .to_owned();
        Capture { name, datagrams }
    }

    fn bytes(&self) -> u64 {
        self.datagrams.iter().map(|(_, d)| d.len() as u64).sum()
    }

    /// Decoded TCP segments (mirror session, segment, time), borrowing from the datagrams.
    fn segments(&self) -> Vec<(u32, TcpSegment<'_>, u64)> {
        self.datagrams
            .iter()
            .filter_map(|(ts, d)| {
                let v = wire::decode_vxlan(d).ok()?;
                let seg = wire::decode_ethernet(v.inner).ok()?;
                Some((v.vni, seg, *ts))
            })
            .collect()
    }
}

/// The sample, then the captures named in `MIRROR_BENCH_CAPTURES` (paths separated by `:`), or
/// when it is unset the corpus's real-load-10k if it is there.
fn captures() -> Vec<Capture> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![Capture::load(&root.join("samples/sample.vxlan.pcap"))];
    match std::env::var_os("MIRROR_BENCH_CAPTURES") {
        Some(paths) => {
            for path in std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()) {
                out.push(Capture::load(&path));
            }
        }
        None => {
            let big = root.join("../shared/corpus/vxlan/real-load-10k.vxlan.pcap");
            if big.exists() {
                out.push(Capture::load(&big));
            } else {
                eprintln!("{} not found: benchmarking the sample only", big.display());
            }
        }
    }
    out
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    // One iteration of a large capture takes tens of ms: flat sampling keeps the run short.
    g.sampling_mode(SamplingMode::Flat);
    g
}

// ---- decode -------------------------------------------------------------------------------------

fn decode(c: &mut Criterion, caps: &[Capture]) {
    let mut g = group(c, "decode");
    for cap in caps {
        let segments = cap.segments().len();
        assert!(segments > 0, "{}: no datagram decodes to TCP", cap.name);
        g.throughput(Throughput::Bytes(cap.bytes()));
        g.bench_function(&cap.name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                for (_, d) in &cap.datagrams {
                    if let Ok(v) = wire::decode_vxlan(black_box(d))
                        && let Ok(seg) = wire::decode_ethernet(v.inner)
                    {
                        black_box(&seg);
                        n += 1;
                    }
                }
                assert_eq!(n, segments);
            })
        });
    }
    g.finish();
}

// ---- reassembly ---------------------------------------------------------------------------------

/// What a counting handler saw delivered.
#[derive(Default, Debug, PartialEq, Eq)]
struct Delivered {
    bytes: u64,
    gap_bytes: u64,
}

/// A stream handler that only counts: what the flow table and reassembly cost on their own.
#[derive(Default)]
struct Count;

impl StreamHandler for Count {
    type Ctx = Delivered;

    fn event(&mut self, ctx: &mut Delivered, _: &FlowKey, _: Side, ev: StreamEvent<'_>) {
        match ev {
            StreamEvent::Data(bytes, _) => ctx.bytes += bytes.len() as u64,
            StreamEvent::Gap { len, .. } => ctx.gap_bytes += len,
            StreamEvent::End { .. } => {}
        }
    }

    fn close(&mut self, _: &mut Delivered, _: &FlowKey, _: CloseReason, _: u64) {}
}

/// Runs segments through a flow table the way `Pipeline` does: expire once a second of capture
/// time, close everything at the end.
fn run_table<H: StreamHandler>(
    segs: &[(u32, TcpSegment<'_>, u64)],
    ctx: &mut H::Ctx,
) -> FlowTable<H> {
    let mut table = FlowTable::<H>::new(FlowConfig::default());
    let mut next_expire = 0u64;
    let mut now = 0u64;
    for (vni, seg, ts) in segs {
        now = *ts;
        table.segment(*vni, seg, now, ctx);
        if now >= next_expire {
            table.expire(now, ctx);
            next_expire = now + EXPIRE_EVERY_US;
        }
    }
    table.close_all(now, ctx);
    table
}

/// The same segments with the data segments of every direction swapped pairwise (2 1 4 3 ...),
/// each taking the time of the slot it moves into: about half of them arrive ahead of a hole.
fn reordered<'a>(segs: &[(u32, TcpSegment<'a>, u64)]) -> Vec<(u32, TcpSegment<'a>, u64)> {
    let mut by_dir: std::collections::HashMap<(FlowKey, Side), Vec<usize>> = Default::default();
    for (i, (vni, seg, _)) in segs.iter().enumerate() {
        if !seg.payload.is_empty() {
            by_dir
                .entry(FlowKey::new(*vni, seg.src, seg.dst))
                .or_default()
                .push(i);
        }
    }
    let mut out = segs.to_vec();
    for idx in by_dir.values() {
        // Each segment is swapped with the next one of its direction that starts elsewhere (a
        // duplicate would make the swap a no-op).
        let mut k = 0;
        while k < idx.len() {
            let a = idx[k];
            let Some(m) = (k + 1..idx.len()).find(|&m| segs[idx[m]].1.seq != segs[a].1.seq) else {
                break;
            };
            let b = idx[m];
            let (ta, tb) = (out[a].2, out[b].2);
            out.swap(a, b);
            out[a].2 = ta;
            out[b].2 = tb;
            k = m + 1;
        }
    }
    out
}

fn reassembly(c: &mut Criterion, caps: &[Capture]) {
    let mut g = group(c, "reassembly");
    for cap in caps {
        let segs = cap.segments();
        let payload: u64 = segs.iter().map(|(_, s, _)| s.payload.len() as u64).sum();
        let mut expected = Delivered::default();
        run_table::<Count>(&segs, &mut expected);
        assert!(expected.bytes > 0, "{}: nothing delivered", cap.name);
        let swapped = reordered(&segs);
        let mut got = Delivered::default();
        let table = run_table::<Count>(&swapped, &mut got);
        assert!(
            table.stats.reassembly.ooo_segments > 0,
            "{}: the reordered variant holds nothing out of order",
            cap.name
        );
        if got != expected {
            // Captures with losses or retransmissions of their own can deliver differently.
            eprintln!(
                "{}: reordered delivers {got:?}, in order {expected:?}",
                cap.name
            );
        }
        g.throughput(Throughput::Bytes(payload));
        for (variant, input, want) in [
            ("in_order", &segs, &expected),
            ("reordered", &swapped, &got),
        ] {
            g.bench_function(format!("{variant}/{}", cap.name), |b| {
                b.iter(|| {
                    let mut d = Delivered::default();
                    black_box(run_table::<Count>(input, &mut d));
                    assert_eq!(&d, want);
                })
            });
        }
    }
    g.finish();
}

// ---- HTTP session -------------------------------------------------------------------------------

/// A stream event with its bytes owned, to be replayed into a [`Session`].
enum Event {
    Data(Vec<u8>, DataMeta),
    Gap {
        len: u64,
        ts: u64,
    },
    End {
        ts: u64,
    },
    /// The flow table found the connection idle and told it to give spare capacity back.
    Release,
    Close {
        reason: CloseReason,
        now: u64,
    },
}

struct Recorded {
    /// Index of the connection (a reused 4-tuple is a new connection).
    conn: usize,
    key: FlowKey,
    side: Side,
    event: Event,
}

#[derive(Default)]
struct Recording {
    conns: usize,
    events: Vec<Recorded>,
}

/// A stream handler that records what reassembly delivers, per connection.
#[derive(Default)]
struct Recorder {
    conn: Option<usize>,
    /// `release` was called (it gets no context): recorded before the connection's next event.
    released: bool,
}

impl Recorder {
    fn push(&mut self, ctx: &mut Recording, key: &FlowKey, side: Side, event: Event) {
        let conn = *self.conn.get_or_insert_with(|| {
            ctx.conns += 1;
            ctx.conns - 1
        });
        if std::mem::take(&mut self.released) {
            ctx.events.push(Recorded {
                conn,
                key: *key,
                side,
                event: Event::Release,
            });
        }
        ctx.events.push(Recorded {
            conn,
            key: *key,
            side,
            event,
        });
    }
}

impl StreamHandler for Recorder {
    type Ctx = Recording;

    fn event(&mut self, ctx: &mut Recording, key: &FlowKey, side: Side, ev: StreamEvent<'_>) {
        let event = match ev {
            StreamEvent::Data(bytes, meta) => Event::Data(bytes.to_vec(), meta),
            StreamEvent::Gap { len, ts } => Event::Gap { len, ts },
            StreamEvent::End { ts } => Event::End { ts },
        };
        self.push(ctx, key, side, event);
    }

    fn release(&mut self) {
        self.released = self.conn.is_some();
    }

    fn close(&mut self, ctx: &mut Recording, key: &FlowKey, reason: CloseReason, now: u64) {
        if self.conn.is_some() {
            self.push(ctx, key, Side::Lo, Event::Close { reason, now });
        }
    }
}

/// Replays recorded streams into one HTTP session per connection, each created at its first
/// event and dropped when closed (as the flow table does); returns the context holding the
/// exchanges and counters.
fn replay_http(rec: &Recording) -> HttpCtx {
    let mut ctx = HttpCtx::new(HttpConfig::default());
    let mut sessions: Vec<Option<Session>> = (0..rec.conns).map(|_| None).collect();
    for r in &rec.events {
        let slot = &mut sessions[r.conn];
        let ev = match &r.event {
            Event::Data(bytes, meta) => StreamEvent::Data(bytes, *meta),
            Event::Gap { len, ts } => StreamEvent::Gap { len: *len, ts: *ts },
            Event::End { ts } => StreamEvent::End { ts: *ts },
            Event::Release => {
                if let Some(s) = slot {
                    s.release();
                }
                continue;
            }
            Event::Close { reason, now } => {
                if let Some(mut s) = slot.take() {
                    s.close(&mut ctx, &r.key, *reason, *now);
                }
                continue;
            }
        };
        slot.get_or_insert_with(Session::default)
            .event(&mut ctx, &r.key, r.side, ev);
    }
    ctx
}

fn http_session(c: &mut Criterion, caps: &[Capture]) {
    let mut g = group(c, "http_session");
    for cap in caps {
        let segs = cap.segments();
        let mut rec = Recording::default();
        run_table::<Recorder>(&segs, &mut rec);
        let stream_bytes: u64 = rec
            .events
            .iter()
            .map(|r| match &r.event {
                Event::Data(b, _) => b.len() as u64,
                _ => 0,
            })
            .sum();
        let expected = replay_http(&rec).stats;
        assert!(expected.pairs > 0, "{}: no pair", cap.name);
        // The replay pairs exactly what the pipeline pairs.
        let (pipeline_pairs, _) = run_pipeline(cap, |_| {});
        assert_eq!(expected.pairs, pipeline_pairs, "{}", cap.name);
        g.throughput(Throughput::Bytes(stream_bytes));
        g.bench_function(&cap.name, |b| {
            b.iter(|| {
                let ctx = replay_http(&rec);
                assert_eq!(ctx.stats.pairs, expected.pairs);
                black_box(ctx)
            })
        });
    }
    g.finish();
}

// ---- record encoding ----------------------------------------------------------------------------

fn record(c: &mut Criterion, caps: &[Capture]) {
    let mut g = group(c, "record");
    let encoder = Encoder::new(RecordConfig::default());
    for cap in caps {
        let mut exchanges: Vec<Exchange> = Vec::new();
        run_pipeline(cap, |ex| exchanges.push(ex));
        assert!(!exchanges.is_empty(), "{}: no exchange", cap.name);
        let mut buf = Vec::with_capacity(64 * 1024);
        let encode_all = |buf: &mut Vec<u8>| {
            let mut total = 0u64;
            for ex in &exchanges {
                encoder.encode(ex, buf).expect("record fits");
                total += buf.len() as u64;
            }
            total
        };
        let json_bytes = encode_all(&mut buf);
        g.throughput(Throughput::ElementsAndBytes {
            elements: exchanges.len() as u64,
            bytes: json_bytes,
        });
        g.bench_function(&cap.name, |b| {
            b.iter(|| assert_eq!(encode_all(&mut buf), json_bytes))
        });
    }
    g.finish();
}

// ---- whole pipeline -----------------------------------------------------------------------------

/// Every datagram of a capture through a [`Pipeline`], as `replay_capture` drives it: expire once
/// a second of capture time, drain exchanges after each datagram, `finish` at the end. Returns
/// the pairs (answered exchanges) and all exchanges.
fn run_pipeline(cap: &Capture, mut each: impl FnMut(Exchange)) -> (u64, u64) {
    let mut p = Pipeline::new(&PipelineConfig::default());
    let (mut pairs, mut all) = (0u64, 0u64);
    let mut count = |ex: Exchange| {
        pairs += u64::from(ex.response.is_some());
        all += 1;
        each(ex);
    };
    let mut next_expire = 0u64;
    let mut now = 0u64;
    for (ts, d) in &cap.datagrams {
        now = *ts;
        p.datagram(d, now);
        if now >= next_expire {
            p.expire(now);
            next_expire = now + EXPIRE_EVERY_US;
        }
        p.exchanges().for_each(&mut count);
    }
    p.finish(now);
    p.exchanges().for_each(&mut count);
    (pairs, all)
}

fn pipeline(c: &mut Criterion, caps: &[Capture]) {
    let mut g = group(c, "pipeline");
    let encoder = Encoder::new(RecordConfig::default());
    for cap in caps {
        let expected = run_pipeline(cap, |_| {});
        assert!(expected.0 > 0, "{}: no pair", cap.name);
        g.throughput(Throughput::ElementsAndBytes {
            elements: expected.0,
            bytes: cap.bytes(),
        });
        g.bench_function(format!("exchanges/{}", cap.name), |b| {
            b.iter(|| {
                let got = run_pipeline(cap, |ex| {
                    black_box(ex);
                });
                assert_eq!(got, expected);
            })
        });
        let mut buf = Vec::with_capacity(64 * 1024);
        g.bench_function(format!("records/{}", cap.name), |b| {
            b.iter(|| {
                let mut json = 0u64;
                let got = run_pipeline(cap, |ex| {
                    encoder.encode(&ex, &mut buf).expect("record fits");
                    json += buf.len() as u64;
                });
                assert_eq!(got, expected);
                black_box(json)
            })
        });
    }
    g.finish();
}

// ---- http2 --------------------------------------------------------------------------------------

/// Both directions of an HTTP/2 connection of `streams` requests, each answered.
fn h2_connection(streams: u32) -> (Vec<u8>, Vec<u8>) {
    let frame = |out: &mut Vec<u8>, kind, flags, stream, payload: &[u8]| {
        out.extend(mirror_receiver::testkit::h2_frame(
            kind, flags, stream, payload,
        ));
    };
    let (mut to_server, mut to_client) = (mirror_receiver::http2::PREFACE.to_vec(), Vec::new());
    frame(&mut to_server, 4, 0, 0, &[]);
    frame(&mut to_client, 4, 0, 0, &[]);
    let (mut req, mut resp) = (loona_hpack::Encoder::new(), loona_hpack::Encoder::new());
    let body = format!(
        "{{\"items\":[{}]}}",
        vec!["{\"id\":1234,\"ok\":true}"; 13].join(",")
    );
    for i in 0..streams {
        let id = 2 * i + 1;
        let path = format!("/api/v1/items/{i}?fields=name,price");
        let block = req.encode([
            (&b":method"[..], &b"GET"[..]),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", b"api.internal:8080"),
            (b"user-agent", b"grpc-go/1.60.0"),
            (b"accept", b"application/json"),
        ]);
        frame(&mut to_server, 1, 0x5, id, &block);
        let block = resp.encode([
            (&b":status"[..], &b"200"[..]),
            (b"content-type", b"application/json"),
            (b"content-length", body.len().to_string().as_bytes()),
            (b"date", b"Mon, 07 Dec 2026 12:00:00 GMT"),
        ]);
        frame(&mut to_client, 1, 0x4, id, &block);
        frame(&mut to_client, 0, 0x1, id, body.as_bytes());
    }
    (to_server, to_client)
}

fn http2(c: &mut Criterion) {
    const STREAMS: u32 = 1_000;
    let (to_server, to_client) = h2_connection(STREAMS);
    let mut g = group(c, "http2");
    g.throughput(Throughput::Elements(u64::from(STREAMS)));
    g.bench_function("streams", |b| {
        b.iter(|| {
            let mut conn = mirror_receiver::http2::Connection::new(1 << 20);
            let mut pairs = 0;
            for (a, z) in to_server.chunks(1400).zip(to_client.chunks(1400)) {
                conn.data(true, a, 1);
                conn.data(false, z, 2);
                pairs += conn.pairs().count();
            }
            // The longer direction's rest.
            let (n, m) = (
                to_server.len().div_ceil(1400),
                to_client.len().div_ceil(1400),
            );
            let (rest, client) = if n > m {
                (&to_server, true)
            } else {
                (&to_client, false)
            };
            for piece in rest.chunks(1400).skip(n.min(m)) {
                conn.data(client, piece, 3);
                pairs += conn.pairs().count();
            }
            assert_eq!(pairs, STREAMS as usize);
            pairs
        })
    });
    g.finish();
}

fn all(c: &mut Criterion) {
    let caps = captures();
    decode(c, &caps);
    reassembly(c, &caps);
    http_session(c, &caps);
    record(c, &caps);
    pipeline(c, &caps);
    http2(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = all
}
criterion_main!(benches);
