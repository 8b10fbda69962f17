//! Shared memory: sealed blocks as Arrow IPC files under `/dev/shm`, mapped
//! and decoded in place, and the string views those blocks keep strings as
//! ([`string_views`]). All of the leaf's `unsafe` code lives here.
//!
//! ```text
//!  seal:  RecordBatches ──FileWriter (64-byte aligned, crc32c on the way)──write──> /dev/shm/.../bN.arrow
//!                                                                                     │ mmap (read-only, shared)
//!  scan:  RecordBatches whose buffers point into the mapping  <──FileDecoder──────────┘ (require_alignment)
//! ```
//!
//! A successor process maps the same files ([`Unchecked`]) and decodes them
//! the same way once each has passed its checksum: no copy, so adopting a
//! leaf's data costs what mapping it costs, and checking it can wait until
//! just before its first use. Block files are written whole before they are mapped and are never
//! truncated or rewritten while mapped (a truncated mapping would SIGBUS);
//! they are removed only when no process will map them again.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray, StringViewArray};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::SchemaRef;
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

/// Encodes `batches` (each of `schema`) as one IPC file at `dir/name`,
/// straight into the file (no copy of the file's bytes on the heap), and
/// returns them read back from its mapping (zero-copy) with the file's
/// description.
pub fn write_block(
    dir: &Path,
    name: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(Vec<RecordBatch>, BlockFile)> {
    let path = dir.join(name);
    let file = File::create(&path).map_err(|e| io_err(&path, e))?;
    let mut out = Summed {
        inner: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
        crc32c: 0,
        len_bytes: 0,
    };
    {
        let mut writer = FileWriter::try_new(&mut out, schema)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    out.inner.flush().map_err(|e| io_err(&path, e))?;
    let description = BlockFile {
        name: name.to_string(),
        len_bytes: out.len_bytes,
        crc32c: out.crc32c,
    };
    drop(out);
    // Just written from batches in memory: no checksum pass and no
    // validation here (a successor checks both before its first use).
    let buffer = Buffer::from(bytes::Bytes::from_owner(map_file(
        &path,
        description.len_bytes,
        true,
    )?));
    let batches = decode_batches(&buffer, Written::ByUs).map_err(|e| io_err(&path, e))?;
    Ok((batches, description))
}

/// Bytes buffered between the IPC writer's small pieces (message headers,
/// padding) and the file; column buffers larger than this go straight
/// through.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// A writer that sums (crc32c) and counts the bytes it passes on.
struct Summed<W> {
    inner: W,
    crc32c: u32,
    len_bytes: u64,
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc32c = crc32c::crc32c_append(self.crc32c, &buf[..n]);
        self.len_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Maps `path`, which must be `len_bytes` long. With `populate`, the kernel
/// maps every page at once instead of one fault at a time.
fn map_file(path: &Path, len_bytes: u64, populate: bool) -> Result<memmap2::Mmap> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let len = f.metadata().map_err(|e| io_err(path, e))?.len();
    if len != len_bytes {
        return Err(io_err(path, format!("length {len}, expected {len_bytes}")));
    }
    let mut options = memmap2::MmapOptions::new();
    if populate {
        options.populate();
    }
    // SAFETY: the file was written whole before this mapping and is never
    // truncated or written again while any process maps it (module docs), so
    // the mapped bytes stay valid and unchanged for the mapping's lifetime.
    unsafe { options.map(&f) }.map_err(|e| io_err(path, e))
}

/// A predecessor's block file, mapped (its length checked) but not yet
/// read: adopting a segment maps every block this way, which costs no more
/// than the number of files; the bytes are checked on first use.
#[derive(Debug)]
pub struct Unchecked {
    path: PathBuf,
    mmap: memmap2::Mmap,
    crc32c: u32,
}

impl Unchecked {
    /// Maps `dir/file.name`; fails when the file is missing or its length
    /// is not the one listed.
    pub fn map(dir: &Path, file: &BlockFile) -> Result<Unchecked> {
        let path = dir.join(&file.name);
        let mmap = map_file(&path, file.len_bytes, false)?;
        Ok(Unchecked {
            path,
            mmap,
            crc32c: file.crc32c,
        })
    }

    /// Checks the bytes against the listed crc32c, then decodes the batches
    /// in place (Arrow validates the layout and every value as it decodes).
    pub fn check(self) -> Result<Vec<RecordBatch>> {
        // Read the pages in ahead of the sum rather than one fault at a
        // time (a hint: older kernels refuse it, and faults still work).
        let _ = self.mmap.advise(memmap2::Advice::PopulateRead);
        let crc = crc32c::crc32c(&self.mmap);
        if crc != self.crc32c {
            return Err(io_err(&self.path, "checksum mismatch"));
        }
        let buffer = Buffer::from(bytes::Bytes::from_owner(self.mmap));
        decode_batches(&buffer, Written::ByAnother).map_err(|e| io_err(&self.path, e))
    }
}

/// Who wrote a block file, which decides how much of it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// This process, a moment ago, from valid arrays: read back as written.
    /// Validating would cost as much as the sealing itself: a UTF-8 check
    /// per string view.
    ByUs,
    /// A predecessor: every buffer and value is validated.
    ByAnother,
}

/// Reads the record batches of an IPC file held in `buffer` (at least one),
/// without copying: alignment is required, so a misaligned file is an error
/// rather than a silent copy.
fn decode_batches(buffer: &Buffer, written: Written) -> Result<Vec<RecordBatch>> {
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
    if written == Written::ByUs {
        // SAFETY: `write_block` wrote this file just now with Arrow's
        // FileWriter from record batches in memory, which are valid arrays
        // (each was validated when it was decoded from its client's frame or
        // built by Arrow's checked constructors); the file is in the leaf's
        // own folder and is never written again while mapped (module docs),
        // so the bytes decoded are the valid ones written.
        decoder = unsafe { decoder.with_skip_validation(true) };
    }
    for block in footer.dictionaries().iter().flatten() {
        let (offset, len) =
            block_range(block, buffer.len()).ok_or_else(|| bad("dictionary out of range"))?;
        decoder.read_dictionary(block, &buffer.slice_with_length(offset, len))?;
    }
    let blocks = footer
        .recordBatches()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| bad("no record batches"))?;
    let mut batches = Vec::with_capacity(blocks.len());
    for block in blocks.iter() {
        let (offset, len) =
            block_range(block, buffer.len()).ok_or_else(|| bad("batch out of range"))?;
        batches.push(
            decoder
                .read_record_batch(block, &buffer.slice_with_length(offset, len))?
                .ok_or_else(|| bad("empty batch"))?,
        );
    }
    Ok(batches)
}

/// `strings` as string views, the form blocks keep strings in: a value of
/// up to 12 bytes is held inside its 16-byte view, a longer one is pointed
/// at in `strings`' own byte buffer (shared, not copied), which the result
/// keeps only when some value needs it. Same values and nulls as `strings`;
/// Arrow's general conversion goes through a builder and an out-of-line call
/// per value, which cost the leaves about 11% of their ingest samples.
pub fn string_views(strings: &StringArray) -> StringViewArray {
    let bytes = strings.value_data();
    if u32::try_from(bytes.len()).is_err() {
        // A view addresses its bytes with 32 bits (never reached: frames
        // and blocks are far smaller).
        return StringViewArray::from(strings);
    }
    let mut long = false;
    let views: Vec<u128> = strings
        .value_offsets()
        .windows(2)
        .map(|w| {
            let (start, end) = (w[0] as usize, w[1] as usize);
            let len = end - start;
            if len <= 12 {
                inline_view(bytes, start, len)
            } else {
                long = true;
                let prefix = u32::from_le_bytes(bytes[start..start + 4].try_into().expect("4"));
                len as u128 | (prefix as u128) << 32 | (start as u128) << 96
            }
        })
        .collect();
    let buffers = if long {
        vec![strings.values().clone()]
    } else {
        vec![]
    };
    // SAFETY: `StringViewArray::try_new` would accept these parts. Every
    // view describes one value of `strings`, a valid string array (it
    // passed Arrow's validation when it was decoded or built), whose
    // offsets lie within `bytes` and cut it into valid UTF-8: a value of up
    // to 12 bytes is copied whole into its view with its length and zero
    // padding; a longer one gets its length, its first 4 bytes, buffer 0
    // (`bytes`, kept in `buffers` whenever such a view exists) and its
    // start, below `u32::MAX` (checked above). The nulls are `strings`'s.
    unsafe { StringViewArray::new_unchecked(views.into(), buffers, strings.nulls().cloned()) }
}

/// The view of the `len <= 12` bytes at `bytes[start..]`: length in the low
/// 32 bits, the bytes after it, zeros above. Reads 16 bytes at once where
/// the buffer has them (one load and a mask instead of a copy per length).
#[inline]
fn inline_view(bytes: &[u8], start: usize, len: usize) -> u128 {
    let data = match bytes.get(start..start + 16) {
        Some(sixteen) => u128::from_le_bytes(sixteen.try_into().expect("16")),
        None => {
            let mut tail = [0u8; 16];
            tail[..len].copy_from_slice(&bytes[start..start + len]);
            u128::from_le_bytes(tail)
        }
    };
    let mask = (1u128 << (len * 8)) - 1;
    len as u128 | (data & mask) << 32
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
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]))
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            schema(),
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
        let (mapped, file) = write_block(dir.path(), "b0.arrow", &schema(), &[batch()]).unwrap();
        assert_eq!(mapped, vec![batch()]);
        let again = Unchecked::map(dir.path(), &file).unwrap().check().unwrap();
        assert_eq!(again, vec![batch()]);
        assert!(again[0].column(0).is_null(1));
    }

    #[test]
    fn a_block_of_several_batches_reads_back_as_those_batches() {
        let dir = tempfile::tempdir().unwrap();
        let batches = vec![batch(), batch().slice(1, 2), batch()];
        let (mapped, file) = write_block(dir.path(), "b0.arrow", &schema(), &batches).unwrap();
        assert_eq!(mapped, batches);
        let again = Unchecked::map(dir.path(), &file).unwrap().check().unwrap();
        assert_eq!(again, batches);
        let on_disk = std::fs::read(dir.path().join("b0.arrow")).unwrap();
        assert_eq!(file.len_bytes, on_disk.len() as u64);
        assert_eq!(file.crc32c, crc32c::crc32c(&on_disk));
    }

    #[test]
    fn blocks_of_every_column_type_and_shape_read_back_from_their_mappings() {
        use datafusion::arrow::array::{
            ArrayRef, BooleanArray, Float64Array, ListBuilder, StringBuilder,
            TimestampMicrosecondArray,
        };
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let dir = tempfile::tempdir().unwrap();
        for round in 0..40 {
            let rows = [0, 1, 7, 1000, 70_000][round % 5];
            let columns = rng.random_range(1..60);
            let mut fields = Vec::new();
            let mut arrays: Vec<ArrayRef> = Vec::new();
            for c in 0..columns {
                let null = rng.random_range(0.0..1.0);
                let some = |rng: &mut rand::rngs::StdRng| rng.random_bool(1.0 - null);
                let (t, a): (DataType, ArrayRef) = match c % 6 {
                    0 => (
                        DataType::Int64,
                        Arc::new(Int64Array::from_iter(
                            (0..rows).map(|_| some(&mut rng).then(|| rng.random())),
                        )),
                    ),
                    1 => (
                        DataType::Float64,
                        Arc::new(Float64Array::from_iter(
                            (0..rows).map(|_| some(&mut rng).then(|| rng.random())),
                        )),
                    ),
                    2 => (
                        DataType::Boolean,
                        Arc::new(BooleanArray::from_iter(
                            (0..rows).map(|_| some(&mut rng).then(|| rng.random())),
                        )),
                    ),
                    3 => {
                        let len = rng.random_range(0..300);
                        (
                            DataType::Utf8,
                            Arc::new(StringArray::from_iter((0..rows).map(|_| {
                                some(&mut rng).then(|| "é".repeat(rng.random_range(0..=len)))
                            }))),
                        )
                    }
                    4 => {
                        let mut b = ListBuilder::new(StringBuilder::new());
                        for _ in 0..rows {
                            for _ in 0..rng.random_range(0..4) {
                                b.values().append_value("tag");
                            }
                            b.append(some(&mut rng));
                        }
                        let a = b.finish();
                        (a.data_type().clone(), Arc::new(a))
                    }
                    _ => (
                        DataType::Timestamp(
                            datafusion::arrow::datatypes::TimeUnit::Microsecond,
                            None,
                        ),
                        Arc::new(TimestampMicrosecondArray::from_iter(
                            (0..rows).map(|_| some(&mut rng).then(|| rng.random())),
                        )),
                    ),
                };
                fields.push(Field::new(format!("column_{c}_{}", "x".repeat(c)), t, true));
                arrays.push(a);
            }
            let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
            let name = format!("b{round}.arrow");
            let (mapped, file) = write_block(
                dir.path(),
                &name,
                batch.schema_ref(),
                std::slice::from_ref(&batch),
            )
            .unwrap();
            assert_eq!(mapped, vec![batch.clone()]);
            let again = Unchecked::map(dir.path(), &file).unwrap().check().unwrap();
            assert_eq!(again, vec![batch]);
        }
    }

    #[test]
    fn flipped_byte_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (_, file) = write_block(dir.path(), "b0.arrow", &schema(), &[batch()]).unwrap();
        let path = dir.path().join("b0.arrow");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let mapped = Unchecked::map(dir.path(), &file).unwrap();
        assert!(mapped.check().unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn truncated_block_is_refused_before_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let (_, file) = write_block(dir.path(), "b0.arrow", &schema(), &[batch()]).unwrap();
        let path = dir.path().join("b0.arrow");
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(file.len_bytes - 7).unwrap();
        assert!(Unchecked::map(dir.path(), &file)
            .unwrap_err()
            .to_string()
            .contains("length"));
    }

    #[test]
    fn string_views_hold_the_same_values_and_nulls_as_the_strings() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let alphabet = ["a", "é", "日", "🦀", "z", "0", " "];
        let values: Vec<Option<String>> = (0..5000)
            .map(|_| {
                rng.random_bool(6.0 / 7.0).then(|| {
                    let chars = rng.random_range(0..20);
                    (0..chars)
                        .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                        .collect()
                })
            })
            .collect();
        let strings = StringArray::from(values.clone());
        // Whole, sliced (offsets not starting at 0), short values only
        // (no buffer kept), and the last value at the very end of the bytes.
        let short: StringArray = ["", "a", "twelve bytes", "é"]
            .into_iter()
            .map(Some)
            .collect();
        for array in [strings.clone(), strings.slice(1234, 2000), short] {
            let views = string_views(&array);
            assert_eq!(views.len(), array.len());
            assert_eq!(views.nulls(), array.nulls());
            let expected: Vec<Option<&str>> = array.iter().collect();
            let got: Vec<Option<&str>> = views.iter().collect();
            assert_eq!(got, expected);
            // What Arrow's own checks say of the parts.
            let (v, b, n) = views.clone().into_parts();
            StringViewArray::try_new(v, b, n).expect("valid views");
            let long = array.iter().flatten().any(|s| s.len() > 12);
            assert_eq!(views.data_buffers().len(), usize::from(long));
        }
    }
}
