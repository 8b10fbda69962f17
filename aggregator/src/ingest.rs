//! The ingest client: lines in, batches placed on leaves, counts out.
//!
//! ```text
//!  decoder threads (one per core, JSON; one for CSV), taking turns at the input (Baton):
//!        decoder k mod n reads chunk k (about one batch's worth of lines: ChunkReader from a
//!        stream, MappedChunks from input in memory, such as a mapped file: ingest_bytes), then
//!        decodes it: BatchBuilder::decode_chunk (shared known types) -> IPC; bad line ->
//!        Rejection{line, reason}, lines numbered within the chunk
//!        │ taken back k mod n, so in input order, and numbered in the input
//!  collector thread ──bounded channel (INGEST_INFLIGHT_MAX)──> async sender:
//!     up to INGEST_INFLIGHT_MAX batches in flight; each goes to the better of two random
//!     leaves (free memory as last reported, less batches in flight to it: placement::Room);
//!     unreachable / full / restarting -> next leaf, same batch id
//! ```
//!
//! A batch is counted as ingested only when a leaf acknowledged it (applied
//! and logged). Retries reuse the batch id, so a leaf that already applied it
//! does not apply it again. When every leaf refuses a batch the ingest stops
//! and says how many rows landed.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scuba::decode::{
    BatchBuilder, ChunkOrder, ChunkReader, ChunkSource, InputFormat, MappedChunks, Rejection,
    TextChunk,
};
use scuba::ipc::IpcStream;
use scuba::limits::{
    BATCH_BYTES_MAX, BATCH_ROWS_MAX, INGEST_ATTEMPTS_MAX, INGEST_DECODERS_MAX, INGEST_INFLIGHT_MAX,
};
use scuba::wire::{BatchId, ErrorKind};
use tokio::sync::mpsc;

use crate::error::Result;
use crate::placement::Room;
use crate::transport::{IngestFailure, LeafTransport};

/// Rejections kept for the report (all are counted; the first are kept).
pub const REJECTIONS_KEPT_MAX: usize = 1_000;

#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub table: String,
    pub format: InputFormat,
    pub time_column: String,
    /// Seeds placement; random when `None`.
    pub seed: Option<u64>,
    /// Decode and check every line against the cluster's types, but send
    /// nothing: rows that would be ingested count as ingested.
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    pub lines_read: u64,
    pub rows_ingested: u64,
    pub rows_rejected: u64,
    pub batches: u64,
    pub retries: u64,
    pub seconds: f64,
    /// The first [`REJECTIONS_KEPT_MAX`] rejections, in input order per batch.
    pub rejections: Vec<Rejection>,
    /// Why the ingest stopped before the end of its input, if it did.
    pub stopped: Option<String>,
}

impl IngestReport {
    pub fn rows_per_s(&self) -> f64 {
        self.rows_ingested as f64 / self.seconds.max(1e-9)
    }

    fn reject(&mut self, r: Rejection, on_rejection: &mut impl FnMut(&Rejection)) {
        self.rows_rejected += 1;
        on_rejection(&r);
        if self.rejections.len() < REJECTIONS_KEPT_MAX {
            self.rejections.push(r);
        }
    }
}

enum Msg {
    Batch {
        ipc: Arc<IpcStream>,
        lines: Vec<u64>,
    },
    Rejected(Rejection),
    Failed(String),
}

/// The table's schema across the leaves that answer, and their free memory.
async fn survey(
    transport: &Arc<dyn LeafTransport>,
    table: &str,
) -> Result<(Option<SchemaRef>, Vec<u64>)> {
    let n = transport.leaf_ids().len();
    let mut free = vec![0u64; n];
    let mut schema: Option<SchemaRef> = None;
    let mut pending: FuturesUnordered<_> = (0..n)
        .map(|i| {
            let t = Arc::clone(transport);
            async move {
                (
                    i,
                    tokio::time::timeout(Duration::from_secs(2), t.stats(i)).await,
                )
            }
        })
        .collect();
    while let Some((i, r)) = pending.next().await {
        if let Ok(Ok(stats)) = r {
            free[i] = stats.memory_free_bytes();
            if let Some(t) = stats.tables.iter().find(|t| t.name == table) {
                let s = scuba::ipc::ipc_to_schema(&t.schema_ipc)?;
                schema = Some(match schema {
                    None => s,
                    Some(u) => scuba::schema::unify_schemas(table, &u, &s)?,
                });
            }
        }
    }
    Ok((schema, free))
}

/// Lines read but not decoded yet: one batch's worth, for one decoder.
struct Chunk {
    /// Its place in the input (0, 1, ...).
    seq: u64,
    text: TextChunk,
}

/// A chunk's rows as Arrow IPC, and the input line of each.
struct EncodedBatch {
    ipc: IpcStream,
    lines: Vec<u64>,
}

/// What a decoder made of one chunk: its rejections in line order, then
/// its batches (usually one; none when every line was rejected), the last
/// of them perhaps why building or encoding one failed. Line numbers count
/// from the chunk's first line (1) until the collector, which knows the
/// lines before the chunk, makes them the input's.
struct Decoded {
    rejections: Vec<Rejection>,
    batches: Vec<std::result::Result<EncodedBatch, String>>,
    /// Lines read from the chunk.
    lines: u64,
}

/// The input, passed from decoder to decoder: of `n` decoders, decoder
/// `i` reads chunks `i`, `i + n`, ... itself, in turn, and decodes each
/// right after reading it, while the next decoder reads. A chunk's bytes
/// are then in the cache of the core that decodes them, and no reader
/// thread hands chunks across cores (`ingest --dry-run` of the 2M sample
/// events, seven alternating runs: CPU medians 584 -> 556 ms, page faults
/// about 12 K -> 8 K, against a reader thread of its own).
struct Baton<S> {
    state: Mutex<BatonState<S>>,
    passed: std::sync::Condvar,
}

struct BatonState<S> {
    reader: S,
    /// The chunk to read next.
    turn: u64,
    /// No more chunks: the input ended or failed, or a decoder stopped.
    done: bool,
    /// Why reading failed, if it did.
    failed: Option<String>,
}

impl<S: ChunkSource> Baton<S> {
    fn new(reader: S) -> Self {
        Baton {
            state: Mutex::new(BatonState {
                reader,
                turn: 0,
                done: false,
                failed: None,
            }),
            passed: std::sync::Condvar::new(),
        }
    }

    /// Waits for chunk `k`'s turn and reads it; `None` once there are no
    /// more chunks.
    fn take(&self, k: u64) -> Option<Chunk> {
        let mut state = self.state.lock().expect("input baton poisoned");
        while state.turn != k && !state.done {
            state = self.passed.wait(state).expect("input baton poisoned");
        }
        if state.done {
            return None;
        }
        let chunk = match state.reader.next_chunk() {
            Ok(Some(text)) => Some(Chunk { seq: k, text }),
            Ok(None) => None,
            Err(e) => {
                state.failed = Some(format!("reading input: {e}"));
                None
            }
        };
        state.turn += 1;
        state.done |= chunk.is_none();
        self.passed.notify_all();
        chunk
    }

    /// Ends the turns: a decoder stopped, so its chunks would never be read.
    /// Runs while a panic unwinds too, so a poisoned lock is taken as it is.
    fn stop(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.done = true;
        self.passed.notify_all();
    }
}

/// Decodes chunks `first`, `first + step`, ... of the input until it ends
/// (or nobody takes its results).
fn decode_chunks<S: ChunkSource>(
    mut builder: BatchBuilder,
    format: InputFormat,
    order: Arc<ChunkOrder>,
    baton: &Baton<S>,
    first: u64,
    step: u64,
    results: std::sync::mpsc::SyncSender<Decoded>,
) {
    /// Stopping early (results refused, or a panic) abandons the order and
    /// ends the turns, so no other decoder waits for a chunk this one will
    /// never read or finish.
    struct Abandon<'a, S: ChunkSource> {
        order: &'a ChunkOrder,
        baton: &'a Baton<S>,
        done: bool,
    }
    impl<S: ChunkSource> Drop for Abandon<'_, S> {
        fn drop(&mut self) {
            if !self.done {
                self.order.abandon();
                self.baton.stop();
            }
        }
    }
    let mut guard = Abandon {
        order: &order,
        baton,
        done: false,
    };
    let mut k = first;
    while let Some(mut chunk) = baton.take(k) {
        k += step;
        builder.start_chunk(&order, chunk.seq);
        let decoded = builder.decode_chunk(&mut chunk.text, format);
        let mut batches = Vec::with_capacity(decoded.batches.len());
        for batch in decoded.batches {
            let encoded = batch.map_err(|e| e.to_string()).and_then(|batch| {
                scuba::ipc::batch_to_ipc_stream(&batch.batch)
                    .map(|ipc| EncodedBatch {
                        ipc,
                        lines: batch.lines,
                    })
                    .map_err(|e| e.to_string())
            });
            let failed = encoded.is_err();
            batches.push(encoded);
            if failed {
                break; // the ingest stops here
            }
        }
        // Before the send, which may wait for the collector: later chunks
        // may be waiting for this one.
        order.finished(chunk.seq);
        let decoded = Decoded {
            rejections: decoded.rejections,
            batches,
            lines: decoded.lines,
        };
        if results.send(decoded).is_err() {
            return;
        }
    }
    guard.done = true;
}

/// Reads `input` into chunks of lines and decodes them on several threads
/// (one for CSV, whose header comes first), handing the results on in input
/// order: decoder k mod n reads and decodes chunk k ([`Baton`]), and
/// results are taken back the same way round. The decoders share the
/// table's known types in input order ([`ChunkOrder`]), so a type conflict
/// rejects exactly the lines a single reader would.
fn read_input<S: ChunkSource + Send>(
    input: S,
    options: &IngestOptions,
    known: Option<SchemaRef>,
    tx: mpsc::Sender<Msg>,
) {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let mut first = BatchBuilder::new(&options.table, &options.time_column, now_us);
    if let Some(schema) = &known {
        first = first.with_known_types(schema);
    }
    let decoders = match options.format {
        InputFormat::Csv => 1,
        InputFormat::Jsonl => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, INGEST_DECODERS_MAX),
    };
    let known_types = first.known_types();
    let order = Arc::new(ChunkOrder::default());
    let mut first = Some(first);
    let mut failed = None;
    let baton = Baton::new(input);
    std::thread::scope(|s| {
        let mut from_decoders = Vec::with_capacity(decoders);
        let mut handles = Vec::with_capacity(decoders);
        for i in 0..decoders {
            let builder = first.take().unwrap_or_else(|| {
                BatchBuilder::new(&options.table, &options.time_column, now_us)
                    .sharing_known_types(Arc::clone(&known_types))
            });
            let (result_tx, result_rx) = std::sync::mpsc::sync_channel::<Decoded>(1);
            let format = options.format;
            let order = Arc::clone(&order);
            let baton = &baton;
            handles.push(s.spawn(move || {
                decode_chunks(
                    builder,
                    format,
                    order,
                    baton,
                    i as u64,
                    decoders as u64,
                    result_tx,
                )
            }));
            from_decoders.push(result_rx);
        }
        let tx = tx.clone();
        s.spawn(move || {
            // Lines in the chunks taken back so far.
            let mut before = 0;
            for k in 0.. {
                let Ok(decoded) = from_decoders[k % decoders].recv() else {
                    return;
                };
                for mut r in decoded.rejections {
                    r.line += before;
                    if tx.blocking_send(Msg::Rejected(r)).is_err() {
                        return;
                    }
                }
                for batch in decoded.batches {
                    let msg = match batch {
                        Ok(EncodedBatch { ipc, mut lines }) => {
                            lines.iter_mut().for_each(|line| *line += before);
                            Msg::Batch {
                                ipc: Arc::new(ipc),
                                lines,
                            }
                        }
                        Err(e) => Msg::Failed(e),
                    };
                    if tx.blocking_send(msg).is_err() {
                        return; // the decoders stop when their results go nowhere
                    }
                }
                before += decoded.lines;
            }
        });
        // The decoders end with the input, then the collector.
        for handle in handles {
            if handle.join().is_err() {
                // Its lines were neither sent nor rejected: say so.
                failed.get_or_insert_with(|| "a decoding thread panicked (a bug)".to_string());
            }
        }
    });
    let read_failed = baton.state.into_inner().ok().and_then(|s| s.failed);
    if let Some(why) = read_failed.or(failed) {
        let _ = tx.blocking_send(Msg::Failed(why));
    }
}

/// Ingests every line of `input` into `options.table`. `on_rejection` sees
/// each rejected line as it happens; `on_progress` gets rows acknowledged.
pub async fn ingest<R: Read + Send + 'static>(
    transport: Arc<dyn LeafTransport>,
    input: R,
    options: IngestOptions,
    on_rejection: impl FnMut(&Rejection),
    on_progress: impl FnMut(u64),
) -> Result<IngestReport> {
    let chunks = ChunkReader::new(input, BATCH_ROWS_MAX, BATCH_BYTES_MAX / 2);
    ingest_chunks(transport, chunks, options, on_rejection, on_progress).await
}

/// [`ingest`] for input already in memory, such as a mapped file: its lines
/// are decoded where they are, not read into buffers first.
pub async fn ingest_bytes(
    transport: Arc<dyn LeafTransport>,
    input: bytes::Bytes,
    options: IngestOptions,
    on_rejection: impl FnMut(&Rejection),
    on_progress: impl FnMut(u64),
) -> Result<IngestReport> {
    let chunks = MappedChunks::new(input, BATCH_ROWS_MAX, BATCH_BYTES_MAX / 2);
    ingest_chunks(transport, chunks, options, on_rejection, on_progress).await
}

async fn ingest_chunks<S: ChunkSource + Send + 'static>(
    transport: Arc<dyn LeafTransport>,
    input: S,
    options: IngestOptions,
    mut on_rejection: impl FnMut(&Rejection),
    mut on_progress: impl FnMut(u64),
) -> Result<IngestReport> {
    scuba::schema::check_name(&options.table)?;
    scuba::schema::check_name(&options.time_column)?;
    let started = Instant::now();
    let (known, free) = survey(&transport, &options.table).await?;
    let n = free.len();
    let room = Arc::new(Mutex::new(Room::new(free)));
    let seed = options.seed.unwrap_or_else(rand::random);
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
    let session: u64 = StdRng::seed_from_u64(seed ^ 0x5eed).random();
    let table: Arc<str> = Arc::from(options.table.as_str());

    let (tx, mut rx) = mpsc::channel::<Msg>(INGEST_INFLIGHT_MAX);
    let reader_options = options.clone();
    let reader = std::thread::spawn(move || read_input(input, &reader_options, known, tx));

    let mut report = IngestReport::default();
    let mut in_flight = FuturesUnordered::new();
    let mut seq = 0u64;
    let mut input_done = false;
    loop {
        let can_take =
            !input_done && in_flight.len() < INGEST_INFLIGHT_MAX && report.stopped.is_none();
        tokio::select! {
            msg = rx.recv(), if can_take => match msg {
                None => input_done = true,
                Some(Msg::Rejected(r)) => report.reject(r, &mut on_rejection),
                Some(Msg::Failed(e)) => report.stopped = Some(e),
                Some(Msg::Batch { lines, .. }) if options.dry_run => {
                    report.rows_ingested += lines.len() as u64;
                    report.batches += 1;
                    on_progress(report.rows_ingested);
                }
                Some(Msg::Batch { ipc, lines }) => {
                    seq += 1;
                    let id = BatchId { session, seq };
                    in_flight.push(send_batch(Arc::clone(&transport), Arc::clone(&table), id, ipc, lines, n,
                        Arc::clone(&room), Arc::clone(&rng)));
                }
            },
            done = in_flight.next(), if !in_flight.is_empty() => {
                let Some(done) = done else { continue };
                report.retries += done.retries;
                match done.result {
                    Ok(rows) => {
                        report.rows_ingested += rows;
                        report.batches += 1;
                        on_progress(report.rows_ingested);
                    }
                    Err(BatchFailure::Rejected(reason)) => {
                        for line in done.lines {
                            report.reject(Rejection { line, reason: reason.clone() }, &mut on_rejection);
                        }
                    }
                    Err(BatchFailure::NoLeaf(reason)) => {
                        let first = done.lines.first().copied().unwrap_or(0);
                        let last = done.lines.last().copied().unwrap_or(0);
                        if report.stopped.is_none() {
                            report.stopped = Some(format!(
                                "every leaf refused the batch of lines {first}-{last} ({reason})"
                            ));
                        }
                    }
                }
            },
            else => break,
        }
        if (input_done || report.stopped.is_some()) && in_flight.is_empty() {
            break;
        }
    }
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    report.seconds = started.elapsed().as_secs_f64();
    report.lines_read = report.rows_ingested + report.rows_rejected;
    if let Some(why) = &report.stopped {
        report.stopped = Some(format!(
            "ingest stopped: {why}; {} rows landed before it stopped",
            report.rows_ingested
        ));
    }
    Ok(report)
}

enum BatchFailure {
    /// The leaf refused the rows themselves (type conflict, bad input).
    Rejected(String),
    /// No leaf would take the batch.
    NoLeaf(String),
}

struct BatchDone {
    lines: Vec<u64>,
    retries: u64,
    result: std::result::Result<u64, BatchFailure>,
}

#[allow(clippy::too_many_arguments)]
async fn send_batch(
    transport: Arc<dyn LeafTransport>,
    table: Arc<str>,
    id: BatchId,
    ipc: Arc<IpcStream>,
    lines: Vec<u64>,
    leaves: usize,
    room: Arc<Mutex<Room>>,
    rng: Arc<Mutex<StdRng>>,
) -> BatchDone {
    let bytes = ipc.len() as u64;
    let mut excluded = vec![false; leaves];
    let mut last_error = String::from("no leaves");
    let mut retries = 0;
    for attempt in 0..INGEST_ATTEMPTS_MAX.max(leaves) {
        let pick = {
            let mut rng = rng.lock().expect("poisoned");
            room.lock()
                .expect("poisoned")
                .place(&mut *rng, bytes, &excluded)
        };
        let Some(leaf) = pick else { break };
        if attempt > 0 {
            retries += 1;
        }
        let sent = transport.ingest(leaf, &table, id, Arc::clone(&ipc)).await;
        let reported = sent.as_ref().ok().map(|ack| ack.memory_free_bytes);
        room.lock()
            .expect("poisoned")
            .answered(leaf, bytes, reported);
        match sent {
            Ok(ack) => {
                return BatchDone {
                    lines,
                    retries,
                    result: Ok(ack.rows),
                };
            }
            Err(IngestFailure::Refused(e))
                if matches!(e.kind, ErrorKind::TypeConflict | ErrorKind::BadRequest) =>
            {
                return BatchDone {
                    lines,
                    retries,
                    result: Err(BatchFailure::Rejected(e.message)),
                };
            }
            Err(IngestFailure::Refused(e)) => {
                last_error = e.message;
                excluded[leaf] = true;
            }
            Err(IngestFailure::Unreachable(e)) => {
                last_error = format!("leaf {}: {e}", transport.leaf_ids()[leaf]);
                excluded[leaf] = true;
            }
        }
    }
    BatchDone {
        lines,
        retries,
        result: Err(BatchFailure::NoLeaf(last_error)),
    }
}
