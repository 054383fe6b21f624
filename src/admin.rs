//! The admin endpoint: `/healthz` (the process runs), `/readyz` (the receiver can deliver: the NLB
//! target group's health check uses it, so an instance that cannot deliver stops getting traffic)
//! and `/metrics` (OpenMetrics text, written by prometheus-client from the counters of the
//! pipeline shards and the sink at scrape time).
//!
//! The server (tiny_http) runs on its own thread and never touches the packet path: it reads
//! snapshots the workers publish about once a second and the sink's atomic counters.

use crate::counters::{self, Kind, ProcessCounters, Snapshot};
use crate::http::ParseError;
use crate::pipeline::{PipelineStats, VniStats};
use crate::sink::{SinkStats, epoch_secs};
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
    /// Counters of the process rather than of a shard or the sink.
    fn process(&self) -> ProcessCounters;
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

fn metric_type(kind: Kind) -> MetricType {
    match kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
    }
}

fn sample(kind: Kind, v: u64, m: MetricEncoder<'_>) -> fmt::Result {
    match kind {
        Kind::Counter => ConstCounter::new(v).encode(m),
        Kind::Gauge => ConstGauge::new(v).encode(m),
    }
}

impl Families<'_> {
    /// A family of one sample without labels.
    fn one(&mut self, kind: Kind, name: &str, help: &str, v: u64) -> fmt::Result {
        let m = self
            .0
            .encode_descriptor(name, help, None, metric_type(kind))?;
        sample(kind, v, m)
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
            .encode_descriptor(name, help, None, metric_type(kind))?;
        for (labels, v) in series {
            sample(kind, v, m.encode_family(&labels)?)?;
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

/// Every metric, read from `status`: the rows of [`crate::counters`], then each session's.
fn encode(out: &mut Families<'_>, status: &dyn Status) -> fmt::Result {
    // The process counters are read before the pipeline snapshot: a datagram counted as received may not be
    // processed yet, never the other way round.
    let process = status.process();
    let p = &status.pipeline();
    let snap = Snapshot {
        p,
        sink: status.sink(),
        process,
    };
    let m = out.0.encode_descriptor(
        "mirror_build",
        "The receiver's version.",
        None,
        MetricType::Info,
    )?;
    Info::new(label("version", env!("CARGO_PKG_VERSION"))).encode(m)?;
    for row in counters::PLAIN {
        if let Some(name) = row.metric {
            out.one(row.kind, name, row.help, (row.read)(&snap))?;
        }
    }
    for family in counters::LABELLED {
        let series = family
            .series
            .iter()
            .map(|(value, _, read)| (label(family.label, *value), read(&snap)));
        out.labelled(family.kind, family.metric, family.help, series)?;
    }
    for family in counters::JOINED {
        let mut m =
            out.0
                .encode_descriptor(family.metric, family.help, None, metric_type(family.kind))?;
        (family.each)(&snap, &mut |value, n| {
            sample(
                family.kind,
                n,
                m.encode_family(&label(family.label, value))?,
            )
        })?;
    }
    per_vni(out, p)
}

/// A counter of each mirror session: (name, help, value).
type VniCounter = (&'static str, &'static str, fn(&VniStats) -> u64);

#[rustfmt::skip]
const VNI_COUNTERS: [VniCounter; 22] = [
    ("mirror_vni_datagrams", "Datagrams of each mirror session.", |v| v.datagrams),
    ("mirror_vni_bytes", "Bytes of each mirror session's datagrams.", |v| v.bytes),
    ("mirror_vni_drops", "Datagrams of each mirror session that did not decode to a TCP segment.", |v| v.dropped),
    ("mirror_vni_truncated_segments", "Segments of each mirror session cut short of their IP length (packet length, MTU).", |v| v.truncated_segments),
    ("mirror_vni_truncated_missing_bytes", "Payload bytes each mirror session's truncated segments did not carry.", |v| v.truncated_bytes),
    ("mirror_vni_pairs", "Request/response pairs of each mirror session (before the filters, as mirror_http_pairs).", |v| v.http.pairs),
    ("mirror_vni_unanswered", "Requests of each mirror session whose connection ended without a response.", |v| v.http.unanswered),
    ("mirror_vni_filter_passed", "Exchanges of each mirror session the filters kept (records made).", |v| v.filter_passed),
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
    ("mirror_vni_http2_streams", "HTTP/2 streams of each mirror session that carried a request.", |v| v.http.h2_streams),
    ("mirror_vni_http2_resets", "HTTP/2 streams of each mirror session ended by RST_STREAM.", |v| v.http.h2_resets),
    ("mirror_vni_http2_hpack_failures", "HTTP/2 header blocks of each mirror session that did not decode or were skipped.", |v| v.http.h2_hpack_failures),
    ("mirror_vni_http2_dynamic_table_misses", "Header fields of each mirror session's HTTP/2 connections joined mid-way that named an entry from before the join.", |v| v.http.h2_dynamic_misses),
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
    use crate::wire::DecodeError;

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
        fn process(&self) -> ProcessCounters {
            ProcessCounters {
                received: 45,
                kernel_drops: 2,
                records_too_large: 5,
                ..Default::default()
            }
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
                http: crate::http::HttpStats {
                    pairs: 7,
                    ..Default::default()
                },
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
