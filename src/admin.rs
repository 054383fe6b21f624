//! The admin endpoint: `/healthz` (the process runs), `/readyz` (the receiver can deliver: the NLB
//! target group's health check uses it, so an instance that cannot deliver stops getting traffic)
//! and `/metrics` (Prometheus text, rendered by metrics-exporter-prometheus from the counters of
//! the pipeline shards and the sink at scrape time).
//!
//! The server (tiny_http) runs on its own thread and never touches the packet path: it reads
//! snapshots the workers publish about once a second and the sink's atomic counters.

use crate::http::ParseError;
use crate::pipeline::PipelineStats;
use crate::sink::{SinkStats, epoch_secs};
use crate::wire::DecodeError;
use metrics::{counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What the admin endpoint reads to answer.
pub trait Status: Send + Sync + 'static {
    /// Counters of all shards, summed.
    fn pipeline(&self) -> PipelineStats;
    fn sink(&self) -> &SinkStats;
    /// Why the receiver is not ready, or `None` when it is.
    fn not_ready(&self) -> Option<String>;
    /// Counters that belong to the process rather than a shard (records too large...).
    fn records_too_large(&self) -> u64;
    /// Datagrams refused by source and by VNI (--allow-source, --allow-vni).
    fn refused(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Datagrams taken off the receive sockets, and datagrams the kernel dropped for them
    /// because their receive queues were full.
    fn ingest(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// Counters kept by the process rather than by a pipeline shard.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessCounters {
    pub records_too_large: u64,
    /// Datagrams refused by source and by VNI.
    pub refused: (u64, u64),
    /// Datagrams taken off the receive sockets.
    pub received: u64,
    /// Datagrams the kernel dropped for the receive sockets (receive queue full).
    pub kernel_drops: u64,
}

/// Renders every counter in Prometheus text format.
pub struct Metrics {
    recorder: PrometheusRecorder,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            recorder: PrometheusBuilder::new().build_recorder(),
        }
    }
}

impl Metrics {
    /// Sets every metric from the snapshots and renders the exposition text.
    pub fn render(&self, p: &PipelineStats, s: &SinkStats, c: &ProcessCounters) -> String {
        metrics::with_local_recorder(&self.recorder, || {
            gauge!("mirror_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            counter!("mirror_received_datagrams_total").absolute(c.received);
            counter!("mirror_kernel_drops_total").absolute(c.kernel_drops);
            counter!("mirror_datagrams_total").absolute(p.wire.datagrams);
            counter!("mirror_datagram_bytes_total").absolute(p.wire.bytes);
            counter!("mirror_segments_total").absolute(p.wire.segments);
            counter!("mirror_truncated_segments_total").absolute(p.wire.truncated_segments);
            for e in DecodeError::ALL {
                counter!("mirror_decode_drops_total", "reason" => e.as_str())
                    .absolute(p.wire.errors[e.index()]);
            }
            for (vni, v) in &p.vni {
                let vni = if *vni == crate::flow::OTHER_VNI {
                    "other".to_owned()
                } else {
                    vni.to_string()
                };
                counter!("mirror_vni_datagrams_total", "vni" => vni.clone()).absolute(v.datagrams);
                counter!("mirror_vni_bytes_total", "vni" => vni.clone()).absolute(v.bytes);
                counter!("mirror_vni_drops_total", "vni" => vni.clone()).absolute(v.dropped);
                counter!("mirror_vni_pairs_total", "vni" => vni.clone()).absolute(v.pairs);
                counter!("mirror_vni_unanswered_total", "vni" => vni.clone())
                    .absolute(v.unanswered);
                vni_flow_http(&vni, v);
            }
            let f = &p.flow;
            gauge!("mirror_flows_active").set(p.flows_active as f64);
            gauge!("mirror_memory_budget_used_bytes").set(p.buffered_bytes as f64);
            counter!("mirror_flows_opened_total").absolute(f.opened);
            for (reason, n) in f.closed_by_reason() {
                counter!("mirror_flows_closed_total", "reason" => reason.as_str()).absolute(n);
            }
            counter!("mirror_reassembly_gaps_total").absolute(f.reassembly.gaps);
            counter!("mirror_reassembly_gap_bytes_total").absolute(f.reassembly.gap_bytes);
            counter!("mirror_reassembly_out_of_order_segments_total")
                .absolute(f.reassembly.ooo_segments);
            counter!("mirror_reassembly_retransmitted_bytes_total")
                .absolute(f.reassembly.retransmitted_bytes);
            let h = &p.http;
            counter!("mirror_http_requests_total").absolute(h.requests);
            counter!("mirror_http_responses_total").absolute(h.responses);
            counter!("mirror_http_pairs_total").absolute(h.pairs);
            counter!("mirror_http_unanswered_requests_total").absolute(h.unanswered);
            counter!("mirror_http_unmatched_responses_total").absolute(h.unmatched_responses);
            counter!("mirror_http_messages_dropped_total", "reason" => "gap")
                .absolute(h.dropped_gap);
            counter!("mirror_http_messages_dropped_total", "reason" => "response_lost")
                .absolute(h.responses_lost);
            counter!("mirror_http_messages_dropped_total", "reason" => "incomplete")
                .absolute(h.responses_incomplete);
            for e in ParseError::ALL {
                counter!("mirror_http_parse_errors_total", "kind" => e.as_str())
                    .absolute(h.parse_errors[e.index()]);
            }
            counter!("mirror_http_bodies_truncated_total").absolute(h.bodies_truncated);
            counter!("mirror_http_decode_failures_total").absolute(h.decode_failures);
            counter!("mirror_records_too_large_total").absolute(c.records_too_large);
            counter!("mirror_ingest_refused_total", "reason" => "source_not_allowed")
                .absolute(c.refused.0);
            counter!("mirror_ingest_refused_total", "reason" => "vni_not_allowed")
                .absolute(c.refused.1);
            counter!("mirror_filter_passed_total").absolute(p.filter.passed);
            for r in crate::filter::DropReason::ALL {
                counter!("mirror_filter_dropped_total", "reason" => r.as_str())
                    .absolute(p.filter.dropped_by(r));
            }
            let g = SinkStats::get;
            counter!("mirror_sink_records_total").absolute(g(&s.records));
            counter!("mirror_sink_produced_total").absolute(g(&s.produced));
            counter!("mirror_sink_delivered_total").absolute(g(&s.delivered));
            counter!("mirror_sink_failed_total", "kind" => "too_large")
                .absolute(g(&s.failed_too_large));
            counter!("mirror_sink_failed_total", "kind" => "invalid")
                .absolute(g(&s.failed_invalid));
            counter!("mirror_sink_spooled_total").absolute(g(&s.spooled));
            counter!("mirror_sink_replayed_total").absolute(g(&s.replayed));
            counter!("mirror_sink_dropped_total", "reason" => "spool_full")
                .absolute(g(&s.dropped_spool_full));
            counter!("mirror_sink_queue_full_total").absolute(g(&s.queue_full));
            counter!("mirror_spool_corrupt_frames_total").absolute(g(&s.spool_corrupt_frames));
            counter!("mirror_spool_torn_bytes_total").absolute(g(&s.spool_torn_bytes));
            gauge!("mirror_spool_bytes").set(g(&s.spool_bytes) as f64);
            gauge!("mirror_spool_pending_records").set(g(&s.spool_pending) as f64);
            gauge!("mirror_sink_up").set(g(&s.destination_up) as f64);
        });
        self.recorder.handle().render()
    }
}

/// The flow, reassembly and HTTP counters of one mirror session.
fn vni_flow_http(vni: &str, v: &crate::pipeline::VniStats) {
    let (f, h) = (&v.flow, &v.http);
    let vni = vni.to_owned();
    let closed = f.closed_by_reason();
    let closed_total: u64 = closed.iter().map(|c| c.1).sum();
    gauge!("mirror_vni_flows_active", "vni" => vni.clone())
        .set(f.opened.saturating_sub(closed_total) as f64);
    counter!("mirror_vni_flows_opened_total", "vni" => vni.clone()).absolute(f.opened);
    for (reason, n) in closed {
        counter!("mirror_vni_flows_closed_total", "vni" => vni.clone(), "reason" => reason.as_str())
            .absolute(n);
    }
    let r = &f.reassembly;
    counter!("mirror_vni_reassembly_gaps_total", "vni" => vni.clone()).absolute(r.gaps);
    counter!("mirror_vni_reassembly_gap_bytes_total", "vni" => vni.clone()).absolute(r.gap_bytes);
    counter!("mirror_vni_reassembly_out_of_order_segments_total", "vni" => vni.clone())
        .absolute(r.ooo_segments);
    counter!("mirror_vni_reassembly_retransmitted_bytes_total", "vni" => vni.clone())
        .absolute(r.retransmitted_bytes);
    counter!("mirror_vni_http_requests_total", "vni" => vni.clone()).absolute(h.requests);
    counter!("mirror_vni_http_responses_total", "vni" => vni.clone()).absolute(h.responses);
    counter!("mirror_vni_http_unmatched_responses_total", "vni" => vni.clone())
        .absolute(h.unmatched_responses);
    for (reason, n) in [
        ("gap", h.dropped_gap),
        ("response_lost", h.responses_lost),
        ("incomplete", h.responses_incomplete),
    ] {
        counter!("mirror_vni_http_messages_dropped_total", "vni" => vni.clone(), "reason" => reason)
            .absolute(n);
    }
    for e in ParseError::ALL {
        counter!("mirror_vni_http_parse_errors_total", "vni" => vni.clone(), "kind" => e.as_str())
            .absolute(h.parse_errors[e.index()]);
    }
}

/// Readiness of the sink alone: the destination takes records, Kafka answered a metadata
/// request within the last 10 s (when Kafka is the sink), and the spool is below 90 % full.
pub fn sink_not_ready(s: &SinkStats, kafka: bool) -> Option<String> {
    if SinkStats::get(&s.destination_up) == 0 {
        return Some(if kafka {
            "kafka not taking records (spooling)".into()
        } else {
            "sink not taking records".into()
        });
    }
    if kafka && epoch_secs().saturating_sub(SinkStats::get(&s.metadata_ok_at)) > 10 {
        return Some("no kafka metadata within 10 s".into());
    }
    let max = SinkStats::get(&s.spool_max_bytes);
    if max > 0 && SinkStats::get(&s.spool_bytes) * 10 > max * 9 {
        return Some("spool above 90 % of --spool-max-bytes".into());
    }
    None
}

/// Serves the admin endpoint on `listen` until `stop` is set. Returns the bound address.
pub fn serve(
    listen: SocketAddr,
    status: Arc<dyn Status>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let server = tiny_http::Server::http(listen).map_err(std::io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("admin endpoint not on an IP socket"))?;
    let metrics = Metrics::default();
    let thread = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(200)) else {
                    continue;
                };
                let (code, body, kind) = match req.url().split('?').next().unwrap_or("") {
                    "/healthz" => (200, "ok\n".to_owned(), "text/plain"),
                    "/readyz" => match status.not_ready() {
                        None => (200, "{\"ready\":true}\n".to_owned(), "application/json"),
                        Some(why) => (
                            503,
                            format!("{}\n", serde_json::json!({"ready": false, "reason": why})),
                            "application/json",
                        ),
                    },
                    "/metrics" => {
                        // Read before the pipeline snapshot: a datagram counted as received
                        // may not be processed yet, never the other way round.
                        let (received, kernel_drops) = status.ingest();
                        let counters = ProcessCounters {
                            records_too_large: status.records_too_large(),
                            refused: status.refused(),
                            received,
                            kernel_drops,
                        };
                        let text = metrics.render(&status.pipeline(), status.sink(), &counters);
                        (200, text, "text/plain; version=0.0.4")
                    }
                    _ => (404, "not found\n".to_owned(), "text/plain"),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", kind)
                    .expect("static header is valid");
                let _ = req.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(code)
                        .with_header(header),
                );
            }
        })?;
    Ok((bound, thread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_counters_with_labels() {
        let mut p = PipelineStats::default();
        p.wire.datagrams = 42;
        p.wire.errors[DecodeError::NotTcp.index()] = 3;
        p.http.pairs = 7;
        p.vni.insert(
            99,
            crate::pipeline::VniStats {
                datagrams: 40,
                pairs: 7,
                ..Default::default()
            },
        );
        let s = SinkStats::default();
        SinkStats::set(&s.spool_bytes, 1234);
        SinkStats::set(&s.spool_torn_bytes, 7);
        let text = Metrics::default().render(&p, &s, &ProcessCounters::default());
        assert!(text.contains("mirror_datagrams_total 42"), "{text}");
        assert!(
            text.contains("mirror_decode_drops_total{reason=\"not_tcp\"} 3"),
            "{text}"
        );
        assert!(text.contains("mirror_http_pairs_total 7"));
        assert!(text.contains("mirror_vni_pairs_total{vni=\"99\"} 7"));
        assert!(text.contains("mirror_spool_bytes 1234"));
        assert!(text.contains("mirror_spool_torn_bytes_total 7"), "{text}");
        assert!(
            text.contains("mirror_spool_corrupt_frames_total 0"),
            "{text}"
        );
        // A second render reflects new values (counters are set, not added).
        p.wire.datagrams = 50;
        let m = Metrics::default();
        m.render(&p, &s, &ProcessCounters::default());
        assert!(
            m.render(&p, &s, &ProcessCounters::default())
                .contains("mirror_datagrams_total 50")
        );
    }

    #[test]
    fn sink_readiness_reasons() {
        let s = SinkStats::default();
        assert!(sink_not_ready(&s, false).unwrap().contains("not taking"));
        SinkStats::set(&s.destination_up, 1);
        assert_eq!(sink_not_ready(&s, false), None);
        assert!(sink_not_ready(&s, true).unwrap().contains("metadata"));
        SinkStats::set(&s.metadata_ok_at, epoch_secs());
        assert_eq!(sink_not_ready(&s, true), None);
        SinkStats::set(&s.spool_max_bytes, 100);
        SinkStats::set(&s.spool_bytes, 95);
        assert!(sink_not_ready(&s, true).unwrap().contains("spool"));
    }
}
