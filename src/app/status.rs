//! What the daemon reports: the admin endpoint's view of it, and the summary log line.

use super::Shared;
use crate::counters::{ProcessCounters, Snapshot};
use crate::ingest::SHARD_QUEUE_BATCHES;
use crate::pipeline::PipelineStats;
use crate::sink::SinkStats;
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
            return Some("worker hand-off inboxes above 90 %".into());
        }
        crate::admin::sink_not_ready(&self.sink, self.kafka)
    }
    fn process(&self) -> ProcessCounters {
        self.shared.process()
    }
}

/// Logs the daemon's counters (the rows of [`crate::counters`]) as one line.
pub(super) fn log_daemon_summary(what: &str, shared: &Shared, sink: &SinkStats) {
    let process = shared.process();
    let p = total_stats(shared);
    crate::counters::log_summary(
        what,
        &Snapshot {
            p: &p,
            sink,
            process,
        },
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
