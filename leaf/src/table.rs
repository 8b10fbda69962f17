//! A leaf's table: sealed blocks of bounded rows plus one open block.
//!
//! ```text
//!  ingest batch ──append──> open block (its batches) ──seal at BLOCK_ROWS_MAX──> sealed Block
//!                                                    (runs under BLOCK_BATCH_ROWS_MIN │
//!                                                     joined, the rest kept as came)  │
//!  scan(schema) <── every batch of every block and of the open block,                │
//!                   adapted to the asked schema ◄─────────────────────────────────────┘
//! ```
//!
//! Blocks are immutable and each keeps the columns its rows brought; the
//! table's schema is the union of them (int64 widened to float64 where a
//! float arrived later). A scan adapts each block to the schema asked for:
//! a column the block lacks reads as NULL, an int64 column asked as float64
//! is cast. Any other difference means the asker's schema is stale.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{new_null_array, Array, ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::array::{AsArray, Scalar, TimestampMicrosecondArray};
use datafusion::arrow::compute::kernels::cmp::gt_eq;
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, max, min};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use scuba::limits::{BLOCK_BATCH_ROWS_MIN, BLOCK_ROWS_MAX, TABLE_COLUMNS_MAX};
use scuba::schema::unify_schemas;

use crate::error::{LeafError, Result};
use crate::handoff::{BlockMeta, TableManifest};
use crate::shm::{write_block, BlockFile, Unchecked};

/// Bytes a batch's rows occupy (its slices, not the buffers they share:
/// batches decoded from IPC slice one message buffer).
pub fn batch_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size()) as u64
        })
        .sum()
}

/// Where sealed blocks live: files in a shared-memory folder, named by a
/// leaf-wide sequence number.
#[derive(Debug)]
pub struct BlockStore {
    dir: PathBuf,
    next_seq: AtomicU64,
}

impl BlockStore {
    pub fn new(dir: PathBuf, next_seq: u64) -> Self {
        BlockStore {
            dir,
            next_seq: AtomicU64::new(next_seq),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst)
    }

    fn write(&self, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Block> {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let (batches, file) =
            write_block(&self.dir, &format!("b{seq:012}.arrow"), schema, batches)?;
        Ok(Block {
            rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
            data: BlockData::Ready(batches.into()),
            memory_bytes: file.len_bytes,
            file: Some(file),
            segments: Vec::new(),
            time_min_us: None,
            time_max_us: None,
        })
    }
}

/// A sealed, immutable run of rows, as a few batches of one schema: on the
/// heap, or mapped from a file in shared memory (`file`).
#[derive(Debug)]
pub struct Block {
    data: BlockData,
    pub rows: u64,
    pub memory_bytes: u64,
    pub file: Option<BlockFile>,
    /// Log records its rows came from.
    pub segments: SegmentCounts,
    pub time_min_us: Option<i64>,
    pub time_max_us: Option<i64>,
}

#[derive(Debug)]
enum BlockData {
    Ready(Arc<[RecordBatch]>),
    /// Adopted from a predecessor: checked on first use (a scan, or the
    /// leaf's pass over every adopted block), under the lock so it is
    /// checked once.
    Adopted(Mutex<Adopted>),
}

#[derive(Debug)]
enum Adopted {
    Unchecked(Unchecked),
    Checked(Arc<[RecordBatch]>),
    Refused(String),
}

impl Block {
    /// A block on the heap; like one from [`BlockStore::write`], its
    /// segments and time range are the sealer's to fill in.
    fn new(batches: Vec<RecordBatch>) -> Self {
        Block {
            rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
            memory_bytes: batches.iter().map(batch_bytes).sum(),
            data: BlockData::Ready(batches.into()),
            file: None,
            segments: Vec::new(),
            time_min_us: None,
            time_max_us: None,
        }
    }

    /// The block's rows (shared, not copied); an adopted block is checked
    /// first (crc32c, then Arrow's validation), and one that fails is never
    /// read.
    pub fn batches(&self) -> Result<Arc<[RecordBatch]>> {
        let lock = match &self.data {
            BlockData::Ready(batches) => return Ok(Arc::clone(batches)),
            BlockData::Adopted(lock) => lock,
        };
        let mut adopted = lock.lock().expect("block check poisoned");
        let unchecked =
            match std::mem::replace(&mut *adopted, Adopted::Refused("its check panicked".into())) {
                Adopted::Unchecked(u) => u,
                done => {
                    *adopted = done;
                    return match &*adopted {
                        Adopted::Checked(batches) => Ok(Arc::clone(batches)),
                        Adopted::Refused(reason) => Err(self.refused(reason)),
                        Adopted::Unchecked(_) => unreachable!("replaced above"),
                    };
                }
            };
        // A panic while decoding bytes nobody vouched for yet refuses the
        // block (and keeps this lock usable) instead of killing the check.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unchecked.check()))
            .unwrap_or_else(|_| Err(LeafError::Internal("checking the block panicked".into())));
        let rows =
            |batches: &[RecordBatch]| -> u64 { batches.iter().map(|b| b.num_rows() as u64).sum() };
        match checked {
            Ok(batches) if rows(&batches) == self.rows => {
                let batches: Arc<[RecordBatch]> = batches.into();
                *adopted = Adopted::Checked(Arc::clone(&batches));
                Ok(batches)
            }
            Ok(batches) => {
                let reason = format!("{} rows, the manifest says {}", rows(&batches), self.rows);
                let e = self.refused(&reason);
                *adopted = Adopted::Refused(reason);
                Err(e)
            }
            Err(e) => {
                let reason = e.to_string();
                *adopted = Adopted::Refused(reason.clone());
                Err(self.refused(&reason))
            }
        }
    }

    /// Whether reading this block needs no check any more (false while
    /// another thread is checking it: this never waits).
    pub fn is_checked(&self) -> bool {
        match &self.data {
            BlockData::Ready(_) => true,
            BlockData::Adopted(lock) => match lock.try_lock() {
                Ok(adopted) => matches!(*adopted, Adopted::Checked(_)),
                Err(_) => false,
            },
        }
    }

    fn refused(&self, reason: &str) -> LeafError {
        LeafError::BlockRefused {
            block: self
                .file
                .as_ref()
                .map_or("?", |f| f.name.as_str())
                .to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Checks every block in `blocks` on all cores, as a leaf does right after
/// adopting a segment; the first refusal wins.
pub fn check_blocks(blocks: &[Arc<Block>]) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(blocks.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed: Mutex<Option<LeafError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while failed.lock().expect("poisoned").is_none() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(block) = blocks.get(i) else { break };
                    if let Err(e) = block.batches() {
                        failed.lock().expect("poisoned").get_or_insert(e);
                    }
                }
            });
        }
    });
    match failed.into_inner().expect("poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The records of the disk log a block's rows came from, by segment
/// (segment id, records), so their segments can be released when it expires.
pub type SegmentCounts = Vec<(u64, u64)>;

fn count_segments(segments: &[u64]) -> SegmentCounts {
    let mut counts: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for s in segments {
        *counts.entry(*s).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// The first microsecond-timestamp column: a table's time column (the only
/// timestamp column ingest creates).
fn time_column(batch: &RecordBatch) -> Option<&TimestampMicrosecondArray> {
    batch
        .columns()
        .iter()
        .find_map(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
}

/// Oldest and newest time in some batches.
pub fn time_range(batches: &[RecordBatch]) -> (Option<i64>, Option<i64>) {
    let (mut lo, mut hi) = (None, None);
    for t in batches.iter().filter_map(time_column) {
        lo = lo.into_iter().chain(min(t)).min();
        hi = hi.into_iter().chain(max(t)).max();
    }
    (lo, hi)
}

/// Rows of `batch` at or after `cutoff_us` (all of them when it has no time).
fn keep_since(batch: &RecordBatch, cutoff_us: i64) -> Result<RecordBatch> {
    let Some(t) = time_column(batch) else {
        return Ok(batch.clone());
    };
    let cutoff = TimestampMicrosecondArray::from(vec![cutoff_us]);
    let mask = gt_eq(t, &Scalar::new(&cutoff))?;
    Ok(filter_record_batch(batch, &mask)?)
}

/// What expiring blocks freed, for the leaf to release in the log and in
/// shared memory.
#[derive(Debug, Default)]
pub struct Expired {
    pub rows: u64,
    pub blocks: usize,
    pub segments: SegmentCounts,
    pub files: Vec<String>,
}

impl Expired {
    fn add(&mut self, block: &Block) {
        self.rows += block.rows;
        self.blocks += 1;
        self.segments.extend(block.segments.iter().copied());
        if let Some(f) = &block.file {
            self.files.push(f.name.clone());
        }
    }
}

#[derive(Debug)]
pub struct Table {
    name: String,
    schema: SchemaRef,
    sealed: Vec<Arc<Block>>,
    open: Vec<RecordBatch>,
    /// The log segment of each open batch (none without a log).
    open_segments: Vec<u64>,
    open_rows: usize,
    open_bytes: u64,
    rows: u64,
    sealed_bytes: u64,
    rows_expired: u64,
}

impl Table {
    pub fn new(name: &str) -> Self {
        Table {
            name: name.to_string(),
            schema: Arc::new(Schema::empty()),
            sealed: Vec::new(),
            open: Vec::new(),
            open_segments: Vec::new(),
            open_rows: 0,
            open_bytes: 0,
            rows: 0,
            sealed_bytes: 0,
            rows_expired: 0,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn rows_expired(&self) -> u64 {
        self.rows_expired
    }

    pub fn memory_bytes(&self) -> u64 {
        self.sealed_bytes + self.open_bytes
    }

    pub fn sealed_blocks(&self) -> &[Arc<Block>] {
        &self.sealed
    }

    /// The schema this table would have after taking `batch`, or the type
    /// conflict that refuses it. Changes nothing.
    pub fn check(&self, batch: &RecordBatch) -> Result<SchemaRef> {
        let unified = unify_schemas(&self.name, &self.schema, batch.schema_ref())?;
        if unified.fields().len() > TABLE_COLUMNS_MAX {
            return Err(scuba::Error::TooManyColumns {
                table: self.name.clone(),
                max: TABLE_COLUMNS_MAX,
            }
            .into());
        }
        Ok(unified)
    }

    /// Appends a batch already checked with [`Table::check`] (logged in
    /// `segment`, if there is a log); seals the open block into `store` (or
    /// the heap) once it is full, dropping rows older than `cutoff_us`.
    /// Returns what sealing expired.
    pub fn append(
        &mut self,
        batch: RecordBatch,
        unified: SchemaRef,
        store: Option<&BlockStore>,
        segment: Option<u64>,
        cutoff_us: Option<i64>,
    ) -> Result<Expired> {
        self.schema = unified;
        self.rows += batch.num_rows() as u64;
        self.open_rows += batch.num_rows();
        self.open_bytes += batch_bytes(&batch);
        self.open.push(batch);
        self.open_segments.extend(segment);
        if self.open_rows >= BLOCK_ROWS_MAX {
            return self.seal(store, cutoff_us);
        }
        Ok(Expired::default())
    }

    /// Seals the open batches into one block (nothing when empty), written
    /// to shared memory when there is a `store`. Rows older than `cutoff_us`
    /// are dropped on the way; a block left empty releases its records.
    pub fn seal(&mut self, store: Option<&BlockStore>, cutoff_us: Option<i64>) -> Result<Expired> {
        let mut expired = Expired::default();
        if self.open.is_empty() {
            return Ok(expired);
        }
        let mut schema = Arc::new(Schema::empty());
        for b in &self.open {
            schema = unify_schemas(&self.name, &schema, b.schema_ref())?;
        }
        // The open batches go into the block as they are (no copy on the
        // heap: the store writes them straight to its file); only runs of
        // small ones are joined, so a block never holds many tiny batches.
        let mut batches = Vec::new();
        let mut run: Vec<RecordBatch> = Vec::new();
        let mut run_rows = 0;
        let mut kept_rows = 0;
        for open in &self.open {
            let mut batch = adapt(open, &schema)?;
            if let Some(cutoff) = cutoff_us {
                batch = keep_since(&batch, cutoff)?;
            }
            if batch.num_rows() == 0 {
                continue;
            }
            kept_rows += batch.num_rows();
            run_rows += batch.num_rows();
            run.push(batch);
            if run_rows >= BLOCK_BATCH_ROWS_MIN {
                batches.push(join(&schema, std::mem::take(&mut run))?);
                run_rows = 0;
            }
        }
        if !run.is_empty() {
            batches.push(join(&schema, run)?);
        }
        expired.rows = (self.open_rows - kept_rows) as u64;
        let segments = count_segments(&self.open_segments);
        self.rows -= expired.rows;
        self.rows_expired += expired.rows;
        if batches.is_empty() {
            expired.segments = segments;
        } else {
            let time = time_range(&batches);
            let mut block = match store {
                Some(store) => store.write(&schema, &batches)?,
                None => Block::new(batches),
            };
            block.segments = segments;
            (block.time_min_us, block.time_max_us) = time;
            self.sealed_bytes += block.memory_bytes;
            self.sealed.push(Arc::new(block));
        }
        self.open.clear();
        self.open_segments.clear();
        self.open_rows = 0;
        self.open_bytes = 0;
        Ok(expired)
    }

    /// Removes sealed blocks whose newest row is older than `cutoff_us`.
    pub fn expire_before(&mut self, cutoff_us: i64) -> Expired {
        let mut expired = Expired::default();
        let (old, keep): (Vec<_>, Vec<_>) = self
            .sealed
            .drain(..)
            .partition(|b| b.time_max_us.is_some_and(|t| t < cutoff_us));
        self.sealed = keep;
        for b in &old {
            self.forget(b, &mut expired);
        }
        expired
    }

    /// The newest time of this table's oldest sealed block.
    pub fn oldest_block_time(&self) -> Option<i64> {
        self.sealed
            .iter()
            .map(|b| b.time_max_us.unwrap_or(i64::MIN))
            .min()
    }

    /// Removes the sealed block whose newest row is oldest.
    pub fn expire_oldest_block(&mut self) -> Expired {
        let mut expired = Expired::default();
        let oldest = self
            .sealed
            .iter()
            .enumerate()
            .min_by_key(|(_, b)| b.time_max_us.unwrap_or(i64::MIN))
            .map(|(i, _)| i);
        if let Some(i) = oldest {
            let b = self.sealed.remove(i);
            self.forget(&b, &mut expired);
        }
        expired
    }

    fn forget(&mut self, block: &Block, expired: &mut Expired) {
        expired.add(block);
        self.rows -= block.rows;
        self.rows_expired += block.rows;
        self.sealed_bytes -= block.memory_bytes;
    }

    /// What a successor needs to adopt this table (call after sealing).
    pub fn manifest(&self) -> Result<TableManifest> {
        if !self.open.is_empty() {
            return Err(LeafError::Internal(format!(
                "table `{}` has an open block",
                self.name
            )));
        }
        let blocks = self
            .sealed
            .iter()
            .map(|b| {
                let file = b.file.clone().ok_or_else(|| {
                    LeafError::Internal("a heap block cannot be handed off".into())
                })?;
                Ok(BlockMeta {
                    file,
                    rows: b.rows,
                    segments: b.segments.clone(),
                    time_min_us: b.time_min_us,
                    time_max_us: b.time_max_us,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TableManifest {
            name: self.name.clone(),
            schema_ipc: scuba::ipc::schema_to_ipc(&self.schema)?,
            rows_expired: self.rows_expired,
            blocks,
        })
    }

    /// Rebuilds a table from a hand-off manifest, mapping every block in
    /// `dir` (lengths checked now; contents before each block's first use,
    /// see [`Block::batch`]).
    pub fn adopt(manifest: &TableManifest, dir: &Path) -> Result<Table> {
        let mut table = Table::new(&manifest.name);
        table.schema = scuba::ipc::ipc_to_schema(&manifest.schema_ipc)?;
        table.rows_expired = manifest.rows_expired;
        for meta in &manifest.blocks {
            let unchecked = Unchecked::map(dir, &meta.file)?;
            table.rows += meta.rows;
            table.sealed_bytes += meta.file.len_bytes;
            table.sealed.push(Arc::new(Block {
                data: BlockData::Adopted(Mutex::new(Adopted::Unchecked(unchecked))),
                rows: meta.rows,
                memory_bytes: meta.file.len_bytes,
                file: Some(meta.file.clone()),
                segments: meta.segments.clone(),
                time_min_us: meta.time_min_us,
                time_max_us: meta.time_max_us,
            }));
        }
        Ok(table)
    }

    /// Every row at or after `cutoff_us` (all rows without one), adapted to
    /// `schema` (the table's schema as the asker knows it, projected). Fails
    /// when the asker's schema is stale.
    pub fn scan(&self, schema: &SchemaRef, cutoff_us: Option<i64>) -> Result<Vec<RecordBatch>> {
        for field in schema.fields() {
            if let Ok(ours) = self.schema.field_with_name(field.name()) {
                if !castable(ours.data_type(), field.data_type()) {
                    return Err(LeafError::StaleSchema {
                        table: self.name.clone(),
                        column: field.name().clone(),
                    });
                }
            }
        }
        let mut out = Vec::with_capacity(self.sealed.len() + self.open.len());
        for block in &self.sealed {
            let cutoff = match cutoff_us {
                Some(c) if block.time_max_us.is_some_and(|t| t < c) => continue,
                Some(c) if block.time_min_us.is_some_and(|t| t < c) => Some(c),
                _ => None,
            };
            for batch in block.batches()?.iter() {
                match cutoff {
                    Some(c) => out.push(adapt(&keep_since(batch, c)?, schema)?),
                    None => out.push(adapt(batch, schema)?),
                }
            }
        }
        for batch in &self.open {
            match cutoff_us {
                Some(c) => out.push(adapt(&keep_since(batch, c)?, schema)?),
                None => out.push(adapt(batch, schema)?),
            }
        }
        Ok(out)
    }
}

/// `batches` (of `schema`) as one batch: copied together when there are
/// several.
fn join(schema: &SchemaRef, mut batches: Vec<RecordBatch>) -> Result<RecordBatch> {
    Ok(match batches.len() {
        1 => batches.pop().expect("one batch"),
        _ => concat_batches(schema, &batches)?,
    })
}

/// `batch` with its plain strings (`Utf8`, as clients send them) turned into
/// string views (`Utf8View`, as leaves keep them; see
/// [`crate::shm::string_views`]). Every other column is kept as it came.
pub fn strings_as_views(batch: RecordBatch) -> Result<RecordBatch> {
    if !batch
        .schema_ref()
        .fields()
        .iter()
        .any(|f| f.data_type() == &DataType::Utf8)
    {
        return Ok(batch);
    }
    let schema = batch.schema();
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => f.as_ref().clone(),
        })
        .collect();
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8 => Arc::new(crate::shm::string_views(c.as_string::<i32>())) as ArrayRef,
            _ => Arc::clone(c),
        })
        .collect();
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// Whether a column stored as `ours` may be read as `asked`.
fn castable(ours: &DataType, asked: &DataType) -> bool {
    ours == asked || (ours == &DataType::Int64 && asked == &DataType::Float64)
}

/// `batch` with exactly the columns of `schema`: missing ones NULL, int64
/// cast to float64 where asked.
pub fn adapt(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema_ref() == schema {
        return Ok(batch.clone());
    }
    let rows = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(c) if c.data_type() == field.data_type() => Arc::clone(c),
            Some(c) if castable(c.data_type(), field.data_type()) => cast(c, field.data_type())?,
            Some(c) => {
                return Err(LeafError::Internal(format!(
                    "column `{}` is {} in a block but {} was asked",
                    field.name(),
                    c.data_type(),
                    field.data_type()
                )))
            }
            None => new_null_array(field.data_type(), rows),
        };
        columns.push(column);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Field;

    fn batch(fields: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let schema = Schema::new(
            fields
                .iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(
            Arc::new(schema),
            fields.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    fn append(t: &mut Table, b: RecordBatch) -> Result<()> {
        let unified = t.check(&b)?;
        t.append(b, unified, None, None, None).map(|_| ())
    }

    #[test]
    fn plain_strings_are_kept_as_views_and_other_columns_as_they_came() {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let names: ArrayRef = Arc::new(StringArray::from(vec![
            Some("api"),
            None,
            Some("a name longer than twelve bytes"),
        ]));
        let kept =
            strings_as_views(batch(vec![("id", Arc::clone(&ids)), ("name", names)])).unwrap();
        assert_eq!(kept.schema().field(1).data_type(), &DataType::Utf8View);
        let views = kept.column(1).as_string_view();
        let got: Vec<Option<&str>> = views.iter().collect();
        assert_eq!(
            got,
            vec![Some("api"), None, Some("a name longer than twelve bytes")]
        );
        assert!(Arc::ptr_eq(kept.column(0), &ids), "ints are not copied");

        let no_strings = batch(vec![("id", ids)]);
        let same = strings_as_views(no_strings.clone()).unwrap();
        assert_eq!(same.schema(), no_strings.schema());
    }

    #[test]
    fn column_never_seen_in_a_block_reads_as_null() {
        let mut t = Table::new("t");
        append(
            &mut t,
            batch(vec![("a", Arc::new(Int64Array::from(vec![1, 2])))]),
        )
        .unwrap();
        append(
            &mut t,
            batch(vec![("b", Arc::new(StringArray::from(vec!["x"])))]),
        )
        .unwrap();
        let out = t.scan(&t.schema(), None).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out[0].column_by_name("b").unwrap().is_null(0));
        assert!(out[1].column_by_name("a").unwrap().is_null(0));
    }

    #[test]
    fn int_blocks_read_as_float_after_widening() {
        let mut t = Table::new("t");
        append(
            &mut t,
            batch(vec![("x", Arc::new(Int64Array::from(vec![1])))]),
        )
        .unwrap();
        t.seal(None, None).unwrap();
        append(
            &mut t,
            batch(vec![("x", Arc::new(Float64Array::from(vec![2.5])))]),
        )
        .unwrap();
        assert_eq!(t.schema().field(0).data_type(), &DataType::Float64);
        let out = t.scan(&t.schema(), None).unwrap();
        let first = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(first.value(0), 1.0);
    }

    #[test]
    fn conflicting_batch_is_refused_naming_the_column() {
        let mut t = Table::new("t");
        append(
            &mut t,
            batch(vec![("x", Arc::new(Int64Array::from(vec![1])))]),
        )
        .unwrap();
        let err = append(
            &mut t,
            batch(vec![("x", Arc::new(StringArray::from(vec!["no"])))]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("column `x`"), "{err}");
        assert_eq!(t.rows(), 1);
    }

    #[test]
    fn stale_schema_is_detected_not_truncated() {
        let mut t = Table::new("t");
        append(
            &mut t,
            batch(vec![("x", Arc::new(Float64Array::from(vec![1.5])))]),
        )
        .unwrap();
        let stale = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        assert!(matches!(
            t.scan(&stale, None),
            Err(LeafError::StaleSchema { .. })
        ));
    }

    /// A table given `batches` batches of `rows` rows each, batch `i`'s
    /// one column `x` all `i`.
    fn appended(batches: i64, rows: usize) -> Table {
        let mut t = Table::new("t");
        for i in 0..batches {
            append(
                &mut t,
                batch(vec![("x", Arc::new(Int64Array::from(vec![i; rows])))]),
            )
            .unwrap();
        }
        t
    }

    #[test]
    fn sealing_keeps_every_row() {
        let t = appended(10, 10_000);
        assert_eq!(t.rows(), 100_000);
        assert_eq!(t.sealed_blocks().len(), 1);
        let total: usize = t
            .scan(&t.schema(), None)
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(total, 100_000);
    }

    fn sealed_batch_rows(t: &Table) -> Vec<usize> {
        t.sealed_blocks()[0]
            .batches()
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .collect()
    }

    #[test]
    fn sealing_keeps_big_batches_as_they_came() {
        let t = appended(7, 10_000);
        assert_eq!(sealed_batch_rows(&t), vec![10_000; 7]);
    }

    #[test]
    fn sealing_joins_runs_of_small_batches() {
        let t = appended(66, 1_000);
        let rows = sealed_batch_rows(&t);
        assert_eq!(rows.iter().sum::<usize>(), 66_000);
        let (last, joined) = rows.split_last().unwrap();
        assert!(
            joined.iter().all(|&r| r >= BLOCK_BATCH_ROWS_MIN),
            "{rows:?}"
        );
        assert!(*last <= BLOCK_BATCH_ROWS_MIN, "{rows:?}");
        let values: Vec<i64> = t
            .scan(&t.schema(), None)
            .unwrap()
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        let expected: Vec<i64> = (0..66).flat_map(|i| vec![i; 1_000]).collect();
        assert_eq!(values, expected, "rows keep their order");
    }
}
