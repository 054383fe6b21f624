//! HTTP/2 of a connection joined mid-way (the capture started late, the daemon restarted):
//! frame boundaries found from the bytes, and HPACK without the dynamic table's older entries.
//!
//! HPACK here decodes what does not need the unknown part of the table: the static table
//! (RFC 7541 appendix A), literals, and the entries the encoder added since the join (known,
//! newest first, for as long as they must still be in the table by their sizes). A field that
//! names an entry it does not know is a miss: counted, and left out, never guessed.
//! loona-hpack's decoder has no notion of an unknown entry, so this walks the representations
//! itself (RFC 7541 section 6); Huffman strings are loona-hpack's.

use std::collections::VecDeque;

/// RFC 7541 appendix A: index 1 to 61.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Entries of the dynamic table tracked at most.
const MAX_ENTRIES: usize = 1024;

/// A header field: name and value.
type Field = (Vec<u8>, Vec<u8>);

/// One entry the encoder added since the join: its field when the name was known, and its size
/// (RFC 7541 section 4.1) when known.
type Entry = (Option<Field>, Option<usize>);

/// What a header block gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Block {
    pub fields: Vec<Field>,
    /// Fields that named a dynamic-table entry from before the join: left out.
    pub misses: u64,
}

/// The decoder of one direction joined mid-way.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first.
    entries: VecDeque<Entry>,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            entries: VecDeque::new(),
            max_size: 4096,
        }
    }
}

impl Decoder {
    /// A header block was not seen whole (it began before the join, or in bytes given up): it
    /// may have added entries, so where the known ones now are is unknown. They are dropped.
    pub fn forget(&mut self) {
        self.entries.clear();
    }
}

/// The representation is malformed: the block cannot be read on.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

impl Decoder {
    /// Decodes one header block.
    pub fn decode(&mut self, mut buf: &[u8]) -> Result<Block, Malformed> {
        let mut out = Block::default();
        while let Some(&first) = buf.first() {
            if first & 0x80 != 0 {
                let (index, rest) = integer(buf, 7)?;
                buf = rest;
                match self.field(index)? {
                    Some(f) => out.fields.push(f),
                    None => out.misses += 1,
                }
            } else if first & 0xe0 == 0x20 {
                let (size, rest) = integer(buf, 5)?;
                buf = rest;
                self.max_size = size;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never (0001).
                let indexing = first & 0x40 != 0;
                let (index, rest) = integer(buf, if indexing { 6 } else { 4 })?;
                let (name, rest) = if index == 0 {
                    let (n, rest) = string(rest)?;
                    (Some(n), rest)
                } else {
                    (self.field(index)?.map(|(n, _)| n), rest)
                };
                let (value, rest) = string(rest)?;
                buf = rest;
                if indexing {
                    let size = name.as_ref().map(|n| n.len() + value.len() + 32);
                    self.entries
                        .push_front((name.clone().map(|n| (n, value.clone())), size));
                    self.entries.truncate(MAX_ENTRIES);
                }
                match name {
                    Some(n) => out.fields.push((n, value)),
                    None => out.misses += 1,
                }
            }
        }
        Ok(out)
    }

    /// The field at `index`: the static table's, or an entry added since the join that must
    /// still be in the table; `None` for an entry from before the join (or one whose place
    /// the unknown sizes make uncertain).
    fn field(&self, index: usize) -> Result<Option<Field>, Malformed> {
        match index {
            0 => Err(Malformed),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok(Some((n.as_bytes().to_vec(), v.as_bytes().to_vec())))
            }
            _ => {
                let j = index - 62;
                let mut total = 0usize;
                for (k, (_, size)) in self.entries.iter().enumerate().take(j + 1) {
                    let Some(size) = size else {
                        return Ok(None);
                    };
                    total += size;
                    if total > self.max_size {
                        return Ok(None);
                    }
                    if k == j {
                        return Ok(self.entries[j].0.clone());
                    }
                }
                Ok(None)
            }
        }
    }
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1), and the bytes after it.
fn integer(buf: &[u8], n: u32) -> Result<(usize, &[u8]), Malformed> {
    let (&first, mut rest) = buf.split_first().ok_or(Malformed)?;
    let max = (1usize << n) - 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok((value, rest));
    }
    for shift in (0..).step_by(7).take(4) {
        let (&b, r) = rest.split_first().ok_or(Malformed)?;
        rest = r;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((value, rest));
        }
    }
    Err(Malformed)
}

/// An HPACK string literal (section 5.2), Huffman-decoded when so marked, and the bytes after it.
fn string(buf: &[u8]) -> Result<(Vec<u8>, &[u8]), Malformed> {
    let huffman = buf.first().ok_or(Malformed)? & 0x80 != 0;
    let (len, rest) = integer(buf, 7)?;
    let bytes = rest.get(..len).ok_or(Malformed)?;
    let s = if huffman {
        loona_hpack::huffman::HuffmanDecoder::new()
            .decode(bytes)
            .map_err(|_| Malformed)?
    } else {
        bytes.to_vec()
    };
    Ok((s, &rest[len..]))
}

/// The payload length of the frame whose 9-byte header is `head`, if it follows its type's
/// rules (the stream it must be on, the flags it may carry, a fixed or bounded length, at most
/// the default maximum frame size): for telling frames from other bytes. `None` otherwise.
pub fn plausible(head: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
    let flags = head[4];
    // (stream 0?, allowed flags, fixed length)
    let (zero, allowed, fixed): (Option<bool>, u8, Option<usize>) = match head[3] {
        0 => (Some(false), 0x09, None),
        1 => (Some(false), 0x2d, None),
        2 => (Some(false), 0, Some(5)),
        3 => (Some(false), 0, Some(4)),
        4 => (Some(true), 0x01, None),
        5 => (Some(false), 0x0c, None),
        6 => (Some(true), 0x01, Some(8)),
        7 => (Some(true), 0, None),
        8 => (None, 0, Some(4)),
        9 => (Some(false), 0x04, None),
        _ => return None,
    };
    let ok = stream & 0x8000_0000 == 0
        && zero.is_none_or(|z| z == (stream == 0))
        && flags & !allowed == 0
        && fixed.is_none_or(|f| f == len)
        && (head[3] != 4 || len % 6 == 0)
        && (head[3] != 7 || len >= 8)
        && len <= super::DEFAULT_MAX_FRAME as usize;
    ok.then_some(len)
}

/// Where frames begin in bytes joined mid-stream: the first offset (within a frame's length of
/// the start) from which at least two whole frames follow one another to the end of `buf`, or
/// to the start of a frame not all there yet. `None`: not found (yet).
pub fn sync(buf: &[u8]) -> Option<usize> {
    let limit = buf
        .len()
        .min(super::DEFAULT_MAX_FRAME as usize + super::FRAME_HEADER);
    (0..limit).find(|&start| {
        // A frame of at most 16 KiB begins with a zero byte: most offsets end here.
        if buf[start] != 0 || buf.get(start + 1).is_some_and(|&b| b > 0x40) {
            return false;
        }
        let (mut at, mut whole) = (start, 0);
        loop {
            let Some(head) = buf.get(at..at + super::FRAME_HEADER) else {
                // At the end, or inside the next frame's header.
                return whole >= 2;
            };
            let Some(len) = plausible(head) else {
                return false;
            };
            if at + super::FRAME_HEADER + len > buf.len() {
                return whole >= 2;
            }
            at += super::FRAME_HEADER + len;
            whole += 1;
        }
    })
}

/// Which side sent a header block, from the first field it names without the dynamic table:
/// `Some(true)` for a request's pseudo-header, `Some(false)` for `:status`.
pub fn sent_by_client(block: &[u8]) -> Option<bool> {
    let mut d = Decoder::default();
    let decoded = d.decode(block).ok()?;
    decoded.fields.iter().find_map(|(n, _)| match n.as_slice() {
        b":method" | b":path" | b":scheme" | b":authority" => Some(true),
        b":status" => Some(false),
        _ => None,
    })
}

/// Bytes of one side joined mid-connection: `None` when they are not HTTP/2 frames (yet);
/// `Some(side)` when they are, `side` being what their first readable header block says
/// ([`sent_by_client`]), `None` while no block tells.
pub fn probe(buf: &[u8]) -> Option<Option<bool>> {
    let mut at = sync(buf)?;
    while let Some(head) = buf.get(at..at + super::FRAME_HEADER) {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let Some(payload) = buf.get(at + super::FRAME_HEADER..at + super::FRAME_HEADER + len)
        else {
            break;
        };
        if head[3] == 1 {
            let block = super::unpadded(head[4], payload).map(|b| {
                if head[4] & 0x20 != 0 {
                    b.get(5..).unwrap_or_default()
                } else {
                    b
                }
            });
            if let Some(side) = block.and_then(sent_by_client) {
                return Some(Some(side));
            }
        }
        at += super::FRAME_HEADER + len;
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::hex;

    /// The static table agrees with loona-hpack's.
    #[test]
    fn the_static_table_is_rfc_7541s() {
        for (i, (n, v)) in STATIC.iter().enumerate() {
            let mut full = loona_hpack::Decoder::new();
            let got = full.decode(&[0x80 | (i as u8 + 1)]).unwrap();
            assert_eq!(
                got,
                vec![(n.as_bytes().to_vec(), v.as_bytes().to_vec())],
                "index {}",
                i + 1
            );
        }
    }

    /// Joined after the first of RFC 7541's C.3 requests: the second names the first's
    /// `:authority` entry (a miss) but the third adds its own and everything else is static.
    #[test]
    fn joined_after_the_first_request_decodes_what_needs_no_older_entry() {
        let mut d = Decoder::default();
        // C.3.2: :method GET, :scheme http, :path /, :authority (dynamic 62: a miss),
        // cache-control no-cache (added: known from now on).
        let b = d
            .decode(&hex("8286 84be 5808 6e6f 2d63 6163 6865"))
            .unwrap();
        assert_eq!(b.misses, 1);
        let names: Vec<&[u8]> = b.fields.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(
            names,
            [&b":method"[..], b":scheme", b":path", b"cache-control"]
        );
        // C.3.3: :method GET, :scheme https, :path /index.html, :authority (dynamic 63: from
        // before the join), custom-key custom-value.
        let b = d
            .decode(&hex(
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ))
            .unwrap();
        assert_eq!(b.misses, 1);
        assert_eq!(b.fields[2], (b":path".to_vec(), b"/index.html".to_vec()));
        assert_eq!(
            b.fields[3],
            (b"custom-key".to_vec(), b"custom-value".to_vec())
        );
        // Entries added since the join are known: 62 is custom-key, 63 cache-control.
        let b = d.decode(&[0xbe, 0xbf, 0xc0]).unwrap();
        assert_eq!(
            b.fields,
            vec![
                (b"custom-key".to_vec(), b"custom-value".to_vec()),
                (b"cache-control".to_vec(), b"no-cache".to_vec()),
            ]
        );
        assert_eq!(b.misses, 1, "64 is from before the join");
        assert_eq!(d.decode(&[0x80]), Err(Malformed));
        assert_eq!(
            d.decode(&[0x40, 0x85]),
            Err(Malformed),
            "a string cut short"
        );
    }

    #[test]
    fn frames_are_found_from_any_point() {
        use crate::testkit::h2_frame as frame;
        let mut bytes = b"tail of a frame before".to_vec();
        let at = bytes.len();
        bytes.extend(frame(0, 0, 3, &[7; 100]));
        bytes.extend(frame(8, 0, 0, &[0, 0, 1, 0]));
        bytes.extend(frame(1, 0x4, 5, &[0x82, 0x86]));
        bytes.extend_from_slice(&frame(0, 1, 5, b"cut")[..5]);
        assert_eq!(sync(&bytes), Some(at));
        assert_eq!(
            sync(&bytes[..at + 109]),
            None,
            "one whole frame is not enough"
        );
        assert_eq!(sync(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(sent_by_client(&[0x82, 0x86]), Some(true));
        assert_eq!(sent_by_client(&[0x88]), Some(false));
        assert_eq!(sent_by_client(&[0xbe]), None);
    }
}
