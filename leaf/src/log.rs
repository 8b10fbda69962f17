//! The leaf's disk log: every accepted batch is appended here (as Arrow IPC)
//! before it is acknowledged, and a restarted leaf rebuilds its tables from it.
//!
//! ```text
//!  log/000000000001.log, 000000000002.log, ...      segments, at most `segment_bytes_max` each
//!  record  := magic "SCLG" (4) | payload_len u32 | crc32c(payload) u32 | payload
//!  payload := header_len u32 | bincode(RecordHeader{table, batch_id, time_us}) | Arrow IPC stream
//! ```
//!
//! Group commit: appends happen in order under the leaf's write lock (so the
//! log's order is the apply order), fsync happens outside it; one fsync
//! covers every record written before it started, so concurrent batches
//! share it.
//!
//! Direct writes: where the file system allows it (`O_DIRECT`), a record
//! goes from an aligned staging buffer straight to the disk, not through
//! the page cache: no kernel copy, no page-cache pages to allocate and
//! write back later. Such writes cover whole blocks, so each one starts at
//! the block holding the segment's end (rewriting that block's records as
//! they were) and ends padded with zeros to a whole block; the log keeps the
//! segment's real end. A zero tail shorter than a block after the last
//! record is therefore no damage: recovery cuts it silently, and
//! [`Log::trim_tail`] cuts it before a hand-off.
//!
//! Bounded disk: the leaf counts, per segment, the records whose rows are
//! still held ([`Log::release`] when their block expires); a segment with
//! none left is deleted. Recovery replays segments in order; a record whose
//! magic, length or checksum is wrong (a torn tail from a crash) ends its
//! segment there: the segment is truncated and the drop is reported.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use scuba::limits::FRAME_BYTES_MAX;
use scuba::wire::BatchId;
use serde::{Deserialize, Serialize};

use crate::error::{LeafError, Result};

const MAGIC: [u8; 4] = *b"SCLG";
const RECORD_PREFIX_BYTES: usize = 12;

/// Default size at which the log moves on to a new segment.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;

/// When the log reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before acknowledging; concurrent batches share one fsync.
    Group,
    /// Never fsync: an OS crash may lose acknowledged rows. For throwaway data.
    Never,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RecordHeader {
    pub table: String,
    pub batch_id: BatchId,
    /// Wall clock when appended, microseconds since the epoch.
    pub time_us: i64,
}

/// One recovered record.
pub struct Record {
    pub header: RecordHeader,
    pub ipc: Vec<u8>,
    /// The segment holding it.
    pub segment: u64,
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub records: u64,
    pub bytes: u64,
    pub segments: u64,
    /// Why a torn tail was dropped, if one was.
    pub dropped_tail: Option<String>,
}

/// Where an appended record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Log position after it, for [`Log::sync_to`].
    pub end: u64,
    pub segment: u64,
}

struct Writer {
    id: u64,
    file: Arc<File>,
    /// The segment's records' length (its file may be longer by a zero tail).
    len_bytes: u64,
    /// Set when the segment takes direct writes.
    direct: Option<Direct>,
}

/// How records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writes {
    /// Straight from the staging buffer where the file system allows it,
    /// through the page cache elsewhere.
    Direct,
    /// Through the page cache (as on file systems without direct writes).
    #[cfg_attr(not(test), allow(dead_code))]
    Buffered,
}

/// Direct writes cover whole blocks of this many bytes, from buffers aligned
/// to it: a multiple of every disk block size in use (512 and 4,096 bytes).
const DIRECT_ALIGN: usize = 4096;

/// Bytes the staging buffer starts with; it grows to the largest record seen.
const DIRECT_BUFFER_BYTES_MIN: usize = 2 << 20;

/// Bound on the staging buffer: the largest record plus the partial block
/// before it and the padding after it.
const DIRECT_BUFFER_BYTES_MAX: usize = FRAME_BYTES_MAX + RECORD_PREFIX_BYTES + 2 * DIRECT_ALIGN;

/// A segment opened for direct writes, and the staging buffer they go out
/// from: its first `tail_len` bytes are the segment's last partial block.
struct Direct {
    file: File,
    buf: AlignedBuf,
    tail_len: usize,
}

/// Bytes whose start is aligned to [`DIRECT_ALIGN`] (in a vector with room
/// to spare, so without `unsafe`).
struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let bytes = vec![0u8; len + DIRECT_ALIGN];
        let start = bytes.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { bytes, start, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

impl Direct {
    /// Opens `path` (already open as `file`, `len_bytes` of records long)
    /// for direct writes, or `None` where its file system does not take them.
    /// `buf` is the previous segment's staging buffer, kept at its size.
    fn open(
        path: &Path,
        file: &File,
        len_bytes: u64,
        writes: Writes,
        buf: Option<AlignedBuf>,
    ) -> Result<Option<Direct>> {
        if writes == Writes::Buffered {
            return Ok(None);
        }
        let direct = match open_direct(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(segment = %path.display(), "writing the log through the page cache: no direct writes here ({e})");
                return Ok(None);
            }
        };
        let mut buf = buf.unwrap_or_else(|| AlignedBuf::new(DIRECT_BUFFER_BYTES_MIN));
        let tail_len = (len_bytes % DIRECT_ALIGN as u64) as usize;
        file.read_exact_at(&mut buf.as_mut()[..tail_len], len_bytes - tail_len as u64)
            .map_err(|e| log_err(path, e))?;
        Ok(Some(Direct {
            file: direct,
            buf,
            tail_len,
        }))
    }

    /// Writes `parts` (one record) after the segment's `len_bytes`.
    fn write(&mut self, len_bytes: u64, parts: [&[u8]; 2]) -> std::io::Result<()> {
        let end = self.tail_len + parts[0].len() + parts[1].len();
        let padded = end.next_multiple_of(DIRECT_ALIGN);
        if padded > self.buf.len {
            if padded > DIRECT_BUFFER_BYTES_MAX {
                return Err(std::io::Error::other(format!(
                    "a record and the partial block before it ({end} bytes) are over the log's staging bound of {DIRECT_BUFFER_BYTES_MAX} bytes"
                )));
            }
            let mut grown =
                AlignedBuf::new(padded.max(2 * self.buf.len).min(DIRECT_BUFFER_BYTES_MAX));
            grown.as_mut()[..self.tail_len].copy_from_slice(&self.buf.as_mut()[..self.tail_len]);
            self.buf = grown;
        }
        let buf = self.buf.as_mut();
        let mut at = self.tail_len;
        for part in parts {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        buf[end..padded].fill(0);
        self.file
            .write_all_at(&buf[..padded], len_bytes - self.tail_len as u64)?;
        // The new last partial block leads the next write.
        let last_block = end / DIRECT_ALIGN * DIRECT_ALIGN;
        buf.copy_within(last_block..end, 0);
        self.tail_len = end - last_block;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> std::io::Result<File> {
    Err(std::io::ErrorKind::Unsupported.into())
}

pub struct Log {
    dir: PathBuf,
    policy: FsyncPolicy,
    writes: Writes,
    segment_bytes_max: u64,
    writer: Mutex<Writer>,
    /// Bytes ever appended (across segments): positions for group commit.
    written_bytes: AtomicU64,
    synced_bytes: Mutex<u64>,
    /// Live records per segment.
    live: Mutex<BTreeMap<u64, u64>>,
    /// Set (under `live`) once another `Log` over the same folder replaces
    /// this one: from then on it deletes nothing.
    retired: std::sync::atomic::AtomicBool,
}

/// Writes all of `bufs`, in as few system calls as the kernel allows (std's
/// `write_all_vectored` is not stable yet).
fn write_all_vectored(mut file: &File, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn log_err(path: &Path, source: std::io::Error) -> LeafError {
    LeafError::Log {
        path: path.display().to_string(),
        source,
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<FRAME_BYTES_MAX>()
}

/// Batches never to replay, one entry each: session u64 | seq u64 | crc32c u32.
const TOMBSTONES_FILE: &str = "tombstones";
const TOMBSTONE_BYTES: usize = 20;

/// The batch ids in the tombstone file (an entry whose checksum fails, as
/// a torn last write would, ends the list).
pub fn load_tombstones(dir: &Path) -> Result<std::collections::HashSet<BatchId>> {
    let path = dir.join(TOMBSTONES_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(log_err(&path, e)),
    };
    let mut ids = std::collections::HashSet::new();
    for entry in bytes.chunks_exact(TOMBSTONE_BYTES) {
        let crc = u32::from_le_bytes(entry[16..20].try_into().expect("4 bytes"));
        if crc32c::crc32c(&entry[..16]) != crc {
            break;
        }
        ids.insert(BatchId {
            session: u64::from_le_bytes(entry[..8].try_into().expect("8 bytes")),
            seq: u64::from_le_bytes(entry[8..16].try_into().expect("8 bytes")),
        });
    }
    Ok(ids)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:012}.log"))
}

/// Segment ids present in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| log_err(dir, e))? {
        let e = e.map_err(|e| log_err(dir, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

impl Log {
    /// Opens the log in `dir`, replaying every intact record through `apply`
    /// first (each counted live in its segment; the caller releases those it
    /// does not keep).
    pub fn open(
        dir: &Path,
        policy: FsyncPolicy,
        segment_bytes_max: u64,
        apply: impl FnMut(Record) -> Result<()>,
    ) -> Result<(Log, Recovery)> {
        Log::open_with(dir, policy, segment_bytes_max, Writes::Direct, apply)
    }

    fn open_with(
        dir: &Path,
        policy: FsyncPolicy,
        segment_bytes_max: u64,
        writes: Writes,
        mut apply: impl FnMut(Record) -> Result<()>,
    ) -> Result<(Log, Recovery)> {
        std::fs::create_dir_all(dir).map_err(|e| log_err(dir, e))?;
        let mut recovery = Recovery::default();
        let mut live = BTreeMap::new();
        for id in list_segments(dir)? {
            let records = replay_segment(&segment_path(dir, id), id, &mut recovery, &mut apply)?;
            live.insert(id, records);
            recovery.segments += 1;
        }
        let log = Log::start(dir, policy, segment_bytes_max, writes, live)?;
        Ok((log, recovery))
    }

    /// Opens the log for appending without replaying it: the caller already
    /// holds its rows (adopted from a hand-off segment). `expected` lists the
    /// segments and lengths the hand-off saw (any difference is an error);
    /// `live` the records per segment the adopted blocks still hold.
    pub fn open_without_replay(
        dir: &Path,
        policy: FsyncPolicy,
        segment_bytes_max: u64,
        expected: &[(u64, u64)],
        live: &BTreeMap<u64, u64>,
    ) -> Result<Log> {
        std::fs::create_dir_all(dir).map_err(|e| log_err(dir, e))?;
        let mut found = Vec::new();
        for id in list_segments(dir)? {
            let path = segment_path(dir, id);
            found.push((
                id,
                std::fs::metadata(&path)
                    .map_err(|e| log_err(&path, e))?
                    .len(),
            ));
        }
        if found != expected {
            return Err(LeafError::Internal(format!(
                "the disk log's segments {found:?} differ from the hand-off's {expected:?}"
            )));
        }
        // Counts must be known before `start`, which deletes dead segments.
        let counts = found
            .iter()
            .map(|&(id, _)| (id, live.get(&id).copied().unwrap_or(0)))
            .collect();
        Log::start(dir, policy, segment_bytes_max, Writes::Direct, counts)
    }

    fn start(
        dir: &Path,
        policy: FsyncPolicy,
        segment_bytes_max: u64,
        writes: Writes,
        live: BTreeMap<u64, u64>,
    ) -> Result<Log> {
        let id = live.keys().next_back().copied().unwrap_or(1);
        let path = segment_path(dir, id);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| log_err(&path, e))?;
        let len_bytes = file.seek(SeekFrom::End(0)).map_err(|e| log_err(&path, e))?;
        let direct = Direct::open(&path, &file, len_bytes, writes, None)?;
        let mut live = live;
        live.entry(id).or_insert(0);
        let log = Log {
            dir: dir.to_path_buf(),
            policy,
            writes,
            segment_bytes_max: segment_bytes_max.max(1),
            writer: Mutex::new(Writer {
                id,
                file: Arc::new(file),
                len_bytes,
                direct,
            }),
            written_bytes: AtomicU64::new(0),
            synced_bytes: Mutex::new(0),
            live: Mutex::new(live),
            retired: std::sync::atomic::AtomicBool::new(false),
        };
        // Segments whose records are all gone (expired before a crash).
        log.delete_dead();
        Ok(log)
    }

    /// Appends one batch.
    pub fn append(&self, table: &str, batch_id: BatchId, ipc: &[u8]) -> Result<Appended> {
        let time_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let header = bincode::serde::encode_to_vec(
            RecordHeader {
                table: table.to_string(),
                batch_id,
                time_us,
            },
            config(),
        )
        .map_err(|e| LeafError::Internal(format!("encoding a log header: {e}")))?;
        let payload_len = 4 + header.len() + ipc.len();
        if payload_len > FRAME_BYTES_MAX {
            return Err(scuba::Error::FrameTooLarge {
                len_bytes: payload_len,
                max_bytes: FRAME_BYTES_MAX,
            }
            .into());
        }
        let mut crc = crc32c::crc32c(&(header.len() as u32).to_le_bytes());
        crc = crc32c::crc32c_append(crc, &header);
        crc = crc32c::crc32c_append(crc, ipc);
        // The record's head is built here; the batch is written from where
        // it is, in the same system call (not copied into one record first).
        let mut head = Vec::with_capacity(RECORD_PREFIX_BYTES + 4 + header.len());
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&(payload_len as u32).to_le_bytes());
        head.extend_from_slice(&crc.to_le_bytes());
        head.extend_from_slice(&(header.len() as u32).to_le_bytes());
        head.extend_from_slice(&header);
        let record_len = (head.len() + ipc.len()) as u64;

        let mut w = self.writer.lock().expect("log lock poisoned");
        if w.len_bytes > 0 && w.len_bytes + record_len > self.segment_bytes_max {
            self.rotate(&mut w)?;
        }
        // Named only when something goes wrong.
        let id = w.id;
        let path = || segment_path(&self.dir, id);
        let len_bytes = w.len_bytes;
        let mut written = None;
        if let Some(direct) = &mut w.direct {
            match direct.write(len_bytes, [&head, ipc]) {
                // A disk whose blocks are larger than `DIRECT_ALIGN` (the
                // write changed nothing): the page cache takes over.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(segment = %path().display(), "the disk refused a direct write ({e}); the log goes through the page cache from here on");
                    w.direct = None;
                    w.file.set_len(len_bytes).map_err(|e| log_err(&path(), e))?;
                }
                result => written = Some(result),
            }
        }
        written
            .unwrap_or_else(|| {
                write_all_vectored(&w.file, &mut [IoSlice::new(&head), IoSlice::new(ipc)])
            })
            .map_err(|e| log_err(&path(), e))?;
        w.len_bytes += record_len;
        *self.live.lock().expect("poisoned").entry(w.id).or_insert(0) += 1;
        let end = self.written_bytes.fetch_add(record_len, Ordering::SeqCst) + record_len;
        Ok(Appended { end, segment: w.id })
    }

    /// Moves on to a new segment; the old one is made durable first so every
    /// position before the new one is covered.
    fn rotate(&self, w: &mut Writer) -> Result<()> {
        let old = segment_path(&self.dir, w.id);
        trim(w).map_err(|e| log_err(&old, e))?;
        if self.policy == FsyncPolicy::Group {
            w.file.sync_data().map_err(|e| log_err(&old, e))?;
        }
        let id = w.id + 1;
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| log_err(&path, e))?;
        if self.policy == FsyncPolicy::Group {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| log_err(&self.dir, e))?;
        }
        let buf = w.direct.take().map(|d| d.buf);
        let direct = Direct::open(&path, &file, 0, self.writes, buf)?;
        *w = Writer {
            id,
            file: Arc::new(file),
            len_bytes: 0,
            direct,
        };
        self.live.lock().expect("poisoned").entry(id).or_insert(0);
        drop(old);
        // The writer lock is held here: name the current segment.
        self.delete_dead_except(id);
        Ok(())
    }

    /// Returns once everything up to `end` is on disk (per the policy).
    pub fn sync_to(&self, end: u64) -> Result<()> {
        if self.policy == FsyncPolicy::Never {
            return Ok(());
        }
        let mut synced = self.synced_bytes.lock().expect("log sync lock poisoned");
        if *synced >= end {
            return Ok(()); // a concurrent fsync already covered this record
        }
        let (file, id, target) = {
            let w = self.writer.lock().expect("log lock poisoned");
            (
                Arc::clone(&w.file),
                w.id,
                self.written_bytes.load(Ordering::SeqCst),
            )
        };
        file.sync_data()
            .map_err(|e| log_err(&segment_path(&self.dir, id), e))?;
        *synced = target;
        Ok(())
    }

    /// `records` records of `segment` are no longer held (their rows
    /// expired, or never applied); a segment left with none is deleted.
    /// Stops this log from deleting segments, before a new `Log` is opened
    /// over the same folder (which counts its own live records): a release
    /// still running on this one with an old count must not delete a
    /// segment the new one is about to replay.
    pub fn retire(&self) {
        let _live = self.live.lock().expect("poisoned");
        self.retired.store(true, Ordering::SeqCst);
    }

    pub fn release(&self, segment: u64, records: u64) {
        {
            let mut live = self.live.lock().expect("poisoned");
            if let Some(n) = live.get_mut(&segment) {
                *n = n.saturating_sub(records);
            }
        }
        self.delete_dead();
    }

    fn delete_dead(&self) {
        let current = self.writer.lock().expect("log lock poisoned").id;
        self.delete_dead_except(current);
    }

    /// Deletes segments with no live records, except `current` (the one
    /// being written). Lock order: writer, then live.
    fn delete_dead_except(&self, current: u64) {
        let mut live = self.live.lock().expect("poisoned");
        if self.retired.load(Ordering::SeqCst) {
            return;
        }
        let dead: Vec<u64> = live
            .iter()
            .filter(|&(&id, &n)| n == 0 && id != current)
            .map(|(&id, _)| id)
            .collect();
        for id in dead {
            let path = segment_path(&self.dir, id);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(segment = %path.display(), "deleted a log segment with no live records")
                }
                Err(e) => {
                    tracing::warn!(segment = %path.display(), "could not delete a dead log segment: {e}")
                }
            }
            live.remove(&id);
        }
    }

    /// Cuts the segment being written back to its records' end (direct
    /// writes leave it padded to a whole block): before a hand-off, whose
    /// successor appends after the segment's end.
    pub fn trim_tail(&self) -> Result<()> {
        let w = self.writer.lock().expect("log lock poisoned");
        trim(&w).map_err(|e| log_err(&segment_path(&self.dir, w.id), e))
    }

    /// Segments and their lengths, for a hand-off.
    pub fn segments(&self) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for id in list_segments(&self.dir)? {
            let path = segment_path(&self.dir, id);
            out.push((
                id,
                std::fs::metadata(&path)
                    .map_err(|e| log_err(&path, e))?
                    .len(),
            ));
        }
        Ok(out)
    }

    /// Records that batches are not to be replayed: another leaf holds
    /// them (see `Leaf::settle`). Durable before it returns.
    pub fn add_tombstones(&self, ids: &[BatchId]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(TOMBSTONES_FILE);
        let mut bytes = Vec::with_capacity(ids.len() * TOMBSTONE_BYTES);
        for id in ids {
            let mut entry = [0u8; 16];
            entry[..8].copy_from_slice(&id.session.to_le_bytes());
            entry[8..].copy_from_slice(&id.seq.to_le_bytes());
            bytes.extend_from_slice(&entry);
            bytes.extend_from_slice(&crc32c::crc32c(&entry).to_le_bytes());
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| log_err(&path, e))?;
        f.write_all(&bytes).map_err(|e| log_err(&path, e))?;
        f.sync_data().map_err(|e| log_err(&path, e))?;
        Ok(())
    }

    /// Bytes the log holds on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments()
            .map(|s| s.iter().map(|(_, len)| len).sum())
            .unwrap_or(0)
    }

    /// Position of the last append (for a final sync).
    pub fn written_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::SeqCst)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether the `len` bytes at `offset` are all zeros (unreadable ones are
/// not: replay reads them and reports why).
fn is_zero_tail(file: &File, offset: u64, len: usize) -> bool {
    let mut tail = vec![0u8; len];
    file.read_exact_at(&mut tail, offset).is_ok() && tail.iter().all(|&b| b == 0)
}

/// Cuts a segment's zero tail from direct writes.
fn trim(w: &Writer) -> std::io::Result<()> {
    if w.direct.is_some() {
        w.file.set_len(w.len_bytes)?;
    }
    Ok(())
}

/// Replays one segment; returns its intact records' count. A bad record
/// ends the segment: it is truncated there and the drop is reported.
fn replay_segment(
    path: &Path,
    segment: u64,
    recovery: &mut Recovery,
    apply: &mut impl FnMut(Record) -> Result<()>,
) -> Result<u64> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| log_err(path, e))?;
    let len = file.metadata().map_err(|e| log_err(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut offset = 0u64;
    let mut records = 0u64;
    let mut prefix = [0u8; RECORD_PREFIX_BYTES];
    'records: while offset < len {
        let remaining = len - offset;
        if remaining < DIRECT_ALIGN as u64 && is_zero_tail(&file, offset, remaining as usize) {
            // The padding of the last direct write: the records end here.
            drop(reader);
            file.set_len(offset).map_err(|e| log_err(path, e))?;
            break;
        }
        let why = 'torn: {
            if remaining < RECORD_PREFIX_BYTES as u64 {
                break 'torn format!("{remaining} bytes of a record prefix");
            }
            reader
                .read_exact(&mut prefix)
                .map_err(|e| log_err(path, e))?;
            if prefix[..4] != MAGIC {
                break 'torn "bad magic".to_string();
            }
            let payload_len =
                u32::from_le_bytes(prefix[4..8].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(prefix[8..12].try_into().expect("4 bytes"));
            if !(4..=FRAME_BYTES_MAX).contains(&payload_len) {
                break 'torn format!("impossible record length {payload_len}");
            }
            if (payload_len + RECORD_PREFIX_BYTES) as u64 > remaining {
                break 'torn format!(
                    "record of {payload_len} bytes cut off after {} bytes",
                    remaining - RECORD_PREFIX_BYTES as u64
                );
            }
            let mut payload = vec![0u8; payload_len];
            reader
                .read_exact(&mut payload)
                .map_err(|e| log_err(path, e))?;
            if crc32c::crc32c(&payload) != crc {
                break 'torn "checksum mismatch".to_string();
            }
            let header_len = u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")) as usize;
            if 4 + header_len > payload_len {
                break 'torn "header longer than its record".to_string();
            }
            let Ok((header, _)) = bincode::serde::decode_from_slice::<RecordHeader, _>(
                &payload[4..4 + header_len],
                config(),
            ) else {
                break 'torn "undecodable record header".to_string();
            };
            let ipc = payload[4 + header_len..].to_vec();
            apply(Record {
                header,
                ipc,
                segment,
            })?;
            offset += (RECORD_PREFIX_BYTES + payload_len) as u64;
            records += 1;
            recovery.records += 1;
            recovery.bytes += (RECORD_PREFIX_BYTES + payload_len) as u64;
            continue 'records;
        };
        tracing::warn!(
            segment = %path.display(),
            offset,
            dropped_bytes = len - offset,
            "dropping the log's torn tail: {why}"
        );
        recovery.dropped_tail = Some(format!(
            "{why} at offset {offset} of {}; dropped {} bytes",
            path.display(),
            len - offset
        ));
        drop(reader);
        file.set_len(offset).map_err(|e| log_err(path, e))?;
        break;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> BatchId {
        BatchId { session: 1, seq }
    }

    fn replay_all(dir: &Path) -> (Vec<(String, u64, Vec<u8>)>, Recovery) {
        let mut seen = Vec::new();
        let (_log, rec) = Log::open(dir, FsyncPolicy::Group, SEGMENT_BYTES_MAX_DEFAULT, |r| {
            seen.push((r.header.table, r.header.batch_id.seq, r.ipc));
            Ok(())
        })
        .unwrap();
        (seen, rec)
    }

    /// A log opened over `dir`, replaying nothing of interest.
    fn empty_log(dir: &Path, policy: FsyncPolicy, segment_bytes_max: u64) -> (Log, Recovery) {
        Log::open(dir, policy, segment_bytes_max, |_| Ok(())).unwrap()
    }

    fn last_segment(dir: &Path) -> PathBuf {
        segment_path(dir, *list_segments(dir).unwrap().last().unwrap())
    }

    /// Appends `records` to a new log in `dir` and closes it; returns where
    /// the last one ends.
    fn closed_log(dir: &Path, policy: FsyncPolicy, records: &[&[u8]]) -> u64 {
        let (log, _) = empty_log(dir, policy, SEGMENT_BYTES_MAX_DEFAULT);
        let mut end = 0;
        for (i, r) in records.iter().enumerate() {
            end = log.append("a", id(i as u64 + 1), r).unwrap().end;
        }
        end
    }

    /// Cuts or extends (with zeros) the last segment in `dir` to `len` bytes.
    fn set_last_segment_len(dir: &Path, len: u64) {
        OpenOptions::new()
            .write(true)
            .open(last_segment(dir))
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    #[test]
    fn appended_records_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = empty_log(dir.path(), FsyncPolicy::Group, SEGMENT_BYTES_MAX_DEFAULT);
            let a = log.append("a", id(1), b"one").unwrap();
            log.append("b", id(2), b"two").unwrap();
            log.sync_to(a.end).unwrap();
        }
        let (seen, rec) = replay_all(dir.path());
        assert_eq!(
            seen,
            vec![
                ("a".into(), 1, b"one".to_vec()),
                ("b".into(), 2, b"two".to_vec())
            ]
        );
        assert!(rec.dropped_tail.is_none());
    }

    #[test]
    fn truncated_last_record_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let end = closed_log(dir.path(), FsyncPolicy::Never, &[b"one", b"two-two-two"]);
        set_last_segment_len(dir.path(), end - 3);
        let (seen, rec) = replay_all(dir.path());
        assert_eq!(seen.len(), 1);
        assert!(rec.dropped_tail.unwrap().contains("cut off"));
        // The cut is permanent: the next recovery finds a clean log.
        let (seen, rec) = replay_all(dir.path());
        assert_eq!(seen.len(), 1);
        assert!(rec.dropped_tail.is_none());
    }

    #[test]
    fn flipped_byte_in_last_record_is_caught_by_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let end = closed_log(dir.path(), FsyncPolicy::Never, &[b"one", b"two"]);
        let path = last_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[end as usize - 1] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
        let (seen, rec) = replay_all(dir.path());
        assert_eq!(seen.len(), 1);
        assert!(rec.dropped_tail.unwrap().contains("checksum"));
    }

    /// A log of 100-byte segments holding two records, one per segment.
    fn two_segments(dir: &Path) -> (Log, Appended, Appended) {
        let (log, _) = empty_log(dir, FsyncPolicy::Group, 100);
        let first = log.append("a", id(1), &[7u8; 80]).unwrap();
        let second = log.append("a", id(2), &[7u8; 80]).unwrap();
        (log, first, second)
    }

    #[test]
    fn segments_rotate_and_a_segment_with_no_live_records_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (log, first, second) = two_segments(dir.path());
        assert_ne!(first.segment, second.segment);
        assert_eq!(list_segments(dir.path()).unwrap().len(), 2);
        log.release(first.segment, 1);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![second.segment]);
        // The current segment stays even when empty of live records.
        log.release(second.segment, 1);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![second.segment]);
    }

    #[test]
    fn a_retired_log_deletes_no_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (log, first, second) = two_segments(dir.path());
        log.retire();
        log.release(first.segment, 1);
        assert_eq!(
            list_segments(dir.path()).unwrap(),
            vec![first.segment, second.segment]
        );
    }

    /// Appends records of awkward sizes (so they straddle blocks) in two
    /// sessions of `writes`, with 20,000-byte segments; then replays all.
    fn appended_over_two_sessions(dir: &Path, writes: Writes) -> Vec<(String, u64, Vec<u8>)> {
        // One is larger than the staging buffer starts.
        let sizes = [5000usize, 3, 9001, DIRECT_BUFFER_BYTES_MIN + 1, 1, 12000];
        let record = |i: usize| vec![i as u8 + 1; sizes[i % sizes.len()]];
        for session in 0..2 {
            let (log, rec) =
                Log::open_with(dir, FsyncPolicy::Group, 20_000, writes, |_| Ok(())).unwrap();
            assert!(rec.dropped_tail.is_none(), "{:?}", rec.dropped_tail);
            // Direct wherever the file system takes direct writes.
            let path = last_segment(dir);
            assert_eq!(
                log.writer.lock().unwrap().direct.is_some(),
                writes == Writes::Direct && open_direct(&path).is_ok()
            );
            for i in session * 6..session * 6 + 6 {
                log.append("t", id(i as u64), &record(i)).unwrap();
            }
            log.sync_to(log.written_bytes()).unwrap();
        }
        let (seen, rec) = replay_all(dir);
        assert!(rec.dropped_tail.is_none(), "{:?}", rec.dropped_tail);
        let expected: Vec<_> = (0..12)
            .map(|i| ("t".to_string(), i as u64, record(i)))
            .collect();
        assert_eq!(seen, expected);
        seen
    }

    #[test]
    fn direct_writes_replay_whole_across_blocks_segments_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        appended_over_two_sessions(dir.path(), Writes::Direct);
    }

    #[test]
    fn writes_through_the_page_cache_replay_the_same_records() {
        let direct = tempfile::tempdir().unwrap();
        let buffered = tempfile::tempdir().unwrap();
        assert_eq!(
            appended_over_two_sessions(direct.path(), Writes::Direct),
            appended_over_two_sessions(buffered.path(), Writes::Buffered)
        );
    }

    #[test]
    fn zero_padding_after_the_last_record_is_cut_without_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let end = closed_log(dir.path(), FsyncPolicy::Group, &[b"one", b"two"]);
        set_last_segment_len(dir.path(), end + DIRECT_ALIGN as u64 - 1);
        let path = last_segment(dir.path());
        let (seen, rec) = replay_all(dir.path());
        assert_eq!(seen.len(), 2);
        assert!(rec.dropped_tail.is_none(), "{:?}", rec.dropped_tail);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
    }

    #[test]
    fn a_whole_block_of_zeros_after_the_last_record_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let end = closed_log(dir.path(), FsyncPolicy::Group, &[b"one"]);
        set_last_segment_len(dir.path(), end + DIRECT_ALIGN as u64);
        let (seen, rec) = replay_all(dir.path());
        assert_eq!(seen.len(), 1);
        assert!(rec.dropped_tail.unwrap().contains("bad magic"));
    }

    #[test]
    fn trimmed_tail_leaves_the_segment_at_its_records_end() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = empty_log(dir.path(), FsyncPolicy::Group, SEGMENT_BYTES_MAX_DEFAULT);
        let end = log.append("a", id(1), &[9u8; 5000]).unwrap().end;
        log.trim_tail().unwrap();
        assert_eq!(log.segments().unwrap(), vec![(1, end)]);
        // Appending after a trim goes on from the records' end.
        let end = log.append("a", id(2), &[8u8; 700]).unwrap().end;
        log.trim_tail().unwrap();
        assert_eq!(log.segments().unwrap(), vec![(1, end)]);
        drop(log);
        assert_eq!(replay_all(dir.path()).0.len(), 2);
    }
}
