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

use crate::http::{Exchange, Message, StartLine};
use std::borrow::Cow;
use std::io::Write as _;
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
#[derive(Debug, Default)]
pub struct Encoder {
    cfg: RecordConfig,
}

impl Encoder {
    pub fn new(cfg: RecordConfig) -> Encoder {
        Encoder { cfg }
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
        let resp = ex.response.as_ref();
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
        let resp = ex.response.as_ref();
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
        buf.extend_from_slice(b"\",\"type\":\"");
        push_escaped(buf, ex.request.version_str(), false);
        buf.extend_from_slice(b"\",\"akto_account_id\":\"");
        push_escaped(buf, &self.cfg.account_id, false);
        buf.extend_from_slice(b"\",\"akto_vxlan_id\":\"");
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

/// Appends the escape of a byte that [`escapes_in`] flags, as serde_json writes it: `\"`, `\\`,
/// `\b \t \n \f \r`, other control characters as `\u00xx` (lower-case hex). With `twice`, the
/// escape is itself escaped (`\"` becomes `\\\"`), for JSON text inside a JSON string.
fn push_escape(out: &mut Vec<u8>, b: u8, twice: bool) {
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
    let (escape, len) = match short {
        0 => {
            let (hi, lo) = (HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]);
            ([b'\\', b'u', b'0', b'0', hi, lo], 6)
        }
        c => ([b'\\', c, 0, 0, 0, 0], 2),
    };
    let escape = &escape[..len];
    if !twice {
        out.extend_from_slice(escape);
        return;
    }
    // An escape is ASCII whose only characters to escape again are `\` and `"`.
    for &c in escape {
        if c == b'\\' || c == b'"' {
            out.push(b'\\');
        }
        out.push(c);
    }
}

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

/// Appends `s` escaped as the contents of a JSON string, byte for byte as serde_json escapes it
/// (see [`escapes_in`], [`push_escape`]). With `twice`, escaped once more: what a JSON string
/// holding the once-escaped string (in quotes) would contain, minus those quotes.
///
/// Goes 8 bytes at a time ([`escapes_in`]), the last few padded with spaces (which need no
/// escape): a word is copied whole (a fixed-size copy, where short runs through `memcpy` cost
/// more than they copy), then the copy is cut back to the end of the text or to the byte to
/// escape.
#[inline(always)]
fn push_escaped(out: &mut Vec<u8>, s: &str, twice: bool) {
    const SPACES: u64 = u64::from_le_bytes([b' '; 8]);
    let mut rest = s.as_bytes();
    out.reserve(rest.len() + 8);
    while !rest.is_empty() {
        let len = rest.len().min(8);
        let word = if len == 8 {
            load_word(rest)
        } else {
            load_word(rest) | SPACES << (8 * len)
        };
        out.extend_from_slice(&word.to_le_bytes());
        let flagged = escapes_in(word);
        if flagged == 0 {
            out.truncate(out.len() - (8 - len));
            rest = &rest[len..];
        } else {
            // Never in the padding: the lowest flagged byte is a real one.
            let at = (flagged.trailing_zeros() / 8) as usize;
            out.truncate(out.len() - (8 - at));
            push_escape(out, rest[at], twice);
            rest = &rest[at + 1..];
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
    let (quote, between): (&[u8], &[u8]) = if TWICE {
        (b"\\\"", b"\\\":\\\"")
    } else {
        (b"\"", b"\":\"")
    };
    // Each field with its name's first 8 bytes as a big-endian number (zero-padded), which
    // orders as the names do where it differs: most comparisons are of integers.
    fn keyed<'a>((name, value): (&'a str, &'a str)) -> (u64, &'a str, &'a str) {
        (load_word(name.as_bytes()).swap_bytes(), name, value)
    }
    let count = msg.headers.len();
    let mut on_stack = [(0, "", ""); STACK_FIELDS];
    let mut on_heap = Vec::new();
    let fields: &mut [(u64, &str, &str)] = if count <= STACK_FIELDS {
        for (slot, field) in on_stack.iter_mut().zip(msg.headers.iter()) {
            *slot = keyed(field);
        }
        &mut on_stack[..count]
    } else {
        on_heap.extend(msg.headers.iter().map(keyed));
        &mut on_heap
    };
    // Stable: repeated fields keep their order.
    fields.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    out.push(b'{');
    let mut rest = &*fields;
    let mut first = true;
    while let Some((&(key, name, value), tail)) = rest.split_first() {
        let run = tail
            .iter()
            .take_while(|&&(k, n, _)| k == key && n == name)
            .count();
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(quote);
        push_escaped(out, name, TWICE);
        out.extend_from_slice(between);
        push_escaped(out, value, TWICE);
        if run > 0 {
            // Escaping goes character by character: the pieces escaped in turn are the joined
            // value escaped.
            let sep = if name == "set-cookie" { "\n" } else { ", " };
            for &(_, _, v) in &tail[..run] {
                push_escaped(out, sep, TWICE);
                push_escaped(out, v, TWICE);
            }
        }
        out.extend_from_slice(quote);
        rest = &tail[run..];
    }
    out.push(b'}');
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
