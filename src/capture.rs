//! Reading pcap and pcapng files, frame by frame, with timestamps in µs.
//!
//! pcap-file's parsers do the format; the reading is ours: one buffer (256 KiB, grown only for a
//! larger record) that frames are borrowed from. pcap-file's own readers start with a zeroed 8 MB
//! buffer, whose page faults cost a short replay more than all its packet decoding.

use crate::wire::LinkType;
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{Endianness, TsResolution};
use std::io::Read;

/// The buffer's starting size.
const BUFFER: usize = 256 * 1024;
/// The largest record (pcap packet or pcapng block) read; a larger length field is an error, so a
/// damaged file cannot make the reader allocate gigabytes.
const MAX_RECORD: usize = 64 * 1024 * 1024;

/// One frame of a capture.
pub struct Frame<'a> {
    /// `None` when the frame's link type is not one the decoder knows (it is counted, not fatal).
    pub link: Option<LinkType>,
    /// Capture time in µs since the epoch.
    pub ts: u64,
    /// Borrowed from the reader's buffer.
    pub data: std::borrow::Cow<'a, [u8]>,
}

/// A pcap or pcapng file, told apart by its magic number.
pub struct CaptureReader<R: Read> {
    input: Input<R>,
    format: Format,
}

enum Format {
    Pcap(PcapParser, Option<LinkType>),
    PcapNg(PcapNgParser),
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
    #[error("the capture ends inside a record (a truncated file)")]
    Truncated,
    #[error("malformed capture: a record of {0} bytes (more than {MAX_RECORD})")]
    RecordTooLarge(usize),
}

impl CaptureReader<std::fs::File> {
    /// Opens a capture file.
    pub fn open(path: &std::path::Path) -> Result<Self, CaptureError> {
        Self::from_reader(std::fs::File::open(path)?)
    }
}

impl<R: Read> CaptureReader<R> {
    /// Reads a capture from any byte source, telling pcap from pcapng by the magic number.
    pub fn from_reader(reader: R) -> Result<Self, CaptureError> {
        let mut input = Input {
            reader,
            buf: vec![0; BUFFER],
            start: 0,
            end: 0,
        };
        if !input.fill(4)? {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        let magic: [u8; 4] = input.buf[..4].try_into().unwrap_or_default();
        let format = match magic {
            [0x0a, 0x0d, 0x0d, 0x0a] => {
                // A shorter file fails in the parser, with its reason.
                input.fill(12)?;
                let need = block_len(input.available(), Endianness::Big);
                input.fill_record(need)?;
                let (rem, parser) = PcapNgParser::new(input.available())?;
                input.start = input.end - rem.len();
                Format::PcapNg(parser)
            }
            [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0xc3, 0xd4]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d] => {
                input.fill_record(24)?;
                let (rem, parser) = PcapParser::new(input.available())?;
                input.start = input.end - rem.len();
                let link = LinkType::from_pcap(u32::from(parser.header().datalink));
                Format::Pcap(parser, link)
            }
            other => return Err(CaptureError::NotACapture(other)),
        };
        Ok(CaptureReader { input, format })
    }

    /// The next frame, `None` at the end of the file.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, CaptureError>> {
        match self.try_next_frame() {
            Ok(frame) => frame.map(Ok),
            Err(e) => Some(Err(e)),
        }
    }

    fn try_next_frame(&mut self) -> Result<Option<Frame<'_>>, CaptureError> {
        match &mut self.format {
            Format::Pcap(parser, link) => next_pcap(&mut self.input, parser, *link),
            Format::PcapNg(parser) => next_pcapng(&mut self.input, parser),
        }
    }
}

/// The next record of a pcap file.
fn next_pcap<'a, R: Read>(
    input: &'a mut Input<R>,
    parser: &PcapParser,
    link: Option<LinkType>,
) -> Result<Option<Frame<'a>>, CaptureError> {
    // A record: 16 bytes of header, the 4 at offset 8 its captured length.
    if !input.another(16)? {
        return Ok(None);
    }
    let caplen = peek_u32(input.available(), 8, parser.header().endianness).unwrap_or(0);
    input.fill_record(caplen.saturating_add(16))?;
    let Input {
        buf, start, end, ..
    } = input;
    // Raw: pcap-file's checked packet refuses a frame longer on the wire than the snap length,
    // which is every cut frame of `tcpdump -s N`.
    let (rem, packet) = parser.next_raw_packet(&buf[*start..*end])?;
    *start = *end - rem.len();
    let frac_us = match parser.header().ts_resolution {
        TsResolution::MicroSecond => u64::from(packet.ts_frac),
        TsResolution::NanoSecond => u64::from(packet.ts_frac) / 1000,
    };
    Ok(Some(Frame {
        link,
        ts: u64::from(packet.ts_sec) * 1_000_000 + frac_us,
        data: packet.data,
    }))
}

/// The next packet block of a pcapng file. Blocks other than packets (section and interface
/// descriptions, statistics...) are parsed for the parser's state and passed over.
fn next_pcapng<'a, R: Read>(
    input: &'a mut Input<R>,
    parser: &mut PcapNgParser,
) -> Result<Option<Frame<'a>>, CaptureError> {
    loop {
        if !input.another(12)? {
            return Ok(None);
        }
        let endianness = parser.section().endianness;
        let need = block_len(input.available(), endianness);
        input.fill_record(need)?;
        if matches!(peek_u32(input.available(), 0, endianness), Some(2 | 3 | 6)) {
            break;
        }
        let (rem, _) = parser.next_block(input.available())?;
        input.start = input.end - rem.len();
    }
    let Input {
        buf, start, end, ..
    } = input;
    let (rem, block) = parser.next_block(&buf[*start..*end])?;
    *start = *end - rem.len();
    let (interface_id, raw_ts, data) = packet_block(block, parser)?;
    let interface = interface_id.and_then(|i| parser.interfaces().get(i as usize));
    let link = interface.and_then(|i| LinkType::from_pcap(u32::from(i.linktype)));
    // pcap-file reads the raw 64-bit timestamp as nanoseconds; its unit is really the
    // interface's if_tsresol (default microseconds).
    let ticks = raw_ts.unwrap_or(0);
    let per_second = interface.map_or(1_000_000, ticks_per_second);
    let ts =
        u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(per_second)).unwrap_or(u64::MAX);
    Ok(Some(Frame { link, ts, data }))
}

/// A packet block's interface, raw timestamp (in the interface's ticks) and frame.
type PacketBlock<'a> = (Option<u32>, Option<u64>, std::borrow::Cow<'a, [u8]>);

/// What a packet block (enhanced, simple or obsolete) holds.
fn packet_block<'a>(
    block: Block<'a>,
    parser: &PcapNgParser,
) -> Result<PacketBlock<'a>, CaptureError> {
    Ok(match block {
        Block::EnhancedPacket(p) => (
            Some(p.interface_id),
            u64::try_from(p.timestamp.as_nanos()).ok(),
            p.data,
        ),
        // pcap-file hands out the rest of the block, padding included: the data is as long as
        // the original packet or interface 0's snap length (0: none), whichever is less.
        Block::SimplePacket(p) => {
            let snaplen = parser.interfaces().first().map_or(0, |i| i.snaplen);
            let mut len = usize::try_from(p.original_len).unwrap_or(usize::MAX);
            if snaplen != 0 {
                len = len.min(usize::try_from(snaplen).unwrap_or(usize::MAX));
            }
            (Some(0), None, cut(p.data, len))
        }
        // The obsolete packet block: pcap-file reads the timestamp's two 32-bit halves (high
        // first) as one u64 in the section's byte order, which in a little-endian section
        // swaps them.
        Block::Packet(p) => {
            let ticks = match parser.section().endianness {
                Endianness::Little => p.timestamp.rotate_left(32),
                Endianness::Big => p.timestamp,
            };
            (Some(u32::from(p.interface_id)), Some(ticks), p.data)
        }
        // The block type said a packet.
        _ => return Err(pcap_file::PcapError::InvalidField("pcapng block type").into()),
    })
}

/// The first `len` bytes of `data` (all of it when shorter).
fn cut(data: std::borrow::Cow<'_, [u8]>, len: usize) -> std::borrow::Cow<'_, [u8]> {
    match data {
        std::borrow::Cow::Borrowed(d) => std::borrow::Cow::Borrowed(&d[..len.min(d.len())]),
        std::borrow::Cow::Owned(mut d) => {
            d.truncate(len);
            std::borrow::Cow::Owned(d)
        }
    }
}

/// A pcapng block's total length, from its first 12 bytes: in the section's byte order, or for a
/// section header in the order its magic (8 bytes in) shows. At least 12: the parser tells what is
/// wrong with a shorter one.
fn block_len(head: &[u8], section: Endianness) -> usize {
    let endianness = match head {
        [
            0x0a,
            0x0d,
            0x0d,
            0x0a,
            _,
            _,
            _,
            _,
            0x4d,
            0x3c,
            0x2b,
            0x1a,
            ..,
        ] => Endianness::Little,
        [0x0a, 0x0d, 0x0d, 0x0a, ..] => Endianness::Big,
        _ => section,
    };
    peek_u32(head, 4, endianness).unwrap_or(0).max(12)
}

/// The u32 `at` bytes into `bytes`, if they reach that far.
fn peek_u32(bytes: &[u8], at: usize, endianness: Endianness) -> Option<usize> {
    let field: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    let n = match endianness {
        Endianness::Big => u32::from_be_bytes(field),
        Endianness::Little => u32::from_le_bytes(field),
    };
    usize::try_from(n).ok()
}

/// The file's bytes, read into one buffer that records are parsed from in place.
struct Input<R> {
    reader: R,
    buf: Vec<u8>,
    /// The unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl<R: Read> Input<R> {
    fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Whether another record starts: its first `head` bytes available, false at a clean end.
    fn another(&mut self, head: usize) -> Result<bool, CaptureError> {
        if self.fill(head)? {
            Ok(true)
        } else if self.start == self.end {
            Ok(false)
        } else {
            Err(CaptureError::Truncated)
        }
    }

    /// Makes a whole record of `need` bytes available: an error if the file ends first.
    fn fill_record(&mut self, need: usize) -> Result<(), CaptureError> {
        if need > MAX_RECORD {
            return Err(CaptureError::RecordTooLarge(need));
        }
        if self.fill(need)? {
            Ok(())
        } else {
            Err(CaptureError::Truncated)
        }
    }

    /// Makes at least `need` unparsed bytes available, reading as much as the buffer holds;
    /// false when the file ends first.
    fn fill(&mut self, need: usize) -> std::io::Result<bool> {
        if self.end - self.start >= need {
            return Ok(true);
        }
        if self.buf.len() - self.start < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < need {
                self.buf.resize(need.next_power_of_two(), 0);
            }
        }
        while self.end - self.start < need {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
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

    /// A frame as (link, ts, data).
    type Owned = (Option<LinkType>, u64, Vec<u8>);

    /// Every frame of a capture, or the first error.
    fn frames<R: Read>(reader: R) -> Result<Vec<Owned>, CaptureError> {
        let mut reader = CaptureReader::from_reader(reader)?;
        let mut out = Vec::new();
        while let Some(frame) = reader.next_frame() {
            let frame = frame?;
            out.push((frame.link, frame.ts, frame.data.into_owned()));
        }
        Ok(out)
    }

    /// A reader handing out at most a few bytes per read, as a pipe or socket may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1 % 7 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// A pcap file: `snaplen`, then (incl_len, orig_len, data) records, little-endian, µs.
    fn pcap(snaplen: u32, packets: &[(u32, u32, &[u8])]) -> Vec<u8> {
        use pcap_file::pcap::{PcapHeader, PcapWriter, RawPcapPacket};
        let header = PcapHeader {
            snaplen,
            ..PcapHeader::default()
        };
        let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
        for (i, &(incl_len, orig_len, data)) in packets.iter().enumerate() {
            let packet = RawPcapPacket {
                ts_sec: 1_700_000_000 + i as u32,
                ts_frac: 250_000,
                incl_len,
                orig_len,
                data: data.into(),
            };
            w.write_raw_packet(&packet).unwrap();
        }
        w.into_writer()
    }

    #[test]
    fn a_frame_cut_by_the_snap_length_reads() {
        // `tcpdump -s 128`: every long frame is longer on the wire than in the file.
        let data = [7u8; 128];
        let file = pcap(128, &[(128, 1514, &data), (60, 60, &data[..60])]);
        let got = frames(&file[..]).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].2.len(), 128);
        assert_eq!(got[0].1, 1_700_000_000_250_000);
        assert_eq!(got[1].2.len(), 60);
    }

    #[test]
    fn short_reads_and_large_frames_read_alike() {
        // A frame larger than the starting buffer, between two small ones.
        let big = vec![0x5a; BUFFER + 40_000];
        let big_len = big.len() as u32;
        let file = pcap(
            big_len,
            &[(3, 3, b"abc"), (big_len, big_len, &big), (2, 2, b"de")],
        );
        let whole = frames(&file[..]).unwrap();
        assert_eq!(
            whole.iter().map(|f| f.2.len()).collect::<Vec<_>>(),
            [3, big.len(), 2]
        );
        assert_eq!(whole[1].2, big);
        assert_eq!(frames(Trickle(&file, 0)).unwrap(), whole);
        assert_eq!(frames(Trickle(SAMPLE, 0)).unwrap(), frames(SAMPLE).unwrap());
    }

    #[test]
    fn truncated_and_oversized_records_are_error_values() {
        let data = [1u8; 100];
        let file = pcap(65535, &[(100, 100, &data), (100, 100, &data)]);
        // Cut at a record boundary: a clean end. Inside a record: truncated.
        assert_eq!(frames(&file[..file.len() - 116]).unwrap().len(), 1);
        for cut in [1, 50, 110] {
            assert!(
                matches!(
                    frames(&file[..file.len() - cut]),
                    Err(CaptureError::Truncated)
                ),
                "cut {cut}"
            );
        }
        // A length field of nearly 4 GiB is refused before anything is read or allocated.
        let mut huge = file.clone();
        huge[24 + 8..24 + 12].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(matches!(
            frames(&huge[..]),
            Err(CaptureError::RecordTooLarge(_))
        ));
    }

    #[test]
    fn pcapng_interfaces_resolutions_and_other_blocks() {
        use pcap_file::DataLink;
        use pcap_file::pcapng::PcapNgWriter;
        use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
        use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
        use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsBlock;
        use std::time::Duration;
        for endianness in [Endianness::Big, Endianness::Little] {
            let mut w = PcapNgWriter::with_endianness(Vec::new(), endianness).unwrap();
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen: 0,
                options: vec![],
            })
            .unwrap();
            // Nanosecond ticks on the second interface.
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::RAW,
                snaplen: 0,
                options: vec![InterfaceDescriptionOption::IfTsResol(9)],
            })
            .unwrap();
            let packet = |interface_id, ticks: u64, data: &'static [u8]| EnhancedPacketBlock {
                interface_id,
                // pcap-file writes the Duration's nanoseconds as the raw ticks.
                timestamp: Duration::from_nanos(ticks),
                original_len: data.len() as u32,
                data: data.into(),
                options: vec![],
            };
            w.write_pcapng_block(packet(0, 1_700_000_000_000_001, b"first"))
                .unwrap();
            w.write_pcapng_block(InterfaceStatisticsBlock {
                interface_id: 0,
                timestamp: 0,
                options: vec![],
            })
            .unwrap();
            w.write_pcapng_block(packet(1, 1_700_000_000_000_002_000, b"second"))
                .unwrap();
            let file = w.into_inner();
            let want = vec![
                (
                    Some(LinkType::Ethernet),
                    1_700_000_000_000_001,
                    b"first".to_vec(),
                ),
                (
                    Some(LinkType::RawIp),
                    1_700_000_000_000_002,
                    b"second".to_vec(),
                ),
            ];
            assert_eq!(frames(&file[..]).unwrap(), want, "{endianness:?}");
            assert_eq!(frames(Trickle(&file, 0)).unwrap(), want, "{endianness:?}");
        }
    }

    /// A little-endian pcapng block: type, total length, the body padded to 4 bytes, length.
    fn ng_block(ty: u32, body: &[u8]) -> Vec<u8> {
        let padded = body.len().next_multiple_of(4);
        let total = (padded + 12) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&total.to_le_bytes());
        b.extend_from_slice(body);
        b.resize(8 + padded, 0);
        b.extend_from_slice(&total.to_le_bytes());
        b
    }

    /// A little-endian pcapng file: a section header, an Ethernet interface of snap length
    /// `snaplen` (0: none), then `blocks`.
    fn ng_file(snaplen: u32, blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut shb = 0x1a2b_3c4d_u32.to_le_bytes().to_vec();
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        let mut idb = vec![1, 0, 0, 0];
        idb.extend_from_slice(&snaplen.to_le_bytes());
        let mut file = ng_block(0x0a0d_0d0a, &shb);
        file.extend(ng_block(1, &idb));
        for b in blocks {
            file.extend_from_slice(b);
        }
        file
    }

    #[test]
    fn pcapng_simple_packets_end_at_their_length() {
        // The data is as long as the original packet or the snap length, without the padding
        // (fuzz/regressions/capture/simple-packet-*).
        let mut spb = 1u32.to_le_bytes().to_vec();
        spb.push(0xab);
        let got = frames(&ng_file(0, &[ng_block(3, &spb)])[..]).unwrap();
        assert_eq!(got, vec![(Some(LinkType::Ethernet), 0, vec![0xab])]);
        let mut spb = 5u32.to_le_bytes().to_vec();
        spb.extend_from_slice(&[0xcd, 0xef]);
        let got = frames(&ng_file(2, &[ng_block(3, &spb)])[..]).unwrap();
        assert_eq!(got, vec![(Some(LinkType::Ethernet), 0, vec![0xcd, 0xef])]);
    }

    #[test]
    fn pcapng_packet_block_timestamp_is_high_half_first() {
        // The obsolete packet block: interface u16, drops u16, timestamp high and low u32,
        // captured and original length (fuzz/regressions/capture/packet-block-timestamp-le).
        let mut pb = vec![0, 0, 0, 0];
        for w in [1u32, 2, 3, 3] {
            pb.extend_from_slice(&w.to_le_bytes());
        }
        pb.extend_from_slice(b"abc");
        let got = frames(&ng_file(0, &[ng_block(2, &pb)])[..]).unwrap();
        assert_eq!(
            got,
            vec![(Some(LinkType::Ethernet), (1 << 32) + 2, b"abc".to_vec())]
        );
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
