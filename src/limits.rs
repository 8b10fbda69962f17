//! Every bound the product keeps, in one place (TigerBeetle: "put a limit on
//! everything"). Units are last in the names.

/// Largest frame any peer may send. Checked against the length prefix before
/// a single byte of the payload is allocated.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest input line `scubactl ingest` accepts. Longer lines are rejected by
/// number without being held in memory whole.
pub const LINE_BYTES_MAX: usize = 1024 * 1024;

/// Rows in one ingest batch (one placement decision, one log record, one
/// fsync at most, one acknowledgement). Each batch costs a leaf about the
/// same beyond its rows; from 8 Ki rows to 16 Ki, the leaves' CPU for the
/// 2M sample events fell 48-52 -> 43-47 centiseconds (`benches/ingest-ab.sh`).
pub const BATCH_ROWS_MAX: usize = 16 * 1024;

/// Encoded bytes in one ingest batch; a batch is cut early when it reaches this.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Rows in one sealed block of a leaf table.
pub const BLOCK_ROWS_MAX: usize = 64 * 1024;

/// Rows below which the batches of a sealed block are joined with their
/// neighbours (a block keeps ingest batches as they came when they are at
/// least this big, and copies only runs of smaller ones together).
pub const BLOCK_BATCH_ROWS_MIN: usize = 4 * 1024;

/// Columns in one table; a batch that would add more is refused.
pub const TABLE_COLUMNS_MAX: usize = 1024;

/// Tables on one leaf.
pub const LEAF_TABLES_MAX: usize = 4096;

/// Bytes a leaf may return for one query fragment; past it the leaf reports an
/// error instead of growing the reply.
pub const REPLY_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// Leaves in one cluster file.
pub const LEAVES_MAX: usize = 4096;

/// Ingest batches in flight from one `scubactl ingest` at once.
pub const INGEST_INFLIGHT_MAX: usize = 16;

/// Threads decoding input lines in one `scubactl ingest` (at most the
/// machine's cores), which take turns reading the input. Each holds at
/// most three batches: one being read or decoded, one decoded in its
/// channel and one waiting to enter it; beyond them, the collector holds
/// one and the sender [`INGEST_INFLIGHT_MAX`] queued plus as many in
/// flight.
pub const INGEST_DECODERS_MAX: usize = 8;

/// Attempts to place one batch before ingest gives up on it.
pub const INGEST_ATTEMPTS_MAX: usize = 8;

/// Batch ids a leaf remembers to make retried batches idempotent.
pub const BATCH_IDS_REMEMBERED_MAX: usize = 1 << 20;

/// Length of a SQL text.
pub const SQL_BYTES_MAX: usize = 1024 * 1024;

/// Length of a table or column name.
pub const NAME_BYTES_MAX: usize = 256;

/// Planned queries the aggregator keeps, by SQL text, while the tables'
/// schemas stay as they were (least recently used ones go first).
pub const PLAN_CACHE_ENTRIES_MAX: usize = 256;

/// Decoded fragments a leaf keeps, by their bytes (least recently used
/// ones go first). Decoding was a third of a leaf's work for `count(*)`.
pub const FRAGMENT_CACHE_ENTRIES_MAX: usize = 256;

/// A fragment longer than this (a huge IN list) is decoded every time
/// instead of kept, so the cache's keys stay small.
pub const FRAGMENT_CACHE_PLAN_BYTES_MAX: usize = 64 * 1024;

/// Default query deadline.
pub const QUERY_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Longest deadline a client may ask for.
pub const QUERY_TIMEOUT_MS_MAX: u64 = 600_000;

/// glibc's malloc (set by `scubactl` at start-up): an allocation below this
/// comes from an arena, whose freed memory is used again, rather than from
/// a fresh `mmap` whose pages are faulted in and zeroed again each time. A
/// batch's buffers are 0.1–2 MiB, allocated and freed batch after batch.
/// 32 MiB is the largest glibc takes.
pub const MALLOC_MMAP_THRESHOLD_BYTES: usize = 32 * 1024 * 1024;

/// Free memory at the top of a malloc arena kept for reuse instead of given
/// back to the system (glibc's default follows the mmap threshold).
pub const MALLOC_TRIM_THRESHOLD_BYTES: usize = 32 * 1024 * 1024;
