//! Ingest: the receive sockets, the kernel's steering of datagrams to them, and the hand-off of
//! what it could not steer.
//!
//! `--workers` sockets are bound to the same port with SO_REUSEPORT, and a classic BPF program
//! on the group ([`steer`]) sends each datagram to the socket of the worker that owns its inner
//! TCP connection. Each worker takes its own socket's datagrams, up to [`RECV_BATCH`] per
//! `recvmmsg(2)` call into one reused buffer, and runs them to completion on its core
//! ([`Inlet::receive`]): decode, reassembly, pairing, encoding, with no queue in between.
//! What the program could not classify (QinQ, IPv6 extension headers, or every datagram where
//! the program could not be attached) lands on any socket; the worker that received it decodes
//! it, and if another worker owns its flow, packs it into a [`Batch`] for that worker
//! ([`Link`]), counted as handed off. Batches come back through a [`BatchPool`] once
//! processed, so in the steady state no memory is allocated per datagram on either path.
//!
//! The kernel's own drop count for each socket (datagrams it discarded because the receive queue
//! was full) is read with `getsockopt(SO_MEMINFO)`, which returns the same `sk_drops` counter that
//! `SO_RXQ_OVFL` reports with each datagram, but exactly and at any time, not only when a later
//! datagram arrives.

pub mod live;
pub mod steer;

use crate::admission::{Admission, Verdict};
use crate::wire::{Datagram, Encapsulation};
use anyhow::{Context, Result};
use crossbeam_channel::{Receiver as Inbox, Sender, TryRecvError, TrySendError};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Wall-clock time in µs since the Unix epoch: what stamps received traffic.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Largest datagram taken: a 9001-byte jumbo frame mirrored with its VXLAN encapsulation.
pub const MAX_DATAGRAM: usize = 9216;
/// How long a worker waits on a quiet socket before it looks at its inbox and the stop flag.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_millis(20);
/// Datagrams taken per `recvmmsg` call.
pub const RECV_BATCH: usize = 64;
/// Room a new batch of datagrams has per datagram: a standard-MTU frame with its VXLAN
/// encapsulation (1500 + 14 + 50 bytes) and some to spare, so only jumbo frames make it grow.
pub const BATCH_BYTES_PER_DATAGRAM: usize = 1600;
/// Batches of handed-off datagrams a worker's inbox holds: up to 4 Ki datagrams. A worker whose
/// hand-off finds an inbox full serves its own inbox while it waits, so two workers handing off
/// to each other never wait on each other.
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

/// Emptied batches on their way back to be filled again (hand-off batches from the worker that took
/// them to the one that hands off, record batches from the sink thread to the workers).
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

/// Counters of one receive socket and its worker's ingest.
#[derive(Debug, Default)]
pub struct SocketCounters {
    /// Datagrams taken off the socket (before admission).
    pub received: AtomicU64,
    /// Datagrams refused by --allow-source, by --allow-vni.
    pub refused_source: AtomicU64,
    pub refused_vni: AtomicU64,
    /// Datagrams of a flow another worker owns, handed to it.
    pub handed_off: AtomicU64,
}

/// Opens one of the receive sockets: SO_REUSEPORT, `recv_buffer` bytes of receive buffer (with
/// SO_RCVBUFFORCE past `net.core.rmem_max` when allowed), a 20 ms receive timeout so the worker
/// serves its hand-off inbox and notices a stop request while its socket is quiet.
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
    socket.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
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

fn source_ip(addr: Option<&SockaddrStorage>) -> Option<IpAddr> {
    let addr = addr?;
    if let Some(a) = addr.as_sockaddr_in() {
        Some(IpAddr::V4(a.ip()))
    } else {
        addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip()))
    }
}

/// A worker's receive buffers, allocated once and reused by every `recvmmsg` call.
struct Receiver {
    /// [`RECV_BATCH`] slots of [`MAX_DATAGRAM`] bytes, one per datagram of a call. A longer
    /// datagram arrives cut to its slot; the decoder sees the truncation (IP length past the
    /// bytes present) and counts it.
    buf: Vec<u8>,
    headers: Headers,
    /// Per datagram of the latest call: length and source.
    got: [(usize, Option<IpAddr>); RECV_BATCH],
}

/// The message headers of a `recvmmsg` call: with room for each datagram's source address only
/// when admission reads it. Asking the kernel for the address costs it a copy per datagram
/// (about 5 % of what a datagram costs the daemon on loopback), for nothing without
/// `--allow-source`.
enum Headers {
    WithSource(MultiHeaders<SockaddrStorage>),
    Without(MultiHeaders<()>),
}

impl Receiver {
    /// The buffers, the datagram slots written through once here so that all of them are
    /// resident from the start: left to the first burst deep enough to fill each slot, the
    /// process's RSS would creep up by up to their size. `want_source`: report each datagram's
    /// source (else `None`).
    fn new(want_source: bool) -> Receiver {
        let mut buf = vec![0u8; RECV_BATCH * MAX_DATAGRAM];
        // (The compiler may not know what the opaque reference points to, so the writes stay.)
        std::hint::black_box(buf.as_mut_slice()).fill(0);
        let headers = if want_source {
            Headers::WithSource(MultiHeaders::preallocate(RECV_BATCH, None))
        } else {
            Headers::Without(MultiHeaders::preallocate(RECV_BATCH, None))
        };
        Receiver {
            buf,
            headers,
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
        let taken = match &mut self.headers {
            Headers::WithSource(h) => receive_into(fd, h, &mut slices, &mut self.got, source_ip),
            Headers::Without(h) => receive_into(fd, h, &mut slices, &mut self.got, |_| None),
        };
        match taken {
            Ok(n) => n,
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

/// One `recvmmsg` call with `headers`, each datagram's length and source (`source` of the address
/// the kernel wrote) into `got`; returns how many it took.
fn receive_into<'a, S: nix::sys::socket::SockaddrLike + Copy>(
    fd: RawFd,
    headers: &'a mut MultiHeaders<S>,
    slices: &'a mut [[IoSliceMut<'a>; 1]; RECV_BATCH],
    got: &mut [(usize, Option<IpAddr>); RECV_BATCH],
    source: fn(Option<&S>) -> Option<IpAddr>,
) -> nix::Result<usize> {
    let results = recvmmsg(fd, headers, slices, MsgFlags::MSG_WAITFORONE, None)?;
    let mut n = 0;
    for (msg, entry) in results.zip(got.iter_mut()) {
        *entry = (msg.bytes.min(MAX_DATAGRAM), source(msg.address.as_ref()));
        n += 1;
    }
    Ok(n)
}

/// Binds `n` sockets to `listen` with SO_REUSEPORT (all to the port the first one got, when
/// `listen`'s port is 0), in order: socket `i` is index `i` of the reuseport group, the shard
/// the steering program answers for it.
pub fn bind_group(listen: SocketAddr, n: usize, recv_buffer: usize) -> Result<Vec<UdpSocket>> {
    let first = bind_socket(listen, recv_buffer)?;
    let at = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..n {
        sockets.push(bind_socket(at, recv_buffer)?);
    }
    Ok(sockets)
}

/// A worker's ends of the hand-off: its inbox, and a way into every other worker's.
pub struct Link {
    inbox: Inbox<Batch>,
    /// Indexed by worker; `None` for this worker's own.
    outboxes: Vec<Option<Sender<Batch>>>,
}

/// The links of `n` workers, each inbox holding [`SHARD_QUEUE_BATCHES`] batches.
pub fn links(n: usize) -> Vec<Link> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| crossbeam_channel::bounded::<Batch>(SHARD_QUEUE_BATCHES))
        .unzip();
    rxs.into_iter()
        .enumerate()
        .map(|(me, inbox)| Link {
            inbox,
            outboxes: (0..n).map(|i| (i != me).then(|| txs[i].clone())).collect(),
        })
        .collect()
}

/// One worker's ingest: its socket, its receive buffers, admission, and the hand-off of what
/// another worker owns. Every datagram it keeps is given, decoded, to the `take` of the call.
pub struct Inlet<'a> {
    me: usize,
    socket: &'a UdpSocket,
    admission: &'a Admission,
    counters: &'a SocketCounters,
    rx: Receiver,
    link: Link,
    pool: BatchPool,
    /// Per worker, what this one has for it (always empty for itself).
    pending: Vec<Batch>,
    error_log: crate::sink::RateLimit,
    /// How the datagrams are encapsulated (the `--listen` group's).
    encap: Encapsulation,
}

impl<'a> Inlet<'a> {
    /// The ingest of worker `me` of `link.outboxes.len()`, receiving on `socket`; hand-off
    /// batches come from `pool`.
    pub fn new(
        me: usize,
        socket: &'a UdpSocket,
        admission: &'a Admission,
        counters: &'a SocketCounters,
        link: Link,
        pool: BatchPool,
    ) -> Inlet<'a> {
        let pending = link.outboxes.iter().map(|_| Batch::default()).collect();
        Inlet {
            me,
            socket,
            admission,
            counters,
            rx: Receiver::new(admission.reads_source()),
            link,
            pool,
            pending,
            error_log: crate::sink::RateLimit::new(Duration::from_secs(10)),
            encap: Encapsulation::Vxlan,
        }
    }

    /// Datagrams of this group are in `encap` (VXLAN unless told).
    pub fn with_encapsulation(mut self, encap: Encapsulation) -> Inlet<'a> {
        self.encap = encap;
        self
    }

    /// Handed-off batches waiting in this worker's inbox.
    pub fn inbox_len(&self) -> usize {
        self.link.inbox.len()
    }

    /// One `recvmmsg` call (waiting up to the socket's receive timeout for the first datagram):
    /// each datagram admission lets through is decoded once, and given to `take` if this worker
    /// owns its flow (or it has none), else packed for its owner. Then hands the packed batches
    /// on ([`Inlet::hand_off`]) and serves the inbox. Returns the datagrams received; false in
    /// the second place once another worker is gone.
    pub fn receive(&mut self, take: &mut dyn FnMut(&[u8], &Datagram<'_>)) -> (usize, bool) {
        let received = self.rx.receive(self.socket.as_raw_fd(), &self.error_log);
        if received == 0 {
            // Nothing for a receive timeout: keep a batch per worker for the next hand-off,
            // free the rest.
            self.pool.shrink(self.pending.len());
        }
        let shards = self.pending.len();
        let mut handed = 0u64;
        for (datagram, from) in self.rx.datagrams(received) {
            if !admit(self.admission, self.counters, datagram, from) {
                continue;
            }
            let decoded = Datagram::decode_with(self.encap, datagram);
            // One worker owns every flow.
            let owner = (shards > 1).then(|| decoded.segment().map(|s| steer::shard(s, shards)));
            match owner.flatten() {
                Some(owner) if owner != self.me => {
                    if self.pending[owner].is_empty() {
                        self.pending[owner] = self.pool.take();
                    }
                    self.pending[owner].push(datagram);
                    handed += 1;
                }
                _ => take(datagram, &decoded),
            }
        }
        self.counters
            .received
            .fetch_add(received as u64, Ordering::Relaxed);
        if handed > 0 {
            self.counters
                .handed_off
                .fetch_add(handed, Ordering::Relaxed);
        }
        let alive = self.hand_off(take);
        self.serve_inbox(take);
        (received, alive)
    }

    /// Sends every packed batch to its worker. While a worker's inbox is full, serves this
    /// worker's own inbox, so two workers handing off to each other both make progress. False
    /// once a worker is gone.
    fn hand_off(&mut self, take: &mut dyn FnMut(&[u8], &Datagram<'_>)) -> bool {
        for owner in 0..self.pending.len() {
            if self.pending[owner].is_empty() {
                continue;
            }
            let mut batch = std::mem::take(&mut self.pending[owner]);
            let Some(tx) = self.link.outboxes[owner].clone() else {
                continue;
            };
            loop {
                match tx.try_send(batch) {
                    Ok(()) => break,
                    Err(TrySendError::Full(b)) => {
                        batch = b;
                        if self.serve_inbox(take) == 0 {
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
        }
        true
    }

    /// Takes every datagram other workers handed to this one. Returns how many batches.
    fn serve_inbox(&mut self, take: &mut dyn FnMut(&[u8], &Datagram<'_>)) -> usize {
        let mut served = 0;
        while let Ok(batch) = self.link.inbox.try_recv() {
            self.take_batch(batch, take);
            served += 1;
        }
        served
    }

    /// Gives each datagram of a handed-off batch to `take`, and the batch back to the pool.
    fn take_batch(&self, batch: Batch, take: &mut dyn FnMut(&[u8], &Datagram<'_>)) {
        for datagram in batch.iter() {
            take(datagram, &Datagram::decode_with(self.encap, datagram));
        }
        self.pool.give(batch);
    }

    /// At shutdown, once this worker stopped receiving: hands on what it packed, lets go of the
    /// other workers' inboxes, and takes what they hand it until every one of them has done the
    /// same.
    pub fn close(mut self, take: &mut dyn FnMut(&[u8], &Datagram<'_>)) {
        self.hand_off(take);
        self.link.outboxes.clear();
        loop {
            match self.link.inbox.try_recv() {
                Ok(batch) => self.take_batch(batch, take),
                Err(TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(1)),
                Err(TryRecvError::Disconnected) => break,
            }
        }
    }
}

/// Passes one datagram from `from` through admission, counting what it refuses.
fn admit(
    admission: &Admission,
    counters: &SocketCounters,
    datagram: &[u8],
    from: Option<IpAddr>,
) -> bool {
    // A source the kernel did not report cannot pass a source allow-list: it is taken as the
    // unspecified address.
    let from = from.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    match admission.check(from, datagram) {
        Verdict::Accept => true,
        Verdict::SourceNotAllowed => {
            counters.refused_source.fetch_add(1, Ordering::Relaxed);
            false
        }
        Verdict::VniNotAllowed => {
            counters.refused_vni.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
