//! What tests/e2e_netns.rs knows about a capture without asking the receiver: the frames of a
//! classic pcap file, the TCP streams of an Ethernet capture of the app link (with which bytes a
//! mirror session's packet length would cut off), and the HTTP/1.1 exchanges in them. A small
//! oracle of its own, so the receiver is never checked against itself.
//!
//! It reads what this test's peers send (curl and nginx, one request at a time per connection),
//! not HTTP at large: heads end in CRLF CRLF, bodies are framed by Content-Length or chunked,
//! and 1xx, 204 and 304 responses carry none.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

/// One captured frame: the bytes captured and the frame's length on the wire.
pub struct Frame {
    pub orig_len: usize,
    pub data: Vec<u8>,
}

/// The link type and frames of a classic pcap file (what `tcpdump -w` writes).
pub fn read_pcap(path: &Path) -> Result<(u32, Vec<Frame>), String> {
    let b = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    if b.len() < 24 {
        return Err(format!("{}: too short for a pcap header", path.display()));
    }
    let le = match u32::from_le_bytes(b[0..4].try_into().unwrap()) {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => {
            return Err(format!(
                "{}: not a classic pcap (magic {m:#x})",
                path.display()
            ));
        }
    };
    let word = |o: usize| {
        let w: [u8; 4] = b[o..o + 4].try_into().unwrap();
        (if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }) as usize
    };
    let linktype = word(20) as u32;
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= b.len() {
        let (incl, orig) = (word(off + 8), word(off + 12));
        let Some(data) = b.get(off + 16..off + 16 + incl) else {
            break; // a torn last record: tcpdump was stopped mid-write
        };
        frames.push(Frame {
            orig_len: orig,
            data: data.to_vec(),
        });
        off += 16 + incl;
    }
    Ok((linktype, frames))
}

/// An IPv4 TCP segment in an Ethernet frame.
pub struct Segment<'a> {
    pub src: ([u8; 4], u16),
    pub dst: ([u8; 4], u16),
    pub seq: u32,
    pub syn: bool,
    /// The TCP payload, as far as the IP length says and the capture holds.
    pub payload: &'a [u8],
    /// Bytes of the frame before the payload (Ethernet, IP and TCP headers).
    pub headers: usize,
}

impl Segment<'_> {
    /// Payload bytes that survive when the frame is cut to `cut` bytes.
    pub fn kept(&self, cut: Option<usize>) -> usize {
        cut.map_or(self.payload.len(), |c| {
            c.saturating_sub(self.headers).min(self.payload.len())
        })
    }
}

pub fn tcp_segment(frame: &Frame) -> Option<Segment<'_>> {
    let d = &frame.data;
    if d.len() < 14 + 20 || d[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &d[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ip[9] != 6 || ihl < 20 || ip.len() < ihl + 20 || total < ihl + 20 {
        return None;
    }
    let tcp = &ip[ihl..];
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || total < ihl + doff {
        return None;
    }
    let port = |o: usize| u16::from_be_bytes([tcp[o], tcp[o + 1]]);
    let end = (14 + total).min(d.len());
    let start = (14 + ihl + doff).min(end);
    Some(Segment {
        src: (ip[12..16].try_into().unwrap(), port(0)),
        dst: (ip[16..20].try_into().unwrap(), port(2)),
        seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
        syn: tcp[13] & 0x02 != 0,
        payload: &d[start..end],
        headers: 14 + ihl + doff,
    })
}

/// One direction of a connection: its bytes in stream order, which of them any segment carried,
/// and which of them survive the cut.
#[derive(Default)]
pub struct Stream {
    pub data: Vec<u8>,
    pub covered: Vec<bool>,
    pub seen: Vec<bool>,
}

impl Stream {
    /// Bytes of `r` no segment carried (the capture itself lost them).
    pub fn uncovered(&self, r: Range<usize>) -> usize {
        self.covered[r].iter().filter(|c| !**c).count()
    }

    /// Bytes of `r` lost to the cut (or never captured).
    pub fn missing(&self, r: Range<usize>) -> usize {
        self.seen[r].iter().filter(|s| !**s).count()
    }

    /// The first offset in `r` that was not seen.
    pub fn first_gap(&self, r: Range<usize>) -> Option<usize> {
        let start = r.start;
        self.seen[r].iter().position(|s| !*s).map(|p| start + p)
    }
}

/// A TCP connection to `server_port`: the client's stream (requests) and the server's (responses).
pub struct Connection {
    pub client: ([u8; 4], u16),
    pub requests: Stream,
    pub responses: Stream,
}

/// The TCP connections to `server_port` in the frames, in the order of their first frame, with
/// every frame cut to `cut` bytes (None: whole frames).
pub fn connections(frames: &[Frame], server_port: u16, cut: Option<usize>) -> Vec<Connection> {
    // Per connection (keyed by the client's end), per direction: (seq, payload, kept, syn).
    type Segs<'a> = Vec<(u32, &'a [u8], usize, bool)>;
    let mut order: Vec<([u8; 4], u16)> = Vec::new();
    let mut segs: BTreeMap<([u8; 4], u16), [Segs<'_>; 2]> = BTreeMap::new();
    for f in frames {
        let Some(s) = tcp_segment(f) else { continue };
        let (client, dir) = if s.dst.1 == server_port {
            (s.src, 0)
        } else if s.src.1 == server_port {
            (s.dst, 1)
        } else {
            continue;
        };
        let entry = segs.entry(client).or_insert_with(|| {
            order.push(client);
            Default::default()
        });
        entry[dir].push((s.seq, s.payload, s.kept(cut), s.syn));
    }
    let assemble = |list: &Segs<'_>| {
        let base = list
            .iter()
            .find(|s| s.3)
            .map(|s| s.0.wrapping_add(1))
            .or_else(|| list.iter().map(|s| s.0).min())
            .unwrap_or(0);
        let mut st = Stream::default();
        for &(seq, payload, kept, _) in list {
            if payload.is_empty() {
                continue;
            }
            let off = seq.wrapping_sub(base) as usize;
            assert!(
                off < 1 << 30,
                "segment far outside its stream (seq {seq}, base {base})"
            );
            let end = off + payload.len();
            if st.data.len() < end {
                st.data.resize(end, 0);
                st.covered.resize(end, false);
                st.seen.resize(end, false);
            }
            st.data[off..end].copy_from_slice(payload);
            st.covered[off..end].fill(true);
            st.seen[off..off + kept].fill(true);
        }
        st
    };
    order
        .into_iter()
        .map(|client| {
            let [req, resp] = &segs[&client];
            Connection {
                client,
                requests: assemble(req),
                responses: assemble(resp),
            }
        })
        .collect()
}

/// One HTTP message in a stream: `start..body` is its head, `body..end` its body as sent.
pub struct Message {
    pub start: usize,
    pub body: usize,
    pub end: usize,
    pub first_line: String,
    /// Names in lower case.
    pub headers: BTreeMap<String, String>,
}

impl Message {
    pub fn chunked(&self) -> bool {
        self.headers
            .get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    pub fn encoding(&self) -> Option<&str> {
        self.headers.get("content-encoding").map(String::as_str)
    }

    /// The body after de-chunking (not decoded).
    pub fn body(&self, s: &Stream) -> Vec<u8> {
        let raw = &s.data[self.body..self.end];
        if self.chunked() {
            dechunk(raw).0
        } else {
            raw.to_vec()
        }
    }

    /// The body after de-chunking, up to the first byte the cut lost.
    pub fn body_seen(&self, s: &Stream) -> Vec<u8> {
        let end = s.first_gap(self.body..self.end).unwrap_or(self.end);
        let raw = &s.data[self.body..end];
        if self.chunked() {
            dechunk(raw).0
        } else {
            raw.to_vec()
        }
    }

    /// Bytes of the message (head and body) the cut lost.
    pub fn missing(&self, s: &Stream) -> usize {
        s.missing(self.start..self.end)
    }
}

/// The data of a chunked body, and whether its last chunk was reached; data of an incomplete
/// chunk at the end is included.
pub fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(raw, b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (out, false);
        };
        raw = &raw[eol + 2..];
        if size == 0 {
            return (out, true);
        }
        let take = size.min(raw.len());
        out.extend_from_slice(&raw[..take]);
        if take < size || raw.len() < size + 2 {
            return (out, false);
        }
        raw = &raw[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one head at `start`; returns the message with `end` still to be set.
fn head(s: &Stream, start: usize) -> Result<Message, String> {
    let rest = &s.data[start..];
    let len = find(rest, b"\r\n\r\n").ok_or_else(|| format!("no end of head at offset {start}"))?;
    let text = String::from_utf8_lossy(&rest[..len]);
    let mut lines = text.split("\r\n");
    let first_line = lines.next().unwrap_or("").to_owned();
    let mut headers = BTreeMap::new();
    for l in lines {
        if let Some((n, v)) = l.split_once(':') {
            headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    Ok(Message {
        start,
        body: start + len + 4,
        end: start + len + 4,
        first_line,
        headers,
    })
}

/// Sets `m.end` from its framing: Content-Length, chunked, or `no_body`.
fn frame_body(s: &Stream, m: &mut Message, no_body: bool) -> Result<(), String> {
    if no_body {
        return Ok(());
    }
    if m.chunked() {
        let mut at = m.body;
        loop {
            let eol = find(&s.data[at..], b"\r\n")
                .ok_or_else(|| format!("chunk size line cut at offset {at}"))?;
            let line = String::from_utf8_lossy(&s.data[at..at + eol]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|e| format!("chunk size {line:?} at offset {at}: {e}"))?;
            at += eol + 2;
            if size == 0 {
                // Trailer fields, up to the empty line.
                loop {
                    let eol = find(&s.data[at..], b"\r\n")
                        .ok_or_else(|| format!("trailers cut at offset {at}"))?;
                    at += eol + 2;
                    if eol == 0 {
                        break;
                    }
                }
                m.end = at;
                return Ok(());
            }
            at += size + 2;
        }
    }
    let cl: usize = match m.headers.get("content-length") {
        Some(v) => v
            .parse()
            .map_err(|e| format!("content-length {v:?}: {e}"))?,
        None => 0,
    };
    m.end = m.body + cl;
    if m.end > s.data.len() {
        return Err(format!(
            "body of {:?} ends at {} past the stream's {} bytes",
            m.first_line,
            m.end,
            s.data.len()
        ));
    }
    Ok(())
}

/// One request and its response.
pub struct Exchange {
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub status: String,
    pub request: Message,
    pub response: Option<Message>,
}

/// Every exchange of every connection, in order (no pipelining: the n-th final response answers
/// the n-th request).
pub fn exchanges(conns: &[Connection]) -> Result<Vec<Exchange>, String> {
    let mut out = Vec::new();
    for (ci, c) in conns.iter().enumerate() {
        let mut requests = Vec::new();
        let mut at = 0;
        while at < c.requests.data.len() {
            let mut m = head(&c.requests, at)?;
            frame_body(&c.requests, &mut m, false)?;
            at = m.end;
            requests.push(m);
        }
        let mut responses = Vec::new();
        let mut at = 0;
        while at < c.responses.data.len() {
            let mut m = head(&c.responses, at)?;
            let code: u16 = m
                .first_line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("status line {:?}", m.first_line))?;
            let method = requests
                .get(responses.len())
                .map(|r: &Message| r.first_line.split(' ').next().unwrap_or(""));
            let no_body = code < 200 || code == 204 || code == 304 || method == Some("HEAD");
            frame_body(&c.responses, &mut m, no_body)?;
            at = m.end;
            if code >= 200 {
                responses.push(m);
            }
        }
        let mut responses = responses.into_iter();
        for req in requests {
            let mut words = req.first_line.split(' ');
            let method = words.next().unwrap_or("").to_owned();
            let target = words.next().unwrap_or("").to_owned();
            let response = responses.next();
            let status = response
                .as_ref()
                .and_then(|r| r.first_line.split_whitespace().nth(1))
                .unwrap_or("0")
                .to_owned();
            out.push(Exchange {
                conn: ci,
                method,
                target,
                status,
                request: req,
                response,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunk_whole_and_cut() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n"),
            (b"abcde".to_vec(), true)
        );
        assert_eq!(dechunk(b"3\r\nabc\r\n5\r\nde"), (b"abcde".to_vec(), false));
        assert_eq!(dechunk(b"3\r\nab"), (b"ab".to_vec(), false));
    }
}
