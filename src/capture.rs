//! Reading pcap and pcapng files (pcap-file), frame by frame, with timestamps in µs.

use crate::wire::LinkType;
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use std::io::Read;

/// One frame of a capture.
pub struct Frame<'a> {
    /// `None` when the frame's link type is not one the decoder knows (it is counted, not fatal).
    pub link: Option<LinkType>,
    /// Capture time in µs since the epoch.
    pub ts: u64,
    /// Borrowed from the reader's buffer where the format allows (pcap), owned otherwise.
    pub data: std::borrow::Cow<'a, [u8]>,
}

/// A pcap or pcapng file, told apart by its magic number.
pub enum CaptureReader<R: Read> {
    Pcap(PcapReader<R>, Option<LinkType>),
    PcapNg(PcapNgReader<R>),
}

/// Errors reading a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot read the capture: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a pcap or pcapng file (magic {0:02x?})")]
    NotACapture([u8; 4]),
    #[error("malformed capture: {0}")]
    Format(#[from] pcap_file::PcapError),
}

impl CaptureReader<std::io::Chain<std::io::Cursor<[u8; 4]>, std::fs::File>> {
    /// Opens a capture file.
    pub fn open(path: &std::path::Path) -> Result<Self, CaptureError> {
        Self::from_reader(std::fs::File::open(path)?)
    }
}

impl<R: Read> CaptureReader<std::io::Chain<std::io::Cursor<[u8; 4]>, R>> {
    /// Reads a capture from any byte source, telling pcap from pcapng by the magic number.
    pub fn from_reader(mut reader: R) -> Result<Self, CaptureError> {
        let mut magic = [0u8; 4];
        reader.read_exact(&mut magic)?;
        let reader = std::io::Cursor::new(magic).chain(reader);
        match magic {
            [0x0a, 0x0d, 0x0d, 0x0a] => Ok(CaptureReader::PcapNg(PcapNgReader::new(reader)?)),
            [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0xc3, 0xd4]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d] => {
                let pcap = PcapReader::new(reader)?;
                let link = LinkType::from_pcap(u32::from(pcap.header().datalink));
                Ok(CaptureReader::Pcap(pcap, link))
            }
            other => Err(CaptureError::NotACapture(other)),
        }
    }
}

impl<R: Read> CaptureReader<R> {
    /// The next frame, `None` at the end of the file.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, CaptureError>> {
        match self {
            CaptureReader::Pcap(reader, link) => {
                let packet = match reader.next_packet()? {
                    Ok(p) => p,
                    Err(e) => return Some(Err(e.into())),
                };
                Some(Ok(Frame {
                    link: *link,
                    ts: u64::try_from(packet.timestamp.as_micros()).unwrap_or(u64::MAX),
                    data: packet.data,
                }))
            }
            CaptureReader::PcapNg(reader) => loop {
                let block = match reader.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e.into())),
                };
                let (interface_id, raw_ts, data) = match block {
                    Block::EnhancedPacket(p) => (
                        Some(p.interface_id),
                        u64::try_from(p.timestamp.as_nanos()).ok(),
                        p.data.into_owned(),
                    ),
                    Block::SimplePacket(p) => (Some(0), None, p.data.into_owned()),
                    Block::Packet(p) => (
                        Some(u32::from(p.interface_id)),
                        Some(p.timestamp),
                        p.data.into_owned(),
                    ),
                    _ => continue,
                };
                let interface = interface_id.and_then(|i| reader.interfaces().get(i as usize));
                let link = interface.and_then(|i| LinkType::from_pcap(u32::from(i.linktype)));
                // pcap-file reads the raw 64-bit timestamp as nanoseconds; its unit is really
                // the interface's if_tsresol (default microseconds).
                let ticks = raw_ts.unwrap_or(0);
                let per_second = interface.map_or(1_000_000, ticks_per_second);
                let ts = u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(per_second))
                    .unwrap_or(u64::MAX);
                return Some(Ok(Frame {
                    link,
                    ts,
                    data: data.into(),
                }));
            },
        }
    }
}

fn ticks_per_second(
    interface: &pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock<'_>,
) -> u64 {
    for option in &interface.options {
        if let InterfaceDescriptionOption::IfTsResol(r) = option {
            let exp = u32::from(r & 0x7f);
            let per_second = if r & 0x80 == 0 {
                10u64.checked_pow(exp)
            } else {
                2u64.checked_pow(exp)
            };
            return per_second.unwrap_or(1_000_000).max(1);
        }
    }
    1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &[u8] = include_bytes!("../samples/sample.vxlan.pcap");

    fn read_all(bytes: &[u8]) -> Result<usize, CaptureError> {
        let mut reader = CaptureReader::from_reader(bytes)?;
        let mut n = 0;
        while let Some(frame) = reader.next_frame() {
            frame?;
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn the_sample_reads_with_microsecond_timestamps() {
        let mut reader = CaptureReader::from_reader(SAMPLE).unwrap();
        let first = reader.next_frame().unwrap().unwrap();
        assert_eq!(first.link, Some(LinkType::Ethernet));
        assert_eq!(first.ts, 1_763_900_000_000_000);
        assert_eq!(read_all(SAMPLE).unwrap(), 20);
    }

    #[test]
    fn not_a_capture_is_an_error_value() {
        assert!(matches!(
            CaptureReader::from_reader(&b"hello world"[..]),
            Err(CaptureError::NotACapture(_))
        ));
        assert!(matches!(
            CaptureReader::from_reader(&b"ab"[..]),
            Err(CaptureError::Io(_))
        ));
    }

    proptest! {
        /// A damaged capture file is an error, never a panic.
        #[test]
        fn damaged_captures_never_panic(
            cut in 0usize..SAMPLE.len(),
            flips in proptest::collection::vec((0usize..SAMPLE.len(), any::<u8>()), 0..8),
        ) {
            let mut data = SAMPLE.to_vec();
            for (i, b) in flips {
                data[i] = b;
            }
            data.truncate(cut.max(4));
            let _ = read_all(&data);
        }
    }
}
