//! One leaf: its tables, its disk log, and the work it does for clients.
//!
//! Ingest order, per batch: refuse duplicates (batch ids) -> check types ->
//! append to the log -> apply in memory (all under the write lock, so the
//! log's order is the apply order) -> fsync, shared with concurrent batches
//! (outside the lock) -> acknowledge. A batch is acknowledged only once it
//! is both in memory and in the log.
//!
//! Start-up: a valid hand-off segment is adopted in place and served at
//! once; its blocks are checked before their first use and by a background
//! pass ([`Leaf::check_adopted`]), which on a failed block drops everything
//! adopted and rebuilds the tables from the log while queries see the leaf
//! as restarting. Without a segment, the tables are rebuilt from the log.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use scuba::limits::{BATCH_IDS_REMEMBERED_MAX, LEAF_TABLES_MAX};
use scuba::schema::{check_name, ColumnType};
use scuba::wire::{BatchId, LeafStats, TableStats};

use crate::error::{LeafError, Result};
use crate::fragment::{bind_fragment, decode_template, ScanSource};
use crate::handoff::{self, Manifest};
use crate::log::{FsyncPolicy, Log, Recovery};
use crate::table::{BlockStore, Expired, Table};

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
    /// Maximum age of rows, in seconds, by table (`*` for every table
    /// without its own). Off by default: historical loads are common.
    pub retention_s: HashMap<String, u64>,
    /// Size at which the disk log moves on to a new segment.
    pub log_segment_bytes: u64,
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
            retention_s: HashMap::new(),
            log_segment_bytes: crate::log::SEGMENT_BYTES_MAX_DEFAULT,
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
        /// Records from just before the crash, held back until
        /// [`Leaf::settle`].
        held_back: usize,
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
    /// Every batch id seen (so a retry is not applied twice), and where its
    /// rows are.
    batch_ids: HashMap<BatchId, Rows>,
    batch_order: VecDeque<BatchId>,
}

/// Where the rows of a batch this leaf has seen are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Applied here.
    Here,
    /// Logged here just before a crash, but another leaf applied the
    /// batch (a client retried it there), so this one dropped it. A peer
    /// asking after its own crash must not be told this leaf holds it.
    Elsewhere,
}

impl State {
    fn remember(&mut self, id: BatchId, rows: Rows) {
        if self.batch_ids.insert(id, rows).is_none() {
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

    /// Expires the oldest sealed blocks (by their newest row, across
    /// tables) until `incoming_bytes` more fit under `limit_bytes`. False
    /// when they cannot: nothing sealed is left to expire.
    fn make_room(&mut self, incoming_bytes: u64, limit_bytes: u64, expired: &mut Expired) -> bool {
        while self.memory_bytes() + incoming_bytes > limit_bytes {
            let oldest = self
                .tables
                .iter()
                .filter_map(|(name, t)| t.oldest_block_time().map(|time| (time, name.clone())))
                .min();
            let Some((_, name)) = oldest else {
                return false;
            };
            let e = self
                .tables
                .get_mut(&name)
                .expect("listed above")
                .expire_oldest_block();
            merge_expired(expired, e);
        }
        true
    }

    /// Expires rows past each table's retention, as of `now_us`.
    fn expire_by_age(
        &mut self,
        retention_s: &HashMap<String, u64>,
        now_us: i64,
        expired: &mut Expired,
    ) {
        for (name, t) in self.tables.iter_mut() {
            if let Some(cutoff) = cutoff_us(retention_s, name, now_us) {
                merge_expired(expired, t.expire_before(cutoff));
            }
        }
    }

    /// Checks and applies one decoded batch (logged in `segment`); nothing
    /// changes on error. What sealing expired is added to `expired`.
    fn apply(
        &mut self,
        table: &str,
        batches: Vec<RecordBatch>,
        store: Option<&BlockStore>,
        segment: Option<u64>,
        cutoff_us: Option<i64>,
        expired: &mut Expired,
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
        let n = batches.len();
        for (i, batch) in batches.into_iter().enumerate() {
            let unified = t.check(&batch)?;
            rows += batch.num_rows() as u64;
            // One log record per ingest: counted once, with its last batch.
            let seg = if i + 1 == n { segment } else { None };
            let e = t.append(batch, unified, store, seg, cutoff_us)?;
            merge_expired(expired, e);
        }
        Ok(rows)
    }
}

pub struct Leaf {
    options: LeafOptions,
    state: RwLock<State>,
    /// Replaced only when an adopted segment fails its check and the leaf
    /// recovers from the log instead.
    log: RwLock<Option<Arc<Log>>>,
    /// Where the check of an adopted segment stands.
    adoption: std::sync::Mutex<Adoption>,
    adoption_changed: std::sync::Condvar,
    store: Option<BlockStore>,
    accepting_writes: AtomicBool,
    handed_off: AtomicBool,
    exit: tokio::sync::Notify,
    /// Every fragment runs in this context: made once, since making one
    /// copies the whole session (every function registry), which took a
    /// tenth of a `count(*)`'s time at the leaf.
    task: Arc<TaskContext>,
    /// Fragments decoded before, by their bytes: a repeated query (a
    /// dashboard's) skips decoding and is only bound to the blocks.
    fragments: std::sync::Mutex<lru::LruCache<Vec<u8>, Arc<dyn ExecutionPlan>>>,
    /// Records from the last moments before a crash, held back until peers
    /// say which of them a client already placed elsewhere (see
    /// [`Leaf::settle`]).
    pending: std::sync::Mutex<Vec<crate::log::Record>>,
    /// Requests being served; a hand-off exit waits for their replies.
    in_flight: std::sync::atomic::AtomicUsize,
}

/// An adopted segment is served at once; its blocks are checked before
/// their first use and by one pass over all of them right after adoption.
#[derive(Debug, Clone, PartialEq)]
enum Adoption {
    /// Nothing adopted is left unchecked.
    Settled,
    /// The pass over the adopted blocks is running.
    Checking,
    /// A block failed: nothing adopted is served; the leaf is rebuilding
    /// its tables from the disk log.
    Recovering,
    /// That recovery failed too (the log line says why).
    Failed(String),
}

/// Records logged within this long of a crash may not have been
/// acknowledged; their batches may have been retried on another leaf.
pub const UNCERTAIN_WINDOW_MS: i64 = 2_000;
/// At most this many records are held back for the peer check.
pub const UNCERTAIN_RECORDS_MAX: usize = 1_024;

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("id", &self.options.id)
            .finish()
    }
}

/// Validates a batch from an untrusted client (names and types) and puts
/// its strings in the form the leaf keeps them in.
fn decode_batch(table: &str, ipc: Buffer) -> Result<Vec<RecordBatch>> {
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
    batches
        .into_iter()
        .map(crate::table::strings_as_views)
        .collect()
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

        let (state, log, startup, pending) = if let Some((state, manifest, log)) = adopted {
            let rows = state.tables.values().map(Table::rows).sum();
            let blocks = manifest.tables.iter().map(|t| t.blocks.len()).sum();
            let bytes = manifest
                .tables
                .iter()
                .flat_map(|t| &t.blocks)
                .map(|b| b.file.len_bytes)
                .sum();
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(leaf = %options.id, rows, blocks, bytes, seconds, "adopted the hand-off segment in place; checking its blocks");
            (
                state,
                Some(Arc::new(log)),
                Startup::Adopted {
                    rows,
                    blocks,
                    bytes,
                    seconds,
                },
                Vec::new(),
            )
        } else if let Some(dir) = &options.data_dir {
            recover(
                &options,
                dir,
                store.as_ref(),
                refused_segment,
                true,
                started,
            )?
        } else {
            (State::default(), None, Startup::Empty, Vec::new())
        };
        let adopted = matches!(startup, Startup::Adopted { .. });
        let config =
            SessionConfig::new().with_target_partitions(crate::fragment::LEAF_SCAN_PARTITIONS);
        let leaf = Arc::new(Leaf {
            options,
            state: RwLock::new(state),
            log: RwLock::new(log),
            adoption: std::sync::Mutex::new(if adopted {
                Adoption::Checking
            } else {
                Adoption::Settled
            }),
            adoption_changed: std::sync::Condvar::new(),
            store,
            accepting_writes: AtomicBool::new(true),
            handed_off: AtomicBool::new(false),
            exit: tokio::sync::Notify::new(),
            pending: std::sync::Mutex::new(pending),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            task: task_context(config),
            fragments: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(scuba::limits::FRAGMENT_CACHE_ENTRIES_MAX)
                    .expect("a bound above 0"),
            )),
        });
        if adopted {
            let checking = Arc::clone(&leaf);
            std::thread::Builder::new()
                .name("check-adopted".into())
                .spawn(move || checking.check_adopted())?;
        }
        Ok((leaf, startup))
    }

    /// Checks every adopted block (all cores), right after adoption; scans
    /// meanwhile check the blocks they read first. A block that fails means
    /// the predecessor's memory cannot be trusted: nothing adopted is served
    /// any more, and the leaf rebuilds its tables from its disk log (which
    /// holds every row, including those written since the adoption).
    fn check_adopted(&self) {
        let started = std::time::Instant::now();
        let blocks: Vec<Arc<crate::table::Block>> = {
            let state = self.state.read().expect("leaf state poisoned");
            state
                .tables
                .values()
                .flat_map(|t| t.sealed_blocks().iter().cloned())
                .collect()
        };
        match crate::table::check_blocks(&blocks) {
            Ok(()) => {
                let bytes: u64 = blocks.iter().map(|b| b.memory_bytes).sum();
                let seconds = started.elapsed().as_secs_f64();
                tracing::info!(
                    leaf = %self.options.id,
                    blocks = blocks.len(),
                    bytes,
                    seconds,
                    gib_per_s = bytes as f64 / (1u64 << 30) as f64 / seconds.max(1e-9),
                    "checked every adopted block"
                );
                self.set_adoption(Adoption::Settled);
            }
            Err(e) => {
                drop(blocks);
                let reason = e.to_string();
                tracing::warn!(leaf = %self.options.id, "adopted hand-off segment refused: {reason}; recovering from the disk log");
                self.set_adoption(Adoption::Recovering);
                match self.recover_in_place(reason) {
                    Ok(()) => self.set_adoption(Adoption::Settled),
                    Err(e) => {
                        tracing::error!(leaf = %self.options.id, "recovery from the disk log failed: {e}");
                        self.set_adoption(Adoption::Failed(e.to_string()));
                    }
                }
            }
        }
    }

    /// Drops every table and rebuilds them from the disk log, while queries
    /// are told the leaf is restarting and writes go to other leaves.
    fn recover_in_place(&self, reason: String) -> Result<()> {
        let started = std::time::Instant::now();
        self.accepting_writes.store(false, Ordering::SeqCst);
        let Some(data_dir) = &self.options.data_dir else {
            return Err(LeafError::Internal("no disk log to recover from".into()));
        };
        {
            // The write lock waits for scans and ingests in flight; the log
            // holds every batch acknowledged so far.
            let mut state = self.state.write().expect("leaf state poisoned");
            *state = State::default();
            let old = self.log.write().expect("log poisoned").take();
            if let Some(log) = old {
                log.retire();
                log.sync_to(log.written_bytes())?;
            }
        }
        if let Some(dir) = &self.options.shm_dir {
            clear_dir(dir);
        }
        // Every record was acknowledged by a running leaf (no crash): none
        // is uncertain, so none is held back.
        let (state, log, _, _) = recover(
            &self.options,
            data_dir,
            self.store.as_ref(),
            Some(reason),
            false,
            started,
        )?;
        let mut current = self.state.write().expect("leaf state poisoned");
        *current = state;
        *self.log.write().expect("log poisoned") = log;
        self.accepting_writes.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn set_adoption(&self, to: Adoption) {
        *self.adoption.lock().expect("poisoned") = to;
        self.adoption_changed.notify_all();
    }

    /// Refuses reads while nothing may be served (recovering after an
    /// adopted block failed its check).
    fn check_serving(&self) -> Result<()> {
        match &*self.adoption.lock().expect("poisoned") {
            Adoption::Settled | Adoption::Checking => Ok(()),
            Adoption::Recovering => Err(LeafError::Restarting {
                leaf: self.options.id.clone(),
            }),
            Adoption::Failed(why) => Err(LeafError::Internal(format!(
                "recovery from the disk log failed: {why}"
            ))),
        }
    }

    /// Waits until no adopted block is left unchecked (or recovery ended).
    pub fn wait_until_checked(&self) -> Result<()> {
        let mut adoption = self.adoption.lock().expect("poisoned");
        loop {
            match &*adoption {
                Adoption::Settled => return Ok(()),
                Adoption::Failed(why) => {
                    return Err(LeafError::Internal(format!(
                        "recovery from the disk log failed: {why}"
                    )))
                }
                Adoption::Checking | Adoption::Recovering => {
                    adoption = self.adoption_changed.wait(adoption).expect("poisoned");
                }
            }
        }
    }

    fn log(&self) -> Option<Arc<Log>> {
        self.log.read().expect("log poisoned").clone()
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
        // A successor gets only blocks this process checked (or wrote).
        self.wait_until_checked()?;
        self.accepting_writes.store(false, Ordering::SeqCst);
        // The write lock waits for every ingest in flight to finish.
        let mut state = self.state.write().expect("leaf state poisoned");
        let log = self.log();
        let mut expired = Expired::default();
        for (name, t) in state.tables.iter_mut() {
            let cutoff = cutoff_us(&self.options.retention_s, name, now_us());
            merge_expired(&mut expired, t.seal(Some(store), cutoff)?);
        }
        if let Some(log) = &log {
            for (segment, records) in std::mem::take(&mut expired.segments) {
                log.release(segment, records);
            }
        }
        let log_segments = match &log {
            Some(log) => {
                log.sync_to(log.written_bytes())?;
                log.trim_tail()?;
                log.segments()?
            }
            None => Vec::new(),
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
            batch_ids_elsewhere: state
                .batch_order
                .iter()
                .copied()
                .filter(|id| state.batch_ids.get(id) == Some(&Rows::Elsewhere))
                .collect(),
            log_segments,
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
                .map(|b| b.file.len_bytes)
                .sum(),
        };
        tracing::info!(leaf = %self.options.id, rows = summary.rows, blocks = summary.blocks, bytes = summary.bytes, "handed off");
        Ok(summary)
    }

    /// The batch ids recovery held back, and the log time (µs since the
    /// epoch) of the newest: a client may have retried them on another leaf
    /// after this one died without acknowledging.
    pub fn held_back(&self) -> (Vec<BatchId>, Option<i64>) {
        let pending = self.pending.lock().expect("poisoned");
        (
            pending.iter().map(|r| r.header.batch_id).collect(),
            pending.iter().map(|r| r.header.time_us).max(),
        )
    }

    /// Applies the held-back records, except the batches `elsewhere` (other
    /// leaves that applied them): those are dropped, so no batch is counted
    /// twice. Returns (applied, dropped).
    pub fn settle(&self, elsewhere: &HashSet<BatchId>) -> Result<(usize, usize)> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("poisoned"));
        // Durably first: a later recovery must not bring them back.
        let gone: Vec<BatchId> = pending
            .iter()
            .map(|r| r.header.batch_id)
            .filter(|id| elsewhere.contains(id))
            .collect();
        if let Some(log) = self.log() {
            log.add_tombstones(&gone)?;
        }
        let mut expired = Expired::default();
        let (mut applied, mut dropped) = (0, 0);
        {
            let mut state = self.state.write().expect("leaf state poisoned");
            let now = now_us();
            for record in pending {
                if elsewhere.contains(&record.header.batch_id) {
                    dropped += 1;
                    expired.segments.push((record.segment, 1));
                    state.remember(record.header.batch_id, Rows::Elsewhere);
                } else {
                    applied += 1;
                    replay_record(
                        &mut state,
                        &self.options,
                        self.store.as_ref(),
                        record,
                        now,
                        &mut expired,
                    )?;
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(
                leaf = %self.options.id,
                dropped,
                "dropped batches that other leaves applied after this one died without acknowledging them"
            );
        }
        self.release(expired);
        Ok((applied, dropped))
    }

    /// Which of `ids` this leaf has applied (or remembers applying).
    pub fn holds(&self, ids: &[BatchId]) -> Vec<BatchId> {
        let state = self.state.read().expect("leaf state poisoned");
        ids.iter()
            .copied()
            .filter(|id| state.batch_ids.get(id) == Some(&Rows::Here))
            .collect()
    }

    /// Counts a request as being served until the guard drops.
    pub fn serving(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
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
        self.ingest_buffer(table, batch_id, Buffer::from_slice_ref(ipc))
    }

    /// [`Leaf::ingest`] for a batch already in an Arrow buffer (the frame it
    /// arrived in): its columns are kept where they are, not copied out.
    pub fn ingest_buffer(
        &self,
        table: &str,
        batch_id: BatchId,
        ipc: Buffer,
    ) -> Result<IngestOutcome> {
        if !self.accepting_writes.load(Ordering::SeqCst) {
            return Err(LeafError::Restarting {
                leaf: self.options.id.clone(),
            });
        }
        let batches = decode_batch(table, ipc.clone())?;
        let ipc = ipc.as_slice();
        let incoming_bytes: u64 = batches.iter().map(crate::table::batch_bytes).sum();
        let cutoff = cutoff_us(&self.options.retention_s, table, now_us());
        let mut expired = Expired::default();
        let mut log = None;
        let result = self.ingest_locked(
            table,
            batch_id,
            ipc,
            batches,
            incoming_bytes,
            cutoff,
            &mut expired,
            &mut log,
        );
        // Expired blocks are released even when the batch was refused.
        self.release_in(expired, log.as_deref());
        let (rows, log_end, duplicate) = result?;
        if let (Some(log), Some(end)) = (&log, log_end) {
            log.sync_to(end)?;
        } else if duplicate {
            if let Some(log) = &log {
                // The first copy may still be waiting for its fsync.
                log.sync_to(log.written_bytes())?;
            }
        }
        Ok(IngestOutcome {
            rows,
            duplicate,
            memory_free_bytes: self.memory_free_bytes(),
        })
    }

    /// The part of an ingest done under the write lock: dedup, make room,
    /// check, log, apply. Returns (rows, log position, duplicate); `log` is
    /// set to the log the batch went to.
    #[allow(clippy::too_many_arguments)]
    fn ingest_locked(
        &self,
        table: &str,
        batch_id: BatchId,
        ipc: &[u8],
        batches: Vec<RecordBatch>,
        incoming_bytes: u64,
        cutoff: Option<i64>,
        expired: &mut Expired,
        log: &mut Option<Arc<Log>>,
    ) -> Result<(u64, Option<u64>, bool)> {
        let mut state = self.state.write().expect("leaf state poisoned");
        // Checked again under the lock: a recovery in place stops writes
        // before it takes the lock.
        if !self.accepting_writes.load(Ordering::SeqCst) {
            return Err(LeafError::Restarting {
                leaf: self.options.id.clone(),
            });
        }
        *log = self.log();
        if state.batch_ids.contains_key(&batch_id) {
            return Ok((0, None, true));
        }
        // Check before logging, so the log holds only batches that apply.
        if let Some(t) = state.tables.get(table) {
            for b in &batches {
                t.check(b)?;
            }
        }
        if !state.make_room(incoming_bytes, self.options.memory_limit_bytes, expired) {
            return Err(LeafError::MemoryFull {
                leaf: self.options.id.clone(),
                limit_bytes: self.options.memory_limit_bytes,
            });
        }
        let appended = match log {
            Some(log) => Some(log.append(table, batch_id, ipc)?),
            None => None,
        };
        let rows = state.apply(
            table,
            batches,
            self.store.as_ref(),
            appended.map(|a| a.segment),
            cutoff,
            expired,
        )?;
        state.remember(batch_id, Rows::Here);
        Ok((rows, appended.map(|a| a.end), false))
    }

    /// Releases what expired: its log records, and its shared-memory files
    /// (a scan still reading a block keeps its mapping until it ends).
    fn release(&self, expired: Expired) {
        self.release_in(expired, self.log().as_deref());
    }

    /// [`Leaf::release`], with the log the expired records are in.
    fn release_in(&self, expired: Expired, log: Option<&Log>) {
        if expired.blocks > 0 || expired.rows > 0 {
            tracing::info!(leaf = %self.options.id, rows = expired.rows, blocks = expired.blocks, "expired");
        }
        if let Some(log) = log {
            for (segment, records) in expired.segments {
                log.release(segment, records);
            }
        }
        if let Some(store) = &self.store {
            for name in expired.files {
                let _ = std::fs::remove_file(store.dir().join(name));
            }
        }
    }

    /// Expires rows past their table's retention; called periodically.
    pub fn expire_by_age(&self) {
        if self.options.retention_s.is_empty() {
            return;
        }
        let mut expired = Expired::default();
        let log = {
            let mut state = self.state.write().expect("leaf state poisoned");
            state.expire_by_age(&self.options.retention_s, now_us(), &mut expired);
            self.log()
        };
        self.release_in(expired, log.as_deref());
    }

    /// Bytes the disk log holds.
    pub fn log_disk_bytes(&self) -> u64 {
        self.log().map_or(0, |log| log.disk_bytes())
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

    /// Tables, row counts and memory. Refused while the leaf rebuilds its
    /// tables in place, so nobody takes its emptied tables for its data:
    /// the aggregator keeps the counts it last saw and reports the leaf
    /// `restarting`.
    pub fn stats(&self) -> Result<LeafStats> {
        let state = self.state.read().expect("leaf state poisoned");
        self.check_serving()?;
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
        Ok(LeafStats {
            leaf: self.options.id.clone(),
            tables,
            memory_used_bytes: state.memory_bytes(),
            memory_limit_bytes: self.options.memory_limit_bytes,
            accepting_writes: self.accepting_writes.load(Ordering::SeqCst),
            pid: std::process::id(),
        })
    }

    /// Decodes a fragment and starts it; returns the table's row count at
    /// the moment its blocks were taken, and the stream of results.
    pub fn run_fragment(
        self: &Arc<Self>,
        table: &str,
        plan: &[u8],
    ) -> Result<(u64, SendableRecordBatchStream)> {
        self.check_serving()?;
        let task = Arc::clone(&self.task);
        let source = LeafScan {
            leaf: Arc::clone(self),
            rows_seen: std::sync::Mutex::new(None),
        };
        let template = self.fragment_template(plan)?;
        let plan = bind_fragment(&template, &source)?;
        let rows = source
            .rows_seen
            .lock()
            .expect("poisoned")
            .unwrap_or_else(|| self.table_rows(table));
        let stream = datafusion::physical_plan::execute_stream(plan, task)?;
        Ok((rows, stream))
    }
}

impl Leaf {
    /// `bytes` decoded, from the cache when it was decoded before.
    fn fragment_template(&self, bytes: &[u8]) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(t) = self.fragments.lock().expect("poisoned").get(bytes) {
            return Ok(Arc::clone(t));
        }
        let template = decode_template(bytes, &self.task)?;
        if bytes.len() <= scuba::limits::FRAGMENT_CACHE_PLAN_BYTES_MAX {
            self.fragments
                .lock()
                .expect("poisoned")
                .put(bytes.to_vec(), Arc::clone(&template));
        }
        Ok(template)
    }

    /// Fragments kept decoded now.
    pub fn fragments_kept(&self) -> usize {
        self.fragments.lock().expect("poisoned").len()
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
        // Adopted blocks not checked yet are checked first, outside the
        // state lock, so a writer waiting for it does not hold back other
        // scans meanwhile.
        let checking = *self.leaf.adoption.lock().expect("poisoned") == Adoption::Checking;
        let unchecked: Vec<Arc<crate::table::Block>> = if !checking {
            Vec::new() // every adopted block is checked (or was replaced)
        } else {
            let state = self.leaf.state.read().expect("leaf state poisoned");
            state.tables.get(table).map_or_else(Vec::new, |t| {
                t.sealed_blocks()
                    .iter()
                    .filter(|b| !b.is_checked())
                    .cloned()
                    .collect()
            })
        };
        for block in &unchecked {
            block.batches()?;
        }
        let state = self.leaf.state.read().expect("leaf state poisoned");
        // Under the lock: a recovery in place says so before it empties
        // the tables, so an empty table here is never a recovering one.
        self.leaf.check_serving()?;
        let Some(t) = state.tables.get(table) else {
            *self.rows_seen.lock().expect("poisoned") = Some(0);
            return Ok(Vec::new());
        };
        let cutoff = cutoff_us(&self.leaf.options.retention_s, table, now_us());
        let batches = t.scan(schema, cutoff)?;
        *self.rows_seen.lock().expect("poisoned") = Some(t.rows());
        Ok(batches)
    }
}

/// What recovery from the log rebuilt: the tables, the log, how it went,
/// and the records held back for [`Leaf::settle`].
type Recovered = (State, Option<Arc<Log>>, Startup, Vec<crate::log::Record>);

/// Rebuilds a leaf's tables from its disk log in `dir`. With `hold_back`
/// (after a crash), the records of the last moments are held back for
/// [`Leaf::settle`] instead of applied.
fn recover(
    options: &LeafOptions,
    dir: &std::path::Path,
    store: Option<&BlockStore>,
    refused_segment: Option<String>,
    hold_back: bool,
    started: std::time::Instant,
) -> Result<Recovered> {
    let mut state = State::default();
    let mut expired = Expired::default();
    let now = now_us();
    let mut held: std::collections::VecDeque<crate::log::Record> =
        std::collections::VecDeque::new();
    let tombstones = crate::log::load_tombstones(&dir.join("log"))?;
    let (log, recovery) = Log::open(
        &dir.join("log"),
        options.fsync,
        options.log_segment_bytes,
        |record| {
            // A batch another leaf took over after this one died.
            if tombstones.contains(&record.header.batch_id) {
                expired.segments.push((record.segment, 1));
                state.remember(record.header.batch_id, Rows::Elsewhere);
                return Ok(());
            }
            // Hold back the newest records until the window ends at the
            // last one; apply older ones as they leave the window (all at
            // once without `hold_back`).
            let newest = record.header.time_us;
            held.push_back(record);
            while let Some(front) = held.front() {
                let outside = newest - front.header.time_us > UNCERTAIN_WINDOW_MS * 1000;
                if hold_back && !outside && held.len() <= UNCERTAIN_RECORDS_MAX {
                    break;
                }
                let record = held.pop_front().expect("non-empty");
                replay_record(&mut state, options, store, record, now, &mut expired)?;
            }
            Ok(())
        },
    )?;
    let pending: Vec<crate::log::Record> = held.into_iter().collect();
    for (segment, records) in std::mem::take(&mut expired.segments) {
        log.release(segment, records);
    }
    for name in expired.files {
        if let Some(dir) = &options.shm_dir {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
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
            held_back: pending.len(),
        }
    };
    Ok((state, Some(Arc::new(log)), startup, pending))
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
    let mut state = State::default();
    let mut live = std::collections::BTreeMap::new();
    for tm in &manifest.tables {
        let table = Table::adopt(tm, dir)?;
        for block in &tm.blocks {
            for (segment, records) in &block.segments {
                *live.entry(*segment).or_insert(0) += records;
            }
        }
        state.tables.insert(tm.name.clone(), table);
    }
    let log = Log::open_without_replay(
        &data_dir.join("log"),
        options.fsync,
        options.log_segment_bytes,
        &manifest.log_segments,
        &live,
    )?;
    let elsewhere: HashSet<&BatchId> = manifest.batch_ids_elsewhere.iter().collect();
    for id in &manifest.batch_ids {
        let rows = if elsewhere.contains(id) {
            Rows::Elsewhere
        } else {
            Rows::Here
        };
        state.remember(*id, rows);
    }
    Ok((state, log))
}

/// Removes block files a manifest does not list (left by a crash).
fn remove_unlisted(dir: &std::path::Path, manifest: &Manifest) {
    let listed: HashSet<&str> = manifest
        .tables
        .iter()
        .flat_map(|t| &t.blocks)
        .map(|b| b.file.name.as_str())
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

/// The context fragments are decoded and run with: DataFusion's functions,
/// with the database's own in place of some ([`scuba::functions`]).
fn task_context(config: SessionConfig) -> Arc<TaskContext> {
    let ctx = SessionContext::new_with_config(config);
    scuba::functions::register(&ctx);
    ctx.task_ctx()
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The oldest time `table` keeps as of `now_us`, if it has a retention.
fn cutoff_us(retention_s: &HashMap<String, u64>, table: &str, now_us: i64) -> Option<i64> {
    retention_s
        .get(table)
        .or_else(|| retention_s.get("*"))
        .map(|s| now_us.saturating_sub((*s as i64).saturating_mul(1_000_000)))
}

fn merge_expired(into: &mut Expired, e: Expired) {
    into.rows += e.rows;
    into.blocks += e.blocks;
    into.segments.extend(e.segments);
    into.files.extend(e.files);
}

/// Applies one recovered record by the rules of ingest: the budget expires
/// the oldest blocks, rows past retention do not come back, and a record
/// that no longer applies (a type conflict that raced it in, refused when
/// first sent) is skipped again.
fn replay_record(
    state: &mut State,
    options: &LeafOptions,
    store: Option<&BlockStore>,
    mut record: crate::log::Record,
    now: i64,
    expired: &mut Expired,
) -> Result<()> {
    let table = &record.header.table;
    let batches = decode_batch(table, Buffer::from_vec(std::mem::take(&mut record.ipc)))?;
    let incoming: u64 = batches.iter().map(crate::table::batch_bytes).sum();
    let cutoff = cutoff_us(&options.retention_s, table, now);
    let applied = if state.make_room(incoming, options.memory_limit_bytes, expired) {
        state.apply(table, batches, store, Some(record.segment), cutoff, expired)
    } else {
        Err(LeafError::MemoryFull {
            leaf: options.id.clone(),
            limit_bytes: options.memory_limit_bytes,
        })
    };
    match applied {
        Ok(_) => state.remember(record.header.batch_id, Rows::Here),
        // Not remembered: its rows are not here, so this leaf must not
        // claim them when a peer asks after its own crash.
        Err(e) => {
            tracing::warn!("skipping a log record that does not apply: {e}");
            expired.segments.push((record.segment, 1));
        }
    }
    Ok(())
}

/// A request being served (see [`Leaf::serving`]).
pub struct InFlight(Arc<Leaf>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
