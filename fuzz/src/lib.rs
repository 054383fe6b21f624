//! Helpers shared by the fuzz targets.

use mirror_receiver::http::{Exchange, StartLine};
use mirror_receiver::pipeline::{Pipeline, PipelineStats};
use mirror_receiver::record::{Encoder, FIELDS, RecordConfig, RecordError};

/// True when `part` is a sub-slice of `whole` (same allocation, inside its bounds).
pub fn within(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    part.is_empty() || (p >= w && p + part.len() <= w + whole.len())
}

/// Record size limit used by the targets: small, so payload cutting is exercised.
pub const MAX_RECORD_BYTES: usize = 2048;


/// Checks every exchange the pipeline finished ([`check_exchange`]) and that they match the
/// pair and unanswered counters of `stats` (taken before draining).
pub fn check_exchanges(p: &mut Pipeline, stats: &PipelineStats, max_body_bytes: usize) {
    let enc = encoder();
    let mut buf = Vec::new();
    let (mut answered, mut unanswered) = (0u64, 0u64);
    for ex in p.exchanges() {
        if ex.response.is_some() {
            answered += 1;
        } else {
            unanswered += 1;
        }
        check_exchange(&enc, &ex, max_body_bytes, &mut buf);
    }
    assert_eq!(answered, stats.http.pairs, "pairs counter");
    assert_eq!(unanswered, stats.http.unanswered, "unanswered counter");
}

pub fn encoder() -> Encoder {
    Encoder::new(RecordConfig {
        account_id: "1000000".to_owned(),
        max_record_bytes: MAX_RECORD_BYTES,
    })
}

/// Invariants of an exchange as the pipeline hands it out, and of its record: valid JSON, an
/// object whose values are all strings, within `MAX_RECORD_BYTES`; the header fields are
/// themselves JSON objects of strings.
pub fn check_exchange(enc: &Encoder, ex: &Exchange, max_body_bytes: usize, buf: &mut Vec<u8>) {
    assert!(
        matches!(ex.request.start, StartLine::Request { .. }),
        "request is not a request: {:?}",
        ex.request.start
    );
    assert!(
        ex.request.body.len() <= max_body_bytes,
        "request body over the cap"
    );
    if let Some(resp) = &ex.response {
        assert!(
            matches!(resp.start, StartLine::Response { .. }),
            "response is not a response: {:?}",
            resp.start
        );
        assert!(
            resp.body.len() <= max_body_bytes,
            "response body over the cap"
        );
    }
    assert!(ex.request.version <= 1);
    match enc.encode(ex, buf) {
        Ok(()) => {}
        // Heads alone larger than the limit: no record, by design.
        Err(RecordError::TooLarge) => return,
    }
    assert!(
        buf.len() <= MAX_RECORD_BYTES,
        "record of {} bytes > {}",
        buf.len(),
        MAX_RECORD_BYTES
    );
    let value: serde_json::Value = serde_json::from_slice(buf)
        .unwrap_or_else(|e| panic!("record is not JSON ({e}): {}", String::from_utf8_lossy(buf)));
    let obj = value.as_object().expect("record is not an object");
    for (k, v) in obj {
        assert!(v.is_string(), "field {k} is not a string: {v}");
    }
    for f in FIELDS {
        assert!(obj.contains_key(f), "field {f} missing");
    }
    for f in ["requestHeaders", "responseHeaders"] {
        let s = obj[f].as_str().unwrap_or_default();
        let headers: serde_json::Value =
            serde_json::from_str(s).unwrap_or_else(|e| panic!("{f} is not JSON ({e}): {s}"));
        let headers = headers
            .as_object()
            .unwrap_or_else(|| panic!("{f} not an object"));
        for (k, v) in headers {
            assert!(v.is_string(), "{f}.{k} is not a string: {v}");
        }
    }
    let pending = obj["is_pending"].as_str() == Some("true");
    assert_eq!(pending, ex.response.is_none());
    let truncated = obj.get("truncated").and_then(|t| t.as_str()).unwrap_or("");
    check_truncated(truncated, ex);
}

/// `truncated`: entries `requestPayload` then `responsePayload`, each with `:missing=N` exactly
/// when that message lacks N bytes and `:ended` exactly when the connection ended first.
fn check_truncated(t: &str, ex: &Exchange) {
    let entries: Vec<&str> = if t.is_empty() { Vec::new() } else { t.split(',').collect() };
    assert!(entries.len() <= 2, "truncated = {t:?}");
    let messages = [("requestPayload", Some(&ex.request)), ("responsePayload", ex.response.as_ref())];
    let mut rest = entries.iter().peekable();
    for (name, msg) in messages {
        let Some(msg) = msg else { continue };
        let damaged = msg.missing > 0 || !msg.complete;
        let entry = rest.next_if(|e| e.split(':').next() == Some(name));
        match entry {
            Some(entry) => {
                let mut want = name.to_owned();
                if msg.missing > 0 {
                    want.push_str(&format!(":missing={}", msg.missing));
                }
                if !msg.complete {
                    want.push_str(":ended");
                }
                assert_eq!(*entry, want, "truncated = {t:?}");
            }
            None => assert!(!damaged, "{name} damaged but not named: truncated = {t:?}"),
        }
    }
    assert!(rest.next().is_none(), "truncated = {t:?}");
}
