//! The admin endpoint: `/healthz` (the process runs), `/readyz` (the receiver can deliver: the NLB
//! target group's health check uses it, so an instance that cannot deliver stops getting traffic)
//! and `/metrics` (OpenMetrics text, written by prometheus-client from the counters of the
//! pipeline shards and the sink at scrape time).
//!
//! The server (tiny_http) runs on its own thread and never touches the packet path: it reads
//! snapshots the workers publish about once a second and the sink's atomic counters.

use crate::http::{ParseError, Recovery};
use crate::pipeline::{PipelineStats, VniStats};
use crate::sink::{SinkStats, epoch_secs};
use crate::wire::DecodeError;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    MetricEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::fmt::{self, Write as _};
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

/// The `/metrics` exposition (OpenMetrics text, written by prometheus-client): every counter read
/// from `status` when it is scraped, written into the caller's buffer with no allocation of its
/// own. (An exporter that builds a map of owned names and label sets per scrape would leave
/// blocks of many sizes in the admin thread's allocator caches, and the RSS would creep up with
/// every scrape.)
pub struct Metrics {
    registry: Registry,
}

/// Content type of the exposition.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Metrics {
    pub fn new(status: Arc<dyn Status>) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition { status }));
        Metrics { registry }
    }

    /// Writes the exposition into `out`, replacing what it held.
    pub fn render(&self, out: &mut String) {
        out.clear();
        // Writing into a String cannot fail, and the encoder only fails when its writer does.
        let _ = prometheus_client::encoding::text::encode(out, &self.registry);
    }
}

struct Exposition {
    status: Arc<dyn Status>,
}

impl fmt::Debug for Exposition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Exposition")
    }
}

impl Collector for Exposition {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        encode(&mut Families(encoder), &*self.status)
    }
}

/// Writes metric families: a counter's samples get the `_total` suffix from the encoder.
struct Families<'a>(DescriptorEncoder<'a>);

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn metric_type(self) -> MetricType {
        match self {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
        }
    }

    fn sample(self, v: u64, m: MetricEncoder<'_>) -> fmt::Result {
        match self {
            Kind::Counter => ConstCounter::new(v).encode(m),
            Kind::Gauge => ConstGauge::new(v).encode(m),
        }
    }
}

impl Families<'_> {
    /// A family of one sample without labels.
    fn one(&mut self, kind: Kind, name: &str, help: &str, v: u64) -> fmt::Result {
        kind.sample(
            v,
            self.0
                .encode_descriptor(name, help, None, kind.metric_type())?,
        )
    }

    /// A family of one sample per label set.
    fn labelled<L: EncodeLabelSet>(
        &mut self,
        kind: Kind,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut m = self
            .0
            .encode_descriptor(name, help, None, kind.metric_type())?;
        for (labels, v) in series {
            kind.sample(v, m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        self.labelled(Kind::Counter, name, help, series)
    }
}

/// A mirror session as a label value: its VNI, or `other` for the sessions past the tracked ones.
#[derive(Clone, Copy)]
struct Vni(u32);

impl EncodeLabelValue for Vni {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        if self.0 == crate::flow::OTHER_VNI {
            encoder.write_str("other")
        } else {
            encoder.write_str(itoa::Buffer::new().format(self.0))
        }
    }
}

type One<V> = [(&'static str, V); 1];

fn label<V>(key: &'static str, value: V) -> One<V> {
    [(key, value)]
}

/// Every metric, read from `status`.
fn encode(out: &mut Families<'_>, status: &dyn Status) -> fmt::Result {
    // Read before the pipeline snapshot: a datagram counted as received may not be processed
    // yet, never the other way round.
    let (received, kernel_drops) = status.ingest();
    let (records_too_large, refused) = (status.records_too_large(), status.refused());
    let p = &status.pipeline();
    let s = status.sink();
    let m = out.0.encode_descriptor(
        "mirror_build",
        "The receiver's version.",
        None,
        MetricType::Info,
    )?;
    Info::new(label("version", env!("CARGO_PKG_VERSION"))).encode(m)?;
    let (w, f, r, h) = (&p.wire, &p.flow, &p.flow.reassembly, &p.http);
    let g = SinkStats::get;
    // (name, help, value) of the counters without labels.
    #[rustfmt::skip]
    let counters = [
        ("mirror_received_datagrams", "Datagrams taken off the receive sockets.", received),
        ("mirror_kernel_drops", "Datagrams the kernel dropped because a receive queue was full.", kernel_drops),
        ("mirror_datagrams", "Datagrams processed.", w.datagrams),
        ("mirror_datagram_bytes", "Bytes of the datagrams processed.", w.bytes),
        ("mirror_segments", "TCP segments decoded from the datagrams.", w.segments),
        ("mirror_truncated_segments", "TCP segments cut short of their IP length (packet-length or MTU truncation).", w.truncated_segments),
        ("mirror_truncated_missing_bytes", "Payload bytes truncated segments announced but did not carry.", w.truncated_bytes),
        ("mirror_flows_opened", "TCP connections opened.", f.opened),
        ("mirror_reassembly_gaps", "Holes in a stream given up on (bytes never seen).", r.gaps),
        ("mirror_reassembly_gap_bytes", "Bytes missing in those holes.", r.gap_bytes),
        ("mirror_reassembly_out_of_order_segments", "Segments that arrived ahead of a hole and waited for it.", r.ooo_segments),
        ("mirror_reassembly_retransmitted_bytes", "Bytes seen again (retransmissions and overlaps).", r.retransmitted_bytes),
        ("mirror_http_requests", "HTTP requests parsed.", h.requests),
        ("mirror_http_responses", "HTTP responses parsed.", h.responses),
        ("mirror_http_pairs", "Requests paired with their responses.", h.pairs),
        ("mirror_http_unanswered_requests", "Requests whose connection ended without a response.", h.unanswered),
        ("mirror_http_unmatched_responses", "Responses without a request to pair with.", h.unmatched_responses),
        ("mirror_http_request_heads_lost", "Responses whose request head was lost in a gap (no record can be made).", h.request_heads_lost),
        ("mirror_http_responses_held", "Response heads that arrived before their request and waited for it.", h.responses_held),
        ("mirror_http_pending_overflow", "Requests reported unanswered because too many waited for responses on their connection.", h.pending_overflow),
        ("mirror_http_bodies_truncated", "Bodies cut at --max-body-bytes.", h.bodies_truncated),
        ("mirror_http_decode_failures", "Bodies whose content-encoding did not decode (kept as sent).", h.decode_failures),
        ("mirror_records_too_large", "Records larger than the sink takes, dropped.", records_too_large),
        ("mirror_filter_passed", "Exchanges the filters kept.", p.filter.passed),
        ("mirror_sink_records", "Records handed to the sink.", g(&s.records)),
        ("mirror_sink_produced", "Records given to the destination.", g(&s.produced)),
        ("mirror_sink_delivered", "Records the destination acknowledged.", g(&s.delivered)),
        ("mirror_sink_spooled", "Records written to the disk spool.", g(&s.spooled)),
        ("mirror_sink_replayed", "Records sent again from the spool.", g(&s.replayed)),
        ("mirror_sink_queue_full", "Times the destination's queue was full.", g(&s.queue_full)),
        ("mirror_spool_corrupt_frames", "Spool frames skipped because they failed their checksum.", g(&s.spool_corrupt_frames)),
        ("mirror_spool_torn_bytes", "Bytes of a torn last spool write truncated.", g(&s.spool_torn_bytes)),
    ];
    for (name, help, v) in counters {
        out.one(Kind::Counter, name, help, v)?;
    }
    #[rustfmt::skip]
    let gauges = [
        ("mirror_flows_active", "TCP connections being tracked.", p.flows_active),
        ("mirror_memory_budget_used_bytes", "Stream bytes buffered across all connections (what --memory-budget bounds).", p.buffered_bytes),
        ("mirror_spool_bytes", "Bytes in the disk spool.", g(&s.spool_bytes)),
        ("mirror_spool_pending_records", "Records in the disk spool.", g(&s.spool_pending)),
        ("mirror_sink_up", "1 while the destination takes records, 0 while the sink spools.", g(&s.destination_up)),
    ];
    for (name, help, v) in gauges {
        out.one(Kind::Gauge, name, help, v)?;
    }
    out.counters(
        "mirror_decode_drops",
        "Datagrams dropped because they did not decode to a TCP segment, by reason.",
        DecodeError::ALL.map(|e| (label("reason", e.as_str()), w.errors[e.index()])),
    )?;
    out.counters(
        "mirror_flows_closed",
        "TCP connections closed, by reason.",
        f.closed_by_reason()
            .map(|(r, n)| (label("reason", r.as_str()), n)),
    )?;
    out.counters(
        "mirror_http_messages_dropped",
        "HTTP messages dropped, by reason.",
        [("gap", h.dropped_gap), ("response_lost", h.responses_lost)]
            .map(|(r, n)| (label("reason", r), n)),
    )?;
    out.counters(
        "mirror_http_messages_damaged",
        "HTTP messages reported with bytes missing (gap: never seen; ended: the connection ended first), by reason.",
        [("gap", h.damaged_gap), ("ended", h.damaged_ended)].map(|(r, n)| (label("reason", r), n)),
    )?;
    out.counters(
        "mirror_http_framing_recovered",
        "HTTP messages whose end was found again after a gap destroyed their framing, by how.",
        Recovery::ALL.map(|r| (label("by", r.as_str()), h.framing_recovered[r.index()])),
    )?;
    out.counters(
        "mirror_http_held_responses_released",
        "Held responses let go without their request, by reason.",
        [("timeout", h.held_timeouts), ("bytes", h.held_over_cap)]
            .map(|(r, n)| (label("reason", r), n)),
    )?;
    out.counters(
        "mirror_http_parse_errors",
        "Streams that did not parse as HTTP/1.x, by kind.",
        ParseError::ALL.map(|e| (label("kind", e.as_str()), h.parse_errors[e.index()])),
    )?;
    out.counters(
        "mirror_ingest_refused",
        "Datagrams refused by --allow-source and --allow-vni.",
        [
            ("source_not_allowed", refused.0),
            ("vni_not_allowed", refused.1),
        ]
        .map(|(r, n)| (label("reason", r), n)),
    )?;
    out.counters(
        "mirror_filter_dropped",
        "Exchanges the filters dropped, by reason.",
        crate::filter::DropReason::ALL
            .map(|r| (label("reason", r.as_str()), p.filter.dropped_by(r))),
    )?;
    out.counters(
        "mirror_sink_failed",
        "Records the destination refused for good, by kind.",
        [
            ("too_large", g(&s.failed_too_large)),
            ("invalid", g(&s.failed_invalid)),
        ]
        .map(|(k, n)| (label("kind", k), n)),
    )?;
    out.counters(
        "mirror_sink_dropped",
        "Records dropped by the sink, by reason.",
        [(label("reason", "spool_full"), g(&s.dropped_spool_full))],
    )?;
    per_vni(out, p)
}

/// A counter of each mirror session: (name, help, value).
type VniCounter = (&'static str, &'static str, fn(&VniStats) -> u64);

#[rustfmt::skip]
const VNI_COUNTERS: [VniCounter; 17] = [
    ("mirror_vni_datagrams", "Datagrams of each mirror session.", |v| v.datagrams),
    ("mirror_vni_bytes", "Bytes of each mirror session's datagrams.", |v| v.bytes),
    ("mirror_vni_drops", "Datagrams of each mirror session that did not decode to a TCP segment.", |v| v.dropped),
    ("mirror_vni_truncated_segments", "Segments of each mirror session cut short of their IP length (packet length, MTU).", |v| v.truncated_segments),
    ("mirror_vni_truncated_missing_bytes", "Payload bytes each mirror session's truncated segments did not carry.", |v| v.truncated_bytes),
    ("mirror_vni_pairs", "Request/response pairs of each mirror session.", |v| v.pairs),
    ("mirror_vni_unanswered", "Requests of each mirror session emitted without a response.", |v| v.unanswered),
    ("mirror_vni_flows_opened", "TCP connections of each mirror session opened.", |v| v.flow.opened),
    ("mirror_vni_reassembly_gaps", "Holes given up on in each mirror session's streams.", |v| v.flow.reassembly.gaps),
    ("mirror_vni_reassembly_gap_bytes", "Bytes missing in each mirror session's holes.", |v| v.flow.reassembly.gap_bytes),
    ("mirror_vni_reassembly_out_of_order_segments", "Segments of each mirror session that waited for a hole.", |v| v.flow.reassembly.ooo_segments),
    ("mirror_vni_reassembly_retransmitted_bytes", "Bytes of each mirror session seen again.", |v| v.flow.reassembly.retransmitted_bytes),
    ("mirror_vni_http_requests", "HTTP requests of each mirror session.", |v| v.http.requests),
    ("mirror_vni_http_responses", "HTTP responses of each mirror session.", |v| v.http.responses),
    ("mirror_vni_http_unmatched_responses", "Responses of each mirror session without a request.", |v| v.http.unmatched_responses),
    ("mirror_vni_http_damaged_messages", "HTTP messages of each mirror session reported with bytes missing.", |v| v.http.damaged_gap + v.http.damaged_ended),
    ("mirror_vni_http_request_heads_lost", "Responses of each mirror session whose request head was lost.", |v| v.http.request_heads_lost),
];

/// The counters of each mirror session (VNI).
fn per_vni(out: &mut Families<'_>, p: &PipelineStats) -> fmt::Result {
    let vnis = || p.vni.iter().map(|(vni, v)| (label("vni", Vni(*vni)), v));
    for (name, help, get) in VNI_COUNTERS {
        out.counters(name, help, vnis().map(|(l, v)| (l, get(v))))?;
    }
    out.labelled(
        Kind::Gauge,
        "mirror_vni_flows_active",
        "TCP connections of each mirror session being tracked.",
        vnis().map(|(l, v)| {
            let closed: u64 = v.flow.closed_by_reason().iter().map(|c| c.1).sum();
            (l, v.flow.opened.saturating_sub(closed))
        }),
    )?;
    let vni_reason = |vni: u32, key: &'static str, reason: &'static str| {
        (label("vni", Vni(vni)), label(key, reason))
    };
    out.counters(
        "mirror_vni_flows_closed",
        "TCP connections of each mirror session closed, by reason.",
        p.vni.iter().flat_map(|(vni, v)| {
            v.flow
                .closed_by_reason()
                .map(|(r, n)| (vni_reason(*vni, "reason", r.as_str()), n))
        }),
    )?;
    out.counters(
        "mirror_vni_http_messages_dropped",
        "HTTP messages of each mirror session dropped, by reason.",
        p.vni.iter().flat_map(|(vni, v)| {
            let h = &v.http;
            [("gap", h.dropped_gap), ("response_lost", h.responses_lost)]
                .map(|(r, n)| (vni_reason(*vni, "reason", r), n))
        }),
    )?;
    out.counters(
        "mirror_vni_http_parse_errors",
        "Streams of each mirror session that did not parse as HTTP/1.x, by kind.",
        p.vni.iter().flat_map(|(vni, v)| {
            ParseError::ALL.map(|e| {
                (
                    vni_reason(*vni, "kind", e.as_str()),
                    v.http.parse_errors[e.index()],
                )
            })
        }),
    )
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
    let metrics = Metrics::new(status.clone());
    let thread = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            // Every answer is written into this one buffer.
            let mut body = String::with_capacity(64 * 1024);
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(200)) else {
                    continue;
                };
                body.clear();
                let (code, kind) = match req.url().split('?').next().unwrap_or("") {
                    "/healthz" => {
                        body.push_str("ok\n");
                        (200, "text/plain")
                    }
                    "/readyz" => match status.not_ready() {
                        None => {
                            body.push_str("{\"ready\":true}\n");
                            (200, "application/json")
                        }
                        Some(why) => {
                            let json = serde_json::json!({"ready": false, "reason": why});
                            let _ = writeln!(body, "{json}");
                            (503, "application/json")
                        }
                    },
                    "/metrics" => {
                        metrics.render(&mut body);
                        (200, METRICS_CONTENT_TYPE)
                    }
                    _ => {
                        body.push_str("not found\n");
                        (404, "text/plain")
                    }
                };
                let header = tiny_http::Header::from_bytes("Content-Type", kind)
                    .expect("static header is valid");
                let _ = req.respond(tiny_http::Response::new(
                    tiny_http::StatusCode(code),
                    vec![header],
                    body.as_bytes(),
                    Some(body.len()),
                    None,
                ));
            }
        })?;
    Ok((bound, thread))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed counters, as the daemon's status would report them.
    #[derive(Default)]
    struct Fixed {
        pipeline: std::sync::Mutex<PipelineStats>,
        sink: SinkStats,
    }

    impl Status for Fixed {
        fn pipeline(&self) -> PipelineStats {
            self.pipeline.lock().unwrap().clone()
        }
        fn sink(&self) -> &SinkStats {
            &self.sink
        }
        fn not_ready(&self) -> Option<String> {
            None
        }
        fn records_too_large(&self) -> u64 {
            5
        }
        fn ingest(&self) -> (u64, u64) {
            (45, 2)
        }
    }

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
        let mut other = crate::pipeline::VniStats {
            datagrams: 1,
            ..Default::default()
        };
        other.flow.opened = 3;
        other.flow.closed_fin = 1;
        p.vni.insert(crate::flow::OTHER_VNI, other);
        let status = Arc::new(Fixed {
            pipeline: std::sync::Mutex::new(p),
            ..Default::default()
        });
        SinkStats::set(&status.sink.spool_bytes, 1234);
        SinkStats::set(&status.sink.spool_torn_bytes, 7);
        let m = Metrics::new(status.clone());
        let mut text = String::new();
        m.render(&mut text);
        for line in [
            "mirror_build_info{version=\"",
            "mirror_received_datagrams_total 45\n",
            "mirror_kernel_drops_total 2\n",
            "mirror_records_too_large_total 5\n",
            "mirror_datagrams_total 42\n",
            "mirror_decode_drops_total{reason=\"not_tcp\"} 3\n",
            "mirror_http_pairs_total 7\n",
            "mirror_vni_pairs_total{vni=\"99\"} 7\n",
            "mirror_vni_datagrams_total{vni=\"other\"} 1\n",
            "mirror_vni_flows_active{vni=\"other\"} 2\n",
            "mirror_vni_flows_closed_total{vni=\"other\",reason=\"fin\"} 1\n",
            "mirror_spool_bytes 1234\n",
            "mirror_spool_torn_bytes_total 7\n",
            "mirror_spool_corrupt_frames_total 0\n",
            "# TYPE mirror_datagrams counter\n",
            "# TYPE mirror_flows_active gauge\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Each family is described once, however many sessions it has series for.
        assert_eq!(text.matches("# TYPE mirror_vni_pairs counter").count(), 1);
        assert_eq!(text.matches("mirror_vni_pairs_total{").count(), 2);
        // A second render reflects new values (counters are read, not added) and replaces the
        // buffer's content.
        status.pipeline.lock().unwrap().wire.datagrams = 50;
        m.render(&mut text);
        assert!(text.contains("mirror_datagrams_total 50\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
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
