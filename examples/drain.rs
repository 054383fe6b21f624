//! A plain UDP receiver: the baseline of `benches/line-rate.sh` for loopback ingest.
//!
//! Binds one UDP socket, raises its receive buffer (SO_RCVBUFFORCE as root, else SO_RCVBUF), and
//! takes datagrams with `recvmmsg` in batches of 64, counting datagrams and bytes and doing nothing
//! else with them. It stops on SIGTERM/SIGINT, when stdin closes (`--watch-stdin`), or after
//! `--idle-exit` seconds without a datagram once one arrived, and prints one line:
//!
//! ```text
//! datagrams=N bytes=B kernel_drops=D rxq_ovfl=O rcvbuf_errors=E span_s=S rate=R
//! ```
//!
//! `span_s` is the time from the first datagram taken to the last, `rate` is datagrams/`span_s`:
//! stopped (SIGSTOP) while its receive queue fills, then continued, it measures how fast a plain
//! receiver empties a full queue -- its drain rate.
//!
//! `kernel_drops` is the socket's own drop counter (the `drops` column of /proc/net/udp for this
//! socket's inode: every datagram the kernel threw away because the receive queue was full);
//! `rxq_ovfl` is the same counter as the last SO_RXQ_OVFL control message carried it (it lags: drops
//! after the last datagram that was queued are not in it); `rcvbuf_errors` is the delta of
//! `Udp: RcvbufErrors` in /proc/net/snmp since the start (host-wide). SIGUSR1 prints the same line
//! without stopping. The first line printed, `listening ADDR rcvbuf=BYTES`, says it is ready.
//!
//! Usage: `cargo run --release --example drain -- [--listen 127.0.0.1:4789] [--rcvbuf BYTES]
//! [--idle-exit SECS] [--watch-stdin]`

use std::io::{BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const BUF: usize = 65536;

static STOP: AtomicBool = AtomicBool::new(false);
static REPORT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_report(_: libc::c_int) {
    REPORT.store(true, Ordering::SeqCst);
}

/// A plain recvmmsg UDP receiver that only counts what it takes.
#[derive(clap::Parser)]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:4789")]
    listen: SocketAddr,
    /// Receive buffer in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    rcvbuf: usize,
    /// Stop after this many seconds without a datagram once one arrived (0: never).
    #[arg(long, default_value_t = 0.0)]
    idle_exit: f64,
    /// Stop when stdin closes.
    #[arg(long)]
    watch_stdin: bool,
}

struct Args {
    listen: SocketAddr,
    rcvbuf: usize,
    idle_exit: Option<Duration>,
    watch_stdin: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let c = <Cli as clap::Parser>::parse();
    Ok(Args {
        listen: c.listen,
        rcvbuf: c.rcvbuf,
        idle_exit: (c.idle_exit > 0.0).then(|| Duration::from_secs_f64(c.idle_exit)),
        watch_stdin: c.watch_stdin,
    })
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: a valid fd and a pointer to an int of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn getsockopt_int(fd: i32, level: i32, name: i32) -> i32 {
    let mut value: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: a valid fd, an int and its length.
    unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    value
}

/// `Udp: RcvbufErrors` from /proc/net/snmp (host-wide).
fn rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
        return 0;
    };
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(h, _)| *h == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The `drops` column of /proc/net/udp (or udp6) for the socket with this inode.
fn socket_drops(inode: u64) -> Option<u64> {
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 13 && f[9].parse::<u64>().ok() == Some(inode) {
                return f[12].parse().ok();
            }
        }
    }
    None
}

fn socket_inode(fd: i32) -> u64 {
    // SAFETY: fstat on a valid fd into a zeroed stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    unsafe { libc::fstat(fd, &mut st) };
    st.st_ino
}

struct Counts {
    datagrams: u64,
    bytes: u64,
    rxq_ovfl: u32,
    /// Datagrams of the first batch (taken at `first`).
    first_batch: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

fn report(c: &Counts, inode: u64, snmp_start: u64) {
    let drops = socket_drops(inode).map_or("?".to_owned(), |d| d.to_string());
    let span = match (c.first, c.last) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    // The first batch is taken at `first`: the span covers the others.
    let rate = if span > 0.0 {
        (c.datagrams - c.first_batch) as f64 / span
    } else {
        0.0
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "datagrams={} bytes={} kernel_drops={} rxq_ovfl={} rcvbuf_errors={} span_s={:.6} rate={:.0}",
        c.datagrams,
        c.bytes,
        drops,
        c.rxq_ovfl,
        rcvbuf_errors().saturating_sub(snmp_start),
        span,
        rate
    );
    let _ = out.flush();
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let socket = UdpSocket::bind(args.listen)?;
    let fd = socket.as_raw_fd();
    let size = i32::try_from(args.rcvbuf).unwrap_or(i32::MAX);
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
    }
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let inode = socket_inode(fd);
    let snmp_start = rcvbuf_errors();

    // SAFETY: the handlers only store to atomics.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGUSR1, on_report as *const () as libc::sighandler_t);
    }
    if args.watch_stdin {
        std::thread::spawn(|| {
            let mut sink = String::new();
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            while lock.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
            STOP.store(true, Ordering::SeqCst);
        });
    }
    println!(
        "listening {} rcvbuf={}",
        socket.local_addr()?,
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)
    );
    std::io::stdout().flush()?;

    // One buffer, iovec, control buffer and header per slot of the batch, set up once.
    let mut bufs = vec![[0u8; BUF]; BATCH];
    // Room for one SO_RXQ_OVFL control message (a u32) per datagram, 8-byte aligned.
    let mut cmsg = vec![[0u64; 8]; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; every pointer is set below.
    let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();

    let mut c = Counts {
        datagrams: 0,
        bytes: 0,
        rxq_ovfl: 0,
        first_batch: 0,
        first: None,
        last: None,
    };
    let mut last = Instant::now();
    while !STOP.load(Ordering::Relaxed) {
        if REPORT.swap(false, Ordering::SeqCst) {
            report(&c, inode, snmp_start);
        }
        for i in 0..BATCH {
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = &raw mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = cmsg[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of_val(&cmsg[i]) as _;
            h.msg_flags = 0;
            hdrs[i].msg_len = 0;
        }
        // SAFETY: BATCH headers, each pointing at its own buffer and control area.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted => {
                    if let Some(idle) = args.idle_exit
                        && c.datagrams > 0
                        && last.elapsed() >= idle
                    {
                        break;
                    }
                    continue;
                }
                _ => return Err(e.into()),
            }
        }
        last = Instant::now();
        if c.first.is_none() {
            c.first = Some(last);
            c.first_batch = n as u64;
        }
        c.last = Some(last);
        for h in &hdrs[..n as usize] {
            c.datagrams += 1;
            c.bytes += u64::from(h.msg_len);
            // SAFETY: the kernel filled msg_control/msg_controllen of this header.
            unsafe {
                let mut cm = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !cm.is_null() {
                    if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SO_RXQ_OVFL
                    {
                        c.rxq_ovfl = std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast::<u32>());
                    }
                    cm = libc::CMSG_NXTHDR(&h.msg_hdr, cm);
                }
            }
        }
    }
    report(&c, inode, snmp_start);
    Ok(())
}
