//! What the daemon reports: the admin endpoint's view of it, and the summary log line.

use super::Shared;
use crate::ingest::SHARD_QUEUE_BATCHES;
use crate::pipeline::PipelineStats;
use crate::sink::SinkStats;
use crate::wire;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What the admin endpoint reports about the daemon.
pub(super) struct DaemonStatus {
    pub(super) shared: Arc<Shared>,
    pub(super) sink: Arc<SinkStats>,
    pub(super) kafka: bool,
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
            .workers
            .iter()
            .map(|w| w.queue_fill.load(Ordering::Relaxed))
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

/// The sum of every worker's last published counters.
pub(super) fn total_stats(shared: &Shared) -> PipelineStats {
    let mut total = PipelineStats::default();
    for w in &shared.workers {
        let s = w.stats.lock().map(|g| g.clone()).unwrap_or_default();
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
