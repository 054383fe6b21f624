//! The Akto record: one JSON object per exchange, every value a string, as Akto's consumers of
//! topic `akto.api.logs` read it. Serialized into a buffer the caller reuses.
//!
//! Headers are a JSON object serialized into a string, names in lower case; a field sent several
//! times is combined the way HTTP combines it (values joined by ", "), except `set-cookie`, whose
//! values may contain commas and are joined by "\n". Bodies are text (invalid UTF-8 replaced).
//! A record never exceeds `max_record_bytes`: payloads are cut to fit, and the record then carries
//! `"truncated"` naming what was cut (also when a body hit the body cap).
//!
//! `truncated` also tells what capture damage did: a comma-separated list with one entry per
//! incomplete payload, `requestPayload` then `responsePayload`, each optionally followed by
//! `:missing=N` (N bytes of that message were never seen: lost segments, packets cut by the
//! mirror's packet length; the payload is what came before the first of them) and `:ended` (the
//! connection ended before the message did). A bare name: cut at a size cap only.

use crate::http::{Exchange, Message, StartLine, VERSION_NAMES, version_slot};
use std::borrow::Cow;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::net::IpAddr;

/// The fields every record has, in the order they are written (`truncated`, when payloads were
/// cut, comes last): the contract with Akto's consumer. The encoder writes them as byte literals;
/// the tests and fuzz targets check its output against this list.
pub const FIELDS: [&str; 16] = [
    "path",
    "method",
    "requestHeaders",
    "responseHeaders",
    "requestPayload",
    "responsePayload",
    "ip",
    "destIp",
    "time",
    "statusCode",
    "status",
    "type",
    "akto_account_id",
    "akto_vxlan_id",
    "is_pending",
    "source",
];

/// Record settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordConfig {
    /// `akto_account_id`. Default "1000000".
    pub account_id: String,
    /// Largest record in bytes. Default 1,000,000 (under Kafka's default 1 MiB message limit).
    pub max_record_bytes: usize,
}

impl Default for RecordConfig {
    fn default() -> Self {
        RecordConfig {
            account_id: "1000000".to_owned(),
            max_record_bytes: 1_000_000,
        }
    }
}

/// Why an exchange produced no record.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Even with empty payloads the record exceeds the size limit (enormous heads).
    #[error("record exceeds max_record_bytes even without payloads")]
    TooLarge,
}

/// Encodes exchanges into Akto records.
#[derive(Debug)]
pub struct Encoder {
    cfg: RecordConfig,
    /// Per HTTP version ([`VERSION_NAMES`]): the record's text from the end of
    /// `status` to the start of the VNI, the same in every record of that version (`type` and
    /// the escaped `akto_account_id`).
    versions: [Vec<u8>; 3],
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new(RecordConfig::default())
    }
}

impl Encoder {
    pub fn new(cfg: RecordConfig) -> Encoder {
        let versions = VERSION_NAMES.map(|v| version_and_account(v, &cfg.account_id));
        Encoder { cfg, versions }
    }

    /// Writes the record of `ex` into `buf` (cleared first).
    ///
    /// The JSON is written by hand, field by field, in the order and form `serde_json` would give
    /// a struct of string fields (the tests keep such a struct as the reference): no
    /// intermediate strings, headers escaped twice in one pass. The fields before the payloads
    /// are the same in every attempt to fit the record in `max_record_bytes`: they are written
    /// once (`push_head`), and each attempt writes the rest after them (`Encoder::push_tail`).
    pub fn encode(&self, ex: &Exchange, buf: &mut Vec<u8>) -> Result<(), RecordError> {
        buf.clear();
        let resp = ex.response.as_deref();
        let req_body = body_text(&ex.request.body);
        let resp_body = resp.map_or(Cow::Borrowed(""), |r| body_text(&r.body));
        push_head(buf, ex);
        let head = buf.len();
        let req_cut = ex.request.body_truncated;
        let resp_cut = resp.is_some_and(|r| r.body_truncated);
        // An escaped payload is never shorter than its text: when the payloads alone pass the
        // limit, the whole record cannot fit and is not written in full only to be thrown away.
        if req_body.len() + resp_body.len() <= self.cfg.max_record_bytes {
            let label = truncated_label((req_cut, Some(&ex.request)), (resp_cut, resp));
            self.push_tail(buf, head, ex, (&req_body, &resp_body), &label);
            if buf.len() <= self.cfg.max_record_bytes {
                return Ok(());
            }
        }
        self.encode_cut(ex, buf, head, (&req_body, &resp_body), (req_cut, resp_cut))
    }

    /// The record of `ex` with its payloads too large, the fields before them in `buf` up to
    /// `head`: finds what the record costs without payloads, then shares the rest between them
    /// and cuts each to its share. `(req_cut, resp_cut)`: whether each payload was cut at the
    /// body cap already.
    fn encode_cut(
        &self,
        ex: &Exchange,
        buf: &mut Vec<u8>,
        head: usize,
        (req_body, resp_body): (&str, &str),
        (mut req_cut, mut resp_cut): (bool, bool),
    ) -> Result<(), RecordError> {
        let resp = ex.response.as_deref();
        let label = |req_cut: bool, resp_cut: bool| {
            truncated_label((req_cut, Some(&ex.request)), (resp_cut, resp))
        };
        self.push_tail(buf, head, ex, ("", ""), &label(true, true));
        let room = self
            .cfg
            .max_record_bytes
            .checked_sub(buf.len())
            .ok_or(RecordError::TooLarge)?;
        let (req_room, resp_room) = share(escaped_len(req_body), escaped_len(resp_body), room);
        let req_fit = cut_to_escaped(req_body, req_room);
        let resp_fit = cut_to_escaped(resp_body, resp_room);
        req_cut |= req_fit.len() < req_body.len();
        resp_cut |= resp_fit.len() < resp_body.len();
        self.push_tail(
            buf,
            head,
            ex,
            (req_fit, resp_fit),
            &label(req_cut, resp_cut),
        );
        debug_assert!(buf.len() <= self.cfg.max_record_bytes);
        Ok(())
    }

    /// Writes the rest of the record from the payloads on, over whatever `buf` holds past `head`
    /// (the end of [`push_head`]'s fields): the payloads given, addresses, time, status, the
    /// fixed fields, and `truncated` unless it is empty. Addresses and numbers need no escaping.
    fn push_tail(
        &self,
        buf: &mut Vec<u8>,
        head: usize,
        ex: &Exchange,
        (req, resp): (&str, &str),
        truncated: &str,
    ) {
        let (status_code, status) = match ex.response.as_ref().map(|r| &r.start) {
            Some(StartLine::Response { status, reason }) => (*status, reason.as_str()),
            _ => (0, ""),
        };
        buf.truncate(head);
        push_escaped(buf, req, false);
        buf.extend_from_slice(b"\",\"responsePayload\":\"");
        push_escaped(buf, resp, false);
        buf.extend_from_slice(b"\",\"ip\":\"");
        push_ip(buf, ex.client.ip());
        buf.extend_from_slice(b"\",\"destIp\":\"");
        push_ip(buf, ex.server.ip());
        buf.extend_from_slice(b"\",\"time\":\"");
        push_decimal(buf, ex.request.ts / 1_000_000);
        buf.extend_from_slice(b"\",\"statusCode\":\"");
        push_decimal(buf, u64::from(status_code));
        buf.extend_from_slice(b"\",\"status\":\"");
        push_escaped(buf, status, false);
        buf.extend_from_slice(&self.versions[version_slot(ex.request.version)]);
        push_decimal(buf, u64::from(ex.vni));
        buf.extend_from_slice(b"\",\"is_pending\":\"");
        buf.extend_from_slice(if ex.response.is_some() {
            b"false"
        } else {
            b"true"
        });
        buf.extend_from_slice(b"\",\"source\":\"MIRRORING\"");
        if !truncated.is_empty() {
            buf.extend_from_slice(b",\"truncated\":\"");
            push_escaped(buf, truncated, false);
            buf.push(b'"');
        }
        buf.push(b'}');
    }
}

/// The record's text between `status` and `akto_vxlan_id`'s value: `type` (`version`) and
/// `akto_account_id`, escaped.
fn version_and_account(version: &str, account_id: &str) -> Vec<u8> {
    let mut out = b"\",\"type\":\"".to_vec();
    push_escaped(&mut out, version, false);
    out.extend_from_slice(b"\",\"akto_account_id\":\"");
    push_escaped(&mut out, account_id, false);
    out.extend_from_slice(b"\",\"akto_vxlan_id\":\"");
    out
}

/// Appends the record's fields before the payloads, up to the opening quote of
/// `requestPayload`: path, method and both messages' headers (`{}` without a response).
fn push_head(buf: &mut Vec<u8>, ex: &Exchange) {
    let (method, path) = match &ex.request.start {
        StartLine::Request { method, target } => (method.as_str(), target.as_str()),
        StartLine::Response { .. } => ("", ""),
    };
    buf.extend_from_slice(b"{\"path\":\"");
    push_escaped(buf, path, false);
    buf.extend_from_slice(b"\",\"method\":\"");
    push_escaped(buf, method, false);
    buf.extend_from_slice(b"\",\"requestHeaders\":\"");
    push_headers(buf, &ex.request, true);
    buf.extend_from_slice(b"\",\"responseHeaders\":\"");
    match &ex.response {
        Some(r) => push_headers(buf, r, true),
        None => buf.extend_from_slice(b"{}"),
    }
    buf.extend_from_slice(b"\",\"requestPayload\":\"");
}

/// The `truncated` value for the two payloads, each given as (cut at a size cap, message): see
/// the module doc. Allocates only for a damaged message.
fn truncated_label(
    req: (bool, Option<&Message>),
    resp: (bool, Option<&Message>),
) -> Cow<'static, str> {
    let damaged = |m: Option<&Message>| m.is_some_and(|m| m.missing > 0 || !m.complete);
    if !damaged(req.1) && !damaged(resp.1) {
        return Cow::Borrowed(match (req.0, resp.0) {
            (true, true) => "requestPayload,responsePayload",
            (true, false) => "requestPayload",
            (false, true) => "responsePayload",
            (false, false) => "",
        });
    }
    let mut out = String::new();
    for (name, (cut, msg)) in [("requestPayload", req), ("responsePayload", resp)] {
        let missing = msg.map_or(0, |m| m.missing);
        let ended = msg.is_some_and(|m| !m.complete);
        if !cut && missing == 0 && !ended {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(name);
        if missing > 0 {
            out.push_str(":missing=");
            out.push_str(itoa::Buffer::new().format(missing));
        }
        if ended {
            out.push_str(":ended");
        }
    }
    Cow::Owned(out)
}

/// Splits `room` between two lengths: each gets what it needs if both fit, otherwise the smaller
/// keeps all it needs up to half, and the larger takes the rest.
fn share(a: usize, b: usize, room: usize) -> (usize, usize) {
    if a + b <= room {
        return (a, b);
    }
    let half = room / 2;
    if a <= half {
        (a, room - a)
    } else if b <= half {
        (room - b, b)
    } else {
        (half, room - half)
    }
}

/// Bytes a character takes inside a JSON string.
fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn escaped_len(s: &str) -> usize {
    s.chars().map(escaped_char_len).sum()
}

/// The longest prefix of `s`, on a character boundary, whose escaped form fits in `room` bytes.
fn cut_to_escaped(s: &str, room: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += escaped_char_len(c);
        if used > room {
            return &s[..i];
        }
    }
    s
}

/// The bytes of the word `w` (8 bytes of text, little-endian) to escape inside a JSON string:
/// `"`, `\` and the control characters below 0x20 (not DEL, not non-ASCII bytes: as in
/// serde_json). The high bit of the lowest such byte is set, and no bit below it.
///
/// The classic "has a byte less than n" test `(w - n*ONES) & !w & HIGH` sets the high bit of
/// each byte below 0x20, and the same with `n = 1` on `w ^ (c*ONES)` flags the bytes equal to
/// `c`. A borrow only starts at a byte that really is flagged and only carries upwards, so a
/// byte above a flagged one may be flagged wrongly but the lowest flagged byte is always right:
/// its index is `trailing_zeros / 8`. Bytes of 0x80 and above are never flagged (the `!w` term).
fn escapes_in(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let control = w.wrapping_sub(ONES * 0x20);
    // `quote` and `backslash` have the high bits of `w`: `!w` serves all three tests.
    (control | quote.wrapping_sub(ONES) | backslash.wrapping_sub(ONES)) & !w & HIGH
}

/// The escape of a byte that [`escapes_in`] flags, as serde_json writes it: `\"`, `\\`,
/// `\b \t \n \f \r`, other control characters as `\u00xx` (lower-case hex); with `TWICE`, that
/// escape escaped again (`\"` becomes `\\\"`), for JSON text inside a JSON string. The bytes
/// (padded) and how many of them count: at most [`MAX_ESCAPED`].
fn escape_of<const TWICE: bool>(b: u8) -> ([u8; 8], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match b {
        b'"' => b'"',
        b'\\' => b'\\',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x08 => b'b',
        0x0c => b'f',
        _ => 0,
    };
    let (hi, lo) = (HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]);
    // Escaped again, an escape's `\` and `"` (its only characters to escape) take a `\` each.
    match (short, TWICE) {
        (0, false) => ([b'\\', b'u', b'0', b'0', hi, lo, 0, 0], 6),
        (0, true) => ([b'\\', b'\\', b'u', b'0', b'0', hi, lo, 0], 7),
        (c, false) => ([b'\\', c, 0, 0, 0, 0, 0, 0], 2),
        (c @ (b'"' | b'\\'), true) => ([b'\\', b'\\', b'\\', c, 0, 0, 0, 0], 4),
        (c, true) => ([b'\\', b'\\', c, 0, 0, 0, 0, 0], 3),
    }
}

/// Most bytes one input byte takes escaped ([`escape_of`], twice: `\\u00xx`).
const MAX_ESCAPED: usize = 7;

/// The first 8 bytes of `b` as a little-endian word, zeros past the end of a shorter `b`. A
/// short `b` is read with two overlapping loads rather than byte by byte.
fn load_word(b: &[u8]) -> u64 {
    if let Some(w) = b.first_chunk::<8>() {
        return u64::from_le_bytes(*w);
    }
    // Both loads cover the whole of `b`; the bytes they share are the same.
    let n = b.len() as u32;
    if let (Some(lo), Some(hi)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        u64::from(u32::from_le_bytes(*lo)) | u64::from(u32::from_le_bytes(*hi)) << (8 * (n - 4))
    } else if let (Some(lo), Some(hi)) = (b.first_chunk::<2>(), b.last_chunk::<2>()) {
        u64::from(u16::from_le_bytes(*lo)) | u64::from(u16::from_le_bytes(*hi)) << (8 * (n - 2))
    } else {
        b.first().map_or(0, |&x| u64::from(x))
    }
}

/// Writes into a `Vec`'s spare capacity, reserved beforehand for a piece of output whose size
/// is bounded: each write is one store of a fixed-size word and a bounds check, with none of
/// `extend_from_slice`'s growth and length bookkeeping per piece (most pieces here are a few
/// bytes). Every byte of `spare[..at]` has been written; a write that does not fit is left out
/// and recorded in `fits`, so the caller can start over with more room.
struct Appender<'a> {
    spare: &'a mut [MaybeUninit<u8>],
    at: usize,
    fits: bool,
}

impl Appender<'_> {
    /// Stores all of `bytes` and keeps the first `len` (`<= N`): the rest is overwritten by the
    /// next write or left past the end.
    #[inline(always)]
    fn put<const N: usize>(&mut self, bytes: [u8; N], len: usize) {
        match self.spare.get_mut(self.at..self.at + N) {
            Some(dst) => {
                dst.copy_from_slice(&bytes.map(MaybeUninit::new));
                self.at += len.min(N);
            }
            None => self.fits = false,
        }
    }

    /// `s` escaped as the contents of a JSON string, byte for byte as serde_json escapes it (see
    /// [`escapes_in`], [`escape_of`]); with `TWICE`, escaped once more: what a JSON string holding
    /// the once-escaped string (in quotes) would contain, minus those quotes. Takes at most
    /// `s.len() * MAX_ESCAPED + 8` bytes.
    ///
    /// Goes 8 bytes at a time ([`escapes_in`]), the last few padded with spaces (which need no
    /// escaping): each word is stored whole and only what is text and needs no escape is kept,
    /// up to the end of the text or the byte to escape.
    #[inline(always)]
    fn escaped<const TWICE: bool>(&mut self, s: &[u8]) {
        const SPACES: u64 = u64::from_le_bytes([b' '; 8]);
        let mut rest = s;
        while !rest.is_empty() {
            let len = rest.len().min(8);
            let word = if len == 8 {
                load_word(rest)
            } else {
                load_word(rest) | SPACES << (8 * len)
            };
            let flagged = escapes_in(word);
            if flagged == 0 {
                self.put(word.to_le_bytes(), len);
                rest = &rest[len..];
            } else {
                // Never in the padding: the lowest flagged byte is a real one.
                let at = (flagged.trailing_zeros() / 8) as usize;
                self.put(word.to_le_bytes(), at);
                let (escape, n) = escape_of::<TWICE>(rest[at]);
                self.put(escape, n);
                rest = &rest[at + 1..];
            }
        }
    }
}

/// Runs `write` on an [`Appender`] over at least `bound` bytes of `out`'s spare capacity and
/// keeps what it wrote; if that did not fit (a bound too small: never for the bounds here, which
/// the tests check against the worst cases), starts over with twice the room.
#[inline(always)]
fn append_bounded(out: &mut Vec<u8>, mut bound: usize, mut write: impl FnMut(&mut Appender<'_>)) {
    loop {
        out.reserve(bound);
        let mut appender = Appender {
            spare: out.spare_capacity_mut(),
            at: 0,
            fits: true,
        };
        write(&mut appender);
        let Appender { at, fits, .. } = appender;
        if fits {
            // SAFETY: `spare` starts at `out.len()`, and the appender only advances `at` over
            // bytes it has written: the first `at` bytes past the length are initialized.
            unsafe { out.set_len(out.len() + at) };
            return;
        }
        bound = bound.saturating_mul(2).max(64);
    }
}

/// Appends `s` escaped as the contents of a JSON string ([`Appender::escaped`]), in pieces of a
/// few KiB so that the room reserved stays near the text's size however large it is.
fn push_escaped(out: &mut Vec<u8>, s: &str, twice: bool) {
    const PIECE: usize = 4096;
    for piece in s.as_bytes().chunks(PIECE) {
        let bound = piece.len() * MAX_ESCAPED + 8;
        if twice {
            append_bounded(out, bound, |a| a.escaped::<true>(piece));
        } else {
            append_bounded(out, bound, |a| a.escaped::<false>(piece));
        }
    }
}

/// Appends `n` in decimal, as `n.to_string()` writes it.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `n` in decimal, no leading zeros: at most three digits, written without the
/// general formatter's copy.
fn push_octet(out: &mut Vec<u8>, n: u8) {
    let (h, t, o) = (n / 100, n / 10 % 10, n % 10);
    match n {
        100.. => out.extend_from_slice(&[b'0' + h, b'0' + t, b'0' + o]),
        10.. => out.extend_from_slice(&[b'0' + t, b'0' + o]),
        _ => out.push(b'0' + o),
    }
}

/// Appends the address as its `Display` writes it: IPv4 by hand (the common case), IPv6 (with
/// its zero compression rules) through `Display`.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_octet(out, octet);
            }
        }
        IpAddr::V6(v6) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// The body as text, as `String::from_utf8_lossy` gives it (borrowed when valid), but validated
/// by the faster `str::from_utf8` first.
fn body_text(body: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(body) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(body),
    }
}

/// Fields sorted on the stack; a message with more sorts a Vec.
const STACK_FIELDS: usize = 32;

/// Appends the message's headers as a JSON object: names in byte order, the values of a
/// repeated field joined (", ", or a newline for set-cookie) in the order sent. With `twice`,
/// the object comes already escaped as the contents of a JSON string (`{\"name\":\"value\"}`),
/// which the record holds: one pass, no intermediate string. Runs twice per record.
fn push_headers(out: &mut Vec<u8>, msg: &Message, twice: bool) {
    if twice {
        push_headers_as::<true>(out, msg);
    } else {
        push_headers_as::<false>(out, msg);
    }
}

/// [`push_headers`], its quoting fixed at compile time: each piece between a name and a value
/// is one store of a constant.
fn push_headers_as<const TWICE: bool>(out: &mut Vec<u8>, msg: &Message) {
    // The pieces around names and values, padded to one word each, and their lengths.
    let ((quote, quote_len), (between, between_len)) = if TWICE {
        ((*b"\\\"\0\0\0\0\0\0", 2), (*b"\\\":\\\"\0\0\0", 5))
    } else {
        ((*b"\"\0\0\0\0\0\0\0", 1), (*b"\":\"\0\0\0\0\0", 3))
    };
    let (text, positions) = msg.headers.parts();
    let part = |a: u32, b: u32| text.get(a as usize..b as usize).unwrap_or_default();
    // Each field with its name's first 8 bytes as a big-endian number (zero-padded), which
    // orders as the names do where it differs: most comparisons are of integers.
    let keyed = |&f: &[u32; 4]| (load_word(part(f[0], f[1])).swap_bytes(), f);
    let count = positions.len();
    let mut on_stack = [(0, [0; 4]); STACK_FIELDS];
    let mut on_heap = Vec::new();
    let fields: &mut [(u64, [u32; 4])] = if count <= STACK_FIELDS {
        for (slot, field) in on_stack.iter_mut().zip(positions) {
            *slot = keyed(field);
        }
        &mut on_stack[..count]
    } else {
        on_heap.extend(positions.iter().map(keyed));
        &mut on_heap
    };
    // Stable: repeated fields keep their order.
    fields.sort_by(|x, y| {
        x.0.cmp(&y.0)
            .then_with(|| part(x.1[0], x.1[1]).cmp(part(y.1[0], y.1[1])))
    });
    let fields = &*fields;
    append_bounded(out, headers_bound(text.len(), count), |out| {
        out.put(*b"{", 1);
        let mut rest = fields;
        let mut first = true;
        while let Some((&(key, [a, b, v, c]), tail)) = rest.split_first() {
            let name = part(a, b);
            let run = tail
                .iter()
                .take_while(|&&(k, [a, b, _, _])| k == key && part(a, b) == name)
                .count();
            if !first {
                out.put(*b",", 1);
            }
            first = false;
            out.put(quote, quote_len);
            out.escaped::<TWICE>(name);
            out.put(between, between_len);
            out.escaped::<TWICE>(part(v, c));
            // Escaping goes character by character: the pieces escaped in turn are the joined
            // value escaped.
            let sep: &[u8] = if name == b"set-cookie" { b"\n" } else { b", " };
            for &(_, [_, _, v, c]) in &tail[..run] {
                out.escaped::<TWICE>(sep);
                out.escaped::<TWICE>(part(v, c));
            }
            out.put(quote, quote_len);
            rest = &tail[run..];
        }
        out.put(*b"}", 1);
    });
}

/// Most bytes a header object takes, escaped twice, for `count` fields in `text_len` bytes of
/// header text: per field its quotes, `between`, a comma and the separator of a value joined to
/// it (escaped: at most 14 bytes), on top of its text escaped; then the braces and the slack of
/// one word stored whole.
fn headers_bound(text_len: usize, count: usize) -> usize {
    text_len * MAX_ESCAPED + count * 25 + 10
}

/// The message's headers as a JSON object serialized to a string (see [`push_headers`]).
#[cfg(test)]
fn headers_json(msg: &Message) -> String {
    let mut out = Vec::new();
    push_headers(&mut out, msg, false);
    String::from_utf8(out).expect("escaping keeps UTF-8")
}

#[cfg(test)]
mod tests;
