//! The one table of the daemon's counters: each one's `/metrics` family, its key in the summary
//! log line, its help and how it is read from a [`Snapshot`]. `admin` writes `/metrics` from
//! [`PLAIN`], [`LABELLED`] and [`JOINED`]; [`log_summary`] is generated from the same rows, so a
//! counter's name is typed once. (The per-session families, `mirror_vni_*`, are a table of their
//! own in `admin`: the summary line has no per-session fields.)

use crate::filter::DropReason;
use crate::http::{ParseError, Recovery};
use crate::pipeline::PipelineStats;
use crate::sink::SinkStats;
use crate::wire::DecodeError;
use std::fmt;

/// What the counters are read from, at one moment.
pub struct Snapshot<'a> {
    /// Every shard's counters, summed.
    pub p: &'a PipelineStats,
    pub sink: &'a SinkStats,
    pub process: ProcessCounters,
}

/// Counters of the process rather than of a shard or the sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounters {
    /// Datagrams taken off the receive sockets (for a replay: read from the capture).
    pub received: u64,
    /// Datagrams the kernel dropped because a receive queue was full.
    pub kernel_drops: u64,
    /// Records larger than the sink takes, dropped.
    pub records_too_large: u64,
    /// Datagrams refused by `--allow-source`, by `--allow-vni`.
    pub refused_source: u64,
    pub refused_vni: u64,
    /// Datagrams a worker received for a flow another worker owns, and handed to it.
    pub handed_off: u64,
    /// 1 while the kernel steers datagrams to the worker of their flow.
    pub steering: u64,
    /// Frames taken off the capture rings (`capture`).
    pub capture_frames: u64,
    /// Frames the kernel dropped because a capture ring was full (`tp_drops`).
    pub capture_ring_drops: u64,
    /// Frames the interface or its driver dropped.
    pub capture_interface_drops: u64,
    /// Frames captured before every worker joined the fanout group, skipped.
    pub capture_startup_skipped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A counter or gauge without labels. `metric: None`: in the summary line only.
pub struct Plain {
    pub kind: Kind,
    pub metric: Option<&'static str>,
    pub key: &'static str,
    pub help: &'static str,
    pub read: fn(&Snapshot<'_>) -> u64,
}

/// One series of a [`Labelled`] family: its label value, its summary key, how it is read.
pub type Series = (&'static str, &'static str, fn(&Snapshot<'_>) -> u64);

/// A family with a fixed set of label values, each its own field in the summary line.
pub struct Labelled {
    pub kind: Kind,
    pub metric: &'static str,
    pub help: &'static str,
    pub label: &'static str,
    pub series: &'static [Series],
}

/// Calls `f(label value, n)` for each series of a [`Joined`] family.
pub type EachSeries =
    fn(&Snapshot<'_>, &mut dyn FnMut(&'static str, u64) -> fmt::Result) -> fmt::Result;

/// A family with one series per value of an enum (a reason, a kind); in the summary line, the
/// non-zero ones joined under one key: `decode_drops=not_tcp=3,vxlan_too_short=1`.
pub struct Joined {
    pub kind: Kind,
    pub metric: &'static str,
    pub key: &'static str,
    pub help: &'static str,
    pub label: &'static str,
    pub each: EachSeries,
}

/// A joined family's summary value (empty for no family).
struct JoinedValue<'a>(Option<&'a Joined>, &'a Snapshot<'a>);

impl fmt::Display for JoinedValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(family) = self.0 else {
            return Ok(());
        };
        let mut first = true;
        (family.each)(self.1, &mut |label, n| {
            if n == 0 {
                return Ok(());
            }
            let sep = if first { "" } else { "," };
            first = false;
            write!(f, "{sep}{label}={n}")
        })
    }
}

/// The summary value of the joined family with summary key `key`.
fn joined<'a>(key: &str, snap: &'a Snapshot<'a>) -> JoinedValue<'a> {
    JoinedValue(JOINED.iter().find(|j| j.key == key), snap)
}

macro_rules! metric_name {
    (_) => {
        None
    };
    ($m:literal) => {
        Some($m)
    };
}

/// Writes the tables and the summary line from one list of rows.
macro_rules! counters {
    (
        plain { $( $kind:ident $metric:tt => $key:ident, $help:literal, |$s:ident| $read:expr; )* }
        labelled { $(
            $lkind:ident $lmetric:literal, $lhelp:literal, $label:ident {
                $( $lvalue:literal => $lkey:ident: |$ls:ident| $lread:expr, )*
            }
        )* }
        joined { $(
            $jkind:ident $jmetric:literal => $jkey:ident, $jhelp:literal, $jlabel:ident,
                |$js:ident, $jf:ident| $jeach:block
        )* }
    ) => {
        /// The counters and gauges without labels.
        pub const PLAIN: &[Plain] = &[$(
            Plain {
                kind: Kind::$kind,
                metric: metric_name!($metric),
                key: stringify!($key),
                help: $help,
                read: |$s| $read,
            },
        )*];

        /// The families with a fixed set of label values.
        pub const LABELLED: &[Labelled] = &[$(
            Labelled {
                kind: Kind::$lkind,
                metric: $lmetric,
                help: $lhelp,
                label: stringify!($label),
                series: &[$( ($lvalue, stringify!($lkey), |$ls| $lread), )*],
            },
        )*];

        /// The families with one series per value of an enum.
        pub const JOINED: &[Joined] = &[$(
            Joined {
                kind: Kind::$jkind,
                metric: $jmetric,
                key: stringify!($jkey),
                help: $jhelp,
                label: stringify!($jlabel),
                each: |$js, $jf| $jeach,
            },
        )*];

        /// Logs every counter of the table as one line: `{what} key=value ...`.
        pub fn log_summary(what: &str, snap: &Snapshot<'_>) {
            tracing::info!(
                $( $key = { let $s = snap; $read }, )*
                $( $( $lkey = { let $ls = snap; $lread }, )* )*
                $( $jkey = %joined(stringify!($jkey), snap), )*
                "{what}"
            );
        }
    };
}

counters! {
    plain {
        Counter "mirror_received_datagrams" => received, "Datagrams taken off the receive sockets.", |s| s.process.received;
        Counter "mirror_kernel_drops" => kernel_drops, "Datagrams the kernel dropped because a receive queue was full.", |s| s.process.kernel_drops;
        Counter "mirror_ingest_handed_off" => handed_off, "Datagrams a worker received for a flow another worker owns and handed to it (what the kernel's steering could not classify: QinQ, IPv6 extension headers; everything while the steering is off).", |s| s.process.handed_off;
        Counter "mirror_capture_frames" => capture_frames, "Frames taken off the capture rings (capture --interface).", |s| s.process.capture_frames;
        Counter "mirror_capture_ring_drops" => capture_ring_drops, "Frames the kernel dropped because a capture ring was full (tp_drops; raise --capture-buffer or --workers).", |s| s.process.capture_ring_drops;
        Counter "mirror_capture_interface_drops" => capture_interface_drops, "Frames the captured interface or its driver dropped, as the kernel reports them.", |s| s.process.capture_interface_drops;
        Counter "mirror_capture_startup_skipped" => capture_startup_skipped, "Frames captured before every worker had joined the fanout group (each worker saw them all until then), skipped rather than reported twice.", |s| s.process.capture_startup_skipped;
        Counter "mirror_datagrams" => datagrams, "Datagrams processed.", |s| s.p.wire.datagrams;
        Counter "mirror_datagram_bytes" => datagram_bytes, "Bytes of the datagrams processed.", |s| s.p.wire.bytes;
        Counter "mirror_segments" => segments, "TCP segments decoded from the datagrams.", |s| s.p.wire.segments;
        Counter "mirror_truncated_segments" => truncated_segments, "TCP segments cut short of their IP length (packet-length or MTU truncation).", |s| s.p.wire.truncated_segments;
        Counter "mirror_truncated_missing_bytes" => truncated_bytes, "Payload bytes truncated segments announced but did not carry.", |s| s.p.wire.truncated_bytes;
        Counter "mirror_flows_opened" => flows_opened, "TCP connections opened.", |s| s.p.flow.opened;
        Counter "mirror_reassembly_gaps" => reassembly_gaps, "Holes in a stream given up on (bytes never seen).", |s| s.p.flow.reassembly.gaps;
        Counter "mirror_reassembly_gap_bytes" => gap_bytes, "Bytes missing in those holes.", |s| s.p.flow.reassembly.gap_bytes;
        Counter "mirror_reassembly_out_of_order_segments" => ooo_segments, "Segments that arrived ahead of a hole and waited for it.", |s| s.p.flow.reassembly.ooo_segments;
        Counter "mirror_reassembly_retransmitted_bytes" => retransmitted_bytes, "Bytes seen again (retransmissions and overlaps).", |s| s.p.flow.reassembly.retransmitted_bytes;
        Counter "mirror_http_requests" => requests, "HTTP requests parsed.", |s| s.p.http.requests;
        Counter "mirror_http_responses" => responses, "HTTP responses parsed.", |s| s.p.http.responses;
        Counter "mirror_http_pairs" => pairs, "Requests paired with their responses (before the filters).", |s| s.p.http.pairs;
        Counter "mirror_http_unanswered_requests" => unanswered, "Requests whose connection ended without a response.", |s| s.p.http.unanswered;
        Counter "mirror_http_unmatched_responses" => unmatched_responses, "Responses without a request to pair with.", |s| s.p.http.unmatched_responses;
        Counter "mirror_http_request_heads_lost" => request_heads_lost, "Responses whose request head was lost in a gap (no record can be made).", |s| s.p.http.request_heads_lost;
        Counter "mirror_http_responses_held" => responses_held, "Response heads that arrived before their request and waited for it.", |s| s.p.http.responses_held;
        Counter "mirror_http_pending_overflow" => pending_overflow, "Requests reported unanswered because too many waited for responses on their connection.", |s| s.p.http.pending_overflow;
        Counter "mirror_http_bodies_truncated" => bodies_truncated, "Bodies cut at --max-body-bytes.", |s| s.p.http.bodies_truncated;
        Counter "mirror_http_decode_failures" => decode_failures, "Bodies whose content-encoding did not decode (kept as sent).", |s| s.p.http.decode_failures;
        Counter "mirror_http2_streams" => h2_streams, "HTTP/2 streams that carried a request.", |s| s.p.http.h2_streams;
        Counter "mirror_http2_resets" => h2_resets, "HTTP/2 streams ended by RST_STREAM (their requests reported, answered or not).", |s| s.p.http.h2_resets;
        Counter "mirror_http2_hpack_failures" => h2_hpack_failures, "HTTP/2 header blocks that did not decode, or were skipped after one did not (the dynamic table unknown); their streams are not reported.", |s| s.p.http.h2_hpack_failures;
        Counter "mirror_http2_framing_lost" => h2_framing_lost, "HTTP/2 framing lost: gaps that may have taken whole frames (the frames found again after them, header blocks then decoded as for a connection joined mid-way), oversized frames and bytes that are not HTTP/2 (the direction given up).", |s| s.p.http.h2_framing_lost;
        Counter "mirror_http2_streams_over_limit" => h2_streams_over_limit, "HTTP/2 streams past the per-connection limit of 1024 open, not reported.", |s| s.p.http.h2_streams_over_limit;
        Counter "mirror_http2_dynamic_table_misses" => h2_dynamic_misses, "Header fields of HTTP/2 connections joined mid-way that named a dynamic-table entry from before the join (left out, never guessed).", |s| s.p.http.h2_dynamic_misses;
        Counter "mirror_http2_streams_unreadable" => h2_streams_unreadable, "HTTP/2 streams whose request head lacked :method or :path that way: not reported.", |s| s.p.http.h2_streams_unreadable;
        Counter "mirror_records_too_large" => records_too_large, "Records larger than the sink takes, dropped.", |s| s.process.records_too_large;
        Counter "mirror_filter_passed" => filter_passed, "Exchanges the filters kept.", |s| s.p.filter.passed;
        Counter "mirror_sink_records" => records, "Records handed to the sink.", |s| SinkStats::get(&s.sink.records);
        Counter "mirror_sink_produced" => produced, "Records given to the destination.", |s| SinkStats::get(&s.sink.produced);
        Counter "mirror_sink_delivered" => delivered, "Records the destination acknowledged.", |s| SinkStats::get(&s.sink.delivered);
        Counter _ => failed, "Records the destination refused for good (on /metrics by kind: mirror_sink_failed).", |s| SinkStats::get(&s.sink.failed);
        Counter "mirror_sink_spooled" => spooled, "Records written to the disk spool.", |s| SinkStats::get(&s.sink.spooled);
        Counter "mirror_sink_replayed" => replayed, "Records sent again from the spool.", |s| SinkStats::get(&s.sink.replayed);
        Counter "mirror_sink_queue_full" => queue_full, "Times the destination's queue was full.", |s| SinkStats::get(&s.sink.queue_full);
        Counter "mirror_spool_corrupt_frames" => spool_corrupt_frames, "Spool frames skipped because they failed their checksum.", |s| SinkStats::get(&s.sink.spool_corrupt_frames);
        Counter "mirror_spool_torn_bytes" => spool_torn_bytes, "Bytes of a torn last spool write truncated.", |s| SinkStats::get(&s.sink.spool_torn_bytes);
        Gauge "mirror_ingest_kernel_steering" => kernel_steering, "1 while the kernel steers each datagram to the socket of the worker that owns its inner flow (more than one worker, program attached).", |s| s.process.steering;
        Gauge "mirror_flows_active" => flows_active, "TCP connections being tracked.", |s| s.p.flows_active;
        Gauge "mirror_memory_budget_used_bytes" => buffered_bytes, "Stream bytes buffered across all connections (what --memory-budget bounds).", |s| s.p.buffered_bytes;
        Gauge "mirror_spool_bytes" => spool_bytes, "Bytes in the disk spool.", |s| SinkStats::get(&s.sink.spool_bytes);
        Gauge "mirror_spool_pending_records" => spool_pending, "Records in the disk spool.", |s| SinkStats::get(&s.sink.spool_pending);
        Gauge "mirror_sink_up" => sink_up, "1 while the destination takes records, 0 while the sink spools.", |s| SinkStats::get(&s.sink.destination_up);
    }
    labelled {
        Counter "mirror_http_messages_dropped", "HTTP messages dropped, by reason.", reason {
            "gap" => dropped_gap: |s| s.p.http.dropped_gap,
            "response_lost" => responses_lost: |s| s.p.http.responses_lost,
        }
        Counter "mirror_http_messages_damaged", "HTTP messages reported with bytes missing (gap: never seen; ended: the connection ended first), by reason.", reason {
            "gap" => damaged_gap: |s| s.p.http.damaged_gap,
            "ended" => damaged_ended: |s| s.p.http.damaged_ended,
        }
        Counter "mirror_http_held_responses_released", "Held responses let go without their request, by reason.", reason {
            "timeout" => held_timeouts: |s| s.p.http.held_timeouts,
            "bytes" => held_over_cap: |s| s.p.http.held_over_cap,
        }
        Counter "mirror_ingest_refused", "Datagrams refused by --allow-source and --allow-vni.", reason {
            "source_not_allowed" => refused_source: |s| s.process.refused_source,
            "vni_not_allowed" => refused_vni: |s| s.process.refused_vni,
        }
        Counter "mirror_sink_failed", "Records the destination refused for good, by kind.", kind {
            "too_large" => failed_too_large: |s| SinkStats::get(&s.sink.failed_too_large),
            "invalid" => failed_invalid: |s| SinkStats::get(&s.sink.failed_invalid),
        }
        Counter "mirror_sink_dropped", "Records dropped by the sink, by reason.", reason {
            "spool_full" => dropped_spool_full: |s| SinkStats::get(&s.sink.dropped_spool_full),
        }
    }
    joined {
        Counter "mirror_decode_drops" => decode_drops, "Datagrams dropped because they did not decode to a TCP segment, by reason.", reason,
            |s, f| {
                DecodeError::ALL.iter().try_for_each(|e| f(e.as_str(), s.p.wire.errors[e.index()]))
            }
        Counter "mirror_flows_closed" => flows_closed, "TCP connections closed, by reason.", reason,
            |s, f| {
                s.p.flow.closed_by_reason().iter().try_for_each(|(r, n)| f(r.as_str(), *n))
            }
        Counter "mirror_http_framing_recovered" => framing_recovered, "HTTP messages whose end was found again after a gap destroyed their framing, by how.", by,
            |s, f| {
                Recovery::ALL.iter().try_for_each(|r| f(r.as_str(), s.p.http.framing_recovered[r.index()]))
            }
        Counter "mirror_http_parse_errors" => parse_errors, "Streams that did not parse as HTTP/1.x, by kind.", kind,
            |s, f| {
                ParseError::ALL.iter().try_for_each(|e| f(e.as_str(), s.p.http.parse_errors[e.index()]))
            }
        Counter "mirror_filter_dropped" => filter_dropped, "Exchanges the filters dropped, by reason.", reason,
            |s, f| {
                DropReason::ALL.iter().try_for_each(|r| f(r.as_str(), s.p.filter.dropped_by(*r)))
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_keys_are_unique() {
        let mut metrics = HashSet::new();
        let mut keys = HashSet::new();
        for p in PLAIN {
            assert!(keys.insert(p.key), "summary key {} twice", p.key);
            if let Some(m) = p.metric {
                assert!(metrics.insert(m), "{m} twice");
            }
        }
        for l in LABELLED {
            assert!(metrics.insert(l.metric), "{} twice", l.metric);
            for (_, key, _) in l.series {
                assert!(keys.insert(*key), "summary key {key} twice");
            }
        }
        for j in JOINED {
            assert!(metrics.insert(j.metric), "{} twice", j.metric);
            assert!(keys.insert(j.key), "summary key {} twice", j.key);
        }
        assert!(
            metrics
                .iter()
                .all(|m| m.starts_with("mirror_") && !m.ends_with("_total"))
        );
    }

    #[test]
    fn a_joined_value_lists_the_non_zero_series() {
        let mut p = PipelineStats::default();
        p.wire.errors[DecodeError::NotTcp.index()] = 3;
        p.wire.errors[DecodeError::VxlanTooShort.index()] = 1;
        let sink = SinkStats::default();
        let snap = Snapshot {
            p: &p,
            sink: &sink,
            process: ProcessCounters::default(),
        };
        let drops = JOINED.iter().find(|j| j.key == "decode_drops").unwrap();
        let text = JoinedValue(Some(drops), &snap).to_string();
        let mut parts: Vec<&str> = text.split(',').collect();
        parts.sort();
        assert_eq!(parts, ["not_tcp=3", "vxlan_too_short=1"]);
        let closed = JOINED.iter().find(|j| j.key == "flows_closed").unwrap();
        assert_eq!(JoinedValue(Some(closed), &snap).to_string(), "");
    }
}
