//! The core library's errors. User mistakes (bad input, bad frames) are kept
//! apart from bugs (`Internal`).

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// A frame's length prefix announces more than [`crate::limits::FRAME_BYTES_MAX`].
    #[error("frame of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    FrameTooLarge { len_bytes: usize, max_bytes: usize },

    /// A frame's payload does not decode as the message it should hold.
    #[error("malformed frame: {0}")]
    MalformedFrame(String),

    /// A peer speaks another protocol version.
    #[error("protocol version mismatch: peer speaks {peer}, this build speaks {ours}")]
    ProtocolVersion { peer: u32, ours: u32 },

    /// A column's values conflict with the type the table already has.
    #[error(
        "table `{table}`, column `{column}`: {found} value does not fit column of type {expected}"
    )]
    TypeConflict {
        table: String,
        column: String,
        expected: String,
        found: String,
    },

    /// A table or column name is empty, too long or has control characters.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// Too many columns in one table.
    #[error("table `{table}` would have more than {max} columns")]
    TooManyColumns { table: String, max: usize },

    /// Arrow failed to encode or decode a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),

    /// A broken invariant: a bug, never a user's mistake.
    #[error("internal error (a bug): {0}")]
    Internal(String),
}
