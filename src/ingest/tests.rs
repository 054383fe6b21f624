use super::*;
use std::sync::atomic::AtomicBool;

#[test]
fn batch_keeps_datagrams_apart_and_in_order() {
    let mut b = Batch::default();
    assert!(b.is_empty());
    b.push(b"one");
    b.push(b"");
    b.push_tagged(9, b"three");
    assert_eq!(b.len(), 3);
    let got: Vec<&[u8]> = b.iter().collect();
    assert_eq!(got, vec![&b"one"[..], b"", b"three"]);
    let tags: Vec<u64> = b.iter_tagged().map(|(t, _)| t).collect();
    assert_eq!(tags, vec![0, 0, 9]);
    b.clear();
    assert_eq!(b.iter().count(), 0);
}

#[test]
fn pool_reuses_batches_and_frees_oversized_ones() {
    let pool = BatchPool::new(2, 4, 100);
    let mut b = pool.take();
    assert_eq!((b.ends.capacity(), b.data.capacity()), (4, 100));
    b.push(&[7u8; 1000]);
    let cap = b.data.capacity();
    pool.give(b);
    let again = pool.take();
    assert!(again.is_empty());
    assert_eq!(again.data.capacity(), cap, "the same buffer comes back");
    let mut huge = Batch::default();
    huge.push(&vec![0u8; RECV_BATCH * MAX_DATAGRAM + 1]);
    pool.give(huge);
    assert_eq!(
        pool.take().data.capacity(),
        100,
        "an oversized batch is not kept"
    );
    for _ in 0..3 {
        pool.give(Batch::with_capacity(4, 100));
    }
    assert_eq!(pool.spare(), 2, "at most `capacity` spare batches");
    pool.shrink(1);
    assert_eq!(pool.spare(), 1);
    pool.shrink(5);
    assert_eq!(pool.spare(), 1);
}

#[test]
fn kernel_drops_counts_what_a_full_queue_discards() {
    // A receiver with the smallest buffer the kernel allows, never read, and a burst sent
    // to it over loopback: what did not fit is the kernel's drop count for the socket.
    let rx = bind_socket("127.0.0.1:0".parse().unwrap(), 64 * 1024).unwrap();
    let small = socket2::SockRef::from(&rx);
    small.set_recv_buffer_size(1).unwrap();
    assert_eq!(kernel_drops(&rx), Some(0));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    let sent = 2000u64;
    for _ in 0..sent {
        tx.send_to(&[0u8; 1000], to).unwrap();
    }
    let mut buf = [0u8; 2000];
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut got = 0u64;
    while rx.recv(&mut buf).is_ok() {
        got += 1;
    }
    let drops = kernel_drops(&rx).unwrap();
    assert!(drops > 0, "a 1-byte buffer must overflow");
    assert_eq!(got + drops, sent, "received {got} + dropped {drops}");
}

/// What one worker of a [`run_group`] took: each datagram's bytes, and its socket's counters.
pub(crate) struct Taken {
    pub datagrams: Vec<Vec<u8>>,
    pub counters: SocketCounters,
}

/// A datagram to send: which of the outer sender sockets sends it, and its bytes.
pub(crate) type Send = (usize, Vec<u8>);

/// Runs `workers` inlets on one reuseport group on loopback (the steering program attached
/// when `steer`), sends `datagrams` from `senders` outer sockets (each its own source port),
/// and returns what each worker took once every datagram has been received and handed on.
pub(crate) fn run_group(
    workers: usize,
    steer: bool,
    senders: usize,
    datagrams: &[Send],
) -> Vec<Taken> {
    run_group_in(Encapsulation::Vxlan, workers, steer, senders, datagrams)
}

/// [`run_group`] for datagrams in `encap`.
pub(crate) fn run_group_in(
    encap: Encapsulation,
    workers: usize,
    steer: bool,
    senders: usize,
    datagrams: &[Send],
) -> Vec<Taken> {
    let sockets = bind_group("127.0.0.1:0".parse().unwrap(), workers, 4 << 20).unwrap();
    if steer {
        steer::attach_for(&sockets[0], workers, encap).expect("attaching the steering program");
    }
    let to = sockets[0].local_addr().unwrap();
    let admission = Admission::new(&[], &[]).unwrap();
    let counters: Vec<SocketCounters> = (0..workers).map(|_| SocketCounters::default()).collect();
    let pool = BatchPool::new(8, RECV_BATCH, RECV_BATCH * BATCH_BYTES_PER_DATAGRAM);
    let stop = AtomicBool::new(false);
    let received = || -> u64 {
        counters
            .iter()
            .map(|c| c.received.load(Ordering::Relaxed))
            .sum()
    };
    let taken = std::thread::scope(|scope| {
        let threads: Vec<_> = links(workers)
            .into_iter()
            .enumerate()
            .map(|(me, link)| {
                let (socket, counters, admission, pool, stop) =
                    (&sockets[me], &counters[me], &admission, pool.clone(), &stop);
                scope.spawn(move || {
                    let mut got = Vec::new();
                    let mut inlet = Inlet::new(me, socket, admission, counters, link, pool)
                        .with_encapsulation(encap);
                    let mut take = |d: &[u8], _: &Datagram<'_>| got.push(d.to_vec());
                    while !stop.load(Ordering::Relaxed) {
                        let (_, alive) = inlet.receive(&mut take);
                        assert!(alive, "worker {me}: another worker is gone");
                    }
                    inlet.close(&mut take);
                    got
                })
            })
            .collect();
        let txs: Vec<UdpSocket> = (0..senders)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (sender, d) in datagrams {
            txs[*sender].send_to(d, to).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while received() < datagrams.len() as u64 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    for s in &sockets {
        assert_eq!(kernel_drops(s), Some(0));
    }
    taken
        .into_iter()
        .zip(counters)
        .map(|(datagrams, counters)| Taken {
            datagrams,
            counters,
        })
        .collect()
}

/// Both directions of `flows` connections to one server as VXLAN datagrams, dressed as
/// `shape`: the client's from sender 0, the server's from sender 1 (outer source ports that
/// differ per direction, as the kernel's VXLAN sends them).
pub(crate) fn flows(flows: u16, v6: bool, shape: crate::testkit::Shape) -> Vec<Send> {
    use crate::testkit::{NO_FLAGS, segment, shaped_frame, vxlan_header};
    let ip = |host: u16| -> IpAddr {
        if v6 {
            IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, host))
        } else {
            IpAddr::V4(std::net::Ipv4Addr::new(
                10,
                0,
                (host >> 8) as u8,
                host as u8,
            ))
        }
    };
    let server = SocketAddr::new(ip(0xffff), 8080);
    let mut out = Vec::new();
    for i in 0..flows {
        let client = SocketAddr::new(ip(i + 1), 40_000 + i);
        for (sender, (src, dst), payload) in [
            (0, (client, server), &b"GET / HTTP/1.1\r\n\r\n"[..]),
            (1, (server, client), &b"HTTP/1.1 200 OK\r\n\r\n"[..]),
        ] {
            let mut d = vxlan_header(9).to_vec();
            d.extend(shaped_frame(
                &segment(src, dst, 1, None, NO_FLAGS, payload),
                shape,
            ));
            out.push((sender, d));
        }
    }
    out
}

/// The flow of a datagram (its client port), and the worker that owns it, if it has one.
fn owner(encap: Encapsulation, d: &[u8], workers: usize) -> Option<(u16, usize)> {
    let dg = Datagram::decode_with(encap, d);
    let seg = dg.segment()?;
    let client = if seg.src.port() == 8080 {
        seg.dst
    } else {
        seg.src
    };
    Some((client.port(), steer::shard(seg, workers)))
}

/// Every datagram sent was taken exactly once, by the worker that owns its flow (datagrams
/// without a flow by any). Returns how many flows each worker owned.
pub(crate) fn assert_taken_by_owners(taken: &[Taken], sent: &[Send]) -> Vec<usize> {
    assert_taken_by_owners_in(Encapsulation::Vxlan, taken, sent)
}

/// [`assert_taken_by_owners`] for datagrams in `encap`.
pub(crate) fn assert_taken_by_owners_in(
    encap: Encapsulation,
    taken: &[Taken],
    sent: &[Send],
) -> Vec<usize> {
    let workers = taken.len();
    let mut want: Vec<&[u8]> = sent.iter().map(|(_, d)| d.as_slice()).collect();
    let mut got: Vec<&[u8]> = Vec::new();
    let mut per_worker = vec![std::collections::BTreeSet::new(); workers];
    for (w, t) in taken.iter().enumerate() {
        for d in &t.datagrams {
            got.push(d);
            if let Some((flow, owner)) = owner(encap, d, workers) {
                assert_eq!(
                    owner, w,
                    "flow {flow} taken by worker {w}, owned by {owner}"
                );
                per_worker[w].insert(flow);
            }
        }
    }
    want.sort();
    got.sort();
    assert_eq!(got.len(), want.len(), "datagrams taken");
    assert!(got == want, "each datagram sent is taken once");
    per_worker.iter().map(|f| f.len()).collect()
}

fn sum(taken: &[Taken], read: fn(&SocketCounters) -> &AtomicU64) -> u64 {
    taken
        .iter()
        .map(|t| read(&t.counters).load(Ordering::Relaxed))
        .sum()
}

#[test]
fn without_the_program_every_datagram_is_handed_to_the_worker_of_its_flow() {
    use crate::testkit::Shape;
    const WORKERS: usize = 4;
    let mut sent = flows(64, false, Shape::Plain);
    sent.extend(flows(16, true, Shape::Plain));
    // Without a flow: junk, a bare VXLAN header, a fragment. Taken by whoever receives them.
    sent.push((0, b"junk".to_vec()));
    sent.push((1, crate::testkit::vxlan_header(9).to_vec()));
    sent.extend(flows(1, false, Shape::Ipv4Fragment));
    let taken = run_group(WORKERS, false, 2, &sent);
    let owned = assert_taken_by_owners(&taken, &sent);
    assert!(
        owned.iter().all(|&n| n > 0),
        "flows spread over every worker: {owned:?}"
    );
    assert_eq!(sum(&taken, |c| &c.received), sent.len() as u64);
    // The kernel's own hash of the outer addresses put each datagram on some socket; what it
    // put on another worker's was handed over. Its hash and ours agree by chance for about a
    // quarter of the datagrams; for none would be a broken count, for all a broken test.
    let handed = sum(&taken, |c| &c.handed_off);
    assert!(
        handed > sent.len() as u64 / 4 && handed < sent.len() as u64,
        "{handed} of {} handed off",
        sent.len()
    );
}

/// The ingest of a single worker on `socket`.
fn lone_inlet<'a>(
    socket: &'a UdpSocket,
    admission: &'a Admission,
    counters: &'a SocketCounters,
) -> Inlet<'a> {
    let pool = BatchPool::new(2, RECV_BATCH, RECV_BATCH * BATCH_BYTES_PER_DATAGRAM);
    Inlet::new(0, socket, admission, counters, links(1).remove(0), pool)
}

#[test]
fn admission_refusals_are_counted_by_the_socket_that_received_them() {
    let sockets = bind_group("127.0.0.1:0".parse().unwrap(), 1, 1 << 20).unwrap();
    let admission = Admission::new(&[], &["9".to_owned()]).unwrap();
    let counters = SocketCounters::default();
    let mut inlet = lone_inlet(&sockets[0], &admission, &counters);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = flows(2, false, crate::testkit::Shape::Plain);
    let mut other_vni = sent[0].1.clone();
    other_vni[6] = 8;
    sent.push((0, other_vni));
    for (_, d) in &sent {
        tx.send_to(d, sockets[0].local_addr().unwrap()).unwrap();
    }
    let mut got = 0;
    while counters.received.load(Ordering::Relaxed) < sent.len() as u64 {
        inlet.receive(&mut |_, dg| {
            assert!(dg.segment().is_some());
            got += 1;
        });
    }
    assert_eq!(got, sent.len() - 1);
    assert_eq!(counters.refused_vni.load(Ordering::Relaxed), 1);
    assert_eq!(counters.refused_source.load(Ordering::Relaxed), 0);
    assert_eq!(counters.handed_off.load(Ordering::Relaxed), 0);
}

/// The source is asked of the kernel only when a source allow-list needs it; with one, each
/// datagram's real source decides.
#[test]
fn a_source_allow_list_reads_each_datagrams_real_source() {
    for (allow, admitted) in [("127.0.0.1", true), ("10.0.0.0/8", false)] {
        let sockets = bind_group("127.0.0.1:0".parse().unwrap(), 1, 1 << 20).unwrap();
        let admission = Admission::new(&[allow.to_owned()], &[]).unwrap();
        assert!(admission.reads_source());
        let counters = SocketCounters::default();
        let mut inlet = lone_inlet(&sockets[0], &admission, &counters);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = flows(2, false, crate::testkit::Shape::Plain);
        for (_, d) in &sent {
            tx.send_to(d, sockets[0].local_addr().unwrap()).unwrap();
        }
        let mut got = 0;
        while counters.received.load(Ordering::Relaxed) < sent.len() as u64 {
            inlet.receive(&mut |_, _| got += 1);
        }
        let accepted = if admitted { sent.len() } else { 0 };
        assert!(sent.len() >= 2);
        assert_eq!(got, accepted, "allow-source {allow}");
        assert_eq!(
            counters.refused_source.load(Ordering::Relaxed),
            (sent.len() - accepted) as u64,
            "allow-source {allow}"
        );
    }
    assert!(
        !Admission::new(&[], &["9".to_owned()])
            .unwrap()
            .reads_source()
    );
}
