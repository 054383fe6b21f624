//! Arbitrary bytes as a capture file through `capture::CaptureReader` (pcap and pcapng), read
//! twice: from the slice, and through a reader that hands out 1 to 7 bytes per call and
//! `Interrupted` now and then. Besides "no panic": both reads give the same frames and the same
//! outcome; the reader stops (at most one frame per 12 input bytes) and stays at its end; and a
//! model walking the file's records ([`Model`], after the pcap and pcapng specifications) agrees
//! with every frame (its bytes where the record puts them, its link type and its µs timestamp)
//! and with how the reading ended:
//!
//! * a clean end only where the file ends between records;
//! * `Truncated` only where the file ends inside a record;
//! * `RecordTooLarge` only for a record longer than 64 MiB;
//! * `Format` (pcapng only) only where a whole block was there to refuse;
//! * `NotACapture` and `Io` only for a file without a capture's magic number, or of fewer than
//!   4 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirror_receiver::capture::{CaptureError, CaptureReader};
use mirror_receiver::wire::LinkType;
use std::io::Read;

/// The reader's bound on one record (`capture::MAX_RECORD`).
const MAX_RECORD: usize = 64 * 1024 * 1024;

#[derive(Debug, PartialEq, Eq)]
struct Got {
    link: Option<LinkType>,
    ts: u64,
    data: Vec<u8>,
}

/// How a read ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    /// `from_reader` refused the file.
    Open(Kind, String),
    /// `next_frame` returned an error after the frames.
    Frame(Kind, String),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Kind {
    Io,
    NotACapture,
    Format,
    Truncated,
    TooLarge(usize),
}

fn kind(e: &CaptureError) -> Kind {
    match e {
        CaptureError::Io(_) => Kind::Io,
        CaptureError::NotACapture(_) => Kind::NotACapture,
        CaptureError::Format(_) => Kind::Format,
        CaptureError::Truncated => Kind::Truncated,
        CaptureError::RecordTooLarge(n) => Kind::TooLarge(*n),
    }
}

fn read_all<R: Read>(reader: R, len: usize) -> (Vec<Got>, End) {
    let mut reader = match CaptureReader::from_reader(reader) {
        Ok(r) => r,
        Err(e) => return (Vec::new(), End::Open(kind(&e), e.to_string())),
    };
    let mut frames = Vec::new();
    loop {
        match reader.next_frame() {
            Some(Ok(f)) => {
                frames.push(Got {
                    link: f.link,
                    ts: f.ts,
                    data: f.data.into_owned(),
                });
                // Every record takes at least 12 bytes of the file (a pcap record 16).
                assert!(
                    frames.len() <= len / 12,
                    "{} frames from {len} bytes: the reader does not stop",
                    frames.len()
                );
            }
            Some(Err(e)) => {
                let end = End::Frame(kind(&e), e.to_string());
                // Callers stop at an error; asking again must not panic either.
                let _ = reader.next_frame().map(|r| r.map(|f| f.data.len()));
                return (frames, end);
            }
            None => {
                assert!(reader.next_frame().is_none(), "a frame after the end");
                return (frames, End::Clean);
            }
        }
    }
}

/// 1 to 7 bytes per read, and `Interrupted` every fifth call.
struct Trickle<'a> {
    rest: &'a [u8],
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls % 5 == 0 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = (self.calls % 7 + 1).min(buf.len()).min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

fn u16_at(b: &[u8], at: usize, le: bool) -> u16 {
    let w = [b[at], b[at + 1]];
    if le {
        u16::from_le_bytes(w)
    } else {
        u16::from_be_bytes(w)
    }
}

fn u32_at(b: &[u8], at: usize, le: bool) -> u32 {
    let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if le {
        u32::from_le_bytes(w)
    } else {
        u32::from_be_bytes(w)
    }
}

/// A pcapng interface: link type, timestamp ticks per second (`if_tsresol`), snap length.
struct Interface {
    link: u16,
    per_second: u64,
    snaplen: u32,
}

enum Format {
    Pcap {
        le: bool,
        nanos: bool,
        link: Option<LinkType>,
    },
    PcapNg {
        le: bool,
        interfaces: Vec<Interface>,
    },
}

/// The model's next step.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Frame {
        link: Option<LinkType>,
        ts: u64,
        data: &'a [u8],
    },
    /// The file ends between records.
    End,
    /// The file ends inside a record.
    Cut,
    TooLarge(usize),
    /// A whole block the parser must refuse.
    Malformed,
}

/// Walks the file's records as the specifications lay them out.
struct Model<'a> {
    file: &'a [u8],
    off: usize,
    format: Format,
    /// Whole pcapng blocks walked in this step (a parser may refuse any of them).
    walked: usize,
}

impl<'a> Model<'a> {
    /// The model after the file header, or the step that ends the file at its header.
    fn open(file: &'a [u8]) -> Result<Model<'a>, (Kind, usize)> {
        if file.len() < 4 {
            return Err((Kind::Io, 0));
        }
        let magic: [u8; 4] = file[..4].try_into().unwrap();
        let (le, nanos) = match magic {
            [0x0a, 0x0d, 0x0d, 0x0a] => {
                if file.len() < 12 {
                    // Too short to show its byte order: the length field is taken big-endian.
                    let need = if file.len() >= 8 {
                        (u32_at(file, 4, false) as usize).max(12)
                    } else {
                        12
                    };
                    let kind = if need > MAX_RECORD {
                        Kind::TooLarge(need)
                    } else {
                        Kind::Truncated
                    };
                    return Err((kind, 0));
                }
                let mut m = Model {
                    file,
                    off: 0,
                    format: Format::PcapNg {
                        le: false,
                        interfaces: Vec::new(),
                    },
                    walked: 0,
                };
                return match m.block() {
                    Ok((0x0a0d_0d0a, _)) => {
                        m.walked = 0;
                        Ok(m)
                    }
                    Ok(_) => unreachable!("the first block is a section header"),
                    Err(Step::Cut) => Err((Kind::Truncated, 0)),
                    Err(Step::TooLarge(n)) => Err((Kind::TooLarge(n), 0)),
                    Err(_) => Err((Kind::Format, 1)),
                };
            }
            [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
            [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
            [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
            [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
            _ => return Err((Kind::NotACapture, 0)),
        };
        if file.len() < 24 {
            return Err((Kind::Truncated, 0));
        }
        let link = LinkType::from_pcap(u32_at(file, 20, le));
        Ok(Model {
            file,
            off: 24,
            format: Format::Pcap { le, nanos, link },
            walked: 0,
        })
    }

    fn next(&mut self) -> Step<'a> {
        self.walked = 0;
        let rest = self.file.len() - self.off;
        match self.format {
            Format::Pcap { le, nanos, link } => {
                if rest == 0 {
                    return Step::End;
                }
                if rest < 16 {
                    return Step::Cut;
                }
                let rec = &self.file[self.off..];
                let caplen = u32_at(rec, 8, le) as usize;
                let need = caplen + 16;
                if need > MAX_RECORD {
                    return Step::TooLarge(need);
                }
                if rest < need {
                    return Step::Cut;
                }
                let frac = u64::from(u32_at(rec, 4, le));
                let ts = u64::from(u32_at(rec, 0, le)) * 1_000_000
                    + if nanos { frac / 1000 } else { frac };
                self.off += need;
                Step::Frame {
                    link,
                    ts,
                    data: &rec[16..need],
                }
            }
            Format::PcapNg { .. } => loop {
                let (ty, block) = match self.block() {
                    Ok(b) => b,
                    Err(step) => return step,
                };
                if let Some(step) = self.packet(ty, block) {
                    return step;
                }
            },
        }
    }

    /// The next whole pcapng block (type, bytes), checked as the parser checks every block;
    /// section headers and interface descriptions are taken in.
    fn block(&mut self) -> Result<(u32, &'a [u8]), Step<'a>> {
        let Format::PcapNg { le, .. } = self.format else {
            unreachable!()
        };
        let file = self.file;
        let rest = file.len() - self.off;
        if rest == 0 {
            return Err(Step::End);
        }
        if rest < 12 {
            return Err(Step::Cut);
        }
        let head = &file[self.off..];
        let shb = head[..4] == [0x0a, 0x0d, 0x0d, 0x0a];
        // A section header's byte order is its own, told by its magic 8 bytes in.
        let le = if shb {
            head[8..12] == [0x4d, 0x3c, 0x2b, 0x1a]
        } else {
            le
        };
        let total = u32_at(head, 4, le) as usize;
        let need = total.max(12);
        if need > MAX_RECORD {
            return Err(Step::TooLarge(need));
        }
        if rest < need {
            return Err(Step::Cut);
        }
        let block = &head[..need];
        self.off += need;
        self.walked += 1;
        if total % 4 != 0 || total < 12 || u32_at(block, need - 4, le) as usize != total {
            return Err(Step::Malformed);
        }
        let ty = u32_at(block, 0, le);
        let body = &block[8..need - 4];
        match ty {
            0x0a0d_0d0a => {
                if !matches!(
                    body[..4],
                    [0x1a, 0x2b, 0x3c, 0x4d] | [0x4d, 0x3c, 0x2b, 0x1a]
                ) {
                    return Err(Step::Malformed);
                }
                self.format = Format::PcapNg {
                    le,
                    interfaces: Vec::new(),
                };
            }
            1 => {
                let interface = interface(body, le).ok_or(Step::Malformed)?;
                if let Format::PcapNg { interfaces, .. } = &mut self.format {
                    interfaces.push(interface);
                }
            }
            _ => {}
        }
        Ok((ty, block))
    }

    /// A packet block's frame; `None` for the other blocks.
    fn packet(&self, ty: u32, block: &'a [u8]) -> Option<Step<'a>> {
        let Format::PcapNg { le, interfaces } = &self.format else {
            unreachable!()
        };
        let le = *le;
        let body = &block[8..block.len() - 4];
        let (id, ticks, data) = match ty {
            // Enhanced packet: interface u32; packet: interface u16, drops u16; both then the
            // timestamp's high and low 32 bits, captured and original length, the data.
            2 | 6 => {
                if body.len() < 20 {
                    return Some(Step::Malformed);
                }
                let id = if ty == 6 {
                    u32_at(body, 0, le)
                } else {
                    u32::from(u16_at(body, 0, le))
                };
                let ticks = u64::from(u32_at(body, 4, le)) << 32 | u64::from(u32_at(body, 8, le));
                let caplen = u32_at(body, 12, le) as usize;
                if body.len() - 20 < caplen.next_multiple_of(4) {
                    return Some(Step::Malformed);
                }
                (id, ticks, &body[20..20 + caplen])
            }
            // Simple packet: original length, then the data, as long as the original or the
            // snap length of interface 0 (0: none), whichever is less; then padding.
            3 => {
                if body.len() < 4 {
                    return Some(Step::Malformed);
                }
                let mut len = (u32_at(body, 0, le) as usize).min(body.len() - 4);
                if let Some(i) = interfaces.first().filter(|i| i.snaplen != 0) {
                    len = len.min(i.snaplen as usize);
                }
                (0, 0, &body[4..4 + len])
            }
            _ => return None,
        };
        let interface = interfaces.get(id as usize);
        let link = interface.and_then(|i| LinkType::from_pcap(u32::from(i.link)));
        let per_second = interface.map_or(1_000_000, |i| i.per_second);
        let ts = u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(per_second))
            .unwrap_or(u64::MAX);
        Some(Step::Frame { link, ts, data })
    }
}

/// An interface description block's body, as the parser takes it (`None`: refused).
fn interface(body: &[u8], le: bool) -> Option<Interface> {
    if body.len() < 8 || u16_at(body, 2, le) != 0 {
        return None;
    }
    let mut per_second = None;
    let mut opts = &body[8..];
    // Options: code u16, length u16, value padded to 4 bytes; code 0 ends them. A list that
    // does not end with code 0 is refused.
    while !opts.is_empty() {
        if opts.len() < 4 {
            return None;
        }
        let code = u16_at(opts, 0, le);
        let len = usize::from(u16_at(opts, 2, le));
        if code == 0 {
            break;
        }
        let padded = len.next_multiple_of(4);
        if opts.len() - 4 < padded {
            return None;
        }
        if code == 9 {
            if len != 1 {
                return None;
            }
            let r = opts[4];
            let exp = u32::from(r & 0x7f);
            let base: u64 = if r & 0x80 == 0 { 10 } else { 2 };
            per_second.get_or_insert(base.checked_pow(exp).unwrap_or(1_000_000).max(1));
        }
        opts = &opts[4 + padded..];
        if opts.is_empty() {
            return None;
        }
    }
    Some(Interface {
        link: u16_at(body, 0, le),
        per_second: per_second.unwrap_or(1_000_000),
        snaplen: u32_at(body, 4, le),
    })
}

/// The reader's frames and end against the model's walk of the file.
fn check_model(file: &[u8], frames: &[Got], end: &End) {
    let mut model = match Model::open(file) {
        Ok(m) => m,
        Err((want, walked)) => {
            let End::Open(got, msg) = end else {
                panic!("the file opens; the model expects {want:?} ({end:?})");
            };
            assert!(
                *got == want || (*got == Kind::Format && walked > 0),
                "opening: {got:?} ({msg}), the model expects {want:?}"
            );
            return;
        }
    };
    if let End::Open(got, msg) = end {
        // A section header the parser refused (its version, length or options).
        assert!(
            *got == Kind::Format && matches!(model.format, Format::PcapNg { .. }),
            "opening: {got:?} ({msg}), the model reads on"
        );
        return;
    }
    let pcapng = matches!(model.format, Format::PcapNg { .. });
    for (i, f) in frames.iter().enumerate() {
        match model.next() {
            Step::Frame { link, ts, data } => {
                assert_eq!(f.data, data, "frame {i}: bytes");
                assert_eq!(f.link, link, "frame {i}: link type");
                assert_eq!(f.ts, ts, "frame {i}: timestamp");
            }
            other => panic!("frame {i} read, the model has {other:?}"),
        }
    }
    let step = model.next();
    let refusable = pcapng && model.walked > 0;
    match end {
        End::Clean => assert_eq!(step, Step::End, "a clean end"),
        End::Frame(Kind::Format, msg) => assert!(
            refusable,
            "Format error ({msg}) with no whole block to refuse: the model has {step:?}"
        ),
        End::Frame(got, msg) => {
            let want = match step {
                Step::Cut => Kind::Truncated,
                Step::TooLarge(n) => Kind::TooLarge(n),
                Step::Malformed | Step::Frame { .. } | Step::End => {
                    panic!("{got:?} ({msg}) after the frames: the model has {step:?}")
                }
            };
            assert_eq!(*got, want, "{msg}");
        }
        End::Open(..) => unreachable!(),
    }
    if let Step::Malformed = step {
        assert!(
            matches!(end, End::Frame(Kind::Format, _)),
            "a malformed block read: {end:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (frames, end) = read_all(data, data.len());
    let trickled = read_all(
        Trickle {
            rest: data,
            calls: 0,
        },
        data.len(),
    );
    assert_eq!(
        (&frames, &end),
        (&trickled.0, &trickled.1),
        "short reads differ"
    );
    check_model(data, &frames, &end);
});
