//! The Akto record: one JSON object per exchange, every value a string, as Akto's consumers of
//! topic `akto.api.logs` read it. Serialized into a buffer the caller reuses.
//!
//! Headers are a JSON object serialized into a string, names in lower case; a field sent several
//! times is combined the way HTTP combines it (values joined by ", "), except `set-cookie`, whose
//! values may contain commas and are joined by "\n". Bodies are text (invalid UTF-8 replaced).
//! A record never exceeds `max_record_bytes`: payloads are cut to fit, and the record then carries
//! `"truncated"` naming what was cut (also when a body hit the body cap).

use crate::http::{Exchange, Message, StartLine};
use serde::Serialize;
use std::borrow::Cow;

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

#[derive(Serialize)]
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
    pub fn encode(&self, ex: &Exchange, buf: &mut Vec<u8>) -> Result<(), RecordError> {
        buf.clear();
        let (method, path) = match &ex.request.start {
            StartLine::Request { method, target } => (method.as_str(), target.as_str()),
            StartLine::Response { .. } => ("", ""),
        };
        let resp = ex.response.as_ref();
        let (status_code, status) = match resp.map(|r| &r.start) {
            Some(StartLine::Response { status, reason }) => (status.to_string(), reason.as_str()),
            _ => ("0".to_owned(), ""),
        };
        let request_headers = headers_json(&ex.request);
        let response_headers = resp.map_or_else(|| "{}".to_owned(), headers_json);
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
            account_id: &self.cfg.account_id,
            vxlan_id: &vxlan_id,
            is_pending: if resp.is_some() { "false" } else { "true" },
            source: "MIRRORING",
            truncated: "",
        };
        let mut req_cut = ex.request.body_truncated;
        let mut resp_cut = resp.is_some_and(|r| r.body_truncated);
        let truncated = truncated_label(req_cut, resp_cut);
        record.truncated = truncated;
        // An escaped payload is never shorter than its text: when the payloads alone pass the
        // limit, the whole record cannot fit and is not written in full only to be thrown away.
        if req_body.len() + resp_body.len() <= self.cfg.max_record_bytes {
            write(&record, buf);
            if buf.len() <= self.cfg.max_record_bytes {
                return Ok(());
            }
        }
        // Too large: find what the record costs without payloads, then share the rest.
        record.request_payload = "";
        record.response_payload = "";
        record.truncated = "requestPayload,responsePayload";
        write(&record, buf);
        let room = self
            .cfg
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
        record.truncated = truncated_label(req_cut, resp_cut);
        write(&record, buf);
        debug_assert!(buf.len() <= self.cfg.max_record_bytes);
        Ok(())
    }
}

fn write(record: &Record<'_>, buf: &mut Vec<u8>) {
    buf.clear();
    // Serializing strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, record);
}

fn truncated_label(req: bool, resp: bool) -> &'static str {
    match (req, resp) {
        (true, true) => "requestPayload,responsePayload",
        (true, false) => "requestPayload",
        (false, true) => "responsePayload",
        (false, false) => "",
    }
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

/// The message's headers as a JSON object serialized to a string: names in byte order, the
/// values of a repeated field joined (", ", or a newline for set-cookie) in the order sent.
/// Written directly, without building a map: this runs twice per record.
fn headers_json(msg: &Message) -> String {
    let mut fields: Vec<(&str, &str)> = msg.headers.iter().collect();
    // Stable: repeated fields keep their order.
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(msg.headers.len() * 48 + 2);
    out.push(b'{');
    let mut rest = fields.as_slice();
    while let Some((&(name, value), tail)) = rest.split_first() {
        let run = tail.iter().take_while(|(n, _)| *n == name).count();
        if out.len() > 1 {
            out.push(b',');
        }
        // Serializing strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, name);
        out.push(b':');
        if run == 0 {
            let _ = serde_json::to_writer(&mut out, value);
        } else {
            let sep = if name == "set-cookie" { "\n" } else { ", " };
            let mut joined = value.to_owned();
            for (_, v) in &tail[..run] {
                joined.push_str(sep);
                joined.push_str(v);
            }
            let _ = serde_json::to_writer(&mut out, &joined);
        }
        rest = &tail[run..];
    }
    out.push(b'}');
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests;
