//! A crash-safe, append-only spool on disk for records Kafka cannot take right now.
//!
//! # Files
//!
//! Everything lives in one directory (`SpoolConfig::dir`), used by one process at a time (an
//! exclusive `flock` on the file `lock`; a second [`Spool::open`] fails with `WouldBlock`):
//!
//! * `spool-<segment number, 20 digits>.log`: segments, in increasing number. Records are appended
//!   to the newest (the *active*) segment only; a segment is never rewritten, only truncated on open
//!   (a torn tail) and deleted whole once every record in it was acknowledged. Each record is one
//!   frame:
//!
//!   ```text
//!   u32 LE  length of the rest of the frame: 12 + payload length
//!   u32 LE  CRC-32 (crc32fast, IEEE) of the key's 8 bytes followed by the payload
//!   u64 LE  key
//!   ...     payload
//!   ```
//!
//!   A record's position, [`SpoolPos`], is its segment number and the offset where its frame
//!   starts. The next frame starts right after it. A frame larger than `segment_bytes` is refused
//!   ([`SpoolError::TooLarge`]); a frame that would take a non-empty segment past `segment_bytes`
//!   goes to a new segment.
//! * `cursor`: the position of the first frame that is not acknowledged, as of the cursor's last
//!   write: `u64 LE segment | u64 LE offset | u32 LE CRC-32 of those 16 bytes`. It is replaced
//!   atomically (write `cursor.tmp`, rename). Everything before it was acknowledged.
//! * `acks.log`: acknowledgements the cursor does not cover yet (Kafka acknowledges out of order),
//!   one 20-byte entry per [`Spool::ack`] in the cursor's layout, written to the OS before `ack`
//!   returns. When the cursor is written, entries before it are dead; the log is compacted
//!   (truncated, or rewritten through `acks.log.tmp` and a rename) when dead entries dominate.
//!
//! The cursor is written when it moves into a later segment (then the segments before it are
//! deleted), when the acknowledgement log needs compacting, on [`Spool::flush`] and on drop; the
//! acknowledgement log makes every acknowledgement durable in between.
//!
//! # Recovery on open
//!
//! Segments are scanned frame by frame from the cursor (headers only: the payloads are skipped, so
//! opening costs a read of the headers, not of the data), and acknowledgement-log entries that
//! name a frame found by the scan mark that record acknowledged. In the newest segment:
//!
//! * a torn tail (a length field cut short, a frame running past the end of the file, or a bad
//!   checksum in the file's last frame) is what a crash in the middle of a write leaves: it is
//!   truncated away and counted in [`SpoolStats::torn_bytes`];
//! * an impossible length (below 12, or above `segment_bytes + 12`) makes the rest of the file
//!   unreadable: it is truncated too, counted in `corrupt_frames` (one) and `torn_bytes` (the bytes),
//!   so records appended after the open land where they can be read.
//!
//! Older segments are not modified. When reading meets a bad checksum there, or anywhere that is
//! not the newest segment's last frame, the frame is skipped and counted in `corrupt_frames`, and
//! reading goes on with the next frame; an impossible length or a frame running past the end makes
//! the rest of that segment unreadable (one `corrupt_frames`, its bytes in `torn_bytes`) and
//! reading goes on with the next segment. No file content makes this module panic: damage is
//! counted and skipped, and only failing system calls are errors. A damaged `cursor` file means
//! "from the oldest segment" (records may be delivered twice, none is lost).
//!
//! # Guarantees
//!
//! * **Order.** [`Spool::read_next`] hands out records in append order, across segments, each
//!   once between two rewinds; [`Spool::rewind`] hands out again, in order, every record read but
//!   not acknowledged.
//! * **Nothing acknowledged comes back**, after [`Spool::rewind`], a restart or a SIGKILL: `ack`
//!   records the acknowledgement in `acks.log` before it returns.
//! * **Nothing unacknowledged is lost**: an appended record leaves the spool only through `ack`
//!   (or as a damaged frame). Appends are buffered in the process: a record survives a SIGKILL once
//!   [`Spool::flush`] returned (or dropping the spool), and a power loss once `flush(true)`
//!   returned (fdatasync of the segments and the acknowledgement log, fsync of the directory).
//!   Acknowledgements and cursor writes are not synced except by `flush(true)`: a power loss may
//!   bring acknowledged records back (delivered twice), never lose others.
//! * **Delivery is at least once**: a record Kafka took but whose `ack` did not happen before a
//!   crash is delivered again.
//! * **Bounded disk**: segment files (including acknowledged records in segments not yet deleted)
//!   never exceed `max_bytes`; [`Spool::append`] returns [`SpoolError::Full`] instead. When every
//!   record is acknowledged and the active segment holds at least 1 MiB (or `segment_bytes`, if
//!   smaller), or holds anything and an append would not fit otherwise, a fresh segment is started
//!   so the drained one can be deleted.
//! * **Bounded memory**: frames are read one at a time through a `BufReader` (one payload in
//!   memory at a time); appends are buffered up to 256 KiB; the bookkeeping is a set of positions
//!   read and not acknowledged plus one of acknowledged-out-of-order positions, both bounded by
//!   what the caller has in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of a frame before the payload: length, checksum, key.
const HEADER: u64 = 16;
/// Bytes the length field counts besides the payload: checksum and key.
const FIXED_REST: u64 = 12;
/// Appends are written to the OS once this much is buffered.
const WRITE_BUFFER: usize = 256 * 1024;
const READ_BUFFER: usize = 64 * 1024;
/// A drained active segment at least this large (or `segment_bytes`) is replaced by a fresh one.
const DRAIN_ROLL_BYTES: u64 = 1 << 20;
/// The acknowledgement log is compacted past this size (when at least half of it is dead).
const ACK_LOG_COMPACT_BYTES: u64 = 256 * 1024;
/// A position record: segment, offset, checksum (the cursor file and acknowledgement-log entries).
const POS_RECORD: usize = 20;
const CURSOR_FILE: &str = "cursor";
const ACK_LOG_FILE: &str = "acks.log";
const LOCK_FILE: &str = "lock";

/// Where the spool lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Directory of the spool; created by [`Spool::open`].
    pub dir: PathBuf,
    /// Bound of the segment files' total size. Default 1 GiB.
    pub max_bytes: u64,
    /// A segment is closed before it would grow past this size; also the largest payload.
    /// Default 64 MiB. Lowering it below the largest spooled payload makes those frames unreadable
    /// on the next open (their length looks impossible).
    pub segment_bytes: u64,
}

impl SpoolConfig {
    pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

    /// The defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// Where a record's frame starts: segment number and byte offset in that segment.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolPos {
    pub segment: u64,
    pub offset: u64,
}

/// A record read back from the spool. `pos` is what [`Spool::ack`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledRecord {
    pub pos: SpoolPos,
    pub key: u64,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The segment files plus this record would exceed `max_bytes`; the record was not taken.
    #[error("the spool is full")]
    Full,
    /// The payload is larger than a segment may hold; the record was not taken.
    #[error("a record of {len} bytes is larger than the spool takes ({max} bytes)")]
    TooLarge { len: usize, max: u64 },
    #[error("spool I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters since [`Spool::open`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended.
    pub appended: u64,
    /// Records acknowledged (repeated acknowledgements not counted).
    pub acked: u64,
    /// Appends refused with [`SpoolError::Full`].
    pub dropped_full: u64,
    /// Frames skipped as damaged: bad checksums, impossible lengths, frames past a file's end.
    pub corrupt_frames: u64,
    /// Bytes truncated away or skipped as unreadable.
    pub torn_bytes: u64,
    /// Records found after the cursor on open, neither acknowledged nor truncated.
    pub recovered_on_open: u64,
}

/// What the spool knows about one segment file.
#[derive(Debug, Default, Clone, Copy)]
struct Segment {
    /// Bytes in the file, buffered appends included.
    len: u64,
    /// Frames from where reading starts in this segment (the cursor in the first one, else 0):
    /// found on open plus appended since.
    frames: u64,
    /// Frames the read frontier has passed in this segment.
    passed: u64,
}

/// Appends to the active segment: frames are buffered and written with positional writes, so a
/// failed write is retried at the same offset and never leaves a gap.
struct Writer {
    segment: u64,
    file: File,
    buf: Vec<u8>,
    buf_frames: u64,
    /// Bytes of the segment handed to the OS (what readers may read).
    flushed_len: u64,
    /// Written since the last fdatasync.
    unsynced: bool,
}

impl Writer {
    fn len(&self) -> u64 {
        self.flushed_len + self.buf.len() as u64
    }
}

/// A buffered reader of one segment that knows its offset (`None` after an error: seek anew).
struct Reader {
    segment: u64,
    file: BufReader<File>,
    offset: Option<u64>,
}

impl Reader {
    fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        let result = match self.offset {
            Some(cur) if cur == offset => Ok(()),
            Some(cur) => match (i64::try_from(offset), i64::try_from(cur)) {
                (Ok(to), Ok(from)) => self.file.seek_relative(to - from),
                _ => self.file.seek(SeekFrom::Start(offset)).map(drop),
            },
            None => self.file.seek(SeekFrom::Start(offset)).map(drop),
        };
        self.offset = result.as_ref().ok().map(|_| offset);
        result
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let result = self.file.read_exact(buf);
        self.offset = match result {
            Ok(()) => self.offset.map(|o| o + buf.len() as u64),
            Err(_) => None,
        };
        result
    }
}

/// One frame as read.
enum Frame {
    Record {
        key: u64,
        payload: Vec<u8>,
        next: u64,
    },
    /// The header is sound and the payload was not read (an acknowledged record).
    Skipped {
        next: u64,
    },
    BadChecksum {
        next: u64,
    },
    /// An impossible length, a frame past the readable end, a missing file: nothing more can be
    /// read in this segment.
    Unreadable,
}

/// The on-disk spool. See the module documentation.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Largest valid value of a frame's length field.
    max_rest: u64,
    segments: BTreeMap<u64, Segment>,
    /// Sum of the segments' lengths.
    bytes: u64,
    writer: Writer,
    /// Sealed segments written since the last fdatasync.
    sealed_unsynced: BTreeSet<u64>,
    dir_unsynced: bool,
    reader: Option<Reader>,
    /// Every frame before it was handed out, found acknowledged, or skipped as damaged.
    frontier: SpoolPos,
    /// Where reading goes on (below `frontier` after a rewind).
    read_pos: SpoolPos,
    /// Handed out and not acknowledged (all before `frontier`).
    handed: BTreeSet<SpoolPos>,
    /// Acknowledged and at or after the cursor (out of order, or found in `acks.log` on open).
    acked: BTreeSet<SpoolPos>,
    /// Records at or after `frontier` not known to be acknowledged or damaged.
    unread: u64,
    /// The cursor as last written to `cursor`.
    persisted: Option<SpoolPos>,
    cursor_unsynced: bool,
    ack_log: File,
    ack_log_bytes: u64,
    ack_log_unsynced: bool,
    stats: SpoolStats,
    /// Drop without writing anything (tests simulating a SIGKILL).
    killed: bool,
    _lock: File,
}

impl Spool {
    /// Opens (creating the directory) and recovers: scans segment files, truncates a torn tail of
    /// the last segment, reads the persisted delivery cursor and the acknowledgement log. Records
    /// after the cursor, not acknowledged, are pending and read first.
    pub fn open(cfg: SpoolConfig) -> Result<Spool, SpoolError> {
        let SpoolConfig {
            dir,
            max_bytes,
            segment_bytes,
        } = cfg;
        fs::create_dir_all(&dir)?;
        let lock = lock_dir(&dir)?;
        let max_rest = segment_bytes.min(u64::from(u32::MAX) - FIXED_REST) + FIXED_REST;
        let mut numbers = segment_numbers(&dir)?;
        let stored = read_cursor(&dir.join(CURSOR_FILE))?;
        let mut cursor = place_cursor(&dir, &mut numbers, stored)?;
        let logged = read_ack_log(&dir.join(ACK_LOG_FILE), cursor)?;
        let mut found = Found::default();
        for (i, &n) in numbers.iter().enumerate() {
            let last = i + 1 == numbers.len();
            found.segment(&dir, n, last, &mut cursor, max_rest, &logged)?;
        }
        let Found {
            acked,
            mut segments,
            frames,
            active,
            mut stats,
        } = found;
        let mut dir_unsynced = false;
        let (active_segment, active_file) = match active {
            Some(a) => a,
            None => {
                dir_unsynced = true;
                segments.insert(cursor.segment, Segment::default());
                (cursor.segment, create_segment(&dir, cursor.segment)?)
            }
        };
        let (ack_log, live_bytes, rewritten) = open_ack_log(&dir, &acked)?;
        dir_unsynced |= rewritten;
        let unread = frames.saturating_sub(acked.len() as u64);
        stats.recovered_on_open = unread;
        let flushed_len = segments.get(&active_segment).map_or(0, |s| s.len);
        let bytes = segments.values().map(|s| s.len).sum();
        let mut spool = Spool {
            dir,
            max_bytes,
            segment_bytes,
            max_rest,
            segments,
            bytes,
            writer: Writer {
                segment: active_segment,
                file: active_file,
                buf: Vec::new(),
                buf_frames: 0,
                flushed_len,
                unsynced: false,
            },
            sealed_unsynced: BTreeSet::new(),
            dir_unsynced,
            reader: None,
            frontier: cursor,
            read_pos: cursor,
            handed: BTreeSet::new(),
            acked,
            unread,
            persisted: stored,
            cursor_unsynced: false,
            ack_log,
            ack_log_bytes: live_bytes,
            ack_log_unsynced: false,
            stats,
            killed: false,
            _lock: lock,
        };
        spool.persist(true, false)?;
        Ok(spool)
    }

    /// Appends one record (buffered: readable and crash-safe after [`Spool::flush`]).
    /// `Err(Full)` when the segment files plus this frame would exceed `max_bytes` (counted in
    /// `dropped_full`; the caller counts the loss); `Err(TooLarge)` when the payload exceeds
    /// `segment_bytes`. Rolls to a new segment file when this frame would take a non-empty one past
    /// `segment_bytes`.
    pub fn append(&mut self, key: u64, payload: &[u8]) -> Result<SpoolPos, SpoolError> {
        let max_payload = self.max_rest - FIXED_REST;
        if payload.len() as u64 > max_payload {
            return Err(SpoolError::TooLarge {
                len: payload.len(),
                max: max_payload,
            });
        }
        let frame = HEADER + payload.len() as u64;
        // Acknowledged records count until their segment goes: a drained active segment smaller
        // than the roll threshold would otherwise keep the spool full for good.
        if self.bytes.saturating_add(frame) > self.max_bytes && self.roll_drained(0)? {
            self.persist(false, false)?;
        }
        if self.bytes.saturating_add(frame) > self.max_bytes {
            self.stats.dropped_full += 1;
            return Err(SpoolError::Full);
        }
        if !self.writer.buf.is_empty()
            && self
                .writer
                .buf
                .len()
                .saturating_add(payload.len() + HEADER as usize)
                > WRITE_BUFFER
        {
            self.write_out()?;
        }
        let len = self.writer.len();
        if len > 0 && len + frame > self.segment_bytes {
            self.roll(false)?;
        }
        let pos = SpoolPos {
            segment: self.writer.segment,
            offset: self.writer.len(),
        };
        encode_frame(&mut self.writer.buf, key, payload);
        self.writer.buf_frames += 1;
        let seg = self.segments.entry(pos.segment).or_default();
        seg.len += frame;
        seg.frames += 1;
        self.bytes += frame;
        self.unread += 1;
        self.stats.appended += 1;
        Ok(pos)
    }

    /// Writes buffered frames to the OS and the cursor file when it moved. With `sync`, also
    /// fdatasyncs the segments and the acknowledgement log and fsyncs the directory, so what was
    /// appended and acknowledged survives a power loss.
    pub fn flush(&mut self, sync: bool) -> Result<(), SpoolError> {
        self.write_out()?;
        self.settle_frontier();
        self.roll_if_drained()?;
        if sync {
            if self.writer.unsynced {
                self.writer.file.sync_data()?;
                self.writer.unsynced = false;
            }
            while let Some(&n) = self.sealed_unsynced.first() {
                if self.segments.contains_key(&n) {
                    match File::open(segment_path(&self.dir, n)) {
                        Ok(f) => f.sync_data()?,
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                self.sealed_unsynced.remove(&n);
            }
            if self.ack_log_unsynced {
                self.ack_log.sync_data()?;
                self.ack_log_unsynced = false;
            }
        }
        self.persist(true, sync)?;
        if sync && self.dir_unsynced {
            File::open(&self.dir)?.sync_all()?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// The next record not yet handed out since open / the last rewind, in append order, across
    /// segments; `None` when everything flushed was handed out. Only what was flushed is read.
    /// Acknowledged records are never returned; damaged frames are skipped and counted.
    pub fn read_next(&mut self) -> Result<Option<SpooledRecord>, SpoolError> {
        let result = self.read_inner();
        if result.is_err() {
            self.reader = None;
        }
        Ok(result?)
    }

    fn read_inner(&mut self) -> io::Result<Option<SpooledRecord>> {
        loop {
            let step = if self.read_pos < self.frontier {
                self.reread_step()?
            } else {
                self.frontier_step()?
            };
            if let ControlFlow::Break(next) = step {
                return Ok(next);
            }
        }
    }

    /// After a rewind: the next record handed out and not acknowledged (`Break(Some)`), or a
    /// step over a damaged one or back to the frontier (`Continue`).
    fn reread_step(&mut self) -> io::Result<ControlFlow<Option<SpooledRecord>>> {
        let Some(p) = self
            .handed
            .range(self.read_pos..)
            .next()
            .copied()
            .filter(|p| *p < self.frontier)
        else {
            self.read_pos = self.frontier;
            return Ok(ControlFlow::Continue(()));
        };
        let end = self.readable_end(p.segment);
        if let Frame::Record { key, payload, next } = self.frame_at(p, end, true)? {
            self.read_pos = SpoolPos {
                segment: p.segment,
                offset: next,
            };
            return Ok(ControlFlow::Break(Some(SpooledRecord {
                pos: p,
                key,
                payload,
            })));
        }
        // Read fine before; damaged on disk since.
        tracing::warn!(
            segment = p.segment,
            offset = p.offset,
            "spool: a record read before is damaged now"
        );
        self.handed.remove(&p);
        self.stats.corrupt_frames += 1;
        self.read_pos = SpoolPos {
            segment: p.segment,
            offset: p.offset + 1,
        };
        Ok(ControlFlow::Continue(()))
    }

    /// One frame at the frontier: a record not acknowledged (`Break(Some)`), the end of what was
    /// flushed (`Break(None)`), or a frame passed over (acknowledged before a restart, damaged:
    /// `Continue`).
    fn frontier_step(&mut self) -> io::Result<ControlFlow<Option<SpooledRecord>>> {
        self.settle_frontier();
        let f = self.frontier;
        self.read_pos = f;
        let end = self.readable_end(f.segment);
        if f.offset >= end {
            // Settled: only the active segment (or none) ends here.
            return Ok(ControlFlow::Break(None));
        }
        let acked = self.acked.contains(&f);
        match self.frame_at(f, end, !acked)? {
            Frame::Record { key, payload, next } if !acked => {
                self.pass(f.segment, true);
                self.frontier.offset = next;
                self.read_pos = self.frontier;
                self.handed.insert(f);
                return Ok(ControlFlow::Break(Some(SpooledRecord {
                    pos: f,
                    key,
                    payload,
                })));
            }
            Frame::Record { next, .. } | Frame::Skipped { next } => {
                // Acknowledged before a restart: counted out of `unread` on open.
                self.pass(f.segment, false);
                self.frontier.offset = next;
            }
            Frame::BadChecksum { next } => {
                tracing::warn!(
                    segment = f.segment,
                    offset = f.offset,
                    "spool: skipping a frame with a bad checksum"
                );
                self.stats.corrupt_frames += 1;
                self.pass(f.segment, !acked);
                self.frontier.offset = next;
            }
            Frame::Unreadable => {
                if f.segment == self.writer.segment {
                    // Appends must not land behind damage: carry the buffered frames to a
                    // fresh segment.
                    self.roll(true)?;
                }
                tracing::warn!(
                    segment = f.segment,
                    offset = f.offset,
                    bytes = end - f.offset,
                    "spool: the rest of a segment is unreadable"
                );
                self.stats.corrupt_frames += 1;
                self.stats.torn_bytes += end - f.offset;
                self.frontier.offset = end;
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Kafka acknowledged this record (a position from [`Spool::read_next`]). Acknowledgements may
    /// arrive out of order; they are recorded in `acks.log` before this returns, and the cursor
    /// advances over the contiguous acknowledged prefix; segment files wholly before it are
    /// deleted once the cursor file (replaced atomically: temp file + rename) says so.
    /// Acknowledging a position not handed out, or twice, does nothing. An `Err` from writing the
    /// acknowledgement leaves the record unacknowledged (it may be acknowledged again); an `Err`
    /// from the housekeeping after it (cursor file, segment deletion) leaves it acknowledged, and
    /// the housekeeping is retried by the next `ack` or `flush`.
    pub fn ack(&mut self, pos: SpoolPos) -> Result<(), SpoolError> {
        self.ack_all([pos])
    }

    /// [`Spool::ack`] for many positions with one write.
    pub fn ack_all(
        &mut self,
        positions: impl IntoIterator<Item = SpoolPos>,
    ) -> Result<(), SpoolError> {
        let mut fresh: Vec<SpoolPos> = positions
            .into_iter()
            .filter(|p| self.handed.contains(p))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        if fresh.is_empty() {
            return Ok(());
        }
        let entries = encode_positions(&fresh);
        self.ack_log.write_all_at(&entries, self.ack_log_bytes)?;
        self.ack_log_bytes += entries.len() as u64;
        self.ack_log_unsynced = true;
        for p in fresh {
            self.handed.remove(&p);
            self.acked.insert(p);
            self.stats.acked += 1;
        }
        self.settle_frontier();
        self.roll_if_drained()?;
        self.persist(false, false)?;
        Ok(())
    }

    /// Hands out again, from the cursor on, every record that was read and not acknowledged
    /// (after Kafka failed them), then goes on with records not read yet.
    pub fn rewind(&mut self) {
        self.read_pos = self.cursor();
    }

    /// Records appended and not yet acknowledged (damaged frames leave this count when reading
    /// meets them).
    pub fn pending(&self) -> u64 {
        self.unread + self.handed.len() as u64
    }

    /// Records handed out by `read_next` and not acknowledged.
    pub fn in_flight(&self) -> usize {
        self.handed.len()
    }

    /// Bytes of segment files on disk, buffered appends included (what `max_bytes` bounds).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The first record not acknowledged (or where the next append goes when there is none).
    pub fn cursor(&self) -> SpoolPos {
        self.handed
            .first()
            .map_or(self.frontier, |&p| p.min(self.frontier))
    }

    pub fn stats(&self) -> &SpoolStats {
        &self.stats
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Test hook: drops the spool like a SIGKILL would, writing nothing more (buffered appends are
    /// lost, the cursor file stays as last written).
    #[cfg(test)]
    fn kill(mut self) {
        self.killed = true;
    }

    /// Test hook: a SIGKILL in the middle of writing the buffer: its first `n` bytes reach the
    /// file.
    #[cfg(test)]
    fn kill_torn(mut self, n: usize) {
        let n = n.min(self.writer.buf.len());
        let _ = self
            .writer
            .file
            .write_all_at(&self.writer.buf[..n], self.writer.flushed_len);
        self.killed = true;
    }

    /// Hands the buffered frames to the OS at their offset (a failed write is retried whole).
    fn write_out(&mut self) -> io::Result<()> {
        let w = &mut self.writer;
        if w.buf.is_empty() {
            return Ok(());
        }
        w.file.write_all_at(&w.buf, w.flushed_len)?;
        w.flushed_len += w.buf.len() as u64;
        w.buf.clear();
        w.buf_frames = 0;
        w.unsynced = true;
        if w.buf.capacity() > 4 * WRITE_BUFFER {
            w.buf.shrink_to(WRITE_BUFFER);
        }
        Ok(())
    }

    /// Seals the active segment and starts the next. With `carry`, the buffered frames move to the
    /// new segment instead of being written to the old one.
    fn roll(&mut self, carry: bool) -> io::Result<()> {
        if !carry {
            self.write_out()?;
        }
        let old = self.writer.segment;
        let next = old
            .checked_add(1)
            .ok_or_else(|| io::Error::other("spool segment numbers exhausted"))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(segment_path(&self.dir, next))?;
        self.dir_unsynced = true;
        let (buf, buf_frames) = if carry {
            (
                std::mem::take(&mut self.writer.buf),
                std::mem::take(&mut self.writer.buf_frames),
            )
        } else {
            (Vec::new(), 0)
        };
        let carried = buf.len() as u64;
        if let Some(s) = self.segments.get_mut(&old) {
            s.len -= carried;
            s.frames = s.frames.saturating_sub(buf_frames);
        }
        self.segments.insert(
            next,
            Segment {
                len: carried,
                frames: buf_frames,
                passed: 0,
            },
        );
        let prev = std::mem::replace(
            &mut self.writer,
            Writer {
                segment: next,
                file,
                buf,
                buf_frames,
                flushed_len: 0,
                unsynced: false,
            },
        );
        if prev.unsynced {
            self.sealed_unsynced.insert(prev.segment);
        }
        Ok(())
    }

    /// Everything acknowledged and the active segment large: start a fresh one so that this one
    /// can be deleted.
    fn roll_if_drained(&mut self) -> io::Result<()> {
        self.roll_drained(DRAIN_ROLL_BYTES.min(self.segment_bytes))
            .map(drop)
    }

    /// Starts a fresh segment when every record is acknowledged and the active segment holds at
    /// least `threshold` bytes (and one at all); the drained one is deleted with the next cursor
    /// write, which the full-spool path in `append` does at once. True when it rolled.
    fn roll_drained(&mut self, threshold: u64) -> io::Result<bool> {
        let len = self.writer.len();
        let threshold = threshold.max(1);
        let at_end = SpoolPos {
            segment: self.writer.segment,
            offset: len,
        };
        if len >= threshold
            && self.handed.is_empty()
            && self.writer.buf.is_empty()
            && self.frontier == at_end
        {
            self.roll(false)?;
            self.settle_frontier();
            return Ok(true);
        }
        Ok(false)
    }

    /// Moves the frontier out of sealed segments it has read to the end.
    fn settle_frontier(&mut self) {
        while self.frontier.segment < self.writer.segment {
            let seg = self.frontier.segment;
            if self
                .segments
                .get(&seg)
                .is_some_and(|s| self.frontier.offset < s.len)
            {
                return;
            }
            self.leave_segment(seg);
            let next = self
                .segments
                .range(seg + 1..)
                .next()
                .map_or(self.writer.segment, |(&n, _)| n);
            self.frontier = SpoolPos {
                segment: next,
                offset: 0,
            };
        }
    }

    /// The frontier leaves `seg`: frames counted there and never reached (past damage) are gone.
    fn leave_segment(&mut self, seg: u64) {
        if let Some(s) = self.segments.get_mut(&seg) {
            if s.frames > s.passed {
                self.unread = self.unread.saturating_sub(s.frames - s.passed);
            } else {
                self.unread = self.unread.saturating_add(s.passed - s.frames);
            }
            s.frames = s.passed;
        }
    }

    /// The frontier passed a frame of `seg`; `counted` when it was in `unread`.
    fn pass(&mut self, seg: u64, counted: bool) {
        if let Some(s) = self.segments.get_mut(&seg) {
            s.passed += 1;
        }
        if counted {
            self.unread = self.unread.saturating_sub(1);
        }
    }

    fn readable_end(&self, segment: u64) -> u64 {
        if segment == self.writer.segment {
            self.writer.flushed_len
        } else {
            self.segments.get(&segment).map_or(0, |s| s.len)
        }
    }

    fn frame_at(&mut self, pos: SpoolPos, end: u64, want_payload: bool) -> io::Result<Frame> {
        if self.reader.as_ref().map(|r| r.segment) != Some(pos.segment) {
            self.reader = None;
            match File::open(segment_path(&self.dir, pos.segment)) {
                Ok(f) => {
                    self.reader = Some(Reader {
                        segment: pos.segment,
                        file: BufReader::with_capacity(READ_BUFFER, f),
                        offset: Some(0),
                    });
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Frame::Unreadable),
                Err(e) => return Err(e),
            }
        }
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Frame::Unreadable);
        };
        match read_frame(reader, pos.offset, end, self.max_rest, want_payload) {
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(Frame::Unreadable),
            other => other,
        }
    }

    /// Writes the cursor when it moved and `force`, or it moved into a later segment, or the
    /// acknowledgement log needs compacting; then deletes the segments before it and compacts.
    fn persist(&mut self, force: bool, sync: bool) -> io::Result<()> {
        self.settle_frontier();
        let c = self.cursor();
        if self.acked.first().is_some_and(|&p| p < c) {
            self.acked = self.acked.split_off(&c);
        }
        if self.persisted != Some(c) {
            let live = (self.acked.len() * POS_RECORD) as u64;
            let compact =
                self.ack_log_bytes >= ACK_LOG_COMPACT_BYTES && self.ack_log_bytes >= 2 * live;
            let due = force || compact || self.persisted.is_none_or(|p| p.segment != c.segment);
            if !due {
                return Ok(());
            }
            write_atomic(&self.dir, CURSOR_FILE, &encode_pos(c), sync)?;
            self.dir_unsynced = true;
            self.persisted = Some(c);
            self.cursor_unsynced = !sync;
        } else if sync && self.cursor_unsynced {
            File::open(self.dir.join(CURSOR_FILE))?.sync_data()?;
            self.cursor_unsynced = false;
        }
        self.delete_before(c.segment)?;
        self.compact_ack_log(force, sync)
    }

    /// Deletes the segment files before `segment` (all acknowledged: the cursor is past them).
    fn delete_before(&mut self, segment: u64) -> io::Result<()> {
        while let Some((&n, _)) = self.segments.first_key_value() {
            if n >= segment {
                break;
            }
            remove_if_exists(&segment_path(&self.dir, n))?;
            if let Some(s) = self.segments.remove(&n) {
                self.bytes = self.bytes.saturating_sub(s.len);
            }
            self.sealed_unsynced.remove(&n);
            self.dir_unsynced = true;
            if self.reader.as_ref().is_some_and(|r| r.segment == n) {
                self.reader = None;
            }
        }
        Ok(())
    }

    /// Drops the acknowledgement-log entries before the (persisted) cursor when at least half
    /// the log is dead and it is large, or `force`.
    fn compact_ack_log(&mut self, force: bool, sync: bool) -> io::Result<()> {
        let live = (self.acked.len() * POS_RECORD) as u64;
        if self.ack_log_bytes == live
            || self.ack_log_bytes < 2 * live
            || !(force || self.ack_log_bytes >= ACK_LOG_COMPACT_BYTES)
        {
            return Ok(());
        }
        if self.acked.is_empty() {
            self.ack_log.set_len(0)?;
        } else {
            write_atomic(
                &self.dir,
                ACK_LOG_FILE,
                &encode_positions(&self.acked),
                sync,
            )?;
            self.dir_unsynced = true;
            self.ack_log = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.dir.join(ACK_LOG_FILE))?;
        }
        self.ack_log_bytes = live;
        self.ack_log_unsynced = true;
        Ok(())
    }
}

impl Drop for Spool {
    /// Writes buffered frames and the cursor (errors are logged: drop cannot return them; call
    /// `flush` first to see them).
    fn drop(&mut self) {
        if self.killed {
            return;
        }
        if let Err(e) = self.write_out().and_then(|()| self.persist(true, false)) {
            tracing::warn!(error = %e, dir = %self.dir.display(), "spool: writing on close failed");
        }
    }
}

/// What the scan of one segment on open found.
struct Scan {
    /// Sound frames from the start offset on.
    frames: u64,
    /// Where the sound frames end.
    valid_end: u64,
    /// The scan stopped at an impossible length (not a torn tail).
    impossible: bool,
}

/// Walks the frames of a segment from `start`, reading headers and skipping payloads (except the
/// last frame's when `check_last`, the newest segment's torn-tail check). Acknowledgements in
/// `logged` naming a frame found are copied to `acked`.
#[allow(clippy::too_many_arguments)]
fn scan_segment(
    file: &File,
    segment: u64,
    start: u64,
    len: u64,
    max_rest: u64,
    check_last: bool,
    logged: &BTreeSet<SpoolPos>,
    acked: &mut BTreeSet<SpoolPos>,
) -> io::Result<Scan> {
    let mut r = BufReader::with_capacity(READ_BUFFER, file);
    r.seek(SeekFrom::Start(start))?;
    let mut off = start;
    let mut frames = 0;
    let stop = |frames: u64, off: u64, impossible: bool| -> io::Result<Scan> {
        Ok(Scan {
            frames,
            valid_end: off,
            impossible,
        })
    };
    loop {
        if off >= len {
            return stop(frames, len, false);
        }
        if len - off < 4 {
            return stop(frames, off, false);
        }
        let mut word = [0u8; 4];
        match r.read_exact(&mut word) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return stop(frames, off, false),
            Err(e) => return Err(e),
        }
        let rest = u64::from(u32::from_le_bytes(word));
        if !(FIXED_REST..=max_rest).contains(&rest) {
            return stop(frames, off, true);
        }
        let next = off + 4 + rest;
        if next > len {
            return stop(frames, off, false);
        }
        if check_last && next == len {
            let mut head = [0u8; 12];
            let sound = r.read_exact(&mut head).and_then(|()| {
                let crc = le_u32(&head, 0);
                let key = le_u64(&head, 4);
                Ok(crc_of_stream(&mut r, key, rest - FIXED_REST)? == crc)
            });
            match sound {
                Ok(true) => {}
                Ok(false) => return stop(frames, off, false),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return stop(frames, off, false),
                Err(e) => return Err(e),
            }
        } else {
            // rest ≤ u32::MAX: fits.
            r.seek_relative(rest as i64)?;
        }
        let pos = SpoolPos {
            segment,
            offset: off,
        };
        if logged.contains(&pos) {
            acked.insert(pos);
        }
        frames += 1;
        off = next;
    }
}

/// Reads the frame at `offset`, which must end by `end`. UnexpectedEof (the file is shorter than
/// thought) is the caller's to map to `Unreadable`.
fn read_frame(
    r: &mut Reader,
    offset: u64,
    end: u64,
    max_rest: u64,
    want_payload: bool,
) -> io::Result<Frame> {
    if end.saturating_sub(offset) < HEADER {
        return Ok(Frame::Unreadable);
    }
    r.seek_to(offset)?;
    let mut head = [0u8; HEADER as usize];
    r.read_exact(&mut head)?;
    let rest = u64::from(le_u32(&head, 0));
    let crc = le_u32(&head, 4);
    let key = le_u64(&head, 8);
    if !(FIXED_REST..=max_rest).contains(&rest) {
        return Ok(Frame::Unreadable);
    }
    let next = offset + 4 + rest;
    if next > end {
        return Ok(Frame::Unreadable);
    }
    if !want_payload {
        return Ok(Frame::Skipped { next });
    }
    let Ok(payload_len) = usize::try_from(rest - FIXED_REST) else {
        return Ok(Frame::Unreadable);
    };
    let mut payload = vec![0u8; payload_len];
    r.read_exact(&mut payload)?;
    if checksum(key, &payload) == crc {
        Ok(Frame::Record { key, payload, next })
    } else {
        Ok(Frame::BadChecksum { next })
    }
}

fn checksum(key: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&key.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The checksum of `key` and the next `n` bytes of `r`, read in small pieces.
fn crc_of_stream(r: &mut impl Read, key: u64, mut n: u64) -> io::Result<u32> {
    let mut h = crc32fast::Hasher::new();
    h.update(&key.to_le_bytes());
    let mut chunk = [0u8; 8192];
    while n > 0 {
        let k = n.min(chunk.len() as u64) as usize;
        r.read_exact(&mut chunk[..k])?;
        h.update(&chunk[..k]);
        n -= k as u64;
    }
    Ok(h.finalize())
}

fn encode_frame(buf: &mut Vec<u8>, key: u64, payload: &[u8]) {
    // The caller checked that the payload fits: rest ≤ u32::MAX.
    let rest = (FIXED_REST as usize + payload.len()) as u32;
    buf.extend_from_slice(&rest.to_le_bytes());
    buf.extend_from_slice(&checksum(key, payload).to_le_bytes());
    buf.extend_from_slice(&key.to_le_bytes());
    buf.extend_from_slice(payload);
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn encode_pos(p: SpoolPos) -> [u8; POS_RECORD] {
    let mut b = [0u8; POS_RECORD];
    b[..8].copy_from_slice(&p.segment.to_le_bytes());
    b[8..16].copy_from_slice(&p.offset.to_le_bytes());
    let crc = crc32fast::hash(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_pos(b: &[u8; POS_RECORD]) -> Option<SpoolPos> {
    (crc32fast::hash(&b[..16]) == le_u32(b, 16)).then(|| SpoolPos {
        segment: le_u64(b, 0),
        offset: le_u64(b, 8),
    })
}

fn encode_positions<'a>(positions: impl IntoIterator<Item = &'a SpoolPos>) -> Vec<u8> {
    positions.into_iter().flat_map(|&p| encode_pos(p)).collect()
}

/// The cursor file's position; `None` when there is none or it is damaged.
fn read_cursor(path: &Path) -> io::Result<Option<SpoolPos>> {
    let mut bytes = Vec::with_capacity(POS_RECORD);
    match File::open(path) {
        Ok(f) => {
            f.take(POS_RECORD as u64 + 1).read_to_end(&mut bytes)?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let pos = <&[u8; POS_RECORD]>::try_from(bytes.as_slice())
        .ok()
        .and_then(decode_pos);
    if pos.is_none() {
        tracing::warn!(
            path = %path.display(),
            "spool: the cursor file is damaged; delivering again from the oldest segment"
        );
    }
    Ok(pos)
}

/// The acknowledgement log's sound entries at or after `cursor` (a torn last entry and damaged
/// entries are ignored).
fn read_ack_log(path: &Path, cursor: SpoolPos) -> io::Result<BTreeSet<SpoolPos>> {
    let mut out = BTreeSet::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut r = BufReader::with_capacity(READ_BUFFER, file);
    let mut entry = [0u8; POS_RECORD];
    loop {
        match r.read_exact(&mut entry) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(out),
            Err(e) => return Err(e),
        }
        if let Some(p) = decode_pos(&entry).filter(|&p| p >= cursor) {
            out.insert(p);
        }
    }
}

/// Replaces `dir/name` with `bytes` atomically (write `name.tmp`, rename).
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], sync: bool) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_data()?;
        }
    }
    fs::rename(&tmp, dir.join(name))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The segment numbers of the files in `dir`, in order.
fn segment_numbers(dir: &Path) -> io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Some(n) = parse_segment_name(&entry?.file_name()) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Where reading resumes: the persisted cursor, else the first segment's start. Segments before
/// it were acknowledged (a crash may have kept them from going): they are removed, and
/// `numbers` keeps the others. A cursor in a segment that is gone moves to the next one's start.
fn place_cursor(
    dir: &Path,
    numbers: &mut Vec<u64>,
    stored: Option<SpoolPos>,
) -> io::Result<SpoolPos> {
    let mut cursor = stored.unwrap_or(SpoolPos {
        segment: numbers.first().copied().unwrap_or(0),
        offset: 0,
    });
    for &n in numbers.iter().filter(|&&n| n < cursor.segment) {
        remove_if_exists(&segment_path(dir, n))?;
    }
    numbers.retain(|&n| n >= cursor.segment);
    match numbers.first() {
        Some(&first) if first == cursor.segment => {}
        Some(&first) => {
            cursor = SpoolPos {
                segment: first,
                offset: 0,
            }
        }
        None => cursor.offset = 0,
    }
    Ok(cursor)
}

/// What recovery found in the segment files.
#[derive(Default)]
struct Found {
    /// Frames at or after the cursor that the ack log names.
    acked: BTreeSet<SpoolPos>,
    segments: BTreeMap<u64, Segment>,
    /// Frames at or after the cursor.
    frames: u64,
    /// The last segment, open for appending.
    active: Option<(u64, File)>,
    stats: SpoolStats,
}

impl Found {
    /// Scans segment `n` (from the cursor, in its segment); the last one has a torn or unreadable
    /// tail truncated, and stays open for appending.
    fn segment(
        &mut self,
        dir: &Path,
        n: u64,
        last: bool,
        cursor: &mut SpoolPos,
        max_rest: u64,
        logged: &BTreeSet<SpoolPos>,
    ) -> Result<(), SpoolError> {
        let file = OpenOptions::new()
            .read(true)
            .write(last)
            .open(segment_path(dir, n))?;
        let mut len = file.metadata()?.len();
        let mut start = 0;
        if n == cursor.segment {
            if cursor.offset > len {
                tracing::warn!(
                    segment = n,
                    cursor = cursor.offset,
                    len,
                    "spool: the cursor is past the end of its segment"
                );
                cursor.offset = len;
            }
            start = cursor.offset;
        }
        let scan = scan_segment(
            &file,
            n,
            start,
            len,
            max_rest,
            last,
            logged,
            &mut self.acked,
        )?;
        if last && scan.valid_end < len {
            let torn = len - scan.valid_end;
            tracing::warn!(
                segment = n,
                offset = scan.valid_end,
                bytes = torn,
                impossible_length = scan.impossible,
                "spool: truncating a torn or unreadable tail"
            );
            self.stats.torn_bytes += torn;
            if scan.impossible {
                self.stats.corrupt_frames += 1;
            }
            file.set_len(scan.valid_end)?;
            len = scan.valid_end;
        }
        self.frames += scan.frames;
        let segment = Segment {
            len,
            frames: scan.frames,
            passed: 0,
        };
        self.segments.insert(n, segment);
        if last {
            self.active = Some((n, file));
        }
        Ok(())
    }
}

/// A new, empty segment file `n`.
fn create_segment(dir: &Path, n: u64) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(segment_path(dir, n))
}

/// Opens the ack log for appending, rewritten first when it holds more than the entries that
/// name a frame at or after the cursor (`acked`): the others are dead, or name a position a
/// truncated tail freed for new records. Returns the file, its length, and whether it was
/// rewritten (the directory then needs a sync).
fn open_ack_log(dir: &Path, acked: &BTreeSet<SpoolPos>) -> io::Result<(File, u64, bool)> {
    let path = dir.join(ACK_LOG_FILE);
    let live_bytes = (acked.len() * POS_RECORD) as u64;
    let rewrite = fs::metadata(&path).map_or(0, |m| m.len()) != live_bytes;
    if rewrite {
        write_atomic(dir, ACK_LOG_FILE, &encode_positions(acked), false)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    Ok((file, live_bytes, rewrite))
}

/// The file of segment number `segment` in the spool directory `dir` (the `spool-<20 digits>.log`
/// of the module documentation); public for the fuzz target, which writes segments itself.
pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("spool-{segment:020}.log"))
}

/// The segment number a file name in the spool directory names (`spool-<20 digits>.log`), if it
/// names one.
pub fn parse_segment_name(name: &OsStr) -> Option<u64> {
    let digits = name
        .to_str()?
        .strip_prefix("spool-")?
        .strip_suffix(".log")?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Takes an exclusive `flock` on `dir/lock`, held while the returned file is open.
fn lock_dir(dir: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))?;
    // SAFETY: flock takes a descriptor this function owns and touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == ErrorKind::WouldBlock {
            return Err(io::Error::new(
                ErrorKind::WouldBlock,
                format!(
                    "spool directory {} is in use by another process",
                    dir.display()
                ),
            ));
        }
        // A file system without flock: go on unlocked.
        tracing::warn!(error = %e, dir = %dir.display(), "spool: cannot lock the directory");
    }
    Ok(file)
}

#[cfg(test)]
mod tests;
