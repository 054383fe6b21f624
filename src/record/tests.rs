use super::*;
use crate::http::{Exchange, Message, StartLine};
use serde_json::Value;

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
        request: message(
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
        ),
        response: resp.then(|| {
            message(
                StartLine::Response {
                    status: 201,
                    reason: "Created".into(),
                },
                &[
                    ("set-cookie", "a=1; Expires=Wed, 21 Oct"),
                    ("set-cookie", "b=2"),
                ],
                resp_body,
            )
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
    let expected_keys = [
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
            reason: String::new(),
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
        for (name, value) in &m.headers {
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
