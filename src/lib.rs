//! # scuba: the core of a Scuba-style in-memory analytics database
//!
//! This crate holds what every part shares and nothing that does I/O on a
//! network: the column types, the decoding of input lines into Arrow
//! batches, the wire messages and their frame codec, and the coverage every
//! answer carries.
//!
//! ```text
//!   stdin ──decode::ChunkReader──> TextChunk (lines) ──decode::BatchBuilder──> RecordBatch
//!   (a file on stdin: mapped, decode::MappedChunks: uncut, lines found as decoded)
//!                                                                  │ ipc::batch_to_ipc_stream
//!                                                                  v (pieces sharing the columns)
//!   scubactl ──wire::ingest_frame_head + IPC bytes (IngestRef)──> leaf (scuba-leaf)
//!   scubactl ──wire::Request::Query──> aggregator (scuba-aggregator)
//!                                        │ wire::Request::Fragment (datafusion-proto plan)
//!                                        v
//!                                     every leaf ──wire::Response::Batches──> merge
//!                                        │
//!   scubactl <──Batches + QueryDone{coverage::Coverage}──┘
//! ```
//!
//! Every bound lives in [`limits`]; frames are checked against
//! [`limits::FRAME_BYTES_MAX`] before their payload is allocated.

pub mod coverage;
pub mod decode;
pub mod error;
pub mod functions;
pub mod ipc;
pub mod limits;
pub mod render;
pub mod schema;
pub mod wire;

pub use coverage::{Coverage, MissingLeaf, MissingReason};
pub use error::{Error, Result};

/// DataFusion, re-exported so every crate uses one version of it and of Arrow.
pub use datafusion;
