//! HTTP/1.x messages as the parser hands them to the session.

use crate::flow::Seq;
use compact_str::CompactString;

/// The first line of a message. Its text is held inline when short (a method, a reason phrase,
/// most targets: up to 24 bytes), so most messages' start lines cost no allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: CompactString,
        target: CompactString,
    },
    Response {
        status: u16,
        reason: CompactString,
    },
}

/// The header fields of a message: names (lower-cased) and values (invalid UTF-8 replaced) copied
/// once into one buffer, each field kept as positions in it. Two allocations a message, however
/// many fields it has. A head that is valid UTF-8 is copied whole (its separators included) with
/// one copy, and only its names rewritten in place; equality is of the fields, not of the buffer.
#[derive(Clone, Default)]
pub struct Headers {
    text: String,
    /// Per field: start and end of the name, start and end of the value.
    fields: Vec<[u32; 4]>,
}

impl Headers {
    /// Appends a field (the name is lower-cased). A message whose head passes 4 GiB cannot occur
    /// (heads are capped far lower); such a field would be dropped rather than mis-indexed.
    pub fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        self.text[start..].make_ascii_lowercase();
        let name_end = self.text.len();
        self.text.push_str(value);
        let ends = [start, name_end, self.text.len()].map(u32::try_from);
        match ends {
            [Ok(a), Ok(b), Ok(c)] => self.fields.push([a, b, b, c]),
            _ => self.text.truncate(start),
        }
    }

    /// Appends the fields httparse found in `head` (every one a slice of it, in order). A head
    /// that is valid UTF-8 is copied from the first name to the last value at once and its names
    /// lower-cased in place; otherwise each field goes through [`Headers::push_raw`]. Fields
    /// with an empty name are left out.
    pub fn extend_from_head(&mut self, fields: &[httparse::Header<'_>], head: &[u8]) {
        let (Some(first), Some(last)) = (fields.first(), fields.last()) else {
            return;
        };
        let base = head.as_ptr() as usize;
        let at = |s: &[u8]| {
            let a = (s.as_ptr() as usize).wrapping_sub(base);
            (a, a.wrapping_add(s.len()))
        };
        // Offsets in `head` (httparse's fields are slices of it, in order; checked all the same).
        let (lo, hi) = (at(first.name.as_bytes()).0, at(last.value).1);
        let start = self.text.len();
        let Some(span) = head
            .get(lo..hi)
            .filter(|s| u32::try_from(start + s.len()).is_ok())
        else {
            self.push_each(fields);
            return;
        };
        let had = self.fields.len();
        let mut text = if self.text.capacity() == 0 {
            crate::spare::text()
        } else {
            std::mem::take(&mut self.text).into_bytes()
        };
        if self.fields.capacity() == 0 {
            self.fields = crate::spare::fields();
        }
        text.extend_from_slice(span);
        self.fields.reserve_exact(fields.len());
        let mut inside = true;
        for h in fields.iter().filter(|h| !h.name.is_empty()) {
            let ((n0, n1), (v0, v1)) = (at(h.name.as_bytes()), at(h.value));
            if !(lo <= n0 && n0 <= n1 && n1 <= v0 && v0 <= v1 && v1 <= hi) {
                inside = false;
                break;
            }
            // Positions in the copy: below u32::MAX, as the copy's end is (checked above).
            let [a, b, v, c] = [n0, n1, v0, v1].map(|o| o - lo + start);
            if let (Some(name), Some(sent)) = (text.get_mut(a..b), head.get(n0..n1)) {
                lower_ascii_into(sent, name);
            }
            self.fields.push([a, b, v, c].map(|p| p as u32));
        }
        // Lower-casing changed ASCII letters only: the copy is UTF-8 if the head was. Every
        // position must be a character boundary, so that slicing at it never fails.
        let on_boundaries = |t: &str| {
            let positions = self.fields[had..].iter().flatten();
            positions
                .into_iter()
                .all(|&p| t.is_char_boundary(p as usize))
        };
        match String::from_utf8(text) {
            Ok(t) if inside && on_boundaries(&t) => self.text = t,
            other => {
                let bytes = other.map_or_else(|e| e.into_bytes(), String::into_bytes);
                self.undo(bytes, start, had, fields);
            }
        }
    }

    /// Takes back what [`Headers::extend_from_head`] appended (to `start` bytes and `had`
    /// fields) and pushes the fields one by one instead.
    fn undo(
        &mut self,
        mut text: Vec<u8>,
        start: usize,
        had: usize,
        fields: &[httparse::Header<'_>],
    ) {
        text.truncate(start);
        // What was there before is UTF-8 (it was a String).
        self.text = String::from_utf8(text).unwrap_or_default();
        self.fields.truncate(had);
        self.push_each(fields);
    }

    /// Gives the buffers back for this thread's next message ([`crate::spare`]).
    pub fn recycle(self) {
        crate::spare::give_text(self.text.into_bytes());
        crate::spare::give_fields(self.fields);
    }

    fn push_each(&mut self, fields: &[httparse::Header<'_>]) {
        let bytes = fields.iter().map(|h| h.name.len() + h.value.len()).sum();
        self.reserve(fields.len(), bytes);
        for h in fields.iter().filter(|h| !h.name.is_empty()) {
            self.push_raw(h.name.as_bytes(), h.value);
        }
    }

    /// Appends a field as it came off the wire: invalid UTF-8 in either part is replaced.
    pub fn push_raw(&mut self, name: &[u8], value: &[u8]) {
        self.push(
            &String::from_utf8_lossy(name),
            &String::from_utf8_lossy(value),
        );
    }

    /// Makes room for `fields` more fields of `bytes` bytes in all, so a head is copied with one
    /// allocation for the text and one for the positions.
    pub fn reserve(&mut self, fields: usize, bytes: usize) {
        self.fields.reserve_exact(fields);
        self.text.reserve_exact(bytes);
    }

    /// The text and each field's positions in it (start and end of the name, of the value):
    /// every position is a character boundary of the text.
    pub fn parts(&self) -> (&[u8], &[[u32; 4]]) {
        (self.text.as_bytes(), &self.fields)
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields in order, as (name, value).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&str, &str)> + '_ {
        self.fields.iter().map(|&[a, b, v, c]| {
            let (a, b, v, c) = (a as usize, b as usize, v as usize, c as usize);
            (&self.text[a..b], &self.text[v..c])
        })
    }

    /// The values of the fields named `name` (lower case), in order. Names are compared as bytes
    /// and only a match is sliced as text: lookups run several times per message.
    pub fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        let bytes = self.text.as_bytes();
        self.fields
            .iter()
            .filter(move |&&[a, b, _, _]| {
                bytes.get(a as usize..b as usize) == Some(name.as_bytes())
            })
            .map(|&[_, _, v, c]| &self.text[v as usize..c as usize])
    }

    /// Replaces the value of every field whose name `matches`.
    pub fn replace_values(&mut self, matches: impl Fn(&str) -> bool, value: &str) {
        if !self.iter().any(|(n, _)| matches(n)) {
            return;
        }
        let mut out = Headers::default();
        for (n, v) in self.iter() {
            out.push(n, if matches(n) { value } else { v });
        }
        *self = out;
    }
}

/// `src` into `dst` (as long) with ASCII letters in lower case, eight bytes at a time (a name is
/// mostly one or two words); other bytes, UTF-8 sequences among them, are copied as they are.
///
/// Reads only `src`: `dst` is the copy of the head just made, and reading back bytes a wide
/// copy has just stored stalls the CPU (a store it cannot forward to a smaller load) for about
/// as long as the rest of the work.
fn lower_ascii_into(src: &[u8], dst: &mut [u8]) {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    // Per byte below 0x80: the high bit of `b + (0x80 - 'A')` is set from 'A' up, that of
    // `b + (0x80 - 'Z' - 1)` from past 'Z' up; neither sum carries into the next byte.
    let lower = |word: &[u8; 8]| {
        let w = u64::from_le_bytes(*word);
        let low7 = w & (0x7f * ONES);
        let from_a = low7 + u64::from(0x80 - b'A') * ONES;
        let past_z = low7 + u64::from(0x80 - b'Z' - 1) * ONES;
        let upper = from_a & !past_z & !w & (0x80 * ONES);
        (w | (upper >> 2)).to_le_bytes()
    };
    if src.len() != dst.len() {
        return;
    }
    if src.len() < 8 {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_ascii_lowercase();
        }
        return;
    }
    // Whole words, then the last eight bytes again (overlapping, the same bytes written).
    let (mut from, mut to) = (src, &mut *dst);
    while let (Some((s, from_rest)), Some((d, to_rest))) = (
        from.split_first_chunk::<8>(),
        to.split_first_chunk_mut::<8>(),
    ) {
        *d = lower(s);
        (from, to) = (from_rest, to_rest);
    }
    if let (Some(s), Some(d)) = (src.last_chunk::<8>(), dst.last_chunk_mut::<8>()) {
        *d = lower(s);
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Headers {
        let mut h = Headers::default();
        for (n, v) in iter {
            h.push(n.as_ref(), v.as_ref());
        }
        h
    }
}

/// A parsed HTTP/1.x message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1, 2 for HTTP/2.
    pub version: u8,
    /// Header fields in order, names lower-cased, values as sent (invalid UTF-8 replaced).
    /// Chunked trailer fields are appended.
    pub headers: Headers,
    /// Entity body after de-chunking and content decoding, capped at the configured size.
    pub body: Vec<u8>,
    /// The body was cut at the size cap, or its decoding stopped early.
    pub body_truncated: bool,
    /// The message ended where its framing said, or where it was found again after a gap (false
    /// when the connection ended first, its remaining length unknown or unseen).
    pub complete: bool,
    /// Time (µs) of the segment holding the message's first byte.
    pub ts: u64,
    /// Sequence number of the message's first byte.
    pub seq: Option<Seq>,
    /// Acknowledgement number of the segment holding the first byte: how much of the other
    /// direction its sender had received. Pairs a response only with requests before it.
    pub ack: Option<Seq>,
    /// The body was content-decoded.
    pub decoded: bool,
    /// A Content-Encoding was declared but the body could not be decoded; it is kept as sent.
    pub decode_failed: bool,
    /// Bytes of the stream inside this message (after its head) that were never seen: lost
    /// segments, or the tails of segments cut by the mirror's packet length. The body holds what
    /// was seen up to the first of them.
    pub missing: u64,
    /// How the message's end was found again after a gap destroyed its framing.
    pub recovered: Option<Recovery>,
}

/// How a message's end was found after a gap destroyed its (chunked) framing.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Recovery {
    /// A later chunk-size line whose chunk ends where another chunk-size line starts (or the
    /// last chunk): chunked framing picked up again.
    ChunkSize,
    /// The next message's start line of the same direction.
    StartLine,
    /// The other direction's next message acknowledged the bytes up to where this one ended.
    Peer,
    /// The stream ended (FIN) or the connection was closed (idle, shutdown).
    End,
}

impl Recovery {
    pub const ALL: [Recovery; 4] = [
        Recovery::ChunkSize,
        Recovery::StartLine,
        Recovery::Peer,
        Recovery::End,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Recovery::ChunkSize => "chunk_size",
            Recovery::StartLine => "start_line",
            Recovery::Peer => "peer",
            Recovery::End => "end",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl Message {
    pub fn new(start: StartLine, version: u8, ts: u64, seq: Option<Seq>) -> Message {
        Message {
            start,
            version,
            headers: Headers::default(),
            body: Vec::new(),
            body_truncated: false,
            complete: false,
            ts,
            seq,
            ack: None,
            decoded: false,
            decode_failed: false,
            missing: 0,
            recovered: None,
        }
    }

    /// Gives the message's buffers, and its box, back for this thread's next message
    /// ([`crate::spare`]); dropping it instead frees them.
    pub fn recycle(mut self: Box<Self>) {
        std::mem::take(&mut self.headers).recycle();
        crate::spare::give_text(std::mem::take(&mut self.body));
        // What else the message may own (a long target or reason) goes now: a spare box holds
        // nothing.
        self.start = StartLine::Response {
            status: 0,
            reason: CompactString::default(),
        };
        crate::spare::give_message(self);
    }

    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.values(name).next()
    }

    /// Every value of a header, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.values(name)
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }

    /// "HTTP/1.0", "HTTP/1.1" or "HTTP/2".
    pub fn version_str(&self) -> &'static str {
        VERSION_NAMES[version_slot(self.version)]
    }
}

/// The names of the HTTP versions, by [`version_slot`].
pub const VERSION_NAMES: [&str; 3] = ["HTTP/1.0", "HTTP/1.1", "HTTP/2"];

/// Where an HTTP version as [`Message::version`] holds it is in [`VERSION_NAMES`]: 0 is
/// HTTP/1.0, 2 is HTTP/2, any other HTTP/1.1.
pub fn version_slot(version: u8) -> usize {
    match version {
        0 => 0,
        2 => 2,
        _ => 1,
    }
}

/// One request with its response, or with none when the response never came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub vni: u32,
    pub client: std::net::SocketAddr,
    pub server: std::net::SocketAddr,
    /// Stable id of the connection (direction-independent flow hash).
    pub connection_id: u64,
    pub request: Box<Message>,
    pub response: Option<Box<Message>>,
}

impl Exchange {
    /// Once its record is written: gives both messages' buffers back ([`Message::recycle`]).
    pub fn recycle(self) {
        self.request.recycle();
        if let Some(r) = self.response {
            r.recycle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Headers;

    #[test]
    fn words_lower_case_as_bytes_do() {
        // Every byte value, at every place of a word and of the overlapping last word.
        for b in 0..=255u8 {
            for n in [1, 7, 8, 9, 15, 16, 17] {
                for at in 0..n {
                    let mut sent = vec![b'Q'; n];
                    sent[at] = b;
                    let mut want = sent.clone();
                    want.make_ascii_lowercase();
                    let mut got = vec![0; n];
                    super::lower_ascii_into(&sent, &mut got);
                    assert_eq!(got, want, "byte {b:#04x} at {at} of {n}");
                }
            }
        }
        let sent = "Content-Type X-ÄÖÜ-Grüße ZZ@[`{".as_bytes();
        let mut text = vec![0; sent.len()];
        super::lower_ascii_into(sent, &mut text);
        assert_eq!(text, "content-type x-ÄÖÜ-grüße zz@[`{".as_bytes());
    }

    /// `onto` with the fields of `head` (a complete head) copied in.
    fn copied(head: &[u8], mut onto: Headers) -> Headers {
        let mut storage = [httparse::EMPTY_HEADER; 8];
        let Ok(httparse::Status::Complete((n, fields))) =
            httparse::parse_headers(head, &mut storage)
        else {
            panic!("a complete head");
        };
        onto.extend_from_head(fields, &head[..n]);
        onto
    }

    #[test]
    fn a_head_copied_whole_reads_as_its_fields() {
        let head =
            b"Host: a\r\nX-Mixed-CASE:  v a l \r\nEmpty:\r\nUTF: gr\xc3\xbc\xc3\x9fe\r\n\r\n";
        let h = copied(head, Headers::default());
        let got: Vec<_> = h.iter().collect();
        let want = [
            ("host", "a"),
            ("x-mixed-case", "v a l"),
            ("empty", ""),
            ("utf", "grüße"),
        ];
        assert_eq!(got, want);
        assert_eq!(h.values("x-mixed-case").collect::<Vec<_>>(), ["v a l"]);
        // Appended after fields already there (trailers), and equal to the same fields pushed.
        let more = copied(head, [("a", "1")].into_iter().collect());
        let pushed: Headers = std::iter::once(("a", "1")).chain(want).collect();
        assert_eq!(more, pushed);
        // Not UTF-8: each field on its own, the bad bytes replaced.
        let h = copied(b"Name: a\xffb\r\nOther: c\r\n\r\n", Headers::default());
        let got: Vec<_> = h.iter().collect();
        assert_eq!(got, [("name", "a\u{fffd}b"), ("other", "c")]);
    }

    #[test]
    fn headers_keep_fields_in_order_with_names_lower_cased() {
        let mut h = Headers::default();
        assert!(h.is_empty());
        h.push_raw(b"Content-Type", b"text/html");
        h.push_raw(b"X-Bin", b"a\xffb");
        h.push("SET-Cookie", "s=1");
        assert_eq!(h.len(), 3);
        let fields: Vec<_> = h.iter().collect();
        assert_eq!(
            fields,
            vec![
                ("content-type", "text/html"),
                ("x-bin", "a\u{fffd}b"),
                ("set-cookie", "s=1")
            ]
        );
        assert_eq!(h.iter().next_back(), Some(("set-cookie", "s=1")));
        assert_eq!(
            format!("{h:?}"),
            "[(\"content-type\", \"text/html\"), (\"x-bin\", \"a\u{fffd}b\"), (\"set-cookie\", \"s=1\")]"
        );
    }

    #[test]
    fn replace_values_changes_only_matching_fields() {
        let mut h: Headers = [
            ("authorization", "secret"),
            ("accept", "*/*"),
            ("authorization", "x"),
        ]
        .into_iter()
        .collect();
        h.replace_values(|n| n == "authorization", "REDACTED");
        let fields: Vec<_> = h.iter().collect();
        assert_eq!(
            fields,
            vec![
                ("authorization", "REDACTED"),
                ("accept", "*/*"),
                ("authorization", "REDACTED")
            ]
        );
        let before = h.clone();
        h.replace_values(|n| n == "cookie", "REDACTED");
        assert_eq!(h, before, "nothing matched, nothing changed");
    }
}
