//! One leaf: its tables, its disk log, and the work it does for clients.
//!
//! Ingest order, per batch: refuse duplicates (batch ids) -> check types ->
//! append to the log -> apply in memory (all under the write lock, so the
//! log's order is the apply order) -> fsync, shared with concurrent batches
//! (outside the lock) -> acknowledge. A batch is acknowledged only once it
//! is both in memory and in the log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::prelude::{SessionConfig, SessionContext};
use scuba::limits::{BATCH_IDS_REMEMBERED_MAX, LEAF_TABLES_MAX};
use scuba::schema::{check_name, ColumnType};
use scuba::wire::{BatchId, LeafStats, TableStats};

use crate::error::{LeafError, Result};
use crate::fragment::{decode_fragment, ScanSource};
use crate::handoff::{self, Manifest};
use crate::log::{FsyncPolicy, Log, Recovery};
use crate::table::{BlockStore, Table};

/// How a leaf runs.
#[derive(Debug, Clone)]
pub struct LeafOptions {
    pub id: String,
    /// Where the disk log lives; `None` keeps no log (embedded, throwaway).
    pub data_dir: Option<PathBuf>,
    pub memory_limit_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Where sealed blocks live in shared memory (and a hand-off segment is
    /// left for a successor); `None` keeps them on the heap.
    pub shm_dir: Option<PathBuf>,
}

impl LeafOptions {
    /// An in-memory leaf with no log, as the embedded database uses.
    pub fn in_memory(id: &str) -> Self {
        LeafOptions {
            id: id.to_string(),
            data_dir: None,
            memory_limit_bytes: default_memory_limit_bytes(),
            fsync: FsyncPolicy::Never,
            shm_dir: None,
        }
    }
}

/// The shared-memory folder for a leaf whose log is in `data_dir`: under
/// `/dev/shm` (named after the leaf and its data folder, so two clusters on
/// one machine never share one), or inside `data_dir` where there is no
/// `/dev/shm`.
pub fn default_shm_dir(id: &str, data_dir: &std::path::Path) -> PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        return data_dir.join("shm");
    }
    let canonical = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let tag = crc32c::crc32c(canonical.to_string_lossy().as_bytes());
    shm.join("scuba").join(format!("{id}-{tag:08x}"))
}

/// How a leaf came up.
#[derive(Debug, Clone, PartialEq)]
pub enum Startup {
    /// Fresh: no log, or an empty one.
    Empty,
    /// Adopted a predecessor's segment in place.
    Adopted {
        rows: u64,
        blocks: usize,
        bytes: u64,
        seconds: f64,
    },
    /// Rebuilt from the disk log (after a crash, or a refused segment).
    Recovered {
        recovery: Recovery,
        rows: u64,
        seconds: f64,
        /// Why a hand-off segment was refused, if there was one.
        refused_segment: Option<String>,
    },
}

/// What a hand-off left for the successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffSummary {
    pub rows: u64,
    pub blocks: usize,
    pub bytes: u64,
}

/// A quarter of the machine's memory.
pub fn default_memory_limit_bytes() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30);
    total / 4
}

/// What an ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    pub rows: u64,
    /// The batch id was seen before: nothing was applied again.
    pub duplicate: bool,
    pub memory_free_bytes: u64,
}

#[derive(Default)]
struct State {
    tables: HashMap<String, Table>,
    batch_ids: HashSet<BatchId>,
    batch_order: VecDeque<BatchId>,
}

impl State {
    fn remember(&mut self, id: BatchId) {
        if self.batch_ids.insert(id) {
            self.batch_order.push_back(id);
            if self.batch_order.len() > BATCH_IDS_REMEMBERED_MAX {
                if let Some(old) = self.batch_order.pop_front() {
                    self.batch_ids.remove(&old);
                }
            }
        }
    }

    fn memory_bytes(&self) -> u64 {
        self.tables.values().map(Table::memory_bytes).sum()
    }

    /// Checks and applies one decoded batch; nothing changes on error.
    fn apply(
        &mut self,
        table: &str,
        batches: Vec<RecordBatch>,
        store: Option<&BlockStore>,
    ) -> Result<u64> {
        if !self.tables.contains_key(table) && self.tables.len() >= LEAF_TABLES_MAX {
            return Err(LeafError::TooManyTables {
                max: LEAF_TABLES_MAX,
            });
        }
        let t = self
            .tables
            .entry(table.to_string())
            .or_insert_with(|| Table::new(table));
        let mut rows = 0;
        for batch in batches {
            let unified = t.check(&batch)?;
            rows += batch.num_rows() as u64;
            t.append(batch, unified, store)?;
        }
        Ok(rows)
    }
}

pub struct Leaf {
    options: LeafOptions,
    state: RwLock<State>,
    log: Option<Log>,
    store: Option<BlockStore>,
    accepting_writes: AtomicBool,
    handed_off: AtomicBool,
    exit: tokio::sync::Notify,
    session: SessionContext,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("id", &self.options.id)
            .finish()
    }
}

/// Validates a batch from an untrusted client: names and types.
fn decode_batch(table: &str, ipc: &[u8]) -> Result<Vec<RecordBatch>> {
    check_name(table)?;
    let (schema, batches) = scuba::ipc::ipc_to_batches(ipc)?;
    for field in schema.fields() {
        check_name(field.name())?;
        if ColumnType::from_arrow(field.data_type()).is_none() {
            return Err(scuba::Error::TypeConflict {
                table: table.to_string(),
                column: field.name().clone(),
                expected: "int64, float64, bool, string, tags or timestamp".into(),
                found: field.data_type().to_string(),
            }
            .into());
        }
    }
    Ok(batches)
}

impl Leaf {
    /// Opens a leaf: adopts a predecessor's hand-off segment when there is a
    /// valid one, else rebuilds its tables from its disk log (if it has one).
    pub fn open(options: LeafOptions) -> Result<(Arc<Leaf>, Startup)> {
        let started = std::time::Instant::now();
        let mut refused_segment = None;
        let mut adopted: Option<(State, Manifest, Log)> = None;
        if let Some(dir) = &options.shm_dir {
            std::fs::create_dir_all(dir)?;
            match handoff::read(dir) {
                Ok(Some(manifest)) => match adopt(&options, dir, &manifest) {
                    Ok((state, log)) => adopted = Some((state, manifest, log)),
                    Err(e) => refused_segment = Some(e.to_string()),
                },
                Ok(None) => {}
                Err(reason) => refused_segment = Some(reason),
            }
            if let Some(reason) = &refused_segment {
                tracing::warn!(leaf = %options.id, "hand-off segment refused: {reason}; recovering from the disk log");
            }
            match &adopted {
                Some((_, manifest, _)) => {
                    // Adopted: nothing may adopt this segment again.
                    handoff::retire(dir);
                    remove_unlisted(dir, manifest);
                }
                None => clear_dir(dir),
            }
        }
        let store = options.shm_dir.as_ref().map(|dir| {
            BlockStore::new(
                dir.clone(),
                adopted.as_ref().map_or(1, |(_, m, _)| m.next_block_seq),
            )
        });

        let (state, log, startup) = if let Some((state, manifest, log)) = adopted {
            let rows = state.tables.values().map(Table::rows).sum();
            let blocks = manifest.tables.iter().map(|t| t.blocks.len()).sum();
            let bytes = manifest
                .tables
                .iter()
                .flat_map(|t| &t.blocks)
                .map(|b| b.len_bytes)
                .sum();
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(leaf = %options.id, rows, blocks, bytes, seconds, "adopted the hand-off segment in place");
            (
                state,
                Some(log),
                Startup::Adopted {
                    rows,
                    blocks,
                    bytes,
                    seconds,
                },
            )
        } else if let Some(dir) = &options.data_dir {
            let mut state = State::default();
            let (log, recovery) = Log::open(&dir.join("log"), options.fsync, |record| {
                let batches = decode_batch(&record.header.table, &record.ipc)?;
                // A record that no longer fits (a type conflict that raced
                // it in) was refused when first sent; skip it again.
                if let Err(e) = state.apply(&record.header.table, batches, store.as_ref()) {
                    tracing::warn!("skipping a log record that does not apply: {e}");
                }
                state.remember(record.header.batch_id);
                Ok(())
            })?;
            let rows: u64 = state.tables.values().map(Table::rows).sum();
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                leaf = %options.id,
                records = recovery.records,
                rows,
                bytes = recovery.bytes,
                seconds,
                rows_per_s = rows as f64 / seconds.max(1e-9),
                "recovered from the disk log"
            );
            let startup = if recovery.records == 0 && refused_segment.is_none() {
                Startup::Empty
            } else {
                Startup::Recovered {
                    recovery,
                    rows,
                    seconds,
                    refused_segment,
                }
            };
            (state, Some(log), startup)
        } else {
            (State::default(), None, Startup::Empty)
        };
        let config =
            SessionConfig::new().with_target_partitions(crate::fragment::LEAF_SCAN_PARTITIONS);
        let leaf = Leaf {
            options,
            state: RwLock::new(state),
            log,
            store,
            accepting_writes: AtomicBool::new(true),
            handed_off: AtomicBool::new(false),
            exit: tokio::sync::Notify::new(),
            session: SessionContext::new_with_config(config),
        };
        Ok((Arc::new(leaf), startup))
    }

    /// Stops taking writes, seals every open block into shared memory and
    /// leaves a valid hand-off segment for a successor. Reads go on being
    /// served until the process exits.
    pub fn handoff(&self) -> Result<HandoffSummary> {
        let (Some(store), Some(dir)) = (&self.store, &self.options.shm_dir) else {
            return Err(LeafError::Internal(
                "this leaf keeps no shared memory to hand off".into(),
            ));
        };
        self.accepting_writes.store(false, Ordering::SeqCst);
        // The write lock waits for every ingest in flight to finish.
        let mut state = self.state.write().expect("leaf state poisoned");
        for t in state.tables.values_mut() {
            t.seal(Some(store))?;
        }
        let log_len_bytes = match &self.log {
            Some(log) => {
                log.sync_to(log.len_bytes())?;
                log.len_bytes()
            }
            None => 0,
        };
        let mut tables = state
            .tables
            .values()
            .map(Table::manifest)
            .collect::<Result<Vec<_>>>()?;
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        let manifest = Manifest {
            leaf: self.options.id.clone(),
            tables,
            batch_ids: state.batch_order.iter().copied().collect(),
            log_len_bytes,
            next_block_seq: store.next_seq(),
        };
        handoff::write(dir, &manifest)?;
        self.handed_off.store(true, Ordering::SeqCst);
        let summary = HandoffSummary {
            rows: state.tables.values().map(Table::rows).sum(),
            blocks: manifest.tables.iter().map(|t| t.blocks.len()).sum(),
            bytes: manifest
                .tables
                .iter()
                .flat_map(|t| &t.blocks)
                .map(|b| b.len_bytes)
                .sum(),
        };
        tracing::info!(leaf = %self.options.id, rows = summary.rows, blocks = summary.blocks, bytes = summary.bytes, "handed off");
        Ok(summary)
    }

    /// Asks the process serving this leaf to exit (after a hand-off).
    pub fn request_exit(&self) {
        self.exit.notify_one();
    }

    /// Resolves when [`Leaf::request_exit`] was called.
    pub async fn exit_requested(&self) {
        self.exit.notified().await;
    }

    /// On a normal stop (no hand-off), shared memory is freed: without a
    /// segment nothing could adopt it, and the log holds every row.
    pub fn release_shared_memory(&self) {
        if self.handed_off.load(Ordering::SeqCst) {
            return;
        }
        if let Some(dir) = &self.options.shm_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    pub fn id(&self) -> &str {
        &self.options.id
    }

    /// Applies and logs one batch (Arrow IPC) for `table`; idempotent per
    /// `batch_id`. Blocking: call from a blocking thread.
    pub fn ingest(&self, table: &str, batch_id: BatchId, ipc: &[u8]) -> Result<IngestOutcome> {
        if !self.accepting_writes.load(Ordering::SeqCst) {
            return Err(LeafError::Restarting {
                leaf: self.options.id.clone(),
            });
        }
        let batches = decode_batch(table, ipc)?;
        let incoming_bytes: u64 = batches
            .iter()
            .map(|b| b.get_array_memory_size() as u64)
            .sum();
        let (rows, log_end, duplicate) = {
            let mut state = self.state.write().expect("leaf state poisoned");
            if state.batch_ids.contains(&batch_id) {
                (0, None, true)
            } else {
                if state.memory_bytes() + incoming_bytes > self.options.memory_limit_bytes {
                    return Err(LeafError::MemoryFull {
                        leaf: self.options.id.clone(),
                        limit_bytes: self.options.memory_limit_bytes,
                    });
                }
                // Check before logging, so the log holds only batches that apply.
                if let Some(t) = state.tables.get(table) {
                    for b in &batches {
                        t.check(b)?;
                    }
                }
                let log_end = match &self.log {
                    Some(log) => Some(log.append(table, batch_id, ipc)?),
                    None => None,
                };
                let rows = state.apply(table, batches, self.store.as_ref())?;
                state.remember(batch_id);
                (rows, log_end, false)
            }
        };
        if let (Some(log), Some(end)) = (&self.log, log_end) {
            log.sync_to(end)?;
        } else if duplicate {
            if let Some(log) = &self.log {
                // The first copy may still be waiting for its fsync.
                log.sync_to(log.len_bytes())?;
            }
        }
        Ok(IngestOutcome {
            rows,
            duplicate,
            memory_free_bytes: self.memory_free_bytes(),
        })
    }

    pub fn memory_free_bytes(&self) -> u64 {
        let used = self
            .state
            .read()
            .expect("leaf state poisoned")
            .memory_bytes();
        self.options.memory_limit_bytes.saturating_sub(used)
    }

    /// Rows of `table` on this leaf (0 if it never saw it).
    pub fn table_rows(&self, table: &str) -> u64 {
        self.state
            .read()
            .expect("leaf state poisoned")
            .tables
            .get(table)
            .map_or(0, Table::rows)
    }

    pub fn stats(&self) -> LeafStats {
        let state = self.state.read().expect("leaf state poisoned");
        let mut tables: Vec<TableStats> = state
            .tables
            .values()
            .map(|t| TableStats {
                name: t.name().to_string(),
                rows: t.rows(),
                memory_bytes: t.memory_bytes(),
                rows_expired: t.rows_expired(),
                schema_ipc: scuba::ipc::schema_to_ipc(&t.schema()).unwrap_or_default(),
            })
            .collect();
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        LeafStats {
            leaf: self.options.id.clone(),
            tables,
            memory_used_bytes: state.memory_bytes(),
            memory_limit_bytes: self.options.memory_limit_bytes,
            accepting_writes: self.accepting_writes.load(Ordering::SeqCst),
            pid: std::process::id(),
        }
    }

    /// Decodes a fragment and starts it; returns the table's row count at
    /// the moment its blocks were taken, and the stream of results.
    pub fn run_fragment(
        self: &Arc<Self>,
        table: &str,
        plan: &[u8],
    ) -> Result<(u64, SendableRecordBatchStream)> {
        let task: Arc<TaskContext> = self.session.task_ctx();
        let source = Arc::new(LeafScan {
            leaf: Arc::clone(self),
            rows_seen: std::sync::Mutex::new(None),
        });
        let plan = decode_fragment(plan, &task, Arc::clone(&source) as Arc<dyn ScanSource>)?;
        let rows = source
            .rows_seen
            .lock()
            .expect("poisoned")
            .unwrap_or_else(|| self.table_rows(table));
        let stream = datafusion::physical_plan::execute_stream(plan, task)?;
        Ok((rows, stream))
    }
}

/// A leaf's [`ScanSource`]; remembers the row count of the snapshot it took
/// so the coverage reported matches the rows scanned exactly.
#[derive(Debug)]
struct LeafScan {
    leaf: Arc<Leaf>,
    rows_seen: std::sync::Mutex<Option<u64>>,
}

impl ScanSource for LeafScan {
    fn scan(&self, table: &str, schema: &SchemaRef) -> Result<Vec<RecordBatch>> {
        let state = self.leaf.state.read().expect("leaf state poisoned");
        let Some(t) = state.tables.get(table) else {
            *self.rows_seen.lock().expect("poisoned") = Some(0);
            return Ok(Vec::new());
        };
        let batches = t.scan(schema)?;
        *self.rows_seen.lock().expect("poisoned") = Some(t.rows());
        Ok(batches)
    }
}

/// Maps and checks every block a manifest lists, and the disk log's length.
fn adopt(
    options: &LeafOptions,
    dir: &std::path::Path,
    manifest: &Manifest,
) -> Result<(State, Log)> {
    if manifest.leaf != options.id {
        return Err(LeafError::Internal(format!(
            "the segment belongs to leaf `{}`, not `{}`",
            manifest.leaf, options.id
        )));
    }
    let Some(data_dir) = &options.data_dir else {
        return Err(LeafError::Internal(
            "adopting needs the disk log beside the segment".into(),
        ));
    };
    let log = Log::open_without_replay(&data_dir.join("log"), options.fsync)?;
    if log.len_bytes() != manifest.log_len_bytes {
        return Err(LeafError::Internal(format!(
            "the disk log holds {} bytes but the segment was made at {} bytes",
            log.len_bytes(),
            manifest.log_len_bytes
        )));
    }
    let mut state = State::default();
    for tm in &manifest.tables {
        let table = Table::adopt(tm, dir)?;
        state.tables.insert(tm.name.clone(), table);
    }
    for id in &manifest.batch_ids {
        state.remember(*id);
    }
    Ok((state, log))
}

/// Removes block files a manifest does not list (left by a crash).
fn remove_unlisted(dir: &std::path::Path, manifest: &Manifest) {
    let listed: HashSet<&str> = manifest
        .tables
        .iter()
        .flat_map(|t| &t.blocks)
        .map(|b| b.name.as_str())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            if !listed.contains(name.to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Empties the shared-memory folder (stale blocks, a refused segment).
fn clear_dir(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
