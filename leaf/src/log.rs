//! The leaf's disk log: every accepted batch is appended here (as Arrow IPC)
//! before it is acknowledged, and a restarted leaf rebuilds its tables from it.
//!
//! ```text
//!  record := magic "SCLG" (4) | payload_len u32 (4) | crc32c(payload) u32 (4) | payload
//!  payload := header_len u32 | bincode(RecordHeader{table, batch_id}) | Arrow IPC stream
//! ```
//!
//! Group commit: appends happen in order under the leaf's write lock (so the
//! log's order is the apply order), fsync happens outside it; one fsync
//! covers every record written before it started, so concurrent batches
//! share it. Recovery stops at the first record whose magic, length or
//! checksum is wrong (a torn tail from a crash), truncates the file there and
//! says what it dropped.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use scuba::limits::FRAME_BYTES_MAX;
use scuba::wire::BatchId;
use serde::{Deserialize, Serialize};

use crate::error::{LeafError, Result};

const MAGIC: [u8; 4] = *b"SCLG";
const RECORD_PREFIX_BYTES: usize = 12;

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
}

/// One recovered record.
pub struct Record {
    pub header: RecordHeader,
    pub ipc: Vec<u8>,
}

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub records: u64,
    pub bytes: u64,
    /// Why the tail was dropped, if it was.
    pub dropped_tail: Option<String>,
}

pub struct Log {
    path: PathBuf,
    file: Mutex<File>,
    sync_file: File,
    written_bytes: AtomicU64,
    synced_bytes: Mutex<u64>,
    policy: FsyncPolicy,
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

impl Log {
    /// Opens the log in `dir`, replaying every intact record through
    /// `apply` first; a torn tail is cut off.
    pub fn open(
        dir: &Path,
        policy: FsyncPolicy,
        mut apply: impl FnMut(Record) -> Result<()>,
    ) -> Result<(Log, Recovery)> {
        std::fs::create_dir_all(dir).map_err(|e| log_err(dir, e))?;
        let path = dir.join("batches.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| log_err(&path, e))?;
        let recovery = replay(&path, &mut file, &mut apply)?;
        let sync_file = file.try_clone().map_err(|e| log_err(&path, e))?;
        let end = file.seek(SeekFrom::End(0)).map_err(|e| log_err(&path, e))?;
        Ok((
            Log {
                path,
                file: Mutex::new(file),
                sync_file,
                written_bytes: AtomicU64::new(end),
                synced_bytes: Mutex::new(end),
                policy,
            },
            recovery,
        ))
    }

    /// Opens the log for appending without replaying it: the caller already
    /// holds its rows (adopted from a hand-off segment).
    pub fn open_without_replay(dir: &Path, policy: FsyncPolicy) -> Result<Log> {
        std::fs::create_dir_all(dir).map_err(|e| log_err(dir, e))?;
        let path = dir.join("batches.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| log_err(&path, e))?;
        let sync_file = file.try_clone().map_err(|e| log_err(&path, e))?;
        let end = file.seek(SeekFrom::End(0)).map_err(|e| log_err(&path, e))?;
        Ok(Log {
            path,
            file: Mutex::new(file),
            sync_file,
            written_bytes: AtomicU64::new(end),
            synced_bytes: Mutex::new(end),
            policy,
        })
    }

    /// Appends one batch; returns the log offset to pass to [`Log::sync_to`].
    pub fn append(&self, table: &str, batch_id: BatchId, ipc: &[u8]) -> Result<u64> {
        let header = bincode::serde::encode_to_vec(
            RecordHeader {
                table: table.to_string(),
                batch_id,
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
        let mut record = Vec::with_capacity(RECORD_PREFIX_BYTES + payload_len);
        record.extend_from_slice(&MAGIC);
        record.extend_from_slice(&(payload_len as u32).to_le_bytes());
        record.extend_from_slice(&crc.to_le_bytes());
        record.extend_from_slice(&(header.len() as u32).to_le_bytes());
        record.extend_from_slice(&header);
        record.extend_from_slice(ipc);
        let mut file = self.file.lock().expect("log lock poisoned");
        file.write_all(&record)
            .map_err(|e| log_err(&self.path, e))?;
        let end = self
            .written_bytes
            .fetch_add(record.len() as u64, Ordering::SeqCst)
            + record.len() as u64;
        Ok(end)
    }

    /// Returns once everything up to `offset` is on disk (per the policy).
    pub fn sync_to(&self, offset: u64) -> Result<()> {
        if self.policy == FsyncPolicy::Never {
            return Ok(());
        }
        let mut synced = self.synced_bytes.lock().expect("log sync lock poisoned");
        if *synced >= offset {
            return Ok(()); // a concurrent fsync already covered this record
        }
        let target = self.written_bytes.load(Ordering::SeqCst);
        self.sync_file
            .sync_data()
            .map_err(|e| log_err(&self.path, e))?;
        *synced = target;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len_bytes(&self) -> u64 {
        self.written_bytes.load(Ordering::SeqCst)
    }
}

fn replay(
    path: &Path,
    file: &mut File,
    apply: &mut impl FnMut(Record) -> Result<()>,
) -> Result<Recovery> {
    let len = file.metadata().map_err(|e| log_err(path, e))?.len();
    file.seek(SeekFrom::Start(0))
        .map_err(|e| log_err(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, &*file);
    let mut recovery = Recovery::default();
    let mut offset = 0u64;
    let mut prefix = [0u8; RECORD_PREFIX_BYTES];
    'records: while offset < len {
        let remaining = len - offset;
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
            apply(Record { header, ipc })?;
            offset += (RECORD_PREFIX_BYTES + payload_len) as u64;
            recovery.records += 1;
            recovery.bytes = offset;
            continue 'records;
        };
        tracing::warn!(
            log = %path.display(),
            offset,
            dropped_bytes = len - offset,
            "dropping the log's torn tail: {why}"
        );
        recovery.dropped_tail = Some(format!(
            "{why} at offset {offset}; dropped {} bytes",
            len - offset
        ));
        drop(reader);
        file.set_len(offset).map_err(|e| log_err(path, e))?;
        break;
    }
    Ok(recovery)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> BatchId {
        BatchId { session: 1, seq }
    }

    fn replay_all(dir: &Path) -> (Vec<(String, u64, Vec<u8>)>, Recovery) {
        let mut seen = Vec::new();
        let (_log, rec) = Log::open(dir, FsyncPolicy::Group, |r| {
            seen.push((r.header.table, r.header.batch_id.seq, r.ipc));
            Ok(())
        })
        .unwrap();
        (seen, rec)
    }

    #[test]
    fn appended_records_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = Log::open(dir.path(), FsyncPolicy::Group, |_| Ok(())).unwrap();
            let end = log.append("a", id(1), b"one").unwrap();
            log.append("b", id(2), b"two").unwrap();
            log.sync_to(end).unwrap();
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
        {
            let (log, _) = Log::open(dir.path(), FsyncPolicy::Never, |_| Ok(())).unwrap();
            log.append("a", id(1), b"one").unwrap();
            log.append("a", id(2), b"two-two-two").unwrap();
        }
        let path = dir.path().join("batches.log");
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (seen, rec) = replay_all(dir.path());
        assert_eq!(seen.len(), 1);
        assert!(rec.dropped_tail.unwrap().contains("cut off"));
        // The cut is permanent: appending after recovery yields a clean log.
        let (seen, rec) = replay_all(dir.path());
        assert_eq!(seen.len(), 1);
        assert!(rec.dropped_tail.is_none());
    }

    #[test]
    fn flipped_byte_in_last_record_is_caught_by_checksum() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (log, _) = Log::open(dir.path(), FsyncPolicy::Never, |_| Ok(())).unwrap();
            log.append("a", id(1), b"one").unwrap();
            log.append("a", id(2), b"two").unwrap();
        }
        let path = dir.path().join("batches.log");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
        let (seen, rec) = replay_all(dir.path());
        assert_eq!(seen.len(), 1);
        assert!(rec.dropped_tail.unwrap().contains("checksum"));
    }
}
