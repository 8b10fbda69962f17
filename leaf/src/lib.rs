//! # scuba-leaf: where the data lives and the query fragments run
//!
//! ```text
//!  Ingest{table, batch_id, ipc} ──server──> Leaf::ingest
//!        │ dedup by batch id, check types
//!        ├──> log::Log::append ──(group fsync)──> acknowledged
//!        └──> table::Table::append ──> open block ──seal──> sealed blocks
//!
//!  Fragment{plan} ──server──> Leaf::run_fragment
//!        │ fragment::decode_fragment: LeafScanExec -> scan of this leaf's blocks
//!        v
//!  DataFusion runs the fragment (filter, partial aggregate, top-k)
//!        │ merged in order or coalesced
//!        v
//!  Batches(IPC)... FragmentDone{table_rows} ──> aggregator
//! ```
//!
//! After a crash, [`Leaf::open`] rebuilds every table from the disk log. The
//! same [`Leaf`] serves the QUIC server ([`server`]) and the embedded
//! database (in-process, no network).

pub mod error;
pub mod fragment;
pub mod handoff;
pub mod leaf;
pub mod log;
pub mod net;
pub mod server;
pub mod shm;
pub mod table;

pub use error::{LeafError, Result};
pub use leaf::{HandoffSummary, Leaf, LeafOptions, Startup};
