//! HTTP/1.x messages as the parser hands them to the session.

use crate::flow::Seq;

/// The first line of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, target: String },
    Response { status: u16, reason: String },
}

/// A parsed HTTP/1.x message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Header fields in order, names lower-cased, values as sent (invalid UTF-8 replaced).
    /// Chunked trailer fields are appended.
    pub headers: Vec<(String, String)>,
    /// Entity body after de-chunking and content decoding, capped at the configured size.
    pub body: Vec<u8>,
    /// The body was cut at the size cap, or its decoding stopped early.
    pub body_truncated: bool,
    /// The message ended where its framing said (false when the flow closed mid-message).
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
}

impl Message {
    pub fn new(start: StartLine, version: u8, ts: u64, seq: Option<Seq>) -> Message {
        Message {
            start,
            version,
            headers: Vec::new(),
            body: Vec::new(),
            body_truncated: false,
            complete: false,
            ts,
            seq,
            ack: None,
            decoded: false,
            decode_failed: false,
        }
    }

    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
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

    /// "HTTP/1.0" or "HTTP/1.1".
    pub fn version_str(&self) -> &'static str {
        if self.version == 0 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        }
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
    pub request: Message,
    pub response: Option<Message>,
}
