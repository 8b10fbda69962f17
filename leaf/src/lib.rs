//! # scuba-leaf: where the data lives and the query fragments run
//!
//! ```text
//!  Ingest{table, batch_id, pad, ipc} ──server (IngestRef)──> Leaf::ingest_buffer
//!        │ columns decoded in place: they point into the frame they arrived in;
//!        │ strings turned into string views (shm::string_views), the form kept
//!        │ dedup by batch id, check types, make room (expire oldest blocks)
//!        ├──> log::Log::append (segment files) ──(group fsync)──> acknowledged
//!        └──> table::Table::append ──> open block ──seal──> shm::write_block
//!                                                           (IPC file in /dev/shm, mapped, used in place)
//!
//!  Fragment{plan} ──server──> Leaf::run_fragment
//!        │ fragment::decode_template (or the one kept for the same bytes),
//!        │ fragment::bind_fragment: LeafScanExec -> scan of this leaf's blocks;
//!        │ a partial count(*) over a whole table -> the scan's exact row count
//!        v
//!  DataFusion runs the fragment (filter, partial aggregate, top-k)
//!        │ merged in order or coalesced
//!        v
//!  Batches(IPC)... FragmentDone{table_rows} ──> aggregator
//!
//!  Handoff ──> Leaf::handoff: seal, write handoff::Manifest (valid flag last), exit
//!  Leaf::open: a valid segment -> map its blocks in place and serve at once;
//!              each block is checked (crc32c) before its first scan and by a
//!              background pass; a failed check -> drop them, replay the log
//!              otherwise -> replay the log; the last moments' batches are
//!              held back until peers say which they took over (Leaf::settle);
//!              a peer answers (Leaf::holds) only for batches whose rows it has
//! ```
//!
//! Expiry (retention by age, the memory budget) drops whole blocks, oldest
//! first, and releases their records in the log, whose segments are deleted
//! once nothing in them is held. The same [`Leaf`] serves the QUIC server
//! ([`server`]) and the embedded database (in-process, no network, no log).
//! All `unsafe` code is in [`shm`].

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
