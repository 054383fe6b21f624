//! Ingest: the receive sockets and the hand-off of datagrams to the workers.
//!
//! Each receive thread owns one of `--workers` sockets bound to the same port with SO_REUSEPORT,
//! takes up to [`RECV_BATCH`] datagrams per `recvmmsg(2)` call into one reused buffer, and packs
//! each datagram into the [`Batch`] of the shard that owns its inner flow. Batches travel to the
//! workers over bounded channels and come back through a [`BatchPool`] once processed, so in the
//! steady state no memory is allocated per datagram.
//!
//! The kernel's own drop count for each socket (datagrams it discarded because the receive queue
//! was full) is read with `getsockopt(SO_MEMINFO)`, which returns the same `sk_drops` counter that
//! `SO_RXQ_OVFL` reports with each datagram, but exactly and at any time, not only when a later
//! datagram arrives.

use crate::admission::{Admission, Verdict};
use crate::flow::FlowKey;
use crate::wire;
use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Largest datagram taken: a 9001-byte jumbo frame mirrored with its VXLAN encapsulation.
pub const MAX_DATAGRAM: usize = 9216;
/// Datagrams taken per `recvmmsg` call.
pub const RECV_BATCH: usize = 64;
/// Room a new batch of datagrams has per datagram: a standard-MTU frame with its VXLAN
/// encapsulation (1500 + 14 + 50 bytes) and some to spare, so only jumbo frames make it grow.
pub const BATCH_BYTES_PER_DATAGRAM: usize = 1600;
/// Batches a worker's queue holds: up to 4 Ki datagrams, enough to ride out the worker being
/// descheduled. Bursts beyond that wait in the socket's receive queue (`--recv-buffer`, 64 MiB by
/// default), which is not the process's memory and whose drops the kernel counts.
pub const SHARD_QUEUE_BATCHES: usize = 64;

/// Byte strings packed back to back in one buffer, each with a tag: the datagrams on their way
/// to a worker, or the encoded records (tagged with their message key) on their way to the sink.
#[derive(Debug, Default)]
pub struct Batch {
    data: Vec<u8>,
    /// Tag and end offset in `data` of each item.
    ends: Vec<(u64, usize)>,
}

impl Batch {
    pub fn push(&mut self, item: &[u8]) {
        self.push_tagged(0, item);
    }

    pub fn push_tagged(&mut self, tag: u64, item: &[u8]) {
        self.data.extend_from_slice(item);
        self.ends.push((tag, self.data.len()));
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of all items together.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    /// The items, in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.iter_tagged().map(|(_, item)| item)
    }

    /// The items with their tags, in the order they were pushed.
    pub fn iter_tagged(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&(tag, end)| {
            let item = &self.data[start..end];
            start = end;
            (tag, item)
        })
    }

    /// An empty batch with room for `items` items of `bytes` bytes in all.
    pub fn with_capacity(items: usize, bytes: usize) -> Batch {
        Batch {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(items),
        }
    }
}

/// Emptied batches on their way back from the workers to the receive threads.
///
/// A stack (last in, first out), so the same few batches serve again and again, and memory
/// reaches its steady state at once instead of creeping up as a queue would hand out every spare
/// batch in turn. Its lock is taken once per batch (up to [`RECV_BATCH`] datagrams), never per
/// datagram, and is uncontended in practice.
///
/// New batches start at their working size rather than growing to it: a vector grown by
/// doubling leaves a block of every size on the way in the allocator's per-thread caches, and
/// which of those stay cached differs from burst to burst, so the process's RSS would creep up.
#[derive(Clone)]
pub struct BatchPool {
    spare: std::sync::Arc<std::sync::Mutex<Vec<Batch>>>,
    capacity: usize,
    /// Items and bytes a new batch has room for.
    fresh: (usize, usize),
}

impl BatchPool {
    /// A pool keeping at most `capacity` spare batches (more are freed), whose new batches have
    /// room for `items` items of `bytes` bytes in all.
    pub fn new(capacity: usize, items: usize, bytes: usize) -> BatchPool {
        BatchPool {
            spare: std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(capacity))),
            capacity,
            fresh: (items, bytes),
        }
    }

    /// A spare batch, or a new one when none is spare.
    pub fn take(&self) -> Batch {
        self.spare
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_else(|| Batch::with_capacity(self.fresh.0, self.fresh.1))
    }

    /// Frees the spare batches beyond `keep`. Called when traffic pauses, so what a burst needed
    /// goes back to the allocator (and with the once-a-second trim to the kernel) instead of
    /// staying resident, in whichever state the burst left it, until the next burst.
    pub fn shrink(&self, keep: usize) {
        let extra = self.spare.lock().ok().map(|mut s| {
            let keep = keep.min(s.len());
            s.split_off(keep)
        });
        // Freed here, outside the lock.
        drop(extra);
    }

    /// Spare batches held.
    pub fn spare(&self) -> usize {
        self.spare.lock().map_or(0, |s| s.len())
    }

    /// Returns a processed batch for reuse. Batches that grew past a few typical batches are
    /// freed instead, so one burst of jumbo frames does not pin its memory.
    pub fn give(&self, mut batch: Batch) {
        if batch.data.capacity() > RECV_BATCH * MAX_DATAGRAM {
            return;
        }
        batch.clear();
        if let Ok(mut spare) = self.spare.lock()
            && spare.len() < self.capacity
        {
            spare.push(batch);
        }
    }
}

/// Counters of one receive socket.
#[derive(Debug, Default)]
pub struct SocketCounters {
    /// Datagrams taken off the socket (before admission).
    pub received: AtomicU64,
}

/// Opens one of the receive sockets: SO_REUSEPORT, `recv_buffer` bytes of receive buffer (with
/// SO_RCVBUFFORCE past `net.core.rmem_max` when allowed), a 100 ms receive timeout so the thread
/// notices a stop request.
pub fn bind_socket(listen: SocketAddr, recv_buffer: usize) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    // The kernel doubles the value it is given (for its bookkeeping) and reports the doubled one.
    if socket.set_recv_buffer_size(recv_buffer).is_err()
        || socket.recv_buffer_size().unwrap_or(0) < recv_buffer
    {
        let size = libc::c_int::try_from(recv_buffer).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt on a socket we own, with a correctly sized int option value.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::warn!(
                wanted = recv_buffer,
                got = socket.recv_buffer_size().unwrap_or(0) / 2,
                "receive buffer capped by net.core.rmem_max (SO_RCVBUFFORCE needs CAP_NET_ADMIN): raise the sysctl or run with the capability"
            );
        }
    }
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    socket
        .bind(&listen.into())
        .with_context(|| format!("binding UDP {listen}"))?;
    Ok(socket.into())
}

/// Datagrams the kernel dropped for `socket` (`sk_drops`: receive queue full, or memory
/// accounting), or `None` if the kernel does not say.
pub fn kernel_drops(socket: &UdpSocket) -> Option<u64> {
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt on a socket we own, into a buffer of `len` bytes; the kernel writes at
    // most `len` bytes and reports how many it wrote.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let needed = (libc::SK_MEMINFO_DROPS as usize + 1) * std::mem::size_of::<u32>();
    (rc == 0 && len as usize >= needed).then(|| u64::from(info[libc::SK_MEMINFO_DROPS as usize]))
}

/// The shard of a datagram: a direction-independent hash of its inner flow, so both directions
/// of a connection meet in one worker whichever socket received them. Undecodable datagrams go
/// to shard 0, which counts them.
pub fn shard_of(datagram: &[u8], shards: usize) -> usize {
    let key = wire::decode_vxlan(datagram)
        .and_then(|v| wire::decode_ethernet(v.inner).map(|s| FlowKey::new(v.vni, s.src, s.dst).0));
    match key {
        Ok(k) => (mix(k.stable_hash()) % shards as u64) as usize,
        Err(_) => 0,
    }
}

/// MurmurHash3's 64-bit finaliser: FNV-1a's low bits depend only on the low bits of its input
/// bytes, so taken modulo a small shard count they would leave shards idle.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn source_ip(addr: Option<&SockaddrStorage>) -> Option<IpAddr> {
    let addr = addr?;
    if let Some(a) = addr.as_sockaddr_in() {
        Some(IpAddr::V4(a.ip()))
    } else {
        addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip()))
    }
}

/// Where a receive thread sends what it takes, and what it counts.
pub struct Ingest<'a> {
    pub shards: &'a [Sender<Batch>],
    pub pool: &'a BatchPool,
    pub admission: &'a Admission,
    pub counters: &'a SocketCounters,
    pub refused_source: &'a AtomicU64,
    pub refused_vni: &'a AtomicU64,
    pub stop: &'a AtomicBool,
}

/// Receives until `stop` is set or every worker is gone: takes a call's worth of datagrams
/// (`Receiver::receive`), sorts each into its shard's batch (`Ingest::admit`) and hands the
/// batches on (`Ingest::send_pending`).
pub fn recv_loop(socket: &UdpSocket, to: &Ingest<'_>) {
    let fd = socket.as_raw_fd();
    let mut rx = Receiver::new();
    let mut pending: Vec<Batch> = to.shards.iter().map(|_| to.pool.take()).collect();
    let error_log = crate::sink::RateLimit::new(Duration::from_secs(10));
    while !to.stop.load(Ordering::Relaxed) {
        let received = rx.receive(fd, &error_log);
        if received == 0 {
            // Nothing for a receive timeout (100 ms): keep a batch per shard for the next
            // datagrams, free the rest.
            to.pool.shrink(to.shards.len());
            continue;
        }
        for (datagram, from) in rx.datagrams(received) {
            to.admit(datagram, from, &mut pending);
        }
        to.counters
            .received
            .fetch_add(received as u64, Ordering::Relaxed);
        if !to.send_pending(&mut pending) {
            return;
        }
    }
}

/// A receive thread's buffers, allocated once and reused by every `recvmmsg` call.
struct Receiver {
    /// [`RECV_BATCH`] slots of [`MAX_DATAGRAM`] bytes, one per datagram of a call. A longer
    /// datagram arrives cut to its slot; the decoder sees the truncation (IP length past the
    /// bytes present) and counts it.
    buf: Vec<u8>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Per datagram of the latest call: length and source.
    got: [(usize, Option<IpAddr>); RECV_BATCH],
}

impl Receiver {
    /// The buffers, the datagram slots written through once here so that all of them are
    /// resident from the start: left to the first burst deep enough to fill each slot, the
    /// process's RSS would creep up by up to their size.
    fn new() -> Receiver {
        let mut buf = vec![0u8; RECV_BATCH * MAX_DATAGRAM];
        // (The compiler may not know what the opaque reference points to, so the writes stay.)
        std::hint::black_box(buf.as_mut_slice()).fill(0);
        Receiver {
            buf,
            headers: MultiHeaders::<SockaddrStorage>::preallocate(RECV_BATCH, None),
            got: [(0, None); RECV_BATCH],
        }
    }

    /// One `recvmmsg` call on `fd`: blocks (up to the socket's receive timeout) for the first
    /// datagram, then takes whatever else is queued without waiting. Returns how many datagrams
    /// it took, 0 on a timeout or an error (logged through `error_log`, then a pause).
    fn receive(&mut self, fd: RawFd, error_log: &crate::sink::RateLimit) -> usize {
        // On the stack: no allocation per call.
        let mut chunks = self.buf.chunks_exact_mut(MAX_DATAGRAM);
        let mut slices: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let flags = MsgFlags::MSG_WAITFORONE;
        match recvmmsg(fd, &mut self.headers, &mut slices, flags, None) {
            Ok(results) => {
                let mut n = 0;
                for (msg, entry) in results.zip(self.got.iter_mut()) {
                    *entry = (msg.bytes.min(MAX_DATAGRAM), source_ip(msg.address.as_ref()));
                    n += 1;
                }
                n
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                if error_log.ready() {
                    tracing::error!(error = %e, "receive failed (logged at most every 10 s)");
                }
                std::thread::sleep(Duration::from_millis(100));
                0
            }
        }
    }

    /// The first `n` datagrams of the latest call, each with its source (`None` when the
    /// kernel did not report it).
    fn datagrams(&self, n: usize) -> impl Iterator<Item = (&[u8], Option<IpAddr>)> {
        self.got[..n].iter().enumerate().map(|(i, &(len, from))| {
            let start = i * MAX_DATAGRAM;
            (&self.buf[start..start + len], from)
        })
    }
}

impl Ingest<'_> {
    /// Passes one datagram from `from` through admission (counting what it refuses) and packs
    /// it into the pending batch of the shard that owns its flow.
    fn admit(&self, datagram: &[u8], from: Option<IpAddr>, pending: &mut [Batch]) {
        // A source the kernel did not report cannot pass a source allow-list: it is taken
        // as the unspecified address.
        let from = from.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        match self.admission.check(from, datagram) {
            Verdict::Accept => {}
            Verdict::SourceNotAllowed => {
                self.refused_source.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::VniNotAllowed => {
                self.refused_vni.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        // One shard needs no hash (and no decode here).
        let shard = match self.shards.len() {
            1 => 0,
            n => shard_of(datagram, n),
        };
        pending[shard].push(datagram);
    }

    /// Sends every non-empty pending batch to its worker, replacing it with one from the pool.
    /// False once a worker is gone.
    fn send_pending(&self, pending: &mut [Batch]) -> bool {
        for (shard, batch) in pending.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let full = std::mem::replace(batch, self.pool.take());
            // Blocks while the worker's queue is full: the socket's queue fills behind it and
            // the kernel counts what it drops (kernel_drops), so nothing is lost uncounted.
            if self.shards[shard].send(full).is_err() {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn vxlan(vni: u32, src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
        use crate::testkit::{NO_FLAGS, segment, vxlan_datagram};
        let (src, dst) = (SocketAddr::from(src), SocketAddr::from(dst));
        vxlan_datagram(vni, &segment(src, dst, 1, None, NO_FLAGS, payload))
    }

    #[test]
    fn both_directions_of_a_flow_reach_one_shard_and_every_datagram_is_counted() {
        const SHARDS: usize = 4;
        const FLOWS: u16 = 64;
        let socket = bind_socket("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let to_addr = socket.local_addr().unwrap();
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..SHARDS)
            .map(|_| crossbeam_channel::unbounded::<Batch>())
            .unzip();
        let pool = BatchPool::new(64, RECV_BATCH, RECV_BATCH * BATCH_BYTES_PER_DATAGRAM);
        let admission = Admission::new(&[], &["9".to_owned()]).unwrap();
        let counters = SocketCounters::default();
        let (refused_source, refused_vni) = (AtomicU64::new(0), AtomicU64::new(0));
        let stop = AtomicBool::new(false);
        let ingest = Ingest {
            shards: &txs,
            pool: &pool,
            admission: &admission,
            counters: &counters,
            refused_source: &refused_source,
            refused_vni: &refused_vni,
            stop: &stop,
        };
        let client = |i: u16| ([10, 0, (i >> 8) as u8, i as u8], 40_000 + i);
        let server = ([10, 1, 0, 1], 8080);
        let mut sent = 0u64;
        std::thread::scope(|scope| {
            let receiver = scope.spawn(|| recv_loop(&socket, &ingest));
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            for i in 0..FLOWS {
                tx.send_to(
                    &vxlan(9, client(i), server, b"GET / HTTP/1.1\r\n\r\n"),
                    to_addr,
                )
                .unwrap();
                tx.send_to(
                    &vxlan(9, server, client(i), b"HTTP/1.1 200 OK\r\n\r\n"),
                    to_addr,
                )
                .unwrap();
                sent += 2;
            }
            // Refused by --allow-vni, and junk (shard 0 counts it as undecodable).
            tx.send_to(&vxlan(8, client(0), server, b"x"), to_addr)
                .unwrap();
            tx.send_to(b"junk", to_addr).unwrap();
            sent += 2;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while counters.received.load(Ordering::Relaxed) < sent
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::Relaxed);
            receiver.join().unwrap();
        });
        assert_eq!(counters.received.load(Ordering::Relaxed), sent);
        assert_eq!(refused_vni.load(Ordering::Relaxed), 1);
        assert_eq!(refused_source.load(Ordering::Relaxed), 0);
        assert_eq!(kernel_drops(&socket), Some(0));
        let mut shard_of_flow = std::collections::HashMap::new();
        let mut delivered = 0;
        for (shard, rx) in rxs.iter().enumerate() {
            let mut in_shard = 0;
            for batch in rx.try_iter() {
                for d in batch.iter() {
                    in_shard += 1;
                    let Ok(seg) =
                        wire::decode_vxlan(d).and_then(|v| wire::decode_ethernet(v.inner))
                    else {
                        assert_eq!(shard, 0, "undecodable datagrams go to shard 0");
                        continue;
                    };
                    let peer = if seg.src.port() == 8080 {
                        seg.dst
                    } else {
                        seg.src
                    };
                    let previous = shard_of_flow.insert(peer, shard);
                    assert!(
                        previous.is_none_or(|p| p == shard),
                        "{peer} split over shards"
                    );
                }
            }
            delivered += in_shard;
        }
        assert_eq!(
            delivered as u64,
            sent - 1,
            "all but the refused one delivered"
        );
        assert_eq!(shard_of_flow.len(), FLOWS as usize);
        let used: std::collections::HashSet<_> = shard_of_flow.values().collect();
        assert_eq!(
            used.len(),
            SHARDS,
            "{FLOWS} flows spread over all {SHARDS} shards"
        );
    }
}
