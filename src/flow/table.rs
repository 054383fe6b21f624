//! The flow table: one entry per bidirectional TCP flow, each with two reassemblers and a stream
//! handler (the HTTP session), bounded in count, expired when idle, and evicted least recently
//! active first when full.
//!
//! Flows are created only by segments that carry bytes or a SYN: a stray ACK or RST (a flood, or
//! the tail of a connection already closed) costs nothing.

use super::key::{FlowKey, Side};
use super::reassembly::{Reassembler, ReassemblyConfig, ReassemblyStats, SegmentIn, StreamEvent};
use super::seq::Seq;
use crate::wire::TcpSegment;
use lru::LruCache;

/// Why a flow ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Both directions sent FIN and every byte before it arrived.
    Fin,
    Rst,
    /// No segment for the idle timeout.
    Idle,
    /// The table was full and this flow was the least recently active.
    Evicted,
    /// The process is shutting down or the capture ended.
    Shutdown,
    /// A SYN started a new connection on the same addresses and ports.
    Reused,
    /// The shard's buffered bytes reached the memory budget and this flow was the least
    /// recently active.
    MemoryBudget,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Fin => "fin",
            CloseReason::Rst => "rst",
            CloseReason::Idle => "idle",
            CloseReason::Evicted => "evicted",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Reused => "reused",
            CloseReason::MemoryBudget => "memory_budget",
        }
    }
}

/// The consumer of a flow's two byte streams. `Ctx` is state shared by all flows of a table
/// (configuration, output queue, counters), lent to each call.
pub trait StreamHandler: Default {
    type Ctx;
    /// Something happened in the stream sent by `side`.
    fn event(&mut self, ctx: &mut Self::Ctx, key: &FlowKey, side: Side, ev: StreamEvent<'_>);
    /// The flow ends; no events follow.
    fn close(&mut self, ctx: &mut Self::Ctx, key: &FlowKey, reason: CloseReason, now: u64);
    /// Time passes (about once a second, from [`FlowTable::expire`]): deadlines of the handler's
    /// own (a held response's wait) are checked here when no segment comes.
    fn tick(&mut self, _ctx: &mut Self::Ctx, _key: &FlowKey, _now: u64) {}
    /// The flow has been idle for [`RELEASE_AFTER_US`]: free spare capacity.
    fn release(&mut self) {}
    /// Bytes the handler holds for this flow (counted against the memory budget).
    fn buffered(&self) -> usize {
        0
    }
}

/// Mirror sessions (VNIs) whose counters are kept apart; further VNIs share the entry
/// [`OTHER_VNI`], so a flood of forged VNIs cannot grow the per-VNI maps.
pub const MAX_VNI_STATS: usize = 4096;
/// The key under which VNIs beyond [`MAX_VNI_STATS`] are counted.
pub const OTHER_VNI: u32 = u32::MAX;

/// The counters of mirror session `vni` in a per-VNI map: its own entry while the map has room
/// (or already holds it), else the shared [`OTHER_VNI`] entry.
pub fn vni_entry<V: Default>(map: &mut std::collections::BTreeMap<u32, V>, vni: u32) -> &mut V {
    let key = if map.len() < MAX_VNI_STATS || map.contains_key(&vni) {
        vni
    } else {
        OTHER_VNI
    };
    map.entry(key).or_default()
}

/// A flow idle for this long (µs) gives back its buffers' spare capacity, so a connection held
/// open between requests costs little more than its table entry.
pub const RELEASE_AFTER_US: u64 = 1_000_000;

/// Limits of a flow table.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FlowConfig {
    /// A flow with no segment for this long (µs) is closed. Default 30 s (Akto's
    /// `TRAFFIC_INACTIVITY_THRESHOLD`); well under the NLB's 120 s UDP flow timeout.
    pub idle_timeout_us: u64,
    /// Flows held at once; the least recently active is evicted beyond it. Default 100,000.
    pub max_flows: usize,
    /// Bytes of stream data buffered across the table (out-of-order segments, heads and bodies
    /// in progress, requests waiting for responses). At the budget the least recently active
    /// flows are evicted. Default: unlimited (the daemon sets `--memory-budget` per shard).
    pub memory_budget: usize,
    pub reassembly: ReassemblyConfig,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            idle_timeout_us: 30_000_000,
            max_flows: 100_000,
            memory_budget: usize::MAX,
            reassembly: ReassemblyConfig::default(),
        }
    }
}

/// Counters of a flow table.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub segments: u64,
    /// Segments that would have opened a flow but carried nothing (no payload, no SYN).
    pub segments_ignored: u64,
    pub opened: u64,
    pub closed_fin: u64,
    pub closed_rst: u64,
    pub closed_idle: u64,
    pub evicted: u64,
    pub closed_shutdown: u64,
    /// Flows ended by a SYN of a new connection on the same 4-tuple.
    pub closed_reused: u64,
    /// Flows evicted because the memory budget was reached.
    pub evicted_memory: u64,
    pub reassembly: ReassemblyStats,
}

impl FlowStats {
    /// Flows closed, by reason.
    pub fn closed_by_reason(&self) -> [(CloseReason, u64); 7] {
        [
            (CloseReason::Fin, self.closed_fin),
            (CloseReason::Rst, self.closed_rst),
            (CloseReason::Idle, self.closed_idle),
            (CloseReason::Evicted, self.evicted),
            (CloseReason::Shutdown, self.closed_shutdown),
            (CloseReason::Reused, self.closed_reused),
            (CloseReason::MemoryBudget, self.evicted_memory),
        ]
    }

    /// Adds another set of counters to these.
    pub fn add(&mut self, o: &FlowStats) {
        self.segments += o.segments;
        self.segments_ignored += o.segments_ignored;
        self.opened += o.opened;
        self.closed_fin += o.closed_fin;
        self.closed_rst += o.closed_rst;
        self.closed_idle += o.closed_idle;
        self.evicted += o.evicted;
        self.closed_shutdown += o.closed_shutdown;
        self.closed_reused += o.closed_reused;
        self.evicted_memory += o.evicted_memory;
        self.reassembly.add(&o.reassembly);
    }

    fn count_close(&mut self, reason: CloseReason) {
        match reason {
            CloseReason::Fin => self.closed_fin += 1,
            CloseReason::Rst => self.closed_rst += 1,
            CloseReason::Idle => self.closed_idle += 1,
            CloseReason::Evicted => self.evicted += 1,
            CloseReason::Shutdown => self.closed_shutdown += 1,
            CloseReason::Reused => self.closed_reused += 1,
            CloseReason::MemoryBudget => self.evicted_memory += 1,
        }
    }
}

struct Flow<H> {
    dirs: [Reassembler; 2],
    handler: H,
    last_seen: u64,
    /// Buffered bytes as of the last update (what `FlowTable::buffered` counts for it).
    bytes: usize,
}

impl<H: StreamHandler> Flow<H> {
    fn measure(&self) -> usize {
        self.dirs[0].buffered_bytes() + self.dirs[1].buffered_bytes() + self.handler.buffered()
    }
}

/// Gives one segment to its flow (sent by `side`): reassembly, the handler's events, the flow's
/// buffered bytes re-measured into `buffered` while at hand (a second lookup per segment cost
/// more than the measuring), the reassembly counters into `rs` (written in place: returned, the
/// counters cost a copy through the stack per segment). Returns why the flow is done, if it is.
fn feed<H: StreamHandler>(
    flow: &mut Flow<H>,
    (key, side): (&FlowKey, Side),
    input: SegmentIn<'_>,
    rst: bool,
    cfg: &FlowConfig,
    (buffered, rs): (&mut usize, &mut ReassemblyStats),
    ctx: &mut H::Ctx,
) -> Option<CloseReason> {
    flow.last_seen = input.ts;
    let Flow { dirs, handler, .. } = flow;
    if let Some(ack) = input.ack {
        dirs[side.other().index()].guess_start(ack);
    }
    let now = input.ts;
    let dir = &mut dirs[side.index()];
    let mut emit = |ev: StreamEvent<'_>| handler.event(ctx, key, side, ev);
    dir.segment(input, &cfg.reassembly, rs, &mut emit);
    dir.expire_holes(now, &cfg.reassembly, rs, &mut emit);
    let done = if rst {
        Some(CloseReason::Rst)
    } else if dirs[0].ended() && dirs[1].ended() {
        Some(CloseReason::Fin)
    } else {
        None
    };
    let bytes = flow.measure();
    *buffered = *buffered - flow.bytes + bytes;
    flow.bytes = bytes;
    done
}

/// Bidirectional flows of one shard.
pub struct FlowTable<H: StreamHandler> {
    flows: LruCache<FlowKey, Flow<H>, lru::DefaultHasher>,
    cfg: FlowConfig,
    /// Totals over all mirror sessions.
    pub stats: FlowStats,
    /// The same counters per VNI (see [`vni_entry`]).
    pub per_vni: std::collections::BTreeMap<u32, FlowStats>,
    /// Sum of every flow's `bytes`.
    buffered: usize,
}

impl<H: StreamHandler> FlowTable<H> {
    pub fn new(cfg: FlowConfig) -> Self {
        FlowTable {
            flows: LruCache::unbounded_with_hasher(lru::DefaultHasher::default()),
            cfg,
            stats: FlowStats::default(),
            per_vni: std::collections::BTreeMap::new(),
            buffered: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Counts in the totals and in mirror session `vni`.
    fn bump(&mut self, vni: u32, f: impl Fn(&mut FlowStats)) {
        f(&mut self.stats);
        f(vni_entry(&mut self.per_vni, vni));
    }

    /// Stream bytes buffered across all flows (what the memory budget bounds).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Evicts least recently active flows while the table is over its memory budget.
    fn evict_over_budget(&mut self, now: u64, ctx: &mut H::Ctx) {
        while self.buffered > self.cfg.memory_budget {
            let Some((lru, _)) = self.flows.peek_lru() else {
                break;
            };
            let lru = *lru;
            self.close(lru, CloseReason::MemoryBudget, now, ctx);
        }
    }

    /// Takes one decoded segment of mirror session `vni` at time `now` (µs).
    pub fn segment(&mut self, vni: u32, seg: &TcpSegment<'_>, now: u64, ctx: &mut H::Ctx) {
        self.bump(vni, |s| s.segments += 1);
        let (key, side) = FlowKey::new(vni, seg.src, seg.dst);
        if seg.flags.syn
            && self
                .flows
                .peek(&key)
                .is_some_and(|f| f.dirs[side.index()].is_new_connection(Seq(seg.seq)))
        {
            self.close(key, CloseReason::Reused, now, ctx);
        }
        let input = SegmentIn {
            seq: Seq(seg.seq),
            ack: seg.ack.map(Seq),
            syn: seg.flags.syn,
            fin: seg.flags.fin,
            payload: seg.payload,
            missing: seg.missing,
            ts: now,
        };
        // One lookup for a flow the table has, the key passed by reference (moved into the
        // table, it was copied through the stack per segment, and the copy stalled on the key
        // just built). A segment that opens nothing leaves no entry; a new flow in a full table
        // waits for the eviction that makes room for it.
        let opens = (!seg.payload.is_empty() || seg.missing > 0 || seg.flags.syn) && !seg.flags.rst;
        let mut opened = false;
        let mut rs = ReassemblyStats::default();
        // A new flow is put in, then found like the others on the second turn (always: were it
        // not, the segment would count as ignored rather than loop).
        let done = loop {
            if let Some(flow) = self.flows.get_mut(&key) {
                let counts = (&mut self.buffered, &mut rs);
                break feed(
                    flow,
                    (&key, side),
                    input,
                    seg.flags.rst,
                    &self.cfg,
                    counts,
                    ctx,
                );
            }
            if !opens || opened {
                self.bump(vni, |s| s.segments_ignored += 1);
                return;
            }
            if self.flows.len() >= self.cfg.max_flows.max(1) {
                self.evict_lru(now, ctx);
            }
            self.flows.put(
                key,
                Flow {
                    dirs: Default::default(),
                    handler: H::default(),
                    last_seen: now,
                    bytes: 0,
                },
            );
            opened = true;
        };
        if opened {
            self.bump(vni, |s| s.opened += 1);
        }
        if rs != ReassemblyStats::default() {
            self.bump(vni, |s| s.reassembly.add(&rs));
        }
        if let Some(reason) = done {
            self.close(key, reason, now, ctx);
        } else {
            self.evict_over_budget(now, ctx);
        }
    }

    /// Closes idle flows and gives up on stale reassembly holes. Call about once a second.
    pub fn expire(&mut self, now: u64, ctx: &mut H::Ctx) {
        while let Some((key, flow)) = self.flows.peek_lru() {
            if flow.last_seen.saturating_add(self.cfg.idle_timeout_us) > now {
                break;
            }
            let key = *key;
            self.close(key, CloseReason::Idle, now, ctx);
        }
        let cfg = &self.cfg.reassembly;
        let mut buffered = 0;
        let mut changed = Vec::new();
        for (key, flow) in self.flows.iter_mut() {
            if flow.last_seen.saturating_add(RELEASE_AFTER_US) <= now {
                flow.handler.release();
            }
            let Flow { dirs, handler, .. } = flow;
            let mut rs = ReassemblyStats::default();
            for side in [Side::Lo, Side::Hi] {
                let mut emit = |ev: StreamEvent<'_>| handler.event(ctx, key, side, ev);
                dirs[side.index()].expire_holes(now, cfg, &mut rs, &mut emit);
            }
            handler.tick(ctx, key, now);
            if rs != ReassemblyStats::default() {
                changed.push((key.vni, rs));
            }
            flow.bytes = flow.measure();
            buffered += flow.bytes;
        }
        self.buffered = buffered;
        for (vni, rs) in changed {
            self.bump(vni, |s| s.reassembly.add(&rs));
        }
    }

    /// Closes every flow (end of capture, shutdown).
    pub fn close_all(&mut self, now: u64, ctx: &mut H::Ctx) {
        while let Some((key, _)) = self.flows.peek_lru() {
            let key = *key;
            self.close(key, CloseReason::Shutdown, now, ctx);
        }
    }

    fn evict_lru(&mut self, now: u64, ctx: &mut H::Ctx) {
        if let Some((key, _)) = self.flows.peek_lru() {
            let key = *key;
            self.close(key, CloseReason::Evicted, now, ctx);
        }
    }

    fn close(&mut self, key: FlowKey, reason: CloseReason, now: u64, ctx: &mut H::Ctx) {
        let Some(mut flow) = self.flows.pop(&key) else {
            return;
        };
        self.buffered -= flow.bytes;
        self.bump(key.vni, |s| s.count_close(reason));
        let Flow { dirs, handler, .. } = &mut flow;
        let mut rs = ReassemblyStats::default();
        for side in [Side::Lo, Side::Hi] {
            let mut emit = |ev: StreamEvent<'_>| handler.event(ctx, &key, side, ev);
            dirs[side.index()].flush(now, &mut rs, &mut emit);
        }
        if rs != ReassemblyStats::default() {
            self.bump(key.vni, |s| s.reassembly.add(&rs));
        }
        flow.handler.close(ctx, &key, reason, now);
    }
}

#[cfg(test)]
mod tests;
