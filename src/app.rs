//! Wiring: sockets, worker threads, the sink thread, signals and the shutdown order
//! (stop receiving, drain workers, emit what is pending, flush the sink).

use crate::capture::CaptureReader;
use crate::config::{OutputArgs, ReplayArgs, RunArgs};
use crate::http::Exchange;
use crate::ingest::{BATCH_BYTES_PER_DATAGRAM, Batch, BatchPool, RECV_BATCH, SHARD_QUEUE_BATCHES};
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use crate::record::{Encoder, RecordConfig};
use crate::sink::kafka::{KafkaSettings, KafkaSink};
use crate::sink::spool::SpoolConfig;
use crate::sink::{JsonLines, Sink, SinkError, SinkStats};
use crate::wire;
use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Opens the configured sink.
pub fn open_sink(out: &OutputArgs, stats: Arc<SinkStats>) -> Result<Box<dyn Sink>> {
    match &out.kafka_brokers {
        Some(brokers) => {
            let settings = KafkaSettings {
                brokers: brokers.clone(),
                topic: out.topic.clone(),
                batch_size: out.batch_size,
                batch_time: Duration::from_secs_f64(out.batch_time),
                compression: out.compression,
                options: out.kafka_options()?,
                spool: SpoolConfig {
                    max_bytes: out.spool_max_bytes,
                    ..SpoolConfig::new(&out.spool_dir)
                },
                spool_grace: Duration::from_secs_f64(out.spool_grace),
                spool_always: out.spool_always,
            };
            Ok(Box::new(KafkaSink::new(&settings, stats).with_context(
                || {
                    format!(
                        "starting Kafka delivery (spool at {})",
                        out.spool_dir.display()
                    )
                },
            )?))
        }
        None => Ok(Box::new(
            JsonLines::open(&out.output, stats)
                .with_context(|| format!("opening --output {}", out.output))?,
        )),
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Encodes a pipeline's finished exchanges and hands them to `deliver`. Records too large for
/// any payload are counted in `records_too_large` as they happen, so a running daemon shows
/// them.
fn drain_records(
    pipeline: &mut Pipeline,
    encoder: &Encoder,
    buf: &mut Vec<u8>,
    records_too_large: &AtomicU64,
    mut deliver: impl FnMut(u64, &[u8]) -> Result<(), SinkError>,
) -> Result<(), SinkError> {
    for ex in pipeline.exchanges() {
        deliver_record(&ex, encoder, buf, records_too_large, &mut deliver)?;
    }
    Ok(())
}

/// Encodes one exchange and hands the record to `deliver`: the one path from an exchange to a
/// sink, for the daemon and for replay. A record too large for any payload is counted in
/// `records_too_large`, not sent.
fn deliver_record(
    ex: &Exchange,
    encoder: &Encoder,
    buf: &mut Vec<u8>,
    records_too_large: &AtomicU64,
    deliver: &mut impl FnMut(u64, &[u8]) -> Result<(), SinkError>,
) -> Result<(), SinkError> {
    match encoder.encode(ex, buf) {
        Ok(()) => deliver(ex.connection_id, buf),
        Err(_) => {
            records_too_large.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
}

/// Runs every frame of a capture through a pipeline, handing each finished exchange to `each`.
/// Capture timestamps drive every timeout, so a replay is deterministic.
pub fn replay_capture<R: std::io::Read, E>(
    reader: &mut CaptureReader<R>,
    default_vni: u32,
    cfg: &PipelineConfig,
    filter: Option<Arc<crate::filter::Filter>>,
    mut each: impl FnMut(Exchange) -> Result<(), E>,
) -> Result<PipelineStats, ReplayError<E>> {
    let mut pipeline = Pipeline::new(cfg);
    if let Some(f) = filter {
        pipeline = pipeline.with_filter(f);
    }
    let mut last_ts = 0u64;
    let mut next_expire = 0u64;
    let mut unknown_link = 0u64;
    while let Some(frame) = reader.next_frame() {
        let frame = frame.map_err(ReplayError::Capture)?;
        // Timestamps in a capture may step back a little (several interfaces): time never does.
        last_ts = last_ts.max(frame.ts);
        match frame.link {
            Some(link) => pipeline.capture_frame(link, &frame.data, default_vni, last_ts),
            None => unknown_link += 1,
        }
        if last_ts >= next_expire {
            pipeline.expire(last_ts);
            next_expire = last_ts + 1_000_000;
        }
        for ex in pipeline.exchanges() {
            each(ex).map_err(ReplayError::Sink)?;
        }
    }
    pipeline.finish(last_ts);
    for ex in pipeline.exchanges() {
        each(ex).map_err(ReplayError::Sink)?;
    }
    let mut stats = pipeline.stats();
    stats.wire.errors[wire::DecodeError::UnsupportedLinkType.index()] += unknown_link;
    stats.wire.datagrams += unknown_link;
    Ok(stats)
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError<E> {
    #[error(transparent)]
    Capture(crate::capture::CaptureError),
    #[error(transparent)]
    Sink(E),
}

/// `mirror-receiver replay`: one pass over a capture into the configured sink.
pub fn replay(args: &ReplayArgs) -> Result<PipelineStats> {
    let (pcfg, rcfg) = args.pipeline.to_config()?;
    args.output.check()?;
    let mut reader = CaptureReader::open(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let sink_stats = Arc::new(SinkStats::default());
    let mut sink = open_sink(&args.output, sink_stats.clone())?;
    let encoder = Encoder::new(rcfg);
    let mut buf = Vec::with_capacity(64 * 1024);
    let too_large = AtomicU64::new(0);
    let filter = args.pipeline.filter()?;
    let mut send = |id: u64, record: &[u8]| sink.send(id, record);
    let stats = replay_capture(&mut reader, args.vni, &pcfg, Some(filter), |ex| {
        deliver_record(&ex, &encoder, &mut buf, &too_large, &mut send)
    })
    .with_context(|| format!("replaying {}", args.file.display()))?;
    let flushed = sink.flush(Duration::from_secs(30));
    log_summary(
        "replay finished",
        &stats,
        &sink_stats,
        too_large.load(Ordering::Relaxed),
    );
    flushed?;
    let failed = SinkStats::get(&sink_stats.failed);
    if failed > 0 {
        anyhow::bail!("{failed} records could not be delivered (see the warnings above)");
    }
    Ok(stats)
}

/// Logs the totals of a run.
pub fn log_summary(what: &str, s: &PipelineStats, sink: &SinkStats, records_too_large: u64) {
    let errors: Vec<String> = wire::DecodeError::ALL
        .iter()
        .filter(|e| s.wire.errors[e.index()] > 0)
        .map(|e| format!("{}={}", e.as_str(), s.wire.errors[e.index()]))
        .collect();
    let parse_errors: Vec<String> = crate::http::ParseError::ALL
        .iter()
        .filter(|e| s.http.parse_errors[e.index()] > 0)
        .map(|e| format!("{}={}", e.as_str(), s.http.parse_errors[e.index()]))
        .collect();
    let recovered: Vec<String> = crate::http::Recovery::ALL
        .iter()
        .filter(|r| s.http.framing_recovered[r.index()] > 0)
        .map(|r| format!("{}={}", r.as_str(), s.http.framing_recovered[r.index()]))
        .collect();
    tracing::info!(
        datagrams = s.wire.datagrams,
        segments = s.wire.segments,
        truncated_segments = s.wire.truncated_segments,
        truncated_bytes = s.wire.truncated_bytes,
        decode_drops = %errors.join(","),
        flows_opened = s.flow.opened,
        flows_evicted = s.flow.evicted,
        reassembly_gaps = s.flow.reassembly.gaps,
        gap_bytes = s.flow.reassembly.gap_bytes,
        retransmitted_bytes = s.flow.reassembly.retransmitted_bytes,
        requests = s.http.requests,
        responses = s.http.responses,
        pairs = s.http.pairs,
        unanswered = s.http.unanswered,
        unmatched_responses = s.http.unmatched_responses,
        request_heads_lost = s.http.request_heads_lost,
        responses_lost = s.http.responses_lost,
        dropped_gap = s.http.dropped_gap,
        damaged_gap = s.http.damaged_gap,
        damaged_ended = s.http.damaged_ended,
        framing_recovered = %recovered.join(","),
        responses_held = s.http.responses_held,
        held_timeouts = s.http.held_timeouts,
        held_over_cap = s.http.held_over_cap,
        pending_overflow = s.http.pending_overflow,
        parse_errors = %parse_errors.join(","),
        records = SinkStats::get(&sink.records),
        produced = SinkStats::get(&sink.produced),
        delivered = SinkStats::get(&sink.delivered),
        failed = SinkStats::get(&sink.failed),
        failed_too_large = SinkStats::get(&sink.failed_too_large),
        spooled = SinkStats::get(&sink.spooled),
        replayed = SinkStats::get(&sink.replayed),
        dropped_spool_full = SinkStats::get(&sink.dropped_spool_full),
        spool_pending = SinkStats::get(&sink.spool_pending),
        spool_bytes = SinkStats::get(&sink.spool_bytes),
        queue_full = SinkStats::get(&sink.queue_full),
        records_too_large,
        "{what}"
    );
}

/// Records a worker hands to the sink thread at once, at most.
const RECORDS_PER_BATCH: usize = 64;
/// Bytes of records in a batch after which it is handed over, however few records it holds
/// (records may reach `--max-record-bytes`, 1 MB by default).
const RECORD_BATCH_BYTES: usize = 256 * 1024;
/// Record batches the sink thread's queue holds: with the two limits above, about 8 MiB of
/// records (plus one record per batch) wait for the sink at most. Past that the workers wait,
/// their queues fill, then the receive sockets' queues, whose drops the kernel counts.
const RECORD_QUEUE_BATCHES: usize = 32;

struct Shared {
    stop: AtomicBool,
    /// The sink failed for good: the daemon stops and exits non-zero so a supervisor restarts it.
    sink_failed: AtomicBool,
    stats: Vec<Mutex<PipelineStats>>,
    records_too_large: AtomicU64,
    /// Last loop time (µs) of each worker: the systemd watchdog is fed only while all are alive.
    heartbeats: Vec<std::sync::atomic::AtomicU64>,
    /// Batches waiting in each worker's queue, as last seen by the worker.
    queue_fill: Vec<std::sync::atomic::AtomicU64>,
    /// The receive sockets (for the kernel's drop counts) and their counters.
    sockets: Vec<Arc<UdpSocket>>,
    socket_counters: Vec<crate::ingest::SocketCounters>,
    /// Datagrams refused by --allow-source / --allow-vni.
    refused_source: std::sync::atomic::AtomicU64,
    refused_vni: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Datagrams taken off the sockets, and datagrams the kernel dropped for them.
    fn ingest(&self) -> (u64, u64) {
        let received = self
            .socket_counters
            .iter()
            .map(|c| c.received.load(Ordering::Relaxed))
            .sum();
        let drops = self
            .sockets
            .iter()
            .filter_map(|s| crate::ingest::kernel_drops(s))
            .sum();
        (received, drops)
    }
}

/// What the admin endpoint reports about the daemon.
struct DaemonStatus {
    shared: Arc<Shared>,
    sink: Arc<SinkStats>,
    kafka: bool,
}

impl crate::admin::Status for DaemonStatus {
    fn pipeline(&self) -> PipelineStats {
        total_stats(&self.shared)
    }
    fn sink(&self) -> &SinkStats {
        &self.sink
    }
    fn not_ready(&self) -> Option<String> {
        if self.shared.stop.load(Ordering::Relaxed) {
            return Some("shutting down".into());
        }
        let fill = self
            .shared
            .queue_fill
            .iter()
            .map(|q| q.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        if fill as usize * 10 > SHARD_QUEUE_BATCHES * 9 {
            return Some("worker queues above 90 %".into());
        }
        crate::admin::sink_not_ready(&self.sink, self.kafka)
    }
    fn records_too_large(&self) -> u64 {
        self.shared.records_too_large.load(Ordering::Relaxed)
    }
    fn refused(&self) -> (u64, u64) {
        (
            self.shared.refused_source.load(Ordering::Relaxed),
            self.shared.refused_vni.load(Ordering::Relaxed),
        )
    }
    fn ingest(&self) -> (u64, u64) {
        self.shared.ingest()
    }
}

/// `mirror-receiver run`: the daemon. Returns when a signal asked it to stop and everything in
/// flight was delivered (or the shutdown timeout passed).
pub fn run(args: &RunArgs) -> Result<()> {
    let signals = Signals::install()?;
    let (mut pcfg, rcfg) = args.check()?;
    let filter = args.pipeline.filter()?;
    let workers = if args.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.workers
    };
    // Each shard owns its flows, so each gets its share of the budget and of the flow count.
    pcfg.flow.memory_budget /= workers;
    pcfg.flow.max_flows = pcfg.flow.max_flows.div_ceil(workers);
    let sink_stats = Arc::new(SinkStats::default());
    let sink = open_sink(&args.output, sink_stats.clone())?;
    let sockets: Vec<Arc<UdpSocket>> = (0..workers)
        .map(|_| crate::ingest::bind_socket(args.listen, args.recv_buffer).map(Arc::new))
        .collect::<Result<_>>()?;
    let local = sockets[0].local_addr()?;
    tracing::info!(listen = %local, workers, "receiving VXLAN");

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        sink_failed: AtomicBool::new(false),
        stats: (0..workers).map(|_| Mutex::default()).collect(),
        records_too_large: Default::default(),
        heartbeats: (0..workers)
            .map(|_| std::sync::atomic::AtomicU64::new(now_us()))
            .collect(),
        queue_fill: (0..workers).map(|_| Default::default()).collect(),
        sockets: sockets.clone(),
        socket_counters: (0..workers).map(|_| Default::default()).collect(),
        refused_source: Default::default(),
        refused_vni: Default::default(),
    });
    let admission = Arc::new(args.admission()?);
    let (rec_tx, rec_rx) = bounded::<Batch>(RECORD_QUEUE_BATCHES);
    // Spare batches kept for reuse: what is in flight in the steady state (a batch being filled
    // per worker, one being sent). Bursts allocate beyond it and free on return, so a burst does
    // not leave memory behind.
    let record_pool = BatchPool::new(2 * workers + 2, RECORDS_PER_BATCH, RECORD_BATCH_BYTES / 4);
    let sink_shared = shared.clone();
    let sink_pool = record_pool.clone();
    let flush_timeout = Duration::from_secs_f64(args.shutdown_timeout);
    let sink_thread = std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            let result = sink_loop(sink, rec_rx, &sink_pool, flush_timeout);
            if result.is_err() {
                sink_shared.sink_failed.store(true, Ordering::SeqCst);
            }
            result
        })?;

    // Spare batches kept for reuse: in the steady state each receive thread fills one per shard
    // and a few are queued. Beyond that (bursts that fill the queues) batches are allocated and
    // freed on return, so a burst does not leave memory behind.
    let pool = BatchPool::new(
        2 * workers * workers + 4 * workers,
        RECV_BATCH,
        RECV_BATCH * BATCH_BYTES_PER_DATAGRAM,
    );
    let mut shard_txs = Vec::new();
    let mut worker_threads = Vec::new();
    for i in 0..workers {
        let (tx, rx) = bounded::<Batch>(SHARD_QUEUE_BATCHES);
        shard_txs.push(tx);
        let (shared, rec_tx, pcfg, rcfg) =
            (shared.clone(), rec_tx.clone(), pcfg.clone(), rcfg.clone());
        let (filter, pool, record_pool) = (filter.clone(), pool.clone(), record_pool.clone());
        worker_threads.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    let w = Worker {
                        index: i,
                        rx,
                        pool,
                        records: rec_tx,
                        record_pool,
                        shared: &shared,
                    };
                    w.run(&pcfg, filter, rcfg)
                })?,
        );
    }
    drop(rec_tx);
    let mut recv_threads = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let (shared, txs, admission, pool) = (
            shared.clone(),
            shard_txs.clone(),
            admission.clone(),
            pool.clone(),
        );
        recv_threads.push(
            std::thread::Builder::new()
                .name(format!("recv-{i}"))
                .spawn(move || {
                    let to = crate::ingest::Ingest {
                        shards: &txs,
                        pool: &pool,
                        admission: &admission,
                        counters: &shared.socket_counters[i],
                        refused_source: &shared.refused_source,
                        refused_vni: &shared.refused_vni,
                        stop: &shared.stop,
                    };
                    crate::ingest::recv_loop(&socket, &to)
                })?,
        );
    }
    drop(shard_txs);

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
    for t in recv_threads.into_iter().chain(worker_threads) {
        let _ = t.join();
    }
    let sink_result = join_until(sink_thread, deadline);
    admin_stop.store(true, Ordering::SeqCst);
    let _ = admin_thread.join();
    let total = total_stats(&shared);
    log_summary(
        "stopped",
        &total,
        &sink_stats,
        shared.records_too_large.load(Ordering::Relaxed),
    );
    sink_result
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

fn total_stats(shared: &Shared) -> PipelineStats {
    let mut total = PipelineStats::default();
    for s in &shared.stats {
        let s = s.lock().map(|g| g.clone()).unwrap_or_default();
        add_stats(&mut total, &s);
    }
    total
}

/// Sums shard counters.
pub fn add_stats(total: &mut PipelineStats, s: &PipelineStats) {
    total.wire.datagrams += s.wire.datagrams;
    total.wire.bytes += s.wire.bytes;
    total.wire.segments += s.wire.segments;
    total.wire.truncated_segments += s.wire.truncated_segments;
    total.wire.truncated_bytes += s.wire.truncated_bytes;
    for (t, v) in total.wire.errors.iter_mut().zip(s.wire.errors) {
        *t += v;
    }
    total.flow.add(&s.flow);
    total.http.add(&s.http);
    total.flows_active += s.flows_active;
    total.buffered_bytes += s.buffered_bytes;
    total.filter.add(&s.filter);
    for (vni, v) in &s.vni {
        total.vni.entry(*vni).or_default().add(v);
    }
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
                    let oldest = shared.heartbeats.iter().map(|h| h.load(Ordering::Relaxed)).min().unwrap_or(0);
                    if now_us().saturating_sub(oldest) < 5_000_000 {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    } else if stuck_log.ready() {
                        tracing::error!("a worker is stuck: withholding the systemd watchdog ping");
                    }
                }
                _ = trim.tick() => release_free_memory(),
                _ = report.tick() => {
                    let total = total_stats(shared);
                    log_summary("running", &total, sink_stats, shared.records_too_large.load(Ordering::Relaxed));
                }
            }
        }
        Ok(())
    })
}

/// A worker: owns one pipeline shard, takes the batches of datagrams of its flows, and sends
/// their records to the sink thread.
struct Worker<'a> {
    index: usize,
    rx: Receiver<Batch>,
    pool: BatchPool,
    records: Sender<Batch>,
    record_pool: BatchPool,
    shared: &'a Shared,
}

impl Worker<'_> {
    fn run(self, pcfg: &PipelineConfig, filter: Arc<crate::filter::Filter>, rcfg: RecordConfig) {
        let Worker {
            index,
            rx,
            pool,
            records,
            record_pool,
            shared,
        } = self;
        let mut pipeline = Pipeline::new(pcfg).with_filter(filter);
        let encoder = Encoder::new(rcfg);
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut next_expire = 0;
        let mut out = RecordsOut {
            batch: record_pool.take(),
            pool: record_pool,
            tx: records,
        };
        let take = |pipeline: &mut Pipeline, batch: Batch, now: u64| {
            for d in batch.iter() {
                pipeline.datagram(d, now);
            }
            pool.give(batch);
        };
        loop {
            let msg = rx.recv_timeout(Duration::from_millis(200));
            let now = now_us();
            shared.heartbeats[index].store(now, Ordering::Relaxed);
            shared.queue_fill[index].store(rx.len() as u64, Ordering::Relaxed);
            match msg {
                Ok(batch) => {
                    take(&mut pipeline, batch, now);
                    // Take whatever else is queued before looking at the clock again.
                    for batch in rx.try_iter().take(16) {
                        take(&mut pipeline, batch, now);
                    }
                }
                // No datagrams for 200 ms: the spare record batches a burst needed are freed.
                Err(RecvTimeoutError::Timeout) => out.pool.shrink(1),
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if now >= next_expire {
                pipeline.expire(now);
                next_expire = now + 1_000_000;
                if let Ok(mut s) = shared.stats[index].lock() {
                    *s = pipeline.stats();
                }
            }
            let deliver = |k: u64, r: &[u8]| out.push(k, r);
            let drained = drain_records(
                &mut pipeline,
                &encoder,
                &mut buf,
                &shared.records_too_large,
                deliver,
            );
            if drained.and_then(|()| out.flush()).is_err() {
                break;
            }
        }
        pipeline.finish(now_us());
        let deliver = |k: u64, r: &[u8]| out.push(k, r);
        let _ = drain_records(
            &mut pipeline,
            &encoder,
            &mut buf,
            &shared.records_too_large,
            deliver,
        )
        .and_then(|()| out.flush());
        if let Ok(mut s) = shared.stats[index].lock() {
            *s = pipeline.stats();
        }
    }
}

/// A worker's encoded records on their way to the sink thread: copied into a pooled batch and
/// handed over [`RECORDS_PER_BATCH`] or [`RECORD_BATCH_BYTES`] at a time, whichever comes first,
/// and whatever is left after each drain.
struct RecordsOut {
    batch: Batch,
    pool: BatchPool,
    tx: Sender<Batch>,
}

impl RecordsOut {
    fn push(&mut self, key: u64, record: &[u8]) -> Result<(), SinkError> {
        self.batch.push_tagged(key, record);
        if self.batch.len() < RECORDS_PER_BATCH && self.batch.bytes() < RECORD_BATCH_BYTES {
            return Ok(());
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.batch, self.pool.take());
        self.tx
            .send(full)
            .map_err(|_| SinkError::Io(std::io::ErrorKind::BrokenPipe.into()))
    }
}

fn sink_loop(
    mut sink: Box<dyn Sink>,
    records: Receiver<Batch>,
    pool: &BatchPool,
    flush: Duration,
) -> Result<()> {
    // Housekeeping (delivery reports, the grace check, spool writes) runs whenever the queue is
    // empty, and at least this often under a load that never lets it empty.
    const IDLE_EVERY: Duration = Duration::from_millis(100);
    let mut last_idle = Instant::now();
    loop {
        match records.recv_timeout(IDLE_EVERY) {
            Ok(batch) => {
                for (key, record) in batch.iter_tagged() {
                    sink.send(key, record)?;
                }
                pool.give(batch);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if records.is_empty() || last_idle.elapsed() >= IDLE_EVERY {
            sink.idle()?;
            last_idle = Instant::now();
        }
    }
    match sink.flush(flush) {
        // By design: undelivered records wait in the spool for the next start.
        Err(SinkError::Spooled(n, dir)) => {
            tracing::warn!(records = n, dir = %dir.display(), "left in the spool for the next start");
            Ok(())
        }
        other => Ok(other?),
    }
}

/// `mirror-receiver send`: the VXLAN datagrams of a capture, paced, to `--to`. Returns how many
/// were sent.
pub fn send(args: &crate::config::SendArgs) -> Result<u64> {
    use std::net::ToSocketAddrs;
    let to = args
        .to
        .to_socket_addrs()
        .with_context(|| format!("--to {}: not an address", args.to))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--to {}: resolves to no address", args.to))?;
    let mut payloads = Vec::new();
    let mut reader = CaptureReader::open(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    while let Some(frame) = reader.next_frame() {
        let frame = frame.with_context(|| format!("reading {}", args.file.display()))?;
        if let Some(link) = frame.link
            && let Ok(wire::CaptureFrame::Vxlan(p)) = wire::decode_capture_frame(link, &frame.data)
        {
            payloads.push(p.to_vec());
        }
    }
    if payloads.is_empty() {
        anyhow::bail!(
            "{} holds no VXLAN datagrams (UDP to port 4789)",
            args.file.display()
        );
    }
    let bind: std::net::SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    let start = Instant::now();
    let mut sent = 0u64;
    for _ in 0..args.loops {
        for p in &payloads {
            if args.rate > 0 {
                // Pace against the clock, not per datagram, so the average rate holds.
                let due = start + Duration::from_secs_f64(sent as f64 / args.rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            socket
                .send_to(p, to)
                .with_context(|| format!("sending to {to}"))?;
            sent += 1;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_batches_are_bounded_in_count_and_bytes() {
        let (tx, rx) = bounded::<Batch>(RECORD_QUEUE_BATCHES);
        let mut out = RecordsOut {
            batch: Batch::default(),
            pool: BatchPool::new(2, RECORDS_PER_BATCH, 1024),
            tx,
        };
        // Small records: handed over 64 at a time.
        for i in 0..RECORDS_PER_BATCH as u64 * 2 + 5 {
            out.push(i, b"{}").unwrap();
        }
        let sizes: Vec<usize> = rx.try_iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [RECORDS_PER_BATCH, RECORDS_PER_BATCH]);
        out.flush().unwrap();
        assert_eq!(rx.try_iter().map(|b| b.len()).collect::<Vec<_>>(), [5]);
        // Large records: handed over once the batch passes the byte limit.
        let big = vec![b'x'; RECORD_BATCH_BYTES / 2 + 1];
        for i in 0..5 {
            out.push(i, &big).unwrap();
        }
        let batches: Vec<Batch> = rx.try_iter().collect();
        assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), [2, 2]);
        assert!(batches.iter().all(|b| b.bytes() == 2 * big.len()));
        assert_eq!(out.batch.len(), 1, "the fifth waits for more");
    }
}
