use super::*;
use crate::flow::DataMeta;
use crate::testkit::{FIN, NO_FLAGS, RST, SYN, addr, segment};
use crate::wire::TcpFlags;

/// Records what a flow's handler sees.
#[derive(Default)]
struct Recorder {
    data: [Vec<u8>; 2],
}

#[derive(Default)]
struct Log {
    closed: Vec<(FlowKey, CloseReason, [Vec<u8>; 2])>,
}

impl StreamHandler for Recorder {
    type Ctx = Log;
    fn event(&mut self, _: &mut Log, _: &FlowKey, side: Side, ev: StreamEvent<'_>) {
        if let StreamEvent::Data(b, DataMeta { .. }) = ev {
            self.data[side.index()].extend_from_slice(b);
        }
    }
    fn buffered(&self) -> usize {
        self.data[0].len() + self.data[1].len()
    }
    fn close(&mut self, log: &mut Log, key: &FlowKey, reason: CloseReason, _: u64) {
        log.closed
            .push((*key, reason, std::mem::take(&mut self.data)));
    }
}

fn tcp<'a>(src: &str, dst: &str, seq: u32, payload: &'a [u8], flags: TcpFlags) -> TcpSegment<'a> {
    segment(addr(src), addr(dst), seq, None, flags, payload)
}

const C: &str = "10.0.0.1:40000";
const S: &str = "10.0.0.2:80";
const NONE: TcpFlags = NO_FLAGS;

#[test]
fn both_directions_meet_in_one_flow_and_fin_closes_it() {
    let mut t: FlowTable<Recorder> = FlowTable::new(FlowConfig::default());
    let mut log = Log::default();
    t.segment(7, &tcp(C, S, 1, b"ping", NONE), 0, &mut log);
    t.segment(7, &tcp(S, C, 900, b"pong", NONE), 1, &mut log);
    assert_eq!(t.len(), 1);
    t.segment(7, &tcp(C, S, 5, b"", FIN), 2, &mut log);
    t.segment(7, &tcp(S, C, 904, b"", FIN), 3, &mut log);
    assert_eq!(t.len(), 0);
    let (key, reason, data) = &log.closed[0];
    assert_eq!(*reason, CloseReason::Fin);
    assert_eq!(key.vni, 7);
    // 10.0.0.1 sorts before 10.0.0.2: the client is Lo here.
    assert_eq!(data[0], b"ping");
    assert_eq!(data[1], b"pong");
    assert_eq!(t.stats.closed_fin, 1);
}

#[test]
fn the_same_tuple_in_two_mirror_sessions_is_two_flows() {
    let mut t: FlowTable<Recorder> = FlowTable::new(FlowConfig::default());
    let mut log = Log::default();
    t.segment(1, &tcp(C, S, 1, b"a", NONE), 0, &mut log);
    t.segment(2, &tcp(C, S, 1, b"b", NONE), 0, &mut log);
    assert_eq!(t.len(), 2);
}

#[test]
fn segments_without_bytes_or_syn_open_no_flow() {
    let mut t: FlowTable<Recorder> = FlowTable::new(FlowConfig::default());
    let mut log = Log::default();
    t.segment(0, &tcp(C, S, 1, b"", NONE), 0, &mut log);
    t.segment(0, &tcp(C, S, 1, b"", RST), 0, &mut log);
    t.segment(0, &tcp(C, S, 1, b"x", RST), 0, &mut log);
    assert!(t.is_empty());
    assert_eq!(t.stats.segments_ignored, 3);
}

#[test]
fn rst_closes_the_flow() {
    let mut t: FlowTable<Recorder> = FlowTable::new(FlowConfig::default());
    let mut log = Log::default();
    t.segment(0, &tcp(C, S, 1, b"abc", NONE), 0, &mut log);
    t.segment(0, &tcp(S, C, 1, b"", RST), 1, &mut log);
    assert!(t.is_empty());
    assert_eq!(log.closed[0].1, CloseReason::Rst);
    assert_eq!(log.closed[0].2[0], b"abc");
}

#[test]
fn idle_flows_expire_and_busy_ones_stay() {
    let cfg = FlowConfig {
        idle_timeout_us: 10,
        ..FlowConfig::default()
    };
    let mut t: FlowTable<Recorder> = FlowTable::new(cfg);
    let mut log = Log::default();
    t.segment(0, &tcp(C, S, 1, b"a", NONE), 0, &mut log);
    t.segment(0, &tcp("10.0.0.3:1", S, 1, b"b", NONE), 5, &mut log);
    t.expire(12, &mut log);
    assert_eq!(t.len(), 1);
    assert_eq!(log.closed[0].1, CloseReason::Idle);
    assert_eq!(log.closed[0].2[0], b"a");
    t.expire(15, &mut log);
    assert!(t.is_empty());
    assert_eq!(t.stats.closed_idle, 2);
}

#[test]
fn a_full_table_evicts_the_least_recently_active_flow() {
    let cfg = FlowConfig {
        max_flows: 2,
        ..FlowConfig::default()
    };
    let mut t: FlowTable<Recorder> = FlowTable::new(cfg);
    let mut log = Log::default();
    t.segment(0, &tcp("10.0.0.1:1", S, 1, b"1", NONE), 0, &mut log);
    t.segment(0, &tcp("10.0.0.1:2", S, 1, b"2", NONE), 1, &mut log);
    // Touch flow 1: flow 2 becomes the least recently active.
    t.segment(0, &tcp("10.0.0.1:1", S, 2, b"1", NONE), 2, &mut log);
    t.segment(0, &tcp("10.0.0.1:3", S, 1, b"3", NONE), 3, &mut log);
    assert_eq!(t.len(), 2);
    assert_eq!(t.stats.evicted, 1);
    assert_eq!(log.closed[0].1, CloseReason::Evicted);
    assert_eq!(log.closed[0].0.lo.port(), 2);
}

#[test]
fn close_all_flushes_every_flow() {
    let mut t: FlowTable<Recorder> = FlowTable::new(FlowConfig::default());
    let mut log = Log::default();
    t.segment(0, &tcp(C, S, 1, b"a", NONE), 0, &mut log);
    t.segment(0, &tcp(C, S, 3, b"c", NONE), 0, &mut log);
    t.close_all(1, &mut log);
    assert!(t.is_empty());
    assert_eq!(log.closed[0].2[0], b"ac");
    assert_eq!(t.stats.reassembly.gap_bytes, 1);
}

#[test]
fn a_syn_with_a_new_isn_starts_a_new_connection_on_a_reused_tuple() {
    let mut t: FlowTable<Recorder> = FlowTable::new(FlowConfig::default());
    let mut log = Log::default();
    let syn = SYN;
    t.segment(0, &tcp(C, S, 100, b"", syn), 0, &mut log);
    t.segment(0, &tcp(C, S, 101, b"old", NONE), 1, &mut log);
    // The same SYN again is a retransmission, not a new connection.
    t.segment(0, &tcp(C, S, 100, b"", syn), 2, &mut log);
    assert!(
        log.closed.is_empty(),
        "{:?}",
        log.closed.iter().map(|c| c.1).collect::<Vec<_>>()
    );
    // The old connection's FINs were missed; a new one reuses the ports with another ISN.
    t.segment(0, &tcp(C, S, 9000, b"", syn), 3, &mut log);
    t.segment(0, &tcp(C, S, 9001, b"new", NONE), 4, &mut log);
    assert_eq!(log.closed.len(), 1);
    assert_eq!(log.closed[0].1, CloseReason::Reused);
    assert_eq!(log.closed[0].2[0], b"old");
    assert_eq!(t.stats.closed_reused, 1);
    t.close_all(5, &mut log);
    assert_eq!(log.closed[1].2[0], b"new");
}

#[test]
fn the_memory_budget_evicts_least_recently_active_flows() {
    let cfg = FlowConfig {
        memory_budget: 10,
        ..FlowConfig::default()
    };
    let mut t: FlowTable<Recorder> = FlowTable::new(cfg);
    let mut log = Log::default();
    t.segment(0, &tcp("10.0.0.1:1", S, 1, b"aaaa", NONE), 0, &mut log);
    t.segment(0, &tcp("10.0.0.1:2", S, 1, b"bbbb", NONE), 1, &mut log);
    // Out-of-order bytes count too.
    t.segment(0, &tcp("10.0.0.1:2", S, 20, b"zz", NONE), 2, &mut log);
    assert_eq!(t.buffered_bytes(), 10);
    assert!(log.closed.is_empty());
    t.segment(0, &tcp("10.0.0.1:3", S, 1, b"cc", NONE), 3, &mut log);
    assert_eq!(log.closed.len(), 1);
    assert_eq!(log.closed[0].1, CloseReason::MemoryBudget);
    assert_eq!(log.closed[0].0.lo.port(), 1);
    assert_eq!(t.buffered_bytes(), 8);
    assert_eq!(t.stats.evicted_memory, 1);
    t.close_all(4, &mut log);
    assert_eq!(t.buffered_bytes(), 0);
}
