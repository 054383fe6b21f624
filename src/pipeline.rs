//! The pure pipeline of one shard: datagram or capture frame in, exchanges out.
//! wire decode -> flow table (reassembly) -> HTTP sessions. No IO, no clock: the caller passes
//! `now` (µs) and drains [`Pipeline::exchanges`].

use crate::flow::{FlowConfig, FlowStats, FlowTable};
use crate::http::{Exchange, HttpConfig, HttpCtx, HttpStats, Session};
use crate::wire::{self, CaptureFrame, DecodeError, LinkType, TcpSegment};

/// Counters of the decode stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireStats {
    /// VXLAN datagrams (or capture frames) taken.
    pub datagrams: u64,
    pub bytes: u64,
    /// Frames that decoded to a TCP segment.
    pub segments: u64,
    /// Segments whose IP length exceeded the bytes present (truncated mirror packets).
    pub truncated_segments: u64,
    /// Payload bytes those segments announced but did not carry.
    pub truncated_bytes: u64,
    /// Frames dropped, by reason ([`DecodeError::index`]).
    pub errors: [u64; DecodeError::ALL.len()],
}

impl WireStats {
    pub fn count_error(&mut self, e: DecodeError) {
        self.errors[e.index()] += 1;
    }

    pub fn dropped(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// All counters of a pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub wire: WireStats,
    pub flow: FlowStats,
    pub http: HttpStats,
    pub flows_active: u64,
    /// Stream bytes buffered (what --memory-budget bounds).
    pub buffered_bytes: u64,
    /// Counters per mirror session.
    pub vni: std::collections::BTreeMap<u32, VniStats>,
    /// Exchanges kept and dropped by the filters.
    pub filter: crate::filter::FilterStats,
}

/// Counters of one mirror session (VNI).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VniStats {
    /// VXLAN datagrams with this VNI.
    pub datagrams: u64,
    /// Their bytes (VXLAN header and inner frame).
    pub bytes: u64,
    /// Datagrams whose inner frame did not decode to a TCP segment.
    pub dropped: u64,
    /// Segments cut short of their IP length (the session's packet length, an MTU).
    pub truncated_segments: u64,
    /// Payload bytes those segments announced but did not carry.
    pub truncated_bytes: u64,
    /// Exchanges the filters kept (answered or not): the records this session made.
    /// (Pairs and unanswered requests before the filters are in `http`.)
    pub filter_passed: u64,
    /// Flow and reassembly counters of this session.
    pub flow: FlowStats,
    /// HTTP counters of this session.
    pub http: HttpStats,
}

impl VniStats {
    pub fn add(&mut self, o: &VniStats) {
        self.datagrams += o.datagrams;
        self.bytes += o.bytes;
        self.dropped += o.dropped;
        self.truncated_segments += o.truncated_segments;
        self.truncated_bytes += o.truncated_bytes;
        self.filter_passed += o.filter_passed;
        self.flow.add(&o.flow);
        self.http.add(&o.http);
    }
}

/// Settings of a pipeline shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineConfig {
    pub flow: FlowConfig,
    pub http: HttpConfig,
}

pub struct Pipeline {
    table: FlowTable<Session>,
    ctx: HttpCtx,
    wire: WireStats,
    vni: std::collections::BTreeMap<u32, VniStats>,
    filter: Option<std::sync::Arc<crate::filter::Filter>>,
    filter_stats: crate::filter::FilterStats,
}

impl Pipeline {
    pub fn new(cfg: &PipelineConfig) -> Pipeline {
        Pipeline {
            table: FlowTable::new(cfg.flow),
            ctx: HttpCtx::new(cfg.http),
            wire: WireStats::default(),
            vni: std::collections::BTreeMap::new(),
            filter: None,
            filter_stats: Default::default(),
        }
    }

    /// Applies `filter` (drops and redaction) to every exchange before it is handed out.
    pub fn with_filter(mut self, filter: std::sync::Arc<crate::filter::Filter>) -> Pipeline {
        self.filter = (!filter.is_noop()).then_some(filter);
        self
    }

    /// Takes the UDP payload of a datagram received on the VXLAN port.
    pub fn datagram(&mut self, payload: &[u8], now: u64) {
        self.decoded(payload, &wire::Datagram::decode(payload), now);
    }

    /// Takes a datagram already decoded (by the ingest, which steered by its segment):
    /// `decoded` is `wire::Datagram::decode(payload)`.
    pub fn decoded(&mut self, payload: &[u8], decoded: &wire::Datagram<'_>, now: u64) {
        self.wire.datagrams += 1;
        self.wire.bytes += payload.len() as u64;
        self.vxlan(payload.len(), decoded, now);
    }

    /// Takes one frame of a capture file: VXLAN datagrams are decapsulated, plain TCP is taken as
    /// mirror session `default_vni`.
    pub fn capture_frame(&mut self, link: LinkType, frame: &[u8], default_vni: u32, now: u64) {
        self.wire.datagrams += 1;
        self.wire.bytes += frame.len() as u64;
        match wire::decode_capture_frame(link, frame) {
            Ok(CaptureFrame::Vxlan(payload)) => {
                self.vxlan(payload.len(), &wire::Datagram::decode(payload), now)
            }
            Ok(CaptureFrame::Tcp(seg)) => self.segment(default_vni, &seg, now),
            Err(e) => self.wire.count_error(e),
        }
    }

    fn vni_stats(&mut self, vni: u32) -> &mut VniStats {
        crate::flow::vni_entry(&mut self.vni, vni)
    }

    fn vxlan(&mut self, len: usize, decoded: &wire::Datagram<'_>, now: u64) {
        let (vni, segment) = match decoded {
            wire::Datagram::BadHeader(e) => return self.wire.count_error(*e),
            wire::Datagram::Inner { vni, segment } => (*vni, segment),
        };
        let stats = self.vni_stats(vni);
        stats.datagrams += 1;
        stats.bytes += len as u64;
        match segment {
            Ok(seg) => self.segment(vni, seg, now),
            Err(e) => {
                self.vni_stats(vni).dropped += 1;
                self.wire.count_error(*e);
            }
        }
    }

    /// Takes one decoded segment.
    pub fn segment(&mut self, vni: u32, seg: &TcpSegment<'_>, now: u64) {
        self.wire.segments += 1;
        if seg.missing > 0 {
            let missing = u64::from(seg.missing);
            self.wire.truncated_segments += 1;
            self.wire.truncated_bytes += missing;
            let stats = self.vni_stats(vni);
            stats.truncated_segments += 1;
            stats.truncated_bytes += missing;
        }
        self.table.segment(vni, seg, now, &mut self.ctx);
    }

    /// Idle timeouts and stale reassembly holes; call about once a second.
    pub fn expire(&mut self, now: u64) {
        self.table.expire(now, &mut self.ctx);
    }

    /// Closes every flow: requests still waiting are emitted as unanswered.
    pub fn finish(&mut self, now: u64) {
        self.table.close_all(now, &mut self.ctx);
    }

    /// Exchanges finished since the last call, filtered and redacted.
    pub fn exchanges(&mut self) -> std::vec::Drain<'_, Exchange> {
        match &self.filter {
            Some(filter) => {
                let stats = &mut self.filter_stats;
                self.ctx.out.retain_mut(|ex| filter.apply(ex, stats));
            }
            // No filter keeps everything: `passed` still counts what is kept, so that it adds
            // up with each session's `filter_passed`.
            None => self.filter_stats.passed += self.ctx.out.len() as u64,
        }
        for i in 0..self.ctx.out.len() {
            let vni = self.ctx.out[i].vni;
            self.vni_stats(vni).filter_passed += 1;
        }
        self.ctx.out.drain(..)
    }

    fn vni_snapshot(&self) -> std::collections::BTreeMap<u32, VniStats> {
        let mut out = self.vni.clone();
        for (vni, f) in &self.table.per_vni {
            out.entry(*vni).or_default().flow = *f;
        }
        for (vni, h) in &self.ctx.per_vni {
            out.entry(*vni).or_default().http = h.clone();
        }
        out
    }

    pub fn flows(&self) -> usize {
        self.table.len()
    }

    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            wire: self.wire.clone(),
            flow: self.table.stats,
            http: self.ctx.stats.clone(),
            flows_active: self.table.len() as u64,
            buffered_bytes: self.table.buffered_bytes() as u64,
            vni: self.vni_snapshot(),
            filter: self.filter_stats.clone(),
        }
    }
}
