//! gRPC bodies as Akto's consumer reads them: `HttpRequestResponseUtils.convertGRPCEncodedToJson`
//! takes the payload as the base64 of the length-prefixed messages (a compressed-flag byte, a
//! 4-byte big-endian length, the message) and decodes the protobuf in them. Messages compressed
//! with the call's `grpc-encoding` (gzip, deflate, zstd) are decompressed first, their flag
//! cleared and their length rewritten, so what Akto decodes is the message that was sent.

use base64::Engine;

/// `application/grpc`, `application/grpc+proto`, `application/grpc+json`, ... (RFC-style
/// parameters after `;` allowed).
pub fn is_grpc(content_type: &str) -> bool {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    ct == "application/grpc" || ct.starts_with("application/grpc+")
}

/// What becomes of a gRPC body.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload {
    /// Base64 (standard alphabet, padded) of the messages.
    pub base64: String,
    /// Messages sent compressed.
    pub compressed: u64,
    /// Of those, messages whose compression could not be undone (kept as sent, flag set).
    pub failed: u64,
}

/// The payload of a gRPC `body` whose call declared `encoding` (`grpc-encoding`), each message
/// decompressed to at most `limit` bytes. Bytes after the last whole message (a body cut at
/// the cap or by a gap) are kept as they are.
pub fn payload(body: &[u8], encoding: Option<&str>, limit: usize) -> Payload {
    let mut out = Vec::with_capacity(body.len());
    let (mut compressed, mut failed) = (0, 0);
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(message) = rest.get(5..5 + len) else {
            break;
        };
        let inflated = if rest[0] & 1 == 1 {
            compressed += 1;
            let coding = encoding.unwrap_or("identity");
            match crate::http::decode::decode(coding, message, limit) {
                crate::http::decode::Decoded::Done { body, .. } => Some(body),
                _ => {
                    failed += 1;
                    None
                }
            }
        } else {
            None
        };
        match inflated.and_then(|m| u32::try_from(m.len()).ok().map(|n| (m, n))) {
            Some((m, n)) => {
                out.push(0);
                out.extend_from_slice(&n.to_be_bytes());
                out.extend_from_slice(&m);
            }
            None => out.extend_from_slice(&rest[..5 + len]),
        }
        rest = &rest[5 + len..];
    }
    out.extend_from_slice(rest);
    Payload {
        base64: base64::engine::general_purpose::STANDARD.encode(&out),
        compressed,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn framed(flag: u8, m: &[u8]) -> Vec<u8> {
        let mut f = vec![flag];
        f.extend_from_slice(&(m.len() as u32).to_be_bytes());
        f.extend_from_slice(m);
        f
    }

    fn b64(d: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(d).unwrap()
    }

    #[test]
    fn content_types() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc; charset=x",
        ] {
            assert!(is_grpc(ct), "{ct}");
        }
        for ct in ["application/grpc-web", "application/json", ""] {
            assert!(!is_grpc(ct), "{ct}");
        }
    }

    #[test]
    fn messages_are_base64_with_compressed_ones_inflated() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"\x0a\x05hello").unwrap();
        let gz = gz.finish().unwrap();
        let mut body = framed(0, b"\x08\x01");
        body.extend(framed(1, &gz));
        body.extend_from_slice(&[0, 0, 0]); // a cut-off prefix
        let p = payload(&body, Some("gzip"), 1 << 20);
        let mut want = framed(0, b"\x08\x01");
        want.extend(framed(0, b"\x0a\x05hello"));
        want.extend_from_slice(&[0, 0, 0]);
        assert_eq!(b64(p.base64.as_bytes()), want);
        assert_eq!((p.compressed, p.failed), (1, 0));
        // Compressed, but the call declared no encoding: kept as sent, counted.
        let p = payload(&framed(1, &gz), None, 1 << 20);
        assert_eq!(b64(p.base64.as_bytes()), framed(1, &gz));
        assert_eq!((p.compressed, p.failed), (1, 1));
        assert_eq!(payload(&[], None, 10).base64, "");
    }
}
