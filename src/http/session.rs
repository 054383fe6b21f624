//! One connection's HTTP/1.x session: decides which side is the client from the bytes, frames both
//! directions, and pairs each request with its response.
//!
//! Pairing is in order (HTTP/1.x answers in request order, pipelined or not), with one check from
//! TCP itself: a response can only answer a request whose first byte its sender had acknowledged
//! when the response began. That keeps a response whose request was never captured (capture
//! started mid-connection, request lost in a gap) from being paired with the next request, and
//! lets a response that arrives before its request (directions reordered by the NLB) wait for it.

use super::message::{Exchange, Message};
use super::parser::{DropReason, Parser, Role, Step};
use super::{HttpCtx, HttpStats};
use crate::flow::{CloseReason, DataMeta, FlowKey, Seq, Side, StreamEvent, StreamHandler};
use std::collections::VecDeque;

/// Early responses held per connection while their request is not yet seen.
const MAX_EARLY_RESPONSES: usize = 8;

#[derive(Debug, PartialEq, Eq)]
enum ReqState {
    /// Head seen, body in progress.
    InProgress,
    Complete(Message),
    /// Abandoned (gap or parse error): its response, if any, is consumed with it.
    Dropped,
}

#[derive(Debug, PartialEq, Eq)]
enum RespSlot {
    Waiting,
    Some(Message),
    /// The response was abandoned or lost in a gap: the pair is not reported.
    Dropped,
}

#[derive(Debug)]
struct Pending {
    method: String,
    seq: Option<Seq>,
    request: ReqState,
    response: RespSlot,
}

/// Bytes of one side seen before the client side is known.
#[derive(Debug, Default)]
struct Probe {
    buf: Vec<u8>,
    meta: Option<DataMeta>,
}

/// HTTP state of one connection.
#[derive(Debug)]
pub struct Session {
    client: Option<Side>,
    probes: [Probe; 2],
    requests: Parser,
    responses: Parser,
    pending: VecDeque<Pending>,
    early: VecDeque<Message>,
    /// The response direction lost framing in a gap: the next response is paired by its ack.
    resynced: bool,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            client: None,
            probes: Default::default(),
            requests: Parser::new(Role::Request),
            responses: Parser::new(Role::Response),
            pending: VecDeque::new(),
            early: VecDeque::new(),
            resynced: false,
        }
    }
}

impl StreamHandler for Session {
    type Ctx = HttpCtx;

    fn event(&mut self, ctx: &mut HttpCtx, key: &FlowKey, side: Side, ev: StreamEvent<'_>) {
        match ev {
            StreamEvent::Data(bytes, meta) => match self.client {
                Some(client) => {
                    self.parser(client, side).feed(bytes, meta, &ctx.cfg);
                    self.drive(ctx, key, client, side);
                }
                None => self.probe(ctx, key, side, bytes, meta),
            },
            StreamEvent::Gap { len, .. } => {
                let Some(client) = self.client else {
                    self.probes[side.index()] = Probe::default();
                    return;
                };
                let (dropped, lost_framing) = self.parser(client, side).gap(len);
                if side != client && lost_framing {
                    self.resynced = true;
                }
                if let Some(step) = dropped {
                    self.apply(ctx, key, client, side, step);
                }
                self.drive(ctx, key, client, side);
            }
            StreamEvent::End { .. } => {
                let Some(client) = self.client else {
                    return;
                };
                if side != client
                    && let Some(step) = self.responses.finish(&ctx.cfg)
                {
                    self.apply(ctx, key, client, side, step);
                }
            }
        }
    }

    fn release(&mut self) {
        self.requests.release();
        self.responses.release();
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
        }
        if self.early.is_empty() {
            self.early = VecDeque::new();
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
        self.probes.iter().map(|p| p.buf.capacity()).sum::<usize>()
            + self.requests.held_bytes()
            + self.responses.held_bytes()
            + pending
            + self.early.iter().map(body).sum::<usize>()
    }

    fn close(&mut self, ctx: &mut HttpCtx, key: &FlowKey, _reason: CloseReason, _now: u64) {
        let Some(client) = self.client else {
            return;
        };
        if let Some(step) = self.responses.finish(&ctx.cfg) {
            match step {
                Step::Complete(msg) if !msg.complete => {
                    // A response cut short by the end of the connection: not an answer to report.
                    ctx.bump(key.vni, |s| s.responses_incomplete += 1);
                    self.mark_response_dropped(msg.ack);
                }
                step => self.apply(ctx, key, client, client.other(), step),
            }
        }
        if let Some(step) = self.requests.finish(&ctx.cfg) {
            self.apply(ctx, key, client, client, step);
        }
        self.emit_ready(ctx, key, client);
        for p in std::mem::take(&mut self.pending) {
            match (p.request, p.response) {
                (ReqState::Complete(req), RespSlot::Some(resp)) => {
                    ctx.bump(key.vni, |s| s.pairs += 1);
                    emit(ctx, key, client, req, Some(resp));
                }
                (ReqState::Complete(req), RespSlot::Waiting) => {
                    ctx.bump(key.vni, |s| s.unanswered += 1);
                    emit(ctx, key, client, req, None);
                }
                _ => {}
            }
        }
        ctx.bump(key.vni, |s| {
            s.unmatched_responses += self.early.len() as u64
        });
        self.early.clear();
    }
}

impl Session {
    fn parser(&mut self, client: Side, side: Side) -> &mut Parser {
        if side == client {
            &mut self.requests
        } else {
            &mut self.responses
        }
    }

    /// Buffers bytes until one side shows a request line or a status line.
    fn probe(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        side: Side,
        bytes: &[u8],
        meta: DataMeta,
    ) {
        let probe = &mut self.probes[side.index()];
        if probe.buf.is_empty() {
            probe.meta = Some(meta);
        }
        probe.buf.extend_from_slice(bytes);
        let client = match super::detect::scan(&probe.buf, None) {
            super::detect::Scan::Found(_, super::detect::StartKind::Request) => side,
            super::detect::Scan::Found(_, super::detect::StartKind::Response) => side.other(),
            super::detect::Scan::Partial(off) => {
                ctx.bump(key.vni, |s| s.skipped_bytes += off as u64);
                probe.buf.drain(..off);
                if let Some(m) = &mut probe.meta {
                    m.seq = m.seq.wrapping_add(off as u64);
                }
                return;
            }
            super::detect::Scan::None => {
                ctx.bump(key.vni, |s| s.skipped_bytes += probe.buf.len() as u64);
                *probe = Probe::default();
                return;
            }
        };
        self.client = Some(client);
        for s in [client, client.other()] {
            let probe = std::mem::take(&mut self.probes[s.index()]);
            if let Some(meta) = probe.meta {
                self.parser(client, s).push(&probe.buf, meta);
            }
        }
        self.drive(ctx, key, client, client);
        self.drive(ctx, key, client, client.other());
    }

    fn drive(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side, side: Side) {
        loop {
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

    fn apply_request(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side, step: Step) {
        match step {
            Step::NeedMore => {}
            Step::Head => {
                if let Err(e) = self.requests.start_body(None) {
                    ctx.bump(key.vni, |s| s.count_parse_error(e));
                    return;
                }
                let Some(msg) = self.requests.current() else {
                    return;
                };
                ctx.bump(key.vni, |s| s.requests += 1);
                if self.pending.len() >= ctx.cfg.max_pending_requests {
                    // A client that never gets answers: report the oldest as unanswered.
                    ctx.bump(key.vni, |s| s.pending_overflow += 1);
                    if let Some(p) = self.pending.pop_front()
                        && let ReqState::Complete(req) = p.request
                    {
                        ctx.bump(key.vni, |s| s.unanswered += 1);
                        emit(ctx, key, client, req, None);
                    }
                }
                let seq = msg.seq;
                if self.pending.capacity() == 0 {
                    // Most connections have one request outstanding at a time: room for one
                    // (VecDeque would start at four).
                    self.pending.reserve_exact(1);
                }
                self.pending.push_back(Pending {
                    method: msg.method().unwrap_or_default().to_owned(),
                    seq,
                    request: ReqState::InProgress,
                    response: RespSlot::Waiting,
                });
                // A response that arrived first may be this request's answer.
                while let Some(resp) = self.early.pop_front() {
                    if answers(seq, resp.ack) {
                        self.attach(ctx, key, resp);
                        break;
                    }
                    ctx.bump(key.vni, |s| s.unmatched_responses += 1);
                }
            }
            Step::Complete(msg) => {
                if let Some(p) = self
                    .pending
                    .iter_mut()
                    .rev()
                    .find(|p| p.request == ReqState::InProgress)
                {
                    count_body(ctx, key, &msg);
                    p.request = ReqState::Complete(msg);
                }
                self.emit_ready(ctx, key, client);
            }
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

    fn apply_response(&mut self, ctx: &mut HttpCtx, key: &FlowKey, client: Side, step: Step) {
        match step {
            Step::NeedMore => {}
            Step::Head => {
                let ack = self.responses.current().and_then(|m| m.ack);
                let method = self.target(ack).map(|i| self.pending[i].method.clone());
                if let Err(e) = self.responses.start_body(method.as_deref()) {
                    ctx.bump(key.vni, |s| s.count_parse_error(e));
                }
            }
            Step::Complete(msg) => {
                let status = msg.status().unwrap_or_default();
                if (100..200).contains(&status) && status != 101 {
                    ctx.bump(key.vni, |s| s.interim_responses += 1);
                    return;
                }
                ctx.bump(key.vni, |s| s.responses += 1);
                count_body(ctx, key, &msg);
                if self.pending.iter().any(|p| p.response == RespSlot::Waiting) {
                    if !self.attach(ctx, key, msg) {
                        ctx.bump(key.vni, |s| s.unmatched_responses += 1);
                    }
                } else if self.early.len() < MAX_EARLY_RESPONSES {
                    self.early.push_back(msg);
                } else {
                    ctx.bump(key.vni, |s| s.unmatched_responses += 1);
                }
                self.emit_ready(ctx, key, client);
            }
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

    /// The pending request a response beginning with acknowledgement `ack` answers.
    fn target(&self, ack: Option<Seq>) -> Option<usize> {
        let mut waiting = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| p.response == RespSlot::Waiting);
        if self.resynced {
            // Responses were lost with framing: the answer is to the latest request the server
            // had received.
            waiting
                .rev()
                .find(|(_, p)| answers(p.seq, ack))
                .map(|(i, _)| i)
        } else {
            waiting
                .next()
                .filter(|(_, p)| answers(p.seq, ack))
                .map(|(i, _)| i)
        }
    }

    /// Attaches a final response to the request it answers. False when it answers none.
    fn attach(&mut self, ctx: &mut HttpCtx, key: &FlowKey, msg: Message) -> bool {
        let Some(i) = self.target(msg.ack) else {
            return false;
        };
        if self.resynced {
            for p in self.pending.iter_mut().take(i) {
                if p.response == RespSlot::Waiting {
                    p.response = RespSlot::Dropped;
                    ctx.bump(key.vni, |s| s.responses_lost += 1);
                }
            }
            self.resynced = false;
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

    fn mark_response_dropped(&mut self, ack: Option<Seq>) {
        if let Some(i) = self.target(ack) {
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
            if let (ReqState::Complete(req), RespSlot::Some(resp)) = (p.request, p.response) {
                ctx.bump(key.vni, |s| s.pairs += 1);
                emit(ctx, key, client, req, Some(resp));
            }
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

fn count_body(ctx: &mut HttpCtx, key: &FlowKey, msg: &Message) {
    if msg.body_truncated {
        ctx.bump(key.vni, |s| s.bodies_truncated += 1);
    }
    if msg.decode_failed {
        ctx.bump(key.vni, |s| s.decode_failures += 1);
    }
}

fn emit(
    ctx: &mut HttpCtx,
    key: &FlowKey,
    client: Side,
    request: Message,
    response: Option<Message>,
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
            DropReason::Incomplete => self.responses_incomplete += 1,
            DropReason::Parse(e) => self.count_parse_error(e),
        }
    }
}

#[cfg(test)]
mod tests;
