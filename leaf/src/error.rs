//! The leaf's errors: what a client did wrong, what the leaf cannot do now,
//! and bugs.

use scuba::wire::{ErrorKind, WireError};
use thiserror::Error;

pub type Result<T, E = LeafError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum LeafError {
    /// Bad input, a type conflict, a bad frame (from the core library).
    #[error(transparent)]
    Core(#[from] scuba::Error),

    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),

    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),

    /// The asker planned against a schema this leaf has since changed.
    #[error("stale schema for table `{table}`, column `{column}`: refresh and retry")]
    StaleSchema { table: String, column: String },

    /// The leaf is at its memory budget and nothing can expire.
    #[error("leaf `{leaf}` is at its memory budget ({limit_bytes} bytes) and nothing can expire")]
    MemoryFull { leaf: String, limit_bytes: u64 },

    /// The leaf is handing off or shutting down.
    #[error("leaf `{leaf}` is restarting and takes no writes")]
    Restarting { leaf: String },

    /// An adopted block failed its check: the leaf never reads it and
    /// recovers from its disk log instead.
    #[error("block {block} of the adopted hand-off segment failed its check ({reason}); the leaf is recovering from its disk log")]
    BlockRefused { block: String, reason: String },

    #[error("too many tables on leaf (at most {max})")]
    TooManyTables { max: usize },

    /// The fragment's reply would exceed the reply bound.
    #[error("result from leaf exceeds {max_bytes} bytes; add a filter, an aggregate or a LIMIT")]
    ReplyTooLarge { max_bytes: usize },

    #[error("disk log at {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },

    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),

    #[error("network: {0}")]
    Net(String),

    /// A bug.
    #[error("internal error (a bug): {0}")]
    Internal(String),
}

impl LeafError {
    pub fn to_wire(&self) -> WireError {
        let kind = match self {
            LeafError::Core(scuba::Error::TypeConflict { .. }) => ErrorKind::TypeConflict,
            LeafError::Core(_)
            | LeafError::TooManyTables { .. }
            | LeafError::ReplyTooLarge { .. } => ErrorKind::BadRequest,
            LeafError::DataFusion(_) | LeafError::StaleSchema { .. } => ErrorKind::BadRequest,
            LeafError::MemoryFull { .. } => ErrorKind::MemoryFull,
            LeafError::Restarting { .. } | LeafError::BlockRefused { .. } => ErrorKind::Restarting,
            _ => ErrorKind::Internal,
        };
        WireError {
            kind,
            message: self.to_string(),
            coverage: None,
        }
    }
}
