//! # scuba-aggregator: placement, fan-out, merge and coverage
//!
//! ```text
//!  scubactl ingest ──ingest::ingest──> placement::Room (two choices) ──transport──> leaves
//!
//!  scubactl query ──server──> engine::Aggregator::query
//!        │ plan with DataFusion over ClusterTable (union of leaf schemas),
//!        │ or take the plan kept for this SQL text (schemas unchanged)
//!        │ cut fragments at the first exchange above each leaf scan
//!        v
//!  transport::LeafTransport (QUIC, or in-process for embedded::Database)
//!        │ fanout::FanOut: deadline, who answered, why others did not
//!        v
//!  merge plan over per-leaf partitions ──> answer + scuba::Coverage
//! ```
//!
//! [`config`] reads the cluster file, [`certs`] makes its CA and node
//! certificates. [`embedded::Database`] is the whole thing in one process.
//! [`estimate`] scales COUNT and SUM of a partial answer when asked to.

pub mod certs;
pub mod config;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod estimate;
pub mod fanout;
pub mod ingest;
pub mod placement;
pub mod server;
pub mod transport;
pub mod views;

pub use error::{AggError, Result};
