//! HTTP/2 (RFC 9113) of one reassembled TCP connection, both directions: frames, HPACK (RFC 7541)
//! per direction with its dynamic table, and each stream's request and response assembled into
//! one [`Exchange`]-shaped pair. Pure: bytes and `ts` in, pairs out; no IO, no clock.
//!
//! The session hands a connection over (see `http::session::h2`) when its client sent the
//! preface ([`Connection::new`]), when it upgraded by `Upgrade: h2c` ([`Connection::upgraded`]),
//! or when its frames show it was joined mid-way ([`Connection::joined`]). Bodies are decoded by
//! their Content-Encoding; gRPC bodies become what Akto's consumer reads ([`grpc`]). A gap inside
//! a DATA frame damages that stream only; a gap between frames makes the direction find its
//! frames again and decode its header blocks as if joined mid-way.
//!
//! HPACK is loona-hpack's decoder (the maintained fork of hpack-rs; see the commit for the
//! candidates); joined mid-way, [`joined`]'s decoder, which knows no entry from before. A header
//! block that fails to decode leaves the direction's dynamic table unknown: every later block of
//! that direction is counted and skipped, never decoded against a table that may be wrong.

pub mod grpc;
pub mod joined;

use crate::http::{Message, StartLine};
use std::collections::BTreeMap;

/// What a client sends first (RFC 9113 section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of a frame header.
const FRAME_HEADER: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE until a peer says otherwise.
const DEFAULT_MAX_FRAME: u32 = 16_384;
/// Largest frame payload buffered, whatever a peer allows (the protocol allows 16 MiB).
pub const MAX_FRAME_BUFFERED: u32 = 1 << 20;
/// Largest header block (HEADERS and its CONTINUATIONs) buffered.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Bytes a direction buffers while it is not yet framed: joined mid-connection and looking for
/// frame boundaries, or (in the session) a server's first frame waiting for the client's
/// preface.
pub const JOIN_SEARCH: usize = 64 * 1024;
/// Streams tracked at once; further ones are counted and not reported.
pub const MAX_STREAMS: usize = 1024;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Counters of HTTP/2 connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Stats {
    pub frames: u64,
    /// Streams that carried a request.
    pub streams: u64,
    /// Streams ended by RST_STREAM.
    pub resets: u64,
    /// Header blocks that did not decode, or were skipped because an earlier one did not.
    pub hpack_failures: u64,
    /// Frames past the size a peer allowed (or past [`MAX_FRAME_BUFFERED`]), and header blocks
    /// past [`MAX_HEADER_BLOCK`]: the direction's framing is given up.
    pub too_large: u64,
    /// Bytes that are not HTTP/2 where a frame or the preface must be: the direction is given up.
    pub protocol_errors: u64,
    /// Streams whose request head lacked `:method` or `:path` (a miss of a connection joined
    /// mid-way, or a malformed head): not reported.
    pub streams_unreadable: u64,
    /// Streams beyond [`MAX_STREAMS`].
    pub streams_over_limit: u64,
    /// Header fields of a connection joined mid-way that named a dynamic-table entry from
    /// before the join: left out.
    pub dynamic_misses: u64,
    /// Gaps that may have taken whole frames: the direction's frames found again after them.
    pub gaps: u64,
    /// Gaps inside a DATA frame: its message damaged, the framing kept.
    pub data_gaps: u64,
}

/// One stream's request and response so far.
#[derive(Default)]
struct Stream {
    request: Option<Message>,
    response: Option<Message>,
    request_done: bool,
    response_done: bool,
}

/// A header block being gathered: HEADERS (or PUSH_PROMISE) and its CONTINUATIONs.
struct Block {
    stream: u32,
    bytes: Vec<u8>,
    end_stream: bool,
    /// A PUSH_PROMISE's block: decoded for the table's sake, not reported.
    promise: bool,
    ts: u64,
}

/// One direction of the connection.
struct Direction {
    buf: Vec<u8>,
    /// The client's preface is still to come (client direction only).
    preface: bool,
    hpack: loona_hpack::Decoder<'static>,
    /// The dynamic table is known (no block failed).
    hpack_ok: bool,
    /// Joined mid-connection: HPACK without the table's older entries, and frame boundaries
    /// still to be found (`synced`).
    joined: Option<joined::Decoder>,
    synced: bool,
    /// Largest frame payload this side may send: the other side's SETTINGS_MAX_FRAME_SIZE.
    max_frame: u32,
    block: Option<Block>,
    /// The rest of a DATA frame a gap fell into: its stream, whether it ends the stream, and
    /// the bytes still to come (discarded: the body holds what came before the gap).
    skip: Option<(u32, bool, usize)>,
    /// The framing was given up (an oversized frame, bytes that are not HTTP/2): nothing more
    /// is read.
    lost: bool,
}

impl Direction {
    fn new(client: bool) -> Direction {
        Direction {
            buf: Vec::new(),
            preface: client,
            hpack: loona_hpack::Decoder::new(),
            hpack_ok: true,
            joined: None,
            synced: true,
            max_frame: DEFAULT_MAX_FRAME,
            block: None,
            skip: None,
            lost: false,
        }
    }

    fn give_up(&mut self) {
        self.lost = true;
        self.buf = Vec::new();
        self.block = None;
        self.skip = None;
    }
}

/// A request and its response (`None` when none came), as [`crate::http::Exchange`] holds them.
pub type Pair = (Message, Option<Message>);

/// An HTTP/2 connection: both directions' framing and HPACK state, and its open streams.
pub struct Connection {
    /// Client, then server.
    dirs: [Direction; 2],
    streams: BTreeMap<u32, Stream>,
    done: Vec<Pair>,
    max_body: usize,
    pub stats: H2Stats,
}

impl Connection {
    /// A connection whose bodies are kept up to `max_body` bytes each.
    pub fn new(max_body: usize) -> Connection {
        Connection {
            dirs: [Direction::new(true), Direction::new(false)],
            streams: BTreeMap::new(),
            done: Vec::new(),
            max_body,
            stats: H2Stats::default(),
        }
    }

    /// A connection joined mid-way (no preface seen): frame boundaries are found from the
    /// bytes, and header blocks decoded without the dynamic table's entries from before
    /// ([`joined`]); streams whose request head came before the join are not reported.
    pub fn joined(max_body: usize) -> Connection {
        let mut c = Connection::new(max_body);
        for d in &mut c.dirs {
            d.preface = false;
            d.synced = false;
            d.joined = Some(joined::Decoder::default());
        }
        c
    }

    /// A connection upgraded from HTTP/1.1 (`Upgrade: h2c` answered by `101`): `request`, the
    /// request that asked for it, is stream 1, whose response comes as HTTP/2; the client's
    /// preface is still to come.
    pub fn upgraded(max_body: usize, request: Message) -> Connection {
        let mut c = Connection::new(max_body);
        c.streams.insert(
            1,
            Stream {
                request: Some(request),
                request_done: true,
                ..Stream::default()
            },
        );
        c.stats.streams += 1;
        c
    }

    /// Takes the next bytes the client (or the server) sent, at time `ts` (µs).
    pub fn data(&mut self, from_client: bool, bytes: &[u8], ts: u64) {
        let d = usize::from(!from_client);
        if self.dirs[d].lost {
            return;
        }
        let bytes = self.skip_rest_of_frame(d, bytes);
        self.dirs[d].buf.extend_from_slice(bytes);
        if !self.dirs[d].synced {
            match joined::sync(&self.dirs[d].buf) {
                Some(at) => {
                    self.dirs[d].buf.drain(..at);
                    self.dirs[d].synced = true;
                }
                None if self.dirs[d].buf.len() > JOIN_SEARCH => {
                    self.stats.protocol_errors += 1;
                    return self.dirs[d].give_up();
                }
                None => return,
            }
        }
        if self.dirs[d].preface {
            let have = self.dirs[d].buf.len().min(PREFACE.len());
            if self.dirs[d].buf[..have] != PREFACE[..have] {
                self.stats.protocol_errors += 1;
                return self.dirs[d].give_up();
            }
            if have < PREFACE.len() {
                return;
            }
            self.dirs[d].buf.drain(..PREFACE.len());
            self.dirs[d].preface = false;
        }
        let mut at = 0;
        while let Some(len) = self.next_frame(d, at) {
            let buf = std::mem::take(&mut self.dirs[d].buf);
            self.frame(d, &buf[at..at + FRAME_HEADER + len], ts);
            if self.dirs[d].lost {
                return;
            }
            self.dirs[d].buf = buf;
            at += FRAME_HEADER + len;
        }
        if !self.dirs[d].lost {
            self.dirs[d].buf.drain(..at);
        }
    }

    /// The payload length of the whole frame at `at` in direction `d`'s buffer, or `None` when
    /// it is not all there (or too large: the direction is given up).
    fn next_frame(&mut self, d: usize, at: usize) -> Option<usize> {
        let dir = &mut self.dirs[d];
        let head = dir.buf.get(at..at + FRAME_HEADER)?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]);
        if len > dir.max_frame.min(MAX_FRAME_BUFFERED) {
            self.stats.too_large += 1;
            dir.give_up();
            return None;
        }
        let len = len as usize;
        (dir.buf.len() >= at + FRAME_HEADER + len).then_some(len)
    }

    /// `len` bytes of the client's (or the server's) stream were never seen. Inside a DATA
    /// frame whose header came, the frame's end is known: its stream's message is marked
    /// damaged (the body keeps what came before the gap) and the framing goes on. Anywhere
    /// else whole frames may be lost, HEADERS among them: the direction's open messages are
    /// marked damaged, and its frames are found again as in a connection joined mid-way.
    pub fn gap(&mut self, from_client: bool, len: u64) {
        let d = usize::from(!from_client);
        let dir = &mut self.dirs[d];
        if dir.lost {
            return;
        }
        if !dir.synced {
            // Still looking for frame boundaries (joined mid-way): look again after the gap.
            dir.buf.clear();
            return;
        }
        if let Some((stream, end, left)) = dir.skip {
            if let Some(left) = (left as u64).checked_sub(len) {
                dir.skip = Some((stream, end, left as usize));
                self.damage(d, stream, len);
                return;
            }
        } else if dir.buf.len() >= FRAME_HEADER && dir.buf[3] == DATA && dir.block.is_none() {
            let b = &dir.buf;
            let total = FRAME_HEADER + u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
            let end = b[4] & END_STREAM != 0;
            let rest = total.checked_sub(b.len()).map(|r| r as u64);
            if let Some(left) = rest.and_then(|r| r.checked_sub(len)) {
                // What came of the payload before the gap (its padding length byte aside).
                let skip = 1 + usize::from(b[4] & PADDED != 0);
                let seen = b
                    .get(FRAME_HEADER + skip - 1..)
                    .unwrap_or_default()
                    .to_vec();
                dir.buf.clear();
                dir.skip = Some((stream, end, left as usize));
                self.body(d, stream, &seen, false);
                self.damage(d, stream, len);
                return;
            }
        }
        // Whole frames may be lost, header blocks among them: the frames are looked for again
        // from the bytes after the gap, and header blocks decoded from then on as in a
        // connection joined mid-way. The direction's open messages may have lost bytes in it.
        self.stats.gaps += 1;
        let dir = &mut self.dirs[d];
        dir.buf.clear();
        dir.block = None;
        dir.synced = false;
        dir.joined = Some(joined::Decoder::default());
        for s in self.streams.values_mut() {
            let (m, done) = if d == 0 {
                (&mut s.request, s.request_done)
            } else {
                (&mut s.response, s.response_done)
            };
            if let Some(m) = m.as_mut().filter(|_| !done) {
                m.missing += len;
            }
        }
    }

    /// Marks the message of `stream` that direction `d` sends as missing `len` bytes.
    fn damage(&mut self, d: usize, stream: u32, len: u64) {
        if let Some(s) = self.streams.get_mut(&stream) {
            let m = if d == 0 {
                &mut s.request
            } else {
                &mut s.response
            };
            if let Some(m) = m {
                m.missing += len;
            }
        }
        self.stats.data_gaps += 1;
    }

    /// Discards what is left of a DATA frame a gap fell into; returns the bytes after it.
    fn skip_rest_of_frame<'b>(&mut self, d: usize, bytes: &'b [u8]) -> &'b [u8] {
        let Some((stream, end, left)) = self.dirs[d].skip else {
            return bytes;
        };
        let n = left.min(bytes.len());
        if n < left {
            self.dirs[d].skip = Some((stream, end, left - n));
        } else {
            self.dirs[d].skip = None;
            if end {
                self.body(d, stream, &[], true);
            }
        }
        &bytes[n..]
    }

    /// The connection ended: every stream with a request is reported as it stands.
    pub fn close(&mut self) {
        for (_, s) in std::mem::take(&mut self.streams) {
            self.report(s);
        }
    }

    /// Bytes held: partial frames, header blocks, the bodies of open streams.
    pub fn buffered(&self) -> usize {
        let dirs: usize = self
            .dirs
            .iter()
            .map(|d| d.buf.capacity() + d.block.as_ref().map_or(0, |b| b.bytes.capacity()))
            .sum();
        let body = |m: &Option<Message>| m.as_ref().map_or(0, |m| m.body.capacity());
        let streams: usize = self
            .streams
            .values()
            .map(|s| body(&s.request) + body(&s.response))
            .sum();
        dirs + streams
            + self
                .done
                .iter()
                .map(|(q, r)| q.body.capacity() + body(r))
                .sum::<usize>()
    }

    /// The pairs finished since the last call.
    pub fn pairs(&mut self) -> std::vec::Drain<'_, Pair> {
        self.done.drain(..)
    }

    fn report(&mut self, s: Stream) {
        let cfg = crate::http::HttpConfig {
            max_body_bytes: self.max_body,
            ..Default::default()
        };
        if let Some(mut request) = s.request {
            request.complete = s.request_done;
            finish_body(&mut request, &cfg);
            let response = s.response.map(|mut r| {
                r.complete = s.response_done;
                finish_body(&mut r, &cfg);
                r
            });
            self.done.push((request, response));
        }
    }

    /// One whole frame (header and payload) sent by direction `d`.
    fn frame(&mut self, d: usize, frame: &[u8], ts: u64) {
        self.stats.frames += 1;
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        if self.dirs[d].block.is_some() && kind != CONTINUATION {
            // A header block must be followed by its CONTINUATIONs alone.
            self.stats.protocol_errors += 1;
            return self.dirs[d].give_up();
        }
        match kind {
            DATA => {
                if let Some(body) = unpadded(flags, payload) {
                    self.body(d, stream, body, flags & END_STREAM != 0);
                }
            }
            HEADERS => {
                let Some(mut block) = unpadded(flags, payload) else {
                    self.stats.protocol_errors += 1;
                    return self.dirs[d].give_up();
                };
                if flags & PRIORITY != 0 {
                    block = block.get(5..).unwrap_or_default();
                }
                self.start_block(d, stream, block, flags, false, ts);
            }
            PUSH_PROMISE => {
                let block = unpadded(flags, payload).and_then(|p| p.get(4..));
                let Some(block) = block else {
                    self.stats.protocol_errors += 1;
                    return self.dirs[d].give_up();
                };
                self.start_block(d, stream, block, flags, true, ts);
            }
            CONTINUATION => {
                if self.dirs[d].block.is_none()
                    && let Some(j) = &mut self.dirs[d].joined
                {
                    // The rest of a block that began before the join.
                    j.forget();
                    return;
                }
                let Some(block) = self.dirs[d].block.as_mut().filter(|b| b.stream == stream) else {
                    self.stats.protocol_errors += 1;
                    return self.dirs[d].give_up();
                };
                block.bytes.extend_from_slice(payload);
                if block.bytes.len() > MAX_HEADER_BLOCK {
                    self.stats.too_large += 1;
                    return self.dirs[d].give_up();
                }
                if flags & END_HEADERS != 0 {
                    self.finish_block(d);
                }
            }
            RST_STREAM => {
                if let Some(s) = self.streams.remove(&stream) {
                    self.stats.resets += 1;
                    self.report(s);
                }
            }
            SETTINGS if flags & ACK == 0 => self.settings(d, payload),
            // PRIORITY, PING, GOAWAY (streams still end by their frames or at close),
            // WINDOW_UPDATE, and types this does not know: nothing to report.
            _ => {}
        }
    }

    /// SETTINGS from direction `d`: they bound what the other direction sends.
    fn settings(&mut self, d: usize, payload: &[u8]) {
        let other = &mut self.dirs[1 - d];
        for p in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
            match u16::from_be_bytes([p[0], p[1]]) {
                // SETTINGS_HEADER_TABLE_SIZE: the largest table the other side's encoder may
                // use, which its size updates announce.
                1 => other.hpack.set_max_allowed_table_size(value as usize),
                // SETTINGS_MAX_FRAME_SIZE, within the range the protocol allows.
                5 if (DEFAULT_MAX_FRAME..=0x00ff_ffff).contains(&value) => other.max_frame = value,
                _ => {}
            }
        }
    }

    fn start_block(
        &mut self,
        d: usize,
        stream: u32,
        block: &[u8],
        flags: u8,
        promise: bool,
        ts: u64,
    ) {
        if block.len() > MAX_HEADER_BLOCK {
            self.stats.too_large += 1;
            return self.dirs[d].give_up();
        }
        self.dirs[d].block = Some(Block {
            stream,
            bytes: block.to_vec(),
            end_stream: flags & END_STREAM != 0,
            promise,
            ts,
        });
        if flags & END_HEADERS != 0 {
            self.finish_block(d);
        }
    }

    /// Decodes the gathered header block of direction `d` and applies it to its stream.
    fn finish_block(&mut self, d: usize) {
        let Some(block) = self.dirs[d].block.take() else {
            return;
        };
        let dir = &mut self.dirs[d];
        if !dir.hpack_ok {
            self.stats.hpack_failures += 1;
            return;
        }
        let mut fields = Fields::default();
        if let Some(j) = &mut dir.joined {
            match j.decode(&block.bytes) {
                Ok(b) => {
                    self.stats.dynamic_misses += b.misses;
                    for (n, v) in &b.fields {
                        fields.push(n, v);
                    }
                }
                Err(joined::Malformed) => {
                    j.forget();
                    self.stats.hpack_failures += 1;
                    return;
                }
            }
        } else if dir
            .hpack
            .decode_with_cb(&block.bytes, |n, v| fields.push(&n, &v))
            .is_err()
        {
            // The table may now differ from the encoder's: no later block can be trusted.
            dir.hpack_ok = false;
            self.stats.hpack_failures += 1;
            return;
        }
        if block.promise {
            return;
        }
        if d == 0 {
            self.request_headers(block.stream, fields, block.end_stream, block.ts);
        } else {
            self.response_headers(block.stream, fields, block.end_stream, block.ts);
        }
    }

    fn request_headers(&mut self, id: u32, mut fields: Fields, end: bool, ts: u64) {
        if !self.streams.contains_key(&id) && self.streams.len() >= MAX_STREAMS {
            self.stats.streams_over_limit += 1;
            return;
        }
        let s = self.streams.entry(id).or_default();
        match &mut s.request {
            // Trailers.
            Some(request) => append(request, &fields),
            None => {
                // Joined mid-connection, the method or path may be an entry from before: the
                // request cannot be reported without inventing it.
                let (Some(method), Some(path)) = (fields.method.take(), fields.path.take()) else {
                    self.stats.streams_unreadable += 1;
                    self.streams.remove(&id);
                    return;
                };
                let start = StartLine::Request {
                    method: method.into(),
                    target: path.into(),
                };
                let mut m = Message::new(start, 2, ts, None);
                if let Some(authority) = fields.authority.take()
                    && fields.regular.values("host").next().is_none()
                {
                    m.headers.push("host", &authority);
                }
                append(&mut m, &fields);
                s.request = Some(m);
                self.stats.streams += 1;
            }
        }
        s.request_done |= end;
        self.finish_if_done(id);
    }

    fn response_headers(&mut self, id: u32, fields: Fields, end: bool, ts: u64) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        match (&mut s.response, fields.status) {
            (Some(response), _) => append(response, &fields),
            // 1xx heads come before the final one.
            (None, Some(status)) if !(100..200).contains(&status) => {
                let start = StartLine::Response {
                    status,
                    reason: Default::default(),
                };
                let mut m = Message::new(start, 2, ts, None);
                append(&mut m, &fields);
                s.response = Some(m);
            }
            _ => return,
        }
        s.response_done |= end;
        self.finish_if_done(id);
    }

    fn body(&mut self, d: usize, id: u32, data: &[u8], end: bool) {
        let max = self.max_body;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let (message, done) = if d == 0 {
            (s.request.as_mut(), &mut s.request_done)
        } else {
            (s.response.as_mut(), &mut s.response_done)
        };
        // After a gap the body stays what came before it, as for HTTP/1.
        if let Some(m) = message.filter(|m| m.missing == 0) {
            let room = max.saturating_sub(m.body.len());
            m.body.extend_from_slice(&data[..data.len().min(room)]);
            m.body_truncated |= data.len() > room;
        }
        *done |= end;
        self.finish_if_done(id);
    }

    fn finish_if_done(&mut self, id: u32) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.request_done && s.response_done)
            && let Some(s) = self.streams.remove(&id)
        {
            self.report(s);
        }
    }
}

/// A finished message's body as the record carries it: a gRPC call's messages as Akto reads
/// them ([`grpc::payload`]), any other body decoded by its Content-Encoding.
fn finish_body(m: &mut Message, cfg: &crate::http::HttpConfig) {
    if m.header("content-type").is_some_and(grpc::is_grpc) {
        let p = grpc::payload(&m.body, m.header("grpc-encoding"), cfg.max_body_bytes);
        m.body = p.base64.into_bytes();
        m.decoded = p.compressed > p.failed;
        m.decode_failed = p.failed > 0;
    } else {
        crate::http::decode_body(m, cfg);
    }
}

/// A payload without its padding (`PADDED`: a length byte first, that many bytes at the end);
/// `None` when the padding is longer than the payload.
fn unpadded(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    if flags & PADDED == 0 {
        return Some(payload);
    }
    let (&pad, rest) = payload.split_first()?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
}

/// A decoded header block: the pseudo-header fields apart, the others in order.
#[derive(Default)]
struct Fields {
    method: Option<String>,
    path: Option<String>,
    authority: Option<String>,
    status: Option<u16>,
    regular: crate::http::Headers,
}

impl Fields {
    fn push(&mut self, name: &[u8], value: &[u8]) {
        let text = || String::from_utf8_lossy(value).into_owned();
        match name {
            b":method" => self.method = Some(text()),
            b":path" => self.path = Some(text()),
            b":authority" => self.authority = Some(text()),
            b":status" => {
                self.status = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok())
            }
            _ if name.first() == Some(&b':') => {}
            _ => self.regular.push_raw(name, value),
        }
    }
}

fn append(m: &mut Message, fields: &Fields) {
    for (n, v) in fields.regular.iter() {
        m.headers.push(n, v);
    }
}

#[cfg(test)]
mod tests;
