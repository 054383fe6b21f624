//! One connection's HTTP/1.x session: decides which side is the client from the bytes, frames both
//! directions, and pairs each request with its response.
//!
//! Pairing is in order (HTTP/1.x answers in request order, pipelined or not), with one check from
//! TCP itself: a response can only answer a request whose first byte its sender had acknowledged
//! when the response began. That keeps a response whose request was never captured (capture
//! started mid-connection, request lost in a gap) from being paired with the next request.
//!
//! A response that arrives before its request (the two directions reordered: two receive
//! sockets, an NLB) is recognised by the same numbers: it acknowledges client bytes that have not
//! been delivered yet. Its head is then *held*, its body framing not chosen (a response to HEAD
//! has none), and its bytes wait in the parser until the request arrives, bounded by the reorder
//! timeout and the held-bytes cap ([`HttpConfig`]); only then can it be unmatched.
//!
//! A gap never costs an exchange whose heads were seen: the messages keep what was seen (see
//! [`Parser`]), a request whose response was lost is reported unanswered, and a message whose
//! chunked framing a gap destroyed ends where the peer's next message says it had arrived.

use super::message::{Exchange, Message, Recovery};
use super::parser::{DropReason, Parser, Role, Step};
use super::{HttpCtx, HttpStats};
use crate::flow::{CloseReason, DataMeta, FlowKey, Seq, Side, StreamEvent, StreamHandler};
use compact_str::CompactString;
use std::collections::VecDeque;

/// How many times `max_pending_requests` a connection may hold while its oldest request has
/// waited less than the reorder timeout (its response may be lagging, not lost).
const LAGGING_PENDING: usize = 64;

#[derive(Debug, PartialEq, Eq)]
enum ReqState {
    /// Head seen, body in progress.
    InProgress,
    Complete(Box<Message>),
    /// Abandoned (gap or parse error): its response, if any, is consumed with it.
    Dropped,
}

#[derive(Debug, PartialEq, Eq)]
enum RespSlot {
    Waiting,
    Some(Box<Message>),
    /// The response was lost in a gap, or abandoned for a parse error: the request is reported
    /// unanswered.
    Dropped,
}

#[derive(Debug)]
struct Pending {
    /// Held inline (a method is short): pairing clones it without allocating.
    method: CompactString,
    seq: Option<Seq>,
    /// The request's acknowledgement: how much of the server's stream its sender had.
    ack: Option<Seq>,
    /// When its head was seen (µs).
    since: u64,
    /// Sequence number just past the request, once it is complete.
    end: Option<Seq>,
    /// Client bytes were lost after it, before the next request seen.
    gap_after: bool,
    request: ReqState,
    response: RespSlot,
}

/// A server event that came while a response head was held and a gap was among them: the
/// held head's body framing decides what the gap damages, so the gap and everything after it
/// wait, in order, until that framing is chosen (its request arrived, or it waited its time).
#[derive(Debug)]
enum Deferred {
    Data(Vec<u8>, DataMeta),
    Gap { len: u64, ts: u64 },
    End { ts: u64 },
}

impl Deferred {
    fn of(ev: &StreamEvent<'_>) -> Deferred {
        match *ev {
            StreamEvent::Data(bytes, meta) => Deferred::Data(bytes.to_vec(), meta),
            StreamEvent::Gap { len, ts } => Deferred::Gap { len, ts },
            StreamEvent::End { ts } => Deferred::End { ts },
        }
    }

    fn event(&self) -> StreamEvent<'_> {
        match self {
            Deferred::Data(bytes, meta) => StreamEvent::Data(bytes, *meta),
            &Deferred::Gap { len, ts } => StreamEvent::Gap { len, ts },
            &Deferred::End { ts } => StreamEvent::End { ts },
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Deferred::Data(bytes, _) => bytes.len(),
            _ => 0,
        }
    }
}

/// Bytes of one side seen before the client side is known.
#[derive(Debug, Default)]
struct Probe {
    buf: Vec<u8>,
    meta: Option<DataMeta>,
}

/// Where a gap in the client stream lies, once known.
#[derive(Debug, Clone, Copy)]
enum GapAt {
    None,
    /// Before any client byte: its length, placed by the next bytes.
    Unplaced(u32),
    /// From the first lost byte to the first byte after it.
    At(Seq, Seq),
}

/// HTTP state of one connection.
#[derive(Debug)]
pub struct Session {
    client: Option<Side>,
    /// The connection is HTTP/2 (its client sent the preface, or it upgraded): everything goes
    /// there.
    h2: Option<Box<h2::H2>>,
    /// The request of an `Upgrade: h2c` answered by `101`, to become stream 1 once the event
    /// that completed it is done.
    upgraded: Option<Box<Message>>,
    /// Boxed, and freed once the client side is known: most of a connection's life.
    probes: Option<Box<[Probe; 2]>>,
    requests: Parser,
    responses: Parser,
    pending: VecDeque<Pending>,
    /// Since when (µs) the response head in the parser waits for its request.
    held_since: Option<u64>,
    /// Complete responses waiting for their request (a gap in the response stream made their
    /// framing go on without it), with the time they began waiting.
    early: super::lazy::LazyDeque<(Box<Message>, u64)>,
    /// Server events behind a held head from its first gap on (see [`Deferred`]).
    deferred: super::lazy::LazyDeque<Deferred>,
    /// The latest time (µs) an event or tick brought.
    now: u64,
    /// Sequence number just past the client bytes delivered so far (data or gap).
    client_end: Option<Seq>,
    /// The same for the server's bytes.
    server_end: Option<Seq>,
    /// The client stream had a gap since the last request head: a response without a request
    /// then answers one whose head was lost.
    client_gap: bool,
    /// Where the latest gap in the client stream lies: a response left unmatched that
    /// acknowledges bytes inside it answers a request whose head was lost there.
    client_gap_at: GapAt,
    /// A held response was let go without its request (timeout, cap, request known lost): it is
    /// unmatched when it completes, not queued to wait again.
    gave_up: bool,
    /// The response in progress had its head held (it is counted as held once).
    head_held: bool,
    /// A side had a gap before the client side was known.
    probe_gaps: [bool; 2],
    /// A side's stream began without its SYN before the client side was known.
    probe_midstream: [bool; 2],
    /// A side's bytes that begin no message were skipped before the client side was known.
    probe_skipped: [bool; 2],
    /// Nothing more will arrive for a response that waits (the connection closes, or it
    /// waited its time): pair it by sequence numbers alone (see `target`).
    settling: bool,
    /// Acknowledgement numbers of the latest request head and response head: where the other
    /// direction's message before them had arrived, for a message that loses its framing later.
    last_acks: [Option<Seq>; 2],
    /// The response direction lost framing in a gap: the next response is paired by its ack.
    resynced: Resync,
    /// And that gap took a response's start there: the earliest request still waiting that
    /// the server could have answered there lost its response (see `lost_head_was`).
    head_lost: LostStart,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            client: None,
            h2: None,
            upgraded: None,
            probes: Default::default(),
            requests: Parser::new(Role::Request),
            responses: Parser::new(Role::Response),
            pending: VecDeque::new(),
            held_since: None,
            early: Default::default(),
            deferred: Default::default(),
            now: 0,
            client_end: None,
            server_end: None,
            client_gap: false,
            client_gap_at: GapAt::None,
            gave_up: false,
            head_held: false,
            settling: false,
            probe_gaps: [false; 2],
            probe_midstream: [false; 2],
            probe_skipped: [false; 2],
            last_acks: [None; 2],
            resynced: Resync::No,
            head_lost: LostStart::No,
        }
    }
}

impl StreamHandler for Session {
    type Ctx = HttpCtx;

    fn event(&mut self, ctx: &mut HttpCtx, key: &FlowKey, side: Side, ev: StreamEvent<'_>) {
        if let Some(h2) = &mut self.h2 {
            return h2.event(ctx, key, side, ev);
        }
        let Some(client) = self.client else {
            match ev {
                StreamEvent::Data(bytes, meta) => {
                    self.probe_midstream[side.index()] |= meta.midstream;
                    self.probe(ctx, key, side, bytes, meta);
                }
                StreamEvent::Gap { .. } => {
                    if let Some(p) = &mut self.probes {
                        p[side.index()] = Probe::default();
                    }
                    self.probe_gaps[side.index()] = true;
                }
                StreamEvent::End { .. } => {}
            }
            return;
        };
        if side != client && self.defer(&ev) {
            self.now = self.now.max(event_ts(&ev));
            self.resume_held(ctx, key, client, self.now, false);
        } else {
            self.process(ctx, key, client, side, ev);
        }
        self.replay_deferred(ctx, key, client, false);
        if let Some(request) = self.upgraded.take() {
            self.start_h2c(ctx, key, client, *request);
        } else if self.requests.in_tunnel() && self.responses.in_tunnel() {
            // Another protocol (WebSocket, a CONNECT tunnel): nothing more to read.
            drop((self.requests.take_tunnel(), self.responses.take_tunnel()));
        }
    }

    fn tick(&mut self, ctx: &mut HttpCtx, key: &FlowKey, now: u64) {
        self.now = self.now.max(now);
        if let Some(client) = self.client {
            self.resume_held(ctx, key, client, now, false);
            self.replay_deferred(ctx, key, client, false);
        }
    }

    fn release(&mut self) {
        self.requests.release();
        self.responses.release();
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
        }
    }

    fn buffered(&self) -> usize {
        let body = |m: &Message| m.body.capacity();
        let pending: usize = self
            .pending
            .iter()
            .map(|p| {
                let req = match &p.request {
                    ReqState::Complete(m) => body(m),
                    _ => 0,
                };
                let resp = match &p.response {
                    RespSlot::Some(m) => body(m),
                    _ => 0,
                };
                req + resp
            })
            .sum();
        self.probes
            .iter()
            .flat_map(|p| p.iter())
            .map(|p| p.buf.capacity())
            .sum::<usize>()
            + self.requests.held_bytes()
            + self.responses.held_bytes()
            + pending
            + self.early.iter().map(|(m, _)| body(m)).sum::<usize>()
            + self.h2.as_ref().map_or(0, |h| h.buffered())
            + self
                .deferred
                .iter()
                .map(|d| match d {
                    Deferred::Data(b, _) => b.capacity(),
                    _ => 0,
                })
                .sum::<usize>()
    }

    fn close(&mut self, ctx: &mut HttpCtx, key: &FlowKey, _reason: CloseReason, now: u64) {
        if let Some(h2) = &mut self.h2 {
            return h2.close(ctx, key);
        }
        let Some(client) = self.client else {
            return;
        };
        self.now = self.now.max(now);
        self.settling = true;
        self.resume_held(ctx, key, client, now, true);
        self.replay_deferred(ctx, key, client, true);
        // What the connection's end cut short is still reported, marked incomplete.
        if let Some(step) = self.responses.finish(&ctx.cfg) {
            self.apply(ctx, key, client, client.other(), step);
        }
        if let Some(step) = self.requests.finish(&ctx.cfg) {
            self.apply(ctx, key, client, client, step);
        }
        self.expire_early(ctx, key, now, true);
        self.emit_ready(ctx, key, client);
        // Upgraded as the connection ended: no HTTP/2 answer can come.
        if let Some(request) = self.upgraded.take() {
            ctx.bump(key.vni, |s| s.unanswered += 1);
            emit(ctx, key, client, request, None);
        }
        for p in std::mem::take(&mut self.pending) {
            match (p.request, p.response) {
                (ReqState::Complete(req), RespSlot::Some(resp)) => {
                    ctx.bump(key.vni, |s| s.pairs += 1);
                    emit(ctx, key, client, req, Some(resp));
                }
                (ReqState::Complete(req), RespSlot::Waiting | RespSlot::Dropped) => {
                    ctx.bump(key.vni, |s| s.unanswered += 1);
                    emit(ctx, key, client, req, None);
                }
                _ => {}
            }
        }
    }
}

impl Session {
    /// One event of a side, the client side known.
    fn process(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        client: Side,
        side: Side,
        ev: StreamEvent<'_>,
    ) {
        self.now = self.now.max(event_ts(&ev));
        let now = match ev {
            StreamEvent::Data(bytes, meta) => {
                self.process_data(ctx, key, client, side, bytes, meta);
                meta.ts
            }
            StreamEvent::Gap { len, ts } => {
                self.process_gap(ctx, key, client, side, len, ts);
                ts
            }
            StreamEvent::End { ts } => {
                // A held response's request may still come after the server's FIN: the
                // connection's close finishes it then.
                if side != client && self.held_since.is_none() {
                    if let Some(step) = self.responses.finish(&ctx.cfg) {
                        self.apply(ctx, key, client, side, step);
                    }
                }
                ts
            }
        };
        self.resume_held(ctx, key, client, now, false);
    }

    /// Bytes of a side: noted as delivered, then framed by the side's parser.
    fn process_data(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        client: Side,
        side: Side,
        bytes: &[u8],
        meta: DataMeta,
    ) {
        let end = Some(meta.seq.wrapping_add(bytes.len() as u64));
        if side == client {
            if let GapAt::Unplaced(len) = self.client_gap_at {
                // The first client bytes: the gap before them ends where they start.
                let start = Seq(meta.seq.0.wrapping_sub(len));
                self.client_gap_at = GapAt::At(start, meta.seq);
            }
            self.client_end = end;
        } else {
            if let LostStart::Unplaced(back) = self.head_lost {
                // The first server bytes after the gap: it ended where they start.
                self.head_lost = LostStart::At(Seq(meta.seq.0.wrapping_sub(back)));
            }
            self.server_end = end;
        }
        if meta.midstream {
            self.parser(client, side).mark_gap();
        }
        let skipped = self.responses.skipped_bytes;
        self.parser(client, side).feed(bytes, meta, &ctx.cfg);
        self.drive(ctx, key, client, side);
        if side != client && self.responses.skipped_bytes > skipped {
            // Server bytes that begin no response: the head of one was lost (or the
            // capture began inside it). Responses after them pair by their ack.
            self.resynced = self.resynced.or(Resync::From(meta.seq));
        }
    }

    /// `len` bytes of a side were never seen: noted where they lie, then given to the side's
    /// parser, whose message in progress may end or lose its framing.
    fn process_gap(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        client: Side,
        side: Side,
        len: u64,
        ts: u64,
    ) {
        if side == client {
            self.note_client_gap(len);
        } else {
            self.server_end = self.server_end.map(|e| e.wrapping_add(len));
            // The held head's body framing must be chosen before its bytes go on.
            self.resume_held(ctx, key, client, ts, true);
        }
        let peer_ack = self.last_acks[usize::from(side == client)];
        let parser = self.parser(client, side);
        let takes_start = parser.gap_takes_start(len);
        let (step, lost_framing) = parser.gap(len, &ctx.cfg);
        // The other direction's latest message may already say where this one ended.
        parser.end_by(peer_ack);
        let recovering = parser.recovering();
        if let Some(step) = step {
            self.apply(ctx, key, client, side, step);
        }
        if side != client && (lost_framing || recovering) {
            self.resync_after_gap(takes_start);
        }
        self.drive(ctx, key, client, side);
    }

    /// A gap of `len` bytes in the client stream: where it lies, and that requests may have
    /// been lost in it.
    fn note_client_gap(&mut self, len: u64) {
        self.client_gap_at = match self.client_end {
            Some(e) => GapAt::At(e, e.wrapping_add(len)),
            // Truncation is harmless: a gap is far shorter than 2^32 bytes.
            None => GapAt::Unplaced(len as u32),
        };
        self.client_end = self.client_end.map(|e| e.wrapping_add(len));
        self.client_gap = true;
        // A gap after the latest complete request may have held the next one.
        if let Some(p) = self.pending.back_mut()
            && p.end.is_some()
        {
            p.gap_after = true;
        }
    }

    /// A gap in the server stream cost the response parser its framing: responses may have been
    /// lost whole, so the next one is paired by its ack; and when the gap took a response's
    /// start (`takes_start`: how far before the gap's end it lay), that start is noted.
    fn resync_after_gap(&mut self, takes_start: Option<u64>) {
        let from = self.server_end.map_or(Resync::Any, Resync::From);
        self.resynced = self.resynced.or(from);
        if let Some(back) = takes_start {
            // Sequence numbers are 32 bits: so is the distance back.
            let back = back as u32;
            self.head_lost = match self.server_end {
                Some(end) => LostStart::At(Seq(end.0.wrapping_sub(back))),
                None => LostStart::Unplaced(back),
            };
        }
    }

    /// Whether a server event waits behind a held head: its first gap (the framing that
    /// decides what the gap damages is not chosen yet), and every event after it.
    fn defer(&mut self, ev: &StreamEvent<'_>) -> bool {
        let defer = if self.deferred.is_empty() {
            let held_ack = self.responses.current().and_then(|m| m.ack);
            matches!(ev, StreamEvent::Gap { .. })
                && self.held_since.is_some()
                && self.request_may_follow(held_ack)
        } else {
            true
        };
        if defer {
            self.deferred.push_back(Deferred::of(ev));
        }
        defer
    }

    /// Goes on with the deferred server events once no head is held, or all of them with
    /// `now_or_never` (the connection's close).
    fn replay_deferred(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        client: Side,
        now_or_never: bool,
    ) {
        while self.held_since.is_none() || now_or_never {
            let Some(d) = self.deferred.pop_front() else {
                break;
            };
            self.process(ctx, key, client, client.other(), d.event());
            if now_or_never {
                self.resume_held(ctx, key, client, self.now, true);
            }
        }
        self.deferred.release();
    }

    fn deferred_bytes(&self) -> usize {
        self.deferred.iter().map(Deferred::bytes).sum()
    }

    fn parser(&mut self, client: Side, side: Side) -> &mut Parser {
        if side == client {
            &mut self.requests
        } else {
            &mut self.responses
        }
    }

    /// Buffers bytes until one side shows a request line or a status line, which tells the
    /// client side (see `start_sides`).
    fn probe(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        side: Side,
        bytes: &[u8],
        meta: DataMeta,
    ) {
        let probe = &mut self.probes.get_or_insert_default()[side.index()];
        if probe.buf.is_empty() {
            probe.meta = Some(meta);
        }
        probe.buf.extend_from_slice(bytes);
        // HTTP/2: the client's preface, what may be the server's first frame, or (on a stream
        // joined mid-way or after a gap) HTTP/2 frames.
        let joined = self.probe_midstream[side.index()] || self.probe_gaps[side.index()];
        match h2::probe(&probe.buf, joined) {
            h2::Probed::Client => return self.start_h2(ctx, key, side, false),
            h2::Probed::Joined(true) => return self.start_h2(ctx, key, side, true),
            h2::Probed::Joined(false) => return self.start_h2(ctx, key, side.other(), true),
            h2::Probed::Wait => return,
            h2::Probed::No => {}
        }
        // A stream joined mid-connection is read as one after a gap: its first line may be
        // the tail of a request line whose start came before the capture.
        let after_gap = self.probe_gaps[side.index()] || self.probe_midstream[side.index()];
        let client = loop {
            break match super::detect::scan(&probe.buf, None) {
                // After a gap, a request line must name a registered method: it may be the tail
                // of one whose start was lost.
                super::detect::Scan::Found(off, super::detect::StartKind::Request)
                    if after_gap && !super::detect::known_method(&probe.buf[off..]) =>
                {
                    ctx.bump(key.vni, |s| s.skipped_bytes += off as u64 + 1);
                    probe.buf.drain(..=off);
                    if let Some(m) = &mut probe.meta {
                        m.seq = m.seq.wrapping_add(off as u64 + 1);
                    }
                    continue;
                }
                super::detect::Scan::Found(_, super::detect::StartKind::Request) => side,
                super::detect::Scan::Found(_, super::detect::StartKind::Response) => side.other(),
                super::detect::Scan::Partial(off) => {
                    self.probe_skipped[side.index()] |= off > 0;
                    ctx.bump(key.vni, |s| s.skipped_bytes += off as u64);
                    probe.buf.drain(..off);
                    if let Some(m) = &mut probe.meta {
                        m.seq = m.seq.wrapping_add(off as u64);
                    }
                    return;
                }
                super::detect::Scan::None => {
                    self.probe_skipped[side.index()] = true;
                    ctx.bump(key.vni, |s| s.skipped_bytes += probe.buf.len() as u64);
                    *probe = Probe::default();
                    return;
                }
            };
        };
        self.start_sides(ctx, key, client);
    }

    /// The client side is now known: each side's probed bytes go to its parser, which frames
    /// them as one after a gap where the side had one (or began mid-connection).
    fn start_sides(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side) {
        self.client = Some(client);
        // Messages may have been lost whole in a gap before this, or their heads among the
        // bytes skipped: responses pair by their acknowledgement numbers.
        let server = client.other().index();
        if self.probe_gaps[server] || self.probe_skipped[server] {
            self.resynced = Resync::Any;
        }
        self.client_gap |= self.probe_gaps[client.index()];
        for s in [client, client.other()] {
            if self.probe_gaps[s.index()] || self.probe_midstream[s.index()] {
                self.parser(client, s).mark_gap();
            }
            let probe = match &mut self.probes {
                Some(p) => std::mem::take(&mut p[s.index()]),
                None => Probe::default(),
            };
            if let Some(meta) = probe.meta {
                if s == client {
                    self.client_end = Some(meta.seq.wrapping_add(probe.buf.len() as u64));
                }
                self.parser(client, s).push(&probe.buf, meta);
            }
        }
        self.probes = None;
        self.drive(ctx, key, client, client);
        self.drive(ctx, key, client, client.other());
    }

    fn drive(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side, side: Side) {
        loop {
            if side != client && self.held_since.is_some() {
                return;
            }
            let step = self.parser(client, side).step(&ctx.cfg);
            if step == Step::NeedMore {
                return;
            }
            self.apply(ctx, key, client, side, step);
        }
    }

    fn apply(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side, side: Side, step: Step) {
        if side == client {
            self.apply_request(ctx, key, client, step);
        } else {
            self.apply_response(ctx, key, client, step);
        }
    }

    /// What the request parser reported.
    fn apply_request(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side, step: Step) {
        match step {
            Step::NeedMore => {}
            Step::Head => self.request_head(ctx, key, client),
            Step::Complete(msg) => self.request_complete(ctx, key, client, msg),
            Step::Dropped {
                had_head, reason, ..
            } => {
                ctx.bump(key.vni, |s| s.count_drop(reason));
                if had_head
                    && let Some(p) = self
                        .pending
                        .iter_mut()
                        .rev()
                        .find(|p| p.request == ReqState::InProgress)
                {
                    p.request = ReqState::Dropped;
                }
                self.emit_ready(ctx, key, client);
            }
        }
    }

    /// A request head: its body framing is chosen, and it joins the queue of requests waiting
    /// for their responses.
    fn request_head(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side) {
        if let Err(e) = self.requests.start_body(None) {
            ctx.bump(key.vni, |s| s.count_parse_error(e));
            return;
        }
        let Some(msg) = self.requests.current() else {
            return;
        };
        ctx.bump(key.vni, |s| s.requests += 1);
        let (seq, ack, since) = (msg.seq, msg.ack, msg.ts);
        self.client_gap = false;
        self.last_acks[0] = ack;
        self.evict_unanswered(ctx, key, client, since);
        if self.pending.capacity() == 0 {
            // Most connections have one request outstanding at a time: room for one
            // (VecDeque would start at four).
            self.pending.reserve_exact(1);
        }
        let method = match self.requests.current().and_then(Message::method) {
            Some(m) => CompactString::from(m),
            None => CompactString::default(),
        };
        self.pending.push_back(Pending {
            method,
            seq,
            ack,
            since,
            end: None,
            gap_after: false,
            request: ReqState::InProgress,
            response: RespSlot::Waiting,
        });
        // The client sends a request once the response before it has arrived: a response
        // whose framing a gap destroyed ends where this request acknowledges.
        if self.responses.recovering() {
            self.responses.end_by(ack);
            self.drive(ctx, key, client, client.other());
        }
        // A held response that may answer it is looked at once the event is through
        // (`event`): by then a request without a body is complete, and where it ends
        // tells whether the response acknowledges more than it.
    }

    /// Makes room in the queue for a request whose head was seen at `since`: a client that never
    /// gets answers has its oldest request reported unanswered. Not while its response may only
    /// lag (the directions drained out of step: a receiver behind its sockets' queues), unless
    /// the hard cap is reached too.
    fn evict_unanswered(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side, since: u64) {
        let oldest_waited = self
            .pending
            .front()
            .is_some_and(|p| since.saturating_sub(p.since) >= ctx.cfg.hold_timeout_us);
        let n = self.pending.len();
        if n >= ctx.cfg.max_pending_requests
            && (oldest_waited || n >= ctx.cfg.max_pending_requests * LAGGING_PENDING)
        {
            ctx.bump(key.vni, |s| s.pending_overflow += 1);
            if let Some(p) = self.pending.pop_front()
                && let ReqState::Complete(req) = p.request
            {
                ctx.bump(key.vni, |s| s.unanswered += 1);
                emit(ctx, key, client, req, None);
            }
        }
    }

    /// A complete request: it takes its place in the queue, and the pairs now complete at the
    /// queue's front are emitted.
    fn request_complete(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        client: Side,
        msg: Box<Message>,
    ) {
        let end = self.requests.position();
        if let Some(p) = self
            .pending
            .iter_mut()
            .rev()
            .find(|p| p.request == ReqState::InProgress)
        {
            count_body(ctx, key, &msg);
            p.end = end;
            // A request whose head was lost followed: responses past this one's end
            // are not its own.
            p.gap_after |= self.requests.take_lost_head();
            p.request = ReqState::Complete(msg);
        }
        self.emit_ready(ctx, key, client);
    }

    /// What the response parser reported.
    fn apply_response(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side, step: Step) {
        match step {
            Step::NeedMore => {}
            Step::Head => self.response_head(ctx, key, client),
            Step::Complete(msg) => self.response_complete(ctx, key, client, msg),
            Step::Dropped {
                had_head,
                ack,
                reason,
            } => {
                ctx.bump(key.vni, |s| s.count_drop(reason));
                if had_head {
                    self.mark_response_dropped(ack);
                }
                self.emit_ready(ctx, key, client);
            }
        }
    }

    /// A response head: paired with the request it answers, whose method chooses its body
    /// framing; or held while its request may still arrive; or framed from the bytes after it.
    fn response_head(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side) {
        let Some((ack, ts, seq)) = self.responses.current().map(|m| (m.ack, m.ts, m.seq)) else {
            return;
        };
        self.last_acks[1] = ack;
        // A server answers once the request has arrived: a request whose framing a gap
        // destroyed ends where this response acknowledges (at the latest: whether this
        // response is its own is decided apart, see `lost_head_was`).
        if self.requests.recovering() {
            self.requests.end_by(ack);
            self.drive(ctx, key, client, client);
        }
        match self.target(ack, seq) {
            Some(i) => {
                self.claim(ctx, key, i, seq);
                let method = self.pending[i].method.clone();
                self.start_response_body(ctx, key, Some(&method));
            }
            None if self.request_may_follow(ack) => {
                ctx.bump(key.vni, |s| s.responses_held += 1);
                self.held_since = Some(ts);
                self.head_held = true;
            }
            // Its request is unknown: the parser frames it from the bytes after it.
            None => {}
        }
    }

    /// A complete response (interim ones are only counted): attached to its request, left
    /// waiting for a request that may still come, or counted unmatched.
    fn response_complete(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        client: Side,
        msg: Box<Message>,
    ) {
        let status = msg.status().unwrap_or_default();
        if (100..200).contains(&status) && status != 101 {
            ctx.bump(key.vni, |s| s.interim_responses += 1);
            return;
        }
        ctx.bump(key.vni, |s| s.responses += 1);
        count_body(ctx, key, &msg);
        // Found again by a start line or the peer, responses may have been lost whole
        // before the next one.
        let gave_up = std::mem::take(&mut self.gave_up);
        let head_held = std::mem::take(&mut self.head_held);
        // Responses waiting before it go first: paired, or let go if they cannot wait
        // behind one that cannot.
        self.expire_early(ctx, key, self.now, false);
        let may_wait = !gave_up && self.request_may_follow(msg.ack);
        if !self.early.is_empty() && !may_wait {
            self.expire_early(ctx, key, self.now, true);
        }
        if self.early.is_empty() && self.target(msg.ack, msg.seq).is_some() {
            self.attach(ctx, key, msg);
        } else if may_wait {
            // Its request may still come: it waits, after any that wait already.
            if !head_held {
                ctx.bump(key.vni, |s| s.responses_held += 1);
            }
            let since = msg.ts;
            self.early.push_back((msg, since));
        } else {
            self.count_unmatched(ctx, key, msg.ack);
        }
        self.emit_ready(ctx, key, client);
    }

    fn count_unmatched(&mut self, ctx: &mut HttpCtx, key: &FlowKey, ack: Option<Seq>) {
        // The earliest request waiting was not given this response for its own was lost:
        // it is answered by none.
        if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.response == RespSlot::Waiting)
            && self.resynced != Resync::No
            && self.lost_head_was(i, ack)
        {
            self.pending[i].response = RespSlot::Dropped;
            self.head_lost = LostStart::No;
            self.resynced = Resync::No;
            ctx.bump(key.vni, |s| s.responses_lost += 1);
        }
        // Its request was lost in a gap: one since the last request head, or one that holds
        // the end of the request the server had received when it answered.
        let lost = self.client_gap
            || matches!((self.client_gap_at, ack),
                (GapAt::At(start, end), Some(a)) if start < a && a <= end);
        ctx.bump(key.vni, |s| {
            s.unmatched_responses += 1;
            s.request_heads_lost += u64::from(lost);
        });
    }

    /// Pairs waiting complete responses whose request has arrived, in order; lets go (as
    /// unmatched) those whose request can no longer come, that waited the reorder timeout,
    /// beyond the held-bytes cap, or all of them with `all`.
    fn expire_early(&mut self, ctx: &mut HttpCtx, key: &FlowKey, now: u64, all: bool) {
        while let Some((front, since)) = self.early.front() {
            let (ack, seq) = (front.ack, front.seq);
            let timed_out = now.saturating_sub(*since) >= ctx.cfg.hold_timeout_us;
            let bytes: usize = self.early.iter().map(|(m, _)| m.body.len()).sum();
            let over = bytes > ctx.cfg.max_held_bytes;
            // Waited its time, or nothing more comes: paired by sequence numbers alone.
            let settle = all || timed_out || over;
            let target = if settle {
                self.settle(|s| s.target(ack, seq))
            } else {
                self.target(ack, seq)
            };
            if target.is_some() {
                if let Some((msg, _)) = self.early.pop_front() {
                    self.settle_if(settle, |s| s.attach(ctx, key, msg));
                }
                continue;
            }
            if !all && self.request_may_follow(ack) && !timed_out && !over {
                return;
            }
            if !all && self.request_may_follow(ack) {
                ctx.bump(key.vni, |s| {
                    s.held_timeouts += u64::from(timed_out);
                    s.held_over_cap += u64::from(!timed_out);
                });
            }
            self.early.pop_front();
            self.count_unmatched(ctx, key, ack);
        }
    }

    fn start_response_body(&mut self, ctx: &mut HttpCtx, key: &FlowKey, method: Option<&str>) {
        if let Err(e) = self.responses.start_body(method) {
            ctx.bump(key.vni, |s| s.count_parse_error(e));
        }
    }

    /// Could the request a response beginning with acknowledgement `ack` answers still arrive?
    /// Yes while the server had received client bytes that were not delivered here yet.
    fn request_may_follow(&self, ack: Option<Seq>) -> bool {
        match (ack, self.client_end) {
            (Some(ack), Some(end)) => ack > end,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Lets a held response head go on when its request has arrived, when the client stream has
    /// passed the bytes it acknowledges (its request was lost or never captured), when it has
    /// waited the reorder timeout or holds more than the held-bytes cap, or when `now_or_never`
    /// (a gap in the response stream, its end, the connection's close): then every head in the
    /// buffer goes on, for the bytes that follow must find their framing chosen.
    fn resume_held(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        client: Side,
        now: u64,
        now_or_never: bool,
    ) {
        self.expire_early(ctx, key, now, false);
        self.emit_ready(ctx, key, client);
        while let Some(since) = self.held_since {
            if !self.early.is_empty() {
                // Responses before it wait still: it waits behind them.
                if !now_or_never {
                    return;
                }
            }
            let (ack, seq) = self
                .responses
                .current()
                .map_or((None, None), |m| (m.ack, m.seq));
            let method = match self.target(ack, seq) {
                Some(i) => {
                    self.claim(ctx, key, i, seq);
                    Some(self.pending[i].method.clone())
                }
                None if now_or_never || !self.request_may_follow(ack) => None,
                None => {
                    let timed_out = now.saturating_sub(since) >= ctx.cfg.hold_timeout_us;
                    let over =
                        self.responses.buffered() + self.deferred_bytes() > ctx.cfg.max_held_bytes;
                    if !timed_out && !over {
                        return;
                    }
                    // Its time is up: paired by sequence numbers alone, if it can be.
                    let loose = self.settle(|s| s.target(ack, seq));
                    if loose.is_none() {
                        ctx.bump(key.vni, |s| {
                            s.held_timeouts += u64::from(timed_out);
                            s.held_over_cap += u64::from(!timed_out);
                        });
                        self.gave_up = true;
                    }
                    loose.map(|i| {
                        self.claim(ctx, key, i, seq);
                        self.pending[i].method.clone()
                    })
                }
            };
            if method.is_none() && !now_or_never {
                self.gave_up = true;
            }
            self.held_since = None;
            if let Some(method) = &method
                && self.responses.awaiting_body()
            {
                self.start_response_body(ctx, key, Some(method));
            }
            self.drive(ctx, key, client, client.other());
            if !now_or_never {
                // A head the drive held again waits for its own request.
                return;
            }
        }
    }

    /// Runs `f` with `settling` set: targets chosen by sequence numbers alone.
    fn settle<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        self.settle_if(true, f)
    }

    fn settle_if<T>(&mut self, on: bool, f: impl FnOnce(&mut Self) -> T) -> T {
        let was = self.settling;
        self.settling |= on;
        let out = f(self);
        self.settling = was;
        out
    }

    /// The pending request a response beginning with acknowledgement `ack` answers.
    fn target(&self, ack: Option<Seq>, seq: Option<Seq>) -> Option<usize> {
        // Client bytes lost between a request's end and what the response acknowledges may
        // have held the request it answers (keep-alive: a server answers before it receives the
        // next request): such a request is not the answer's. So are client bytes after it that
        // the server had and that never arrived here.
        let lost_after = |i: usize| {
            let p = &self.pending[i];
            // A request still in progress ends where its framing says (its tail may never
            // come: lost with the connection's last segments).
            let end = p.end.or_else(|| {
                (p.request == ReqState::InProgress)
                    .then(|| self.requests.framed_end())
                    .flatten()
            });
            let (Some(end), Some(ack)) = (end, ack) else {
                return false;
            };
            ack > end
                && (self.client_end.is_some_and(|e| ack > e)
                    || self
                        .pending
                        .iter()
                        .skip(i)
                        .any(|q| q.gap_after && q.end.is_some_and(|e| e < ack)))
        };
        // Nor is any answer's until the client bytes it acknowledges are here (delivered, or
        // known lost): the request it answers may be among them. Until then it is held.
        if !self.settling && self.request_may_follow(ack) {
            return None;
        }
        let mut waiting = self
            .pending
            .iter()
            .enumerate()
            .filter(|&(i, p)| p.response == RespSlot::Waiting && !lost_after(i));
        if self.resynced.covers(seq) {
            // Responses were lost with framing: the answer is to the latest request the server
            // had received. Not to one whose end never arrived when the server had client
            // bytes never seen here: those may have held the request it answers, and a lost
            // response may have been this one's.
            waiting
                .rev()
                .find(|(_, p)| answers(p.seq, ack))
                .filter(|&(i, _)| !self.lost_head_was(i, ack))
                .map(|(i, _)| i)
        } else {
            waiting
                .next()
                .filter(|(_, p)| answers(p.seq, ack))
                .map(|(i, _)| i)
        }
    }

    /// A response head was lost (see `head_lost`): was it request `i`'s? Yes when `i` is the
    /// earliest request still waiting, unless a response acknowledging `ack` was sent before the
    /// server had anything after it (the lost bytes were an interim response or not HTTP).
    fn lost_head_was(&self, i: usize, ack: Option<Seq>) -> bool {
        let LostStart::At(start) = self.head_lost else {
            return false;
        };
        let earliest = self
            .pending
            .iter()
            .position(|p| p.response == RespSlot::Waiting);
        if earliest != Some(i) {
            return false;
        }
        let p = &self.pending[i];
        // A response begins after its request was sent, so at or after where the request
        // acknowledged the server's stream: a start lost before that was an earlier one's.
        if p.ack.is_some_and(|a| start < a) {
            return false;
        }
        // Where it ended, if that is known exactly (not where a recovery after a gap, which
        // may have held later requests, ended it).
        let end = match &p.request {
            ReqState::Complete(m) if m.recovered.is_none() => p.end,
            ReqState::InProgress => self.requests.framed_end(),
            _ => None,
        };
        end.zip(ack).is_none_or(|(e, a)| a > e)
    }

    /// Attaches a final response to the request it answers. False when it answers none.
    fn attach(&mut self, ctx: &mut HttpCtx, key: &FlowKey, msg: Box<Message>) -> bool {
        let Some(i) = self.target(msg.ack, msg.seq) else {
            return false;
        };
        self.claim(ctx, key, i, msg.seq);
        // Found again by a start line, the peer or a later chunk-size line (which may be
        // another response's: the gap may have held whole ones), responses may have been lost
        // whole before the next one.
        if matches!(
            msg.recovered,
            Some(Recovery::StartLine | Recovery::Peer | Recovery::ChunkSize)
        ) {
            let from = msg
                .seq
                .map_or(Resync::Any, |s| Resync::From(s.wrapping_add(1)));
            self.resynced = self.resynced.or(from);
        }
        if msg.status() == Some(101)
            || (self.pending[i].method == "CONNECT"
                && msg.status().is_some_and(|s| (200..300).contains(&s)))
        {
            ctx.bump(key.vni, |s| s.protocol_switches += 1);
            self.requests.enter_tunnel();
            self.responses.enter_tunnel();
        }
        self.pending[i].response = RespSlot::Some(msg);
        true
    }

    /// Request `i` is the answer's: after a resync, the requests before it still waiting lost
    /// their responses. Done when the response's head is seen, so that later resyncs do not
    /// move it.
    fn claim(&mut self, ctx: &mut HttpCtx, key: &FlowKey, i: usize, seq: Option<Seq>) {
        if self.resynced.covers(seq) {
            for p in self.pending.iter_mut().take(i) {
                if p.response == RespSlot::Waiting {
                    p.response = RespSlot::Dropped;
                    ctx.bump(key.vni, |s| s.responses_lost += 1);
                }
            }
            self.resynced = Resync::No;
            self.head_lost = LostStart::No;
        }
    }

    fn mark_response_dropped(&mut self, ack: Option<Seq>) {
        if let Some(i) = self.target(ack, None) {
            self.pending[i].response = RespSlot::Dropped;
        }
    }

    /// Emits, in order, every pair at the front of the queue that is complete.
    fn emit_ready(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side) {
        while let Some(front) = self.pending.front() {
            let ready = match (&front.request, &front.response) {
                (ReqState::Complete(_), RespSlot::Some(_)) => true,
                (ReqState::Complete(_), RespSlot::Dropped) => true,
                (ReqState::Dropped, RespSlot::Some(_) | RespSlot::Dropped) => true,
                // A request dropped while a response is still to come keeps its place, so
                // that response is consumed with it.
                _ => false,
            };
            if !ready {
                return;
            }
            let Some(p) = self.pending.pop_front() else {
                return;
            };
            match (p.request, p.response) {
                // Its answer comes as HTTP/2, on stream 1.
                (ReqState::Complete(req), RespSlot::Some(resp))
                    if self.h2.is_none() && h2::is_h2c_upgrade(&req, &resp) =>
                {
                    self.upgraded = Some(req);
                }
                (ReqState::Complete(req), RespSlot::Some(resp)) => {
                    ctx.bump(key.vni, |s| s.pairs += 1);
                    emit(ctx, key, client, req, Some(resp));
                }
                (ReqState::Complete(req), _) => {
                    // Its response was lost: the request alone is still worth reporting.
                    ctx.bump(key.vni, |s| s.unanswered += 1);
                    emit(ctx, key, client, req, None);
                }
                _ => {}
            }
        }
    }
}

/// Where a gap in the server stream took a response's first byte.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum LostStart {
    No,
    /// Its distance back from the gap's end, placed by the next bytes.
    Unplaced(u32),
    At(Seq),
}

/// Which responses pair by acknowledgement alone, to the latest request the server had: those
/// after a gap that may have taken responses whole.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Resync {
    No,
    /// Responses starting at or after this sequence number.
    From(Seq),
    /// Every response (the gap came before the stream's first known position).
    Any,
}

impl Resync {
    /// Both: what either covers.
    fn or(self, other: Resync) -> Resync {
        match (self, other) {
            (Resync::Any, _) | (_, Resync::Any) => Resync::Any,
            (Resync::From(a), Resync::From(b)) => Resync::From(a.min(b)),
            (Resync::No, r) | (r, Resync::No) => r,
        }
    }

    fn covers(self, seq: Option<Seq>) -> bool {
        match self {
            Resync::No => false,
            Resync::Any => true,
            Resync::From(at) => seq.is_none_or(|s| s >= at),
        }
    }
}

/// Could a response whose first segment acknowledged `ack` answer a request starting at `seq`?
/// Unknown values do not rule it out.
fn answers(request_seq: Option<Seq>, response_ack: Option<Seq>) -> bool {
    match (request_seq, response_ack) {
        (Some(seq), Some(ack)) => seq < ack,
        _ => true,
    }
}

fn event_ts(ev: &StreamEvent<'_>) -> u64 {
    match *ev {
        StreamEvent::Data(_, meta) => meta.ts,
        StreamEvent::Gap { ts, .. } | StreamEvent::End { ts } => ts,
    }
}

fn count_body(ctx: &mut HttpCtx, key: &FlowKey, msg: &Message) {
    let clean = !msg.body_truncated
        && !msg.decode_failed
        && msg.missing == 0
        && msg.complete
        && msg.recovered.is_none();
    if clean {
        // The common case costs no lookup of the session's counters.
        return;
    }
    ctx.bump(key.vni, |s| {
        s.bodies_truncated += u64::from(msg.body_truncated && msg.missing == 0);
        s.decode_failures += u64::from(msg.decode_failed);
        s.damaged_gap += u64::from(msg.missing > 0);
        s.damaged_ended += u64::from(!msg.complete);
        if let Some(by) = msg.recovered {
            s.framing_recovered[by.index()] += 1;
        }
    });
}

fn emit(
    ctx: &mut HttpCtx,
    key: &FlowKey,
    client: Side,
    request: Box<Message>,
    response: Option<Box<Message>>,
) {
    ctx.out.push(Exchange {
        vni: key.vni,
        client: key.addr(client),
        server: key.addr(client.other()),
        connection_id: key.stable_hash(),
        request,
        response,
    });
}

impl HttpStats {
    fn count_drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::Gap => self.dropped_gap += 1,
            DropReason::Parse(e) => self.count_parse_error(e),
        }
    }
}

mod h2;

#[cfg(test)]
mod tests;
