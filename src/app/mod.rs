//! The daemon (`mirror-receiver run`) and the other subcommands' wiring: sockets, worker threads,
//! the sink thread, signals and the shutdown order (stop receiving, drain workers, emit what is
//! pending, flush the sink).
//!
//! - [`worker`]: a worker thread, one pipeline shard;
//! - [`sink_thread`]: the records' way from the workers (and replay) to the sink;
//! - [`status`]: the admin endpoint's view of the daemon and the summary log line;
//! - [`replay`] and [`send`]: the offline subcommands.

mod replay;
mod send;
mod sink_thread;
mod status;
mod worker;

pub use replay::{ReplayError, replay, replay_capture};
pub use send::send;
pub use status::add_stats;

use crate::config::{Listener, LiveArgs, PipelineSettings, RunArgs, RunSettings};
use crate::counters::ProcessCounters;
use crate::ingest::live::CaptureCounters;
use crate::ingest::now_us;
use crate::ingest::{BATCH_BYTES_PER_DATAGRAM, Batch, BatchPool, RECV_BATCH};
use crate::pipeline::PipelineStats;
use crate::sink::SinkStats;
use anyhow::{Context, Result};
use crossbeam_channel::{Sender, bounded};
use sink_thread::{
    RECORD_BATCH_BYTES, RECORD_QUEUE_BATCHES, RECORDS_PER_BATCH, RecordsOut, open_sink, sink_loop,
};
use status::{DaemonStatus, log_daemon_summary};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use worker::{Source, Worker};

/// A worker thread, joined at shutdown.
type Thread = JoinHandle<()>;

/// What the daemon's threads share: one slot per worker, one per receive socket, and the
/// daemon-wide flags and counters.
struct Shared {
    stop: AtomicBool,
    /// The sink failed for good: the daemon stops and exits non-zero so a supervisor restarts it.
    sink_failed: AtomicBool,
    workers: Vec<WorkerSlot>,
    sockets: Vec<SocketSlot>,
    /// One per capture handle (`capture`).
    captures: Vec<CaptureCounters>,
    records_too_large: AtomicU64,
    /// The kernel steers datagrams to the worker of their flow (the program is attached to
    /// every group of more than one socket).
    steering: bool,
}

/// What one worker publishes.
struct WorkerSlot {
    /// Its pipeline's counters, published about once a second.
    stats: Mutex<PipelineStats>,
    /// Last loop time (µs): the systemd watchdog is fed only while every worker's is recent.
    heartbeat: AtomicU64,
    /// Batches of handed-off datagrams waiting in its inbox, as last seen by the worker.
    queue_fill: AtomicU64,
}

/// One receive socket (for the kernel's drop count) and its counters.
struct SocketSlot {
    socket: Arc<UdpSocket>,
    counters: crate::ingest::SocketCounters,
}

impl Shared {
    fn new(workers: usize, sockets: &[Arc<UdpSocket>], captures: usize, steering: bool) -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            sink_failed: AtomicBool::new(false),
            workers: (0..workers)
                .map(|_| WorkerSlot {
                    stats: Mutex::default(),
                    heartbeat: AtomicU64::new(now_us()),
                    queue_fill: AtomicU64::new(0),
                })
                .collect(),
            sockets: sockets
                .iter()
                .map(|s| SocketSlot {
                    socket: s.clone(),
                    counters: Default::default(),
                })
                .collect(),
            captures: (0..captures).map(|_| CaptureCounters::default()).collect(),
            records_too_large: AtomicU64::new(0),
            steering,
        }
    }

    /// The process's counters: datagrams taken off the sockets (read first: a datagram counted
    /// as received may not be processed yet, never the other way round), datagrams the kernel
    /// dropped for them, records too large, datagrams refused.
    fn process(&self) -> ProcessCounters {
        let sum = |read: fn(&crate::ingest::SocketCounters) -> &AtomicU64| {
            self.sockets
                .iter()
                .map(|s| read(&s.counters).load(Ordering::Relaxed))
                .sum()
        };
        let received = sum(|c| &c.received);
        let kernel_drops = self
            .sockets
            .iter()
            .filter_map(|s| crate::ingest::kernel_drops(&s.socket))
            .sum();
        let captured = |read: fn(&CaptureCounters) -> &AtomicU64| {
            self.captures
                .iter()
                .map(|c| read(c).load(Ordering::Relaxed))
                .sum()
        };
        ProcessCounters {
            received,
            kernel_drops,
            records_too_large: self.records_too_large.load(Ordering::Relaxed),
            refused_source: sum(|c| &c.refused_source),
            refused_vni: sum(|c| &c.refused_vni),
            handed_off: sum(|c| &c.handed_off),
            steering: u64::from(self.steering),
            capture_frames: captured(|c| &c.frames),
            capture_ring_drops: captured(|c| &c.ring_drops),
            capture_interface_drops: captured(|c| &c.interface_drops),
            capture_startup_skipped: captured(|c| &c.startup_skipped),
        }
    }
}

/// `mirror-receiver run` (`live` is `None`) and `mirror-receiver capture`: the daemon. Returns
/// when a signal asked it to stop and everything in flight was delivered (or the shutdown
/// timeout passed).
pub fn run(args: &RunArgs, live: Option<&LiveArgs>) -> Result<()> {
    let signals = Signals::install()?;
    let RunSettings {
        pipeline: mut settings,
        admission,
        listeners,
        live,
    } = args.check_with(live)?;
    let workers = if args.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.workers
    };
    // `workers` per listener and per capture. Each shard owns its flows, so each gets its share
    // of the budget and of the flow count.
    let shards = workers * (listeners.len() + usize::from(live.is_some()));
    let flow = &mut settings.pipeline.flow;
    flow.memory_budget /= shards;
    flow.max_flows = flow.max_flows.div_ceil(shards);
    let sink_stats = Arc::new(SinkStats::default());
    let sink = open_sink(&args.output, sink_stats.clone())?;
    let mut groups = Vec::new();
    let mut steering = workers > 1;
    for listener in &listeners {
        let sockets: Vec<Arc<UdpSocket>> =
            crate::ingest::bind_group(listener.addr, workers, args.recv_buffer)?
                .into_iter()
                .map(Arc::new)
                .collect();
        let local = sockets[0].local_addr()?;
        let steered = workers > 1 && attach_steering(&sockets[0], workers, listener.encap);
        steering &= steered;
        let what = match listener.encap {
            crate::wire::Encapsulation::Vxlan => "VXLAN",
            crate::wire::Encapsulation::Geneve => "Geneve",
        };
        tracing::info!(listen = %Listener { addr: local, ..*listener }, workers, steering = steered, "receiving {what}");
        groups.push((*listener, sockets));
    }
    let captures = match &live {
        Some(l) => {
            let c = &l.capture;
            let handles = crate::ingest::live::open_group(c, workers)?;
            tracing::info!(interface = %c.interface, workers, promiscuous = c.promiscuous, filter = c.filter.as_deref().unwrap_or(""), "capturing");
            handles
        }
        None => Vec::new(),
    };
    let all_sockets: Vec<Arc<UdpSocket>> =
        groups.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    let shared = Arc::new(Shared::new(
        shards,
        &all_sockets,
        captures.len(),
        steering && !groups.is_empty(),
    ));
    let admission = Arc::new(admission);
    let (rec_tx, rec_rx) = bounded::<Batch>(RECORD_QUEUE_BATCHES);
    // Spare batches kept for reuse: what is in flight in the steady state (a batch being filled
    // per worker, one being sent). Bursts allocate beyond it and free on return, so a burst does
    // not leave memory behind.
    let record_pool = BatchPool::new(2 * shards + 2, RECORDS_PER_BATCH, RECORD_BATCH_BYTES / 4);
    let flush_timeout = Duration::from_secs_f64(args.shutdown_timeout);
    let sink_thread = spawn_sink(&shared, sink, rec_rx, &record_pool, flush_timeout)?;

    let mut sources = Vec::with_capacity(shards);
    let mut slot = 0;
    for (listener, sockets) in groups {
        // Spare hand-off batches kept for reuse: a few per pair of workers. Beyond that (bursts
        // the kernel could not steer) batches are allocated and freed on return, so a burst
        // does not leave memory behind.
        let pool = BatchPool::new(
            2 * workers * workers,
            RECV_BATCH,
            RECV_BATCH * BATCH_BYTES_PER_DATAGRAM,
        );
        let links = crate::ingest::links(sockets.len());
        for (shard, (socket, link)) in sockets.into_iter().zip(links).enumerate() {
            sources.push(Source::Udp {
                shard,
                slot,
                socket,
                encap: listener.encap,
                admission: admission.clone(),
                link,
                pool: pool.clone(),
            });
            slot += 1;
        }
    }
    let vni = live.as_ref().map_or(0, |l| l.vni);
    for (slot, capture) in captures.into_iter().enumerate() {
        sources.push(Source::Live { slot, capture, vni });
    }
    let worker_threads = spawn_workers(&shared, &settings, sources, &rec_tx, &record_pool)?;
    drop(rec_tx);

    let admin_stop = Arc::new(AtomicBool::new(false));
    let status = Arc::new(DaemonStatus {
        shared: shared.clone(),
        sink: sink_stats.clone(),
        kafka: args.output.kafka_brokers.is_some(),
    });
    let (admin_addr, admin_thread) =
        crate::admin::serve(args.admin_listen, status, admin_stop.clone())
            .with_context(|| format!("binding the admin endpoint {}", args.admin_listen))?;
    tracing::info!(admin = %admin_addr, "admin endpoint: /healthz /readyz /metrics");
    // systemd (Type=notify): ready once the sockets are bound and the sink is open. Outside
    // systemd NOTIFY_SOCKET is unset and this does nothing.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    wait_for_signal(signals, &shared, &sink_stats)?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if shared.sink_failed.load(Ordering::SeqCst) {
        tracing::error!("stopping: the sink failed");
    } else {
        tracing::info!("stopping: finishing in-flight work");
    }
    shared.stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs_f64(args.shutdown_timeout);
    for t in worker_threads {
        let _ = t.join();
    }
    let sink_result = join_until(sink_thread, deadline);
    admin_stop.store(true, Ordering::SeqCst);
    let _ = admin_thread.join();
    log_daemon_summary("stopped", &shared, &sink_stats);
    sink_result
}

/// Starts the sink thread; a sink that fails for good marks the daemon's `sink_failed`.
fn spawn_sink(
    shared: &Arc<Shared>,
    sink: Box<dyn crate::sink::Sink>,
    records: crossbeam_channel::Receiver<Batch>,
    record_pool: &BatchPool,
    flush_timeout: Duration,
) -> Result<JoinHandle<Result<()>>> {
    let (shared, pool) = (shared.clone(), record_pool.clone());
    Ok(std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            let result = sink_loop(sink, records, &pool, flush_timeout);
            if result.is_err() {
                shared.sink_failed.store(true, Ordering::SeqCst);
            }
            result
        })?)
}

/// Attaches the kernel's steering program to the sockets' reuseport group. Without it (an old
/// kernel, a seccomp policy) every datagram still reaches the worker of its flow, handed over by
/// whichever worker received it: slower, counted, and said here once.
fn attach_steering(socket: &UdpSocket, workers: usize, encap: crate::wire::Encapsulation) -> bool {
    match crate::ingest::steer::attach_for(socket, workers, encap) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                error = %e,
                "the kernel refused the steering program (SO_ATTACH_REUSEPORT_CBPF): workers hand \
                 each other the datagrams of flows they do not own (mirror_ingest_handed_off_total)"
            );
            false
        }
    }
}

/// Starts one worker thread per source; returns their handles.
fn spawn_workers(
    shared: &Arc<Shared>,
    settings: &PipelineSettings,
    sources: Vec<Source>,
    rec_tx: &Sender<Batch>,
    record_pool: &BatchPool,
) -> Result<Vec<Thread>> {
    let mut threads = Vec::new();
    for (me, source) in sources.into_iter().enumerate() {
        let name = match &source {
            Source::Udp { .. } => format!("worker-{me}"),
            Source::Live { slot, .. } => format!("capture-{slot}"),
        };
        let w = Worker {
            me,
            source,
            records: RecordsOut {
                batch: record_pool.take(),
                pool: record_pool.clone(),
                tx: rec_tx.clone(),
            },
            shared: shared.clone(),
        };
        let settings = settings.clone();
        threads.push(
            std::thread::Builder::new()
                .name(name)
                .spawn(move || w.run(&settings.pipeline, settings.filter, settings.record))?,
        );
    }
    Ok(threads)
}

fn join_until(thread: std::thread::JoinHandle<Result<()>>, deadline: Instant) -> Result<()> {
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            anyhow::bail!("shutdown timeout: the sink did not finish flushing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("sink thread panicked"))?
}

/// SIGTERM and SIGINT, caught from the start of `run` so a signal during startup still gets an
/// orderly shutdown instead of the default kill.
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (term, int) = rt.block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })?;
        Ok(Signals { rt, term, int })
    }
}

/// Gives memory the allocator holds but no longer uses back to the kernel. glibc keeps freed
/// memory in its per-thread arenas (it returns only the top of a heap), so without this a
/// daemon's RSS creeps up with each burst of connections and stays at its high-water mark; the
/// call takes well under a millisecond on this heap and runs once a second.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn wait_for_signal(signals: Signals, shared: &Shared, sink_stats: &SinkStats) -> Result<()> {
    let Signals {
        rt,
        mut term,
        mut int,
    } = signals;
    rt.block_on(async {
        let mut report = tokio::time::interval(Duration::from_secs(60));
        report.tick().await;
        let mut health = tokio::time::interval(Duration::from_millis(200));
        let mut trim = tokio::time::interval(Duration::from_secs(1));
        // WatchdogSec: ping at half the period, and only while every worker's loop turns.
        let watchdog = sd_notify::watchdog_enabled();
        let stuck_log = crate::sink::RateLimit::new(Duration::from_secs(10));
        let mut watchdog_tick = tokio::time::interval(
            watchdog.map_or(Duration::from_secs(3600), |d| (d / 2).max(Duration::from_millis(100))),
        );
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = health.tick() => {
                    if shared.sink_failed.load(Ordering::SeqCst) {
                        break;
                    }
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    let oldest = shared.workers.iter().map(|w| w.heartbeat.load(Ordering::Relaxed)).min().unwrap_or(0);
                    if now_us().saturating_sub(oldest) < 5_000_000 {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    } else if stuck_log.ready() {
                        tracing::error!("a worker is stuck: withholding the systemd watchdog ping");
                    }
                }
                _ = trim.tick() => release_free_memory(),
                _ = report.tick() => {
                    log_daemon_summary("running", shared, sink_stats);
                }
            }
        }
        Ok(())
    })
}
