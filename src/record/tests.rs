use super::*;
use crate::http::{Exchange, Message, StartLine};
use proptest::prelude::*;
use serde_json::Value;
use std::net::SocketAddr;

fn message(start: StartLine, headers: &[(&str, &str)], body: &[u8]) -> Message {
    let mut m = Message::new(start, 1, 1_700_000_123_456_789, None);
    m.headers = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    m.body = body.to_vec();
    m.complete = true;
    m
}

fn exchange(resp: bool, req_body: &[u8], resp_body: &[u8]) -> Exchange {
    Exchange {
        vni: 4242,
        client: "10.0.0.1:40000".parse().unwrap(),
        server: "[2001:db8::2]:8080".parse().unwrap(),
        connection_id: 7,
        request: Box::new(message(
            StartLine::Request {
                method: "POST".into(),
                target: "/api/v1?q=1".into(),
            },
            &[
                ("host", "api.example.com"),
                ("accept", "a/b"),
                ("accept", "c/d"),
                ("cookie", "x=1"),
            ],
            req_body,
        )),
        response: resp.then(|| {
            Box::new(message(
                StartLine::Response {
                    status: 201,
                    reason: "Created".into(),
                },
                &[
                    ("set-cookie", "a=1; Expires=Wed, 21 Oct"),
                    ("set-cookie", "b=2"),
                ],
                resp_body,
            ))
        }),
    }
}

fn encode(ex: &Exchange, max: usize) -> (Value, usize) {
    let enc = Encoder::new(RecordConfig {
        account_id: "1000000".into(),
        max_record_bytes: max,
    });
    let mut buf = Vec::new();
    enc.encode(ex, &mut buf).unwrap();
    (serde_json::from_slice(&buf).unwrap(), buf.len())
}

#[test]
fn record_follows_the_akto_contract() {
    let (r, _) = encode(&exchange(true, b"{\"a\":1}", b"{\"id\":9}"), 1_000_000);
    let obj = r.as_object().unwrap();
    assert!(
        obj.values().all(Value::is_string),
        "every value is a string"
    );
    assert_eq!(r["path"], "/api/v1?q=1");
    assert_eq!(r["method"], "POST");
    assert_eq!(r["requestPayload"], "{\"a\":1}");
    assert_eq!(r["responsePayload"], "{\"id\":9}");
    assert_eq!(r["ip"], "10.0.0.1");
    assert_eq!(r["destIp"], "2001:db8::2");
    assert_eq!(r["time"], "1700000123");
    assert_eq!(r["statusCode"], "201");
    assert_eq!(r["status"], "Created");
    assert_eq!(r["type"], "HTTP/1.1");
    assert_eq!(r["akto_account_id"], "1000000");
    assert_eq!(r["akto_vxlan_id"], "4242");
    assert_eq!(r["is_pending"], "false");
    assert_eq!(r["source"], "MIRRORING");
    assert!(obj.get("truncated").is_none());
    let expected_keys = FIELDS;
    assert_eq!(obj.len(), expected_keys.len());
    for k in expected_keys {
        assert!(obj.contains_key(k), "{k}");
    }
}

#[test]
fn headers_are_a_json_object_in_a_string_with_repeats_combined() {
    let (r, _) = encode(&exchange(true, b"", b""), 1_000_000);
    let req: Value = serde_json::from_str(r["requestHeaders"].as_str().unwrap()).unwrap();
    assert_eq!(req["accept"], "a/b, c/d");
    assert_eq!(req["host"], "api.example.com");
    let resp: Value = serde_json::from_str(r["responseHeaders"].as_str().unwrap()).unwrap();
    assert_eq!(resp["set-cookie"], "a=1; Expires=Wed, 21 Oct\nb=2");
}

#[test]
fn unanswered_request_is_pending_with_empty_response_fields() {
    let (r, _) = encode(&exchange(false, b"x", b""), 1_000_000);
    assert_eq!(r["is_pending"], "true");
    assert_eq!(r["statusCode"], "0");
    assert_eq!(r["responseHeaders"], "{}");
    assert_eq!(r["responsePayload"], "");
}

#[test]
fn oversized_record_is_cut_to_fit_and_says_so() {
    let big = "é\"\n".repeat(2000);
    let (r, len) = encode(&exchange(true, b"small", big.as_bytes()), 4096);
    assert!(len <= 4096, "{len}");
    assert_eq!(r["requestPayload"], "small");
    let resp = r["responsePayload"].as_str().unwrap();
    assert!(!resp.is_empty() && big.starts_with(resp));
    assert_eq!(r["truncated"], "responsePayload");
    assert!(len > 3000, "the room is used, not wasted: {len}");
}

#[test]
fn both_payloads_share_the_room_when_both_are_large() {
    let a = "a".repeat(10_000);
    let b = "b".repeat(10_000);
    let (r, len) = encode(&exchange(true, a.as_bytes(), b.as_bytes()), 5000);
    assert!(len <= 5000);
    assert_eq!(r["truncated"], "requestPayload,responsePayload");
    let (ra, rb) = (
        r["requestPayload"].as_str().unwrap().len(),
        r["responsePayload"].as_str().unwrap().len(),
    );
    assert!(ra > 1000 && rb > 1000 && ra.abs_diff(rb) <= 1, "{ra} {rb}");
}

#[test]
fn body_cut_at_the_body_cap_is_flagged() {
    let mut ex = exchange(true, b"abc", b"def");
    ex.request.body_truncated = true;
    let (r, _) = encode(&ex, 1_000_000);
    assert_eq!(r["truncated"], "requestPayload");
}

#[test]
fn capture_damage_is_named_with_the_bytes_never_seen() {
    let mut ex = exchange(true, b"abc", b"def");
    ex.response.as_mut().unwrap().missing = 51_200;
    let (r, _) = encode(&ex, 1_000_000);
    assert_eq!(r["truncated"], "responsePayload:missing=51200");
    assert_eq!(r["responsePayload"], "def", "what came before the gap");
    ex.request.complete = false;
    ex.request.body_truncated = true;
    let (r, _) = encode(&ex, 1_000_000);
    assert_eq!(
        r["truncated"],
        "requestPayload:ended,responsePayload:missing=51200"
    );
    // Cut to fit as well: the damage is still named.
    let mut ex = exchange(true, &[b'q'; 3000], &[b'r'; 3000]);
    ex.response.as_mut().unwrap().missing = 7;
    let (r, len) = encode(&ex, 4000);
    assert!(len <= 4000);
    assert_eq!(r["truncated"], "requestPayload,responsePayload:missing=7");
}

#[test]
fn heads_too_large_for_any_record_are_an_error() {
    let mut ex = exchange(true, b"", b"");
    ex.request.headers.push("x-big", &"z".repeat(5000));
    let enc = Encoder::new(RecordConfig {
        account_id: "1".into(),
        max_record_bytes: 2048,
    });
    assert_eq!(enc.encode(&ex, &mut Vec::new()), Err(RecordError::TooLarge));
}

#[test]
fn invalid_utf8_bodies_become_text() {
    let (r, _) = encode(&exchange(true, &[0xff, b'o', b'k'], b""), 1_000_000);
    assert_eq!(r["requestPayload"], "\u{fffd}ok");
}

#[test]
fn headers_are_one_sorted_object_with_repeated_fields_joined() {
    let start = StartLine::Response {
        status: 200,
        reason: "OK".into(),
    };
    let m = message(
        start,
        &[
            ("x-b", "2"),
            ("set-cookie", "s=1"),
            ("accept", "a\"q"),
            ("x-b", "3"),
            ("set-cookie", "t=2"),
        ],
        b"",
    );
    assert_eq!(
        headers_json(&m),
        r#"{"accept":"a\"q","set-cookie":"s=1\nt=2","x-b":"2, 3"}"#
    );
    let none = message(
        StartLine::Response {
            status: 204,
            reason: "".into(),
        },
        &[],
        b"",
    );
    assert_eq!(headers_json(&none), "{}");
}

proptest::proptest! {
    /// The direct writer produces what serializing a serde_json map (sorted keys) would.
    #[test]
    fn headers_json_matches_a_serde_json_map(
        fields in proptest::collection::vec(("[a-c]{1,2}|set-cookie", "[ -~\u{e9}\u{1}]{0,6}"), 0..12)
    ) {
        let m = message(
            StartLine::Response { status: 200, reason: "OK".into() },
            &fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect::<Vec<_>>(),
            b"",
        );
        let mut map = serde_json::Map::new();
        for (name, value) in m.headers.iter() {
            match map.get_mut(name) {
                Some(Value::String(existing)) => {
                    existing.push_str(if name == "set-cookie" { "\n" } else { ", " });
                    existing.push_str(value);
                }
                _ => {
                    map.insert(name.to_owned(), Value::String(value.to_owned()));
                }
            }
        }
        proptest::prop_assert_eq!(headers_json(&m), Value::Object(map).to_string());
    }
}

// ---- the serde_json reference -------------------------------------------------------------------

/// The record as the encoder wrote it through serde_json before it wrote JSON by hand: the
/// reference whose output the encoder must reproduce byte for byte.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    path: &'a str,
    method: &'a str,
    request_headers: &'a str,
    response_headers: &'a str,
    request_payload: &'a str,
    response_payload: &'a str,
    ip: &'a str,
    dest_ip: &'a str,
    time: &'a str,
    status_code: &'a str,
    status: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "akto_account_id")]
    account_id: &'a str,
    #[serde(rename = "akto_vxlan_id")]
    vxlan_id: &'a str,
    #[serde(rename = "is_pending")]
    is_pending: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    truncated: &'a str,
}

/// `Encoder::encode` as it was, over serde_json.
fn reference_encode(
    cfg: &RecordConfig,
    ex: &Exchange,
    buf: &mut Vec<u8>,
) -> Result<(), RecordError> {
    fn write(record: &Record<'_>, buf: &mut Vec<u8>) {
        buf.clear();
        serde_json::to_writer(&mut *buf, record).unwrap();
    }
    buf.clear();
    let (method, path) = match &ex.request.start {
        StartLine::Request { method, target } => (method.as_str(), target.as_str()),
        StartLine::Response { .. } => ("", ""),
    };
    let resp = ex.response.as_deref();
    let (status_code, status) = match resp.map(|r| &r.start) {
        Some(StartLine::Response { status, reason }) => (status.to_string(), reason.as_str()),
        _ => ("0".to_owned(), ""),
    };
    let request_headers = reference_headers_json(&ex.request);
    let response_headers = resp.map_or_else(|| "{}".to_owned(), reference_headers_json);
    let req_body = String::from_utf8_lossy(&ex.request.body);
    let resp_body = resp.map_or(Cow::Borrowed(""), |r| String::from_utf8_lossy(&r.body));
    let ip = ex.client.ip().to_string();
    let dest_ip = ex.server.ip().to_string();
    let time = (ex.request.ts / 1_000_000).to_string();
    let vxlan_id = ex.vni.to_string();
    let mut record = Record {
        path,
        method,
        request_headers: &request_headers,
        response_headers: &response_headers,
        request_payload: &req_body,
        response_payload: &resp_body,
        ip: &ip,
        dest_ip: &dest_ip,
        time: &time,
        status_code: &status_code,
        status,
        kind: ex.request.version_str(),
        account_id: &cfg.account_id,
        vxlan_id: &vxlan_id,
        is_pending: if resp.is_some() { "false" } else { "true" },
        source: "MIRRORING",
        truncated: "",
    };
    let label = |req_cut, resp_cut| truncated_label((req_cut, Some(&ex.request)), (resp_cut, resp));
    let mut req_cut = ex.request.body_truncated;
    let mut resp_cut = resp.is_some_and(|r| r.body_truncated);
    let whole = label(req_cut, resp_cut);
    record.truncated = &whole;
    if req_body.len() + resp_body.len() <= cfg.max_record_bytes {
        write(&record, buf);
        if buf.len() <= cfg.max_record_bytes {
            return Ok(());
        }
    }
    record.request_payload = "";
    record.response_payload = "";
    let both = label(true, true);
    record.truncated = &both;
    write(&record, buf);
    let room = cfg
        .max_record_bytes
        .checked_sub(buf.len())
        .ok_or(RecordError::TooLarge)?;
    let (req_room, resp_room) = share(escaped_len(&req_body), escaped_len(&resp_body), room);
    let req_fit = cut_to_escaped(&req_body, req_room);
    let resp_fit = cut_to_escaped(&resp_body, resp_room);
    req_cut |= req_fit.len() < req_body.len();
    resp_cut |= resp_fit.len() < resp_body.len();
    record.request_payload = req_fit;
    record.response_payload = resp_fit;
    let cut = label(req_cut, resp_cut);
    record.truncated = &cut;
    write(&record, buf);
    Ok(())
}

/// `headers_json` as it was: values joined into a String, everything through serde_json.
fn reference_headers_json(msg: &Message) -> String {
    let mut fields: Vec<(&str, &str)> = msg.headers.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    out.push(b'{');
    let mut rest = fields.as_slice();
    while let Some((&(name, value), tail)) = rest.split_first() {
        let run = tail.iter().take_while(|(n, _)| *n == name).count();
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name).unwrap();
        out.push(b':');
        if run == 0 {
            serde_json::to_writer(&mut out, value).unwrap();
        } else {
            let sep = if name == "set-cookie" { "\n" } else { ", " };
            let mut joined = value.to_owned();
            for (_, v) in &tail[..run] {
                joined.push_str(sep);
                joined.push_str(v);
            }
            serde_json::to_writer(&mut out, &joined).unwrap();
        }
        rest = &tail[run..];
    }
    out.push(b'}');
    String::from_utf8(out).unwrap()
}

// ---- the hand-written JSON against the reference ------------------------------------------------

/// The contents of `s` as a JSON string, by serde_json (without the quotes).
fn serde_escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap();
    quoted[1..quoted.len() - 1].to_owned()
}

fn escaped(s: &str, twice: bool) -> String {
    let mut out = Vec::new();
    push_escaped(&mut out, s, twice);
    String::from_utf8(out).unwrap()
}

#[test]
fn every_ascii_character_is_escaped_as_serde_json_does_at_every_position_in_a_word() {
    for c in (0u8..0x80)
        .map(char::from)
        .chain(['\u{e9}', '\u{fffd}', '\u{1f600}'])
    {
        for before in 0..18 {
            for after in [0, 1, 7, 8, 9] {
                let s = format!("{}{c}{}", "a".repeat(before), "b".repeat(after));
                assert_eq!(escaped(&s, false), serde_escaped(&s), "{s:?}");
                let twice = serde_escaped(&serde_escaped(&s));
                assert_eq!(escaped(&s, true), twice, "{s:?}");
            }
        }
    }
    assert_eq!(escaped("\u{7f}\u{1f}\"\\", false), "\u{7f}\\u001f\\\"\\\\");
    assert_eq!(
        escaped("\u{1}\n\"\\", true),
        "\\\\u0001\\\\n\\\\\\\"\\\\\\\\"
    );
}

/// Text with what escaping must handle: clean runs of various lengths (whole 8-byte words and
/// tails), quotes, backslashes, every control character, DEL, non-ASCII; or anything at all.
fn text(pieces: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-z0-9 ./=;:,-]{1,12}",
        1 => r#"["\\]"#,
        1 => r"[\x00-\x1f\x7f]",
        1 => "[\u{80}-\u{7ff}\u{fffd}\u{10000}-\u{10ffff}]",
    ];
    prop_oneof![
        4 => proptest::collection::vec(piece, 0..=pieces).prop_map(|v| v.concat()),
        1 => proptest::string::string_regex(&format!("(?s).{{0,{pieces}}}")).unwrap(),
    ]
}

/// Bytes for a body: text, arbitrary bytes (mostly invalid UTF-8), or large enough text to need
/// cutting under a small record limit.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => text(12).prop_map(String::into_bytes),
        2 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(text(4), 0..300).prop_map(|v| v.concat().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..3000),
    ]
}

/// Whether the body was cut at the body cap: seldom, so that most labels come from the size
/// limit.
fn body_cut() -> impl Strategy<Value = bool> {
    proptest::bool::weighted(0.2)
}

/// Header fields: few names (so some repeat, set-cookie among them), names alike in their first
/// 8 bytes, or any text; sometimes more than are sorted on the stack.
fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        3 => "[a-c]{1,2}",
        1 => Just("set-cookie".to_owned()),
        // Sharing the 8 bytes the sort looks at first, or ending in NULs where they are padded.
        2 => r"(content-|x-)[\x00ab]{0,3}",
        2 => text(3),
    ];
    proptest::collection::vec((name, text(6)), 0..(STACK_FIELDS + 8))
}

fn arbitrary_message(
    start: StartLine,
    version: u8,
    ts: u64,
    fields: &[(String, String)],
    body: Vec<u8>,
    body_truncated: bool,
) -> Message {
    let mut m = Message::new(start, version, ts, None);
    m.headers = fields.iter().map(|(n, v)| (n, v)).collect();
    m.body = body;
    m.body_truncated = body_truncated;
    m.complete = true;
    m
}

prop_compose! {
    fn arbitrary_exchange()(
        (vni, client, server) in (any::<u32>(), any::<SocketAddr>(), any::<SocketAddr>()),
        (method, target, version, ts) in (text(2), text(8), 0u8..2, any::<u64>()),
        (req_fields, req_body, req_cut) in (fields(), body(), body_cut()),
        response in proptest::option::of((any::<u16>(), text(3), fields(), body(), body_cut())),
    ) -> Exchange {
        let request = arbitrary_message(
            StartLine::Request { method: method.into(), target: target.into() },
            version,
            ts,
            &req_fields,
            req_body,
            req_cut,
        );
        let response = response.map(|(status, reason, fields, body, cut)| {
            arbitrary_message(StartLine::Response { status, reason: reason.into() }, version, ts, &fields, body, cut)
        });
        Exchange { vni, client, server, connection_id: 1, request: Box::new(request), response: response.map(Box::new) }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// The hand-written record is the serde_json record, byte for byte, cut or not, and it is
    /// JSON whose header strings hold JSON objects.
    #[test]
    fn encode_writes_what_serde_json_wrote(
        ex in arbitrary_exchange(),
        account_id in text(3),
        max_record_bytes in prop_oneof![Just(1_000_000usize), 0usize..4000],
    ) {
        let cfg = RecordConfig { account_id, max_record_bytes };
        let (mut got, mut want) = (Vec::new(), Vec::new());
        let result = Encoder::new(cfg.clone()).encode(&ex, &mut got);
        prop_assert_eq!(result, reference_encode(&cfg, &ex, &mut want));
        prop_assert_eq!(String::from_utf8(got.clone()), String::from_utf8(want));
        if result.is_ok() {
            prop_assert!(got.len() <= max_record_bytes);
            let r: Value = serde_json::from_slice(&got).unwrap();
            for headers in ["requestHeaders", "responseHeaders"] {
                let text = r[headers].as_str().unwrap();
                prop_assert!(serde_json::from_str::<Value>(text).unwrap().is_object());
            }
        }
    }

    /// Escaping matches serde_json's on any text, once and twice.
    #[test]
    fn escaping_matches_serde_json(s in text(24)) {
        prop_assert_eq!(escaped(&s, false), serde_escaped(&s));
        prop_assert_eq!(escaped(&s, true), serde_escaped(&serde_escaped(&s)));
    }

    /// The headers written escaped twice are the reference header JSON as a JSON string's
    /// contents, and once, the reference header JSON itself.
    #[test]
    fn headers_match_the_reference(fields in fields()) {
        let m = arbitrary_message(
            StartLine::Response { status: 200, reason: "OK".into() },
            1,
            0,
            &fields,
            Vec::new(),
            false,
        );
        let reference = reference_headers_json(&m);
        prop_assert_eq!(headers_json(&m), reference.clone());
        let mut twice = Vec::new();
        push_headers(&mut twice, &m, true);
        prop_assert_eq!(String::from_utf8(twice), Ok(serde_escaped(&reference)));
    }
}

#[test]
fn numbers_and_addresses_are_written_as_display_writes_them() {
    for n in [
        0,
        7,
        10,
        99,
        100,
        65_535,
        u64::from(u32::MAX),
        10_u64.pow(16) - 1,
        10_u64.pow(16),
        u64::MAX,
    ] {
        let mut out = Vec::new();
        push_decimal(&mut out, n);
        assert_eq!(out, n.to_string().into_bytes());
    }
    for ip in [
        "0.0.0.0",
        "10.0.0.1",
        "255.255.255.255",
        "::",
        "::ffff:1.2.3.4",
        "2001:db8::2",
    ] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let mut out = Vec::new();
        push_ip(&mut out, ip);
        assert_eq!(out, ip.to_string().into_bytes());
    }
}

#[test]
fn octets_are_written_as_display_writes_them() {
    for n in 0..=255u8 {
        let mut out = Vec::new();
        super::push_octet(&mut out, n);
        assert_eq!(out, n.to_string().as_bytes());
    }
}

/// The room reserved for a header object covers the worst case: every byte of names and values
/// a control character (`\\u00xx` escaped twice, 7 bytes), and many values of one name joined
/// (set-cookie's separator, `\\n` twice). Written within its bound, it is what the reference
/// gives.
#[test]
fn header_objects_fit_their_bound_at_worst() {
    let control: String = (0u8..0x20).map(char::from).collect();
    for name in ["\u{1}\u{2}", "set-cookie", "x"] {
        let fields: Vec<(&str, &str)> = std::iter::repeat_n((name, control.as_str()), 40)
            .chain([("\"\\", "\"\\"), ("", ""), ("y", "")])
            .collect();
        let m = message(
            StartLine::Response {
                status: 200,
                reason: "OK".into(),
            },
            &fields,
            b"",
        );
        let (text, positions) = m.headers.parts();
        let bound = headers_bound(text.len(), positions.len());
        let mut twice = Vec::new();
        push_headers(&mut twice, &m, true);
        assert!(twice.len() + 8 <= bound, "{} + 8 > {bound}", twice.len());
        let reference = reference_headers_json(&m);
        assert_eq!(String::from_utf8(twice), Ok(serde_escaped(&reference)));
        let mut once = Vec::new();
        push_headers(&mut once, &m, false);
        assert!(once.len() + 8 <= bound);
        assert_eq!(String::from_utf8(once), Ok(reference));
    }
}

/// A write that does not fit the room reserved is started over with more: the output is whole
/// and after what the buffer held.
#[test]
fn appending_past_the_bound_starts_over_with_more_room() {
    let text = "a\"b\u{1}c".repeat(50);
    for bound in [0, 1, 9, 100] {
        let mut out = b"before:".to_vec();
        append_bounded(&mut out, bound, |a| a.escaped::<true>(text.as_bytes()));
        let expected = format!("before:{}", serde_escaped(&serde_escaped(&text)));
        assert_eq!(String::from_utf8(out), Ok(expected), "bound {bound}");
    }
}
