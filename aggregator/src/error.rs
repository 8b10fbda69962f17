//! The aggregator's errors, split into the user's mistakes and the rest.

use scuba::coverage::Coverage;
use scuba::wire::{ErrorKind, WireError};
use thiserror::Error;

pub type Result<T, E = AggError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum AggError {
    /// The SQL does not parse or plan (DataFusion's message).
    #[error("{0}")]
    Sql(String),

    /// The answer's coverage is below the minimum asked for.
    #[error("coverage {:.4} is below the minimum {min:.4} ({})", coverage.coverage, coverage.summary())]
    CoverageTooLow { min: f64, coverage: Coverage },

    /// The cluster file is wrong.
    #[error("cluster file {path}: {message}")]
    Config { path: String, message: String },

    #[error("certificates: {0}")]
    Certs(String),

    /// Every leaf refused or failed a batch.
    #[error("{0}")]
    Ingest(String),

    #[error(transparent)]
    Leaf(#[from] scuba_leaf::LeafError),

    #[error(transparent)]
    Core(#[from] scuba::Error),

    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),

    #[error("internal error (a bug): {0}")]
    Internal(String),
}

impl From<datafusion::error::DataFusionError> for AggError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        AggError::Sql(e.to_string())
    }
}

impl AggError {
    pub fn to_wire(&self) -> WireError {
        let (kind, coverage) = match self {
            AggError::Sql(_) => (ErrorKind::BadRequest, None),
            AggError::CoverageTooLow { coverage, .. } => {
                (ErrorKind::CoverageTooLow, Some(coverage.clone()))
            }
            _ => (ErrorKind::Internal, None),
        };
        WireError {
            kind,
            message: self.to_string(),
            coverage,
        }
    }
}
