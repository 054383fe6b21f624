//! HTTP/1.x over reassembled TCP streams: framing of both directions ([`parser`]), client/server
//! detection and request/response pairing per connection ([`Session`], the flow table's stream
//! handler), and content decoding. Pure: no IO, no clock.

pub(crate) mod decode;
pub mod detect;
mod lazy;
mod message;
pub mod parser;
mod session;

pub use message::{Exchange, Headers, Message, Recovery, StartLine, VERSION_NAMES, version_slot};
pub(crate) use parser::decode_body;
pub use parser::{ParseError, Parser, Role, Step};
pub use session::Session;

/// Limits of HTTP parsing.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Body bytes kept per message, before and after content decoding. Default 1 MiB
    /// (`--max-body-bytes`); the rest is consumed for framing and dropped, and the message is
    /// marked truncated.
    pub max_body_bytes: usize,
    /// Longest head (start line and fields) accepted. Default 64 KiB: larger heads are abuse.
    pub max_head_bytes: usize,
    /// Requests waiting for responses per connection. Default 256: beyond it the oldest is
    /// reported unanswered once it has waited the reorder timeout (`hold_timeout_us`), and
    /// at 64 times as many in any case (`pending_overflow`); their bodies count against the
    /// memory budget.
    pub max_pending_requests: usize,
    /// How long (µs) a response head that arrived before its request waits for it. Default 2 s,
    /// the reorder timeout (`--reorder-timeout`): directions are reordered by as much as
    /// segments are.
    pub hold_timeout_us: u64,
    /// Bytes of a held response buffered per connection while it waits. Default 256 KiB, the
    /// out-of-order cap (`--max-reorder-bytes`).
    pub max_held_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 1 << 20,
            max_head_bytes: 64 * 1024,
            max_pending_requests: 256,
            hold_timeout_us: 2_000_000,
            max_held_bytes: 256 * 1024,
        }
    }
}

/// Counters of HTTP parsing and pairing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// Request heads parsed.
    pub requests: u64,
    /// Final responses parsed.
    pub responses: u64,
    /// 1xx responses other than 101 (not answers).
    pub interim_responses: u64,
    /// Request/response pairs emitted.
    pub pairs: u64,
    /// Requests emitted without a response (`is_pending`).
    pub unanswered: u64,
    /// Responses that answer no request seen (capture started mid-connection, request lost).
    pub unmatched_responses: u64,
    /// Of those, responses after a gap in the client stream: their request's head was lost, so
    /// no record can be made.
    pub request_heads_lost: u64,
    /// Responses known lost in a gap (their requests are reported unanswered).
    pub responses_lost: u64,
    /// Heads in progress destroyed by a gap (nothing to report of them).
    pub dropped_gap: u64,
    /// Messages reported although bytes inside them were never seen (a gap, a truncated packet).
    pub damaged_gap: u64,
    /// Messages reported although the connection ended before they did.
    pub damaged_ended: u64,
    /// Messages whose end was found again after a gap destroyed their framing, by how
    /// ([`crate::http::Recovery::index`]).
    pub framing_recovered: [u64; crate::http::Recovery::ALL.len()],
    /// Response heads that arrived before their request and waited for it.
    pub responses_held: u64,
    /// Held responses let go after the reorder timeout without their request.
    pub held_timeouts: u64,
    /// Held responses let go because they held more bytes than the cap.
    pub held_over_cap: u64,
    /// Messages given up for a parse error, by kind ([`ParseError::index`]).
    pub parse_errors: [u64; ParseError::ALL.len()],
    /// Bodies cut at the size cap or whose decoding stopped early.
    pub bodies_truncated: u64,
    /// Bodies whose declared Content-Encoding could not be decoded (kept as sent).
    pub decode_failures: u64,
    /// 101 Switching Protocols and CONNECT tunnels: HTTP parsing ends on the connection.
    pub protocol_switches: u64,
    /// Requests reported unanswered early because too many were waiting.
    pub pending_overflow: u64,
    /// Bytes skipped while looking for a message start (mid-stream starts, non-HTTP traffic).
    pub skipped_bytes: u64,
    /// HTTP/2 streams that carried a request.
    pub h2_streams: u64,
    /// HTTP/2 streams ended by RST_STREAM.
    pub h2_resets: u64,
    /// HTTP/2 header blocks that did not decode, or were skipped after one did not (the
    /// dynamic table unknown): their streams are not reported.
    pub h2_hpack_failures: u64,
    /// HTTP/2 framing lost: gaps that may have taken whole frames (the frames are found again
    /// after them), and oversized frames or bytes that are not HTTP/2 (the direction is given
    /// up; its open streams are reported as they stand at the close).
    pub h2_framing_lost: u64,
    /// HTTP/2 streams past the per-connection limit, not reported.
    pub h2_streams_over_limit: u64,
    /// Header fields of HTTP/2 connections joined mid-way that named a dynamic-table entry
    /// from before the join: left out, never guessed.
    pub h2_dynamic_misses: u64,
    /// HTTP/2 streams whose request head lacked `:method` or `:path` that way: not reported.
    pub h2_streams_unreadable: u64,
}

impl HttpStats {
    pub(crate) fn count_parse_error(&mut self, e: ParseError) {
        self.parse_errors[e.index()] += 1;
    }

    /// Adds another set of counters to these.
    pub fn add(&mut self, o: &HttpStats) {
        self.requests += o.requests;
        self.responses += o.responses;
        self.interim_responses += o.interim_responses;
        self.pairs += o.pairs;
        self.unanswered += o.unanswered;
        self.unmatched_responses += o.unmatched_responses;
        self.request_heads_lost += o.request_heads_lost;
        self.responses_lost += o.responses_lost;
        self.dropped_gap += o.dropped_gap;
        self.damaged_gap += o.damaged_gap;
        self.damaged_ended += o.damaged_ended;
        for (t, v) in self.framing_recovered.iter_mut().zip(o.framing_recovered) {
            *t += v;
        }
        self.responses_held += o.responses_held;
        self.held_timeouts += o.held_timeouts;
        self.held_over_cap += o.held_over_cap;
        for (t, v) in self.parse_errors.iter_mut().zip(o.parse_errors) {
            *t += v;
        }
        self.bodies_truncated += o.bodies_truncated;
        self.decode_failures += o.decode_failures;
        self.protocol_switches += o.protocol_switches;
        self.pending_overflow += o.pending_overflow;
        self.skipped_bytes += o.skipped_bytes;
        self.h2_streams += o.h2_streams;
        self.h2_resets += o.h2_resets;
        self.h2_hpack_failures += o.h2_hpack_failures;
        self.h2_framing_lost += o.h2_framing_lost;
        self.h2_streams_over_limit += o.h2_streams_over_limit;
        self.h2_dynamic_misses += o.h2_dynamic_misses;
        self.h2_streams_unreadable += o.h2_streams_unreadable;
    }
}

/// What all sessions of a flow table share: limits, the queue of finished exchanges, counters.
#[derive(Debug, Default)]
pub struct HttpCtx {
    pub cfg: HttpConfig,
    /// Finished exchanges, in completion order; the caller drains it.
    pub out: Vec<Exchange>,
    /// Totals over all mirror sessions.
    pub stats: HttpStats,
    /// The same counters per VNI.
    pub per_vni: std::collections::BTreeMap<u32, HttpStats>,
}

impl HttpCtx {
    pub fn new(cfg: HttpConfig) -> HttpCtx {
        HttpCtx {
            cfg,
            out: Vec::new(),
            stats: HttpStats::default(),
            per_vni: std::collections::BTreeMap::new(),
        }
    }

    /// Counts in the totals and in mirror session `vni`.
    pub(crate) fn bump(&mut self, vni: u32, f: impl Fn(&mut HttpStats)) {
        f(&mut self.stats);
        f(crate::flow::vni_entry(&mut self.per_vni, vni));
    }
}
