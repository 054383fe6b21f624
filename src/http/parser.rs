//! Framing of one direction of an HTTP/1.x connection into messages.
//!
//! Heads are parsed by httparse; bodies are framed by Content-Length, chunked coding (sizes by
//! httparse, trailers kept) or the end of the connection. "Need more bytes" is the normal state.
//! The parser starts in *seek* mode, where it looks for a line that starts a message, because a
//! capture can begin anywhere in a connection; it returns there after a parse error or a gap that
//! breaks framing between messages.
//!
//! A gap inside a message whose head was seen never costs the message (Zeek and Suricata log such
//! transactions with their gaps, and for API discovery the head is what matters most):
//! - framing that survives the gap (Content-Length, the data of a chunk, close-delimited) is
//!   followed as if the bytes had been there; the body keeps what was seen up to the first gap and
//!   the message counts the bytes it lacks ([`Message::missing`]);
//! - a gap that destroys chunked framing (it swallows a chunk-size line) puts the parser in
//!   *recover* mode, where it looks for the message's end: a later chunk-size line whose chunk
//!   ends exactly where another chunk-size line starts, the last chunk, the next start line, the
//!   position the peer's next message acknowledges ([`Parser::end_by`]), or the end of the stream.

use super::HttpConfig;
use super::decode::{self, Decoded};
use super::detect::{self, Scan, StartKind};
use super::message::{Headers, Message, Recovery, StartLine};
use crate::flow::{DataMeta, Seq};

/// Which kind of message a direction carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Request,
    Response,
}

impl Role {
    /// The kind of start line that begins this direction's messages.
    fn start_kind(self) -> StartKind {
        match self {
            Role::Request => StartKind::Request,
            Role::Response => StartKind::Response,
        }
    }
}

/// Why a message was given up. `Copy`, string-free: a metric label.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParseError {
    HeaderName,
    HeaderValue,
    NewLine,
    Status,
    Token,
    TooManyHeaders,
    Version,
    /// The head grew past the configured limit without ending.
    HeadTooLarge,
    /// Content-Length missing a number, or several that disagree.
    ContentLength,
    /// A chunk-size line or chunk terminator is malformed.
    Chunk,
}

impl ParseError {
    pub const ALL: [ParseError; 10] = [
        ParseError::HeaderName,
        ParseError::HeaderValue,
        ParseError::NewLine,
        ParseError::Status,
        ParseError::Token,
        ParseError::TooManyHeaders,
        ParseError::Version,
        ParseError::HeadTooLarge,
        ParseError::ContentLength,
        ParseError::Chunk,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::HeaderName => "header_name",
            ParseError::HeaderValue => "header_value",
            ParseError::NewLine => "new_line",
            ParseError::Status => "status",
            ParseError::Token => "token",
            ParseError::TooManyHeaders => "too_many_headers",
            ParseError::Version => "version",
            ParseError::HeadTooLarge => "head_too_large",
            ParseError::ContentLength => "content_length",
            ParseError::Chunk => "chunk",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl From<httparse::Error> for ParseError {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::HeaderName => ParseError::HeaderName,
            httparse::Error::HeaderValue => ParseError::HeaderValue,
            httparse::Error::NewLine => ParseError::NewLine,
            httparse::Error::Status => ParseError::Status,
            httparse::Error::Token => ParseError::Token,
            httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
            httparse::Error::Version => ParseError::Version,
        }
    }
}

/// Why a message in progress was abandoned.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    Gap,
    Parse(ParseError),
}

/// What the parser did with the bytes it has.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Everything buffered is consumed or waits for more bytes.
    NeedMore,
    /// A head was parsed: call [`Parser::start_body`] before stepping again.
    Head,
    Complete(Box<Message>),
    /// A message was abandoned. `had_head` tells whether [`Step::Head`] was reported for it.
    Dropped {
        had_head: bool,
        ack: Option<Seq>,
        reason: DropReason,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum State {
    Seek,
    Head,
    AwaitBody,
    Length(u64),
    Chunked(Chunk),
    Close,
    /// A gap destroyed the framing of the message in progress: looking for its end.
    Recover,
    /// After a protocol switch: bytes are no longer HTTP/1.x.
    Tunnel,
}

/// Max header fields per head (httparse's storage is lent from the stack).
const MAX_HEADERS: usize = 128;
/// Bytes after a protocol switch a direction holds for the session ([`Parser::take_tunnel`]).
pub const TUNNEL_KEEP: usize = 64 * 1024;

/// Longest chunk-size line accepted (size plus extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Largest chunk a recovering parser waits to see whole, to check that a candidate chunk-size line
/// is followed by another where its size says. Larger candidates are passed over: the message's
/// end is then found by a start line, the peer or the end of the stream.
const RECOVER_WINDOW: u64 = 64 * 1024;

/// One direction's framing state.
#[derive(Debug)]
pub struct Parser {
    role: Role,
    buf: Vec<u8>,
    pos: usize,
    /// Sequence number of `buf[pos]`, when known.
    seq: Option<Seq>,
    /// Metadata of the bytes most recently pushed.
    meta: Option<DataMeta>,
    /// While a head waits for its body framing (a held response), the segments pushed behind
    /// it: where each begins in `buf` and its metadata, so each later head gets its own
    /// segment's time and acknowledgement. Empty otherwise (no allocation on the common path).
    metas: super::lazy::LazyDeque<(usize, DataMeta)>,
    state: State,
    /// Boxed: an idle connection's parsers stay small.
    msg: Option<Box<Message>>,
    /// While recovering: the message ends at the latest here (the peer acknowledged it).
    end_hint: Option<Seq>,
    /// Where in `buf` the newest segment's bytes begin. A message starts a segment far more
    /// often than not, so after framing was lost that position is a candidate start even when
    /// it is not a line start (a body ending without a newline before the next head).
    seg_start: usize,
    /// Framing was lost in a gap (or the stream was joined mid-connection) and no head found
    /// since: a request line must name a registered method, and a segment start is a
    /// candidate inside a line unless the line itself counts ("D" + "ELETE /x HTTP/1.1").
    after_gap: bool,
    /// The message being recovered ended where a request line whose start was lost begins:
    /// a request whose head is gone came next (see [`Parser::take_lost_head`]).
    lost_head: bool,
    tunnel_after: bool,
    /// Bytes skipped while looking for a message start.
    pub skipped_bytes: u64,
}

impl Parser {
    pub fn new(role: Role) -> Parser {
        Parser {
            role,
            buf: Vec::new(),
            pos: 0,
            seq: None,
            meta: None,
            metas: Default::default(),
            state: State::Seek,
            msg: None,
            end_hint: None,
            seg_start: 0,
            after_gap: false,
            lost_head: false,
            tunnel_after: false,
            skipped_bytes: 0,
        }
    }

    /// Bytes held in the parser's buffer (heads in progress, not bodies).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Every byte the parser holds: its buffer's capacity and the body of the message in
    /// progress.
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity() + self.msg.as_ref().map_or(0, |m| m.body.capacity())
    }

    /// Frees the buffer when it holds nothing (the connection went idle between messages).
    pub fn release(&mut self) {
        if self.pos == self.buf.len() && self.buf.capacity() > 0 {
            // Kept for this thread's next message rather than freed (see [`crate::spare`]).
            crate::spare::give_stream(std::mem::take(&mut self.buf));
            self.pos = 0;
        }
        self.metas.release();
    }

    /// True once the direction switched protocols.
    pub fn in_tunnel(&self) -> bool {
        self.state == State::Tunnel
    }

    /// Sequence number of the next byte not yet consumed, when known (just past the message
    /// that completed last, right after it completes).
    pub fn position(&self) -> Option<Seq> {
        self.seq
    }

    /// Would a gap of `len` bytes here take the start of a message? When it would, how far
    /// before the gap's end that start lies: at a known message boundary (the previous
    /// message complete, or the stream's start) it is the gap's first byte; past the end of a
    /// Content-Length body, that end; inside a head, the head's first byte. None where it is
    /// not known.
    pub fn gap_takes_start(&self, len: u64) -> Option<u64> {
        match self.state {
            State::Seek if self.msg.is_none() && !self.after_gap => {
                Some(len + self.buffered() as u64)
            }
            // A status line cut before its end ("HTTP/1" at least): a response began there.
            State::Seek
                if self.role == Role::Response && self.msg.is_none() && {
                    let held = &self.buf[self.pos..];
                    let n = held.len().min(7);
                    n >= 5 && held[..n] == b"HTTP/1."[..n]
                } =>
            {
                Some(len + self.buffered() as u64)
            }
            // Entered at a start line or right after a message: a message starts here.
            State::Head => Some(len + self.buffered() as u64),
            State::Length(rest) if self.msg.is_some() && self.buffered() == 0 && len > rest => {
                Some(len - rest)
            }
            _ => None,
        }
    }

    /// Where the message in progress ends, when its framing says so already (a
    /// Content-Length body): what a response acknowledging more than that was sent after.
    pub fn framed_end(&self) -> Option<Seq> {
        match self.state {
            State::Length(rest) if self.msg.is_some() => self.seq.map(|s| s.wrapping_add(rest)),
            _ => None,
        }
    }

    /// The stream had a gap before this parser saw it (while the client side was unknown).
    pub fn mark_gap(&mut self) {
        self.after_gap = true;
    }

    /// True once after the latest message completed by recovery when the next message's
    /// head was lost: its tail ("ET /x HTTP/1.1") follows the gap.
    pub fn take_lost_head(&mut self) -> bool {
        std::mem::take(&mut self.lost_head)
    }

    /// True while a gap's damage to framing is being recovered from.
    pub fn recovering(&self) -> bool {
        self.state == State::Recover
    }

    /// True while a head was reported and its body framing not yet chosen
    /// ([`Parser::start_body`]).
    pub fn awaiting_body(&self) -> bool {
        self.state == State::AwaitBody
    }

    /// The other direction's next message acknowledged this direction up to `seq`: a message
    /// being recovered ends there at the latest (a client sends its next request, and a server
    /// its response, once the message before it arrived).
    /// An acknowledgement from before the message began says nothing of its end.
    pub fn end_by(&mut self, seq: Option<Seq>) {
        let start = self.msg.as_ref().and_then(|m| m.seq);
        if self.state == State::Recover
            && let Some(seq) = seq
            && start.is_none_or(|s| seq > s)
        {
            self.end_hint = Some(seq);
        }
    }

    /// Sets the direction to tunnel mode (the other direction saw the protocol switch).
    pub fn enter_tunnel(&mut self) {
        self.state = State::Tunnel;
        self.buf.drain(..self.pos);
        self.buf.truncate(TUNNEL_KEEP);
        self.metas.clear();
        self.pos = 0;
        self.msg = None;
    }

    /// In tunnel mode: the bytes of the stream since the switch (at most [`TUNNEL_KEEP`]
    /// waiting at a time), taken.
    pub fn take_tunnel(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.pos.min(self.buf.len()));
        self.buf.clear();
        self.pos = 0;
        rest
    }

    /// The message whose head was just reported.
    pub fn current(&self) -> Option<&Message> {
        self.msg.as_deref()
    }

    /// Takes bytes of the stream. Body bytes of the message in progress go straight into its
    /// body when nothing waits in the buffer before them, so a body is copied once; the rest is
    /// appended to the buffer for [`Parser::step`].
    pub fn feed(&mut self, data: &[u8], meta: DataMeta, cfg: &HttpConfig) {
        let body_rest = if self.pos == self.buf.len() && self.msg.is_some() {
            match self.state {
                State::Length(rest) | State::Chunked(Chunk::Data(rest)) => rest,
                State::Close => u64::MAX,
                _ => 0,
            }
        } else {
            0
        };
        let n = (data.len() as u64).min(body_rest) as usize;
        if n == 0 {
            return self.push(data, meta);
        }
        self.append_body(&data[..n], cfg);
        self.state = match self.state {
            State::Length(rest) => State::Length(rest - n as u64),
            State::Chunked(Chunk::Data(rest)) if rest == n as u64 => State::Chunked(Chunk::DataEnd),
            State::Chunked(Chunk::Data(rest)) => State::Chunked(Chunk::Data(rest - n as u64)),
            other => other,
        };
        let seq = meta.seq.wrapping_add(n as u64);
        if n < data.len() {
            self.push(&data[n..], DataMeta { seq, ..meta });
        } else {
            self.seq = Some(seq);
            self.meta = Some(meta);
        }
    }

    /// Appends bytes of the stream.
    pub fn push(&mut self, data: &[u8], meta: DataMeta) {
        if self.state == State::Tunnel {
            // Kept (a little) for the session, which may follow the new protocol
            // ([`Parser::take_tunnel`]); past that they are not HTTP/1 and are dropped.
            let room = TUNNEL_KEEP.saturating_sub(self.buf.len() - self.pos);
            self.buf.extend_from_slice(&data[..data.len().min(room)]);
            return;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.seq = Some(meta.seq);
            self.metas.clear();
        } else if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            for m in self.metas.iter_mut() {
                m.0 = m.0.saturating_sub(self.pos);
            }
            self.pos = 0;
        }
        // The newest segment's start is a candidate message start (see `start_at_segment`);
        // one whose start line was still incomplete stays the candidate until it is complete.
        if !self.segment_start_undecided() {
            self.seg_start = self.buf.len();
        }
        if self.state == State::AwaitBody || !self.metas.is_empty() {
            if self.metas.is_empty()
                && let Some(prev) = self.meta
            {
                // The bytes already buffered came with the previous segment.
                self.metas.push_back((self.pos, prev));
            }
            self.metas.push_back((self.buf.len(), meta));
        }
        if self.buf.capacity() == 0 && !data.is_empty() {
            self.buf = crate::spare::stream();
        }
        self.buf.extend_from_slice(data);
        self.meta = Some(meta);
    }

    /// While recovering after a gap: does the newest segment begin what may still become a
    /// start line (not complete yet)?
    fn segment_start_undecided(&self) -> bool {
        if !self.after_gap || self.state != State::Recover {
            return false;
        }
        let Some(mark) = self.seg_start.checked_sub(self.pos) else {
            return false;
        };
        let avail = &self.buf[self.pos..];
        mark > 0
            && mark < avail.len()
            && avail[mark - 1] != b'\n'
            && matches!(detect::scan(&avail[mark..], None), Scan::Partial(0))
    }

    /// The newest segment's start in the unconsumed bytes, when a start line of kind `want`
    /// begins there and it is not a line start already.
    fn start_at_segment(&self, want: StartKind) -> Option<usize> {
        if !self.after_gap {
            return None;
        }
        let avail = &self.buf[self.pos..];
        let mark = self.seg_start.checked_sub(self.pos)?;
        if mark == 0 || mark >= avail.len() || avail[mark - 1] == b'\n' {
            return None;
        }
        let found = matches!(detect::scan(&avail[mark..], Some(want)), Scan::Found(0, _));
        // After a gap a request line must name a registered method (see `step_seek`).
        (found && (want == StartKind::Response || detect::known_method(&avail[mark..])))
            .then_some(mark)
    }

    /// True when the buffered bytes begin with a complete status line.
    fn next_is_status_line(&self) -> bool {
        let avail = &self.buf[self.pos..];
        avail.iter().position(|&b| b == b'\n').is_some_and(|eol| {
            let line = avail[..eol].strip_suffix(b"\r").unwrap_or(&avail[..eol]);
            detect::classify_line(line) == Some(StartKind::Response)
        })
    }

    /// Chooses the body framing of the message whose head was just reported. For a response,
    /// `request_method` is the method of the request it answers, when known.
    pub fn start_body(&mut self, request_method: Option<&str>) -> Result<(), ParseError> {
        debug_assert_eq!(self.state, State::AwaitBody);
        let Some(msg) = &self.msg else {
            self.state = State::Head;
            return Ok(());
        };
        let chunked = msg
            .header_values("transfer-encoding")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
        let length = content_length(msg)?;
        self.state = match msg.start {
            StartLine::Request { .. } if chunked => State::Chunked(Chunk::Size),
            StartLine::Request { .. } => State::Length(length.unwrap_or(0)),
            StartLine::Response { status, .. } => {
                let method = request_method.unwrap_or("");
                if status == 101 || (method == "CONNECT" && (200..300).contains(&status)) {
                    self.tunnel_after = true;
                    State::Length(0)
                } else if (100..200).contains(&status)
                    || status == 204
                    || status == 304
                    || method == "HEAD"
                {
                    State::Length(0)
                } else if request_method.is_none() && self.next_is_status_line() {
                    // Its request is unknown (lost, or before the capture) and the next response
                    // follows the head at once: a response to HEAD, whose Content-Length
                    // describes a body it does not carry. Taking the length would swallow the
                    // next response.
                    State::Length(0)
                } else if chunked {
                    State::Chunked(Chunk::Size)
                } else if let Some(n) = length {
                    State::Length(n)
                } else {
                    State::Close
                }
            }
        };
        Ok(())
    }

    /// Advances as far as the buffered bytes allow: runs the state machine, one state's step at
    /// a time, until a state needs more bytes or has something to report.
    pub fn step(&mut self, cfg: &HttpConfig) -> Step {
        loop {
            // States that always report return their step at once; the others say whether
            // stepping goes on (`Progress`, small: a message is moved once, not through it).
            let progress = match self.state {
                State::Tunnel => return Step::NeedMore,
                State::Head => return self.step_head(cfg),
                State::Length(0) => return self.finish_message(cfg),
                State::Chunked(Chunk::Trailers) => return self.step_trailers(cfg),
                State::Recover => match self.recover() {
                    Recovered::Wait => Progress::NeedMore,
                    Recovered::Chunk => Progress::Again,
                    Recovered::End(by) => return self.finish_recovered(by, cfg),
                },
                State::Seek => self.step_seek(),
                State::AwaitBody => self.step_await_body(),
                State::Length(rest) => self.step_length(rest, cfg),
                State::Chunked(Chunk::Size) => self.step_chunk_size(),
                State::Chunked(Chunk::Data(rest)) => self.step_chunk_data(rest, cfg),
                State::Chunked(Chunk::DataEnd) => self.step_chunk_end(),
                State::Close => self.step_close(cfg),
            };
            match progress {
                Progress::Again => {}
                Progress::NeedMore => return Step::NeedMore,
                Progress::Malformed(e) => return self.abandon(DropReason::Parse(e), true),
            }
        }
    }

    /// [`State::Seek`]: skips to the next line that starts a message of this direction, and
    /// goes on in [`State::Head`] there.
    fn step_seek(&mut self) -> Progress {
        match self.seek_start() {
            // After a gap, the line found may be the tail of one whose start was lost
            // ("ET /x HTTP/1.1"): a request line must name a registered method to count.
            Scan::Found(off, StartKind::Request)
                if self.after_gap && !detect::known_method(&self.buf[self.pos + off..]) =>
            {
                self.skip(off + 1);
                Progress::Again
            }
            Scan::Found(off, _) => {
                self.skip(off);
                self.state = State::Head;
                Progress::Again
            }
            Scan::Partial(off) => {
                self.skip(off);
                Progress::NeedMore
            }
            Scan::None => {
                let n = self.buffered();
                self.skip(n);
                Progress::NeedMore
            }
        }
    }

    /// Where in the buffered bytes the next message of this direction may start: the first line
    /// start that begins a start line, or the newest segment's start when a message starts
    /// there inside the line found (or after every line start). The segment wins unless that
    /// line is a start line that counts after a gap itself ("GET /a HTTP/1.1" sent as "G" and
    /// "ET /a HTTP/1.1").
    fn seek_start(&self) -> Scan {
        let want = self.role.start_kind();
        let avail = &self.buf[self.pos..];
        let scan = detect::scan(avail, Some(want));
        let Some(mark) = self.start_at_segment(want) else {
            return scan;
        };
        let line_start = match scan {
            Scan::Found(off, _) | Scan::Partial(off) => Some(off),
            Scan::None => None,
        };
        let line_counts = match scan {
            Scan::Found(o, StartKind::Request) => detect::known_method(&avail[o..]),
            Scan::Found(..) => true,
            _ => false,
        };
        if line_start.is_none_or(|o| o < mark && !avail[o..mark].contains(&b'\n') && !line_counts) {
            Scan::Found(mark, want)
        } else {
            scan
        }
    }

    /// [`State::Head`]: parses the head at the buffered bytes (after the empty lines allowed
    /// between messages) and reports it, or abandons it when it is malformed.
    fn step_head(&mut self, cfg: &HttpConfig) -> Step {
        // Empty lines between messages are allowed (RFC 9112 2.2).
        let blank = self.buf[self.pos..]
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if self.msg.is_none() {
            self.consume(blank);
        }
        if self.buffered() == 0 {
            return Step::NeedMore;
        }
        match self.parse_head(cfg) {
            Ok(Some(())) => {
                self.state = State::AwaitBody;
                Step::Head
            }
            Ok(None) => Step::NeedMore,
            Err(e) => {
                // Skip past this line start so seeking finds the next one.
                self.skip(1);
                self.abandon(DropReason::Parse(e), false)
            }
        }
    }

    /// [`State::AwaitBody`], the caller having not chosen the framing (a response whose request
    /// is unknown): decides it once the bytes after the head show whether a body follows (see
    /// [`Parser::start_body`]).
    fn step_await_body(&mut self) -> Progress {
        if self.role == Role::Response && self.buffered() == 0 {
            return Progress::NeedMore;
        }
        match self.start_body(None) {
            Ok(()) => Progress::Again,
            Err(e) => Progress::Malformed(e),
        }
    }

    /// [`State::Length`] with `rest` bytes of the body to come: takes what is buffered of them.
    fn step_length(&mut self, rest: u64, cfg: &HttpConfig) -> Progress {
        let n = self.take_body(rest, cfg);
        if n == 0 {
            return Progress::NeedMore;
        }
        self.state = State::Length(rest - n);
        Progress::Again
    }

    /// [`Chunk::Size`]: parses a chunk-size line; a size of zero is the last chunk, its trailers
    /// follow.
    fn step_chunk_size(&mut self) -> Progress {
        match httparse::parse_chunk_size(&self.buf[self.pos..]) {
            Ok(httparse::Status::Complete((n, size))) => {
                self.consume(n);
                self.state = State::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Progress::Again
            }
            Ok(httparse::Status::Partial) if self.buffered() <= MAX_CHUNK_LINE => {
                Progress::NeedMore
            }
            _ => Progress::Malformed(ParseError::Chunk),
        }
    }

    /// [`Chunk::Data`] with `rest` bytes of the chunk to come: takes what is buffered of them.
    fn step_chunk_data(&mut self, rest: u64, cfg: &HttpConfig) -> Progress {
        let n = self.take_body(rest, cfg);
        if n == 0 {
            return Progress::NeedMore;
        }
        self.state = State::Chunked(if n == rest {
            Chunk::DataEnd
        } else {
            Chunk::Data(rest - n)
        });
        Progress::Again
    }

    /// [`Chunk::DataEnd`]: the line end after a chunk's data (CRLF, or a bare LF).
    fn step_chunk_end(&mut self) -> Progress {
        let avail = &self.buf[self.pos..];
        if avail.starts_with(b"\r\n") {
            self.consume(2);
        } else if avail.starts_with(b"\n") {
            self.consume(1);
        } else if avail.is_empty() || avail == b"\r" {
            return Progress::NeedMore;
        } else {
            return Progress::Malformed(ParseError::Chunk);
        }
        self.state = State::Chunked(Chunk::Size);
        Progress::Again
    }

    /// [`Chunk::Trailers`]: the trailer fields after the last chunk, kept with the headers; the
    /// message is complete after them.
    fn step_trailers(&mut self, cfg: &HttpConfig) -> Step {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let avail = &self.buf[self.pos..];
        match httparse::parse_headers(avail, &mut storage) {
            Ok(httparse::Status::Complete((n, fields))) => {
                if let Some(msg) = &mut self.msg {
                    msg.headers.extend_from_head(fields, &avail[..n]);
                }
                self.consume(n);
                self.finish_message(cfg)
            }
            Ok(httparse::Status::Partial) if self.buffered() <= cfg.max_head_bytes => {
                Step::NeedMore
            }
            Ok(httparse::Status::Partial) => {
                self.abandon(DropReason::Parse(ParseError::HeadTooLarge), true)
            }
            Err(e) => self.abandon(DropReason::Parse(e.into()), true),
        }
    }

    /// [`State::Close`]: every byte is the body's until the stream ends ([`Parser::finish`]).
    fn step_close(&mut self, cfg: &HttpConfig) -> Progress {
        if self.take_body(u64::MAX, cfg) == 0 {
            Progress::NeedMore
        } else {
            Progress::Again
        }
    }

    /// Completes the message recover mode found the end of, marked with how it was found
    /// (`by`); the parser seeks the next message when where it starts is known only roughly.
    fn finish_recovered(&mut self, by: Recovery, cfg: &HttpConfig) -> Step {
        if let Some(msg) = &mut self.msg {
            msg.recovered = Some(by);
        }
        let step = self.finish_message(cfg);
        if by == Recovery::Peer || self.lost_head {
            // Where the next message starts is known only roughly.
            self.state = State::Seek;
        }
        step
    }

    /// One pass of recover mode over the buffered bytes: finds where the damaged message ends, or
    /// where its chunked framing resumes. Candidates are line starts (the first buffered byte
    /// too: where a gap ended is unknown); the earliest decided one wins, and an undecided one
    /// (its line or chunk not all buffered yet) makes the parser wait, bounded by
    /// [`RECOVER_WINDOW`].
    fn recover(&mut self) -> Recovered {
        let avail = self.buffered();
        // Bytes up to the peer's acknowledgement, when it is known, are this message's: the
        // message ends there at the latest.
        let hint = self.end_hint.zip(self.seq).map(|(h, s)| h.diff(s));
        let reached_hint = hint.is_some_and(|h| h <= avail as i64);
        let limit = hint.map_or(avail, |h| h.clamp(0, avail as i64) as usize);
        let (found, last_line_start) = self.recover_scan(limit);
        match found {
            Some((at, candidate)) => self.recover_at(at, candidate),
            None if reached_hint => {
                self.consume(limit);
                self.end_hint = None;
                Recovered::End(Recovery::Peer)
            }
            None => {
                // Keep a last line that may still become a candidate, if it is not too long.
                let keep_from =
                    if avail - last_line_start <= MAX_CHUNK_LINE && last_line_start < limit {
                        last_line_start
                    } else {
                        avail
                    };
                self.consume(keep_from);
                Recovered::Wait
            }
        }
    }

    /// The first candidate among the line starts of the buffered bytes before `limit` (and the
    /// newest segment's start, when a message starts there inside a line), with its offset; and
    /// the offset of the last line start looked at.
    fn recover_scan(&self, limit: usize) -> (Option<(usize, Candidate)>, usize) {
        let want = self.role.start_kind();
        let avail = &self.buf[self.pos..];
        let seg = self.start_at_segment(want).filter(|&m| m < limit);
        let mut at = 0;
        let mut last_line_start = 0;
        while at < limit {
            last_line_start = at;
            let rest = &avail[at..];
            match recover_candidate(rest, want) {
                Candidate::No => {}
                found => return (Some((at, found)), last_line_start),
            }
            let eol = rest.iter().position(|&b| b == b'\n');
            // The newest segment starts a message inside this line.
            if let Some(mark) = seg
                && mark > at
                && eol.is_none_or(|e| mark <= at + e)
            {
                return (Some((mark, Candidate::Start)), last_line_start);
            }
            match eol {
                Some(eol) => at += eol + 1,
                None => break,
            }
        }
        (None, last_line_start)
    }

    /// Acts on the candidate recover mode found `at` bytes into the buffer: the message ends
    /// before or after it, chunked framing resumes after it, or (undecided) the parser waits
    /// with it first in the buffer.
    fn recover_at(&mut self, at: usize, candidate: Candidate) -> Recovered {
        match candidate {
            Candidate::Start => {
                self.consume(at);
                Recovered::End(Recovery::StartLine)
            }
            Candidate::Tail => {
                // The next request began inside the gap: this message ended there. What
                // remains of that request's head is skipped in `State::Seek`.
                self.consume(at);
                self.lost_head = true;
                Recovered::End(Recovery::StartLine)
            }
            Candidate::Last(len) => {
                self.consume(at + len);
                Recovered::End(Recovery::ChunkSize)
            }
            Candidate::Chunk { line, size } => {
                self.consume(at + line);
                self.state = State::Chunked(Chunk::Data(size));
                if let Some(msg) = &mut self.msg {
                    msg.recovered = Some(Recovery::ChunkSize);
                }
                Recovered::Chunk
            }
            Candidate::Undecided | Candidate::No => {
                // Undecided: keep it and what follows.
                self.consume(at);
                Recovered::Wait
            }
        }
    }

    /// `len` bytes of the stream were never seen. Returns the message it completed or cost, if
    /// any, and whether framing between messages was lost (the parser now seeks the next
    /// message start, and messages may have been lost whole inside the gap). A message in
    /// progress keeps going: see the module doc.
    pub fn gap(&mut self, len: u64, cfg: &HttpConfig) -> (Option<Step>, bool) {
        let has_msg = self.msg.is_some();
        if has_msg && self.state == State::AwaitBody && self.buffered() == 0 {
            // A head whose framing waited for the bytes after it: they are lost, so decide
            // now. One without a body (204, 304, Content-Length 0) is complete, and the gap
            // falls between messages.
            if self.start_body(None).is_ok() && self.state == State::Length(0) {
                let step = self.finish_message(cfg);
                self.lose_framing();
                return (Some(step), true);
            }
            self.state = State::AwaitBody;
        }
        match self.state {
            State::Tunnel => (None, false),
            State::Length(rest) if has_msg && self.buffered() == 0 => {
                self.add_missing(len.min(rest));
                self.seq = self.seq.map(|s| s.wrapping_add(len));
                if len < rest {
                    self.state = State::Length(rest - len);
                    return (None, false);
                }
                // The gap reaches the end of the message: it is complete, and if the gap goes on
                // past it, the next message's start was lost in it.
                self.state = State::Length(0);
                let step = self.finish_message(cfg);
                if len > rest {
                    self.lose_framing();
                }
                (Some(step), len > rest)
            }
            State::Chunked(Chunk::Data(rest)) if has_msg && self.buffered() == 0 && len <= rest => {
                self.add_missing(len);
                self.state = State::Chunked(if len == rest {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rest - len)
                });
                self.seq = self.seq.map(|s| s.wrapping_add(len));
                (None, false)
            }
            State::Close if has_msg => {
                self.add_missing(len);
                self.seq = self.seq.map(|s| s.wrapping_add(len));
                (None, false)
            }
            State::Length(_) | State::Chunked(_) | State::Recover | State::AwaitBody if has_msg => {
                // Chunked framing (or a head whose framing was not chosen yet) lost: look for
                // the end of the message. The bytes buffered before the gap cannot be joined to
                // those after it.
                self.add_missing(len);
                self.skip_gap(len);
                self.state = State::Recover;
                (None, false)
            }
            _ => {
                // Between messages or inside a head: a head in progress is lost.
                let had_message = has_msg || (self.state == State::Head && self.buffered() > 0);
                let dropped = self.abandon(DropReason::Gap, has_msg);
                self.lose_framing();
                (had_message.then_some(dropped), true)
            }
        }
    }

    fn add_missing(&mut self, n: u64) {
        if let Some(msg) = &mut self.msg {
            msg.missing = msg.missing.saturating_add(n);
        }
    }

    /// Drops the buffered bytes and steps over `len` unseen ones.
    fn skip_gap(&mut self, len: u64) {
        self.after_gap = true;
        let n = self.buffered();
        self.consume(n);
        self.seq = self.seq.map(|s| s.wrapping_add(len));
        self.buf.clear();
        self.metas.clear();
        self.pos = 0;
    }

    fn lose_framing(&mut self) {
        self.after_gap = true;
        self.state = State::Seek;
        self.buf.clear();
        self.metas.clear();
        self.pos = 0;
        self.seq = None;
    }

    /// The stream ended (FIN) or the connection closed: completes a message delimited by the
    /// close, and hands back a message cut short (`complete` false) so a request can still be
    /// reported.
    pub fn finish(&mut self, cfg: &HttpConfig) -> Option<Step> {
        match self.state {
            State::Close => Some(self.finish_message(cfg)),
            State::Recover => {
                // Nothing more comes: the message ends with the stream.
                self.msg.as_mut()?.recovered = Some(Recovery::End);
                let step = self.finish_message(cfg);
                self.state = State::Seek;
                Some(step)
            }
            State::Length(_) | State::Chunked(_) | State::AwaitBody => {
                let mut msg = self.msg.take()?;
                self.state = State::Seek;
                msg.complete = false;
                decode_body(&mut msg, cfg);
                Some(Step::Complete(msg))
            }
            _ => None,
        }
    }

    fn parse_head(&mut self, cfg: &HttpConfig) -> Result<Option<()>, ParseError> {
        let avail = &self.buf[self.pos..];
        // Left uninitialised: filling 128 empty headers (4 KiB) for every head cost more than
        // parsing it.
        let mut storage = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let config = httparse::ParserConfig::default();
        let parsed = match self.role {
            Role::Request => {
                let mut req = httparse::Request::new(&mut []);
                match config.parse_request_with_uninit_headers(&mut req, avail, &mut storage)? {
                    httparse::Status::Complete(n) => {
                        let start = StartLine::Request {
                            method: req.method.unwrap_or_default().into(),
                            target: req.path.unwrap_or_default().into(),
                        };
                        Some((
                            n,
                            start,
                            req.version.unwrap_or(1),
                            owned_headers(req.headers, &avail[..n]),
                        ))
                    }
                    httparse::Status::Partial => None,
                }
            }
            Role::Response => {
                let mut resp = httparse::Response::new(&mut []);
                match config.parse_response_with_uninit_headers(&mut resp, avail, &mut storage)? {
                    httparse::Status::Complete(n) => {
                        let start = StartLine::Response {
                            status: resp.code.unwrap_or_default(),
                            reason: resp.reason.unwrap_or_default().into(),
                        };
                        Some((
                            n,
                            start,
                            resp.version.unwrap_or(1),
                            owned_headers(resp.headers, &avail[..n]),
                        ))
                    }
                    httparse::Status::Partial => None,
                }
            }
        };
        let Some((n, start, version, headers)) = parsed else {
            return if avail.len() > cfg.max_head_bytes {
                Err(ParseError::HeadTooLarge)
            } else {
                Ok(None)
            };
        };
        let meta = self.meta_at_pos();
        let mut msg = Message::new(start, version, meta.map_or(0, |m| m.ts), self.seq);
        msg.ack = meta.and_then(|m| m.ack);
        msg.headers = headers;
        self.msg = Some(crate::spare::boxed(msg));
        self.after_gap = false;
        self.end_hint = None;
        self.tunnel_after = false;
        self.consume(n);
        Ok(Some(()))
    }

    /// Metadata of the segment holding `buf[pos]`: recorded ones while they last, else the
    /// latest pushed.
    fn meta_at_pos(&mut self) -> Option<DataMeta> {
        while self.metas.get(1).is_some_and(|m| m.0 <= self.pos) {
            self.metas.pop_front();
        }
        match self.metas.front() {
            Some(&(_, m)) => Some(m),
            None => self.meta,
        }
    }

    /// Moves up to `limit` buffered bytes into the body (keeping at most the configured cap).
    fn take_body(&mut self, limit: u64, cfg: &HttpConfig) -> u64 {
        let avail = self.buffered() as u64;
        let n = avail.min(limit) as usize;
        if n == 0 {
            return 0;
        }
        let (pos, buf) = (self.pos, std::mem::take(&mut self.buf));
        self.append_body(&buf[pos..pos + n], cfg);
        self.buf = buf;
        self.consume(n);
        n as u64
    }

    /// Adds bytes to the body of the message in progress, up to the configured cap. After a gap
    /// the body keeps what came before it: bytes after a hole are not the body's continuation.
    fn append_body(&mut self, bytes: &[u8], cfg: &HttpConfig) {
        if let Some(msg) = &mut self.msg
            && msg.missing == 0
        {
            let room = cfg.max_body_bytes.saturating_sub(msg.body.len());
            let keep = bytes.len().min(room);
            if msg.body.capacity() == 0 && keep > 0 {
                msg.body = crate::spare::text();
            }
            msg.body.extend_from_slice(&bytes[..keep]);
            if keep < bytes.len() {
                msg.body_truncated = true;
            }
        }
    }

    fn finish_message(&mut self, cfg: &HttpConfig) -> Step {
        self.state = if self.tunnel_after {
            State::Tunnel
        } else {
            State::Head
        };
        // Between messages a keep-alive connection holds nothing: give the buffer back now
        // rather than at the idle pass, so thousands of open connections stay small.
        self.release();
        self.end_hint = None;
        let Some(mut msg) = self.msg.take() else {
            return Step::NeedMore;
        };
        msg.complete = true;
        decode_body(&mut msg, cfg);
        Step::Complete(msg)
    }

    fn abandon(&mut self, reason: DropReason, had_head: bool) -> Step {
        let ack = self.msg.take().and_then(|m| m.ack);
        self.end_hint = None;
        self.state = State::Seek;
        Step::Dropped {
            had_head,
            ack,
            reason,
        }
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.seq = self.seq.map(|s| s.wrapping_add(n as u64));
    }

    fn skip(&mut self, n: usize) {
        self.skipped_bytes += n as u64;
        self.consume(n);
    }
}

/// What the step of a state that may go on to another did (see [`Parser::step`]).
enum Progress {
    /// The state changed or took bytes: step again.
    Again,
    /// Nothing more to do until more bytes arrive.
    NeedMore,
    /// The message whose head was reported is malformed: it is abandoned.
    Malformed(ParseError),
}

/// What one pass of recover mode found.
enum Recovered {
    /// Nothing decided yet: more bytes are needed.
    Wait,
    /// Chunked framing resumed: a chunk's data follows.
    Chunk,
    /// The damaged message ends here.
    End(Recovery),
}

/// What a line start in recover mode may be.
#[derive(Debug, PartialEq, Eq)]
enum Candidate {
    No,
    /// Not decidable until more bytes arrive.
    Undecided,
    /// The start line of the next message of this direction.
    Start,
    /// A request line of an unregistered method: the tail of the next request's line, whose
    /// start was lost ("ET /x HTTP/1.1").
    Tail,
    /// The last chunk and its trailers, `.0` bytes in all: the message ends after them.
    Last(usize),
    /// A chunk-size line of `line` bytes whose chunk of `size` bytes is followed by another
    /// chunk-size line.
    Chunk {
        line: usize,
        size: u64,
    },
}

/// Judges the line starting at `rest[0]` in recover mode.
fn recover_candidate(rest: &[u8], want: StartKind) -> Candidate {
    match rest.iter().position(|&b| b == b'\n') {
        Some(eol) => {
            let line = rest[..eol].strip_suffix(b"\r").unwrap_or(&rest[..eol]);
            // Recovering follows a gap: a request line must name a registered method (see
            // `Parser::step_seek`).
            if detect::classify_line(line) == Some(want) {
                return if want == StartKind::Response || detect::known_method(line) {
                    Candidate::Start
                } else {
                    Candidate::Tail
                };
            }
        }
        None if rest.len() <= detect::MAX_START_LINE && detect::plausible_start(rest, want) => {
            return Candidate::Undecided;
        }
        None => {}
    }
    let (line, size) = match httparse::parse_chunk_size(rest) {
        Ok(httparse::Status::Complete(found)) => found,
        Ok(httparse::Status::Partial) if rest.len() <= MAX_CHUNK_LINE => {
            return Candidate::Undecided;
        }
        _ => return Candidate::No,
    };
    let after = &rest[line..];
    if size == 0 {
        let mut storage = [httparse::EMPTY_HEADER; 16];
        return match httparse::parse_headers(after, &mut storage) {
            Ok(httparse::Status::Complete((n, _))) => Candidate::Last(line + n),
            Ok(httparse::Status::Partial) if after.len() <= MAX_CHUNK_LINE => Candidate::Undecided,
            _ => Candidate::No,
        };
    }
    if size > RECOVER_WINDOW {
        return Candidate::No;
    }
    // The chunk must end in CRLF followed by another chunk-size line.
    let end = size as usize;
    match after.get(end..end + 2) {
        None => Candidate::Undecided,
        Some(b"\r\n") => match httparse::parse_chunk_size(&after[end + 2..]) {
            Ok(httparse::Status::Complete(_)) => Candidate::Chunk { line, size },
            Ok(httparse::Status::Partial) if after.len() - end - 2 <= MAX_CHUNK_LINE => {
                Candidate::Undecided
            }
            _ => Candidate::No,
        },
        Some(_) => Candidate::No,
    }
}

/// Content-Length, when present: `None` if absent; an error if unparsable or contradictory.
fn content_length(msg: &Message) -> Result<Option<u64>, ParseError> {
    let mut found = None;
    for value in msg.header_values("content-length") {
        for part in value.split(',') {
            let n: u64 = part.trim().parse().map_err(|_| ParseError::ContentLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(ParseError::ContentLength);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// httparse's fields of `head` as headers (see [`Headers::extend_from_head`]).
fn owned_headers(fields: &[httparse::Header<'_>], head: &[u8]) -> Headers {
    let mut h = Headers::default();
    h.extend_from_head(fields, head);
    h
}

/// Replaces the body by its content-decoded form, when a known coding was applied.
pub(crate) fn decode_body(msg: &mut Message, cfg: &HttpConfig) {
    let Some(coding) = msg.header("content-encoding") else {
        return;
    };
    match decode::decode(coding, &msg.body, cfg.max_body_bytes) {
        Decoded::Identity => {}
        Decoded::Done { body, truncated } => {
            msg.body = body;
            msg.body_truncated |= truncated;
            msg.decoded = true;
        }
        Decoded::Failed => msg.decode_failed = true,
    }
}

#[cfg(test)]
mod tests;
