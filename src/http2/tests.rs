use super::*;
use crate::testkit::{h2_frame as frame, hex};

// RFC 7541 appendix C.3: three requests without Huffman coding, sharing the dynamic table.
const C31: &str = "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d";
const C32: &str = "8286 84be 5808 6e6f 2d63 6163 6865";
const C33: &str = "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65";
// C.4: the same requests with Huffman coding.
const C41: &str = "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff";
const C42: &str = "8286 84be 5886 a8eb 1064 9cbf";
const C43: &str = "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf";
// C.5: two responses without Huffman coding.
const C51: &str = "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230
    3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65
    2e63 6f6d";
const C52: &str = "4803 3330 37c1 c0bf";

const EH: u8 = END_HEADERS;
const ES: u8 = END_STREAM;

/// The client's preface and empty SETTINGS, the server's SETTINGS.
fn open(c: &mut Connection) {
    let mut client = PREFACE.to_vec();
    client.extend(frame(SETTINGS, 0, 0, &[]));
    c.data(true, &client, 1);
    c.data(false, &frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]), 2);
    c.data(true, &frame(SETTINGS, ACK, 0, &[]), 3);
}

fn fields(m: &Message) -> Vec<(String, String)> {
    m.headers
        .iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

fn pair_of(p: &Pair) -> (String, String, Option<u16>, bool) {
    let (req, resp) = p;
    let StartLine::Request { method, target } = &req.start else {
        panic!("a request");
    };
    (
        method.to_string(),
        target.to_string(),
        resp.as_ref().and_then(Message::status),
        req.complete && resp.as_ref().is_some_and(|r| r.complete),
    )
}

#[test]
fn rfc7541_requests_and_responses_pair_per_stream() {
    let mut c = Connection::new(1 << 20);
    open(&mut c);
    c.data(true, &frame(HEADERS, EH | ES, 1, &hex(C31)), 10);
    c.data(true, &frame(HEADERS, EH | ES, 3, &hex(C32)), 11);
    // The third request's block split over HEADERS and CONTINUATION.
    let c33 = hex(C33);
    let mut split = frame(HEADERS, ES, 5, &c33[..7]);
    split.extend(frame(CONTINUATION, EH, 5, &c33[7..]));
    c.data(true, &split, 12);
    // Responses out of stream order; the second with a padded DATA frame.
    let mut server = frame(HEADERS, EH, 3, &hex(C51));
    server.extend(frame(DATA, 0, 3, b"hel"));
    server.extend(frame(DATA, ES, 3, b"lo"));
    server.extend(frame(HEADERS, EH, 1, &hex(C52)));
    let mut padded = vec![4u8];
    padded.extend_from_slice(b"moved");
    padded.extend_from_slice(&[0; 4]);
    server.extend(frame(DATA, ES | PADDED, 1, &padded));
    // Byte by byte: frames are found across any split.
    for (i, b) in server.iter().enumerate() {
        c.data(false, std::slice::from_ref(b), 20 + i as u64);
    }
    let pairs: Vec<Pair> = c.pairs().collect();
    assert_eq!(
        pairs.iter().map(pair_of).collect::<Vec<_>>(),
        [
            ("GET".into(), "/".into(), Some(302), true),
            ("GET".into(), "/".into(), Some(307), true),
        ]
    );
    let (req3, resp3) = &pairs[0];
    assert_eq!(
        fields(req3),
        [
            ("host".into(), "www.example.com".into()),
            ("cache-control".into(), "no-cache".into())
        ]
    );
    let resp3 = resp3.as_ref().unwrap();
    assert_eq!(resp3.body, b"hello");
    assert_eq!(resp3.version_str(), "HTTP/2");
    assert_eq!(
        fields(resp3),
        [
            ("cache-control".into(), "private".into()),
            ("date".into(), "Mon, 21 Oct 2013 20:13:21 GMT".into()),
            ("location".into(), "https://www.example.com".into())
        ]
    );
    assert_eq!(
        pairs[1].1.as_ref().unwrap().body,
        b"moved",
        "padding removed"
    );
    // Stream 5 is reset by the client before its answer: reported unanswered.
    c.data(true, &frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]), 30);
    let pairs: Vec<Pair> = c.pairs().collect();
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].1, None);
    assert_eq!(
        fields(&pairs[0].0),
        [
            ("host".into(), "www.example.com".into()),
            ("custom-key".into(), "custom-value".into())
        ]
    );
    let StartLine::Request { target, .. } = &pairs[0].0.start else {
        panic!()
    };
    assert_eq!(target, "/index.html");
    assert_eq!(
        (c.stats.streams, c.stats.resets, c.stats.hpack_failures),
        (3, 1, 0)
    );
}

#[test]
fn rfc7541_huffman_coded_requests_decode_alike() {
    let mut c = Connection::new(1 << 20);
    open(&mut c);
    for (id, block) in [(1, C41), (3, C42), (5, C43)] {
        c.data(true, &frame(HEADERS, EH | ES, id, &hex(block)), 10);
    }
    c.close();
    let pairs: Vec<Pair> = c.pairs().collect();
    let got: Vec<_> = pairs.iter().map(|p| (pair_of(p), fields(&p.0))).collect();
    let host = ("host".to_owned(), "www.example.com".to_owned());
    assert_eq!(
        got[0],
        (("GET".into(), "/".into(), None, false), vec![host.clone()])
    );
    assert_eq!(
        got[1].1,
        [host.clone(), ("cache-control".into(), "no-cache".into())]
    );
    assert_eq!(got[2].0.1, "/index.html");
    assert_eq!(
        got[2].1,
        [host, ("custom-key".into(), "custom-value".into())]
    );
    assert!(
        pairs.iter().all(|(r, _)| r.complete),
        "each request ended its stream"
    );
}

#[test]
fn a_block_that_does_not_decode_stops_decoding_that_direction() {
    let mut c = Connection::new(1 << 20);
    open(&mut c);
    // Index 70: past the static table, and the dynamic table is empty.
    c.data(true, &frame(HEADERS, EH | ES, 1, &[0x80 | 70]), 10);
    // A block that would decode on its own: skipped, since the table can no longer be trusted.
    c.data(true, &frame(HEADERS, EH | ES, 3, &hex(C31)), 11);
    c.close();
    assert_eq!(c.pairs().count(), 0, "nothing invented");
    assert_eq!(c.stats.hpack_failures, 2);
}

#[test]
fn trailers_merge_and_informational_heads_are_skipped() {
    let mut c = Connection::new(4);
    open(&mut c);
    // POST /upload (static :method POST is index 3), the body cut at 4 bytes.
    let post = [
        0x83, 0x86, 0x44, 0x07, b'/', b'u', b'p', b'l', b'o', b'a', b'd',
    ];
    c.data(true, &frame(HEADERS, EH, 1, &post), 10);
    c.data(true, &frame(DATA, ES, 1, b"123456"), 11);
    // 100 (literal :status, index 8, not indexed), then 200 (static index 8), then trailers.
    c.data(
        false,
        &frame(HEADERS, EH, 1, &[0x08, 3, b'1', b'0', b'0']),
        12,
    );
    c.data(false, &frame(HEADERS, EH, 1, &[0x88]), 13);
    c.data(false, &frame(DATA, 0, 1, b"ok"), 14);
    let trailer = [
        0x00, 11, b'g', b'r', b'p', b'c', b'-', b's', b't', b'a', b't', b'u', b's', 1, b'0',
    ];
    c.data(false, &frame(HEADERS, EH | ES, 1, &trailer), 15);
    let pairs: Vec<Pair> = c.pairs().collect();
    assert_eq!(pairs.len(), 1);
    let (req, resp) = &pairs[0];
    assert_eq!(req.method(), Some("POST"));
    assert_eq!(
        (req.body.as_slice(), req.body_truncated),
        (&b"1234"[..], true)
    );
    let resp = resp.as_ref().unwrap();
    assert_eq!(resp.status(), Some(200));
    assert_eq!(resp.body, b"ok");
    assert_eq!(fields(resp), [("grpc-status".into(), "0".into())]);
}

#[test]
fn frames_past_the_allowed_size_give_up_the_direction() {
    let mut c = Connection::new(1 << 20);
    open(&mut c);
    let big = vec![0u8; DEFAULT_MAX_FRAME as usize + 1];
    c.data(true, &frame(HEADERS, EH, 1, &hex(C31)), 10);
    c.data(true, &frame(DATA, 0, 1, &big), 11);
    assert_eq!(c.stats.too_large, 1);
    // Once the server allows larger frames, the client may send them.
    let mut c = Connection::new(1 << 20);
    open(&mut c);
    c.data(false, &frame(SETTINGS, 0, 0, &[0, 5, 0, 1, 0, 0]), 5);
    c.data(true, &frame(HEADERS, EH, 1, &hex(C31)), 10);
    c.data(true, &frame(DATA, ES, 1, &big), 11);
    c.data(false, &frame(HEADERS, EH | ES, 1, &[0x88]), 12);
    let pairs: Vec<Pair> = c.pairs().collect();
    assert_eq!(c.stats.too_large, 0);
    assert_eq!(pairs[0].0.body.len(), big.len());
}

#[test]
fn not_http2_or_a_gap_ends_the_direction_and_close_reports_what_stands() {
    let mut c = Connection::new(1 << 20);
    c.data(true, b"GET / HTTP/1.1\r\n\r\n", 1);
    assert_eq!(c.stats.protocol_errors, 1);
    let mut c = Connection::new(1 << 20);
    open(&mut c);
    c.data(true, &frame(HEADERS, EH, 1, &hex(C31)), 10);
    c.gap(true, 100);
    c.data(true, &frame(HEADERS, EH | ES, 3, &hex(C32)), 11);
    c.close();
    let pairs: Vec<Pair> = c.pairs().collect();
    assert_eq!(pairs.len(), 1, "stream 3 came after the gap");
    assert!(!pairs[0].0.complete && pairs[0].1.is_none());
    assert_eq!(c.stats.gaps, 1);
}

proptest::proptest! {
    /// Whatever bytes follow the preface, cut anywhere, nothing panics and memory stays bounded.
    #[test]
    fn any_bytes_in_any_pieces_never_panic(
        client in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        server in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        cut in 1usize..64,
    ) {
        let mut c = Connection::new(1 << 10);
        open(&mut c);
        for (a, b) in client.chunks(cut).zip(server.chunks(cut)) {
            c.data(true, a, 5);
            c.data(false, b, 6);
            let _ = c.pairs().count();
        }
        c.close();
        let _ = c.pairs().count();
        proptest::prop_assert!(c.dirs.iter().all(|d| d.buf.len() <= FRAME_HEADER + MAX_FRAME_BUFFERED as usize));
    }
}

/// A connection through the whole pipeline: its handshake, then segments from either side,
/// 10 µs apart.
struct Wire {
    p: crate::pipeline::Pipeline,
    peers: crate::testkit::Peers,
    now: u64,
}

impl Wire {
    fn new(client: &str, server: &str) -> Wire {
        use crate::testkit::{Peers, SYN, addr};
        let mut w = Wire {
            p: crate::pipeline::Pipeline::new(&Default::default()),
            peers: Peers::new(addr(client), addr(server)),
            now: 1_000_000,
        };
        w.send(true, SYN, b"");
        w.send(false, SYN, b"");
        w
    }

    /// The same connection, its capture begun after the handshake.
    fn joined(client: &str, server: &str) -> Wire {
        use crate::testkit::{Peers, addr};
        Wire {
            p: crate::pipeline::Pipeline::new(&Default::default()),
            peers: Peers::new(addr(client), addr(server)),
            now: 1_000_000,
        }
    }

    fn send(&mut self, from_client: bool, flags: crate::wire::TcpFlags, data: &[u8]) {
        let seg = self.peers.seg(from_client, flags, data);
        self.now += 10;
        self.p.segment(9, &seg.as_segment(), self.now);
    }
}

/// The whole way: TCP segments of an HTTP/2 connection on a port nobody assigned to it, the
/// server's SETTINGS captured before the client's preface, into the pipeline, out as records.
#[test]
fn through_the_pipeline_each_stream_becomes_a_record() {
    use crate::record::{Encoder, RecordConfig};
    use crate::testkit::NO_FLAGS;
    let mut w = Wire::new("10.0.0.1:40000", "10.0.0.2:7443");
    w.send(
        false,
        NO_FLAGS,
        &frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
    );
    let mut client = PREFACE.to_vec();
    client.extend(frame(SETTINGS, 0, 0, &[]));
    client.extend(frame(HEADERS, EH | ES, 1, &hex(C31)));
    client.extend(frame(HEADERS, EH | ES, 3, &hex(C32)));
    // Cut mid-frame, as TCP may.
    let (a, b) = client.split_at(PREFACE.len() + 20);
    w.send(true, NO_FLAGS, a);
    w.send(true, NO_FLAGS, b);
    let mut server = frame(HEADERS, EH, 1, &hex(C51));
    server.extend(frame(DATA, ES, 1, b"{\"ok\":true}"));
    w.send(false, NO_FLAGS, &server);
    let exchanges: Vec<_> = w.p.exchanges().collect();
    assert_eq!(exchanges.len(), 1, "stream 1 answered, stream 3 still open");
    let encoder = Encoder::new(RecordConfig::default());
    let mut buf = Vec::new();
    encoder.encode(&exchanges[0], &mut buf).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(
        (
            &r["method"],
            &r["path"],
            &r["statusCode"],
            &r["type"],
            &r["is_pending"]
        ),
        (
            &"GET".into(),
            &"/".into(),
            &"302".into(),
            &"HTTP/2".into(),
            &"false".into()
        )
    );
    assert_eq!(r["responsePayload"], "{\"ok\":true}");
    assert!(
        r["requestHeaders"]
            .as_str()
            .unwrap()
            .contains("\"host\":\"www.example.com\""),
        "{}",
        r["requestHeaders"]
    );
    // The connection ends: stream 3 is reported unanswered.
    w.send(true, crate::testkit::FIN, b"");
    w.send(false, crate::testkit::FIN, b"");
    w.p.expire(w.now + 600_000_000);
    let rest: Vec<_> = w.p.exchanges().collect();
    assert_eq!(rest.len(), 1);
    assert!(rest[0].response.is_none());
    let s = w.p.stats();
    assert_eq!(
        (s.http.h2_streams, s.http.pairs, s.http.unanswered),
        (2, 1, 1)
    );
}

/// `Upgrade: h2c` answered by `101`: the upgrading request is stream 1, answered in HTTP/2 in
/// the same segment as the 101; later streams follow as HTTP/2.
#[test]
fn an_h2c_upgrade_makes_the_request_stream_1() {
    use crate::testkit::NO_FLAGS;
    let mut w = Wire::new("10.0.0.1:40001", "10.0.0.2:80");
    w.send(
        true,
        NO_FLAGS,
        b"GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    );
    let mut server =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    server.extend(frame(SETTINGS, 0, 0, &[]));
    server.extend(frame(HEADERS, EH, 1, &hex(C51)));
    server.extend(frame(DATA, ES, 1, b"upgraded"));
    w.send(false, NO_FLAGS, &server);
    let first: Vec<_> = w.p.exchanges().collect();
    assert_eq!(first.len(), 1, "the upgraded request, answered on stream 1");
    let resp = first[0].response.as_ref().unwrap();
    assert_eq!(
        (
            first[0].request.method(),
            resp.status(),
            resp.body.as_slice()
        ),
        (Some("GET"), Some(302), &b"upgraded"[..])
    );
    // Then the client's preface and a request on stream 3.
    let mut client = PREFACE.to_vec();
    client.extend(frame(SETTINGS, 0, 0, &[]));
    client.extend(frame(HEADERS, EH | ES, 3, &hex(C31)));
    w.send(true, NO_FLAGS, &client);
    w.send(false, NO_FLAGS, &frame(HEADERS, EH | ES, 3, &hex(C52)));
    let next: Vec<_> = w.p.exchanges().collect();
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].response.as_deref().and_then(Message::status),
        Some(307)
    );
    assert_eq!(next[0].request.version_str(), "HTTP/2");
    assert_eq!(w.p.stats().http.protocol_switches, 1);
}

/// A gap inside a DATA frame whose header came: that stream's message is reported damaged
/// (the body up to the gap, the missing bytes counted), and the connection goes on.
#[test]
fn a_gap_inside_a_data_frame_damages_one_stream_only() {
    let mut c = Connection::new(1 << 20);
    open(&mut c);
    c.data(true, &frame(HEADERS, EH | ES, 1, &hex(C31)), 10);
    c.data(true, &frame(HEADERS, EH | ES, 3, &hex(C32)), 11);
    c.data(false, &frame(HEADERS, EH, 1, &hex(C51)), 12);
    let body: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let data = frame(DATA, ES, 1, &body);
    // The first 1,009 bytes, a gap of 1,000, then the rest of the frame and stream 3's answer.
    c.data(false, &data[..1009], 13);
    c.gap(false, 1000);
    let mut rest = data[2009..].to_vec();
    rest.extend(frame(HEADERS, EH | ES, 3, &hex(C52)));
    c.data(false, &rest[..700], 14);
    c.data(false, &rest[700..], 15);
    let pairs: Vec<Pair> = c.pairs().collect();
    assert_eq!(pairs.len(), 2, "both streams reported");
    let r1 = pairs[0].1.as_ref().unwrap();
    assert_eq!(r1.status(), Some(302));
    assert_eq!(r1.body, &body[..1000], "what came before the gap");
    assert_eq!(r1.missing, 1000);
    assert!(r1.complete, "the frame's END_STREAM still ended it");
    assert_eq!(pairs[1].1.as_ref().and_then(Message::status), Some(307));
    assert_eq!((c.stats.data_gaps, c.stats.gaps), (1, 0));
    // A gap between frames may have taken HEADERS: the direction is given up.
    c.gap(false, 10);
    assert_eq!(c.stats.gaps, 1);
}

/// The filters and redaction apply to HTTP/2 exchanges as to HTTP/1: the host (from
/// `:authority`) is matched, header values are redacted.
#[test]
fn filters_and_redaction_apply_to_http2_exchanges() {
    use crate::filter::{Filter, FilterConfig, REDACTED};
    use crate::pipeline::{Pipeline, PipelineConfig};
    use crate::testkit::{NO_FLAGS, Peers, addr};
    let cfg = FilterConfig {
        deny_hosts: vec!["*.example.com".into()],
        redact_headers: vec!["cache-control".into()],
        ..FilterConfig::default()
    };
    let run = |cfg: &FilterConfig| {
        let mut p = Pipeline::new(&PipelineConfig::default())
            .with_filter(std::sync::Arc::new(Filter::new(cfg).unwrap()));
        let mut peers = Peers::new(addr("10.0.0.1:40002"), addr("10.0.0.2:9000"));
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, EH | ES, 1, &hex(C31)));
        client.extend(frame(HEADERS, EH | ES, 3, &hex(C32)));
        let seg = peers.seg(true, NO_FLAGS, &client);
        p.segment(1, &seg.as_segment(), 10);
        let mut server = frame(HEADERS, EH | ES, 1, &hex(C51));
        server.extend(frame(HEADERS, EH | ES, 3, &hex(C52)));
        let seg = peers.seg(false, NO_FLAGS, &server);
        p.segment(1, &seg.as_segment(), 20);
        p.exchanges().collect::<Vec<_>>()
    };
    // Both requests are to www.example.com: denied.
    assert_eq!(run(&cfg).len(), 0);
    let kept = run(&FilterConfig {
        deny_hosts: vec![],
        ..cfg
    });
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[1].request.header("cache-control"), Some(REDACTED));
    assert_eq!(
        kept[0].response.as_ref().unwrap().header("cache-control"),
        Some(REDACTED)
    );
}

/// Joined mid-connection (the preface and the first requests before the capture): frames are
/// found from a cut point in each direction; a request whose fields need no entry from before
/// is reported, one whose `:path` is such an entry is counted and not reported, and the
/// response to a request from before the join is dropped.
#[test]
fn joined_mid_connection_reports_what_needs_no_older_entry_and_invents_nothing() {
    let mut c = Connection::joined(1 << 20);
    // Client: the tail of a DATA frame, then stream 7 with :path as dynamic index 62 (from
    // before the join), then stream 9 all static and literal (C.3.3 without its :authority
    // reference, which would be a miss too but is not needed).
    let mut client = vec![0xaa; 30];
    client.extend(frame(HEADERS, EH | ES, 7, &[0x82, 0x86, 0xbe]));
    let mut nine = vec![0x82, 0x87, 0x85];
    nine.extend_from_slice(&hex(
        "400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ));
    client.extend(frame(HEADERS, EH | ES, 9, &nine));
    c.data(true, &client[..50], 10);
    c.data(true, &client[50..], 11);
    // Server: the answer to stream 5 (from before the join), then 7's and 9's.
    let mut server = frame(HEADERS, EH | ES, 5, &[0x88]);
    server.extend(frame(HEADERS, EH, 9, &[0x8d]));
    server.extend(frame(DATA, ES, 9, b"nine"));
    server.extend(frame(HEADERS, EH | ES, 7, &[0x88]));
    c.data(false, &server, 12);
    let pairs: Vec<Pair> = c.pairs().collect();
    assert_eq!(pairs.len(), 1, "only stream 9 can be reported");
    let (req, resp) = &pairs[0];
    let StartLine::Request { method, target } = &req.start else {
        panic!()
    };
    assert_eq!((method.as_str(), target.as_str()), ("GET", "/index.html"));
    assert_eq!(fields(req), [("custom-key".into(), "custom-value".into())]);
    let resp = resp.as_ref().unwrap();
    assert_eq!(
        (resp.status(), resp.body.as_slice()),
        (Some(404), &b"nine"[..])
    );
    assert_eq!((c.stats.dynamic_misses, c.stats.streams_unreadable), (1, 1));
    // The entry stream 9 added is known now: index 62 is custom-key.
    c.data(
        true,
        &frame(HEADERS, EH | ES, 11, &[0x82, 0x86, 0x84, 0xbe]),
        13,
    );
    c.data(false, &frame(HEADERS, EH | ES, 11, &[0x88]), 14);
    let pairs: Vec<Pair> = c.pairs().collect();
    assert_eq!(
        fields(&pairs[0].0),
        [("custom-key".into(), "custom-value".into())]
    );
    // A CONTINUATION of a block that began unseen: what the known entries are is lost.
    c.data(
        true,
        &frame(CONTINUATION, EH, 13, &[0x40, 1, b'x', 1, b'y']),
        15,
    );
    c.data(
        true,
        &frame(HEADERS, EH | ES, 15, &[0x82, 0x86, 0x84, 0xbe]),
        16,
    );
    c.data(false, &frame(HEADERS, EH | ES, 15, &[0x88]), 17);
    let pairs: Vec<Pair> = c.pairs().collect();
    assert!(
        fields(&pairs[0].0).is_empty(),
        "index 62 is no longer trusted"
    );
    assert_eq!(c.stats.dynamic_misses, 2);
}

/// The same through the pipeline: a connection whose capture begins mid-way (no handshake
/// seen) is detected as HTTP/2 from its frames, on a port nobody assigned, and which side is
/// the client from the first header block that tells. (Seen from its handshake, a connection
/// without the preface is not HTTP/2: frames are looked for only in streams joined mid-way or
/// after a gap.)
#[test]
fn the_pipeline_detects_http2_joined_mid_connection() {
    use crate::testkit::NO_FLAGS;
    let mut w = Wire::joined("10.0.0.1:40003", "10.0.0.2:9443");
    // The server speaks first in the capture: a WINDOW_UPDATE, a PING ack, then an answer to
    // a stream from before.
    let mut server = frame(8, 0, 0, &[0, 0, 1, 0]);
    server.extend(frame(6, ACK, 0, &[0; 8]));
    server.extend(frame(HEADERS, EH | ES, 3, &[0x88]));
    w.send(false, NO_FLAGS, &server);
    let mut client = frame(8, 0, 0, &[0, 0, 1, 0]);
    client.extend(frame(
        HEADERS,
        EH | ES,
        5,
        &[0x82, 0x86, 0x84, 0x41, 3, b'a', b'p', b'i'],
    ));
    w.send(true, NO_FLAGS, &client);
    w.send(false, NO_FLAGS, &frame(HEADERS, EH | ES, 5, &[0x89]));
    let ex: Vec<_> = w.p.exchanges().collect();
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].request.header("host"), Some("api"));
    assert_eq!(
        ex[0].response.as_deref().and_then(Message::status),
        Some(204)
    );
    assert_eq!(ex[0].client, crate::testkit::addr("10.0.0.1:40003"));
}

/// Found by the fuzz target: a gap while a joined direction still looks for frame boundaries
/// (its buffer is not a frame) looks again after it, and does not take the buffer for one.
#[test]
fn a_gap_before_the_frames_are_found_only_restarts_the_search() {
    let mut c = Connection::joined(4096);
    c.data(
        true,
        &[
            0x00, 0x00, 0x01, 0x00, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        1,
    );
    c.gap(true, 3);
    c.data(true, &frame(8, 0, 0, &[0, 0, 1, 0]), 2);
    c.data(
        true,
        &frame(HEADERS, EH | ES, 1, &[0x82, 0x86, 0x84, 0x41, 1, b'h']),
        3,
    );
    c.data(false, &frame(8, 0, 0, &[0, 0, 1, 0]), 4);
    c.data(false, &frame(HEADERS, EH | ES, 1, &[0x88]), 5);
    assert_eq!(c.pairs().count(), 1);
    assert_eq!(c.stats.gaps, 0);
}

/// A gap between frames: the direction's open message is flagged, its frames are found again
/// after the gap, and later streams are reported (header blocks decoded as joined mid-way).
#[test]
fn after_a_gap_between_frames_the_frames_are_found_again() {
    let mut c = Connection::new(1 << 20);
    open(&mut c);
    c.data(true, &frame(HEADERS, EH | ES, 1, &hex(C31)), 10);
    c.data(false, &frame(HEADERS, EH, 1, &hex(C51)), 11);
    c.data(false, &frame(DATA, 0, 1, b"part one"), 12);
    // Lost: the rest of stream 1's body and whatever else the server sent.
    c.gap(false, 500);
    // The server's bytes resume mid-frame.
    let mut server = vec![0x55; 17];
    server.extend(frame(8, 0, 0, &[0, 0, 1, 0]));
    server.extend(frame(DATA, ES, 1, b" and the end"));
    c.data(
        true,
        &frame(HEADERS, EH | ES, 3, &[0x82, 0x86, 0x84, 0x41, 1, b'h']),
        13,
    );
    server.extend(frame(HEADERS, EH | ES, 3, &[0x89]));
    c.data(false, &server, 14);
    let pairs: Vec<Pair> = c.pairs().collect();
    assert_eq!(pairs.len(), 2);
    let r1 = pairs[0].1.as_ref().unwrap();
    assert_eq!(
        (r1.status(), r1.missing),
        (Some(302), 500),
        "stream 1 flagged"
    );
    assert_eq!(r1.body, b"part one", "the body is what came before the gap");
    assert_eq!(pairs[1].1.as_ref().and_then(Message::status), Some(204));
    assert_eq!((c.stats.gaps, c.stats.protocol_errors), (1, 0));
}
