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
use crate::log::{FsyncPolicy, Log, Recovery};
use crate::table::Table;

/// How a leaf runs.
#[derive(Debug, Clone)]
pub struct LeafOptions {
    pub id: String,
    /// Where the disk log lives; `None` keeps no log (embedded, throwaway).
    pub data_dir: Option<PathBuf>,
    pub memory_limit_bytes: u64,
    pub fsync: FsyncPolicy,
}

impl LeafOptions {
    /// An in-memory leaf with no log, as the embedded database uses.
    pub fn in_memory(id: &str) -> Self {
        LeafOptions {
            id: id.to_string(),
            data_dir: None,
            memory_limit_bytes: default_memory_limit_bytes(),
            fsync: FsyncPolicy::Never,
        }
    }
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
    fn apply(&mut self, table: &str, batches: Vec<RecordBatch>) -> Result<u64> {
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
            t.append(batch, unified)?;
        }
        Ok(rows)
    }
}

pub struct Leaf {
    options: LeafOptions,
    state: RwLock<State>,
    log: Option<Log>,
    accepting_writes: AtomicBool,
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
    /// Opens a leaf, rebuilding its tables from its disk log if it has one.
    pub fn open(options: LeafOptions) -> Result<(Arc<Leaf>, Option<Recovery>)> {
        let mut state = State::default();
        let (log, recovery) = match &options.data_dir {
            Some(dir) => {
                let started = std::time::Instant::now();
                let (log, recovery) = Log::open(&dir.join("log"), options.fsync, |record| {
                    let batches = decode_batch(&record.header.table, &record.ipc)?;
                    // A record that no longer fits (a type conflict that
                    // raced it in) was refused when first sent; skip it again.
                    if let Err(e) = state.apply(&record.header.table, batches) {
                        tracing::warn!("skipping a log record that does not apply: {e}");
                    }
                    state.remember(record.header.batch_id);
                    Ok(())
                })?;
                let rows: u64 = state.tables.values().map(Table::rows).sum();
                let secs = started.elapsed().as_secs_f64();
                tracing::info!(
                    leaf = %options.id,
                    records = recovery.records,
                    rows,
                    bytes = recovery.bytes,
                    seconds = secs,
                    rows_per_s = rows as f64 / secs.max(1e-9),
                    "recovered from the disk log"
                );
                (Some(log), Some(recovery))
            }
            None => (None, None),
        };
        let config =
            SessionConfig::new().with_target_partitions(crate::fragment::LEAF_SCAN_PARTITIONS);
        let leaf = Leaf {
            options,
            state: RwLock::new(state),
            log,
            accepting_writes: AtomicBool::new(true),
            session: SessionContext::new_with_config(config),
        };
        Ok((Arc::new(leaf), recovery))
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
                let rows = state.apply(table, batches)?;
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
