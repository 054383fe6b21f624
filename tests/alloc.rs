//! What the hot path allocates and what an idle connection costs, measured with a counting
//! global allocator (per thread, so the tests of this binary do not see each other's counts).
//!
//! - An idle connection (one exchange done, held open without FIN) costs at most 1 KiB once the
//!   table's idle pass released its buffers.
//! - Segments of a body in progress allocate nothing beyond the amortised growth of the body
//!   buffer: far less than one allocation per packet.

use mirror_receiver::pipeline::{Pipeline, PipelineConfig};
use mirror_receiver::testkit::{NO_FLAGS, SYN, segment};
use mirror_receiver::wire::TcpSegment;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note(allocs: u64, bytes: isize) {
    let _ = ALLOCS.try_with(|a| a.set(a.get() + allocs));
    let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// const-initialised thread locals without destructors, so touching them never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(1, layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(0, -(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(1, layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(1, new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn seg<'a>(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    syn: bool,
    payload: &'a [u8],
) -> TcpSegment<'a> {
    let flags = if syn { SYN } else { NO_FLAGS };
    segment(src, dst, seq, Some(ack), flags, payload)
}

const SECOND: u64 = 1_000_000;

#[test]
fn an_idle_connection_costs_at_most_one_kib() {
    const CONNECTIONS: u32 = 10_000;
    let mut p = Pipeline::new(&PipelineConfig::default());
    let server = addr([10, 1, 0, 1], 8080);
    let now = 1_000 * SECOND;
    let request = b"GET /items/42 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"id\":42,\"a\":1}";
    let open = |p: &mut Pipeline, i: u32| {
        let client = addr(
            [10, 0, (i >> 8) as u8, i as u8],
            40_000 + (i % 20_000) as u16,
        );
        let (c, s) = (1_000u32, 5_000u32);
        p.segment(7, &seg(client, server, c, 0, true, b""), now);
        p.segment(7, &seg(server, client, s, c + 1, true, b""), now);
        p.segment(7, &seg(client, server, c + 1, s + 1, false, request), now);
        let ack = c + 1 + request.len() as u32;
        p.segment(7, &seg(server, client, s + 1, ack, false, response), now);
    };
    // Warm up: the counters per VNI and the exchange queue exist before measuring.
    open(&mut p, u32::MAX);
    assert_eq!(p.exchanges().count(), 1);
    let before = live();
    let mut pairs = 0;
    for i in 0..CONNECTIONS {
        open(&mut p, i);
        // As the daemon does: records are taken as they complete.
        pairs += p.exchanges().filter(|e| e.response.is_some()).count();
    }
    assert_eq!(pairs, CONNECTIONS as usize, "every exchange paired");
    assert_eq!(p.flows(), CONNECTIONS as usize + 1, "all held open");
    let busy = (live() - before) / CONNECTIONS as isize;
    // The idle pass a second later gives the buffers back.
    p.expire(now + 2 * SECOND);
    assert_eq!(
        p.flows(),
        CONNECTIONS as usize + 1,
        "not idle long enough to close"
    );
    let idle = (live() - before) / CONNECTIONS as isize;
    eprintln!("per connection: {busy} bytes right after the exchange, {idle} bytes once idle");
    assert!(idle <= 1024, "an idle connection costs {idle} bytes");
    assert!(
        idle < busy,
        "the idle pass released buffers ({busy} -> {idle})"
    );
    // They still work: a second exchange on an idle connection pairs.
    let client = addr([10, 0, 0, 5], 40_005);
    let c = 1_001 + request.len() as u32;
    let s = 5_001 + response.len() as u32;
    p.segment(
        7,
        &seg(client, server, c, s, false, request),
        now + 3 * SECOND,
    );
    let ack = c + request.len() as u32;
    p.segment(
        7,
        &seg(server, client, s, ack, false, response),
        now + 3 * SECOND,
    );
    assert_eq!(p.exchanges().filter(|e| e.response.is_some()).count(), 1);
}

#[test]
fn body_segments_allocate_far_less_than_once_per_packet() {
    let mut p = Pipeline::new(&PipelineConfig::default());
    let (client, server) = (addr([10, 0, 0, 1], 40_000), addr([10, 1, 0, 1], 80));
    let now = 1_000 * SECOND;
    let request = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 4000000\r\n\r\n";
    let (c, s) = (1_000u32, 9_000u32);
    p.segment(7, &seg(client, server, c, s, false, request), now);
    let mut seq = c + request.len() as u32;
    let chunk = [b'x'; 1448];
    // Let the buffers reach their working size first.
    for _ in 0..100 {
        p.segment(7, &seg(client, server, seq, s, false, &chunk), now);
        seq += chunk.len() as u32;
    }
    let (a0, packets) = (allocs(), 2_500u64);
    for _ in 0..packets {
        p.segment(7, &seg(client, server, seq, s, false, &chunk), now);
        seq += chunk.len() as u32;
    }
    let per_packet = (allocs() - a0) as f64 / packets as f64;
    eprintln!(
        "{} allocations over {packets} body segments ({per_packet:.4} per packet)",
        allocs() - a0
    );
    assert!(
        per_packet < 0.02,
        "{per_packet} allocations per packet while a body streams"
    );
}

/// The daemon's receive path, on the test's thread: `recvmmsg` into the worker's buffers,
/// decode, steering check, pipeline; and the hand-off of a flow another worker owns, through
/// the pool of batches. Neither allocates per datagram once warm.
#[test]
fn the_receive_path_allocates_nothing_per_datagram() {
    use mirror_receiver::admission::Admission;
    use mirror_receiver::ingest::{
        BATCH_BYTES_PER_DATAGRAM, BatchPool, Inlet, RECV_BATCH, SocketCounters, bind_group, links,
        steer,
    };
    use mirror_receiver::testkit::vxlan_datagram;
    use mirror_receiver::wire::Datagram;
    use std::net::UdpSocket;
    use std::sync::atomic::Ordering;

    // Two workers' sockets without the steering program: the kernel's hash of the outer
    // addresses puts all of one sender's datagrams on one socket.
    let sockets = bind_group("127.0.0.1:0".parse().unwrap(), 2, 16 << 20).unwrap();
    let to = sockets[0].local_addr().unwrap();
    let admission = Admission::new(&[], &[]).unwrap();
    let counters = [SocketCounters::default(), SocketCounters::default()];
    let pool = BatchPool::new(8, RECV_BATCH, RECV_BATCH * BATCH_BYTES_PER_DATAGRAM);
    let mut inlets: Vec<Inlet<'_>> = links(2)
        .into_iter()
        .enumerate()
        .map(|(me, link)| {
            Inlet::new(
                me,
                &sockets[me],
                &admission,
                &counters[me],
                link,
                pool.clone(),
            )
        })
        .collect();
    let mut p = Pipeline::new(&PipelineConfig::default());
    let now = 1_000 * SECOND;
    let mut take = |d: &[u8], dg: &Datagram<'_>| p.decoded(d, dg, now);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = addr([10, 1, 0, 1], 80);
    let received = |c: &[SocketCounters; 2]| -> u64 {
        c.iter().map(|c| c.received.load(Ordering::Relaxed)).sum()
    };
    // Which socket the sender's datagrams land on.
    tx.send_to(b"probe", to).unwrap();
    while received(&counters) == 0 {
        for inlet in &mut inlets {
            inlet.receive(&mut take);
        }
    }
    let lands = usize::from(counters[1].received.load(Ordering::Relaxed) == 1);
    for (path, owner) in [("own socket", lands), ("hand-off", 1 - lands)] {
        // A client whose flow `owner` owns.
        let client = (1..)
            .map(|i: u16| addr([10, 0, 0, 1], 40_000 + i))
            .find(|&c| steer::shard(&seg(c, server, 0, 0, false, b""), 2) == owner)
            .unwrap();
        let request = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 40000000\r\n\r\n";
        let (c, s) = (1_000u32, 9_000u32);
        let chunk = [b'x'; 1448];
        let mut seq = c + request.len() as u32;
        let mut body = |n: usize| -> Vec<Vec<u8>> {
            (0..n)
                .map(|_| {
                    let d = vxlan_datagram(7, &seg(client, server, seq, s, false, &chunk));
                    seq += chunk.len() as u32;
                    d
                })
                .collect()
        };
        let mut first = vec![vxlan_datagram(
            7,
            &seg(client, server, c, s, false, request),
        )];
        first.extend(body(200));
        let measured = body(2_500);
        let mut run = |datagrams: &[Vec<u8>], take: &mut dyn FnMut(&[u8], &Datagram<'_>)| {
            let target = received(&counters) + datagrams.len() as u64;
            for d in datagrams {
                tx.send_to(d, to).unwrap();
            }
            while received(&counters) < target {
                for inlet in &mut inlets {
                    inlet.receive(take);
                }
            }
            // What was handed over last is taken on the owner's next call.
            inlets[owner].receive(take);
        };
        // Warm up: the buffers reach their working size, the pool holds its batches.
        run(&first, &mut take);
        let (a0, handed0) = (allocs(), counters[lands].handed_off.load(Ordering::Relaxed));
        run(&measured, &mut take);
        let per_datagram = (allocs() - a0) as f64 / measured.len() as f64;
        let handed = counters[lands].handed_off.load(Ordering::Relaxed) - handed0;
        eprintln!(
            "{path}: {} allocations over {} datagrams ({per_datagram:.4} per datagram), {handed} handed off",
            allocs() - a0,
            measured.len()
        );
        assert_eq!(
            handed,
            if owner == lands {
                0
            } else {
                measured.len() as u64
            },
            "{path}: datagrams handed off"
        );
        assert!(
            per_datagram < 0.02,
            "{path}: {per_datagram} allocations per datagram"
        );
    }
    let stats = p.stats();
    assert_eq!(
        stats.wire.datagrams,
        1 + 2 * (201 + 2_500),
        "every datagram reached the pipeline"
    );
    assert_eq!(stats.flow.opened, 2);
}

/// A keep-alive connection's exchanges, each encoded as the daemon does and then recycled: the
/// buffers a message needs (stream buffer, header text and positions, body) and the boxes the
/// messages travel in come back from the thread's spares, so an exchange allocates nothing,
/// where a dropped one allocates all of them again.
#[test]
fn recycled_exchanges_allocate_nothing_dropped_ones_do() {
    use mirror_receiver::record::{Encoder, RecordConfig};
    let mut p = Pipeline::new(&PipelineConfig::default());
    let encoder = Encoder::new(RecordConfig::default());
    let mut record = Vec::with_capacity(64 * 1024);
    let (client, server) = (addr([10, 0, 0, 1], 40_000), addr([10, 1, 0, 1], 8080));
    let now = 1_000 * SECOND;
    let request = b"POST /items HTTP/1.1\r\nHost: api.example\r\nUser-Agent: curl/8.5.0\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"a\":42}\n";
    let response = b"HTTP/1.1 201 Created\r\nServer: nginx\r\nContent-Type: application/json\r\nETag: \"x1\"\r\nContent-Length: 13\r\n\r\n{\"id\":42,\"a\":1}";
    let (mut c, mut s) = (1_000u32, 5_000u32);
    p.segment(7, &seg(client, server, c, 0, true, b""), now);
    p.segment(7, &seg(server, client, s, c + 1, true, b""), now);
    (c, s) = (c + 1, s + 1);
    // Runs `n` exchanges; returns the allocations they made and the records' total length.
    let mut run = |p: &mut Pipeline, n: usize, recycle: bool| {
        let (a0, mut bytes) = (allocs(), 0);
        for _ in 0..n {
            p.segment(7, &seg(client, server, c, s, false, request), now);
            c += request.len() as u32;
            p.segment(7, &seg(server, client, s, c, false, response), now);
            s += response.len() as u32;
            for ex in p.exchanges() {
                assert!(ex.response.is_some(), "every exchange paired");
                encoder.encode(&ex, &mut record).expect("a small record");
                bytes += record.len();
                if recycle {
                    ex.recycle();
                }
            }
        }
        (allocs() - a0, bytes)
    };
    run(&mut p, 100, true);
    let (recycled, recycled_bytes) = run(&mut p, 1_000, true);
    let (dropped, dropped_bytes) = run(&mut p, 1_000, false);
    assert_eq!(recycled_bytes, dropped_bytes, "the same records either way");
    assert!(recycled_bytes > 1_000 * 300, "records were written");
    let (recycled, dropped) = (recycled as f64 / 1_000.0, dropped as f64 / 1_000.0);
    eprintln!("allocations per exchange: {recycled:.2} recycled, {dropped:.2} dropped");
    assert!(
        dropped >= 6.0,
        "a dropped exchange's buffers and boxes are allocated again ({dropped})"
    );
    assert_eq!(recycled, 0.0, "allocations per recycled exchange");
}
