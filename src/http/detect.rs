//! Finding where an HTTP/1.x message starts, from the bytes alone: used to tell the client side of a
//! connection from the server side (request line vs status line), and to resynchronise after a gap
//! or a capture that starts mid-message. Port numbers and packet order play no part.

/// What kind of message starts at a position.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StartKind {
    Request,
    Response,
}

/// Result of scanning for a message start.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Scan {
    /// A complete start line of this kind begins at this offset.
    Found(usize, StartKind),
    /// Nothing yet; a start line may be beginning at this offset but is not complete. Bytes before
    /// it can be dropped.
    Partial(usize),
    /// No start here: every byte can be dropped.
    None,
}

/// Longest start line considered (a request target can be long, but not unbounded).
pub const MAX_START_LINE: usize = 16 * 1024;

/// Scans `buf` for the first line that is a request line (`want` = Some(Request)), a status line
/// (Some(Response)), or either (None). Only line starts are candidates: offset 0 and every byte
/// after a `\n`.
pub fn scan(buf: &[u8], want: Option<StartKind>) -> Scan {
    let mut line_start = 0;
    loop {
        let rest = &buf[line_start..];
        match memchr_nl(rest) {
            Some(eol) => {
                let line = trim_cr(&rest[..eol]);
                if let Some(kind) = classify_line(line)
                    && want.is_none_or(|w| w == kind)
                {
                    return Scan::Found(line_start, kind);
                }
                line_start += eol + 1;
            }
            None => {
                return if rest.len() <= MAX_START_LINE && plausible_prefix(rest, want) {
                    Scan::Partial(line_start)
                } else {
                    Scan::None
                };
            }
        }
    }
}

fn memchr_nl(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A complete line without its line ending.
pub fn classify_line(line: &[u8]) -> Option<StartKind> {
    if is_status_line(line) {
        Some(StartKind::Response)
    } else if is_request_line(line) {
        Some(StartKind::Request)
    } else {
        None
    }
}

/// `HTTP/1.x NNN[ reason]`
fn is_status_line(line: &[u8]) -> bool {
    line.len() >= 12
        && line.starts_with(b"HTTP/1.")
        && matches!(line[7], b'0' | b'1')
        && line[8] == b' '
        && line[9..12].iter().all(u8::is_ascii_digit)
        && (line.len() == 12 || line[12] == b' ')
}

/// `METHOD SP target SP HTTP/1.x`, METHOD an upper-case token of at most 20 characters.
fn is_request_line(line: &[u8]) -> bool {
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let method = &line[..sp];
    if method.is_empty() || method.len() > 20 || !method.iter().all(|&b| is_method_char(b)) {
        return false;
    }
    let Some(version) = line.get(line.len().saturating_sub(9)..) else {
        return false;
    };
    line.len() >= sp + 11
        && version.starts_with(b" HTTP/1.")
        && matches!(version[8], b'0' | b'1')
        && line[sp + 1..line.len() - 9]
            .iter()
            .all(|&b| b > b' ' && b != 0x7f)
}

fn is_method_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// Could `rest` (an unterminated line) still become a start line of the wanted kind?
/// Methods of the IANA HTTP method registry (RFC 9110, WebDAV, DeltaV, CalDAV, PATCH, QUERY),
/// and PRI of the HTTP/2 preface.
const KNOWN_METHODS: [&[u8]; 39] = [
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"QUERY",
    b"PRI",
    b"ACL",
    b"BASELINE-CONTROL",
    b"BIND",
    b"CHECKIN",
    b"CHECKOUT",
    b"COPY",
    b"LABEL",
    b"LINK",
    b"LOCK",
    b"MERGE",
    b"MKACTIVITY",
    b"MKCALENDAR",
    b"MKCOL",
    b"MKREDIRECTREF",
    b"MKWORKSPACE",
    b"MOVE",
    b"ORDERPATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"REBIND",
    b"REPORT",
    b"SEARCH",
    b"UNBIND",
    b"UNCHECKOUT",
    b"UNLINK",
    b"UNLOCK",
    b"UPDATE",
    b"VERSION-CONTROL",
];

/// Does `line` begin with a registered method and a space? Used where a request line may be
/// the tail of one whose start was lost; elsewhere any token is a method.
pub fn known_method(line: &[u8]) -> bool {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    KNOWN_METHODS.contains(&&line[..end])
}

/// Could `rest`, a line not yet complete, become a start line of kind `want`?
pub fn plausible_start(rest: &[u8], want: StartKind) -> bool {
    plausible_prefix(rest, Some(want))
}

fn plausible_prefix(rest: &[u8], want: Option<StartKind>) -> bool {
    if rest.is_empty() {
        return true;
    }
    let response = || {
        let n = rest.len().min(7);
        rest[..n] == b"HTTP/1."[..n]
    };
    let request = || {
        let sp = rest.iter().position(|&b| b == b' ');
        let method = &rest[..sp.unwrap_or(rest.len())];
        !method.is_empty() && method.len() <= 20 && method.iter().all(|&b| is_method_char(b))
    };
    match want {
        Some(StartKind::Response) => response(),
        Some(StartKind::Request) => request(),
        None => response() || request(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_is_found_at_start() {
        assert_eq!(
            scan(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n", None),
            Scan::Found(0, StartKind::Request)
        );
    }

    #[test]
    fn status_line_is_found_after_body_tail() {
        let buf = b"tail of a body}\r\nHTTP/1.1 404 Not Found\r\n";
        assert_eq!(scan(buf, None), Scan::Found(17, StartKind::Response));
        // A status line is not a request line: everything can go.
        assert_eq!(
            scan(buf, Some(StartKind::Request)),
            Scan::Partial(buf.len())
        );
    }

    #[test]
    fn status_line_without_reason_is_accepted() {
        assert_eq!(
            scan(b"HTTP/1.0 200\r\n", None),
            Scan::Found(0, StartKind::Response)
        );
    }

    #[test]
    fn incomplete_line_is_partial_only_when_plausible() {
        assert_eq!(scan(b"xx\nGET /lo", None), Scan::Partial(3));
        assert_eq!(scan(b"xx\nHTTP/1", None), Scan::Partial(3));
        assert_eq!(scan(b"xx\nhello wor", None), Scan::None);
        assert_eq!(scan(b"", None), Scan::Partial(0));
    }

    #[test]
    fn binary_and_lower_case_lines_are_not_starts() {
        for line in [
            &b"get / HTTP/1.1\r\n\x16\x03\x01\n"[..],
            b"GET / HTTP/2.0\r\n",
            b"PRI * HTTP/2.0\r\n",
            b"HTTP/1.1 2000 OK\r\n",
        ] {
            assert_eq!(scan(line, None), Scan::Partial(line.len()), "{line:?}");
        }
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        assert_eq!(
            scan(b"POST /x HTTP/1.0\n", Some(StartKind::Request)),
            Scan::Found(0, StartKind::Request)
        );
    }
}
