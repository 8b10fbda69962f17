//! The hand-off segment: what a leaf leaves in shared memory for its
//! successor, and how the successor checks it before serving a byte of it.
//!
//! ```text
//!  shm folder/
//!    segment.hdr    Header (64 bytes) | bincode(Manifest)
//!    b000000000001.arrow, ...   sealed blocks (see `shm`), listed in the manifest
//!
//!  Header: magic "SCUBASHM" | layout version u32 | valid u32 | manifest length u64
//!          | manifest crc32c u32 | zero padding to 64 bytes
//! ```
//!
//! The old leaf writes the header with `valid = 0`, the manifest, and only
//! then sets `valid = 1`: a crash mid-way leaves an invalid segment. The
//! successor refuses the segment on any doubt it can settle at once (magic,
//! layout version, valid flag, manifest checksum, a block file missing or of
//! another length, the disk log's segments) and then recovers from the disk
//! log instead. What costs a pass over the data (each block's crc32c and
//! Arrow validation) is done after the leaf starts serving: each block
//! before its first scan, and all of them in one background pass; a block
//! that fails is never read, and the leaf drops everything adopted and
//! recovers from the log in place (`Leaf::check_adopted`). Once adopted, the
//! header is removed, so a later crash cannot leave a stale segment behind.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use scuba::wire::BatchId;
use serde::{Deserialize, Serialize};

use crate::error::{LeafError, Result};
use crate::shm::BlockFile;

/// Bumped whenever the segment's layout changes; a successor with another
/// version recovers from disk instead.
/// 4: strings kept as `Utf8View`.
pub const LAYOUT_VERSION: u32 = 4;

pub const HEADER_FILE: &str = "segment.hdr";
const MAGIC: [u8; 8] = *b"SCUBASHM";
const HEADER_BYTES: usize = 64;
const VALID_OFFSET: u64 = 12;

/// Largest manifest accepted (it lists blocks and remembered batch ids).
const MANIFEST_BYTES_MAX: u64 = 256 << 20;

/// The fixed-size header, pinned to 64 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub layout_version: u32,
    pub valid: bool,
    pub manifest_len: u64,
    pub manifest_crc32c: u32,
}

const _: () = assert!(8 + 4 + 4 + 8 + 4 <= HEADER_BYTES);

impl Header {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.layout_version.to_le_bytes());
        out[12..16].copy_from_slice(&u32::from(self.valid).to_le_bytes());
        out[16..24].copy_from_slice(&self.manifest_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.manifest_crc32c.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; HEADER_BYTES]) -> std::result::Result<Header, String> {
        if bytes[0..8] != MAGIC {
            return Err("bad magic".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let valid = match u32_at(12) {
            0 => false,
            1 => true,
            v => return Err(format!("valid flag holds {v}")),
        };
        Ok(Header {
            layout_version: u32_at(8),
            valid,
            manifest_len: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
            manifest_crc32c: u32_at(24),
        })
    }
}

/// A sealed block as a successor adopts it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlockMeta {
    pub file: BlockFile,
    pub rows: u64,
    /// Log records its rows came from: (segment, records).
    pub segments: Vec<(u64, u64)>,
    pub time_min_us: Option<i64>,
    pub time_max_us: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableManifest {
    pub name: String,
    pub schema_ipc: Vec<u8>,
    pub rows_expired: u64,
    pub blocks: Vec<BlockMeta>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub leaf: String,
    pub tables: Vec<TableManifest>,
    /// Batch ids the leaf remembers, oldest first, so retries stay idempotent.
    pub batch_ids: Vec<BatchId>,
    /// Those of `batch_ids` whose rows another leaf holds (dropped after a
    /// crash because a client had retried them there).
    pub batch_ids_elsewhere: Vec<BatchId>,
    /// The disk log's segments and lengths at hand-off: the successor's log
    /// must match.
    pub log_segments: Vec<(u64, u64)>,
    pub next_block_seq: u64,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MANIFEST_BYTES_MAX as usize }>()
}

fn io(path: &Path, e: impl std::fmt::Display) -> LeafError {
    LeafError::Internal(format!("hand-off segment {}: {e}", path.display()))
}

/// Writes the segment header and manifest; the valid flag goes last.
pub fn write(dir: &Path, manifest: &Manifest) -> Result<()> {
    let body = bincode::serde::encode_to_vec(manifest, config()).map_err(|e| io(dir, e))?;
    let mut header = Header {
        layout_version: LAYOUT_VERSION,
        valid: false,
        manifest_len: body.len() as u64,
        manifest_crc32c: crc32c::crc32c(&body),
    };
    let path = dir.join(HEADER_FILE);
    let mut f = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
    f.write_all(&header.encode()).map_err(|e| io(&path, e))?;
    f.write_all(&body).map_err(|e| io(&path, e))?;
    f.sync_all().map_err(|e| io(&path, e))?;
    header.valid = true;
    f.seek(SeekFrom::Start(VALID_OFFSET))
        .map_err(|e| io(&path, e))?;
    f.write_all(&header.encode()[VALID_OFFSET as usize..VALID_OFFSET as usize + 4])
        .map_err(|e| io(&path, e))?;
    f.sync_all().map_err(|e| io(&path, e))?;
    Ok(())
}

/// Reads and checks the header and manifest. `Ok(None)` when there is no
/// segment; `Err(reason)` when there is one that must not be used.
pub fn read(dir: &Path) -> std::result::Result<Option<Manifest>, String> {
    let path = dir.join(HEADER_FILE);
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    let mut raw = [0u8; HEADER_BYTES];
    f.read_exact(&mut raw)
        .map_err(|_| "header truncated".to_string())?;
    let header = Header::decode(&raw)?;
    if header.layout_version != LAYOUT_VERSION {
        return Err(format!(
            "layout version {} (this build reads {LAYOUT_VERSION})",
            header.layout_version
        ));
    }
    if !header.valid {
        return Err("valid flag unset (the previous leaf did not finish its hand-off)".into());
    }
    if header.manifest_len > MANIFEST_BYTES_MAX {
        return Err(format!(
            "manifest of {} bytes is over the limit",
            header.manifest_len
        ));
    }
    let mut body = vec![0u8; header.manifest_len as usize];
    f.read_exact(&mut body)
        .map_err(|_| "manifest truncated".to_string())?;
    if crc32c::crc32c(&body) != header.manifest_crc32c {
        return Err("manifest checksum mismatch".into());
    }
    let (manifest, _) = bincode::serde::decode_from_slice::<Manifest, _>(&body, config())
        .map_err(|e| format!("manifest does not decode: {e}"))?;
    Ok(Some(manifest))
}

/// Removes the header, so nothing adopts this segment again.
pub fn retire(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(HEADER_FILE));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            leaf: "leaf-0".into(),
            tables: vec![],
            batch_ids: vec![
                BatchId { session: 1, seq: 2 },
                BatchId { session: 1, seq: 3 },
            ],
            batch_ids_elsewhere: vec![BatchId { session: 1, seq: 3 }],
            log_segments: vec![(1, 99)],
            next_block_seq: 3,
        }
    }

    #[test]
    fn written_segment_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &manifest()).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(manifest()));
        retire(dir.path());
        assert_eq!(read(dir.path()).unwrap(), None);
    }

    fn corrupt(at: u64, value: u8) -> String {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &manifest()).unwrap();
        let path = dir.path().join(HEADER_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at as usize] = value;
        std::fs::write(&path, bytes).unwrap();
        read(dir.path()).unwrap_err()
    }

    #[test]
    fn every_corruption_is_refused_with_its_reason() {
        assert!(corrupt(0, b'X').contains("magic"));
        assert!(corrupt(8, LAYOUT_VERSION as u8 + 1).contains("layout version"));
        assert!(corrupt(VALID_OFFSET, 0).contains("valid flag"));
        assert!(corrupt(HEADER_BYTES as u64 + 1, 0xee).contains("checksum"));
    }

    #[test]
    fn truncated_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &manifest()).unwrap();
        let path = dir.path().join(HEADER_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        assert!(read(dir.path()).unwrap_err().contains("truncated"));
    }
}
