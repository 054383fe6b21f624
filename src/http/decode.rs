//! Content-Encoding decoding (gzip, deflate in both its zlib-wrapped and raw forms, br, zstd), bounded in
//! output size so a small compressed body cannot expand without limit.

use std::io::Read;

/// Result of decoding a body.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// No known coding was applied (identity, or none declared).
    Identity,
    /// Decoded; `truncated` when the output hit the limit or the input ended early.
    Done { body: Vec<u8>, truncated: bool },
    /// The declared coding is unknown or the data is not in it; the body is left as it was.
    Failed,
}

/// Decodes `body` by the codings listed in a Content-Encoding value, last applied first.
pub fn decode(content_encoding: &str, body: &[u8], limit: usize) -> Decoded {
    let codings: Vec<&str> = content_encoding
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .collect();
    if codings.is_empty() || body.is_empty() {
        return Decoded::Identity;
    }
    let mut current = body.to_vec();
    let mut truncated = false;
    for coding in codings.iter().rev() {
        match decode_one(coding, &current, limit) {
            Some((out, cut)) => {
                truncated |= cut;
                current = out;
            }
            None => return Decoded::Failed,
        }
    }
    Decoded::Done {
        body: current,
        truncated,
    }
}

fn decode_one(coding: &str, input: &[u8], limit: usize) -> Option<(Vec<u8>, bool)> {
    let coding = coding.to_ascii_lowercase();
    match coding.as_str() {
        "gzip" | "x-gzip" => read_bounded(flate2::read::MultiGzDecoder::new(input), limit),
        "deflate" => {
            // RFC 9110 says zlib-wrapped, but some servers send raw deflate: the zlib header's
            // check bits tell them apart.
            let zlib = input.len() >= 2
                && input[0] & 0x0f == 8
                && (u16::from(input[0]) << 8 | u16::from(input[1])) % 31 == 0;
            if zlib {
                read_bounded(flate2::read::ZlibDecoder::new(input), limit)
            } else {
                read_bounded(flate2::read::DeflateDecoder::new(input), limit)
            }
        }
        "br" => read_bounded(brotli::Decompressor::new(input, 4096), limit),
        // RFC 8878; the decoder's window is bounded by its default (8 MiB), the output by `limit`.
        "zstd" => read_bounded(zstd::stream::read::Decoder::new(input).ok()?, limit),
        _ => None,
    }
}

/// Reads at most `limit` bytes. An error after some output keeps that output (a body cut short by
/// the body cap or a capture gap still yields its beginning); an error before any output fails.
fn read_bounded(reader: impl Read, limit: usize) -> Option<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut limited = reader.take(limit as u64 + 1);
    match limited.read_to_end(&mut out) {
        Ok(_) => {
            let over = out.len() > limit;
            out.truncate(limit);
            Some((out, over))
        }
        Err(_) if !out.is_empty() => {
            out.truncate(limit);
            Some((out, true))
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_is_decoded() {
        let body = gzip(b"{\"ok\":true}");
        assert_eq!(
            decode("gzip", &body, 1000),
            Decoded::Done {
                body: b"{\"ok\":true}".to_vec(),
                truncated: false
            }
        );
    }

    #[test]
    fn zstd_is_decoded_and_bounded() {
        let text = b"zstd, as current browsers and CDNs send it. ".repeat(100);
        let body = zstd::encode_all(&text[..], 3).unwrap();
        assert!(body.len() < text.len() / 10);
        assert_eq!(
            decode("zstd", &body, 1 << 20),
            Decoded::Done {
                body: text.clone(),
                truncated: false
            }
        );
        // A body that expands past the cap is cut there, marked truncated.
        assert_eq!(
            decode("zstd", &body, 100),
            Decoded::Done {
                body: text[..100].to_vec(),
                truncated: true
            }
        );
        // Cut short (a capture gap): the blocks decoded before the cut are kept. (zstd's blocks
        // are up to 128 KiB: a body of several, of words that do not repeat.)
        let mut x = 0x9e37_79b9_u32;
        let words: Vec<u8> = (0..400_000)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 7 == 6 {
                    b' '
                } else {
                    b'a' + (x % 26) as u8
                }
            })
            .collect();
        let packed = zstd::encode_all(&words[..], 3).unwrap();
        match decode("zstd", &packed[..packed.len() / 2], 1 << 20) {
            Decoded::Done { body, truncated } => {
                assert!(
                    !body.is_empty() && body.len() < words.len(),
                    "{}",
                    body.len()
                );
                assert!(words.starts_with(&body));
                assert!(!truncated || body.len() < words.len());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decode("zstd", b"not zstd at all", 100), Decoded::Failed);
    }

    #[test]
    fn deflate_zlib_and_raw_are_both_decoded() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"hello zlib").unwrap();
        let zlib = z.finish().unwrap();
        let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        r.write_all(b"hello raw").unwrap();
        let raw = r.finish().unwrap();
        assert_eq!(
            decode("deflate", &zlib, 100),
            Decoded::Done {
                body: b"hello zlib".to_vec(),
                truncated: false
            }
        );
        assert_eq!(
            decode("Deflate", &raw, 100),
            Decoded::Done {
                body: b"hello raw".to_vec(),
                truncated: false
            }
        );
    }

    #[test]
    fn brotli_is_decoded() {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(b"brotli body").unwrap();
        }
        assert_eq!(
            decode("br", &out, 100),
            Decoded::Done {
                body: b"brotli body".to_vec(),
                truncated: false
            }
        );
    }

    #[test]
    fn decoded_size_is_bounded() {
        let body = gzip(&vec![b'a'; 100_000]);
        match decode("gzip", &body, 1000) {
            Decoded::Done { body, truncated } => {
                assert_eq!(body.len(), 1000);
                assert!(truncated);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cut_gzip_keeps_its_beginning() {
        let data: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let body = gzip(&data);
        match decode("gzip", &body[..body.len() / 2], 1 << 20) {
            Decoded::Done { body, truncated } => {
                assert!(truncated);
                assert!(!body.is_empty());
                assert_eq!(&body[..], &data[..body.len()]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_and_unknown_codings_fail_without_panic() {
        assert_eq!(decode("gzip", b"not gzip at all", 100), Decoded::Failed);
        assert_eq!(decode("compress", b"abc", 100), Decoded::Failed);
        assert_eq!(decode("identity", b"abc", 100), Decoded::Identity);
        assert_eq!(decode("", b"abc", 100), Decoded::Identity);
    }

    #[test]
    fn stacked_codings_are_undone_in_reverse() {
        let once = gzip(b"twice");
        let twice = gzip(&once);
        assert_eq!(
            decode("gzip, gzip", &twice, 100),
            Decoded::Done {
                body: b"twice".to_vec(),
                truncated: false
            }
        );
    }
}
