use super::*;
use crate::flow::{FlowConfig, FlowTable};
use crate::http::HttpConfig;
use crate::wire::{TcpFlags, TcpSegment};
use std::net::SocketAddr;

/// A connection between a client and a server, tracking each side's next sequence number so a
/// test can send, reorder and drop segments as a mirror would deliver them.
struct Conn {
    table: FlowTable<Session>,
    ctx: HttpCtx,
    client: SocketAddr,
    server: SocketAddr,
    /// Next sequence number of the client and of the server.
    next: [u32; 2],
    now: u64,
}

/// A segment prepared but not yet delivered.
struct Seg {
    from_client: bool,
    seq: u32,
    ack: u32,
    data: Vec<u8>,
    fin: bool,
}

impl Conn {
    fn new(client: &str, server: &str) -> Conn {
        Conn {
            table: FlowTable::new(FlowConfig::default()),
            ctx: HttpCtx::new(HttpConfig::default()),
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            next: [1000, 50_000],
            now: 1_700_000_000_000_000,
        }
    }

    /// Prepares a segment from one side, acknowledging all the other side has sent so far.
    fn seg(&mut self, from_client: bool, data: &[u8]) -> Seg {
        let (me, other) = if from_client { (0, 1) } else { (1, 0) };
        let s = Seg {
            from_client,
            seq: self.next[me],
            ack: self.next[other],
            data: data.to_vec(),
            fin: false,
        };
        self.next[me] = self.next[me].wrapping_add(data.len() as u32);
        s
    }

    fn deliver(&mut self, s: &Seg) {
        let (src, dst) = if s.from_client {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        let seg = TcpSegment {
            src,
            dst,
            seq: s.seq,
            ack: Some(s.ack),
            flags: TcpFlags {
                syn: false,
                fin: s.fin,
                rst: false,
            },
            payload: &s.data,
            missing: 0,
        };
        self.now += 1000;
        self.table.segment(9, &seg, self.now, &mut self.ctx);
    }

    fn send(&mut self, from_client: bool, data: &[u8]) {
        let s = self.seg(from_client, data);
        self.deliver(&s);
    }

    fn close(&mut self) -> Vec<Exchange> {
        self.table.close_all(self.now, &mut self.ctx);
        std::mem::take(&mut self.ctx.out)
    }
}

fn summary(ex: &[Exchange]) -> Vec<(String, String, Option<u16>)> {
    ex.iter()
        .map(|e| match &e.request.start {
            StartLine::Request { method, target } => (
                method.to_string(),
                target.to_string(),
                e.response.as_ref().and_then(|r| r.status()),
            ),
            StartLine::Response { .. } => unreachable!(),
        })
        .collect()
}

use crate::http::StartLine;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn keep_alive_exchanges_pair_in_order() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:8080");
    for path in ["/a", "/b", "/c"] {
        c.send(
            true,
            format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
        );
        c.send(false, OK);
    }
    // Pairs are emitted as soon as they complete, before the connection closes.
    assert_eq!(c.ctx.out.len(), 3);
    let ex = c.close();
    assert_eq!(
        summary(&ex),
        [
            ("GET".into(), "/a".into(), Some(200)),
            ("GET".into(), "/b".into(), Some(200)),
            ("GET".into(), "/c".into(), Some(200))
        ]
    );
    assert_eq!(ex[0].client, "10.1.0.5:41000".parse().unwrap());
    assert_eq!(ex[0].server, "10.1.0.9:8080".parse().unwrap());
    assert_eq!(ex[0].vni, 9);
    assert_eq!(ex[0].response.as_ref().unwrap().body, b"ok");
}

#[test]
fn pipelined_requests_in_one_segment_pair_with_responses_in_one_segment() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(
        true,
        b"GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n",
    );
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let ex = c.close();
    assert_eq!(
        summary(&ex),
        [
            ("GET".into(), "/1".into(), Some(200)),
            ("HEAD".into(), "/2".into(), Some(200)),
            ("GET".into(), "/3".into(), Some(404))
        ]
    );
    assert!(ex[1].response.as_ref().unwrap().body.is_empty());
}

#[test]
fn response_seen_before_request_still_pairs() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    let req = c.seg(true, b"GET /late HTTP/1.1\r\n\r\n");
    let resp = c.seg(false, OK);
    // The NLB delivered the response first.
    c.deliver(&resp);
    c.deliver(&req);
    let ex = c.close();
    assert_eq!(summary(&ex), [("GET".into(), "/late".into(), Some(200))]);
    assert_eq!(ex[0].client.port(), 41000, "client decided from the bytes");
}

#[test]
fn response_to_a_request_never_captured_is_not_paired_with_the_next_request() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    // Capture starts with the answer to a request sent before it.
    c.send(false, OK);
    c.send(true, b"GET /next HTTP/1.1\r\n\r\n");
    c.send(
        false,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    let ex = c.close();
    assert_eq!(summary(&ex), [("GET".into(), "/next".into(), Some(404))]);
    assert_eq!(c.ctx.stats.unmatched_responses, 1);
}

#[test]
fn http_on_any_port_with_the_client_on_the_low_port() {
    // The server listens on a high port and the client uses port 80: roles come from bytes.
    let mut c = Conn::new("10.1.0.9:80", "10.1.0.5:55555");
    c.send(false, OK);
    let mut c = Conn::new("10.1.0.9:80", "10.1.0.5:55555");
    c.send(true, b"DELETE /x HTTP/1.1\r\n\r\n");
    c.send(false, b"HTTP/1.1 204 No Content\r\n\r\n");
    let ex = c.close();
    assert_eq!(summary(&ex), [("DELETE".into(), "/x".into(), Some(204))]);
    assert_eq!(ex[0].server.port(), 55555);
}

#[test]
fn continue_100_is_interim_not_the_answer() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(
        true,
        b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    );
    c.send(false, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send(true, b"hello");
    c.send(false, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let ex = c.close();
    assert_eq!(summary(&ex), [("POST".into(), "/up".into(), Some(201))]);
    assert_eq!(ex[0].request.body, b"hello");
    assert_eq!(c.ctx.stats.interim_responses, 1);
}

#[test]
fn switching_protocols_emits_its_pair_and_ends_http() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(
        true,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    c.send(
        false,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    );
    c.send(true, b"GET /not-http HTTP/1.1\r\n\r\n");
    c.send(false, OK);
    let ex = c.close();
    assert_eq!(summary(&ex), [("GET".into(), "/ws".into(), Some(101))]);
    assert_eq!(c.ctx.stats.protocol_switches, 1);
}

#[test]
fn unanswered_request_is_emitted_pending_when_the_flow_closes() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(true, b"GET /a HTTP/1.1\r\n\r\n");
    c.send(false, OK);
    c.send(true, b"GET /never HTTP/1.1\r\n\r\n");
    let ex = c.close();
    assert_eq!(
        summary(&ex),
        [
            ("GET".into(), "/a".into(), Some(200)),
            ("GET".into(), "/never".into(), None)
        ]
    );
    assert_eq!(c.ctx.stats.unanswered, 1);
}

#[test]
fn early_final_response_pairs_with_an_upload_cut_short() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(
        true,
        b"POST /big HTTP/1.1\r\nContent-Length: 100000\r\n\r\npartial",
    );
    c.send(false, b"HTTP/1.0 413 Payload Too Large\r\n\r\n");
    let ex = c.close();
    assert_eq!(summary(&ex), [("POST".into(), "/big".into(), Some(413))]);
    assert_eq!(ex[0].request.body, b"partial");
    assert!(!ex[0].request.complete);
}

#[test]
fn gap_in_a_response_keeps_that_pair_and_later_pairs_survive() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(true, b"GET /1 HTTP/1.1\r\n\r\n");
    c.send(false, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab");
    let lost = c.seg(false, b"cd");
    let _ = lost; // never delivered: the mirror lost it
    c.send(false, b"ef");
    c.send(true, b"GET /2 HTTP/1.1\r\n\r\n");
    c.send(false, OK);
    let ex = c.close();
    assert_eq!(
        summary(&ex),
        [
            ("GET".into(), "/1".into(), Some(200)),
            ("GET".into(), "/2".into(), Some(200))
        ]
    );
    let damaged = ex[0].response.as_ref().unwrap();
    assert_eq!((damaged.body.as_slice(), damaged.missing), (&b"ab"[..], 2));
    assert_eq!(ex[1].response.as_ref().unwrap().missing, 0);
    assert_eq!(c.ctx.stats.damaged_gap, 1);
    assert_eq!(c.ctx.stats.dropped_gap, 0);
}

#[test]
fn framing_lost_in_a_gap_resyncs_and_pairs_by_acknowledgement() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(true, b"GET /1 HTTP/1.1\r\n\r\n");
    // The whole first response (chunked, so framing cannot skip it) is lost.
    let lost = c.seg(
        false,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    let _ = lost;
    c.send(true, b"GET /2 HTTP/1.1\r\n\r\n");
    c.send(false, OK);
    let ex = c.close();
    // The request whose response was lost is still reported, unanswered.
    assert_eq!(
        summary(&ex),
        [
            ("GET".into(), "/1".into(), None),
            ("GET".into(), "/2".into(), Some(200))
        ]
    );
    assert_eq!(c.ctx.stats.responses_lost, 1);
}

/// On a keep-alive connection whose two directions are reordered (two receive sockets), many
/// responses overtake their requests at once; each waits for its own request, so none is
/// unmatched and each pairs with the request it answers.
#[test]
fn many_responses_overtaking_their_requests_all_pair() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    let mut reqs = Vec::new();
    let mut resps = Vec::new();
    for i in 0..20 {
        reqs.push(c.seg(true, format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes()));
        let body = format!("{i:02}");
        resps.push(c.seg(
            false,
            format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{body}").as_bytes(),
        ));
    }
    for s in resps.iter().chain(&reqs) {
        c.deliver(s);
    }
    let ex = c.close();
    assert_eq!(ex.len(), 20);
    for (i, e) in ex.iter().enumerate() {
        assert_eq!(summary(std::slice::from_ref(e))[0].1, format!("/{i}"));
        assert_eq!(
            e.response.as_ref().unwrap().body,
            format!("{i:02}").as_bytes()
        );
    }
    assert_eq!(c.ctx.stats.unmatched_responses, 0);
    assert!(c.ctx.stats.responses_held > 0, "{:?}", c.ctx.stats);
}

/// A response to HEAD has no body whatever its Content-Length says: held until its request
/// arrives, it is framed by that request's method, and the next response is not swallowed.
#[test]
fn held_response_to_head_is_framed_by_its_request() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    let r1 = c.seg(true, b"HEAD /h HTTP/1.1\r\n\r\n");
    let p1 = c.seg(false, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    let r2 = c.seg(true, b"GET /g HTTP/1.1\r\n\r\n");
    let p2 = c.seg(false, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    for s in [&p1, &p2, &r1, &r2] {
        c.deliver(s);
    }
    let ex = c.close();
    assert_eq!(
        summary(&ex),
        [
            ("HEAD".into(), "/h".into(), Some(200)),
            ("GET".into(), "/g".into(), Some(200))
        ]
    );
    assert_eq!(ex[1].response.as_ref().unwrap().body, b"hello");
}

/// A held response whose request never comes is let go after the reorder timeout (counted),
/// and only then is it unmatched.
#[test]
fn held_response_without_its_request_is_released_after_the_timeout() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    let _lost = c.seg(true, b"GET /lost HTTP/1.1\r\n\r\n");
    c.send(false, OK);
    assert_eq!(c.ctx.stats.responses_held, 1);
    assert_eq!(c.ctx.stats.unmatched_responses, 0, "still waiting");
    c.now += 3_000_000;
    c.table.expire(c.now, &mut c.ctx);
    assert_eq!(c.ctx.stats.held_timeouts, 1);
    assert_eq!(c.ctx.stats.unmatched_responses, 1);
    assert!(c.close().is_empty(), "nothing invented");
}

/// When the client stream passes the bytes a held response acknowledges (here: a gap where its
/// request was), the request is known lost: the response is unmatched at once, counted as a
/// request whose head was lost, and the next exchange pairs.
#[test]
fn response_whose_request_head_was_lost_is_counted() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(true, b"GET /1 HTTP/1.1\r\n\r\n");
    c.send(false, OK);
    let _lost = c.seg(true, b"GET /2 HTTP/1.1\r\n\r\n");
    c.send(false, OK);
    c.send(true, b"GET /3 HTTP/1.1\r\n\r\n");
    c.send(false, OK);
    c.now += 3_000_000;
    c.table.expire(c.now, &mut c.ctx);
    let ex = c.close();
    assert_eq!(
        summary(&ex),
        [
            ("GET".into(), "/1".into(), Some(200)),
            ("GET".into(), "/3".into(), Some(200))
        ]
    );
    assert_eq!(c.ctx.stats.request_heads_lost, 1);
    assert_eq!(c.ctx.stats.unmatched_responses, 1);
}

/// A chunked response whose last chunk was lost ends where the client's next request says it
/// had arrived: the pair is emitted then, not at the connection's end, and flagged.
#[test]
fn chunked_response_with_its_end_lost_ends_at_the_next_request() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(true, b"GET /1 HTTP/1.1\r\n\r\n");
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
    );
    let _lost = c.seg(false, b"4\r\nefgh\r\n0\r\n\r\n");
    c.send(true, b"GET /2 HTTP/1.1\r\n\r\n");
    // Held behind the hole until the reorder timeout declares it a gap.
    c.send(false, OK);
    assert!(c.ctx.out.is_empty());
    c.now += 3_000_000;
    c.table.expire(c.now, &mut c.ctx);
    assert_eq!(c.ctx.out.len(), 2, "both pairs out before the close");
    let ex = c.close();
    assert_eq!(
        summary(&ex),
        [
            ("GET".into(), "/1".into(), Some(200)),
            ("GET".into(), "/2".into(), Some(200))
        ]
    );
    let first = ex[0].response.as_ref().unwrap();
    assert_eq!((first.body.as_slice(), first.missing), (&b"abcd"[..], 14));
    assert_eq!(first.recovered, Some(crate::http::Recovery::Peer));
    assert_eq!(ex[1].response.as_ref().unwrap().body, b"ok");
}

/// A response cut short by the connection's end is reported with its request, marked.
#[test]
fn response_cut_short_by_the_close_is_reported_incomplete() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(true, b"GET /big HTTP/1.1\r\n\r\n");
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
    );
    let ex = c.close();
    assert_eq!(summary(&ex), [("GET".into(), "/big".into(), Some(200))]);
    let resp = ex[0].response.as_ref().unwrap();
    assert!(!resp.complete);
    assert_eq!(resp.body, b"partial");
    assert_eq!(c.ctx.stats.damaged_ended, 1);
}

/// A gap swallows the end of a chunked response and the whole next response: the damaged one
/// ends where the client's latest request acknowledged, the next response found pairs with its
/// own request by its acknowledgement number, and the request whose answer was lost is reported
/// unanswered.
#[test]
fn response_lost_whole_inside_a_chunked_gap_does_not_shift_the_pairs() {
    let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
    c.send(true, b"GET /1 HTTP/1.1\r\n\r\n");
    c.send(
        false,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
    );
    let _lost = c.seg(false, b"4\r\nefgh\r\n0\r\n\r\n");
    c.send(true, b"GET /2 HTTP/1.1\r\n\r\n");
    let _lost = c.seg(
        false,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    );
    c.send(true, b"GET /3 HTTP/1.1\r\n\r\n");
    c.send(false, OK);
    c.now += 3_000_000;
    c.table.expire(c.now, &mut c.ctx);
    let ex = c.close();
    assert_eq!(
        summary(&ex),
        [
            ("GET".into(), "/1".into(), Some(200)),
            ("GET".into(), "/2".into(), None),
            ("GET".into(), "/3".into(), Some(200))
        ]
    );
    assert_eq!(ex[2].response.as_ref().unwrap().body, b"ok");
    assert_eq!(c.ctx.stats.responses_lost, 1);
}

/// Keep-alive connections damaged at random as a mirror damages them: segments dropped, cut
/// short (the rest announced but not carried, as a packet-length cut), responses overtaking
/// their requests. Every exchange whose request and response heads arrived whole is reported
/// with its method, path and status; a request whose head arrived whole is reported (answered or
/// not); nothing is invented or reported twice; undamaged connections pair exactly, bodies too.
mod lossy {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    struct Spec {
        method: &'static str,
        status: u16,
        req_body: usize,
        resp_body: usize,
        chunked: bool,
    }

    /// What happens to a segment on its way to the receiver.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fate {
        Deliver,
        Drop,
        /// Only this many bytes (modulo the length) arrive; the rest is announced as missing.
        Cut(u16),
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD"]),
            prop::sample::select(vec![200u16, 201, 204, 301, 404, 500]),
            0usize..3000,
            0usize..6000,
            any::<bool>(),
        )
            .prop_map(|(method, status, req_body, resp_body, chunked)| Spec {
                method,
                status,
                req_body,
                resp_body,
                chunked,
            })
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            8 => Just(Fate::Deliver),
            1 => Just(Fate::Drop),
            1 => any::<u16>().prop_map(Fate::Cut)
        ]
    }

    fn body(len: usize, seed: usize) -> Vec<u8> {
        (0..len)
            .map(|i| b'a' + ((i * 7 + seed) % 26) as u8)
            .collect()
    }

    fn has_body(s: &Spec) -> bool {
        matches!(s.method, "POST" | "PUT")
    }

    /// The request's bytes and the length of its head.
    fn request(i: usize, s: &Spec) -> (Vec<u8>, usize) {
        let mut head = format!("{} /{i} HTTP/1.1\r\nHost: h\r\n", s.method);
        if has_body(s) {
            head.push_str(&format!("Content-Length: {}\r\n", s.req_body));
        }
        head.push_str("\r\n");
        let n = head.len();
        let mut out = head.into_bytes();
        if has_body(s) {
            out.extend(body(s.req_body, i));
        }
        (out, n)
    }

    /// The response's bytes, the length of its head and its content.
    fn response(i: usize, s: &Spec) -> (Vec<u8>, usize, Vec<u8>) {
        let mut head = format!("HTTP/1.1 {} X\r\n", s.status);
        let bodiless = s.status == 204 || s.method == "HEAD";
        let content = if bodiless {
            Vec::new()
        } else {
            body(s.resp_body, i + 3)
        };
        let mut framed = Vec::new();
        if s.status == 204 {
        } else if s.chunked && !bodiless {
            head.push_str("Transfer-Encoding: chunked\r\n");
            for chunk in content.chunks(1000) {
                framed.extend(format!("{:x}\r\n", chunk.len()).bytes());
                framed.extend(chunk);
                framed.extend(b"\r\n");
            }
            framed.extend(b"0\r\n\r\n");
        } else {
            head.push_str(&format!("Content-Length: {}\r\n", s.resp_body));
            framed.extend(&content);
        }
        head.push_str("\r\n");
        let n = head.len();
        let mut out = head.into_bytes();
        out.extend(framed);
        (out, n, content)
    }

    fn kept(f: Fate, len: usize) -> usize {
        match f {
            Fate::Deliver => len,
            Fate::Drop => 0,
            Fate::Cut(k) => usize::from(k) % len.max(1),
        }
    }

    /// A message cut into segments of `mss` bytes, each with its fate, and whether every byte
    /// of its first `head` bytes arrives.
    fn segments(
        c: &mut Conn,
        from_client: bool,
        bytes: &[u8],
        head: usize,
        mss: usize,
        fates: &mut impl Iterator<Item = Fate>,
    ) -> (Vec<(Seg, Fate)>, bool) {
        let mut out = Vec::new();
        let mut head_whole = true;
        let mut at = 0;
        for piece in bytes.chunks(mss) {
            let f = fates.next().unwrap_or(Fate::Deliver);
            if at < head && at + kept(f, piece.len()) < head.min(at + piece.len()) {
                head_whole = false;
            }
            at += piece.len();
            out.push((c.seg(from_client, piece), f));
        }
        (out, head_whole)
    }

    fn deliver(c: &mut Conn, s: &Seg, f: Fate) {
        if f == Fate::Drop {
            return;
        }
        let keep = kept(f, s.data.len());
        let (src, dst) = if s.from_client {
            (c.client, c.server)
        } else {
            (c.server, c.client)
        };
        let seg = TcpSegment {
            src,
            dst,
            seq: s.seq,
            ack: Some(s.ack),
            flags: TcpFlags::default(),
            payload: &s.data[..keep],
            missing: (s.data.len() - keep) as u32,
        };
        c.now += 1000;
        c.table.segment(9, &seg, c.now, &mut c.ctx);
    }

    fn path_of(e: &Exchange) -> usize {
        match &e.request.start {
            StartLine::Request { target, .. } => target[1..].parse().expect("a generated path"),
            StartLine::Response { .. } => unreachable!(),
        }
    }

    proptest! {
        // Each case replays whole connections; 256 cases take about a second.
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn every_exchange_whose_heads_arrived_is_reported_and_none_invented(
            specs in proptest::collection::vec(spec(), 1..8),
            fates in proptest::collection::vec(fate(), 0..64),
            swaps in proptest::collection::vec(any::<bool>(), 8),
            mss in 200usize..3000,
            damage in any::<bool>(),
        ) {
            let mut c = Conn::new("10.1.0.5:41000", "10.1.0.9:80");
            let mut fates = fates.into_iter().map(|f| if damage { f } else { Fate::Deliver });
            let mut want = Vec::new();
            for (i, s) in specs.iter().enumerate() {
                let (req, req_head) = request(i, s);
                let (resp, resp_head, content) = response(i, s);
                let (rq, rq_whole) = segments(&mut c, true, &req, req_head, mss, &mut fates);
                let (rs, rs_whole) = segments(&mut c, false, &resp, resp_head, mss, &mut fates);
                // The response's first segment overtakes its request across directions.
                let order: Vec<&(Seg, Fate)> = if damage && swaps[i] {
                    rs.iter().take(1).chain(&rq).chain(rs.iter().skip(1)).collect()
                } else {
                    rq.iter().chain(&rs).collect()
                };
                for (seg, f) in order {
                    deliver(&mut c, seg, *f);
                }
                want.push((s.clone(), rq_whole, rs_whole, content));
            }
            c.now += 3_000_000;
            c.table.expire(c.now, &mut c.ctx);
            let ex = c.close();
            // A response to HEAD whose request was lost announces a body it does not carry;
            // no receiver can frame what follows it for sure, so the responses after it are
            // not held to their statuses (their requests still are).
            let ambiguous_from = want
                .iter()
                .position(|(s, rq_whole, ..)| s.method == "HEAD" && !rq_whole)
                .unwrap_or(usize::MAX);
            let mut seen = std::collections::BTreeSet::new();
            for e in &ex {
                let i = path_of(e);
                prop_assert!(seen.insert(i), "/{} reported twice", i);
                let s = &want[i].0;
                prop_assert_eq!(e.request.method(), Some(s.method));
                if i > ambiguous_from {
                    continue;
                }
                if let Some(st) = e.response.as_ref().and_then(|r| r.status()) {
                    prop_assert_eq!(st, s.status, "/{} paired with another's response", i);
                }
            }
            for (i, (s, rq_whole, rs_whole, content)) in want.iter().enumerate() {
                if !rq_whole {
                    continue;
                }
                let got = ex.iter().find(|e| path_of(e) == i);
                prop_assert!(got.is_some(), "/{} not reported (response head whole: {})", i, rs_whole);
                let got = got.unwrap();
                if *rs_whole && i <= ambiguous_from {
                    prop_assert_eq!(got.response.as_ref().and_then(|r| r.status()), Some(s.status), "/{}", i);
                }
                if !damage {
                    prop_assert_eq!(&got.response.as_ref().unwrap().body, content);
                    let len = if has_body(s) { s.req_body } else { 0 };
                    prop_assert_eq!(got.request.body.len(), len);
                }
            }
            if !damage {
                prop_assert_eq!(ex.len(), specs.len());
                prop_assert_eq!(c.ctx.stats.unmatched_responses, 0);
            }
        }
    }
}
