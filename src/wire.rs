//! Messages between `scubactl`, the aggregator and the leaves, and their
//! frame codec. No I/O here: callers read a 4-byte length prefix, ask
//! [`frame_len`] whether it is acceptable (before allocating anything), then
//! read that many bytes and decode them.
//!
//! Control messages are bincode (2.0.1); data travels inside them as Arrow
//! IPC bytes and plans as datafusion-proto bytes. One request per QUIC
//! stream; a reply is one or more frames ending with a terminal message.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::coverage::Coverage;
use crate::error::{Error, Result};
use crate::limits::FRAME_BYTES_MAX;

/// Bumped whenever a message or the plan encoding changes; DataFusion's
/// proto format is not stable across its versions, so this covers those too.
pub const PROTOCOL_VERSION: u32 = 2;

/// Bytes of the length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<FRAME_BYTES_MAX>()
}

/// Encodes a message as a length-prefixed frame.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_frame_into(&mut out, message)?;
    Ok(out)
}

/// Appends `message` to `out` as a length-prefixed frame, so several frames
/// go out in one write without being copied together. Sized first (cheap:
/// byte fields are counted, not copied), so `out` grows once instead of by
/// copying. On an error `out` is left as it was.
pub fn encode_frame_into<T: Serialize>(out: &mut Vec<u8>, message: &T) -> Result<()> {
    let failed = |e: bincode::error::EncodeError| Error::Internal(format!("encoding a frame: {e}"));
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(message, &mut size, config()).map_err(failed)?;
    let start = out.len();
    out.reserve(FRAME_PREFIX_BYTES + size.bytes_written);
    out.extend_from_slice(&[0u8; FRAME_PREFIX_BYTES]);
    let written = bincode::serde::encode_into_std_write(message, &mut *out, config())
        .map_err(failed)
        .and_then(|len| write_prefix(&mut out[start..], len));
    if written.is_err() {
        out.truncate(start);
    }
    written
}

/// Writes a frame's length into its prefix, refusing a frame over
/// [`FRAME_BYTES_MAX`].
fn write_prefix(frame: &mut [u8], len: usize) -> Result<()> {
    if len > FRAME_BYTES_MAX {
        return Err(Error::FrameTooLarge {
            len_bytes: len,
            max_bytes: FRAME_BYTES_MAX,
        });
    }
    frame[..FRAME_PREFIX_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// The payload length a prefix announces, refused past [`FRAME_BYTES_MAX`].
pub fn frame_len(prefix: [u8; FRAME_PREFIX_BYTES]) -> Result<usize> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(Error::FrameTooLarge {
            len_bytes: len,
            max_bytes: FRAME_BYTES_MAX,
        });
    }
    Ok(len)
}

/// Decodes a frame's payload (without the prefix).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    decode_borrowed(payload)
}

/// Identifies one ingest batch across retries: the ingest session (random)
/// and the batch's sequence number in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchId {
    pub session: u64,
    pub seq: u64,
}

/// [`Request::Ingest`] borrowing its fields: the same bytes (bincode writes
/// a variant by its index, and `Ingest` is the first). A leaf reads a batch
/// from the frame it arrived in ([`decode_borrowed`]) instead of copying it
/// out first.
#[derive(Debug, Serialize, Deserialize)]
pub enum IngestRef<'a> {
    Ingest {
        table: &'a str,
        batch_id: BatchId,
        /// Zeros that put `ipc` at a multiple of [`IPC_ALIGN`] bytes into
        /// the payload (see [`ingest_frame_head`]).
        #[serde(with = "serde_bytes")]
        pad: &'a [u8],
        #[serde(with = "serde_bytes")]
        ipc: &'a [u8],
    },
}

/// Where a batch's IPC stream starts in an ingest frame's payload: at a
/// multiple of this. The stream aligns its buffers within itself, so a leaf
/// that reads the payload into an allocation aligned as malloc's (16) can
/// keep the columns in it instead of copying each to an aligned place.
pub const IPC_ALIGN: usize = 8;

/// The start of an ingest frame: its prefix and every field before the
/// batch's bytes. `head + ipc` is the frame of [`IngestRef::Ingest`], so a
/// client sends the batch as it is, without copying it into a frame.
pub fn ingest_frame_head(table: &str, batch_id: BatchId, ipc_len: usize) -> Result<Vec<u8>> {
    let failed = |e: bincode::error::EncodeError| Error::Internal(format!("encoding a frame: {e}"));
    // The variant's index, the fields, then the bytes' length: as serde
    // writes `IngestRef::Ingest`, less the bytes themselves. Each byte of
    // padding moves the bytes one further (its length takes one byte).
    let head = |pad: usize| {
        let mut out = vec![0u8; FRAME_PREFIX_BYTES];
        let pad = serde_bytes::Bytes::new(&[0u8; IPC_ALIGN][..pad]);
        let fields = (0u32, table, batch_id, pad, ipc_len as u64);
        bincode::serde::encode_into_std_write(fields, &mut out, config()).map_err(failed)?;
        Ok::<_, Error>(out)
    };
    let unpadded = head(0)?.len() - FRAME_PREFIX_BYTES;
    let mut out = head((IPC_ALIGN - unpadded % IPC_ALIGN) % IPC_ALIGN)?;
    let len = out.len() - FRAME_PREFIX_BYTES + ipc_len;
    write_prefix(&mut out, len)?;
    Ok(out)
}

/// Decodes a frame's payload (without the prefix) into a message that
/// borrows from it.
pub fn decode_borrowed<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T> {
    let (message, used) = bincode::serde::borrow_decode_from_slice(payload, config())
        .map_err(|e| Error::MalformedFrame(e.to_string()))?;
    if used != payload.len() {
        return Err(Error::MalformedFrame(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok(message)
}

/// What a client asks a leaf or the aggregator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Leaf: apply a batch (Arrow IPC) to `table`, log it, acknowledge.
    Ingest {
        table: String,
        batch_id: BatchId,
        /// See [`IngestRef::Ingest`]; any length is read.
        #[serde(with = "serde_bytes")]
        pad: Vec<u8>,
        #[serde(with = "serde_bytes")]
        ipc: Vec<u8>,
    },
    /// Leaf: run a plan fragment (datafusion-proto bytes) over `table`.
    Fragment {
        protocol_version: u32,
        table: String,
        #[serde(with = "serde_bytes")]
        plan: Vec<u8>,
    },
    /// Leaf: tables, schemas, row counts, memory.
    LeafStats,
    /// Leaf: stop taking writes, seal, hand memory to a successor, exit.
    Handoff,
    /// Leaf: which of these batches have you applied? Asked by a peer that
    /// recovered them from its log after dying before acknowledging them.
    HeldBatches { ids: Vec<BatchId> },
    /// Aggregator: run SQL across the cluster.
    Query(QueryRequest),
    /// Aggregator: each leaf's state.
    ClusterStatus,
    /// Aggregator: the unified schema of a table (IPC schema), if any leaf has it.
    TableSchema { table: String },
    /// Aggregator: refresh cached leaf stats now (after an ingest).
    Refresh,
    /// Aggregator: `leaf` is being restarted; report it as `restarting`
    /// until a new process answers for it.
    LeafRestarting { leaf: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryRequest {
    pub protocol_version: u32,
    pub sql: String,
    /// Deadline from the aggregator's receipt; `None` for the cluster default.
    pub timeout_ms: Option<u64>,
    /// Fail below this coverage; `None` for the cluster default.
    pub min_coverage: Option<f64>,
    /// Scale COUNT and SUM by 1/coverage and add 95% intervals.
    pub estimate: bool,
}

/// Kinds of errors on the wire, so clients can pick exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is wrong (bad SQL, unknown table, bad input): exit code 2.
    BadRequest,
    /// The answer's coverage is below the minimum asked for: exit code 3.
    CoverageTooLow,
    /// A value conflicts with a column's type.
    TypeConflict,
    /// The leaf is at its memory budget and cannot expire anything.
    MemoryFull,
    /// The leaf is handing off or shutting down; try another.
    Restarting,
    /// A bug or an I/O failure on the server.
    Internal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
    /// Coverage of the answer that was refused, when there was one.
    pub coverage: Option<Coverage>,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Per-table numbers a leaf reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableStats {
    pub name: String,
    pub rows: u64,
    pub memory_bytes: u64,
    pub rows_expired: u64,
    /// The table's schema on this leaf, as IPC.
    #[serde(with = "serde_bytes")]
    pub schema_ipc: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeafStats {
    pub leaf: String,
    pub tables: Vec<TableStats>,
    pub memory_used_bytes: u64,
    pub memory_limit_bytes: u64,
    pub accepting_writes: bool,
    pub pid: u32,
}

impl LeafStats {
    pub fn memory_free_bytes(&self) -> u64 {
        self.memory_limit_bytes
            .saturating_sub(self.memory_used_bytes)
    }
}

/// A leaf as the aggregator sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeafStatus {
    pub leaf: String,
    pub addr: String,
    /// `up`, `down` or `restarting`.
    pub state: String,
    /// Milliseconds since its last report; `None` if it never reported.
    pub last_report_ms_ago: Option<u64>,
    pub stats: Option<LeafStats>,
}

/// Replies. A reply is a sequence of frames: zero or more `Batches`, then one
/// terminal frame (anything else).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    IngestAck {
        rows: u64,
        duplicate: bool,
        memory_free_bytes: u64,
    },
    /// Part of a result: a self-contained IPC stream.
    Batches(#[serde(with = "serde_bytes")] Vec<u8>),
    /// End of a fragment's result, with the table's rows on this leaf.
    FragmentDone {
        table_rows: u64,
    },
    /// End of a query's result.
    QueryDone {
        coverage: Coverage,
        notes: Vec<String>,
    },
    Stats(LeafStats),
    Status(Vec<LeafStatus>),
    Schema(Option<Vec<u8>>),
    /// The asked batches this leaf has applied.
    HeldBatches(Vec<BatchId>),
    /// The leaf sealed everything into a valid hand-off segment.
    HandoffDone {
        rows: u64,
        blocks: u64,
        bytes: u64,
    },
    Ok,
    Error(WireError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let req = Request::Ingest {
            table: "events".into(),
            batch_id: BatchId { session: 7, seq: 9 },
            pad: vec![],
            ipc: vec![1, 2, 3],
        };
        let frame = encode_frame(&req).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        match decode_payload::<Request>(&frame[4..]).unwrap() {
            Request::Ingest {
                table,
                batch_id,
                ipc,
                ..
            } => {
                assert_eq!(
                    (table.as_str(), batch_id.seq, ipc),
                    ("events", 9, vec![1, 2, 3])
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_appended_to_one_buffer_read_back_in_order() {
        let messages = [
            Response::Ok,
            Response::FragmentDone { table_rows: 7 },
            Response::Batches(vec![9; 1000]),
        ];
        let mut out = vec![1, 2, 3]; // what was there before stays
        for m in &messages {
            encode_frame_into(&mut out, m).unwrap();
        }
        let mut rest = &out[3..];
        for m in &messages {
            let len = frame_len(rest[..FRAME_PREFIX_BYTES].try_into().unwrap()).unwrap();
            let payload = &rest[FRAME_PREFIX_BYTES..FRAME_PREFIX_BYTES + len];
            assert_eq!(
                format!("{:?}", decode_payload::<Response>(payload).unwrap()),
                format!("{m:?}")
            );
            assert_eq!(&rest[..FRAME_PREFIX_BYTES + len], encode_frame(m).unwrap());
            rest = &rest[FRAME_PREFIX_BYTES + len..];
        }
        assert!(rest.is_empty());
        assert_eq!(&out[..3], &[1, 2, 3]);
    }

    #[test]
    fn a_frame_too_large_leaves_the_buffer_as_it_was() {
        let mut out = vec![4, 5];
        let huge = Response::Batches(vec![0; FRAME_BYTES_MAX + 1]);
        assert!(matches!(
            encode_frame_into(&mut out, &huge),
            Err(Error::FrameTooLarge { .. }) | Err(Error::Internal(_))
        ));
        assert_eq!(out, vec![4, 5]);
    }

    #[test]
    fn a_borrowed_ingest_encodes_as_the_owned_one() {
        for (table, seq, len) in [("events", 4, 300), ("t", 1 << 40, 70_000), ("xyz", 0, 0)] {
            let batch_id = BatchId { session: 3, seq };
            let ipc = vec![5u8; len];
            // Sent as a head and the bytes as they are...
            let mut split = ingest_frame_head(table, batch_id, len).unwrap();
            split.extend_from_slice(&ipc);
            // ...read back without copying the bytes out, which start at a
            // multiple of IPC_ALIGN into the payload...
            let payload = &split[FRAME_PREFIX_BYTES..];
            let IngestRef::Ingest {
                table: t,
                batch_id: id,
                pad,
                ipc: read,
            } = decode_borrowed(payload).unwrap();
            assert_eq!((t, id, read), (table, batch_id, &ipc[..]));
            let at = read.as_ptr() as usize - payload.as_ptr() as usize;
            assert_eq!(at % IPC_ALIGN, 0, "{table} {seq} {len}");
            // ...and it is the frame of the owned and borrowed messages.
            let owned = Request::Ingest {
                table: table.into(),
                batch_id,
                pad: pad.to_vec(),
                ipc: ipc.clone(),
            };
            let borrowed = IngestRef::Ingest {
                table,
                batch_id,
                pad,
                ipc: &ipc,
            };
            assert_eq!(encode_frame(&owned).unwrap(), split);
            assert_eq!(encode_frame(&borrowed).unwrap(), split);
        }
        // Any other request is not an ingest.
        let other = encode_frame(&Request::LeafStats).unwrap();
        assert!(decode_borrowed::<IngestRef>(&other[FRAME_PREFIX_BYTES..]).is_err());
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocation() {
        let prefix = ((FRAME_BYTES_MAX + 1) as u32).to_le_bytes();
        assert!(matches!(
            frame_len(prefix),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn garbage_payload_is_a_malformed_frame_not_a_panic() {
        assert!(matches!(
            decode_payload::<Request>(&[0xff; 9]),
            Err(Error::MalformedFrame(_))
        ));
        assert!(decode_payload::<Request>(&[]).is_err());
    }
}
