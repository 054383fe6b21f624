use super::*;
use crate::flow::{FlowConfig, FlowTable};
use crate::http::HttpConfig;
use crate::testkit::{NO_FLAGS, Peers, Seg, addr};

/// A connection between a client and a server (their sequence numbers kept by
/// [`Peers`]), so a test can send, reorder and drop segments as a mirror would deliver them.
struct Conn {
    table: FlowTable<Session>,
    ctx: HttpCtx,
    peers: Peers,
    now: u64,
}

impl Conn {
    fn new(client: &str, server: &str) -> Conn {
        Conn {
            table: FlowTable::new(FlowConfig::default()),
            ctx: HttpCtx::new(HttpConfig::default()),
            peers: Peers::new(addr(client), addr(server)),
            now: 1_700_000_000_000_000,
        }
    }

    /// Prepares a segment from one side, acknowledging all the other side has sent so far.
    fn seg(&mut self, from_client: bool, data: &[u8]) -> Seg {
        self.peers.seg(from_client, NO_FLAGS, data)
    }

    fn deliver(&mut self, s: &Seg) {
        self.now += 1000;
        self.table
            .segment(9, &s.as_segment(), self.now, &mut self.ctx);
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
