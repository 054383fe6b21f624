//! Live capture from a network interface (`mirror-receiver capture`): SPAN/TAP ports, collectors
//! of GCP Packet Mirroring (which delivers mirrored packets unencapsulated), a node's own traffic.
//!
//! libpcap does the capture: on Linux it maps a TPACKET_V3 ring of `--capture-buffer` bytes per
//! handle, compiles the `--capture-filter` expression and runs it in the kernel, puts back the
//! 802.1Q tags the kernel took off into its metadata, and reads the ring's drop count
//! (`tp_drops`). What it does not do is spread one interface over several threads: each worker
//! opens its own handle, and the handles join one `PACKET_FANOUT` group of type
//! `PACKET_FANOUT_HASH`, whose hash of the flow is symmetric (`__skb_get_hash_symmetric`), so
//! both directions of a connection reach the same worker, the one that owns its flow. With
//! `PACKET_FANOUT_FLAG_DEFRAG` the kernel reassembles IP fragments before it hashes.
//!
//! A handle receives every frame from the moment it is opened until it joins the group, so the
//! first workers' rings start with frames the others also took: frames stamped before the last
//! handle joined are skipped (counted, logged once) rather than reported twice.

use crate::wire::LinkType;
#[cfg(not(feature = "live-capture"))]
pub use absent::*;
use anyhow::{Context, Result};
#[cfg(feature = "live-capture")]
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
#[cfg(feature = "live-capture")]
use std::sync::atomic::Ordering;
#[cfg(feature = "live-capture")]
use std::time::Duration;

/// Bytes of a frame kept: the largest IP packet, so a frame the kernel coalesced (GRO, or TSO
/// on the way out of the host) is kept whole, and jumbo frames too.
pub const SNAPLEN: i32 = 65_535;
/// How long a worker waits on a quiet ring before it looks at its timers and the stop flag.
pub const TIMEOUT_MS: i32 = 20;
/// Frames taken per call.
pub const BATCH: usize = 256;
/// `PACKET_FANOUT_FLAG_DEFRAG`: reassemble IP fragments before hashing.
#[cfg(feature = "live-capture")]
const FANOUT_FLAG_DEFRAG: u32 = 0x8000;

/// Counters of one capture handle, published by its worker.
#[derive(Debug, Default)]
pub struct CaptureCounters {
    /// Frames taken off the ring.
    pub frames: AtomicU64,
    /// Frames the kernel could not put in the ring because it was full (`tp_drops`).
    pub ring_drops: AtomicU64,
    /// Frames the interface or its driver dropped, as the kernel reports them.
    pub interface_drops: AtomicU64,
    /// Frames stamped before every worker had joined the fanout group (possible duplicates).
    pub startup_skipped: AtomicU64,
}

/// The capture's settings (checked by the configuration).
#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub interface: String,
    pub promiscuous: bool,
    pub filter: Option<String>,
    /// Ring bytes per handle.
    pub buffer: usize,
}

/// Compiles a filter expression for Ethernet, without opening anything: how the configuration
/// is checked.
#[cfg(feature = "live-capture")]
pub fn compile_filter(expr: &str) -> Result<(), String> {
    let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).map_err(|e| e.to_string())?;
    dead.compile(expr, true)
        .map(|_| ())
        .map_err(|e| format!("does not compile: {e}"))
}

/// An error unless the interface exists (`validate` checks it when not `--offline`).
pub fn interface_exists(name: &str) -> Result<()> {
    nix::net::if_::if_nametoindex(name)
        .map(|_| ())
        .with_context(|| format!("--interface {name}: no such interface on this host"))
}

/// One worker's capture handle.
#[cfg(feature = "live-capture")]
pub struct LiveCapture {
    cap: pcap::Capture<pcap::Active>,
    link: LinkType,
    /// Frames stamped before this (µs) are skipped.
    joined_at: u64,
    /// The latest cumulative libpcap counts (32-bit, so they may wrap).
    last: (u32, u32),
    error_log: crate::sink::RateLimit,
}

/// Opens `n` handles on the interface, each with its ring, the filter and, for more than one,
/// the fanout group.
#[cfg(feature = "live-capture")]
pub fn open_group(cfg: &LiveConfig, n: usize) -> Result<Vec<LiveCapture>> {
    // One group per process (the id is 16 bits; the pid's low bits are unique enough on a host,
    // and a clash with another process's group is refused by the kernel, not silently shared,
    // since the group's type and flags must match).
    let group = (std::process::id() & 0xffff) as u16;
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let mut cap = open_one(cfg).with_context(|| {
            format!("opening a capture on {} (needs CAP_NET_RAW)", cfg.interface)
        })?;
        if n > 1 {
            join_fanout(&cap, group)
                .with_context(|| format!("joining fanout group {group} (worker {i})"))?;
        }
        let datalink = cap.get_datalink().0;
        let Some(link) = u32::try_from(datalink).ok().and_then(LinkType::from_pcap) else {
            anyhow::bail!(
                "{}: link type {datalink} is not one the decoder knows",
                cfg.interface
            );
        };
        if let Some(f) = &cfg.filter {
            cap.filter(f, true)
                .with_context(|| format!("--capture-filter {f:?}"))?;
        }
        handles.push(LiveCapture {
            cap,
            link,
            joined_at: 0,
            last: (0, 0),
            error_log: crate::sink::RateLimit::new(Duration::from_secs(10)),
        });
    }
    let joined_at = super::now_us();
    for h in &mut handles {
        h.joined_at = if n > 1 { joined_at } else { 0 };
    }
    Ok(handles)
}

#[cfg(feature = "live-capture")]
fn open_one(cfg: &LiveConfig) -> Result<pcap::Capture<pcap::Active>, pcap::Error> {
    pcap::Capture::from_device(cfg.interface.as_str())?
        .promisc(cfg.promiscuous)
        .snaplen(SNAPLEN)
        .buffer_size(i32::try_from(cfg.buffer).unwrap_or(i32::MAX))
        .timeout(TIMEOUT_MS)
        .open()?
        // libpcap's own wait on a TPACKET_V3 ring has no timeout while the ring is empty (it
        // relies on a block being retired); the worker polls with one instead.
        .setnonblock()
}

#[cfg(feature = "live-capture")]
fn join_fanout(cap: &pcap::Capture<pcap::Active>, group: u16) -> std::io::Result<()> {
    let arg: u32 = u32::from(group) | ((libc::PACKET_FANOUT_HASH | FANOUT_FLAG_DEFRAG) << 16);
    // SAFETY: setsockopt on the handle's own packet socket, with a correctly sized int value.
    let rc = unsafe {
        libc::setsockopt(
            cap.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_FANOUT,
            (&arg as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(feature = "live-capture")]
impl LiveCapture {
    /// The link type of the frames.
    pub fn link(&self) -> LinkType {
        self.link
    }

    /// Takes up to [`BATCH`] frames (waiting up to [`TIMEOUT_MS`] for the ring), giving each to
    /// `take` with its capture time in µs. Returns how many frames came off the ring (those
    /// skipped at startup included).
    pub fn receive(
        &mut self,
        counters: &CaptureCounters,
        take: &mut dyn FnMut(&[u8], u64),
    ) -> usize {
        self.take(counters, take, true)
    }

    fn take(
        &mut self,
        counters: &CaptureCounters,
        take: &mut dyn FnMut(&[u8], u64),
        wait: bool,
    ) -> usize {
        let mut taken = 0;
        let mut skipped = 0u64;
        let mut waited = !wait;
        while taken + (skipped as usize) < BATCH {
            match self.cap.next_packet() {
                Ok(p) => {
                    let ts = u64::try_from(p.header.ts.tv_sec).unwrap_or(0) * 1_000_000
                        + u64::try_from(p.header.ts.tv_usec).unwrap_or(0);
                    if ts < self.joined_at {
                        skipped += 1;
                        continue;
                    }
                    take(p.data, ts);
                    taken += 1;
                }
                // Nothing ready: wait for the ring once per call, then return what was taken.
                Err(pcap::Error::TimeoutExpired) if taken == 0 && !waited => {
                    waited = true;
                    let fd = self.cap.as_raw_fd();
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: poll on one valid pollfd owned by this frame.
                    unsafe { libc::poll(&mut pfd, 1, TIMEOUT_MS) };
                }
                Err(pcap::Error::TimeoutExpired) => break,
                Err(e) => {
                    if self.error_log.ready() {
                        tracing::error!(error = %e, "capture failed (logged at most every 10 s)");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
        if skipped > 0
            && counters
                .startup_skipped
                .fetch_add(skipped, Ordering::Relaxed)
                == 0
        {
            tracing::info!(
                "skipping the frames captured before every worker joined the fanout group \
                 (each worker saw them all until then)"
            );
        }
        counters.frames.fetch_add(taken as u64, Ordering::Relaxed);
        taken + skipped as usize
    }

    /// Takes up to [`BATCH`] frames already in the ring, without waiting. Returns how many.
    pub fn drain(&mut self, counters: &CaptureCounters, take: &mut dyn FnMut(&[u8], u64)) -> usize {
        self.take(counters, take, false)
    }

    /// Reads the kernel's counts and adds what is new to `counters`.
    pub fn publish(&mut self, counters: &CaptureCounters) {
        if let Ok(s) = self.cap.stats() {
            let (dropped, if_dropped) = (s.dropped, s.if_dropped);
            counters.ring_drops.fetch_add(
                u64::from(dropped.wrapping_sub(self.last.0)),
                Ordering::Relaxed,
            );
            counters.interface_drops.fetch_add(
                u64::from(if_dropped.wrapping_sub(self.last.1)),
                Ordering::Relaxed,
            );
            self.last = (dropped, if_dropped);
        }
    }
}

/// A build without the `live-capture` feature (no libpcap to link with): the configuration and
/// the daemon say so instead of capturing.
#[cfg(not(feature = "live-capture"))]
mod absent {
    use super::{CaptureCounters, LinkType, LiveConfig};
    use anyhow::Result;

    const WHY: &str = "this build has no live capture (built without the `live-capture` feature, \
                       which links libpcap)";

    pub fn compile_filter(_expr: &str) -> Result<(), String> {
        Err(WHY.into())
    }

    pub fn open_group(_cfg: &LiveConfig, _n: usize) -> Result<Vec<LiveCapture>> {
        anyhow::bail!(WHY)
    }

    /// Never made.
    pub enum LiveCapture {}

    impl LiveCapture {
        pub fn link(&self) -> LinkType {
            match *self {}
        }
        pub fn receive(&mut self, _: &CaptureCounters, _: &mut dyn FnMut(&[u8], u64)) -> usize {
            match *self {}
        }
        pub fn drain(&mut self, _: &CaptureCounters, _: &mut dyn FnMut(&[u8], u64)) -> usize {
            match *self {}
        }
        pub fn publish(&mut self, _: &CaptureCounters) {
            match *self {}
        }
    }
}
