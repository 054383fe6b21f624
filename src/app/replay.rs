//! `mirror-receiver replay`: a capture through one pipeline into the configured sink, capture
//! timestamps driving every timeout.

use super::sink_thread::{deliver_record, open_sink};
use crate::capture::CaptureReader;
use crate::config::ReplayArgs;
use crate::http::Exchange;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use crate::record::Encoder;
use crate::sink::{Flushed, SinkStats};
use crate::wire;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    let settings = args.pipeline.check()?;
    args.output.check()?;
    let mut reader = CaptureReader::open(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let sink_stats = Arc::new(SinkStats::default());
    let mut sink = open_sink(&args.output, sink_stats.clone())?;
    let encoder = Encoder::new(settings.record);
    let mut buf = Vec::with_capacity(64 * 1024);
    let too_large = AtomicU64::new(0);
    let mut send = |id: u64, record: &[u8]| sink.send(id, record);
    let stats = replay_capture(
        &mut reader,
        args.vni,
        &settings.pipeline,
        Some(settings.filter),
        |ex| deliver_record(ex, &encoder, &mut buf, &too_large, &mut send),
    )
    .with_context(|| format!("replaying {}", args.file.display()))?;
    let flushed = sink.flush(Duration::from_secs(30));
    crate::counters::log_summary(
        "replay finished",
        &crate::counters::Snapshot {
            p: &stats,
            sink: &sink_stats,
            process: crate::counters::ProcessCounters {
                received: stats.wire.datagrams,
                records_too_large: too_large.load(Ordering::Relaxed),
                ..Default::default()
            },
        },
    );
    if let Flushed::Spooled { records, dir } = flushed? {
        anyhow::bail!(
            "{records} records are left in the spool at {} for the next start",
            dir.display()
        );
    }
    let failed = SinkStats::get(&sink_stats.failed);
    if failed > 0 {
        anyhow::bail!("{failed} records could not be delivered (see the warnings above)");
    }
    Ok(stats)
}
