//! Shared memory: sealed blocks as Arrow IPC files under `/dev/shm`, mapped
//! and decoded in place. All of the leaf's `unsafe` code lives here.
//!
//! ```text
//!  seal:  RecordBatch ──FileWriter (64-byte aligned)──> bytes ──write──> /dev/shm/.../bN.arrow
//!                                                                          │ mmap (read-only, shared)
//!  scan:  RecordBatch whose buffers point into the mapping  <──FileDecoder─┘ (require_alignment)
//! ```
//!
//! A successor process maps the same files and decodes them the same way:
//! no copy, so adopting a leaf's data costs what mapping and checking it
//! costs. Block files are written whole before they are mapped and are never
//! truncated or rewritten while mapped (a truncated mapping would SIGBUS);
//! they are removed only when no process will map them again.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::ipc::convert::fb_to_schema;
use datafusion::arrow::ipc::reader::{read_footer_length, FileDecoder};
use datafusion::arrow::ipc::root_as_footer;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{LeafError, Result};

/// A block file in shared memory: its name in the leaf's shm folder, its
/// length, and the crc32c of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockFile {
    pub name: String,
    pub len_bytes: u64,
    pub crc32c: u32,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> LeafError {
    LeafError::Internal(format!("shared memory {}: {e}", path.display()))
}

/// Encodes `batch` as an IPC file at `dir/name` and returns the batch read
/// back from its mapping (zero-copy) with the file's description.
pub fn write_block(
    dir: &Path,
    name: &str,
    batch: &RecordBatch,
) -> Result<(RecordBatch, BlockFile)> {
    let mut bytes = Vec::with_capacity(batch.get_array_memory_size() + 4096);
    {
        let mut writer = FileWriter::try_new(&mut bytes, batch.schema_ref())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    let crc32c = crc32c::crc32c(&bytes);
    let path = dir.join(name);
    let mut file = File::create(&path).map_err(|e| io_err(&path, e))?;
    file.write_all(&bytes).map_err(|e| io_err(&path, e))?;
    drop(file);
    let description = BlockFile {
        name: name.to_string(),
        len_bytes: bytes.len() as u64,
        crc32c,
    };
    drop(bytes);
    // Checked once here (it was just computed); a successor checks again.
    let batch = map_block(dir, &description, false)?;
    Ok((batch, description))
}

/// Maps `dir/file.name` and decodes its one batch in place. With `verify`,
/// the length and checksum must match `file` first.
pub fn map_block(dir: &Path, file: &BlockFile, verify: bool) -> Result<RecordBatch> {
    let path: PathBuf = dir.join(&file.name);
    let f = File::open(&path).map_err(|e| io_err(&path, e))?;
    let len = f.metadata().map_err(|e| io_err(&path, e))?.len();
    if len != file.len_bytes {
        return Err(io_err(
            &path,
            format!("length {len}, expected {}", file.len_bytes),
        ));
    }
    // SAFETY: the file was written whole before this mapping and is never
    // truncated or written again while any process maps it (module docs), so
    // the mapped bytes stay valid and unchanged for the mapping's lifetime.
    // Populated: the kernel maps every page at once instead of one fault at
    // a time as the checksum (or a scan) first touches it.
    let mmap =
        unsafe { memmap2::MmapOptions::new().populate().map(&f) }.map_err(|e| io_err(&path, e))?;
    if verify && crc32c::crc32c(&mmap) != file.crc32c {
        return Err(io_err(&path, "checksum mismatch"));
    }
    let buffer = Buffer::from(bytes::Bytes::from_owner(mmap));
    decode_single_batch(&buffer).map_err(|e| io_err(&path, e))
}

/// Maps and checks many blocks at once, spread over the machine's cores
/// (checking checksums is what adopting a large segment costs). Results
/// keep the order of `files`; the first error wins.
pub fn map_blocks(dir: &Path, files: &[&BlockFile]) -> Result<Vec<RecordBatch>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<RecordBatch>>>> =
        files.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(file) = files.get(i) else { break };
                *slots[i].lock().expect("poisoned") = Some(map_block(dir, file, true));
            });
        }
    });
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("poisoned")
                .expect("every block was visited")
        })
        .collect()
}

/// Reads the one record batch of an IPC file held in `buffer`, without
/// copying: alignment is required, so a misaligned file is an error rather
/// than a silent copy.
fn decode_single_batch(buffer: &Buffer) -> Result<RecordBatch> {
    let bad = |m: &str| LeafError::Internal(format!("IPC file: {m}"));
    if buffer.len() < 10 {
        return Err(bad("too short"));
    }
    let trailer: [u8; 10] = buffer[buffer.len() - 10..].try_into().expect("10 bytes");
    let footer_len = read_footer_length(trailer)?;
    if footer_len + 10 > buffer.len() {
        return Err(bad("footer longer than the file"));
    }
    let footer = root_as_footer(&buffer[buffer.len() - 10 - footer_len..buffer.len() - 10])
        .map_err(|e| bad(&format!("footer: {e}")))?;
    let schema = Arc::new(fb_to_schema(
        footer.schema().ok_or_else(|| bad("no schema"))?,
    ));
    let mut decoder = FileDecoder::new(schema, footer.version()).with_require_alignment(true);
    for block in footer.dictionaries().iter().flatten() {
        let (offset, len) =
            block_range(block, buffer.len()).ok_or_else(|| bad("dictionary out of range"))?;
        decoder.read_dictionary(block, &buffer.slice_with_length(offset, len))?;
    }
    let blocks = footer
        .recordBatches()
        .ok_or_else(|| bad("no record batches"))?;
    if blocks.len() != 1 {
        return Err(bad(&format!("{} record batches, expected 1", blocks.len())));
    }
    let block = blocks.get(0);
    let (offset, len) =
        block_range(block, buffer.len()).ok_or_else(|| bad("batch out of range"))?;
    decoder
        .read_record_batch(block, &buffer.slice_with_length(offset, len))?
        .ok_or_else(|| bad("empty batch"))
}

fn block_range(block: &datafusion::arrow::ipc::Block, total: usize) -> Option<(usize, usize)> {
    let offset = usize::try_from(block.offset()).ok()?;
    let len =
        usize::try_from(block.metaDataLength()).ok()? + usize::try_from(block.bodyLength()).ok()?;
    (offset.checked_add(len)? <= total).then_some((offset, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec!["x", "y", "z"])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn written_block_reads_back_from_its_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let (mapped, file) = write_block(dir.path(), "b0.arrow", &batch()).unwrap();
        assert_eq!(mapped, batch());
        let again = map_block(dir.path(), &file, true).unwrap();
        assert_eq!(again, batch());
        assert!(again.column(0).is_null(1));
    }

    #[test]
    fn flipped_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (_, file) = write_block(dir.path(), "b0.arrow", &batch()).unwrap();
        let path = dir.path().join("b0.arrow");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(map_block(dir.path(), &file, true)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
    }

    #[test]
    fn truncated_block_is_refused_before_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let (_, file) = write_block(dir.path(), "b0.arrow", &batch()).unwrap();
        let path = dir.path().join("b0.arrow");
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(file.len_bytes - 7).unwrap();
        assert!(map_block(dir.path(), &file, true)
            .unwrap_err()
            .to_string()
            .contains("length"));
    }
}
