//! A session's HTTP/2 mode: a connection whose client sent the HTTP/2 preface, or that upgraded
//! to it (`Upgrade: h2c`, `101`), is framed by [`crate::http2::Connection`] from then on, and
//! each stream it finishes becomes an exchange.

use super::{Probe, Session, count_body, emit};
use crate::flow::{FlowKey, Side, StreamEvent};
use crate::http::{HttpCtx, Message};
use crate::http2::{Connection, H2Stats, PREFACE, joined};

/// The HTTP/2 state of a session.
pub(super) struct H2 {
    client: Side,
    conn: Connection,
    /// What the connection's counters were when last added to the context's.
    counted: H2Stats,
}

/// What a side's first bytes say about HTTP/2.
pub(super) enum Probed {
    /// The client's preface: this side is the client.
    Client,
    /// HTTP/2 frames of a connection joined mid-way, sent by the client (true) or the server.
    Joined(bool),
    /// A prefix of the preface, or what may be a server's first SETTINGS frame: wait.
    Wait,
    /// Not HTTP/2's start.
    No,
}

/// Reads a side's probed bytes for the start of HTTP/2; for frames of a connection joined
/// mid-way only when the side's stream began mid-way or had a gap (`joined_midway`).
pub(super) fn probe(buf: &[u8], joined_midway: bool) -> Probed {
    if buf.starts_with(PREFACE) {
        return Probed::Client;
    }
    if PREFACE.starts_with(buf) {
        return Probed::Wait;
    }
    let frames = if joined_midway {
        joined::probe(buf)
    } else {
        None
    };
    match frames {
        Some(Some(client)) => return Probed::Joined(client),
        Some(None) if buf.len() <= crate::http2::JOIN_SEARCH => return Probed::Wait,
        _ => {}
    }
    // A server's first frame, SETTINGS, sent before the client's preface came.
    let settings = buf.len() <= crate::http2::JOIN_SEARCH
        && buf
            .get(..9)
            .is_some_and(|head| head[3] == 4 && joined::plausible(head).is_some());
    if settings { Probed::Wait } else { Probed::No }
}

impl Session {
    /// `client` sent the preface (or, `joined`, HTTP/2 frames show the connection was joined
    /// mid-way): both sides' probed bytes go to a new HTTP/2 connection.
    pub(super) fn start_h2(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        client: Side,
        joined: bool,
    ) {
        let max_body = ctx.cfg.max_body_bytes;
        let conn = if joined {
            Connection::joined(max_body)
        } else {
            Connection::new(max_body)
        };
        let mut h2 = H2::new(client, conn);
        if let Some(probes) = self.probes.take() {
            let [a, b] = *probes;
            for (side, Probe { buf, meta }) in [(Side::Lo, a), (Side::Hi, b)] {
                if !buf.is_empty() {
                    h2.conn.data(side == client, &buf, meta.map_or(0, |m| m.ts));
                }
            }
        }
        h2.flush(ctx, key);
        self.h2 = Some(h2);
    }

    /// The connection switched to HTTP/2 by `Upgrade: h2c`: `request` is stream 1, and what each
    /// side sent after the switch (held by its parser) goes to the new connection.
    pub(super) fn start_h2c(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        client: Side,
        request: Message,
    ) {
        let mut h2 = H2::new(
            client,
            Connection::upgraded(ctx.cfg.max_body_bytes, request),
        );
        let (server_bytes, client_bytes) =
            (self.responses.take_tunnel(), self.requests.take_tunnel());
        h2.conn.data(false, &server_bytes, self.now);
        h2.conn.data(true, &client_bytes, self.now);
        h2.flush(ctx, key);
        self.h2 = Some(h2);
    }
}

/// An HTTP/1.1 request asking to upgrade to HTTP/2 in clear text (`Upgrade: h2c`), answered by
/// `101` agreeing to it.
pub(super) fn is_h2c_upgrade(request: &Message, response: &Message) -> bool {
    let h2c = |m: &Message| {
        m.header_values("upgrade")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("h2c"))
    };
    response.status() == Some(101) && h2c(request) && h2c(response)
}

impl H2 {
    fn new(client: Side, conn: Connection) -> Box<H2> {
        Box::new(H2 {
            client,
            conn,
            counted: H2Stats::default(),
        })
    }

    pub(super) fn event(
        &mut self,
        ctx: &mut HttpCtx,
        key: &FlowKey,
        side: Side,
        ev: StreamEvent<'_>,
    ) {
        match ev {
            StreamEvent::Data(bytes, meta) => self.conn.data(side == self.client, bytes, meta.ts),
            StreamEvent::Gap { len, .. } => self.conn.gap(side == self.client, len),
            StreamEvent::End { .. } => {}
        }
        self.flush(ctx, key);
    }

    pub(super) fn close(&mut self, ctx: &mut HttpCtx, key: &FlowKey) {
        self.conn.close();
        self.flush(ctx, key);
    }

    pub(super) fn buffered(&self) -> usize {
        self.conn.buffered()
    }

    /// Emits the exchanges the connection finished and adds its new counts to the context's.
    fn flush(&mut self, ctx: &mut HttpCtx, key: &FlowKey) {
        let client = self.client;
        for (request, response) in self.conn.pairs() {
            let answered = response.is_some();
            // An upgraded request (HTTP/1.1, stream 1) was counted by the HTTP/1 parser.
            let new_request = u64::from(request.version == 2);
            ctx.bump(key.vni, |s| {
                s.requests += new_request;
                s.responses += u64::from(answered);
                s.pairs += u64::from(answered);
                s.unanswered += u64::from(!answered);
            });
            count_body(ctx, key, &request);
            if let Some(r) = &response {
                count_body(ctx, key, r);
            }
            emit(
                ctx,
                key,
                client,
                crate::spare::boxed(request),
                response.map(crate::spare::boxed),
            );
        }
        let now = self.conn.stats;
        if now != self.counted {
            let was = std::mem::replace(&mut self.counted, now);
            ctx.bump(key.vni, |s| {
                s.h2_streams += now.streams - was.streams;
                s.h2_resets += now.resets - was.resets;
                s.h2_hpack_failures += now.hpack_failures - was.hpack_failures;
                s.h2_framing_lost += (now.too_large + now.protocol_errors + now.gaps)
                    - (was.too_large + was.protocol_errors + was.gaps);
                s.h2_streams_over_limit += now.streams_over_limit - was.streams_over_limit;
                s.h2_dynamic_misses += now.dynamic_misses - was.dynamic_misses;
                s.h2_streams_unreadable += now.streams_unreadable - was.streams_unreadable;
            });
        }
    }
}

impl std::fmt::Debug for H2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2")
            .field("client", &self.client)
            .field("stats", &self.conn.stats)
            .finish_non_exhaustive()
    }
}
